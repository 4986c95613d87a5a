//! Log lines for the core's events. None carries key material.

use rotor_core::{Event, NameTable, PeerId};
use tracing::{debug, info, warn};

/// Logs one event of `role` ("hub" or "node").
pub fn event(e: &Event, names: &NameTable, role: &str) {
    let name = |p: &PeerId| names.get(*p);
    match e {
        Event::Rotated {
            peer,
            generation,
            spi,
            tx_spi,
        } => info!(
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
        } => info!(
            role,
            peer = name(peer),
            generation,
            spi = format!("{spi:#010x}"),
            "resent key (peer still on the previous generation)"
        ),
        Event::Initialised { peer, spi } => info!(
            role,
            peer = name(peer),
            spi = format!("{spi:#010x}"),
            "initialised"
        ),
        Event::Confirmed { peer, generation } => {
            debug!(role, peer = name(peer), generation, "confirmed")
        }
        Event::FallbackToInit { unanswered } => warn!(
            role,
            unanswered, "no answer from the hub: falling back to init"
        ),
        Event::Dropped { reason } => {
            debug!(role, reason = reason.name(), "dropped a control datagram")
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
