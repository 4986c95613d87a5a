//! Makes the machine's changes durable: after every step of the event loop
//! the records of the peers that changed go to the [`Store`] in one group
//! commit, before any datagram of that step is sent. So a key (and every
//! message counter) is on the wire only once a restart would find it, and a
//! restarted daemon resumes exactly where its peers think it is. The store
//! is either kind behind [`Backend`] (file or etcd).

use rotor_core::Now;
use tracing::{debug, info, warn};
use zeroize::{Zeroize, Zeroizing};

use super::role::Role;
use crate::state::{Backend, StateError};

/// More than any one record takes (two generations, the superseded SPIs,
/// a 64-byte name, the reqid): a buffer reserved this much before its first
/// use never reallocates while records are encoded into it, so no copy of
/// key material is left behind in freed memory.
pub const RECORD_ROOM: usize = 1024;

/// The durable side of a daemon.
pub struct Persist {
    store: Backend,
    dirty: Vec<usize>,
    /// One record at a time, on its way into the store's buffer; reserved
    /// [`RECORD_ROOM`] up front.
    one: Zeroizing<Vec<u8>>,
}

impl Persist {
    /// Persists into `store` (a file [`crate::store::Store`] or an etcd
    /// [`crate::state::etcd::EtcdStore`]).
    pub fn new(store: impl Into<Backend>) -> Self {
        Persist {
            store: store.into(),
            dirty: Vec::new(),
            one: Zeroizing::new(Vec::with_capacity(RECORD_ROOM)),
        }
    }

    /// Makes every changed record durable. On `Err` the caller must not send
    /// the step's datagrams (they could carry a key or counter a restart
    /// would not know), and must stop: after a failed write or sync the
    /// store refuses every later write (what reached the disk is unknown
    /// until a restart reads it).
    pub fn flush<R: Role>(&mut self, role: &mut R, now: Now) -> Result<(), StateError> {
        self.dirty.clear();
        role.take_dirty(&mut self.dirty);
        if self.dirty.is_empty() {
            return Ok(());
        }
        self.dirty.sort_unstable();
        self.dirty.dedup();
        let r = Self::write(&mut self.store, &self.dirty, &mut self.one, role, now);
        self.one.zeroize();
        r?;
        if let Backend::Etcd(e) = &self.store {
            let s = e.last_commit();
            debug!(
                records = s.records,
                requests = s.requests,
                bytes = s.bytes,
                "state written to etcd"
            );
        }
        if self.store.needs_compaction()
            && let Err(e) = self.compact(role, now)
        {
            // The log stays valid; compaction is tried again later.
            warn!("compacting the state store: {e}");
        }
        Ok(())
    }

    fn write<R: Role>(
        store: &mut Backend,
        ids: &[usize],
        one: &mut Vec<u8>,
        role: &mut R,
        now: Now,
    ) -> Result<(), StateError> {
        let mut batch = store.batch()?;
        for &i in ids {
            role.save(i, now, one);
            batch.put(role.record_key(i), one)?;
        }
        batch.commit()
    }

    /// Rewrites the file store from the current state of every peer (etcd
    /// needs no compaction from us: nothing to do).
    pub fn compact<R: Role>(&mut self, role: &mut R, now: Now) -> Result<(), StateError> {
        let n = role.peer_count();
        let Some(store) = self.store.file_mut() else {
            return Ok(());
        };
        let r = (|| {
            let mut c = store.compaction()?;
            for i in 0..n {
                role.save(i, now, &mut self.one);
                c.put(role.record_key(i), &self.one)?;
            }
            c.finish()
        })()
        .map_err(StateError::File);
        self.one.zeroize();
        if r.is_ok() {
            info!(records = n, "state store compacted");
        }
        r
    }

    /// Forgets the records under `keys` (peers removed from the config).
    pub fn remove<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), StateError> {
        self.store.remove_batch(keys)
    }
}
