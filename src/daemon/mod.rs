//! The daemons. One event loop ([`event_loop::run`]) drives either role
//! ([`HubRole`], [`NodeRole`], both behind [`Role`]) against a kernel behind
//! the [`rotor_xfrm::Kernel`] seam: the real one through netlink
//! ([`run_hub`], [`run_node`]), or an in-memory model in tests ([`serve`]
//! with [`rotor_xfrm::ModelKernel`]).
//!
//! Layout: [`clock`] (time as the core wants it), [`role`] with [`hub`] and
//! [`node`], [`kernel`] (actions to batched kernel operations) with
//! [`retry`] (what the kernel refused), [`reconcile`] (kernel against
//! state: adoption at start, repair of drift), [`persist`] (the durable
//! state), [`control_server`] (the control socket, off the loop),
//! [`event_loop`], [`shutdown`] (signals), [`notify`] (the service manager),
//! [`metrics`] (Prometheus), [`log`] with [`summary`] and [`peer_warn`].
//!
//! Start-up runs every check that can fail before the first kernel change:
//! configuration, the state directory's lock and records, the ESP probe,
//! UDP bind, control socket, XFRM sockets. Then one reconcile pass adopts
//! what a previous run left (SAs, policies) as far as the restored state
//! knows it, repairs what is missing and removes owned objects the state
//! does not know; the machine resumes the same generations, so the peers
//! notice nothing. On a restart, when the kernel still holds the previous
//! run's policies ([`kernel_kept`]), the daemon serves first and that pass
//! runs in the loop once the guard is in: a slow start would cost every
//! waiting peer an init. A hub taking over a service address ([`lead`])
//! binds it with `IP_FREEBIND`, never defers that pass, and takes the
//! address only once every SA and policy is in, before its first answer
//! ([`Lifecycle::before_first_send`]).
//! SIGTERM/SIGINT stop the loop and leave the kernel as it is: traffic
//! keeps flowing on the current keys and nothing is ever sent in clear
//! (a leader then hands over, [`lead::Lead::hand_over`]). `rotor purge`
//! uninstalls.

pub mod clock;
pub mod control_server;
pub mod event_loop;
pub mod hub;
pub mod kernel;
pub mod lead;
pub mod log;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod peer_warn;
pub mod persist;
pub mod reconcile;
pub mod reload;
pub mod repairs;
pub mod retry;
pub mod role;
pub mod route_watch;
pub mod service_addr;
pub mod shutdown;
pub mod standby_guard;
pub mod summary;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use rotor_core::{Hub, KeyBits, NameTable, Node, PeerId, RestoreReport, Secret32};
use rotor_xfrm::{Capability, Kernel, Monitor, Ownership, Xfrm, probe_esp};
use tokio::io::unix::AsyncFd;
use tokio::net::{UdpSocket, UnixListener};
use tokio::sync::mpsc;
use tracing::{info, warn};
use zeroize::Zeroizing;

pub use clock::Clock;
pub use event_loop::Lifecycle;
pub use hub::HubRole;
pub use kernel::KernelExec;
pub use node::NodeRole;
pub use persist::Persist;
pub use role::Role;

use crate::config::{ConfigFile, HubConfig, NodeConfig, Role as ConfigRole};
use crate::control::SOCKET_DIR;
use crate::guard::{Guard, GuardBackend};
use crate::peer_kernel::PeerKernel;
use crate::sockets::{bind_control_udp, bind_control_udp_freebind, bind_control_unix};
use crate::store::{Loaded, Store, lock_reqids};

/// Period of the reconcile pass, the safety net under the kernel's
/// notifications (which report every change, and their own loss, at once):
/// a pass dumps every rotor SA and policy, about 1 s of CPU at 10,000 peers
/// in UML, so it runs rarely.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(300);

/// The first reqid of the nodes' ranges (the hub's is
/// [`rotor_xfrm::DEFAULT_REQID_BASE`], 2^18 long, below it).
pub const NODE_REQID_BASE: u32 = 0x5258_0000;

/// A node's one reqid, derived from its name so that several nodes (and a
/// hub) on one host own disjoint objects: FNV-1a of the name, folded into
/// 2^16 slots above [`NODE_REQID_BASE`].
pub fn node_ownership(name: &str) -> anyhow::Result<Ownership> {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let slot = (h ^ (h >> 16)) & 0xffff;
    Ownership::new(NODE_REQID_BASE + slot, 1).context("the node's reqid")
}

/// The hub's SA lifetimes for a node rotated every `rotate`: an SA is in
/// use for at most two rotations and the grace period, so the hard limit
/// (three rotations + grace + 30 s) only fires for a dead daemon's keys;
/// the soft one, a quarter earlier, warns and rotates.
/// `configured` (`sa_lifetime`) replaces the hard limit.
pub fn hub_lifetime(rotate: Duration, grace: Duration, configured: Option<Duration>) -> (u64, u64) {
    let hard = configured.map_or_else(
        || rotate.as_secs().saturating_mul(3) + grace.as_secs() + 30,
        |d| d.as_secs(),
    );
    (hard - hard / 4, hard)
}

