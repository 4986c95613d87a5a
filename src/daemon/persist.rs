//! Makes the machine's changes durable: after every step of the event loop
//! the records of the peers that changed go to the [`Store`] in one group
//! commit, before any datagram of that step is sent. So a key (and every
//! message counter) is on the wire only once a restart would find it, and a
//! restarted daemon resumes exactly where its peers think it is.

use rotor_core::Now;
use tracing::{info, warn};
use zeroize::{Zeroize, Zeroizing};

use super::role::Role;
use crate::store::{Store, StoreError};

/// More than any one record takes (two generations, the superseded SPIs,
/// a 64-byte name, the reqid): a buffer reserved this much before its first
/// use never reallocates while records are encoded into it, so no copy of
/// key material is left behind in freed memory.
pub const RECORD_ROOM: usize = 1024;

/// The durable side of a daemon.
pub struct Persist {
    store: Store,
    dirty: Vec<usize>,
    /// One record at a time, on its way into the store's buffer; reserved
    /// [`RECORD_ROOM`] up front.
    one: Zeroizing<Vec<u8>>,
}

impl Persist {
    /// Persists into `store`.
    pub fn new(store: Store) -> Self {
        Persist {
            store,
            dirty: Vec::new(),
            one: Zeroizing::new(Vec::with_capacity(RECORD_ROOM)),
        }
    }

    /// Makes every changed record durable. On `Err` the caller must not send
    /// the step's datagrams (they could carry a key or counter a restart
    /// would not know), and must stop: after a failed write or sync the
    /// store refuses every later write (what reached the disk is unknown
    /// until a restart reads it).
    pub fn flush<R: Role>(&mut self, role: &mut R, now: Now) -> Result<(), StoreError> {
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
        if self.store.needs_compaction()
            && let Err(e) = self.compact(role, now)
        {
            // The log stays valid; compaction is tried again later.
            warn!("compacting the state store: {e}");
        }
        Ok(())
    }

    fn write<R: Role>(
        store: &mut Store,
        ids: &[usize],
        one: &mut Vec<u8>,
        role: &mut R,
        now: Now,
    ) -> Result<(), StoreError> {
        let mut batch = store.batch()?;
        for &i in ids {
            role.save(i, now, one);
            batch.put(role.record_key(i), one)?;
        }
        batch.commit()
    }

    /// Rewrites the store from the current state of every peer.
    pub fn compact<R: Role>(&mut self, role: &mut R, now: Now) -> Result<(), StoreError> {
        let n = role.peer_count();
        let r = (|| {
            let mut c = self.store.compaction()?;
            for i in 0..n {
                role.save(i, now, &mut self.one);
                c.put(role.record_key(i), &self.one)?;
            }
            c.finish()
        })();
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
    ) -> Result<(), StoreError> {
        self.store.remove_batch(keys)
    }
}
