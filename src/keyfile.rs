//! Pre-shared init keys on disk: 32 random bytes, base64, one line, in a file
//! of mode 0600 (or stricter) owned by the user running rotor.
//!
//! A key file that others can read is refused, not warned about: the init key
//! protects every node's (re)initialisation. Key bytes are held in zeroizing
//! buffers and never appear in errors.

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
}

/// Reads and checks a key file. The path is shown in errors; the key never is.
pub fn read_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyFileError> {
    use std::io::Read;
    use std::sync::OnceLock;
    // One open, one fstat, one read per key: a hub reads 100,000 of them at
    // every start. The checks look at the file that is read, not at
    // whatever the path named a moment earlier.
    static EUID: OnceLock<u32> = OnceLock::new();
    let read_err = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let me = *EUID.get_or_init(|| rustix::process::geteuid().as_raw());
    if meta.uid() != me {
        return Err(KeyFileError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
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
    fn missing_file_names_the_path() {
        let e = read_key(Path::new("/nonexistent/rotor.key"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/rotor.key: cannot read"), "{e}");
    }
}
