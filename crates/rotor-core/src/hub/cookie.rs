//! The cookie round: while inits from unverified addresses arrive faster
//! than a genuine fleet sends them, the hub answers such an init with a
//! cookie instead of authenticating it, and authenticates only inits that
//! echo a valid cookie for their source (docs/protocol.md §4, "Cookies";
//! IKEv2's COOKIE, RFC 7296 §2.6, and WireGuard's cookie reply play the same
//! part).
//!
//! A cookie is a MAC of the source address, port and init SPI under a
//! secret that only the hub holds and that changes every
//! [`SECRET_MS`]: checking one costs an HMAC, no state per source, and
//! only a sender that receives at its source address can echo one. A flood
//! of forged inits from spoofed addresses then costs the hub an HMAC each,
//! and at most [`REPLIES_PER_S`] cookie messages, never a key derivation and an
//! AEAD; a node that moved (or lost its state) and inits from an address
//! the hub does not know yet pays one more round trip.

use std::net::SocketAddr;

use hkdf::hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::action::Time;
use crate::wire::{COOKIE_LEN, encode_endpoint};

/// Inits per second from addresses where their node is not known to be,
/// above which the hub asks for cookies. A fleet sends such inits when
/// nodes move or lose their state, a few per second even for a large one.
pub const UNDER_LOAD_INITS: u32 = 64;
/// How long the hub keeps asking for cookies after the last second over
/// [`UNDER_LOAD_INITS`].
pub const LOAD_HOLD_MS: u64 = 5_000;
/// How long one cookie secret serves; the previous one is still accepted,
/// so a cookie lives between one and two of these.
pub const SECRET_MS: u64 = 120_000;
/// Cookie messages sent per second: beyond, an init without a valid
/// cookie is dropped unanswered (a node repeats its init). Each costs a
/// slot in a `sendmmsg` batch, a few microseconds; a forged init that got
/// through to an AEAD cost about as much.
pub const REPLIES_PER_S: u32 = 10_000;

type Secret = Zeroizing<[u8; 32]>;

/// Cookie secrets and the load that decides whether they are asked for.
pub(super) struct CookieJar {
    /// The current secret, the previous one, and when the current one is
    /// replaced (`None`: none made yet).
    secrets: Option<(Secret, Option<Secret>, Time)>,
    /// The second being counted (its start) and the unverified inits in it.
    window: (Time, u32),
    /// Cookies are asked for until then.
    load_until: Option<Time>,
    /// The latest time an unverified init was counted at (what
    /// [`Self::asking`] judges by, having no clock of its own).
    seen: Time,
    /// The second being counted (its start) and the cookie messages in it.
    replies: (Time, u32),
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("window", &self.window)
            .field("load_until", &self.load_until)
            .finish_non_exhaustive()
    }
}

fn mac(secret: &[u8; 32], from: SocketAddr, init_spi: u32) -> [u8; COOKIE_LEN] {
    // HMAC takes a key of any length: a 32-byte key never fails.
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        unreachable!("HMAC-SHA256 refused a 32-byte key")
    };
    m.update(&encode_endpoint(&SocketAddr::new(
        from.ip().to_canonical(),
        from.port(),
    )));
    m.update(&init_spi.to_be_bytes());
    let mut out = [0u8; COOKIE_LEN];
    out.copy_from_slice(&m.finalize().into_bytes()[..COOKIE_LEN]);
    out
}

impl CookieJar {
    pub(super) fn new() -> CookieJar {
        CookieJar {
            secrets: None,
            window: (Time(0), 0),
            load_until: None,
            seen: Time(0),
            replies: (Time(0), 0),
        }
    }

    /// Whether inits from unverified addresses must carry a cookie at `now`.
    pub(super) fn under_load(&self, now: Time) -> bool {
        self.load_until.is_some_and(|t| now < t)
    }

    /// Whether cookies were asked for when the last unverified init was
    /// counted: a hint for classifying datagrams, which know no time; the
    /// answer to an init itself goes by [`Self::under_load`].
    pub(super) fn asking(&self) -> bool {
        self.under_load(self.seen)
    }

    /// Counts an init from an address where its node is not known to be.
    pub(super) fn unverified_init(&mut self, now: Time) {
        self.seen = self.seen.max(now);
        if now.since(self.window.0) >= 1_000 {
            self.window = (now, 0);
        }
        self.window.1 = self.window.1.saturating_add(1);
        if self.window.1 > UNDER_LOAD_INITS {
            self.load_until = Some(now.plus_ms(LOAD_HOLD_MS));
        }
    }

    /// Forgets the secrets whose time is over at `now`, whether or not a
    /// cookie was made since: a secret serves [`SECRET_MS`] as the current
    /// one and as long again as the previous one, then no cookie made under
    /// it is valid.
    pub(super) fn expire(&mut self, now: Time) {
        let Some((_, prev, until)) = &mut self.secrets else {
            return;
        };
        if now >= until.plus_ms(SECRET_MS) {
            self.secrets = None;
        } else if now >= *until {
            *prev = None;
        }
    }

