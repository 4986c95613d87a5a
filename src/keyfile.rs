//! Pre-shared init keys on disk: 32 random bytes, base64, one line, in a file
//! of mode 0600 (or stricter) owned by the user running rotor.
//!
//! A key file that others can read is refused, not warned about: the init key
//! protects every node's (re)initialisation. Key bytes are held in zeroizing
//! buffers and never appear in errors.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// Length of an init key in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Group or others may read or write the file.
    #[error(
        "{path}: mode {mode:04o} lets other users read the key; run `chmod 600 {path}` (rotor refuses key files that are not 0600)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is owned by another user than the one running rotor.
    #[error("{path}: owned by uid {owner}, but rotor runs as uid {me}; chown it")]
    Owner {
        /// The file.
        path: PathBuf,
        /// File owner.
        owner: u32,
        /// Our uid.
        me: u32,
    },
    /// The content is not one base64 line of 32 bytes.
    #[error("{path}: not a rotor key: {why} (create one with `rotor genkey > {path}`)")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        why: String,
    },
    /// A line of a keys file is not one node's name and key, or names a
    /// node listed before.
    #[error(
        "{path}: line {line}: {why} (a keys file holds one `NAME KEY` line per node, KEY as `rotor genkey` prints it)"
    )]
    KeysLine {
        /// The keys file.
        path: PathBuf,
        /// The line's number, from 1.
        line: usize,
        /// What is wrong (never the content).
        why: String,
    },
    /// The key file is a symbolic link (rotor opens key files only directly,
    /// so a link planted in their place is never followed).
    #[error("{path}: is a symbolic link; point psk_file at the key file itself")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// A directory on the way to the key file lets another user replace it.
    #[error("{dir} (on the way to {path}): {why}")]
    Directory {
        /// The key file.
        path: PathBuf,
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// Reads key files, checking each directory on the way to them once: a hub
/// reads 100,000 keys, usually from one directory.
#[derive(Debug, Default)]
pub struct KeyReader {
    safe_dirs: HashSet<PathBuf>,
}

impl KeyReader {
    /// Reads and checks the key file at `path` (see [`read_key`]).
    pub fn read(&mut self, path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
        self.check_parent(path)?;
        read_file(path)
    }

    /// Checks the directories on the way to `path` ([`Self::check_dirs`]),
    /// once per directory.
    fn check_parent(&mut self, path: &Path) -> Result<(), KeyFileError> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !self.safe_dirs.contains(parent) {
            self.check_dirs(path, parent)?;
            self.safe_dirs.insert(parent.to_path_buf());
        }
        Ok(())
    }

    /// Every directory from the file's (resolved) parent up to `/` must
    /// belong to root or to us, and must not be writable by group or others
    /// unless it is sticky (like `/tmp`, where others cannot rename or
    /// remove our files): otherwise another user could swap the key file.
    fn check_dirs(&mut self, path: &Path, parent: &Path) -> Result<(), KeyFileError> {
        let dir_err = |dir: &Path, why: String| KeyFileError::Directory {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            why,
        };
        let real = fs::canonicalize(parent).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let me = euid();
        for dir in real.ancestors() {
            if self.safe_dirs.contains(dir) {
                break;
            }
            let meta = fs::metadata(dir).map_err(|e| dir_err(dir, format!("cannot stat: {e}")))?;
            let mode = meta.mode() & 0o7777;
            if meta.uid() != 0 && meta.uid() != me {
                return Err(dir_err(
                    dir,
                    format!(
                        "owned by uid {}, neither root nor rotor's uid {me}: its owner could replace the key",
                        meta.uid()
                    ),
                ));
            }
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(dir_err(
                    dir,
                    format!(
                        "mode {mode:04o} lets other users replace the key file; run `chmod go-w {}`",
                        dir.display()
                    ),
                ));
            }
            self.safe_dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }
}

fn euid() -> u32 {
    use std::sync::OnceLock;
    static EUID: OnceLock<u32> = OnceLock::new();
    *EUID.get_or_init(|| rustix::process::geteuid().as_raw())
}

/// Largest keys file read: 64 MiB, far beyond a million nodes' lines.
const MAX_KEYS_FILE: u64 = 64 << 20;

/// The init keys of a keys file by node name (see [`KeyReader::read_keys`]).
pub type Keys = std::collections::HashMap<String, Zeroizing<[u8; KEY_LEN]>>;

impl KeyReader {
    /// Reads a keys file, many nodes' init keys in one file (checked like a
    /// key file): one `NAME KEY` line per node, KEY as `rotor genkey` prints
    /// it; empty lines and lines starting with `#` are skipped. A malformed
    /// line or a name listed twice is refused with its line number, never
    /// its content.
    pub fn read_keys(&mut self, path: &Path) -> Result<Keys, KeyFileError> {
        use std::io::Read;
        self.check_parent(path)?;
        let read_err = |source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let format = |why: String| KeyFileError::Format {
            path: path.to_path_buf(),
            why,
        };
        let (file, meta) = open_checked(path)?;
        if meta.len() > MAX_KEYS_FILE {
            return Err(format(format!(
                "{} bytes, more than a keys file may hold ({MAX_KEYS_FILE})",
                meta.len()
            )));
        }
        // Sized once from the file's length: a grown buffer would leave a
        // copy of the keys in freed memory.
        let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
        file.take(MAX_KEYS_FILE)
            .read_to_end(&mut buf)
            .map_err(read_err)?;
        let text = std::str::from_utf8(&buf).map_err(|_| format("not text".to_string()))?;
        let mut keys = Keys::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| KeyFileError::KeysLine {
                path: path.to_path_buf(),
                line: i + 1,
                why,
            };
            let mut words = line.split_whitespace();
            let (Some(name), Some(key), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad("not a name and a key".to_string()));
            };
            let key = decode_key(key).map_err(bad)?;
            if keys.insert(name.to_string(), key).is_some() {
                return Err(bad(format!("{name:?} is listed on an earlier line too")));
            }
        }
        Ok(keys)
    }
}

