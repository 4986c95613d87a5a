//! Durable per-node state: an append-only log plus a periodic snapshot.
//!
//! The daemon persists, per node, one opaque record of ~100–300 bytes (made
//! by the protocol core; it holds key material) so that a restart resumes
//! exactly where it stopped. Each burst of the event loop writes the records
//! of every node that changed in **one group commit** ([`Store::batch`]: one
//! frame, one `fdatasync`), durable before any datagram of that burst is
//! sent. Writes stream through one bounded buffer (see `writer`), so memory
//! does not grow with the number of records.
//!
//! # Why not a B-tree (redb)
//! Records are always rewritten whole, and the core can re-serialise every
//! live record at any time. A copy-on-write B-tree writes at least a page per
//! changed leaf per commit and keeps a page cache; a log appends just the
//! changed bytes, and a snapshot written from the core's live state
//! ([`Store::compact`]) bounds the log. `Store` keeps no record in memory:
//! only file handles, offsets and a reusable (zeroized) write buffer.
//!
//! # Files (in `dir`, mode 0700, ours, not group/world-writable)
//! * `<instance>.lock` (0600): `flock`ed exclusively for as long as the
//!   [`Store`] lives; holds the owner's pid for the error message.
//! * `<instance>.snap` (0600): header, then one frame per live record.
//! * `<instance>.log` (0600): header, then one frame per batch.
//! * `<instance>.snap.tmp`: a snapshot being written; never read, removed at
//!   open.
//!
//! # Format (little-endian)
//! * Header (32 bytes): `magic[8]` (`rotorsnp` / `rotorlog`),
//!   `version: u32` (1), `generation: u64`, `count: u64` (snapshot: number of
//!   frames that follow; log: 0), `crc32: u32` over the 28 bytes before it.
//! * Frame: `len: u32`, `crc32: u32`, `body[len]`. The CRC32 covers the
//!   file's generation (8 bytes), the 4 length bytes and the body.
//! * Body: one or more entries `kind: u8` (1 put, 2 tombstone),
//!   `key_len: u8`, `value_len: u32`, `key` (UTF-8, 1..=255 bytes), `value`.
//!   A snapshot frame holds exactly one put; a log frame holds one whole
//!   batch, so a batch is applied entirely or not at all.
//!
//! Loading reads each file whole into one zeroizing buffer and parses it in
//! place; the live state is the snapshot with the log's frames applied in
//! order (last write wins; a tombstone removes the key).
//!
//! # Crash safety
//! The invariant: **the log's generation equals the snapshot's, or is one
//! less (a log a compaction had not yet emptied, whose content the snapshot
//! already contains); a log frame only counts if its CRC, seeded with the
//! generation in the log header, checks.**
//!
//! * **Append** (a [`Batch`]): the frame's body at the end of the log, in
//!   `pwrite`s of up to 256 KiB, then its head (length and CRC) in front of
//!   it, then `fdatasync` (which also makes the new file size durable). A
//!   crash before `fdatasync` returns may leave nothing, a prefix of the
//!   frame, a body without its head (zeros: an impossible length) or the
//!   frame with holes: its length is impossible or runs past the end, or its
//!   CRC fails, so it is a *torn tail*: it is
//!   cut off at open (`ftruncate` + `fdatasync`) and reported in
//!   [`Loaded::torn_tail`]. That batch was never acknowledged, so no datagram
//!   depended on it. Only the last frame can be torn, because no frame is
//!   written before the previous one is durable; a bad frame *followed by a
//!   good one* is therefore corruption, not a crash, and is an error rather
//!   than silently dropping acknowledged batches. After a failed write or
//!   sync the [`Store`] refuses further work ([`StoreError::Failed`]): after a
//!   failed `fdatasync` Linux may have dropped the dirty pages and cleared the
//!   error, so only a reopen (restart) tells what is on disk.
//! * **Compaction** (generation G → G+1):
//!   1. write every live record to `.snap.tmp` with generation G+1, `fsync`;
//!   2. `rename` it over `.snap`; `fsync` the directory;
//!   3. `ftruncate` the log to 0, write a header with generation G+1,
//!      `fdatasync`.
//!
//!   Crash before 2 is durable: old snapshot (G) + old log (G): the old
//!   state, which equals the new one (the new snapshot is the state after
//!   every logged batch). `.snap.tmp` is removed at open. Crash after 2 and
//!   before 3 is durable: new snapshot (G+1) + old log (G): the log is one
//!   generation behind, so it is ignored and emptied at open — the snapshot
//!   already holds everything in it, and replaying it could resurrect a
//!   value an older frame held. Crash during 3: the log is empty, a torn
//!   header (no frames can follow it), or a full header of G+1 — all read as
//!   an empty log of the snapshot's generation. Should a filesystem ever show
//!   the new G+1 header followed by old G frames, those frames fail their
//!   CRC (seeded with G+1) and are cut off as a torn tail. Step 3 never runs
//!   before the rename is durable (the directory `fsync`), so "log of G+1 with
//!   snapshot of G" cannot arise from a crash and is an error. The same
//!   directory `fsync` is repeated at every open before any repair of the
//!   log, in case a previous process died between rename and directory sync.
//! * **Creation**: an empty snapshot (generation 1) is made exactly like a
//!   compaction, then the log is created with its header and synced, then the
//!   directory is synced. A log without a snapshot therefore means the
//!   snapshot was removed (by hand, or a [`Store::purge`] cut short, which
//!   removes the snapshot first): that is an error, not an empty state,
//!   because the log alone could roll nodes back to older keys.
//! * The snapshot is only ever replaced by `rename` of a synced file, so it
//!   is never torn: any defect in it (bad header or CRC, a frame count that
//!   does not match, trailing bytes) is reported with the file and byte
//!   offset ([`StoreError::Corrupt`]), never guessed around.
//!
//! # Secrets
//! Record bytes are key material. The write buffer is zeroized after every
//! batch and chunk (and grown by copy-and-zeroize, never by a `Vec`
//! reallocation that would free a copy); file contents are read into
//! [`Zeroizing`] buffers; [`Loaded`] hands out [`Zeroizing`] values and
//! zeroizes what is left when dropped. No `Debug` or error shows content.

