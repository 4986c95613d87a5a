//! The hub as a [`Role`]: the core's [`Hub`] and where each node is.

use std::net::SocketAddr;

use rotor_core::{Hub, KernelView, NameTable, Now, PeerId, PeerStatus, SaDir, Time};

use zeroize::{Zeroize, Zeroizing};

use super::reload::{HubFixed, Source, current_records, diff, needs_restart};
use super::role::Role;
use crate::control::ReloadReply;
use crate::peer_kernel::PeerKernel;

/// The hub role.
pub struct HubRole {
    hub: Hub,
    names: NameTable,
    /// The control address of each node, indexed by [`PeerId`].
    addrs: Vec<SocketAddr>,
    /// Each node's reqid, stored ahead of its record so it survives
    /// restarts and config edits.
    reqids: Vec<u32>,
    dirty: Vec<PeerId>,
    /// The core's record on its way into the stored one.
    scratch: Zeroizing<Vec<u8>>,
    /// A digest of each node's configuration entry, to report what a
    /// reload changed.
    digests: Vec<u64>,
    /// The configuration file, for reloads.
    source: Option<Source<HubFixed>>,
    /// Nodes whose reqid no record held: their records are written before
    /// anything in the kernel carries the reqid.
    fresh: Vec<usize>,
}

impl HubRole {
    /// Serves `hub`'s nodes at `addrs` (indexed like the hub's nodes), named
    /// `names` in logs, whose kernel objects carry `reqids`. Starts the
    /// hub's timers.
    pub fn new(
        mut hub: Hub,
        names: NameTable,
        addrs: Vec<SocketAddr>,
        reqids: Vec<u32>,
        digests: Vec<u64>,
    ) -> Self {
        hub.start();
        HubRole {
            hub,
            names,
            addrs,
            reqids,
            dirty: Vec::new(),
            scratch: Zeroizing::new(Vec::with_capacity(super::persist::RECORD_ROOM)),
            digests,
            source: None,
            fresh: Vec::new(),
        }
    }
}

impl HubRole {
    /// Marks nodes `fresh` for writing at the next flush (their reqids
    /// were just assigned).
    pub fn mark_fresh(&mut self, fresh: Vec<usize>) {
        self.fresh = fresh;
    }

    /// Reloads read `source`.
    pub fn set_source(&mut self, source: Source<HubFixed>) {
        self.source = Some(source);
    }

    fn entries(&self) -> Vec<(String, u64)> {
        self.digests
            .iter()
            .enumerate()
            .map(|(i, d)| (self.names.get(PeerId(i as u32)).to_string(), *d))
            .collect()
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
        self.addrs
            .get(peer.0 as usize)
            .copied()
            .filter(|a| !a.ip().is_unspecified())
    }

    fn peer_path(&self, index: usize) -> Option<(SocketAddr, bool)> {
        self.hub.path(PeerId(u32::try_from(index).ok()?))
    }

    fn peer_moved(&mut self, peer: PeerId, to: SocketAddr) {
        if let Some(a) = self.addrs.get_mut(peer.0 as usize) {
            *a = to;
        }
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

    fn rotate_overdue(&mut self, now: Now, index: usize) {
        if let Ok(i) = u32::try_from(index) {
            // Unknown ids are refused by the core: nothing to do then.
            let _ = self.hub.rotate_now(now, PeerId(i));
        }
    }

    fn take_dirty(&mut self, out: &mut Vec<usize>) {
        out.append(&mut self.fresh);
        self.dirty.clear();
        self.hub.take_dirty(&mut self.dirty);
        out.extend(self.dirty.iter().map(|p| p.0 as usize));
    }

    /// The node's reqid, its path once known, then the core's record.
    fn save(&mut self, index: usize, now: Now, out: &mut Vec<u8>) {
        out.clear();
        let (Ok(i), Some(q)) = (u32::try_from(index), self.reqids.get(index)) else {
            return;
        };
        self.hub.save_node(PeerId(i), now, &mut self.scratch);
        out.extend_from_slice(&q.to_le_bytes());
        if let Some((to, nat)) = self.hub.path(PeerId(i)) {
            super::put_path(out, to, nat);
        }
        out.extend_from_slice(&self.scratch);
        self.scratch.zeroize();
    }

    fn record_key(&self, index: usize) -> &str {
        u32::try_from(index).map_or("", |i| self.names.get(PeerId(i)))
    }

    fn kernel_view(&self, index: usize) -> Option<KernelView> {
        self.hub.kernel_view(PeerId(u32::try_from(index).ok()?))
    }

    fn rebuild(&mut self, now: Now) -> Result<(Self, Vec<PeerKernel>, ReloadReply), String> {
        let src = self
            .source
            .clone()
            .ok_or("this hub was started without a configuration file: nothing to reload")?;
        let cfg = crate::config::load_hub(&src.path).map_err(|e| e.to_string())?;
        let fixed = HubFixed::of(&cfg);
        let changed = src.fixed.changed(&fixed);
        if !changed.is_empty() {
            return Err(needs_restart(&changed));
        }
        let mut records = current_records(self, now);
        let (mut new, peers, _) =
            super::hub_parts(cfg, src.own, Some(&mut records)).map_err(|e| format!("{e:#}"))?;
        let reply = diff(&self.entries(), &new.entries());
        new.set_source(Source { fixed, ..src });
        Ok((new, peers, reply))
    }

    fn for_each_retiring(&self, f: &mut dyn FnMut(usize, u32)) {
        self.hub.for_each_retiring(|p, spi| f(p.0 as usize, spi));
    }

    fn hold_repairs(&mut self, on: bool) {
        self.hub.hold_repairs(on);
    }

    fn settle_repair(&mut self, now: Now, index: usize, force: bool) {
        if let Ok(i) = u32::try_from(index) {
            self.hub.settle_repair(now, PeerId(i), force);
        }
    }

    fn kernel_lost(&mut self, now: Now, index: usize, lost: &[(SaDir, u32)]) {
        if let Ok(i) = u32::try_from(index) {
            self.hub.kernel_lost(now, PeerId(i), lost);
        }
    }
}
