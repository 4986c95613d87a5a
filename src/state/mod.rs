//! Where a daemon's durable records live: the embedded file store
//! ([`crate::store`], the default) or etcd ([`etcd`], a hub with
//! `state = "etcd://..."`). [`Backend`] is the one seam the daemon writes
//! through; both ends give the same guarantee: when a batch's `commit`
//! returns `Ok`, a restart (of this hub, or another on the same etcd prefix)
//! finds every record of it.

pub mod etcd;

use std::path::Path;

use crate::store::{self, Loaded, Store, StoreError};
use etcd::{ClusterKey, EtcdBatch, EtcdError, EtcdStore, EtcdTarget};

/// A failure of either store; the message is the store's own.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file store.
    #[error(transparent)]
    File(#[from] StoreError),
    /// The etcd store.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// Where a hub's records go, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateConfig {
    /// The embedded file store in this directory.
    Dir(std::path::PathBuf),
    /// etcd, sealed under the cluster key read from `key_file`.
    Etcd {
        /// Members and key prefix.
        target: EtcdTarget,
        /// The cluster key file (for messages and reload checks).
        key_file: std::path::PathBuf,
        /// The cluster key.
        key: ClusterKey,
    },
}

/// An open store of either kind.
#[derive(Debug)]
pub enum Backend {
    /// The embedded append-only log + snapshot.
    File(Store),
    /// etcd.
    Etcd(EtcdStore),
}

impl From<Store> for Backend {
    fn from(s: Store) -> Self {
        Backend::File(s)
    }
}

impl From<EtcdStore> for Backend {
    fn from(s: EtcdStore) -> Self {
        Backend::Etcd(s)
    }
}

/// Opens the store `cfg` names for `instance` (the file store's file name
/// stem; etcd keys are named by the prefix alone) and loads its records.
pub fn open(cfg: &StateConfig, instance: &str) -> Result<(Backend, Loaded), StateError> {
    match cfg {
        StateConfig::Dir(dir) => {
            let (s, l) = Store::open(Path::new(dir), instance)?;
            Ok((Backend::File(s), l))
        }
        StateConfig::Etcd { target, key, .. } => {
            let (s, l) = EtcdStore::open(target, key)?;
            Ok((Backend::Etcd(s), l))
        }
    }
}

/// A group of writes to either store.
pub enum Batch<'a> {
    /// One log frame.
    File(store::Batch<'a>),
    /// One or more etcd transactions.
    Etcd(EtcdBatch<'a>),
}

impl Batch<'_> {
    /// Adds `key`'s new record.
    #[inline]
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        match self {
            Batch::File(b) => b.put(key, value).map_err(StateError::File),
            Batch::Etcd(b) => b.put(key, value).map_err(StateError::Etcd),
        }
    }

    /// Makes the batch durable.
    pub fn commit(self) -> Result<(), StateError> {
        match self {
            Batch::File(b) => b.commit().map_err(StateError::File),
            Batch::Etcd(b) => b.commit().map_err(StateError::Etcd),
        }
    }
}

impl Backend {
    /// Starts a group commit.
    pub fn batch(&mut self) -> Result<Batch<'_>, StateError> {
        Ok(match self {
            Backend::File(s) => Batch::File(s.batch()?),
            Backend::Etcd(s) => Batch::Etcd(s.batch()?),
        })
    }

    /// Forgets the records of `keys`.
    pub fn remove_batch<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), StateError> {
        match self {
            Backend::File(s) => s.remove_batch(keys).map_err(StateError::File),
            Backend::Etcd(s) => s.remove_batch(keys).map_err(StateError::Etcd),
        }
    }

    /// The file store's log is due for a compaction. etcd keeps one live
    /// value per key (its history is compacted by etcd's own
    /// `--auto-compaction-*`), so never for etcd.
    pub fn needs_compaction(&self) -> bool {
        match self {
            Backend::File(s) => s.needs_compaction(),
            Backend::Etcd(_) => false,
        }
    }

    /// The file store, for its compaction.
    pub fn file_mut(&mut self) -> Option<&mut Store> {
        match self {
            Backend::File(s) => Some(s),
            Backend::Etcd(_) => None,
        }
    }
}