mod format;
mod lock;
mod writer;

use writer::SnapshotWriter;
pub use writer::{Batch, Compaction};

/// Takes the lock on a reqid range in this host's current network
/// namespace: the file `reqids-BASE-NETNS.lock` in `dir` (created 0700),
/// NETNS being the namespace's inode. Two daemons whose objects would carry
/// the same reqids in the same XFRM tables (two hubs with different
/// `state_dir`s, or two nodes whose names hash alike) cannot both hold it,
/// whatever their state directories. Held as long as the file lives.
pub fn lock_reqids(dir: &Path, base: u32) -> Result<std::fs::File, StoreError> {
    lock::ensure_dir(dir)?;
    let ns = std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("net:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string());
    lock::acquire(&dir.join(format!("reqids-{base:08x}-{ns}.lock")))
}
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::{Zeroize, Zeroizing};

use format::{FileKind, Frame, HEADER_LEN, Header};

/// The log may grow to this before a compaction is due, whatever the size of
/// the snapshot. A compaction re-encodes and rewrites every record (at
/// 10,000 nodes one per rotation round at twice the snapshot size, a third
/// of the hub's CPU per rotation in UML); a longer log costs only start-up
/// reading time.
const MIN_COMPACT_LOG: u64 = 16 << 20;
/// ... or this many times the snapshot.
const COMPACT_FACTOR: u64 = 4;
/// The write buffer keeps at most this much capacity between batches.
const KEEP_BUF: usize = 1 << 20;

/// Why the store could not be opened, read or written. Every variant names
/// the file (or directory); none shows record content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A system call on a store file or directory failed.
    #[error("{path}: cannot {op}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The instance name cannot be used in a file name.
    #[error("{dir}: instance name {instance:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    InvalidInstance {
        /// The state directory.
        dir: PathBuf,
        /// The refused name.
        instance: String,
    },
    /// The state path exists but is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// Group or others may write the state directory.
    #[error(
        "{path}: mode {mode:04o} lets other users write rotor's state directory; run `chmod 700 {path}`"
    )]
    DirMode {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Group or others may access a store file.
    #[error(
        "{path}: mode {mode:04o} lets other users access rotor's key state; run `chmod 600 {path}`"
    )]
    FileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The directory or a file belongs to another user.
    #[error("{path}: owned by uid {owner}, but rotor runs as uid {me}; chown it")]
    Owner {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        me: u32,
    },
    /// Another process holds the instance's lock.
    #[error("{path}: another rotor instance{} holds this lock; stop it first", match pid { Some(p) => format!(" (pid {p})"), None => String::new() })]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, if it had written it.
        pid: Option<u32>,
    },
    /// A file is damaged in a way a crash cannot explain.
    #[error(
        "{path}: corrupt at byte offset {offset}: {why}; rotor will not guess (move the file away to start afresh, which re-initialises every node)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damaged header, frame or entry.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The log belongs to neither this snapshot nor its predecessor.
    #[error(
        "{path}: log generation {log_generation} does not belong to snapshot generation {snap_generation}; the files are from different stores"
    )]
    GenerationMismatch {
        /// The log file.
        path: PathBuf,
        /// Generation in the log header.
        log_generation: u64,
        /// Generation in the snapshot header.
        snap_generation: u64,
    },
    /// The log exists without its snapshot.
    #[error(
        "{path} is missing but {log} exists; the log alone cannot be restored (remove {log} to start afresh, which re-initialises every node)"
    )]
    MissingSnapshot {
        /// The missing snapshot.
        path: PathBuf,
        /// The log that is there.
        log: PathBuf,
    },
    /// A record key is empty or longer than 255 bytes.
    #[error("{path}: record key {key:?} must be 1 to 255 bytes")]
    InvalidKey {
        /// The file it was meant for.
        path: PathBuf,
        /// The key (a node name, not secret).
        key: String,
    },
    /// One batch or record is larger than a frame may be (1 GiB).
    #[error("{path}: a batch of {bytes} bytes exceeds the 1 GiB frame limit")]
    TooLarge {
        /// The file it was meant for.
        path: PathBuf,
        /// Its size.
        bytes: usize,
    },
    /// An earlier write or sync failed; what is on disk is unknown until
    /// the store is reopened.
    #[error(
        "{path}: an earlier write or sync failed, so the store accepts no more writes; restart rotor to reload it"
    )]
    Failed {
        /// The file whose write or sync failed.
        path: PathBuf,
    },
}