/// A node's SA lifetimes: it cannot know its hub's rotation period, so the
/// hard limit is `configured` or a day; the soft one, a quarter earlier,
/// asks the hub for a rotation.
pub fn node_lifetime(configured: Option<Duration>) -> (u64, u64) {
    let hard = configured.map_or(24 * 3600, |d| d.as_secs());
    (hard - hard / 4, hard)
}

fn key_bits(b: u16) -> KeyBits {
    if b == 128 {
        KeyBits::Aes128
    } else {
        KeyBits::Aes256
    }
}

/// Serves `role` on `udp` and the control `listener` until `shutdown`
/// completes: adopts and repairs the kernel state ([`reconcile::run`]),
/// runs the event loop, and leaves the kernel as it is on the way out. On a
/// failed start the policies it created are removed again.
///
/// With [`Lifecycle::before_first_send`] (a hub taking over its service
/// address) the start-up pass is never deferred: every SA and policy is in
/// before the address moves, whatever the kernel kept from an earlier
/// lead.
pub async fn serve<R: Role, K: Kernel>(
    mut role: R,
    mut kernel: KernelExec<K>,
    udp: UdpSocket,
    listener: UnixListener,
    mut life: Lifecycle,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let clock = Clock::default();
    // Records before the first kernel change: a peer's reqid (and a
    // refused record's replacement) is durable before any object carries it.
    if let Some(p) = life.persist.as_mut()
        && let Err(e) = p.flush(&mut role, clock.now())
    {
        undo_guard(&mut life);
        return Err(e).context("writing the state");
    }
    // Before any SA is re-installed: the marker is what makes a held
    // repair safe for a restart on this kernel to adopt.
    if let Some(r) = life.repairs.as_mut()
        && let Err(e) = r.mark()
    {
        undo_guard(&mut life);
        return Err(e);
    }
    if let Err(e) = start(&mut role, &mut kernel, &mut life, &clock) {
        // Nothing was re-installed: the start's actions run in the loop.
        if let Some(r) = life.repairs.as_mut() {
            r.abandon();
        }
        return Err(e);
    }
    info!("serving");
    let (tx, mut calls) = mpsc::channel(control_server::QUEUE);
    let scrapes = life
        .metrics
        .take()
        .map(|(l, per_node)| metrics::spawn(l, tx.clone(), R::NAME, per_node));
    let server = control_server::spawn(listener, tx, R::NAME);
    let r = event_loop::run(
        &mut role,
        &mut kernel,
        &udp,
        &mut calls,
        &clock,
        &mut life,
        shutdown,
    )
    .await;
    server.abort();
    if let Some(s) = scrapes {
        s.abort();
    }
    Ok(r?)
}

/// The start between the first records and the loop: the guard, the
/// start-up pass (held repairs taken for settling) or its deferral, and
/// what follows it.
fn start<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &mut KernelExec<K>,
    life: &mut Lifecycle,
    clock: &Clock,
) -> anyhow::Result<()> {
    life.first_pass_deferred = life.before_first_send.is_none() && kernel_kept(role, kernel);
    if life.first_pass_deferred {
        start_guard(life, &kernel.guard_selectors())?;
        info!(
            "the kernel holds the previous run's policies: serving now, adopting them once the guard is in"
        );
    } else {
        // Last before the first policy: every check that can fail is behind.
        install_guard(life, &kernel.guard_selectors())?;
        role.hold_repairs(life.repairs.is_some());
        let r = first_pass(role, kernel, life, clock);
        role.hold_repairs(false);
        r?;
    }
    if let Some(r) = life.repairs.as_mut() {
        r.take_held(role);
    }
    finish_start(role, kernel, life)
}

/// The start-up's reconcile pass, before the daemon serves: adopts what a
/// previous run left, creates what is missing. Refused operations fail
/// the start, leaving the kernel as it was found.
fn first_pass<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &mut KernelExec<K>,
    life: &mut Lifecycle,
    clock: &Clock,
) -> anyhow::Result<()> {
    let report = match reconcile::run(role, kernel, clock.now(), &HashSet::new()) {
        Ok(r) => r,
        Err(e) => {
            undo_guard(life);
            bail!("reading rotor's SAs and policies from the kernel: {e}");
        }
    };
    if report.refused > 0 {
        reconcile::undo(kernel, &report.created);
        undo_guard(life);
        bail!(
            "the kernel refused {} of the operations that set up the peers (see the log above); nothing was left behind",
            report.refused
        );
    }
    report.log_adopted(false);
    Ok(())
}

