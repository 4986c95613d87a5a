//! What the daemon writes to its log about the protocol: a line per core
//! event at debug (a busy hub rotates thousands of nodes a second), a
//! [`Summary`] at info every minute that had anything to report, and
//! per-peer warnings ([`PeerWarnings`]: at most one per peer and trouble a
//! minute) naming the peer for what an operator must act on: a wrong key, a
//! skewed clock, an overdue rotation (kernel refusals are warned about by
//! [`super::KernelExec`] with the same limiter). No line carries key
//! material.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use rotor_core::wire::WireError;
use rotor_core::{DropReason, Event, Machine, NameTable, PeerId, Time};
use tracing::{debug, info, warn};

use super::peer_warn::{PeerWarnings, Trouble};
use super::role::Role;
use super::summary::{SUMMARY_EVERY_MS, Summary};

/// The log's state across the event loop's steps.
#[derive(Debug)]
pub struct Logbook {
    summary: Summary,
    warnings: PeerWarnings,
    /// Peer index by address, built at the first datagram under an unknown
    /// SPI (most hubs never need it) and dropped at a reload.
    by_addr: Option<HashMap<IpAddr, Option<usize>>>,
    /// Control datagrams received since the start (status and metrics).
    pub received: u64,
    /// Control datagrams handed to the kernel to send since the start.
    pub sent: u64,
    /// Datagrams on the control port without the non-ESP marker (and not
    /// taken as ESP by the kernel): never shown to the machine.
    pub unframed: u64,
    /// Datagrams the machine classified costly ([`rotor_core::Class`]) and
    /// a burst had no budget left for: never shown to the machine.
    pub shed: u64,
    /// Peer paths changed (moves, reloads) since the start: the event
    /// loop re-steers its queues when this changes.
    pub moves: u64,
}

/// Datagrams the machine has dropped for an unknown SPI so far: compared
/// around one datagram, it tells whether that one was.
pub fn unknown_spis<M: Machine>(m: &M) -> u64 {
    m.drops().get(&DropReason::UnknownSpi).copied().unwrap_or(0)
}

impl Logbook {
    /// A log whose first summary period starts at `now`, with the kernel
    /// error counter at `kernel_errors`.
    pub fn new(now: Time, kernel_errors: u64) -> Self {
        Logbook {
            summary: Summary::new(SUMMARY_EVERY_MS, now, kernel_errors),
            warnings: PeerWarnings::default(),
            by_addr: None,
            received: 0,
            sent: 0,
            unframed: 0,
            shed: 0,
            moves: 0,
        }
    }

    /// Logs and counts one event of `role` ("hub" or "node").
    pub fn event(&mut self, e: &Event, names: &NameTable, role: &str, now: Time) {
        self.summary.count(e);
        let name = |p: &PeerId| names.get(*p);
        match e {
            Event::Rotated {
                peer,
                generation,
                spi,
                tx_spi,
            } => debug!(
                role,
                peer = name(peer),
                generation,
                spi = format!("{spi:#010x}"),
                tx_spi = format!("{tx_spi:#010x}"),
                "rotated"
            ),
            Event::Resent {
                peer,
                generation,
                spi,
            } => debug!(
                role,
                peer = name(peer),
                generation,
                spi = format!("{spi:#010x}"),
                "resent key (peer still on the previous generation)"
            ),
            // A node has one chain: its (re)initialisation is news. A hub
            // initialises every node at its first start: counted.
            Event::Initialised { peer, spi } if role == "node" => info!(
                role,
                peer = name(peer),
                spi = format!("{spi:#010x}"),
                "initialised"
            ),
            Event::Initialised { peer, spi } => debug!(
                role,
                peer = name(peer),
                spi = format!("{spi:#010x}"),
                "initialised"
            ),
            // A node that moves is news, and rare; a hub learning where a
            // node is at its first message is not.
            Event::Moved {
                peer,
                to,
                nat,
                first,
            } if !*first => info!(
                role,
                peer = name(peer),
                %to,
                nat,
                "moved"
            ),
            Event::Moved { peer, to, nat, .. } => debug!(
                role,
                peer = name(peer),
                %to,
                nat,
                "reached at"
            ),
            Event::Confirmed { peer, generation } => {
                debug!(role, peer = name(peer), generation, "confirmed")
            }
            Event::FallbackToInit { unanswered } => warn!(
                role,
                unanswered,
                "no answer from the hub: falling back to init (if this repeats, the hub's log \
                 names this node when its key or clock differs from the hub's)"
            ),
            Event::Dropped { reason, peer } => {
                let peer = peer.as_ref().map(name);
                debug!(
                    role,
                    reason = reason.name(),
                    peer,
                    "dropped a control datagram"
                );
                if let Some(p) = peer {
                    self.dropped_under(p, *reason, now);
                }
            }
            Event::KernelRepaired {
                peer,
                reinstalled,
                blocked,
            } => warn!(
                role,
                peer = name(peer),
                reinstalled,
                blocked,
                "SAs missing from the kernel: re-installed what is safe, rotating onto fresh keys"
            ),
        }
    }

