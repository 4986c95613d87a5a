//! The hub's records in etcd (`[hub] state = "etcd://..."`), behind the
//! same seam as the file store ([`crate::state::Backend`]).
//!
//! # Layout
//! One key per node, `PREFIX/node/NAME`, whose value is the node's record
//! sealed under the cluster key ([`seal`]: ChaCha20-Poly1305, the etcd key as
//! associated data, a random nonce per write). The cluster key is read from
//! a key file on the hub and never enters etcd.
//!
//! # Writes
//! A burst's records are sealed on the caller's thread (plaintext never
//! leaves it) and written in as few requests as etcd allows: transactions
//! of at most [`MAX_TXN_OPS`] puts (etcd's default `--max-txn-ops`) and
//! [`MAX_TXN_BYTES`] (under its default 1.5 MiB request limit), a few in
//! flight at a time (as many as etcd acknowledges quickly, [`burst`]), all
//! acknowledged before [`EtcdBatch::commit`] returns. Each record is
//! written whole or not at all; a burst split over several transactions is
//! not atomic as a whole, which costs nothing: records are per node, and no
//! datagram of the burst leaves before every transaction is acknowledged. A transaction that fails is
//! sent again (another member, a new leader); the burst fails only when
//! etcd acknowledged none of its transactions for [`burst::STALL`], however
//! long the whole takes. After that the store refuses further work
//! ([`EtcdError::Failed`]), as the file store does after a failed sync:
//! what reached etcd is known only to a reopen.
//!
//! # Reads
//! [`EtcdStore::open`] reads every record under the prefix in pages of
//! [`PAGE`] keys, all at the revision of the first page (one consistent
//! view), and opens each; a record that does not open is an error naming
//! its key, never skipped. A standby ([`EtcdStore::open_standby`]) keeps
//! the sealed records current through a watch and, once it leads, reads
//! only what changed since ([`EtcdStore::take_warm`], [`warm`]).
//!
//! # One writer
//! Hubs sharing a prefix elect one leader ([`lead`]); a store given the
//! leader's [`Fence`] ([`EtcdStore::set_fence`]) makes every transaction
//! conditional on `PREFIX/leader` still carrying the fence's token, and
//! refuses a commit ([`EtcdError::Fenced`]) when etcd found it otherwise or
//! the fence's own clock ran out: the burst's datagrams never leave then.

mod burst;
pub mod lead;
pub mod seal;
pub mod target;
mod warm;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, Txn, TxnOp, TxnResponse};
use zeroize::Zeroizing;

pub use lead::{Election, Fence, LeadError};

pub use seal::{ClusterKey, OpenError, SealError, Sealer};
pub use target::EtcdTarget;
use worker::{CallError, Worker};

use crate::store::Loaded;

/// Puts per transaction: etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Bytes of keys and values per transaction, under etcd's default
/// `--max-request-bytes` (1.5 MiB) with room for the framing.
pub const MAX_TXN_BYTES: usize = 1 << 20;
/// Keys per page when loading.
pub const PAGE: i64 = 1000;
/// How long one request may take (connection included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request (a count, a removal) may take, retries included,
/// before the store gives up; a read of many pages, or a burst of writes,
/// fails only when nothing of it answered for this long ([`burst`],
/// [`warm`]).
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// A record key (node name) is 1 to this many bytes, as in the file store.
const MAX_KEY: usize = 255;