/// The live records found at open. Take each node's record while restoring,
/// then drop this: whatever is left is zeroized.
pub struct Loaded {
    records: HashMap<String, Zeroizing<Vec<u8>>>,
    /// The log ended in a partial or damaged write (a crash during an
    /// unacknowledged batch); it was cut off. Worth a log line.
    pub torn_tail: bool,
    /// The log was left over from a compaction that a crash interrupted
    /// after the new snapshot was in place; it was emptied (its content is in
    /// the snapshot).
    pub stale_log: bool,
}

impl Loaded {
    /// Records held in memory rather than read from disk: the current state
    /// of a running daemon, restored into its replacement on a reload.
    pub fn from_records(records: HashMap<String, Zeroizing<Vec<u8>>>) -> Loaded {
        Loaded {
            records,
            torn_tail: false,
            stale_log: false,
        }
    }

    /// Removes and returns the record of `key`.
    pub fn take(&mut self, key: &str) -> Option<Zeroizing<Vec<u8>>> {
        self.records.remove(key)
    }

    /// Number of records not yet taken.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No records left.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Keys of the records not yet taken (e.g. nodes no longer configured,
    /// for [`Store::remove_batch`]).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.records.keys().map(String::as_str)
    }
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("records", &self.records.len())
            .field("torn_tail", &self.torn_tail)
            .field("stale_log", &self.stale_log)
            .finish()
    }
}

