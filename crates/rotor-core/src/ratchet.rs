//! The X25519 ratchet of every rotation (protocol version 2).
//!
//! A node holds one [`Ephemeral`] per generation N it runs on and sends its
//! public share in every hello under N. The hub, rotating to N+1, takes the
//! node's share from those hellos, its own share from the current
//! [`HubEpoch`], draws a fresh 32-byte random value, and derives N+1's secret
//! with [`crate::key_schedule::ratchet_secret`]; the `key` message for N+1
//! carries the random value and the hub's share (encrypted under N). The node
//! derives the same secret with its private key, then drops that key and
//! makes a new one for N+1. Neither side keeps a private key or an X25519
//! result longer than that: a stolen generation secret (and every datagram
//! captured) does not lead to the next generation.
//!
//! The hub reuses one key pair for every rotation of a short epoch
//! (`HubConfig::ratchet_epoch_ms`, at most a few seconds; 0: a key pair per
//! rotation) and zeroizes it when the epoch ends: one X25519 operation per
//! rotation instead of two. A hub configured with
//! `HubConfig::ratchet_every` = k makes only every k-th rotation a step; the
//! others carry zero shares and derive the secret from the random value
//! alone.

use std::fmt;

use rand::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::action::Time;

/// An X25519 key pair for ratchet steps. The private key is zeroized when
/// the value is dropped and never printed.
pub struct Ephemeral {
    secret: StaticSecret,
    public: [u8; 32],
}

impl Ephemeral {
    /// A fresh key pair from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Ephemeral {
        let secret = StaticSecret::random_from_rng(rng);
        let public = *PublicKey::from(&secret).as_bytes();
        Ephemeral { secret, public }
    }

    /// The key pair of a stored private key (see [`Self::private_bytes`]).
    pub fn from_private(bytes: [u8; 32]) -> Ephemeral {
        let mut b = Zeroizing::new(bytes);
        let secret = StaticSecret::from(*b);
        zeroize::Zeroize::zeroize(&mut *b);
        let public = *PublicKey::from(&secret).as_bytes();
        Ephemeral { secret, public }
    }

    /// The private key, for the durable record only.
    pub fn private_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public share sent to the peer.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The X25519 result with the peer's share; `None` when it is all zero
    /// (a low-order share contributes nothing and is refused).
    pub fn agree(&self, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*peer));
        shared
            .was_contributory()
            .then(|| Zeroizing::new(*shared.as_bytes()))
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

/// The hub's key pair of the current epoch and when the epoch ends.
#[derive(Debug, Default)]
pub(crate) struct HubEpoch {
    current: Option<(Ephemeral, Time)>,
}

impl HubEpoch {
    /// The key pair for a rotation at `now`: the current one while its epoch
    /// lasts, else a fresh one whose epoch lasts `epoch_ms` (0: used for this
    /// rotation only, dropped by the next call or [`Self::expire`]).
    pub fn get(
        &mut self,
        now: Time,
        epoch_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> &Ephemeral {
        let fresh = match &self.current {
            Some((_, until)) => now >= *until,
            None => true,
        };
        if fresh {
            self.current = Some((Ephemeral::generate(rng), now.plus_ms(epoch_ms)));
        }
        match &mut self.current {
            Some((e, _)) => e,
            None => unreachable!("set just above"),
        }
    }

    /// When the current key pair must be dropped (`None`: there is none).
    pub fn deadline(&self) -> Option<Time> {
        self.current.as_ref().map(|(_, until)| *until)
    }

    /// Drops (and zeroizes) the key pair if its epoch is over at `now`.
    pub fn expire(&mut self, now: Time) {
        if self.deadline().is_some_and(|t| t <= now) {
            self.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn both_sides_agree_and_low_order_shares_are_refused() {
        let mut rng = rand::rngs::StdRng::from_seed([1; 32]);
        let (a, b) = (Ephemeral::generate(&mut rng), Ephemeral::generate(&mut rng));
        assert_eq!(a.agree(b.public()), b.agree(a.public()));
        assert!(a.agree(&[0; 32]).is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(a.agree(&one).is_none());
        let back = Ephemeral::from_private(*a.private_bytes());
        assert_eq!(back.public(), a.public());
        assert!(!format!("{a:?}").contains(&format!("{:?}", &*a.private_bytes())));
    }

    #[test]
    fn an_epoch_key_is_reused_until_its_deadline_then_dropped() {
        let mut rng = rand::rngs::StdRng::from_seed([2; 32]);
        let mut e = HubEpoch::default();
        let p1 = *e.get(Time(0), 1000, &mut rng).public();
        assert_eq!(*e.get(Time(999), 1000, &mut rng).public(), p1);
        assert_eq!(e.deadline(), Some(Time(1000)));
        e.expire(Time(999));
        assert!(e.deadline().is_some());
        e.expire(Time(1000));
        assert_eq!(e.deadline(), None);
        let p2 = *e.get(Time(1000), 1000, &mut rng).public();
        assert_ne!(p1, p2);
        // Epoch 0: a key pair per rotation.
        let p3 = *e.get(Time(5000), 0, &mut rng).public();
        let p4 = *e.get(Time(5000), 0, &mut rng).public();
        assert_ne!(p3, p4);
    }
}
