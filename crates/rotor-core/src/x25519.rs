//! X25519 key pairs (RFC 7748) for the init exchange and the ratchet.
//!
//! Backed by aws-lc-rs: its X25519 uses the CPU's ADX/BMI2 multiply
//! instructions where they exist, about twice as fast on the hub's hot path
//! (one agreement per rotation) as a portable 64-bit implementation.
//! Private keys come from the caller's random source, so seeded simulations
//! stay deterministic; the library zeroizes a key when it is freed.

use std::fmt;

use aws_lc_rs::agreement::{PrivateKey, UnparsedPublicKey, X25519, agree};
use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

/// An X25519 key pair. The private key is zeroized when the value is
/// dropped and never printed.
pub struct Ephemeral {
    secret: PrivateKey,
    public: [u8; 32],
}

impl Ephemeral {
    /// A fresh key pair from `rng`. `None` only if the crypto library
    /// refuses a 32-byte key, which it does not for X25519 (every 32-byte
    /// string is a private key once clamped).
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Option<Ephemeral> {
        let mut b = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *b);
        Ephemeral::from_private(&b)
    }

    /// The key pair of a stored private key (see [`Self::private_bytes`]);
    /// `None` as for [`Self::generate`].
    pub fn from_private(bytes: &[u8; 32]) -> Option<Ephemeral> {
        let secret = PrivateKey::from_private_key(&X25519, bytes).ok()?;
        let public = secret.compute_public_key().ok()?.as_ref().try_into().ok()?;
        Some(Ephemeral { secret, public })
    }

    /// The private key, for the durable record only.
    pub fn private_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        let bin: Result<Curve25519SeedBin<'static>, _> = self.secret.as_be_bytes();
        if let Ok(bin) = bin {
            let mut raw = Zeroizing::new(bin.as_ref().to_vec());
            if raw.len() == 32 {
                out.copy_from_slice(&raw);
            }
            raw.zeroize();
        }
        out
    }

    /// The public share sent to the peer.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The X25519 result with the peer's share; `None` when it is all zero
    /// (a low-order share contributes nothing and is refused).
    pub fn agree(&self, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let peer = UnparsedPublicKey::new(&X25519, peer);
        agree(&self.secret, peer, (), |shared| {
            let mut out = Zeroizing::new([0u8; 32]);
            if shared.len() != 32 || shared.iter().all(|&b| b == 0) {
                return Err(());
            }
            out.copy_from_slice(shared);
            Ok(out)
        })
        .ok()
    }
}

impl fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Ephemeral(public fp={})",
            crate::secret::fingerprint(&self.public)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// RFC 7748 section 6.1: Alice's and Bob's keys and their shared secret.
    #[test]
    fn the_rfc_7748_test_vector() {
        let alice = Ephemeral::from_private(&hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ))
        .unwrap();
        let bob = Ephemeral::from_private(&hex32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ))
        .unwrap();
        assert_eq!(
            *alice.public(),
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            *bob.public(),
            hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(*alice.agree(bob.public()).unwrap(), shared);
        assert_eq!(*bob.agree(alice.public()).unwrap(), shared);
    }

    #[test]
    fn both_sides_agree_and_low_order_shares_are_refused() {
        let mut rng = rand::rngs::StdRng::from_seed([1; 32]);
        let a = Ephemeral::generate(&mut rng).unwrap();
        let b = Ephemeral::generate(&mut rng).unwrap();
        assert_eq!(a.agree(b.public()), b.agree(a.public()));
        assert!(a.agree(&[0; 32]).is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(a.agree(&one).is_none());
        let back = Ephemeral::from_private(&a.private_bytes()).unwrap();
        assert_eq!(back.public(), a.public());
        assert_eq!(*back.private_bytes(), *a.private_bytes());
        assert!(!format!("{a:?}").contains(&format!("{:?}", &*a.private_bytes())));
    }

    #[test]
    fn the_same_seed_gives_the_same_key() {
        let a = Ephemeral::generate(&mut rand::rngs::StdRng::from_seed([7; 32])).unwrap();
        let b = Ephemeral::generate(&mut rand::rngs::StdRng::from_seed([7; 32])).unwrap();
        assert_eq!(a.public(), b.public());
    }
}