/// An open, locked store of one instance. Holds no records.
pub struct Store {
    dir: PathBuf,
    dir_file: File,
    snap_path: PathBuf,
    tmp_path: PathBuf,
    log_path: PathBuf,
    lock_path: PathBuf,
    /// Holds the `flock` while it is open.
    _lock: File,
    log: File,
    log_len: u64,
    snap_len: u64,
    generation: u64,
    /// Reused for every batch and snapshot chunk; zeroized after each use.
    buf: Vec<u8>,
    /// Set by a failed write or sync: see [`StoreError::Failed`].
    failed: Option<PathBuf>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("log", &self.log_path)
            .field("log_len", &self.log_len)
            .field("snap_len", &self.snap_len)
            .field("generation", &self.generation)
            .field("failed", &self.failed.is_some())
            .finish()
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// Whether `path` exists (an error other than "not found" is an error).
fn exists(path: &Path) -> Result<bool, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path, "inspect")(e)),
    }
}

/// Removes `path` if it exists.
fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "remove")(e)),
    }
}

/// Reads a whole file into one zeroizing buffer, sized from its metadata so
/// it is never reallocated (a reallocation would free a copy of the keys).
fn read_whole(path: &Path, file: &mut File) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let len = file.metadata().map_err(io_err(path, "inspect"))?.len();
    let len = usize::try_from(len).map_err(|_| StoreError::Corrupt {
        path: path.to_owned(),
        offset: 0,
        why: "file too large",
    })?;
    let mut data = Zeroizing::new(vec![0u8; len]);
    file.read_exact(&mut data).map_err(io_err(path, "read"))?;
    Ok(data)
}

impl Store {
    /// Opens (creating if needed) the store of `instance` in `dir`, locks it,
    /// and loads its records. See the module doc for what is checked.
    pub fn open(dir: &Path, instance: &str) -> Result<(Store, Loaded), StoreError> {
        if !lock::valid_instance(instance) {
            return Err(StoreError::InvalidInstance {
                dir: dir.to_owned(),
                instance: instance.to_owned(),
            });
        }
        lock::ensure_dir(dir)?;
        let file = |ext: &str| dir.join(format!("{instance}.{ext}"));
        let (snap_path, tmp_path, log_path, lock_path) =
            (file("snap"), file("snap.tmp"), file("log"), file("lock"));
        let lock = lock::acquire(&lock_path)?;
        let dir_file = File::open(dir).map_err(io_err(dir, "open directory"))?;

        // A snapshot that a compaction never renamed into place.
        remove_if_present(&tmp_path)?;
        let snap_exists = exists(&snap_path)?;
        let log_exists = exists(&log_path)?;
        if !snap_exists && log_exists {
            return Err(StoreError::MissingSnapshot {
                path: snap_path,
                log: log_path,
            });
        }
        // Until the log is opened below, `log` is a placeholder handle.
        let placeholder = dir_file
            .try_clone()
            .map_err(io_err(dir, "open directory"))?;
        let mut store = Store {
            dir: dir.to_owned(),
            dir_file,
            snap_path,
            tmp_path,
            log_path,
            lock_path,
            _lock: lock,
            log: placeholder,
            log_len: 0,
            snap_len: 0,
            generation: 0,
            buf: Vec::new(),
            failed: None,
        };
        if !snap_exists {
            let w = SnapshotWriter::create(&store.tmp_path, 1, Vec::new())?;
            let (len, buf) = w.finish();
            store.recycle(buf);
            if len.is_err() {
                let _ = fs::remove_file(&store.tmp_path);
            }
            store.snap_len = len?;
            store.install_snapshot()?;
        }
        // Make a rename by a process that died before its directory sync
        // durable before we repair the log against that snapshot.
        store.sync_dir()?;

        let mut records = HashMap::new();
        store.generation = store.load_snapshot(&mut records)?;
        let mut loaded = Loaded {
            records,
            torn_tail: false,
            stale_log: false,
        };
        store.load_log(log_exists, &mut loaded)?;
        Ok((store, loaded))
    }