/// Why the etcd state could not be opened, read or written. Names the
/// cluster and the record key (a node name), never record content.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A request failed or timed out, retries included.
    #[error("{target}: cannot {op}: {source}")]
    Request {
        /// The state URL.
        target: String,
        /// What we were doing.
        op: &'static str,
        /// Why.
        #[source]
        source: CallError,
    },
    /// A stored record does not open with the cluster key.
    #[error(
        "{target}: record {key:?}: {why}; check hub.state_key_file (every hub of a cluster needs the same key)"
    )]
    Unsealable {
        /// The state URL.
        target: String,
        /// The record's etcd key.
        key: String,
        /// What is wrong with it.
        why: OpenError,
    },
    /// A key under the prefix that cannot be a node's record.
    #[error(
        "{target}: key {key:?} under the record prefix is not a node record (name not 1-255 bytes of UTF-8)"
    )]
    ForeignKey {
        /// The state URL.
        target: String,
        /// The key, lossily decoded.
        key: String,
    },
    /// A record key (node name) is empty or longer than 255 bytes.
    #[error("{target}: record key {key:?} must be 1 to 255 bytes")]
    InvalidKey {
        /// The state URL.
        target: String,
        /// The key.
        key: String,
    },
    /// A record could not be sealed.
    #[error("{target}: record {key:?}: {source}")]
    Seal {
        /// The state URL.
        target: String,
        /// The record key.
        key: String,
        /// Why.
        #[source]
        source: SealError,
    },
    /// The sealer's nonce generator could not be seeded.
    #[error("{target}: {source}")]
    Seed {
        /// The state URL.
        target: String,
        /// Why.
        #[source]
        source: SealError,
    },
    /// This hub no longer leads: etcd refused the write (the leader key is
    /// gone or another hub's) or the leader lease's clock ran out. Nothing
    /// of the batch may be acted upon.
    #[error("{target}: write refused: {why}")]
    Fenced {
        /// The state URL.
        target: String,
        /// Why, naming the token and the leader key.
        why: String,
    },
    /// An earlier write failed; what etcd holds is known only to a reopen.
    #[error(
        "{target}: an earlier write failed, so the store accepts no more writes; restart rotor to reload it"
    )]
    Failed {
        /// The state URL.
        target: String,
    },
}

/// What the last [`EtcdBatch::commit`] cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Records written.
    pub records: usize,
    /// Transactions sent (etcd write requests).
    pub requests: usize,
    /// Bytes of keys and sealed values.
    pub bytes: usize,
}

/// An open etcd state: a client on its own thread and the sealer.
pub struct EtcdStore {
    target: String,
    prefix: String,
    sealer: Sealer,
    worker: Worker,
    failed: bool,
    last: CommitStats,
    fence: Option<Fence>,
    /// A standby's copy of the records, until it is taken.
    warm: Option<Arc<Mutex<warm::WarmCopy>>>,
    /// How many transactions of a burst may be in flight.
    window: Arc<burst::Window>,
}

