//! Live reload (`rotor reload`, SIGHUP): the configuration is read and
//! validated whole; on any error nothing changes. Otherwise the role is
//! rebuilt from the new configuration and the current state: every peer
//! still configured is restored from its current record (same keys, chain,
//! counters, reqid), so an untouched peer notices nothing; a peer whose init
//! key changed re-initialises; a changed address or mode re-keys that peer
//! only (the reconcile pass that follows moves its kernel objects); added
//! peers get their policies and initialise; removed peers' objects and
//! records go. Settings the running sockets or every peer's SAs depend on
//! (addresses, ports, sockets, the state directory, key size, replay
//! window, policy priority, the guard's tools) need a restart, which is hitless too.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use rotor_core::Now;
use rotor_xfrm::Ownership;
use zeroize::Zeroizing;

use super::role::Role;
use crate::config::{HubConfig, HubPeer, NodeConfig};
use crate::control::ReloadReply;
use crate::guard::GuardBackend;
use crate::store::Loaded;

/// Where a running role's configuration came from, and the settings of it
/// that a reload may not change.
#[derive(Debug, Clone)]
pub struct Source<G> {
    /// The configuration file.
    pub path: PathBuf,
    /// The reqid range the role runs with.
    pub own: Ownership,
    /// The settings that need a restart.
    pub fixed: G,
}

/// A hub's settings that a reload may not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFixed {
    address: IpAddr,
    port: u16,
    socket: PathBuf,
    state_dir: PathBuf,
    state: crate::state::StateConfig,
    key_bits: u16,
    replay_window: u32,
    priority: u32,
    metrics: Option<SocketAddr>,
    metrics_per_node: bool,
    guard: GuardBackend,
    service: Option<crate::config::ServiceAddress>,
}

impl HubFixed {
    /// Those settings of `cfg`.
    pub fn of(cfg: &HubConfig) -> Self {
        HubFixed {
            address: cfg.address,
            port: cfg.port,
            socket: cfg.socket.clone(),
            state_dir: cfg.state_dir.clone(),
            state: cfg.state.clone(),
            key_bits: cfg.key_bits,
            replay_window: cfg.replay_window,
            priority: cfg.priority,
            metrics: cfg.metrics,
            metrics_per_node: cfg.metrics_per_node,
            guard: cfg.guard,
            service: cfg.service.clone(),
        }
    }

    /// The keys whose values differ in `new`.
    pub fn changed(&self, new: &Self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut c = |same: bool, key| {
            if !same {
                v.push(key);
            }
        };
        c(self.metrics == new.metrics, "hub.metrics");
        c(
            self.metrics_per_node == new.metrics_per_node,
            "hub.metrics_per_node",
        );
        c(self.address == new.address, "hub.address");
        c(self.port == new.port, "hub.port");
        c(self.socket == new.socket, "hub.socket");
        c(self.state_dir == new.state_dir, "hub.state_dir");
        c(self.state == new.state, "hub.state");
        c(self.key_bits == new.key_bits, "hub.key_bits");
        c(self.replay_window == new.replay_window, "hub.replay_window");
        c(self.priority == new.priority, "hub.priority");
        c(self.guard == new.guard, "hub.guard");
        c(self.service == new.service, "hub.service_address");
        v
    }
}

/// A node's settings that a reload may not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFixed {
    name: String,
    address: Option<IpAddr>,
    /// The hub as written: a name stays the same setting whatever it
    /// resolves to.
    hub: String,
    socket: PathBuf,
    state_dir: PathBuf,
    key_bits: u16,
    replay_window: u32,
    priority: u32,
    metrics: Option<SocketAddr>,
    guard: GuardBackend,
}

impl NodeFixed {
    /// Those settings of `cfg`.
    pub fn of(cfg: &NodeConfig) -> Self {
        NodeFixed {
            name: cfg.name.clone(),
            address: cfg.address,
            hub: cfg.hub_name.as_ref().map_or_else(
                || cfg.hub.to_string(),
                |n| format!("{n}:{}", cfg.hub.port()),
            ),
            socket: cfg.socket.clone(),
            state_dir: cfg.state_dir.clone(),
            key_bits: cfg.key_bits,
            replay_window: cfg.replay_window,
            priority: cfg.priority,
            metrics: cfg.metrics,
            guard: cfg.guard,
        }
    }

    /// The keys whose values differ in `new`.
    pub fn changed(&self, new: &Self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut c = |same: bool, key| {
            if !same {
                v.push(key);
            }
        };
        c(self.metrics == new.metrics, "node.metrics");
        c(self.name == new.name, "node.name");
        c(self.address == new.address, "node.address");
        c(self.hub == new.hub, "node.hub");
        c(self.socket == new.socket, "node.socket");
        c(self.state_dir == new.state_dir, "node.state_dir");
        c(self.key_bits == new.key_bits, "node.key_bits");
        c(
            self.replay_window == new.replay_window,
            "node.replay_window",
        );
        c(self.priority == new.priority, "node.priority");
        c(self.guard == new.guard, "node.guard");
        v
    }
}

/// The error for settings a reload may not change.
pub fn needs_restart(keys: &[&str]) -> String {
    format!(
        "{} changed: that takes a restart (which keeps every peer's keys); nothing was changed",
        keys.join(", ")
    )
}

/// A digest of one node's entry in the hub's configuration, to tell which
/// entries a reload changed. The init key enters by its fingerprint (a
/// hash), never itself.
pub fn entry_digest(n: &HubPeer) -> u64 {
    let mut h = DefaultHasher::new();
    n.address.hash(&mut h);
    format!("{:?}", n.mode).hash(&mut h);
    rotor_core::secret::fingerprint(&n.psk[..]).hash(&mut h);
    n.rotate_interval.hash(&mut h);
    h.finish()
}

/// Every peer's current record, keyed by its name, as a store would hand
/// them to a restore.
pub fn current_records<R: Role>(role: &mut R, now: Now) -> Loaded {
    let mut records = HashMap::with_capacity(role.peer_count());
    let mut buf = Zeroizing::new(Vec::with_capacity(super::persist::RECORD_ROOM));
    for i in 0..role.peer_count() {
        role.save(i, now, &mut buf);
        if !buf.is_empty() {
            records.insert(role.record_key(i).to_string(), Zeroizing::new(buf.to_vec()));
        }
    }
    Loaded::from_records(records)
}

/// What changed between the entries `old` and `new` (name, digest).
pub fn diff(old: &[(String, u64)], new: &[(String, u64)]) -> ReloadReply {
    let before: HashMap<&str, u64> = old.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let after: HashMap<&str, u64> = new.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let mut r = ReloadReply {
        ok: true,
        ..ReloadReply::default()
    };
    for (name, d) in new {
        match before.get(name.as_str()) {
            None => r.added.push(name.clone()),
            Some(o) if o != d => r.changed.push(name.clone()),
            Some(_) => r.unchanged += 1,
        }
    }
    r.removed = old
        .iter()
        .filter(|(n, _)| !after.contains_key(n.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_added_removed_and_changed_entries() {
        let e = |n: &str, d: u64| (n.to_string(), d);
        let r = diff(
            &[e("a", 1), e("b", 2), e("c", 3)],
            &[e("a", 1), e("c", 4), e("d", 5)],
        );
        assert_eq!(r.added, vec!["d"]);
        assert_eq!(r.removed, vec!["b"]);
        assert_eq!(r.changed, vec!["c"]);
        assert_eq!(r.unchanged, 1);
    }
}
