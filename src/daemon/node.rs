//! The node as a [`Role`]: the core's [`Node`] and its one peer, the hub.

use std::net::SocketAddr;

use rotor_core::{NameTable, Node, Now, PeerId, PeerStatus, Time};

use super::role::Role;

/// The node role.
pub struct NodeRole {
    node: Node,
    name: String,
    names: NameTable,
    hub: SocketAddr,
}

impl NodeRole {
    /// Node `name` talking to the hub at `hub`.
    pub fn new(node: Node, name: String, hub: SocketAddr) -> Self {
        NodeRole {
            node,
            name,
            names: NameTable::from_names(["hub"]),
            hub,
        }
    }
}

impl Role for NodeRole {
    type Machine = Node;
    const NAME: &'static str = "node";

    fn machine(&self) -> &Node {
        &self.node
    }

    fn machine_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// Only the configured hub may talk to us.
    fn accepts_from(&self, from: SocketAddr) -> bool {
        from.ip() == self.hub.ip()
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