/// What the start does once the kernel's objects are settled (or left to
/// the loop's first pass): the reqid index for the kernel's expiry
/// notifications, and forgetting the records of peers no longer
/// configured.
fn finish_start<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &mut KernelExec<K>,
    life: &mut Lifecycle,
) -> anyhow::Result<()> {
    // What a previous run's guard held beyond today's peers (nodes no
    // longer configured) is trimmed by the first periodic check, not here:
    // every process the guard runs holds the start (hundreds of ms each in
    // UML), and until then the extra pairs only drop traffic no policy
    // protects any more.
    life.reqids = (0..role.peer_count())
        .filter_map(|i| kernel.peer(i).map(|p| (p.reqid, i)))
        .collect();
    // Only now, with the start past every check, are the records of peers
    // no longer configured dropped.
    let forget = std::mem::take(&mut life.forget);
    if let Some(p) = life.persist.as_mut()
        && !forget.is_empty()
    {
        info!(
            records = forget.len(),
            "forgetting the state of nodes no longer configured"
        );
        p.remove(forget.iter().map(String::as_str))
            .context("writing the state")?;
    }
    // Give the heap the configuration parser and the start-up left behind
    // back to the system (measured: ~1 KB per node at 10,000 nodes).
    rotor_sys::malloc_trim();
    Ok(())
}

/// Whether the kernel still holds what the previous run of this restored
/// state installed: the inbound policy of the first peer the state knows
/// the kernel holds objects for, looked up with one request. Then the
/// daemon may serve before it has compared the rest (a restart after
/// SIGTERM or kill -9 leaves everything in place); after a reboot or a
/// flush the policies come first.
fn kernel_kept<R: Role, K: Kernel>(role: &R, kernel: &mut KernelExec<K>) -> bool {
    let Some(id) = (0..role.peer_count())
        .filter(|&i| role.kernel_view(i).is_some_and(|v| !v.sas.is_empty()))
        .filter_map(|i| kernel.peer(i))
        .find(|p| p.known())
        .and_then(|p| {
            p.inbound_policies().into_iter().find_map(|op| match op {
                rotor_xfrm::Op::UpdatePolicy(spec) => Some(spec.id),
                _ => None,
            })
        })
    else {
        return false;
    };
    match kernel.kernel_mut().has_policy(&id) {
        Ok(found) => found,
        Err(e) => {
            warn!("looking for the previous run's policies: {e}");
            false
        }
    }
}

/// Starts installing the guard on a thread of its own, for a restart that
/// serves before its first pass (the loop takes it back; the pass waits
/// for it). Warns when it is configured off.
fn start_guard(
    life: &mut Lifecycle,
    selectors: &[(rotor_xfrm::IpNet, rotor_xfrm::IpNet)],
) -> anyhow::Result<()> {
    let Some(mut g) = life.guard.take() else {
        return install_guard(life, selectors);
    };
    let selectors = selectors.to_vec();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("rotor-guard".into())
        .spawn(move || {
            let r = g.install(&selectors);
            let _ = tx.send((g, r));
        })
        .context("starting the guard's installer")?;
    life.guard_pending = Some(rx);
    Ok(())
}

/// Removes the guard again if this start created it (a start that failed
/// before any peer was served).
fn undo_guard(life: &mut Lifecycle) {
    if let Some(g) = life.guard.as_mut() {
        g.undo_fresh();
    }
}

/// Puts in the clear-text guard configured in `life` for `peers` before
/// any policy; warns when it is configured off. Refuses to go on when it
/// cannot be installed: nothing of it is left behind then.
fn install_guard(
    life: &mut Lifecycle,
    selectors: &[(rotor_xfrm::IpNet, rotor_xfrm::IpNet)],
) -> anyhow::Result<()> {
    let Some(g) = life.guard.as_mut() else {
        warn!(
            "guard = \"off\": protected flows can leave in clear between a deletion of rotor's policies (ip xfrm policy flush) and their repair"
        );
        return Ok(());
    };
    let t = std::time::Instant::now();
    let pairs = g
        .install(selectors)
        .context("installing the clear-text guard (`guard`)")?;
    info!(
        pairs,
        ms = millis(t.elapsed()),
        "clear-text guard in place: {}",
        g.describe()
    );
    Ok(())
}