/// What completing a warm copy took ([`EtcdStore::take_warm`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmStats {
    /// The copy's revision before the completion.
    pub since: i64,
    /// The revision the completion read at.
    pub revision: i64,
    /// Watch events the copy applied while waiting.
    pub events: u64,
    /// Records read by the completion (changed after `since`).
    pub changed: usize,
    /// Records the completion dropped (deleted after `since`).
    pub deleted: usize,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("target", &self.target)
            .field("failed", &self.failed)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to `target` and loads every record under its prefix,
    /// opened with `key`.
    pub fn open(target: &EtcdTarget, key: &ClusterKey) -> Result<(EtcdStore, Loaded), EtcdError> {
        let store = EtcdStore::connect(target, key)?;
        let (records, _) = store.load()?;
        let loaded = store.open_records(records)?;
        Ok((store, loaded))
    }

    /// A standby's store: connects, reads every record (each must open
    /// with `key`: a wrong cluster key is refused now, not at takeover)
    /// and keeps a sealed copy of them current with a watch on the prefix
    /// until [`EtcdStore::take_warm`]. Nothing of the records' plaintext is
    /// kept meanwhile.
    pub fn open_standby(target: &EtcdTarget, key: &ClusterKey) -> Result<EtcdStore, EtcdError> {
        let mut store = EtcdStore::connect(target, key)?;
        let (records, revision) = store.load()?;
        for (k, v) in &records {
            store.record_name(k)?;
            drop(store.open_one(k, v)?);
        }
        let copy = Arc::new(Mutex::new(warm::WarmCopy {
            records: records.into_iter().collect(),
            revision,
            events: 0,
            taken: false,
        }));
        let (prefix, shared) = (store.prefix.clone().into_bytes(), Arc::clone(&copy));
        store
            .worker
            .spawn(move |c| warm::follow(c, prefix, shared))
            .map_err(|source| EtcdError::Request {
                target: store.target.clone(),
                op: "watch the records",
                source,
            })?;
        store.warm = Some(copy);
        Ok(store)
    }

    /// Completes the warm copy (see [`warm`] for why it is then exactly
    /// what etcd holds; call it after winning the election) and opens it:
    /// the records, and what the completion cost. A record that does not
    /// open is an error naming its key, as at start. Without a warm copy
    /// (not opened with [`EtcdStore::open_standby`], or taken already),
    /// reads everything.
    pub fn take_warm(&mut self) -> Result<(Loaded, WarmStats), EtcdError> {
        let Some(copy) = self.warm.take() else {
            let (records, _) = self.load()?;
            let stats = WarmStats {
                changed: records.len(),
                ..WarmStats::default()
            };
            return Ok((self.open_records(records)?, stats));
        };
        let (mut records, since, events) = {
            let mut g = warm::lock(&copy);
            g.taken = true;
            (std::mem::take(&mut g.records), g.revision, g.events)
        };
        let prefix = self.prefix.clone().into_bytes();
        let p = prefix.clone();
        let (changed, revision) =
            self.worker
                .run(move |c: Client| async move {
                    warm::read_changed(&c, &p, since, CALL_DEADLINE).await
                })
                .map_err(self.req("read the records changed since the warm copy"))?;
        let p = prefix.clone();
        let keys = self
            .worker
            .call(CALL_DEADLINE, move |mut c: Client| {
                let p = p.clone();
                async move { warm::count(&mut c, &p, revision).await }
            })
            .map_err(self.req("count the records"))?;
        let mut stats = WarmStats {
            since,
            revision,
            events,
            changed: changed.len(),
            deleted: 0,
        };
        records.extend(changed);
        if usize::try_from(keys).ok() != Some(records.len()) {
            // Keys deleted after the copy's revision: keep only etcd's.
            let p = prefix.clone();
            let live = self
                .worker
                .run(move |c: Client| async move {
                    warm::keys_at(&c, &p, revision, CALL_DEADLINE).await
                })
                .map_err(self.req("list the record keys"))?;
            let live: std::collections::HashSet<Vec<u8>> = live.into_iter().collect();
            let before = records.len();
            records.retain(|k, _| live.contains(k));
            stats.deleted = before - records.len();
        }
        Ok((self.open_records(records.into_iter().collect())?, stats))
    }

    fn connect(target: &EtcdTarget, key: &ClusterKey) -> Result<EtcdStore, EtcdError> {
        let name = target.to_string();
        let sealer = Sealer::new(key).map_err(|source| EtcdError::Seed {
            target: name.clone(),
            source,
        })?;
        let worker =
            Worker::start(target.endpoints.clone(), REQUEST_TIMEOUT).map_err(|source| {
                EtcdError::Request {
                    target: name.clone(),
                    op: "connect",
                    source,
                }
            })?;
        Ok(EtcdStore {
            target: name,
            prefix: target.records_prefix(),
            sealer,
            worker,
            failed: false,
            last: CommitStats::default(),
            fence: None,
            warm: None,
            window: Arc::new(burst::Window::new(burst::IN_FLIGHT)),
        })
    }

    fn req(&self, op: &'static str) -> impl FnOnce(CallError) -> EtcdError + use<> {
        let target = self.target.clone();
        move |source| EtcdError::Request { target, op, source }
    }

    /// The node name of record key `k`.
    fn record_name<'k>(&self, k: &'k [u8]) -> Result<&'k str, EtcdError> {
        k.strip_prefix(self.prefix.as_bytes())
            .and_then(|n| std::str::from_utf8(n).ok())
            .filter(|n| !n.is_empty() && n.len() <= MAX_KEY)
            .ok_or_else(|| EtcdError::ForeignKey {
                target: self.target.clone(),
                key: String::from_utf8_lossy(k).into_owned(),
            })
    }

    fn open_one(&self, k: &[u8], v: &[u8]) -> Result<Zeroizing<Vec<u8>>, EtcdError> {
        self.sealer.open(k, v).map_err(|why| EtcdError::Unsealable {
            target: self.target.clone(),
            key: String::from_utf8_lossy(k).into_owned(),
            why,
        })
    }

    /// Opens every record; the first that does not is an error naming
    /// its key.
    fn open_records(&self, records: Vec<Stored>) -> Result<Loaded, EtcdError> {
        let mut out = HashMap::with_capacity(records.len());
        for (k, v) in records {
            let name = self.record_name(&k)?.to_owned();
            let plain = self.open_one(&k, &v)?;
            out.insert(name, plain);
        }
        Ok(Loaded::from_records(out))
    }

    /// Every (key, sealed value) under the prefix, at one revision (which
    /// it returns).
    fn load(&self) -> Result<(Vec<Stored>, i64), EtcdError> {
        let prefix = self.prefix.clone().into_bytes();
        self.worker
            .run(move |c: Client| async move {
                warm::read_changed(&c, &prefix, 0, CALL_DEADLINE).await
            })
            .map_err(self.req("read the records"))
    }

    /// The state URL, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// What the last committed batch cost.
    pub fn last_commit(&self) -> CommitStats {
        self.last
    }

    /// Makes every later write conditional on `fence` (this hub leads).
    pub fn set_fence(&mut self, fence: Fence) {
        self.fence = Some(fence);
    }

    fn check_usable(&self) -> Result<(), EtcdError> {
        if self.failed {
            return Err(EtcdError::Failed {
                target: self.target.clone(),
            });
        }
        self.check_fence()
    }

    /// `Ok` without a fence or while it holds.
    fn check_fence(&self) -> Result<(), EtcdError> {
        match &self.fence {
            Some(f) => f.check().map_err(|why| EtcdError::Fenced {
                target: self.target.clone(),
                why,
            }),
            None => Ok(()),
        }
    }

    fn check_key(&self, key: &str) -> Result<(), EtcdError> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(EtcdError::InvalidKey {
                target: self.target.clone(),
                key: key.to_owned(),
            });
        }
        Ok(())
    }

    /// Starts a group of writes, sent by [`EtcdBatch::commit`].
    pub fn batch(&mut self) -> Result<EtcdBatch<'_>, EtcdError> {
        self.check_usable()?;
        Ok(EtcdBatch {
            store: self,
            txns: Vec::new(),
            ops: Vec::new(),
            bytes: 0,
            stats: CommitStats::default(),
        })
    }

    /// Deletes the records of `keys` (nodes no longer configured).
    pub fn remove_batch<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), EtcdError> {
        let mut b = self.batch()?;
        for key in keys {
            b.remove(key)?;
        }
        b.commit()
    }

    /// Deletes every record under the prefix; returns how many there were.
    pub fn purge(self) -> Result<i64, EtcdError> {
        self.check_usable()?;
        let prefix = self.prefix.clone();
        let r = self.worker.call(CALL_DEADLINE, move |mut c: Client| {
            let prefix = prefix.clone();
            async move {
                c.delete(prefix, Some(DeleteOptions::new().with_prefix()))
                    .await
            }
        });
        r.map(|d| d.deleted()).map_err(|source| EtcdError::Request {
            target: self.target.clone(),
            op: "delete the records",
            source,
        })
    }
}

