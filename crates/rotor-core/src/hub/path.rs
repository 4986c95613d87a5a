//! Where each node is: the address and port its freshest authenticated
//! message came from, and whether a NAT sits on the way (then its ESP
//! travels in UDP, RFC 3948).
//!
//! A node is its name and keys, not its address. Only a message that
//! authenticates and is the freshest yet from its node (a higher
//! generation, or a higher counter in the same one) or an accepted init
//! (its timestamp is strictly newer than every earlier one) may move it:
//! an old hello captured on the way and replayed later, from anywhere, is
//! either refused by the replay window or older than the message that set
//! the current path, and moves nothing.

use std::net::SocketAddr;

use super::{NodeState, Shared};
use crate::action::{Action, Event, PeerId, SaDir, Time};
use crate::wire::{ENDPOINT_LEN, decode_endpoint, encode_endpoint};

/// Whether a node that says it sent from `claimed` but was seen at `seen`
/// is behind a NAT. A node that could not tell its own address claims the
/// unspecified one: only the ports are compared then.
pub fn behind_nat(claimed: SocketAddr, seen: SocketAddr) -> bool {
    claimed.port() != seen.port()
        || (!claimed.ip().is_unspecified()
            && claimed.ip().to_canonical() != seen.ip().to_canonical())
}

/// Where a node is, packed (19 bytes against `Option<SocketAddr>`'s 32:
/// it is in every node's entry), in the wire's endpoint encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Place {
    endpoint: [u8; ENDPOINT_LEN],
    known: bool,
}

impl Place {
    /// `a`.
    pub(super) fn of(a: SocketAddr) -> Place {
        Place {
            endpoint: encode_endpoint(&a),
            known: true,
        }
    }

    /// Whether the node is known to be reached at `a` (IPv4 and
    /// IPv4-mapped IPv6 are the same address). No allocation, no decoding:
    /// [`super::Hub::classify`] asks this of every datagram.
    pub(super) fn is(&self, a: &SocketAddr) -> bool {
        self.known && self.endpoint == encode_endpoint(a)
    }

    /// The address, if known.
    pub(super) fn get(self) -> Option<SocketAddr> {
        self.known
            .then(|| decode_endpoint(&self.endpoint))
            .flatten()
    }
}

/// The freshness of a message authenticated under `generation` with
/// `counter`, as one number (saturating: a generation or a counter past
/// 2^32 stops moving nodes until the next one, never moves one back).
fn freshness(generation: u64, counter: u64) -> u64 {
    (generation.min(u64::from(u32::MAX)) << 32) | counter.min(u64::from(u32::MAX))
}

impl Shared {
    /// Node `id`'s message came from `from`. `fresh` is the (generation,
    /// counter) it was authenticated under, `None` for an accepted init;
    /// `claimed` is where the node says it sent from (hellos only). Moves
    /// the node if the message is the freshest yet and its path differs.
    pub(super) fn heard_from(
        &mut self,
        now: Time,
        id: PeerId,
        n: &mut NodeState,
        from: SocketAddr,
        fresh: Option<(u64, u64)>,
        claimed: Option<SocketAddr>,
    ) {
        let path = n.path.get();
        if n.pinned && path.is_some_and(|p| p.ip() != from.ip()) {
            return;
        }
        match fresh.map(|(g, c)| freshness(g, c)) {
            Some(mark) if path.is_some() && mark <= n.path_mark => return,
            Some(mark) => n.path_mark = mark,
            // A new chain: its hellos start over at generation 1.
            None => n.path_mark = 0,
        }
        let nat = match claimed {
            Some(c) => behind_nat(c, from),
            // An init says nothing about its source; the next hello does.
            None => n.nat,
        };
        if path == Some(from) && n.nat == nat {
            return;
        }
        self.move_path(now, id, n, from, nat);
    }