    /// A datagram under `peer`'s SPI was dropped for `reason`: warns about
    /// the reasons that mean a misconfigured peer.
    fn dropped_under(&mut self, peer: &str, reason: DropReason, now: Time) {
        match reason {
            DropReason::Wire(WireError::AuthFailed) => {
                if let Some(held) = self.warnings.allow(peer, Trouble::WrongKey, now) {
                    warn!(
                        peer,
                        suppressed = held,
                        "a control datagram under {peer}'s SPI failed authentication: the hub's \
                         and the node's init keys (or node names) for {peer} differ, or the \
                         datagram is forged"
                    );
                }
            }
            DropReason::InitClockSkew => {
                if let Some(held) = self.warnings.allow(peer, Trouble::ClockSkew, now) {
                    warn!(
                        peer,
                        suppressed = held,
                        "init request from {peer} refused: its timestamp is further from this \
                         host's clock than init_skew allows; check both clocks (NTP)"
                    );
                }
            }
            _ => {}
        }
    }

    /// A datagram from `from` was dropped for an SPI no key of ours has:
    /// if `from` is a peer's address, warns naming it (a node whose init
    /// key differs from the hub's sends under an init SPI the hub does not
    /// know, so this is how a wrong key usually shows).
    pub fn unknown_spi_from<R: Role>(&mut self, role: &R, from: SocketAddr, now: Time) {
        let index = self.by_addr.get_or_insert_with(|| {
            let mut m: HashMap<IpAddr, Option<usize>> = HashMap::new();
            for i in 0..role.peer_count() {
                let Some(a) = u32::try_from(i)
                    .ok()
                    .and_then(|p| role.peer_addr(PeerId(p)))
                else {
                    continue;
                };
                // Two peers at one address: the datagram names neither.
                m.entry(a.ip()).and_modify(|e| *e = None).or_insert(Some(i));
            }
            m
        });
        let Some(&Some(i)) = index.get(&from.ip()) else {
            return;
        };
        let Ok(i) = u32::try_from(i) else {
            return;
        };
        let peer = role.names().get(PeerId(i));
        if let Some(held) = self.warnings.allow(peer, Trouble::WrongKey, now) {
            warn!(
                peer,
                %from,
                suppressed = held,
                "control datagrams from {peer}'s address under an SPI no key of this {} has: \
                 {peer}'s init key differs from the one configured here, or it uses a \
                 generation this side no longer has (then it re-initialises after its retries)",
                R::NAME
            );
        }
    }

    /// Peer `peer`'s SA reached its soft lifetime: it is being rotated now.
    pub fn rotation_overdue(&mut self, peer: &str, now: Time) {
        if let Some(held) = self.warnings.allow(peer, Trouble::RotationOverdue, now) {
            warn!(
                peer,
                suppressed = held,
                "an SA reached its soft lifetime: rotation overdue, rotating now"
            );
        }
    }

    /// The peers changed (a reload): addresses are looked up afresh.
    pub fn peers_changed(&mut self) {
        self.by_addr = None;
    }

    /// When the next summary is due, if anything is to be reported.
    pub fn due(&self, kernel_errors: u64) -> Option<Time> {
        self.summary.due(kernel_errors)
    }

    /// Writes the summary if one is due and anything happened.
    pub fn tick(&mut self, role: &str, now: Time, kernel_errors: u64) {
        if let Some(p) = self.summary.take(now, kernel_errors) {
            info!(
                role,
                seconds = p.ms / 1000,
                rotations = p.rotations,
                resends = p.resends,
                inits = p.inits,
                dropped = p.dropped(),
                drops = %p.drops_text(),
                kernel_errors = p.kernel_errors,
                "summary"
            );
        }
    }
}
