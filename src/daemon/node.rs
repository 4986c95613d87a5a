//! The node as a [`Role`]: the core's [`Node`] and its one peer, the hub.

use std::net::SocketAddr;

use rotor_core::{KernelView, NameTable, Node, Now, PeerId, PeerStatus, SaDir, Time};

use super::reload::{NodeFixed, Source, current_records, diff, needs_restart};
use super::role::Role;
use crate::control::ReloadReply;
use crate::peer_kernel::PeerKernel;

/// The node role.
pub struct NodeRole {
    node: Node,
    name: String,
    names: NameTable,
    hub: SocketAddr,
    /// The core's record on its way into the stored one.
    scratch: zeroize::Zeroizing<Vec<u8>>,
    /// A digest of the configuration, to report whether a reload changed it.
    digest: u64,
    /// The configuration file, for reloads.
    source: Option<Source<NodeFixed>>,
}

impl NodeRole {
    /// Node `name` talking to the hub at `hub`; `digest` stands for its
    /// configuration.
    pub fn new(node: Node, name: String, hub: SocketAddr, digest: u64) -> Self {
        NodeRole {
            node,
            name,
            names: NameTable::from_names(["hub"]),
            hub,
            scratch: zeroize::Zeroizing::new(Vec::new()),
            digest,
            source: None,
        }
    }

    /// Reloads read `source`.
    pub fn set_source(&mut self, source: Source<NodeFixed>) {
        self.source = Some(source);
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

    fn rotate_overdue(&mut self, now: Now, _index: usize) {
        self.node.request_rotation(now.mono);
    }

    fn take_dirty(&mut self, out: &mut Vec<usize>) {
        if self.node.take_dirty() {
            out.push(0);
        }
    }

    /// The node's path (where it sends from, the hub's NAT verdict), then
    /// the core's record.
    fn save(&mut self, index: usize, now: Now, out: &mut Vec<u8>) {
        out.clear();
        if index == 0 {
            self.node.save(now, &mut self.scratch);
            let (from, nat) = self.node.path();
            super::put_path(out, from, nat);
            out.extend_from_slice(&self.scratch);
            zeroize::Zeroize::zeroize(&mut *self.scratch);
        }
    }

    /// The hub's address, with the hub's NAT verdict.
    fn peer_path(&self, index: usize) -> Option<(SocketAddr, bool)> {
        (index == 0).then(|| (self.hub, self.node.path().1))
    }

    fn route_changed(&mut self, now: Now) {
        let (from, _) = self.node.path();
        if let Some(ip) = super::route_source(self.hub)
            && ip != from.ip()
        {
            self.node
                .local_moved(now, SocketAddr::new(ip, self.hub.port()));
        }
    }

    fn record_key(&self, _index: usize) -> &str {
        &self.name
    }

    fn kernel_view(&self, index: usize) -> Option<KernelView> {
        (index == 0).then(|| self.node.kernel_view())
    }

    fn rebuild(&mut self, now: Now) -> Result<(Self, Vec<PeerKernel>, ReloadReply), String> {
        let src = self
            .source
            .clone()
            .ok_or("this node was started without a configuration file: nothing to reload")?;
        let cfg = crate::config::load_node(&src.path).map_err(|e| e.to_string())?;
        let fixed = NodeFixed::of(&cfg);
        let changed = src.fixed.changed(&fixed);
        if !changed.is_empty() {
            return Err(needs_restart(&changed));
        }
        let mut records = current_records(self, now);
        let (mut new, peers, _) =
            super::node_parts(&cfg, src.own, Some(&mut records)).map_err(|e| format!("{e:#}"))?;
        let reply = diff(
            &[(self.name.clone(), self.digest)],
            &[(new.name.clone(), new.digest)],
        );
        new.set_source(Source { fixed, ..src });
        Ok((new, peers, reply))
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
