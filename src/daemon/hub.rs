//! The hub as a [`Role`]: the core's [`Hub`] and where each node is.

use std::net::SocketAddr;

use rotor_core::{Hub, NameTable, Now, PeerId, PeerStatus, Time};

use super::role::Role;

/// The hub role.
pub struct HubRole {
    hub: Hub,
    names: NameTable,
    /// The control address of each node, indexed by [`PeerId`].
    addrs: Vec<SocketAddr>,
}

impl HubRole {
    /// Serves `hub`'s nodes at `addrs` (indexed like the hub's nodes), named
    /// `names` in logs. Starts the hub's timers.
    pub fn new(mut hub: Hub, names: NameTable, addrs: Vec<SocketAddr>) -> Self {
        hub.start();
        HubRole { hub, names, addrs }
    }
}

impl Role for HubRole {
    type Machine = Hub;
    const NAME: &'static str = "hub";

    fn machine(&self) -> &Hub {
        &self.hub
    }

    fn machine_mut(&mut self) -> &mut Hub {
        &mut self.hub
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
        self.hub.rotate_now(now, id).map_err(|e| e.to_string())?;
        Ok(1)
    }
}
