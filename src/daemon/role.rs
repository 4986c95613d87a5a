//! What the event loop needs from a role: the sans-IO [`Machine`] (hub or
//! node) plus where its peers are and how it answers the control socket.
//! The loop ([`super::event_loop`]) is written once against this trait.

use std::net::SocketAddr;

use rotor_core::{Machine, NameTable, Now, PeerId, PeerStatus, Time};

/// A hub or a node, as the event loop drives it.
pub trait Role {
    /// The protocol machine.
    type Machine: Machine;
    /// `hub` or `node`, for logs and the status response.
    const NAME: &'static str;

    /// The machine.
    fn machine(&self) -> &Self::Machine;
    /// The machine, to feed it.
    fn machine_mut(&mut self) -> &mut Self::Machine;
    /// Whether a control datagram from `from` may reach the machine (the
    /// machine authenticates every message; this only sheds what can never
    /// be genuine early).
    fn accepts_from(&self, from: SocketAddr) -> bool {
        let _ = from;
        true
    }
    /// Where control datagrams for `peer` go.
    fn peer_addr(&self, peer: PeerId) -> Option<SocketAddr>;
    /// Peer names, indexed by [`PeerId`].
    fn names(&self) -> &NameTable;
    /// Rows of the key-SPI table.
    fn peer_count(&self) -> usize;
    /// Row `index` of the key-SPI table.
    fn peer_status(&self, index: usize, now: Time) -> Option<PeerStatus>;
    /// `rotor rotate`: rotate `node` or `all` (hub), or request a rotation of
    /// this node's own keys (node). Returns how many rotations started, or
    /// what was wrong with the request.
    fn rotate(&mut self, now: Now, node: Option<&str>, all: bool) -> Result<usize, String>;
}
