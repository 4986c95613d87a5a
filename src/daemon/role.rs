//! What the event loop needs from a role: the sans-IO [`Machine`] (hub or
//! node) plus where its peers are and how it answers the control socket.
//! The loop ([`super::event_loop`]) is written once against this trait.

use std::net::SocketAddr;

use crate::control::ReloadReply;
use crate::peer_kernel::PeerKernel;
use rotor_core::{KernelView, Machine, NameTable, Now, PeerId, PeerStatus, SaDir, Time};

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
    /// Where peer `index` is reached and whether through a NAT, if known.
    fn peer_path(&self, index: usize) -> Option<(SocketAddr, bool)>;
    /// The machine moved `peer` to `to` ([`rotor_core::Action::PeerPath`]):
    /// control datagrams go there from now on.
    fn peer_moved(&mut self, peer: PeerId, to: SocketAddr) {
        let _ = (peer, to);
    }
    /// This host's addresses or routes changed: a role that follows its
    /// own address (a node) checks where it now sends from.
    fn route_changed(&mut self, now: Now) {
        let _ = now;
    }
    /// Called once per turn of the event loop, after the machine's timers:
    /// work of the role's own that waits on nothing the loop selects on
    /// (a node resolving its hub's name again).
    fn poll(&mut self, now: Now) {
        let _ = now;
    }
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

    /// A soft lifetime of peer `index`'s SA expired: rotate it now (a node
    /// asks its hub).
    fn rotate_overdue(&mut self, now: Now, index: usize);
    /// Appends the peers whose durable record changed since the last call.
    fn take_dirty(&mut self, out: &mut Vec<usize>);
    /// Encodes peer `index`'s durable record into `out` (cleared first).
    fn save(&mut self, index: usize, now: Now, out: &mut Vec<u8>);
    /// The key peer `index`'s record is stored under (its name).
    fn record_key(&self, index: usize) -> &str;
    /// The SAs and outbound SPI the state says the kernel holds for peer
    /// `index`.
    fn kernel_view(&self, index: usize) -> Option<KernelView>;
    /// Calls `f(index, spi)` for every replaced generation in its grace
    /// period (its SAs stay until the machine deletes them).
    fn for_each_retiring(&self, f: &mut dyn FnMut(usize, u32));
    /// Re-reads the role's configuration file and builds its replacement
    /// (see [`super::reload`]): the new role, with every peer still
    /// configured restored from its current record, its kernel layout, and
    /// what changed. `Err` (nothing changed) for a bad configuration or a
    /// change that needs a restart.
    fn rebuild(&mut self, now: Now) -> Result<(Self, Vec<PeerKernel>, ReloadReply), String>
    where
        Self: Sized;
    /// The kernel lacks these SAs of peer `index`: the machine repairs what
    /// it safely can (its actions follow).
    fn kernel_lost(&mut self, now: Now, index: usize, lost: &[(SaDir, u32)]);
    /// While `on`, repairs rotate nobody at once (a hub's
    /// [`rotor_core::Hub::hold_repairs`]; see [`super::repairs`]). A node
    /// role has nothing to hold.
    fn hold_repairs(&mut self, on: bool) {
        let _ = on;
    }
    /// Settles peer `index`'s held repair ([`rotor_core::Hub::settle_repair`]).
    fn settle_repair(&mut self, now: Now, index: usize, force: bool) {
        let _ = (now, index, force);
    }
}