/// The hub's role and kernel layout from its configuration, resuming every
/// node whose record `loaded` holds (a missing or refused record starts
/// that node at init).
pub fn hub_parts(
    mut cfg: HubConfig,
    own: Ownership,
    loaded: Option<&mut Loaded>,
) -> anyhow::Result<(HubRole, Vec<PeerKernel>, RestoreReport)> {
    // The nodes' entries are moved out of the parsed configuration (their
    // strings are not copied), and what the daemon keeps per node goes into
    // a few large allocations: small long-lived blocks scattered among the
    // parser's garbage would keep its pages from returning to the system.
    let nodes = std::mem::take(&mut cfg.nodes);
    let names = NameTable::from_names(nodes.iter().map(|n| n.name.as_str()));
    // A node keeps its reqid across restarts and config edits (its SAs in
    // the kernel carry it): the stored record names it; new nodes get the
    // first free ones.
    let records: Vec<Option<Zeroizing<Vec<u8>>>> = match loaded {
        Some(l) => nodes.iter().map(|n| l.take(&n.name)).collect(),
        None => Vec::new(),
    };
    let mut reqids: Vec<Option<u32>> = Vec::with_capacity(nodes.len());
    let mut used = HashSet::new();
    for r in &records {
        let q = r
            .as_deref()
            .and_then(|r| split_reqid(r))
            .map(|(q, _)| q)
            .filter(|q| own.owns(*q) && used.insert(*q));
        reqids.push(q);
    }
    reqids.resize(nodes.len(), None);
    let fresh: Vec<usize> = (0..reqids.len()).filter(|&i| reqids[i].is_none()).collect();
    let mut next_slot: u32 = 0;
    for q in reqids.iter_mut().filter(|q| q.is_none()) {
        loop {
            let r = own.reqid_for(next_slot).with_context(|| {
                format!("too many nodes for rotor's reqid range ({})", own.len())
            })?;
            next_slot += 1;
            if used.insert(r) {
                *q = Some(r);
                break;
            }
        }
    }
    let mut peers = Vec::with_capacity(nodes.len());
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(nodes.len());
    let mut specs = Vec::with_capacity(nodes.len());
    let digests = nodes.iter().map(reload::entry_digest).collect();
    // Where each node is: the path its record holds (learned, followed
    // when it moved), unless the configuration pins another address.
    let mut paths: Vec<Option<(SocketAddr, bool, bool)>> = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let stored = records
            .get(i)
            .and_then(|r| r.as_deref())
            .and_then(|r| split_reqid(r))
            .and_then(|(_, rest)| split_path(rest).0);
        paths.push(match (n.address, stored) {
            (Some(a), Some((p, nat))) if p.ip() == a => Some((p, nat, true)),
            (Some(a), _) => Some((SocketAddr::new(a, cfg.port), false, true)),
            (None, Some((p, nat))) => Some((p, nat, false)),
            (None, None) => None,
        });
    }
    let unknown = SocketAddr::new(unspecified_like(cfg.address), 0);
    for ((n, reqid), path) in nodes.into_iter().zip(reqids).zip(&paths) {
        let reqid = reqid.context("reqid assignment")?;
        let (at, nat) = path.map_or((unknown, false), |(p, nat, _)| (p, nat));
        peers.push(PeerKernel {
            reqid,
            local: cfg.address,
            remote: at.ip(),
            local_port: cfg.port,
            remote_port: at.port(),
            nat,
            mode: n.mode,
            priority: cfg.priority,
            replay_window: cfg.replay_window,
            lifetime: Some(hub_lifetime(n.rotate_interval, cfg.grace, cfg.sa_lifetime)),
        });
        addrs.push(at);
        specs.push(rotor_core::NodeSpec {
            name: n.name,
            psk: Secret32::new(*n.psk),
            rotate_interval_ms: millis(n.rotate_interval),
        });
    }
    let core_cfg = rotor_core::HubConfig {
        nodes: specs,
        grace_ms: millis(cfg.grace),
        key_bits: key_bits(cfg.key_bits),
        init_skew_ms: millis(cfg.init_skew),
        ratchet_epoch_ms: millis(cfg.ratchet_epoch),
        ratchet_every: cfg.ratchet_every,
    };
    let now = Clock::default().now();
    let (hub, report) = if records.is_empty() {
        Hub::new(core_cfg, now, seed()?).map(|h| (h, RestoreReport::default()))
    } else {
        // Indexed like the configuration, hence like the hub's nodes.
        Hub::restore(core_cfg, now, seed()?, |id, _| {
            let r = records.get(id.0 as usize)?.as_deref()?;
            split_reqid(r).map(|(_, rest)| split_path(rest).1)
        })
    }
    .context("hub configuration")?;
    let (mut hub, report) = (hub, report);
    hub.set_move_in_place(move_in_place());
    for (i, p) in paths.iter().enumerate() {
        if let Some((to, nat, pinned)) = *p {
            hub.set_path(PeerId(i as u32), to, nat, pinned);
        }
    }
    let reqids = peers.iter().map(|p| p.reqid).collect();
    let mut role = HubRole::new(hub, names, addrs, reqids, digests);
    role.mark_fresh(fresh);
    Ok((role, peers, report))
}