/// A key and its sealed value, as read from etcd.
type Stored = (Vec<u8>, Vec<u8>);

/// The first key after every key that starts with `prefix` (etcd's range
/// end for a prefix). The prefix is ASCII ending in `/`, so the last byte
/// can always be incremented.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A group of writes to etcd, split into transactions as it grows. Values
/// are sealed as they are added; nothing is sent before `commit`.
pub struct EtcdBatch<'s> {
    store: &'s mut EtcdStore,
    txns: Vec<Vec<TxnOp>>,
    ops: Vec<TxnOp>,
    bytes: usize,
    stats: CommitStats,
}

impl EtcdBatch<'_> {
    fn push(&mut self, op: TxnOp, size: usize) {
        if !self.ops.is_empty()
            && (self.ops.len() == MAX_TXN_OPS || self.bytes + size > MAX_TXN_BYTES)
        {
            self.txns.push(std::mem::take(&mut self.ops));
            self.bytes = 0;
        }
        self.ops.push(op);
        self.bytes += size;
        self.stats.records += 1;
        self.stats.bytes += size;
    }

    /// Adds the new record `value` of `key`.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), EtcdError> {
        self.store.check_key(key)?;
        let k = format!("{}{key}", self.store.prefix);
        let sealed = self
            .store
            .sealer
            .seal(k.as_bytes(), value)
            .map_err(|source| EtcdError::Seal {
                target: self.store.target.clone(),
                key: key.to_owned(),
                source,
            })?;
        let size = k.len() + sealed.len();
        self.push(TxnOp::put(k, sealed, None), size);
        Ok(())
    }

    /// Adds the removal of `key`'s record.
    pub fn remove(&mut self, key: &str) -> Result<(), EtcdError> {
        self.store.check_key(key)?;
        let k = format!("{}{key}", self.store.prefix);
        let size = k.len();
        self.push(TxnOp::delete(k, None), size);
        Ok(())
    }

    /// Sends every transaction and waits until etcd acknowledged all of
    /// them (each is committed by a quorum of members). An empty batch does
    /// nothing. On `Err` the store refuses further work.
    pub fn commit(mut self) -> Result<(), EtcdError> {
        if !self.ops.is_empty() {
            self.txns.push(std::mem::take(&mut self.ops));
        }
        if self.txns.is_empty() {
            return Ok(());
        }
        let mut stats = self.stats;
        stats.requests = self.txns.len();
        let txns = Arc::new(std::mem::take(&mut self.txns));
        let when: Arc<Vec<Compare>> = Arc::new(
            self.store
                .fence
                .iter()
                .map(|f| Compare::create_revision(f.key(), CompareOp::Equal, f.token()))
                .collect(),
        );
        let n = txns.len();
        let fence = self.store.fence.clone();
        let window = Arc::clone(&self.store.window);
        let r = self.store.worker.run(move |c: Client| {
            let send = move |i: usize| {
                let mut c = c.clone();
                let txn = Txn::new().when(when.as_slice()).and_then(txns[i].clone());
                async move { c.txn(txn).await.map(|r: TxnResponse| r.succeeded()) }
            };
            // The fence's own clock may run out in a long burst: what is
            // still unsent then is not sent.
            let leading = move || fence.as_ref().is_none_or(|f| f.check().is_ok());
            burst::send_burst(n, window, burst::STALL, send, leading)
        });
        match r {
            Ok(true) => {
                // Acknowledged, but acted upon only while still leading.
                if let Err(e) = self.store.check_fence() {
                    self.store.failed = true;
                    return Err(e);
                }
                self.store.last = stats;
                Ok(())
            }
            Ok(false) => {
                self.store.failed = true;
                self.store.check_fence()?;
                let why = match &self.store.fence {
                    Some(f) => format!(
                        "{} no longer holds this hub's token {} (another hub leads, or none)",
                        f.key(),
                        f.token()
                    ),
                    None => "a transaction's condition failed".into(),
                };
                Err(EtcdError::Fenced {
                    target: self.store.target.clone(),
                    why,
                })
            }
            Err(source) => {
                self.store.failed = true;
                Err(EtcdError::Request {
                    target: self.store.target.clone(),
                    op: "write the records",
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"r/node/"), b"r/node0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
    }
}
