//! The node as a [`Role`]: the core's [`Node`] and its one peer, the hub.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rotor_core::{Action, DropReason, NameTable, Node, PeerId, PeerStatus, Time};

use super::clock::Now;
use super::role::Role;

/// The node role.
pub struct NodeRole {
    node: Node,
    rng: StdRng,
    name: String,
    names: NameTable,
    hub: SocketAddr,
}

impl NodeRole {
    /// Node `name` talking to the hub at `hub`.
    pub fn new(node: Node, name: String, hub: SocketAddr) -> Self {
        NodeRole {
            node,
            rng: StdRng::from_entropy(),
            name,
            names: NameTable::from_names(["hub"]),
            hub,
        }
    }
}

impl Role for NodeRole {
    const NAME: &'static str = "node";

    fn handle_datagram(&mut self, now: Now, from: SocketAddr, data: &[u8]) {
        // Only the configured hub may talk to us.
        if from.ip() == self.hub.ip() {
            self.node.handle_datagram(now.mono, data);
        }
    }

    fn handle_timeout(&mut self, now: Now) {
        self.node
            .handle_timeout(now.mono, now.unix_ms, &mut self.rng);
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.node.poll_timeout()
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.node.poll_action()
    }

    fn peer_addr(&self, _peer: PeerId) -> Option<SocketAddr> {
        Some(self.hub)
    }

    fn names(&self) -> &NameTable {
        &self.names
    }

    fn peer_count(&self) -> usize {
        1
    }

    fn peer_status(&self, index: usize, now: Time) -> Option<PeerStatus> {
        (index == 0).then(|| self.node.status(now))
    }

    fn drops(&self) -> &BTreeMap<DropReason, u64> {
        self.node.drops()
    }

    fn rotate(&mut self, now: Now, node: Option<&str>, _all: bool) -> Result<usize, String> {
        if let Some(n) = node
            && n != self.name
        {
            return Err(format!(
                "this is node {:?}: it can only request a rotation of its own keys (--all, or --node {:?})",
                self.name, self.name
            ));
        }
        self.node.request_rotation(now.mono);
        Ok(1)
    }
}
