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
/// a 64-byte name, the reqid): buffers reserved this much per record never
/// reallocate while records are written into them, so no copy of key
/// material is left behind in freed memory.
pub const RECORD_ROOM: usize = 1024;

/// The durable side of a daemon.
pub struct Persist {
    store: Store,
    dirty: Vec<usize>,
    /// Every record of one step, back to back.
    buf: Zeroizing<Vec<u8>>,
    one: Zeroizing<Vec<u8>>,
    spans: Vec<(usize, usize, usize)>,
}

impl Persist {
    /// Persists into `store`.
    pub fn new(store: Store) -> Self {
        Persist {
            store,
            dirty: Vec::new(),
            buf: Zeroizing::new(Vec::new()),
            one: Zeroizing::new(Vec::new()),
            spans: Vec::new(),
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
        self.buf.clear();
        // Emptied and zeroed at the end of the last flush: growing it here
        // copies nothing secret.
        self.buf.reserve(self.dirty.len() * RECORD_ROOM);
        self.one.reserve(RECORD_ROOM);
        self.spans.clear();
        for &i in &self.dirty {
            role.save(i, now, &mut self.one);
            let start = self.buf.len();
            self.buf.extend_from_slice(&self.one);
            self.spans.push((i, start, self.buf.len()));
        }
        self.one.zeroize();
        let buf = &self.buf;
        let r = self.store.write_batch(
            self.spans
                .iter()
                .map(|&(i, s, e)| (role.record_key(i), &buf[s..e])),
        );
        self.buf.zeroize();
        r?;
        if self.store.needs_compaction()
            && let Err(e) = self.compact(role, now)
        {
            // The log stays valid; compaction is tried again later.
            warn!("compacting the state store: {e}");
        }
        Ok(())
    }

    /// Rewrites the store from the current state of every peer.
    pub fn compact<R: Role>(&mut self, role: &mut R, now: Now) -> Result<(), StoreError> {
        let n = role.peer_count();
        let mut buf = Zeroizing::new(Vec::with_capacity(n * RECORD_ROOM));
        self.one.reserve(RECORD_ROOM);
        let mut spans = Vec::with_capacity(n);
        for i in 0..n {
            role.save(i, now, &mut self.one);
            let start = buf.len();
            buf.extend_from_slice(&self.one);
            spans.push((i, start, buf.len()));
        }
        self.one.zeroize();
        let r = self.store.compact(
            spans
                .iter()
                .map(|&(i, s, e)| (role.record_key(i), &buf[s..e])),
        );
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
