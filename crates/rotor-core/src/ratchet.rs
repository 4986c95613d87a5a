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

use rand::{CryptoRng, RngCore};

use crate::action::Time;
pub use crate::x25519::Ephemeral;

/// The hub's key pair of the current epoch and when the epoch ends.
#[derive(Debug, Default)]
pub(crate) struct HubEpoch {
    current: Option<(Ephemeral, Time)>,
}

impl HubEpoch {
    /// The key pair for a rotation at `now`: the current one while its epoch
    /// lasts, else a fresh one whose epoch lasts `epoch_ms` (0: used for this
    /// rotation only, dropped by the next call or [`Self::expire`]). `None`
    /// only if no key pair could be made ([`Ephemeral::generate`]).
    pub fn get(
        &mut self,
        now: Time,
        epoch_ms: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Option<&Ephemeral> {
        let fresh = match &self.current {
            Some((_, until)) => now >= *until,
            None => true,
        };
        if fresh {
            self.current = Ephemeral::generate(rng).map(|e| (e, now.plus_ms(epoch_ms)));
        }
        self.current.as_ref().map(|(e, _)| e)
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
    fn an_epoch_key_is_reused_until_its_deadline_then_dropped() {
        let mut rng = rand::rngs::StdRng::from_seed([2; 32]);
        let mut e = HubEpoch::default();
        let p1 = *e.get(Time(0), 1000, &mut rng).unwrap().public();
        assert_eq!(*e.get(Time(999), 1000, &mut rng).unwrap().public(), p1);
        assert_eq!(e.deadline(), Some(Time(1000)));
        e.expire(Time(999));
        assert!(e.deadline().is_some());
        e.expire(Time(1000));
        assert_eq!(e.deadline(), None);
        let p2 = *e.get(Time(1000), 1000, &mut rng).unwrap().public();
        assert_ne!(p1, p2);
        // Epoch 0: a key pair per rotation.
        let p3 = *e.get(Time(5000), 0, &mut rng).unwrap().public();
        let p4 = *e.get(Time(5000), 0, &mut rng).unwrap().public();
        assert_ne!(p3, p4);
    }
}
