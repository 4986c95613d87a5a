//! What the hub admits, and at what cost: a classification of every
//! datagram before any cryptography ([`Hub::classify`]), and per-node
//! budgets on the work an authenticated node can ask for (requested
//! rotations, accepted inits, resends) together with a cap on the SAs
//! waiting for deletion.
//!
//! A node's init SPI is static and visible on the wire, so anyone can send
//! datagrams that cost the hub a key derivation and an AEAD check; and
//! whoever holds a node's key can ask for rotations, inits and resends as
//! fast as the hub answers. The classification lets a driver serve the
//! datagrams that come from where their node is known to be first and
//! bound the rest; the budgets bound what a node (or its key's thief) gets,
//! whatever the rate it asks at.

use std::net::SocketAddr;

use super::Hub;
use crate::action::{Action, DropReason, Time};
use crate::key_spi_table::SpiOwner;
use crate::machine::Class;
use crate::wire::{self, MsgType};

/// A token bucket's shape: at most `burst` requests at once, refilled at
/// one per `every_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Requests served back to back from a full bucket.
    pub burst: u32,
    /// Milliseconds per request served on average.
    pub every_ms: u64,
}

/// Rotations a node may ask for (the hello's rotate flag): a node asks
/// when its operator runs `rotor rotate`, when its kernel reports a soft
/// expiry and after a move. One asked beyond it is answered with an ack
/// and granted at a later hello (the node keeps asking).
pub const REQUESTED_ROTATIONS: Limit = Limit {
    burst: 4,
    every_ms: 1_000,
};

/// Inits accepted per node (each costs an X25519 and two SAs). A genuine
/// node inits once per lost state or fallback; one beyond it is dropped
/// after authentication (`rate_limited`), and the node's retransmission of
/// the same init is accepted once the bucket refilled.
pub const INITS: Limit = Limit {
    burst: 3,
    every_ms: 10_000,
};

/// Resends per node: of a rotation's `key` to a hello under the previous
/// generation, and of the init reply to a retransmitted init. A node's
/// hellos repeat at most every 50 ms; one beyond it gets no answer, the
/// next hello does.
pub const RESENDS: Limit = Limit {
    burst: 8,
    every_ms: 100,
};

/// Generations waiting out their grace period before their SAs are
/// deleted, per configured node, plus [`RETIRING_SLACK`]: a rotation that
/// would queue more is deferred (`rotation_deferred`) until deletions make
/// room. Each such generation holds two SAs in the kernel.
pub const RETIRING_PER_NODE: usize = 4;
/// See [`RETIRING_PER_NODE`].
pub const RETIRING_SLACK: usize = 256;

/// A token bucket as one deadline (GCRA, the virtual-scheduling form of a
/// token bucket): the time at which the bucket would be full again if
/// nothing more were taken, in milliseconds modulo 2^32 (4 bytes in every
/// node's entry). A deadline more than 2^31 ms (24 days) away from now in
/// either direction reads as past: a bucket idle that long is full, and at
/// worst one in 2^32 / depth idle buckets reads a few requests too empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Bucket(u32);

impl Bucket {
    /// A bucket that is full at `now`.
    pub(super) fn full(now: Time) -> Bucket {
        Bucket(now.0 as u32)
    }

    /// Takes one request at `now` if `limit` allows it.
    pub(super) fn take(&mut self, now: Time, limit: Limit) -> bool {
        let depth = limit.every_ms.saturating_mul(u64::from(limit.burst));
        let now32 = now.0 as u32;
        // How far in the future the bucket is full again (0: full now).
        let ahead = match self.0.wrapping_sub(now32) {
            d if d < 1 << 31 => u64::from(d),
            _ => 0,
        };
        // Taking would push it more than a whole bucket past now: empty.
        if ahead.saturating_add(limit.every_ms) > depth {
            return false;
        }
        let step = u32::try_from(limit.every_ms).unwrap_or(u32::MAX);
        self.0 = now32.wrapping_add(ahead as u32).wrapping_add(step);
        true
    }
}

impl Hub {
    /// What handling `data` (the message, without the non-ESP marker),
    /// received from `from`, may cost: [`Class::Priority`] when its header
    /// names a key of a node that is reached at `from`; [`Class::Cheap`]
    /// when [`Hub::handle_datagram`] drops it before any cryptography (bad
    /// framing, an SPI no key has or no longer answered, a type the key
    /// does not carry, a counter the replay window refuses);
    /// [`Class::Costly`] otherwise (a node's init SPI or current generation
    /// from another address: a node that moved, or a forgery). Reads the
    /// header and a few fields, no key material; changes nothing.
    pub fn classify(&self, from: SocketAddr, data: &[u8]) -> Class {
        let Ok(dg) = wire::parse(data) else {
            return Class::Cheap;
        };
        let h = dg.header;
        match self.shared.table.lookup(h.spi) {
            None => Class::Cheap,
            Some(_) if h.kind != MsgType::Init && h.kind != MsgType::Hello => Class::Cheap,
            Some(SpiOwner::Init(_) | SpiOwner::SharedInit) if h.kind == MsgType::Init => {
                if self.init_from_its_node(h.spi, from) {
                    Class::Priority
                } else {
                    self.unverified_init_class(from, &dg)
                }
            }
            Some(SpiOwner::Generation(id)) if h.kind == MsgType::Hello => {
                let Some(n) = self.nodes.get(id.0 as usize) else {
                    return Class::Cheap;
                };
                let g = [n.latest.as_ref(), n.previous.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|g| g.spi == h.spi);
                match g {
                    Some(g) if g.rx_window.check(h.counter) => {
                        if n.path.is(&from) {
                            Class::Priority
                        } else {
                            Class::Costly
                        }
                    }
                    _ => Class::Cheap,
                }
            }
            Some(_) => Class::Cheap,
        }
    }