/// The node's role and kernel layout from its configuration, resuming from
/// its record in `loaded` if there is a valid one.
pub fn node_parts(
    cfg: &NodeConfig,
    own: Ownership,
    loaded: Option<&mut Loaded>,
) -> anyhow::Result<(NodeRole, Vec<PeerKernel>, RestoreReport)> {
    // Where the node sends from: its configured address, else what its
    // route to the hub gives (the route watch follows later moves).
    let local = match cfg.address {
        Some(a) => a,
        None => route_source(cfg.hub).with_context(|| {
            format!(
                "no route to the hub {}: set node.address, or start once the network is up",
                cfg.hub
            )
        })?,
    };
    let peer = PeerKernel {
        reqid: own.base(),
        local,
        remote: cfg.hub.ip(),
        local_port: cfg.hub.port(),
        remote_port: cfg.hub.port(),
        nat: false,
        mode: cfg.mode.clone(),
        priority: cfg.priority,
        replay_window: cfg.replay_window,
        lifetime: Some(node_lifetime(cfg.sa_lifetime)),
    };
    let core_cfg = rotor_core::NodeConfig {
        name: cfg.name.clone(),
        psk: Secret32::new(*cfg.psk),
        hello_interval_ms: millis(cfg.hello_interval),
        retries: cfg.retries,
        grace_ms: millis(cfg.grace),
        key_bits: key_bits(cfg.key_bits),
    };
    let now = Clock::default().now();
    let record = loaded.and_then(|l| l.take(&cfg.name));
    let (stored, record) = match record {
        Some(r) => {
            let (path, core) = split_path(&r);
            (path, Some(Zeroizing::new(core.to_vec())))
        }
        None => (None, None),
    };
    let (mut node, report) =
        Node::restore(core_cfg, now, seed()?, record).context("node configuration")?;
    // The NAT verdict is the hub's, as last heard.
    let nat = stored.is_some_and(|(_, nat)| nat);
    let mut peer = peer;
    peer.nat = nat;
    node.set_path(SocketAddr::new(local, cfg.hub.port()), nat);
    node.set_move_in_place(move_in_place());
    let mut role = NodeRole::new(node, cfg.name.clone(), cfg.hub, node_digest(cfg));
    if let Some(host) = &cfg.hub_name {
        role = role.with_hub_name(host.clone(), cfg.address, millis(cfg.hello_interval));
    }
    Ok((role, vec![peer], report))
}

/// Whether path changes move SAs in place (`XFRM_MSG_MIGRATE`), the
/// default, or re-add and re-key them (`ROTOR_MOVE=readd`: the way to
/// compare the two, or to avoid a kernel's migration if it misbehaves;
/// a kernel that refuses one falls back to re-adding by itself).
fn move_in_place() -> bool {
    std::env::var_os("ROTOR_MOVE").is_none_or(|v| v != "readd")
}

/// A digest of a node's configuration (its init key by fingerprint).
fn node_digest(cfg: &NodeConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    rotor_core::secret::fingerprint(&cfg.psk[..]).hash(&mut h);
    format!("{:?}", cfg.mode).hash(&mut h);
    (cfg.hello_interval, cfg.retries, cfg.grace, cfg.sa_lifetime).hash(&mut h);
    h.finish()
}

/// A hub's stored record: the node's reqid (4 bytes, little-endian), then
/// (once the node's path is known) its path block ([`put_path`]), then the
/// core's record. `None` if too short.
pub fn split_reqid(record: &[u8]) -> Option<(u32, &[u8])> {
    let (q, rest) = record.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*q), rest))
}

/// Tag of the path block: the core's records start with another magic.
const PATH_TAG: &[u8; 4] = b"path";
/// Length of the path block: tag, endpoint, NAT flag.
const PATH_LEN: usize = 4 + rotor_core::wire::ENDPOINT_LEN + 1;

/// Appends the path block of a node reached at `to` (through a NAT if
/// `nat`): where a restarted hub finds the node's SAs and sends to it.
pub fn put_path(out: &mut Vec<u8>, to: SocketAddr, nat: bool) {
    out.extend_from_slice(PATH_TAG);
    out.extend_from_slice(&rotor_core::wire::encode_endpoint(&to));
    out.push(u8::from(nat));
}

/// The path block at the start of `rest`, if there is one, and what
/// follows it (the core's record).
pub fn split_path(rest: &[u8]) -> (Option<(SocketAddr, bool)>, &[u8]) {
    let Some(block) = rest.get(..PATH_LEN).filter(|b| b.starts_with(PATH_TAG)) else {
        return (None, rest);
    };
    match rotor_core::wire::decode_endpoint(&block[4..PATH_LEN - 1]) {
        Some(to) => (Some((to, block[PATH_LEN - 1] != 0)), &rest[PATH_LEN..]),
        None => (None, rest),
    }
}

/// The source address this host's routes give datagrams to `hub` (a
/// connected UDP socket's local address; nothing is sent). The probe is
/// exempt from IPsec: a blocking policy towards the hub would refuse the
/// route lookup.
pub fn route_source(hub: SocketAddr) -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(unspecified_like(hub.ip()), 0)).ok()?;
    let family = if hub.is_ipv4() {
        rotor_xfrm::Family::V4
    } else {
        rotor_xfrm::Family::V6
    };
    // Without the exemption the probe still works unless a policy blocks.
    let _ = rotor_xfrm::bypass_ipsec(&s, family);
    s.connect(hub).ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

/// The unspecified address of `a`'s family: where an unknown node is.
fn unspecified_like(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// A seed for a machine's random number generator, from the OS.
fn seed() -> anyhow::Result<[u8; 32]> {
    let mut s = [0u8; 32];
    rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut s)
        .context("reading the OS random number generator")?;
    Ok(s)
}

