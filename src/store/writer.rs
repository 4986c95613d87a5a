//! The two ways records reach the disk, each streamed through one bounded,
//! zeroized buffer, so memory stays flat whatever the number of records
//! (a 100,000-node hub rewrites every record at a compaction):
//!
//! * [`Batch`]: one log frame holding a whole batch. The body goes out in
//!   chunks as it grows, with its CRC computed on the way; the frame head
//!   (length and CRC) is written last, then one `fdatasync`. Until the head
//!   is durable the frame reads as a torn tail (a zero length, or a CRC that
//!   fails), so a batch is still applied entirely or not at all.
//! * [`Compaction`]: a new snapshot, one frame per record, written to the
//!   temporary file in chunks, then put in place (see the crash-safety
//!   section of [`crate::store`]).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use zeroize::Zeroize;

use super::format::{self, FileKind, HEADER_LEN, Header};
use super::{Store, StoreError, io_err, remove_if_present};

/// Buffered bytes are written out once they reach this size.
pub(super) const CHUNK: usize = 256 << 10;

/// One group commit to the log: [`Batch::put`] and [`Batch::remove`] as many
/// records as the step changed, then [`Batch::commit`]. Nothing is durable,
/// and nothing may be acted on, before `commit` returns `Ok`. A batch
/// dropped uncommitted after it wrote part of its frame leaves the store
/// failed (the bytes past the log's end are unknown until a restart reads
/// them); the callers drop one only on an error that already did so.
pub struct Batch<'s> {
    store: &'s mut Store,
    buf: Vec<u8>,
    /// Log offset of the frame head.
    at: u64,
    /// Body bytes already written (they follow the head).
    written: u64,
    /// Body length so far, written or buffered.
    body_len: usize,
    crc: crc32fast::Hasher,
    entries: usize,
    done: bool,
}

impl Store {
    /// Starts a group commit at the end of the log.
    pub fn batch(&mut self) -> Result<Batch<'_>, StoreError> {
        self.check_usable()?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let at = self.log_len;
        Ok(Batch {
            store: self,
            buf,
            at,
            written: 0,
            body_len: 0,
            crc: crc32fast::Hasher::new(),
            entries: 0,
            done: false,
        })
    }

    /// Starts a compaction: a new snapshot that [`Compaction::put`] fills
    /// with every live record and [`Compaction::finish`] puts in place of
    /// the old one, emptying the log. Dropped unfinished, it changes
    /// nothing (the temporary file is removed).
    pub fn compaction(&mut self) -> Result<Compaction<'_>, StoreError> {
        self.check_usable()?;
        let generation = self.generation + 1;
        let w = SnapshotWriter::create(&self.tmp_path, generation, std::mem::take(&mut self.buf))?;
        Ok(Compaction {
            store: self,
            w: Some(w),
        })
    }
}

impl Batch<'_> {
    /// Adds "`key` now holds `value`". Keys are 1..=255 bytes.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.push(format::KIND_PUT, key, value)
    }

    /// Adds "`key` is gone" (a tombstone).
    pub fn remove(&mut self, key: &str) -> Result<(), StoreError> {
        self.push(format::KIND_DEL, key, &[])
    }

    fn push(&mut self, kind: u8, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.store.check_key(key, &self.store.log_path)?;
        let entry = (format::ENTRY_HEAD + key.len()).saturating_add(value.len());
        let bytes = self.body_len.saturating_add(entry);
        if bytes > format::MAX_FRAME {
            return Err(StoreError::TooLarge {
                path: self.store.log_path.clone(),
                bytes,
            });
        }
        format::push_entry(&mut self.buf, kind, key, value);
        self.body_len = bytes;
        self.entries += 1;
        if self.buf.len() >= CHUNK {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes the buffered body bytes after the head's place.
    fn write_out(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.crc.update(&self.buf);
        let off = self.at + (format::FRAME_HEAD as u64) + self.written;
        let r = self.store.log.write_all_at(&self.buf, off);
        self.written += self.buf.len() as u64;
        self.buf.as_mut_slice().zeroize();
        self.buf.clear();
        r.map_err(|e| self.store.fail(self.store.log_path.clone(), "append to", e))
    }

    /// Writes the rest of the body, then the frame head, then `fdatasync`s:
    /// the whole batch is durable when this returns `Ok`. An empty batch
    /// writes nothing.
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.done = true;
        if self.entries == 0 {
            return Ok(());
        }
        self.write_out()?;
        let head = format::frame_head(self.store.generation, self.body_len, &self.crc);
        let store = &mut *self.store;
        store
            .log
            .write_all_at(&head, self.at)
            .map_err(|e| ("append to", e))
            .and_then(|()| store.log.sync_data().map_err(|e| ("sync", e)))
            .map_err(|(op, e)| store.fail(store.log_path.clone(), op, e))?;
        store.log_len = self.at + (format::FRAME_HEAD + self.body_len) as u64;
        Ok(())
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if !self.done && self.written > 0 && self.store.failed.is_none() {
            self.store.failed = Some(self.store.log_path.clone());
        }
        let buf = std::mem::take(&mut self.buf);
        self.store.recycle(buf);
    }
}