    /// Whether an init under `init_spi` comes from where its node (or one
    /// of the nodes sharing that init SPI) is known to be.
    fn init_from_its_node(&self, init_spi: u32, from: SocketAddr) -> bool {
        let at = |id: crate::action::PeerId| {
            self.nodes
                .get(id.0 as usize)
                .is_some_and(|n| n.path.is(&from))
        };
        match self.shared.table.lookup(init_spi) {
            Some(SpiOwner::Init(id)) => at(id),
            Some(SpiOwner::SharedInit) => self
                .shared
                .table
                .init_candidates(init_spi)
                .into_iter()
                .any(at),
            _ => false,
        }
    }

    /// An init from where its node is not known to be: while cookies are
    /// asked for, one without a valid cookie is answered with a cookie for
    /// an HMAC ([`Class::Cheap`]); otherwise it costs a key derivation and
    /// an AEAD ([`Class::Costly`]).
    fn unverified_init_class(&self, from: SocketAddr, dg: &wire::Datagram<'_>) -> Class {
        let cookie = |c: [u8; wire::COOKIE_LEN]| self.shared.cookies.check(from, dg.header.spi, &c);
        if self.shared.cookies.asking() && !dg.init_cookie().is_some_and(cookie) {
            Class::Cheap
        } else {
            Class::Costly
        }
    }

    /// The cookie round (see [`super::cookie`]) for an init from `from`:
    /// `Ok` lets it be authenticated; an init from an address where its
    /// node is not known to be, while the hub is under load, passes only
    /// with a valid cookie, and is otherwise answered with one (within the
    /// reply budget) and dropped as [`DropReason::CookieRequired`].
    pub(super) fn cookie_gate(
        &mut self,
        now: Time,
        from: SocketAddr,
        dg: &wire::Datagram<'_>,
    ) -> Result<(), DropReason> {
        let spi = dg.header.spi;
        // Not an init SPI: the routing refuses it for nothing.
        if !matches!(
            self.shared.table.lookup(spi),
            Some(SpiOwner::Init(_) | SpiOwner::SharedInit)
        ) || self.init_from_its_node(spi, from)
        {
            return Ok(());
        }
        let sh = &mut self.shared;
        sh.cookies.unverified_init(now);
        sh.cookies.expire(now);
        if !sh.cookies.under_load(now)
            || dg
                .init_cookie()
                .is_some_and(|c| sh.cookies.check(from, spi, &c))
        {
            return Ok(());
        }
        if let Some(tag) = dg.tag()
            && let Some(cookie) = sh.cookies.issue(now, from, spi, &mut sh.rng)
        {
            sh.actions.push_back(Action::Reply {
                to: from,
                datagram: wire::cookie_message(spi, &cookie, &tag),
            });
        }
        Err(DropReason::CookieRequired)
    }

    /// Most generations that may wait for deletion at once (see
    /// [`RETIRING_PER_NODE`]).
    pub fn retiring_cap(&self) -> usize {
        self.nodes
            .len()
            .saturating_mul(RETIRING_PER_NODE)
            .saturating_add(RETIRING_SLACK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_serves_its_burst_then_its_rate() {
        let limit = Limit {
            burst: 3,
            every_ms: 100,
        };
        let t = Time(10_000);
        let mut b = Bucket::full(t);
        assert!((0..3).all(|_| b.take(t, limit)), "a full bucket serves 3");
        assert!(!b.take(t, limit), "then nothing at the same instant");
        assert!(!b.take(t.plus_ms(99), limit));
        assert!(b.take(t.plus_ms(100), limit), "one per 100 ms");
        assert!(!b.take(t.plus_ms(150), limit));
        // Idle long enough: full again, and no more than full.
        let later = t.plus_ms(10_000);
        assert_eq!((0..10).filter(|_| b.take(later, limit)).count(), 3);
        // 1,000 requests at one instant: the burst, whatever the count.
        let mut b = Bucket::full(t);
        assert_eq!((0..1000).filter(|_| b.take(t, limit)).count(), 3);
        // Across the 2^32 ms wrap of the stored deadline, the same.
        let wrap = Time((1u64 << 32) - 150);
        let mut b = Bucket::full(wrap);
        assert_eq!((0..10).filter(|_| b.take(wrap, limit)).count(), 3);
        assert!(!b.take(wrap.plus_ms(99), limit));
        assert!(b.take(wrap.plus_ms(100), limit));
        assert!(!b.take(wrap.plus_ms(199), limit));
        assert!(b.take(wrap.plus_ms(200), limit));
    }
}
