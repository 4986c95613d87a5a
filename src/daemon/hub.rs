//! The hub as a [`Role`]: the core's [`Hub`] and where each node is.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rotor_core::{Action, DropReason, Hub, NameTable, PeerId, PeerStatus, Time};

use super::clock::Now;
use super::role::Role;

/// The hub role.
pub struct HubRole {
    hub: Hub,
    rng: StdRng,
    names: NameTable,
    /// The control address of each node, indexed by [`PeerId`].
    addrs: Vec<SocketAddr>,
}

impl HubRole {
    /// Serves `hub`'s nodes at `addrs` (indexed like the hub's nodes), named
    /// `names` in logs. Starts the hub's timers.
    pub fn new(mut hub: Hub, names: NameTable, addrs: Vec<SocketAddr>) -> Self {
        hub.start();
        HubRole {
            hub,
            rng: StdRng::from_entropy(),
            names,
            addrs,
        }
    }
}

impl Role for HubRole {
    const NAME: &'static str = "hub";

    fn handle_datagram(&mut self, now: Now, _from: SocketAddr, data: &[u8]) {
        // The SPI names the node; its source address is not trusted.
        self.hub
            .handle_datagram(now.mono, now.unix_ms, data, &mut self.rng);
    }

    fn handle_timeout(&mut self, now: Now) {
        self.hub.handle_timeout(now.mono, &mut self.rng);
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.hub.poll_timeout()
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.hub.poll_action()
    }

    fn peer_addr(&self, peer: PeerId) -> Option<SocketAddr> {
        self.addrs.get(peer.0 as usize).copied()
    }

    fn names(&self) -> &NameTable {
        &self.names
    }

    fn peer_count(&self) -> usize {
        self.hub.node_count()
    }

    fn peer_status(&self, index: usize, now: Time) -> Option<PeerStatus> {
        self.hub
            .peer_status(PeerId(u32::try_from(index).ok()?), now)
    }

    fn drops(&self) -> &BTreeMap<DropReason, u64> {
        self.hub.drops()
    }

    fn rotate(&mut self, now: Now, node: Option<&str>, all: bool) -> Result<usize, String> {
        if all {
            // Paced by the hub: TIMER_BATCH nodes per loop turn.
            return Ok(self.hub.rotate_all(now.mono));
        }
        let name = node.ok_or("name a node (--node NAME) or --all")?;
        let id = self
            .hub
            .node_id(name)
            .ok_or_else(|| format!("no node named {name:?}"))?;
        self.hub
            .rotate_now(now.mono, id, &mut self.rng)
            .map_err(|e| e.to_string())?;
        Ok(1)
    }
}