/// A snapshot being written; see [`Store::compaction`].
pub struct Compaction<'s> {
    store: &'s mut Store,
    w: Option<SnapshotWriter>,
}

impl Compaction<'_> {
    /// Adds one live record. Keys are 1..=255 bytes.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.store.check_key(key, &self.store.tmp_path)?;
        match self.w.as_mut() {
            Some(w) => w.put(key, value),
            None => Ok(()),
        }
    }

    /// Puts the snapshot in place and empties the log. The records put must
    /// be every live record and at least as new as every batch already
    /// committed (the core's live state is): the old log is discarded on the
    /// strength of that. On an error before the new snapshot is in place the
    /// store is unchanged and usable; after, it is [`StoreError::Failed`].
    pub fn finish(mut self) -> Result<(), StoreError> {
        let Some(w) = self.w.take() else {
            return Ok(());
        };
        let generation = w.generation;
        let (result, buf) = w.finish();
        self.store.recycle(buf);
        let len = result?;
        self.store.install_snapshot()?;
        self.store.snap_len = len;
        // The new snapshot is durable under its name: from here on the old
        // log is one generation behind and is ignored at open.
        self.store.generation = generation;
        self.store.reset_log()
    }
}

impl Drop for Compaction<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.w.take() {
            self.store.recycle(w.abandon());
            let _ = fs::remove_file(&self.store.tmp_path);
        }
    }
}

/// Writes a snapshot file: a placeholder header, one frame per record in
/// chunks, then the real header (the count is known only at the end) and
/// `fsync`.
pub(super) struct SnapshotWriter {
    file: File,
    path: std::path::PathBuf,
    buf: Vec<u8>,
    len: u64,
    count: u64,
    generation: u64,
}

impl SnapshotWriter {
    /// Creates `path` (0600; removed first if a crash left it).
    pub(super) fn create(
        path: &Path,
        generation: u64,
        mut buf: Vec<u8>,
    ) -> Result<SnapshotWriter, StoreError> {
        buf.clear();
        remove_if_present(path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err(path, "create"))?;
        buf.extend_from_slice(&[0u8; HEADER_LEN]);
        Ok(SnapshotWriter {
            file,
            path: path.to_owned(),
            buf,
            len: 0,
            count: 0,
            generation,
        })
    }

    /// Adds one record as its own frame. The caller checked the key.
    pub(super) fn put(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let bytes = value.len().saturating_add(format::ENTRY_HEAD + key.len());
        if bytes > format::MAX_FRAME {
            return Err(StoreError::TooLarge {
                path: self.path.clone(),
                bytes,
            });
        }
        let at = format::start_frame(&mut self.buf);
        format::push_entry(&mut self.buf, format::KIND_PUT, key, value);
        format::finish_frame(&mut self.buf, at, self.generation);
        self.count += 1;
        if self.buf.len() >= CHUNK {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<(), StoreError> {
        let r = self.file.write_all_at(&self.buf, self.len);
        self.len += self.buf.len() as u64;
        self.buf.as_mut_slice().zeroize();
        self.buf.clear();
        r.map_err(io_err(&self.path, "write"))
    }

    /// Writes what is left and the header, and syncs. Returns the file's
    /// length, and the buffer (zeroized) for reuse.
    pub(super) fn finish(mut self) -> (Result<u64, StoreError>, Vec<u8>) {
        let r = self.write_out().and_then(|()| {
            let header = format::encode_header(
                FileKind::Snapshot,
                Header {
                    generation: self.generation,
                    count: self.count,
                },
            );
            self.file
                .write_all_at(&header, 0)
                .map_err(io_err(&self.path, "write"))?;
            self.file.sync_all().map_err(io_err(&self.path, "sync"))?;
            Ok(self.len)
        });
        (r, std::mem::take(&mut self.buf))
    }

    /// Abandons the file (the caller removes it); returns the buffer, for
    /// [`Store::recycle`] to zeroize.
    pub(super) fn abandon(mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}
