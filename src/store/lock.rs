//! The directory's ownership and mode, the per-instance lock file, and the
//! ownership and mode of each file we open.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

use super::StoreError;

/// Our effective uid: the owner of every file we create.
pub(crate) fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `[A-Za-z0-9._-]`, 1..=64 characters.
pub(crate) fn valid_instance(instance: &str) -> bool {
    (1..=64).contains(&instance.len())
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Creates `dir` (and missing parents) with mode 0700, or checks that the
/// existing one is a directory owned by us that neither group nor others
/// may write.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(source) => {
            return Err(StoreError::Io {
                path: dir.to_owned(),
                op: "create directory",
                source,
            });
        }
    }
    let meta = fs::metadata(dir).map_err(|source| StoreError::Io {
        path: dir.to_owned(),
        op: "inspect directory",
        source,
    })?;
    if !meta.is_dir() {
        return Err(StoreError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    check_owner_mode(dir, &meta, 0o022, true)
}

/// Refuses a file or directory that is not ours or whose mode has any bit
/// of `forbidden`.
fn check_owner_mode(
    path: &Path,
    meta: &fs::Metadata,
    forbidden: u32,
    is_dir: bool,
) -> Result<(), StoreError> {
    let me = my_uid();
    if meta.uid() != me {
        return Err(StoreError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(if is_dir {
            StoreError::DirMode {
                path: path.to_owned(),
                mode,
            }
        } else {
            StoreError::FileMode {
                path: path.to_owned(),
                mode,
            }
        });
    }
    Ok(())
}

/// Checks an open store file: ours, and no access for group or others.
pub(crate) fn check_file(path: &Path, file: &File) -> Result<(), StoreError> {
    let meta = file.metadata().map_err(|source| StoreError::Io {
        path: path.to_owned(),
        op: "inspect",
        source,
    })?;
    check_owner_mode(path, &meta, 0o077, false)
}

/// Takes the exclusive lock on `path` (created 0600) without blocking and
/// writes our pid into it. The lock lives as long as the returned file.
pub(crate) fn acquire(path: &Path) -> Result<File, StoreError> {
    let io_err = |op: &'static str| {
        move |source: io::Error| StoreError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("open lock file"))?;
    check_file(path, &file)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut text = String::new();
            // The holder may not have written its pid yet: then we say so.
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse::<u32>().ok());
            return Err(StoreError::Locked {
                path: path.to_owned(),
                pid,
            });
        }
        Err(e) => return Err(io_err("lock")(e.into())),
    }
    file.set_len(0).map_err(io_err("write pid into"))?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io_err("write pid into"))?;
    Ok(file)
}
