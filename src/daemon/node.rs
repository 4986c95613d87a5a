//! The node as a [`Role`]: the core's [`Node`] and its one peer, the hub.

use std::net::{IpAddr, SocketAddr};

use tracing::{info, warn};

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
    /// The hub's DNS name, when it was given as one.
    by_name: Option<ByName>,
}

/// Finding the hub again by its name when it stops answering.
struct ByName {
    host: String,
    /// The node's configured address: answers are kept to its family, and
    /// a node without one sends from what its route to the new address
    /// gives.
    fixed: Option<IpAddr>,
    /// Silence (ms since the hub was last heard) after which the name is
    /// resolved again, and the least time between two resolutions.
    after_ms: u64,
    lookup: Option<crate::resolve::Lookup>,
    last: Option<Time>,
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
            by_name: None,
        }
    }

    /// The hub was given as the DNS name `host` (already resolved to the
    /// address this role started with): when nothing is heard from it for
    /// `hello_ms` and a quarter, the name is resolved again (at most once
    /// per `hello_ms`), and a new address moves the hub there. `fixed` is
    /// the node's configured address, if any.
    pub fn with_hub_name(mut self, host: String, fixed: Option<IpAddr>, hello_ms: u64) -> Self {
        self.by_name = Some(ByName {
            host,
            fixed,
            after_ms: hello_ms.max(1) + hello_ms / 4,
            lookup: None,
            last: None,
        });
        self
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

    fn peer_moved(&mut self, _peer: PeerId, to: SocketAddr) {
        self.hub = to;
    }

    /// Resolves the hub's name again while the hub is silent, and moves to
    /// the address it now has.
    fn poll(&mut self, now: Now) {
        let Some(b) = self.by_name.as_mut() else {
            return;
        };
        if let Some(answer) = b.lookup.as_ref().and_then(|l| l.take()) {
            b.lookup = None;
            match answer {
                Ok(to) if to != self.hub => {
                    info!(
                        role = "node",
                        hub = %b.host,
                        from = %self.hub,
                        to = %to,
                        "the hub's name resolves to a new address: moving there"
                    );
                    let source = match b.fixed {
                        Some(_) => None,
                        None => super::route_source(to).map(|ip| SocketAddr::new(ip, to.port())),
                    };
                    self.node.hub_moved(now, to, source);
                }
                Ok(_) => {}
                Err(e) => warn!(
                    role = "node",
                    "resolving the hub again: {e}; keeping {}", self.hub
                ),
            }
            return;
        }
        let silent = self
            .node
            .last_seen()
            .is_none_or(|t| now.mono.since(t) >= b.after_ms);
        let rested = b.last.is_none_or(|t| now.mono.since(t) >= b.after_ms);
        if b.lookup.is_none() && silent && rested {
            b.last = Some(now.mono);
            match crate::resolve::Lookup::start(
                &b.host,
                self.hub.port(),
                b.fixed.map(|a| a.is_ipv4()),
            ) {
                Ok(l) => b.lookup = Some(l),
                Err(e) => warn!(role = "node", "cannot start resolving the hub's name: {e}"),
            }
        }
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
        let mut cfg = crate::config::load_node(&src.path).map_err(|e| e.to_string())?;
        let fixed = NodeFixed::of(&cfg);
        // The same name (checked below): the hub stays where it is reached
        // now; the name is resolved again only when the hub is silent.
        if cfg.hub_name.is_some() {
            cfg.hub = self.hub;
        }
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