    /// Whether `cookie` is valid for an init under `init_spi` from `from`
    /// (made under the current or the previous secret). Constant time.
    pub(super) fn check(&self, from: SocketAddr, init_spi: u32, cookie: &[u8; COOKIE_LEN]) -> bool {
        let Some((cur, prev, _)) = &self.secrets else {
            return false;
        };
        let eq =
            |a: &[u8; COOKIE_LEN]| a.iter().zip(cookie).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        let now_ok = eq(&mac(cur, from, init_spi));
        let prev_ok = prev.as_ref().is_some_and(|p| eq(&mac(p, from, init_spi)));
        now_ok | prev_ok
    }

    /// The cookie for an init under `init_spi` from `from`, if the reply
    /// budget allows one at `now` (making or replacing the secret when due).
    pub(super) fn issue(
        &mut self,
        now: Time,
        from: SocketAddr,
        init_spi: u32,
        rng: &mut impl RngCore,
    ) -> Option<[u8; COOKIE_LEN]> {
        if now.since(self.replies.0) >= 1_000 {
            self.replies = (now, 0);
        }
        if self.replies.1 >= REPLIES_PER_S {
            return None;
        }
        self.replies.1 += 1;
        let fresh = |rng: &mut dyn RngCore| {
            let mut s = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(s.as_mut());
            s
        };
        let (cur, prev, until) = match self.secrets.take() {
            Some((cur, _, until)) if now >= until => {
                (fresh(rng), Some(cur), now.plus_ms(SECRET_MS))
            }
            Some(s) => s,
            None => (fresh(rng), None, now.plus_ms(SECRET_MS)),
        };
        let cookie = mac(&cur, from, init_spi);
        self.secrets = Some((cur, prev, until));
        Some(cookie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_cookie_is_bound_to_its_source_and_spi_and_outlives_one_secret() {
        let mut rng = rand::rngs::StdRng::from_seed([3; 32]);
        let t = Time(1_000);
        let mut jar = CookieJar::new();
        let a: SocketAddr = "192.0.2.7:4820".parse().unwrap();
        let b: SocketAddr = "192.0.2.7:4821".parse().unwrap();
        assert!(!jar.check(a, 9, &[0; COOKIE_LEN]), "no secret yet");
        let c = jar.issue(t, a, 9, &mut rng).unwrap();
        assert!(jar.check(a, 9, &c));
        assert!(!jar.check(b, 9, &c), "another port");
        assert!(!jar.check(a, 10, &c), "another init SPI");
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:4820".parse().unwrap();
        assert!(jar.check(mapped, 9, &c), "IPv4-mapped is the same source");
        // The next secret: the old cookie still passes, then not.
        let t2 = t.plus_ms(SECRET_MS);
        let c2 = jar.issue(t2, a, 9, &mut rng).unwrap();
        assert_ne!(c, c2);
        assert!(jar.check(a, 9, &c) && jar.check(a, 9, &c2));
        jar.issue(t2.plus_ms(SECRET_MS), a, 9, &mut rng).unwrap();
        assert!(!jar.check(a, 9, &c));
        assert!(jar.check(a, 9, &c2));
    }

    #[test]
    fn a_cookie_expires_with_its_secret_even_when_no_other_is_made() {
        let mut rng = rand::rngs::StdRng::from_seed([5; 32]);
        let t = Time(1_000);
        let mut jar = CookieJar::new();
        let a: SocketAddr = "192.0.2.7:4820".parse().unwrap();
        let c = jar.issue(t, a, 9, &mut rng).unwrap();
        jar.expire(t.plus_ms(2 * SECRET_MS - 1));
        assert!(jar.check(a, 9, &c), "current, then previous: two periods");
        jar.expire(t.plus_ms(2 * SECRET_MS));
        assert!(!jar.check(a, 9, &c));
    }

    #[test]
    fn load_starts_above_the_threshold_and_holds() {
        let t = Time(10_000);
        let mut jar = CookieJar::new();
        for _ in 0..UNDER_LOAD_INITS {
            jar.unverified_init(t);
        }
        assert!(!jar.under_load(t), "at the threshold: not yet");
        jar.unverified_init(t.plus_ms(999));
        assert!(jar.under_load(t.plus_ms(999)));
        assert!(jar.under_load(t.plus_ms(999 + LOAD_HOLD_MS - 1)));
        assert!(!jar.under_load(t.plus_ms(999 + LOAD_HOLD_MS)));
        // A new second starts the count again.
        let later = t.plus_ms(60_000);
        for _ in 0..UNDER_LOAD_INITS {
            jar.unverified_init(later);
        }
        assert!(!jar.under_load(later));
    }

    #[test]
    fn replies_are_bounded() {
        let mut rng = rand::rngs::StdRng::from_seed([4; 32]);
        let t = Time(5_000);
        let mut jar = CookieJar::new();
        let a: SocketAddr = "198.51.100.1:1".parse().unwrap();
        let n = (0..20_000)
            .filter(|_| jar.issue(t, a, 1, &mut rng).is_some())
            .count();
        assert_eq!(n, REPLIES_PER_S as usize);
        assert!(jar.issue(t.plus_ms(999), a, 1, &mut rng).is_none());
        assert!(
            jar.issue(t.plus_ms(1_000), a, 1, &mut rng).is_some(),
            "the next second"
        );
    }
}