/// A configured duration in milliseconds (the config bounds it far below
/// overflow; saturating all the same).
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Refuses to go on where this kernel cannot hold rotor's SAs: without ESP
/// or the AEAD every key would be refused and every peer cut off.
fn require_esp() -> anyhow::Result<()> {
    // For tests of kernel refusals only (netns-tests/70): a daemon started
    // on a kernel whose ESP module was taken away on purpose.
    if std::env::var_os("ROTOR_TEST_SKIP_ESP_PROBE").is_some() {
        warn!(
            "ROTOR_TEST_SKIP_ESP_PROBE is set: starting without checking that this kernel has ESP"
        );
        return Ok(());
    }
    match probe_esp() {
        Capability::Ok => Ok(()),
        Capability::NotPermitted(m) => {
            bail!("{m} (rotor needs root or CAP_NET_ADMIN)")
        }
        Capability::Refused(e) => bail!(
            "this kernel cannot hold rotor's SAs: {e} (it needs ESP with rfc4106(gcm(aes)) and ESN; `rotor check` says more)"
        ),
        Capability::Failed(m) => bail!("probing the kernel for ESP: {m}"),
    }
}

/// Logs what the restore found.
fn log_restore(report: &RestoreReport, torn_tail: bool) {
    if torn_tail {
        warn!(
            "the state log ended in a partial write (a crash during a write): that write was dropped"
        );
    }
    for (name, why) in &report.refused {
        warn!(peer = %name, "stored state not used ({why}): the peer re-initialises");
    }
    info!(
        restored = report.restored,
        fresh = report.fresh,
        "state loaded"
    );
}

/// Binds both sockets before anything touches the kernel, so a start that
/// cannot bind (another instance running, address not configured) changes
/// nothing. `freebind`: the UDP address may not be held yet (a hub taking
/// over adds its service address later).
fn bind(
    udp_at: SocketAddr,
    socket: &Path,
    freebind: bool,
) -> anyhow::Result<(UdpSocket, UnixListener)> {
    let udp = if freebind {
        bind_control_udp_freebind(udp_at)?
    } else {
        bind_control_udp(udp_at)?
    };
    let listener = bind_control_unix(socket)?;
    Ok((udp, listener))
}

/// The metrics listener, if configured (with whether it serves per-node
/// series): bound with the other sockets, before any kernel change.
fn bind_metrics(
    at: Option<(SocketAddr, bool)>,
) -> anyhow::Result<Option<(tokio::net::TcpListener, bool)>> {
    let Some((at, per_node)) = at else {
        return Ok(None);
    };
    let l = std::net::TcpListener::bind(at)
        .with_context(|| format!("binding the metrics listener {at} (`metrics`)"))?;
    l.set_nonblocking(true)?;
    Ok(Some((tokio::net::TcpListener::from_std(l)?, per_node)))
}

/// The XFRM sockets: one for changes, one for the kernel's notifications.
fn open_xfrm(own: Ownership) -> anyhow::Result<(Xfrm, Lifecycle, Monitor)> {
    let xfrm = Xfrm::open(own).context("opening the XFRM netlink socket")?;
    let mut monitor =
        Monitor::open(own).context("subscribing to the kernel's XFRM notifications")?;
    // Our own changes are no drift.
    monitor.ignore_sender(xfrm.portid());
    let life = Lifecycle {
        persist: None,
        monitor: None,
        reconcile_every_ms: millis(RECONCILE_EVERY),
        reqids: HashMap::new(),
        hangup: None,
        linger: HashMap::new(),
        reloads: Vec::new(),
        forget: Vec::new(),
        metrics: None,
        notify: notify::Notifier::default(),
        routes: None,
        guard: None,
        guard_pending: None,
        first_pass_deferred: false,
        before_first_send: None,
        repairs: None,
    };
    Ok((xfrm, life, monitor))
}

/// Subscribes to address and route changes and registers the socket with
/// the runtime (as [`watch`]: `RouteWatch` owns its socket).
#[allow(deprecated)]
fn watch_routes() -> anyhow::Result<AsyncFd<route_watch::RouteWatch>> {
    route_watch::RouteWatch::open()
        .and_then(AsyncFd::new)
        .context("subscribing to the kernel's address and route notifications")
}

/// Registers the notification socket with the runtime.
// `AsyncFd::new` is deprecated because a `T` that does not own its
// descriptor could let it be closed while registered; `Monitor` owns its
// socket and moves into the `AsyncFd`, so that cannot happen here (and the
// `unsafe` replacement, `register`, is not allowed outside rotor-sys).
#[allow(deprecated)]
fn watch(monitor: Monitor) -> anyhow::Result<AsyncFd<Monitor>> {
    AsyncFd::new(monitor).context("watching the XFRM notification socket")
}

/// Serves a started role on its sockets (UDP, control) until
/// SIGTERM/SIGINT, then removes its control socket; its SAs and policies
/// stay in the kernel.
async fn run_role<R: Role>(
    role: R,
    xfrm: Xfrm,
    peers: Vec<PeerKernel>,
    (udp, listener): (UdpSocket, UnixListener),
    mut life: Lifecycle,
    socket: &Path,
) -> anyhow::Result<()> {
    let stop = shutdown::on_signal()?;
    life.notify = notify::Notifier::from_env()?;
    let r = serve(
        role,
        KernelExec::new(xfrm, peers),
        udp,
        listener,
        life,
        stop,
    )
    .await;
    let _ = std::fs::remove_file(socket);
    info!(
        role = R::NAME,
        "stopped; its SAs, policies and clear-text guard stay in the kernel"
    );
    r
}

