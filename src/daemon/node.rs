//! The node as a [`Role`]: the core's [`Node`] and its one peer, the hub.

use std::net::SocketAddr;

use rotor_core::{KernelView, NameTable, Node, Now, PeerId, PeerStatus, SaDir, Time};

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

    fn take_dirty(&mut self, out: &mut Vec<usize>) {
        if self.node.take_dirty() {
            out.push(0);
        }
    }

    fn save(&mut self, index: usize, now: Now, out: &mut Vec<u8>) {
        if index == 0 {
            self.node.save(now, out);
        } else {
            out.clear();
        }
    }

    fn record_key(&self, _index: usize) -> &str {
        &self.name
    }

    fn kernel_view(&self, index: usize) -> Option<KernelView> {
        (index == 0).then(|| self.node.kernel_view())
    }

    fn for_each_retiring(&self, f: &mut dyn FnMut(usize, u32)) {
        for spi in self.node.retiring() {
            f(0, spi);
        }
    }

    fn kernel_lost(&mut self, now: Now, index: usize, lost: &[(SaDir, u32)]) {
        if index == 0 {
            self.node.kernel_lost(now, lost);
        }
    }
}