/// Reads and checks a key file: not a symbolic link, mode 0600 or
/// stricter, owned by rotor's user, in directories no other user can write
/// (see [`KeyReader`], which checks each directory once for many keys). The
/// path is shown in errors; the key never is.
pub fn read_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    KeyReader::default().read(path)
}

/// Opens a file of key material and checks it: not a link (O_NOFOLLOW),
/// mode 0600 or stricter, owned by rotor's user. The checks look at the
/// file that is read, not at whatever the path named a moment earlier.
fn open_checked(path: &Path) -> Result<(fs::File, fs::Metadata), KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(KeyFileError::Symlink {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let me = euid();
    if meta.uid() != me {
        return Err(KeyFileError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    Ok((file, meta))
}

fn read_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    use std::io::Read;
    // One open, one fstat, one read per key: a hub reads 100,000 of them at
    // every start.
    let read_err = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let (mut file, meta) = open_checked(path)?;
    // A key file is one line of 44 base64 characters; anything that fills
    // this buffer is not one.
    let mut buf = Zeroizing::new([0u8; 256]);
    let mut len = 0;
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len == buf.len() {
                    return Err(KeyFileError::Format {
                        path: path.to_path_buf(),
                        why: "longer than a key file".to_string(),
                    });
                }
                // A regular file this small arrives in one read.
                if meta.is_file() && len as u64 >= meta.len() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| KeyFileError::Format {
        path: path.to_path_buf(),
        why: "not text".to_string(),
    })?;
    decode_key(text.trim()).map_err(|why| KeyFileError::Format {
        path: path.to_path_buf(),
        why,
    })
}

/// Decodes one base64 key; the error never contains the input.
pub fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.as_bytes())
            .map_err(|_| "content is not valid base64".to_string())?,
    );
    if bytes.len() != KEY_LEN {
        return Err(format!(
            "decodes to {} bytes, a key is {KEY_LEN}",
            bytes.len()
        ));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Encodes a key as the one line `rotor genkey` prints.
pub fn encode_key(key: &[u8; KEY_LEN]) -> Zeroizing<String> {
    Zeroizing::new(STANDARD.encode(key))
}

/// Writes a key file with mode 0600 (created new; never overwrites).
pub fn write_key(path: &Path, key: &[u8; KEY_LEN]) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let line = encode_key(key);
    f.write_all(line.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_and_mode_0600_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_key(&p, &[7; 32]).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(*read_key(&p).unwrap(), [7; 32]);
    }

    #[test]
    fn group_or_world_readable_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_key(&p, &[7; 32]).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            let e = read_key(&p).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_key(&p).is_ok());
    }

    #[test]
    fn bad_content_is_refused_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        fs::write(&p, "c2VjcmV0LXNob3J0").unwrap(); // "secret-short"
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let e = read_key(&p).unwrap_err().to_string();
        assert!(e.contains("decodes to 12 bytes"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        fs::write(&p, "not base64 at all!").unwrap();
        let e = read_key(&p).unwrap_err().to_string();
        assert!(
            e.contains("not valid base64") && !e.contains("at all"),
            "{e}"
        );
    }

    #[test]
    fn a_symlink_in_the_key_files_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        write_key(&real, &[7; 32]).unwrap();
        let link = dir.path().join("k");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = read_key(&link).unwrap_err();
        assert!(matches!(e, KeyFileError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }

    #[test]
    fn a_directory_others_can_write_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        fs::create_dir(&keys).unwrap();
        let p = keys.join("k");
        write_key(&p, &[7; 32]).unwrap();
        for mode in [0o777, 0o775, 0o757] {
            fs::set_permissions(&keys, fs::Permissions::from_mode(mode)).unwrap();
            let e = read_key(&p).unwrap_err();
            assert!(matches!(e, KeyFileError::Directory { .. }), "{e}");
            let e = e.to_string();
            assert!(
                e.contains(&format!("{mode:04o}")) && e.contains("chmod go-w"),
                "{e}"
            );
        }
        // Sticky (as /tmp): others cannot rename or remove our file.
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(read_key(&p).is_ok());
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).unwrap();
        // One reader checks a directory once, and still refuses a bad one.
        let mut r = KeyReader::default();
        assert!(r.read(&p).is_ok());
        let other = dir.path().join("open");
        fs::create_dir(&other).unwrap();
        write_key(&other.join("k"), &[8; 32]).unwrap();
        fs::set_permissions(&other, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(r.read(&other.join("k")).is_err());
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if rustix::process::geteuid().as_raw() != 0 {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        fs::create_dir(&keys).unwrap();
        let p = keys.join("k");
        write_key(&p, &[7; 32]).unwrap();
        std::os::unix::fs::chown(&keys, Some(4242), None).unwrap();
        let e = read_key(&p).unwrap_err().to_string();
        assert!(e.contains("owned by uid 4242"), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = read_key(Path::new("/nonexistent/rotor.key"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/rotor.key: cannot read"), "{e}");
    }
}
