//! The framing of a record in etcd: sealed with ChaCha20-Poly1305 under the
//! cluster key, the record's etcd key as associated data (a value copied to
//! another key does not open), a fresh random nonce per write.
//!
//! Nonces come from a ChaCha12 generator seeded once from the OS (rand's
//! `StdRng`), not from a system call per record: a burst seals a record
//! per node, and under User-Mode Linux every system call costs tens of
//! microseconds. Two hubs sharing the cluster key seed independently, so
//! nonces collide no more often than 96 random bits do.
//!
//! Value: `format: u8` (1), `nonce[12]`, `ciphertext[len]`, `tag[16]`.

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};
use zeroize::Zeroizing;

use crate::keyfile::{KeyFileError, read_key};

/// Length of the cluster key.
pub const CLUSTER_KEY_LEN: usize = 32;
const FORMAT: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// What sealing adds to a record.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// The key every hub of a cluster seals its records with. Never leaves
/// the host: not in etcd, not in `Debug`, zeroized when dropped.
#[derive(Clone)]
pub struct ClusterKey(Zeroizing<[u8; CLUSTER_KEY_LEN]>);

impl ClusterKey {
    /// Reads the key file (the same format and checks as an init key file:
    /// `rotor genkey`, mode 0600, not a symlink).
    pub fn read(path: &Path) -> Result<ClusterKey, KeyFileError> {
        read_key(path).map(ClusterKey)
    }

    /// The key read from a key file.
    pub fn new(key: Zeroizing<[u8; CLUSTER_KEY_LEN]>) -> ClusterKey {
        ClusterKey(key)
    }

    /// The key `bytes`.
    pub fn from_bytes(bytes: [u8; CLUSTER_KEY_LEN]) -> ClusterKey {
        ClusterKey(Zeroizing::new(bytes))
    }
}

impl PartialEq for ClusterKey {
    /// Only for telling a changed key file on reload; not constant time.
    fn eq(&self, other: &Self) -> bool {
        self.0[..] == other.0[..]
    }
}
impl Eq for ClusterKey {}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a stored value does not open. Says nothing about its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than the framing alone.
    #[error("value too short to be a sealed record")]
    Short,
    /// A format byte this version does not know.
    #[error("unknown record format {0}")]
    Format(u8),
    /// The tag does not check: another cluster key, or altered bytes.
    #[error("does not decrypt with the cluster key (another key, or the record was altered)")]
    Mismatch,
}

/// Why a record could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The OS random source failed when the nonce generator was seeded.
    #[error("cannot seed the nonce generator from the OS random source: {0}")]
    Random(rand::Error),
    /// The AEAD refused (a record beyond its length limit).
    #[error("record too large to seal")]
    TooLarge,
}

/// Seals and opens records under one cluster key.
pub struct Sealer {
    aead: ChaCha20Poly1305,
    /// Boxed: the generator's buffer would make every store that holds a
    /// sealer a third of a kilobyte larger.
    nonces: Box<StdRng>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer for `key` (the AEAD zeroizes its copy when dropped), its
    /// nonce generator seeded from the OS random source.
    pub fn new(key: &ClusterKey) -> Result<Sealer, SealError> {
        Ok(Sealer {
            aead: ChaCha20Poly1305::new(Key::from_slice(&key.0[..])),
            nonces: Box::new(StdRng::from_rng(OsRng).map_err(SealError::Random)?),
        })
    }

    /// `plain` sealed for the etcd key `ad`. The plaintext is copied only
    /// into the output buffer (sized exactly, so it never reallocates) and
    /// encrypted there in place.
    pub fn seal(&mut self, ad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.nonces.fill_bytes(&mut nonce);
        let mut out = Zeroizing::new(Vec::with_capacity(OVERHEAD + plain.len()));
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), ad, &mut out[1 + NONCE_LEN..])
            .map_err(|_| SealError::TooLarge)?;
        out.extend_from_slice(&tag);
        // Now only ciphertext: no need to zeroize what is handed out.
        Ok(std::mem::take(&mut *out))
    }

    /// The plaintext of `sealed`, stored under the etcd key `ad`.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < OVERHEAD {
            return Err(OpenError::Short);
        }
        if sealed[0] != FORMAT {
            return Err(OpenError::Format(sealed[0]));
        }
        let nonce = &sealed[1..1 + NONCE_LEN];
        let (body, tag) = sealed[1 + NONCE_LEN..].split_at(sealed.len() - OVERHEAD);
        let mut plain = Zeroizing::new(Vec::with_capacity(body.len()));
        plain.extend_from_slice(body);
        self.aead
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                ad,
                &mut plain,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::Mismatch)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(b: u8) -> Sealer {
        Sealer::new(&ClusterKey::from_bytes([b; CLUSTER_KEY_LEN])).unwrap()
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let mut s = sealer(7);
        let plain = b"generation 42 key material";
        let a = s.seal(b"r/node/n1", plain).unwrap();
        let b = s.seal(b"r/node/n1", plain).unwrap();
        assert_eq!(a.len(), OVERHEAD + plain.len());
        assert_eq!(a[0], FORMAT);
        assert_ne!(a[1..13], b[1..13], "a nonce per write");
        let c = sealer(7).seal(b"r/node/n1", plain).unwrap();
        assert_ne!(a[1..13], c[1..13], "each sealer seeds its own nonces");
        assert_ne!(a, b);
        assert!(
            !a.windows(plain.len()).any(|w| w == plain),
            "no plaintext in the value"
        );
        assert_eq!(&s.open(b"r/node/n1", &a).unwrap()[..], plain);
        assert_eq!(&s.open(b"r/node/n1", &b).unwrap()[..], plain);
        let empty = s.seal(b"r/node/n1", b"").unwrap();
        assert_eq!(s.open(b"r/node/n1", &empty).unwrap().len(), 0);
    }

    #[test]
    fn another_key_another_etcd_key_or_a_flipped_bit_does_not_open() {
        let mut s = sealer(7);
        let v = s.seal(b"r/node/n1", b"secret").unwrap();
        assert_eq!(sealer(8).open(b"r/node/n1", &v), Err(OpenError::Mismatch));
        assert_eq!(s.open(b"r/node/n2", &v), Err(OpenError::Mismatch));
        for i in 1..v.len() {
            let mut w = v.clone();
            w[i] ^= 1;
            assert_eq!(
                s.open(b"r/node/n1", &w),
                Err(OpenError::Mismatch),
                "byte {i}"
            );
        }
        let mut w = v.clone();
        w[0] = 2;
        assert_eq!(s.open(b"r/node/n1", &w), Err(OpenError::Format(2)));
        assert_eq!(
            s.open(b"r/node/n1", &v[..OVERHEAD - 1]),
            Err(OpenError::Short)
        );
    }

    #[test]
    fn errors_and_debug_show_no_content() {
        let k = ClusterKey::from_bytes([0xAB; CLUSTER_KEY_LEN]);
        assert_eq!(format!("{k:?}"), "ClusterKey(..)");
        assert_eq!(format!("{:?}", Sealer::new(&k).unwrap()), "Sealer(..)");
        let e = OpenError::Mismatch.to_string();
        assert!(!e.contains("ab") && !e.contains("171"), "{e}");
    }
}
