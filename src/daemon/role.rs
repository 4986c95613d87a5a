//! What the event loop needs from a role: the sans-IO machine (hub or node)
//! plus where its peers are and how it answers the control socket. The loop
//! ([`super::event_loop`]) is written once against this trait.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rotor_core::{Action, DropReason, NameTable, PeerId, PeerStatus, Time};

use super::clock::Now;

/// A hub or a node, as the event loop drives it.
pub trait Role {
    /// `hub` or `node`, for logs and the status response.
    const NAME: &'static str;

    /// Feeds one control datagram that arrived from `from`.
    fn handle_datagram(&mut self, now: Now, from: SocketAddr, data: &[u8]);
    /// Fires whatever timers are due at `now`.
    fn handle_timeout(&mut self, now: Now);
    /// When [`Self::handle_timeout`] must next be called.
    fn poll_timeout(&self) -> Option<Time>;
    /// The next action, in order.
    fn poll_action(&mut self) -> Option<Action>;

    /// Where control datagrams for `peer` go.
    fn peer_addr(&self, peer: PeerId) -> Option<SocketAddr>;
    /// Peer names, indexed by [`PeerId`].
    fn names(&self) -> &NameTable;
    /// Rows of the key-SPI table.
    fn peer_count(&self) -> usize;
    /// Row `index` of the key-SPI table.
    fn peer_status(&self, index: usize, now: Time) -> Option<PeerStatus>;
    /// Datagrams dropped so far, by reason.
    fn drops(&self) -> &BTreeMap<DropReason, u64>;
    /// `rotor rotate`: rotate `node` or `all` (hub), or request a rotation of
    /// this node's own keys (node). Returns how many rotations started, or
    /// what was wrong with the request.
    fn rotate(&mut self, now: Now, node: Option<&str>, all: bool) -> Result<usize, String>;
}