/// Runs the hub of `cfg`, read from `path`, until SIGTERM/SIGINT; SIGHUP
/// reloads `path`.
pub async fn run_hub(cfg: HubConfig, path: &Path) -> anyhow::Result<()> {
    // First, so a SIGHUP during a long start-up is not fatal.
    let hangup = shutdown::hangup()?;
    info!(nodes = cfg.nodes.len(), "configuration read");
    rotor_sys::keep_out_of_core_dumps().context("keeping key material out of core dumps")?;
    let own = Ownership::default();
    let (address, port, socket) = (cfg.address, cfg.port, cfg.socket.clone());
    let service = cfg.service.clone();
    let metrics = cfg.metrics.map(|at| (at, cfg.metrics_per_node));
    let mut guard = Guard::new(cfg.guard, own, port);
    let fixed = reload::HubFixed::of(&cfg);
    let (store, mut loaded, lead) = match &cfg.state {
        crate::state::StateConfig::Etcd { target, key, .. } => {
            // A standby refuses a wrong cluster key now, not at takeover,
            // and keeps the records current while it waits.
            let mut s = crate::state::etcd::EtcdStore::open_standby(target, key)?;
            let standby = guard
                .take()
                .map(|g| {
                    let sources = standby_guard::sources(&cfg);
                    standby_guard::StandbyGuard::start(g, sources, cfg.nodes.len(), RECONCILE_EVERY)
                })
                .transpose()?;
            let lead = lead::Lead::campaign(
                target,
                cfg.lease_ttl,
                cfg.service.clone(),
                cfg.socket.with_extension("lease"),
            )?;
            guard = standby.map(standby_guard::StandbyGuard::take).transpose()?;
            // Completed after winning: every record the previous leader
            // wrote is in.
            let t = std::time::Instant::now();
            let (loaded, w) = s.take_warm()?;
            s.set_fence(lead.fence());
            info!(
                records = loaded.len(),
                changed = w.changed,
                deleted = w.deleted,
                watched = w.events,
                since_revision = w.since,
                revision = w.revision,
                ms = millis(t.elapsed()),
                "warm copy completed"
            );
            (crate::state::Backend::Etcd(s), loaded, Some(lead))
        }
        crate::state::StateConfig::Dir(_) => {
            let (s, l) = crate::state::open(&cfg.state, "hub")?;
            (s, l, None)
        }
    };
    info!(records = loaded.len(), state = %state_name(&cfg.state), "state read");
    let _reqids = lock_reqids(Path::new(SOCKET_DIR), own.base())?;
    let (mut role, peers, report) = hub_parts(cfg, own, Some(&mut loaded))?;
    role.set_source(reload::Source {
        path: path.to_path_buf(),
        own,
        fixed,
    });
    log_restore(&report, loaded.torn_tail);
    // Records of nodes no longer configured: dropped once the start is
    // past every check (serve).
    let forget: Vec<String> = loaded.keys().map(str::to_string).collect();
    drop(loaded);
    require_esp()?;
    let nodes = peers.len();
    // A hub taking over adds its service address only once its SAs are in.
    let freebind = lead.is_some() && service.is_some();
    let sockets = bind(SocketAddr::new(address, port), &socket, freebind)?;
    let metrics = bind_metrics(metrics)?;
    let (xfrm, mut life, monitor) = open_xfrm(own)?;
    life.monitor = Some(watch(monitor)?);
    life.persist = Some(Persist::new(store));
    life.metrics = metrics;
    life.forget = forget;
    life.hangup = Some(hangup);
    life.guard = guard;
    info!(%address, port, nodes, socket = %socket.display(), "hub starting");
    // With a service address to move, every SA and policy is in before
    // it moves (make-before-break); without one, a restart may serve
    // first, as any restart.
    life.before_first_send = lead
        .as_ref()
        .filter(|_| service.is_some())
        .map(lead::Lead::before_first_send);
    // A leader serves before it records its repairs (a standby's kernel
    // holds none of the SAs).
    life.repairs = lead
        .as_ref()
        .map(|_| repairs::Repairs::new(socket.with_extension("repairing")));
    let r = run_role(role, xfrm, peers, sockets, life, &socket).await;
    match (lead, &r) {
        // The loop has stopped: nothing more leaves this hub.
        (Some(l), Ok(())) => l.hand_over(),
        (Some(l), Err(_)) => drop(l),
        (None, _) => {}
    }
    r
}

/// Where a hub's records live, for its log lines.
fn state_name(s: &crate::state::StateConfig) -> String {
    match s {
        crate::state::StateConfig::Dir(d) => d.display().to_string(),
        crate::state::StateConfig::Etcd { target, .. } => target.to_string(),
    }
}