    /// Appends `records` (key, new value) to the log as one frame, then
    /// `fdatasync`s: durable when this returns `Ok`. An empty batch does
    /// nothing. Keys are 1..=255 bytes. See [`Store::batch`] to stream one.
    pub fn write_batch<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), StoreError> {
        let mut b = self.batch()?;
        for (key, value) in records {
            b.put(key, value)?;
        }
        b.commit()
    }

    /// Records that `keys` are gone (tombstones), like [`Store::write_batch`].
    pub fn remove_batch<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        let mut b = self.batch()?;
        for key in keys {
            b.remove(key)?;
        }
        b.commit()
    }

    /// The log has grown past max(16 MiB, 4 x the snapshot): time for
    /// [`Store::compaction`].
    pub fn needs_compaction(&self) -> bool {
        self.log_len > MIN_COMPACT_LOG.max(COMPACT_FACTOR * self.snap_len)
    }

    /// Replaces the snapshot with `all` — every live record, as of now —
    /// and empties the log, like [`Store::compaction`] (which streams).
    pub fn compact<'a>(
        &mut self,
        all: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), StoreError> {
        let mut c = self.compaction()?;
        for (key, value) in all {
            c.put(key, value)?;
        }
        c.finish()
    }

    /// Removes the snapshot, the log and the lock file, for uninstalling.
    /// The snapshot goes first: a purge cut short leaves a log without a
    /// snapshot, which open refuses rather than restoring older keys.
    pub fn purge(self) -> Result<(), StoreError> {
        remove_if_present(&self.snap_path)?;
        self.sync_dir()?;
        remove_if_present(&self.log_path)?;
        remove_if_present(&self.tmp_path)?;
        remove_if_present(&self.lock_path)?;
        self.sync_dir()
        // Dropping `self` closes the lock file, which releases the lock.
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(path) => Err(StoreError::Failed { path: path.clone() }),
            None => Ok(()),
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        self.dir_file
            .sync_all()
            .map_err(io_err(&self.dir, "sync directory"))
    }

    /// Marks the store failed because of an error on `path`.
    fn fail(&mut self, path: PathBuf, op: &'static str, source: io::Error) -> StoreError {
        self.failed = Some(path.clone());
        StoreError::Io { path, op, source }
    }

    /// Zeroizes what the buffer holds and keeps it for the next use unless
    /// a huge batch made it big.
    fn recycle(&mut self, mut buf: Vec<u8>) {
        buf.as_mut_slice().zeroize();
        buf.clear();
        if buf.capacity() > KEEP_BUF {
            buf = Vec::new();
        }
        self.buf = buf;
    }

    fn check_key(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        if key.is_empty() || key.len() > format::MAX_KEY {
            return Err(StoreError::InvalidKey {
                path: path.to_owned(),
                key: key.to_owned(),
            });
        }
        Ok(())
    }

    /// Empties the log and gives it a header of the current generation,
    /// synced. A failure leaves the store failed.
    fn reset_log(&mut self) -> Result<(), StoreError> {
        let header = format::encode_header(
            FileKind::Log,
            Header {
                generation: self.generation,
                count: 0,
            },
        );
        let done = self
            .log
            .set_len(0)
            .map_err(|e| ("truncate", e))
            .and_then(|()| {
                self.log
                    .write_all_at(&header, 0)
                    .map_err(|e| ("write header of", e))
            })
            .and_then(|()| self.log.sync_data().map_err(|e| ("sync", e)));
        match done {
            Ok(()) => {
                self.log_len = HEADER_LEN as u64;
                Ok(())
            }
            Err((op, e)) => Err(self.fail(self.log_path.clone(), op, e)),
        }
    }

    /// Renames the synced `.snap.tmp` over the snapshot and syncs the
    /// directory. A failed rename leaves everything as it was (the temporary
    /// file is removed); a failed directory sync leaves the store failed.
    fn install_snapshot(&mut self) -> Result<(), StoreError> {
        if let Err(e) = fs::rename(&self.tmp_path, &self.snap_path) {
            let _ = fs::remove_file(&self.tmp_path);
            return Err(io_err(&self.snap_path, "rename snapshot into place")(e));
        }
        if let Err(e) = self.dir_file.sync_all() {
            return Err(self.fail(self.dir.clone(), "sync directory", e));
        }
        Ok(())
    }

    /// Reads the snapshot into `records`; returns its generation.
    fn load_snapshot(
        &mut self,
        records: &mut HashMap<String, Zeroizing<Vec<u8>>>,
    ) -> Result<u64, StoreError> {
        let path = &self.snap_path;
        let mut file = File::open(path).map_err(io_err(path, "open"))?;
        lock::check_file(path, &file)?;
        let data = read_whole(path, &mut file)?;
        let corrupt = |offset: usize, why| StoreError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            why,
        };
        let header =
            format::decode_header(FileKind::Snapshot, &data).map_err(|why| corrupt(0, why))?;
        // Each frame takes at least 9 bytes: cap what a bad count may reserve.
        let count = usize::try_from(header.count).unwrap_or(usize::MAX);
        records.reserve(count.min(data.len() / 9));
        let mut off = HEADER_LEN;
        for _ in 0..header.count {
            if off == data.len() {
                return Err(corrupt(
                    off,
                    "file ends before the record count in its header",
                ));
            }
            let (body, at) = match format::read_frame(&data, off, header.generation) {
                Frame::Good { body, next } => (body, std::mem::replace(&mut off, next)),
                Frame::Bad { why, .. } => return Err(corrupt(off, why)),
            };
            let mut it = format::entries(body);
            let entry = match (it.next(), it.next()) {
                (Some(Ok(e)), None) if e.kind == format::KIND_PUT => e,
                (Some(Err(why)), _) => return Err(corrupt(at, why)),
                _ => return Err(corrupt(at, "snapshot frame is not exactly one record")),
            };
            records.insert(entry.key.to_owned(), Zeroizing::new(entry.value.to_vec()));
        }
        if off != data.len() {
            return Err(corrupt(off, "bytes after the last record"));
        }
        self.snap_len = data.len() as u64;
        Ok(header.generation)
    }

    /// Opens (or creates) the log, checks it belongs to the snapshot,
    /// replays it over `loaded`, and cuts off a torn tail.
    fn load_log(&mut self, exists: bool, loaded: &mut Loaded) -> Result<(), StoreError> {
        let path = self.log_path.clone();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        lock::check_file(&path, &file)?;
        let data = read_whole(&path, &mut file)?;
        self.log = file;
        if !exists {
            self.reset_log()?;
            return self.sync_dir();
        }
        let corrupt = |offset: usize, why| StoreError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            why,
        };
        let header = match format::decode_header(FileKind::Log, &data) {
            Ok(h) => h,
            // A header write cut short by a crash (nothing follows a header
            // until it is synced): an empty log.
            Err(why)
                if data.len() < HEADER_LEN
                    || (data.len() == HEADER_LEN && why == format::HEADER_CRC_MISMATCH) =>
            {
                loaded.torn_tail = !data.is_empty();
                return self.reset_log();
            }
            Err(why) => return Err(corrupt(0, why)),
        };
        if header.generation + 1 == self.generation {
            loaded.stale_log = true;
            return self.reset_log();
        }
        if header.generation != self.generation {
            return Err(StoreError::GenerationMismatch {
                path,
                log_generation: header.generation,
                snap_generation: self.generation,
            });
        }
        let mut off = HEADER_LEN;
        while off < data.len() {
            match format::read_frame(&data, off, header.generation) {
                Frame::Good { body, next } => {
                    for entry in format::entries(body) {
                        let entry = entry.map_err(|why| corrupt(off, why))?;
                        if entry.kind == format::KIND_PUT {
                            loaded
                                .records
                                .insert(entry.key.to_owned(), Zeroizing::new(entry.value.to_vec()));
                        } else {
                            loaded.records.remove(entry.key);
                        }
                    }
                    off = next;
                }
                Frame::Bad { why, end } => {
                    // Only the last frame can be torn: a good frame after a
                    // bad one means acknowledged batches would be lost.
                    if let Some(end) = end
                        && end < data.len()
                        && matches!(
                            format::read_frame(&data, end, header.generation),
                            Frame::Good { .. }
                        )
                    {
                        return Err(corrupt(off, why));
                    }
                    break;
                }
            }
        }
        self.log_len = off as u64;
        if off < data.len() {
            loaded.torn_tail = true;
            let done = self
                .log
                .set_len(self.log_len)
                .and_then(|()| self.log.sync_data());
            if let Err(e) = done {
                return Err(self.fail(path, "cut the torn tail off", e));
            }
        }
        Ok(())
    }
}