    /// Sets node `id`'s path and moves its SAs there: in place, state and
    /// all, where the caller can ([`Hub::set_move_in_place`]); otherwise
    /// the caller removes them on the old path ([`Action::PeerPath`]) and
    /// the core re-installs or re-keys them as after a kernel loss
    /// ([`Shared::lose`]).
    ///
    /// In place: a new address moves every SA ([`Action::PeerPath`] with
    /// `in_place`); a new NAT port alone updates the encapsulation of each
    /// SA of the latest and previous generations ([`Action::UpdateSa`]:
    /// the kernel finds the SA a migration moves by its addresses, so with
    /// the addresses unchanged it cannot tell moved SAs from unmoved
    /// ones), while those of a chain an init replaced, whose keys the hub
    /// no longer holds, and those retiring are removed and handled as
    /// lost. A first path has nothing in the kernel to move, an update
    /// cannot add or remove the encapsulation (a new NAT verdict), and a
    /// migration cannot remove it (a node no longer behind a NAT): those
    /// are re-added.
    pub(super) fn move_path(
        &mut self,
        now: Time,
        id: PeerId,
        n: &mut NodeState,
        to: SocketAddr,
        nat: bool,
    ) {
        let mut lost: Vec<(SaDir, u32)> = Vec::new();
        for g in [&n.latest, &n.previous].into_iter().flatten() {
            lost.push((SaDir::In, g.spi));
            if !g.out_missing {
                lost.push((SaDir::Out, g.spi));
            }
        }
        for &s in &n.superseded {
            lost.push((SaDir::In, s));
            lost.push((SaDir::Out, s));
        }
        let mut old_sas = lost.clone();
        for &(_, p, spi, out) in &self.retire_queue {
            if p == id {
                old_sas.push((SaDir::In, spi));
                if out {
                    old_sas.push((SaDir::Out, spi));
                }
            }
        }
        let first = n.path.get().is_none();
        let was = n.path.get();
        // A migration cannot take the encapsulation off an SA.
        let keeps_encap = nat || !n.nat;
        let in_place = self.in_place && keeps_encap && was.is_some_and(|p| p.ip() != to.ip());
        let new_port = self.in_place && n.nat && nat && was.is_some_and(|p| p.ip() == to.ip());
        if new_port {
            // The latest and previous generations stay; the rest goes.
            let kept = lost.len() - 2 * n.superseded.len();
            lost.drain(..kept);
            old_sas.drain(..kept);
        }
        n.path = Place::of(to);
        n.nat = nat;
        self.mark(id, n);
        self.actions.push_back(Action::PeerPath {
            peer: id,
            remote: Some(to),
            local: None,
            nat,
            old_sas,
            in_place,
        });
        self.actions.push_back(Action::Event(Event::Moved {
            peer: id,
            to,
            nat,
            first,
        }));
        if new_port {
            if !lost.is_empty() {
                self.lose(now, id, n, &lost, true);
            }
            for g in [&n.latest, &n.previous].into_iter().flatten() {
                let esp = g.esp_keys(self.names.get(id), self.key_bits);
                self.actions.push_back(Action::UpdateSa {
                    peer: id,
                    dir: SaDir::In,
                    spi: g.spi,
                    key: esp.n2h,
                });
                if !g.out_missing {
                    self.actions.push_back(Action::UpdateSa {
                        peer: id,
                        dir: SaDir::Out,
                        spi: g.spi,
                        key: esp.h2n,
                    });
                }
            }
        }
        if in_place || new_port {
            // The new path's outbound policy starts blocked (the caller
            // cannot know the SPI); it names the same SA again.
            if let Some(spi) = n.outbound {
                self.actions.push_back(Action::SetOutbound {
                    peer: id,
                    spi: Some(spi),
                });
            }
        } else if !lost.is_empty() {
            self.lose(now, id, n, &lost, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_is_a_changed_port_or_a_changed_known_address() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(!behind_nat(a("10.0.0.2:4820"), a("10.0.0.2:4820")));
        assert!(behind_nat(a("10.0.0.2:4820"), a("198.51.100.1:4820")));
        assert!(behind_nat(a("10.0.0.2:4820"), a("10.0.0.2:61000")));
        assert!(!behind_nat(a("0.0.0.0:4820"), a("198.51.100.1:4820")));
        assert!(behind_nat(a("0.0.0.0:4820"), a("198.51.100.1:1024")));
        assert!(!behind_nat(a("10.0.0.2:4820"), a("[::ffff:10.0.0.2]:4820")));
    }
}