/// Runs the node of `cfg`, read from `path`, until SIGTERM/SIGINT; SIGHUP
/// reloads `path`.
pub async fn run_node(cfg: NodeConfig, path: &Path) -> anyhow::Result<()> {
    let hangup = shutdown::hangup()?;
    rotor_sys::keep_out_of_core_dumps().context("keeping key material out of core dumps")?;
    let own = node_ownership(&cfg.name)?;
    let (store, mut loaded) = Store::open(&cfg.state_dir, &format!("node-{}", cfg.name))?;
    let _reqids = lock_reqids(Path::new(SOCKET_DIR), own.base())?;
    let (mut role, peers, report) = node_parts(&cfg, own, Some(&mut loaded))?;
    role.set_source(reload::Source {
        path: path.to_path_buf(),
        own,
        fixed: reload::NodeFixed::of(&cfg),
    });
    log_restore(&report, loaded.torn_tail);
    drop(loaded);
    require_esp()?;
    // Bound to the configured address, or to none in particular: a node
    // that follows its route keeps its socket when it moves.
    let sockets = bind(
        SocketAddr::new(
            cfg.address.unwrap_or(unspecified_like(cfg.hub.ip())),
            cfg.hub.port(),
        ),
        &cfg.socket,
        false,
    )?;
    let metrics = bind_metrics(cfg.metrics.map(|at| (at, false)))?;
    let (xfrm, mut life, monitor) = open_xfrm(own)?;
    life.monitor = Some(watch(monitor)?);
    life.persist = Some(Persist::new(store));
    life.metrics = metrics;
    life.hangup = Some(hangup);
    if cfg.address.is_none() {
        life.routes = Some(watch_routes()?);
    }
    life.guard = Guard::new(cfg.guard, own, cfg.hub.port());
    info!(name = %cfg.name, address = ?cfg.address, hub = %cfg.hub, socket = %cfg.socket.display(), "node starting");
    run_role(role, xfrm, peers, sockets, life, &cfg.socket).await
}

/// What `rotor purge` removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    /// SAs removed from the kernel.
    pub sas: usize,
    /// Policies removed from the kernel.
    pub policies: usize,
    /// The state directory whose records were deleted.
    pub state_dir: std::path::PathBuf,
    /// An etcd state (`etcd://...`) whose records were kept: other hubs of
    /// the cluster may share them (`None`: file store, deleted).
    pub etcd_kept: Option<String>,
    /// Whether a clear-text guard was there and removed.
    pub guard: bool,
}

/// `rotor purge`: removes every SA and policy the daemon of `config`
/// installed and its durable state. Holds the daemon's lock while it works,
/// so it refuses while that daemon runs.
pub fn purge(config: &Path) -> anyhow::Result<Purged> {
    let cfg = ConfigFile::read(config)?;
    let mut etcd_kept = None;
    let (state_dir, instance, own, peers, backend) = match cfg.role()? {
        ConfigRole::Hub => {
            let c = cfg.into_hub()?;
            let own = Ownership::default();
            let dir = c.state_dir.clone();
            if let crate::state::StateConfig::Etcd { target, .. } = &c.state {
                etcd_kept = Some(target.to_string());
            }
            let backend = c.guard;
            let (_, peers, _) = hub_parts(c, own, None)?;
            (dir, "hub".to_string(), own, peers, backend)
        }
        ConfigRole::Node => {
            let c = cfg.into_node()?;
            let own = node_ownership(&c.name)?;
            let (_, peers, _) = node_parts(&c, own, None)?;
            let dir = c.state_dir.clone();
            (dir, format!("node-{}", c.name), own, peers, c.guard)
        }
    };
    // The file store's lock refuses while the daemon runs; with an etcd
    // state the reqid lock (which the running daemon holds too) does.
    let store = match etcd_kept {
        None => {
            let (store, loaded) = Store::open(&state_dir, &instance)?;
            drop(loaded);
            Some(store)
        }
        Some(_) => None,
    };
    let _reqids = lock_reqids(Path::new(SOCKET_DIR), own.base())?;
    let xfrm = Xfrm::open(own).context("opening the XFRM netlink socket")?;
    let mut kx = KernelExec::new(xfrm, peers);
    let removed = kx
        .remove_all()
        .context("removing rotor's SAs and policies")?;
    // After the policies: until the guard goes too, the flows it covered
    // are dropped, not sent in clear.
    let guard = purge_guard(backend, own)?;
    if let Some(store) = store {
        store.purge()?;
    }
    Ok(Purged {
        sas: removed.sas,
        policies: removed.policies,
        state_dir,
        etcd_kept,
        guard,
    })
}

/// Removes the instance's clear-text guard. With `guard = "off"` one a
/// previous configuration installed is looked for with the default tools,
/// and their absence is no error.
fn purge_guard(backend: GuardBackend, own: Ownership) -> anyhow::Result<bool> {
    let off = backend == GuardBackend::Off;
    let tools = if off { GuardBackend::Iptables } else { backend };
    let Some(mut g) = Guard::new(tools, own, 0) else {
        return Ok(false);
    };
    match g.remove() {
        Ok(found) => {
            if found {
                info!("removed the clear-text guard {}", g.chain());
            }
            Ok(found)
        }
        Err(e) if off => {
            warn!("looking for a clear-text guard to remove: {e}");
            Ok(false)
        }
        Err(e) => Err(e).context("removing the clear-text guard"),
    }
}
