//! Key material. Every type here zeroizes on drop and never prints its bytes:
//! `Debug` shows at most a 4-byte SHA-256 fingerprint, enough to match keys
//! in tests and logs without revealing them.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// First 4 bytes of SHA-256 of `bytes`, as hex: identifies a key, reveals nothing usable.
pub fn fingerprint(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!("{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// A 32-byte secret: a pre-shared init key or a generation secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    /// Wraps 32 bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Secret32(bytes)
    }

    /// The bytes, for key derivation and for the encrypted `key` message only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Short fingerprint for logs and tests.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret32(fp={})", self.fingerprint())
    }
}

/// Longest ESP key: AES-256 plus the 4-byte salt.
pub const ESP_KEY_MAX: usize = 36;

/// Key material for one ESP SA with `rfc4106(gcm(aes))`: the AES key (16 or
/// 32 bytes) followed by the 4-byte salt, exactly as the kernel takes it.
/// Held inline (no heap allocation per key: the hub makes two per rotation).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EspKey {
    bytes: [u8; ESP_KEY_MAX],
    len: u8,
}

impl EspKey {
    /// `bytes` must be 20 or 36 bytes long (the key schedule's only sizes).
    pub(crate) fn from_slice(bytes: &[u8]) -> Self {
        let mut k = EspKey {
            bytes: [0; ESP_KEY_MAX],
            len: 0,
        };
        let n = bytes.len().min(ESP_KEY_MAX);
        k.bytes[..n].copy_from_slice(&bytes[..n]);
        k.len = n as u8;
        k
    }

    /// AES key followed by salt (20 or 36 bytes), for the kernel.
    pub fn expose(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Short fingerprint for logs and tests.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.expose())
    }
}

impl PartialEq for EspKey {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for EspKey {}

impl fmt::Debug for EspKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EspKey(aes-{}, fp={})",
            (self.expose().len().saturating_sub(4)) * 8,
            self.fingerprint()
        )
    }
}

/// A 32-byte key of the control channel (ChaCha20-Poly1305).
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct ControlKey(pub(crate) [u8; 32]);

impl fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ControlKey(fp={})", fingerprint(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let s = Secret32::new([0x41; 32]);
        let d = format!("{s:?}");
        assert!(
            !d.contains("41, 41") && !d.contains("AAAA") && !d.contains("65"),
            "{d}"
        );
        let k = EspKey::from_slice(&[0x42; 36]);
        let d = format!("{k:?}");
        assert!(d.starts_with("EspKey(aes-256, fp="), "{d}");
        assert!(!d.contains("66, 66"), "{d}");
        let c = ControlKey([0x43; 32]);
        assert!(format!("{c:?}").starts_with("ControlKey(fp="));
    }
}
