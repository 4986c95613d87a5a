//! The daemons: one event loop that feeds the sans-IO core (`rotor-core`)
//! with datagrams, timeouts and operator commands, and executes the actions it
//! returns: kernel changes in one batched netlink write per step (in the
//! core's order, so inbound SAs exist before anything is sent on them), then
//! the datagrams.
//!
//! Start-up removes rotor-owned SAs and policies a crashed run left behind,
//! then installs each peer's inbound policies and a blocking outbound policy
//! (fail closed until keys exist). SIGTERM/SIGINT stop the loop and remove
//! everything rotor owns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::RngCore;
use rand::rngs::OsRng;
use rotor_core::{
    Action, Event, Hub, KeyBits, NameTable, Node, Now, PeerId, SaDir, Secret32, Time,
};
use rotor_xfrm::{AeadKey, Op, OpResult, Ownership, Xfrm};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UdpSocket, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use crate::config::{HubConfig, NodeConfig};
use crate::control::{self, Request, Status};
use crate::kernel_retry::RetryQueue;
use crate::peer_kernel::PeerKernel;
use crate::sockets::{bind_control_udp, bind_control_unix};
use crate::udp_batch::{self, RecvBatch};

/// Monotonic and wall clocks, as the core wants them.
struct Clock {
    origin: Instant,
}

impl Clock {
    fn now(&self) -> Time {
        Time(self.origin.elapsed().as_millis() as u64)
    }

    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// Both clocks, read together.
    fn read(&self) -> Now {
        Now::new(self.now(), self.unix_ms())
    }

    fn instant(&self, t: Time) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.origin + std::time::Duration::from_millis(t.0))
    }
}

/// A seed for a state machine's RNG, from the OS.
fn os_seed() -> anyhow::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut seed)
        .context("reading the OS random number generator")?;
    Ok(seed)
}

/// Executes kernel actions for a set of peers, batching each step.
struct KernelExec {
    xfrm: Xfrm,
    peers: Vec<PeerKernel>,
    names: NameTable,
    errors: u64,
    retry: RetryQueue,
}

impl KernelExec {
    fn open(peers: Vec<PeerKernel>, names: NameTable) -> anyhow::Result<Self> {
        let xfrm = Xfrm::open(Ownership::default()).context("opening the XFRM netlink socket")?;
        Ok(KernelExec {
            xfrm,
            peers,
            names,
            errors: 0,
            retry: RetryQueue::default(),
        })
    }

    /// Removes leftovers of a previous run, then sets every peer up fail-closed.
    fn start(&mut self) -> anyhow::Result<()> {
        let r = self
            .xfrm
            .remove_owned()
            .context("removing SAs and policies left by an earlier run")?;
        if r.sas + r.policies > 0 {
            info!(
                sas = r.sas,
                policies = r.policies,
                "removed state left by an earlier run"
            );
        }
        // In parts, so that 100,000 peers' policies never sit in memory (and
        // in netlink buffers) at once.
        for chunk in self.peers.chunks(1024) {
            let mut ops = Vec::new();
            for p in chunk {
                ops.extend(p.nd_bypass());
                ops.extend(p.inbound_policies());
                ops.extend(p.set_outbound(None));
            }
            let results = self.xfrm.apply(&ops).context("installing policies")?;
            for (op, r) in ops.iter().zip(results) {
                if !r.is_done() {
                    anyhow::bail!("installing policy failed: {op}: {r:?}");
                }
            }
        }
        Ok(())
    }

    /// Appends the kernel operations `a` needs (none for sends and events).
    fn ops_for(&self, a: &Action, out: &mut Vec<(PeerId, Op)>) {
        match a {
            Action::InstallSa {
                peer,
                dir,
                spi,
                key,
            } => {
                let Some(p) = self.peers.get(peer.0 as usize) else {
                    return;
                };
                let Some(k) = AeadKey::new(key.expose().to_vec()) else {
                    return;
                };
                out.push((
                    *peer,
                    match dir {
                        SaDir::In => p.add_inbound_sa(*spi, k),
                        SaDir::Out => p.add_outbound_sa(*spi, k),
                    },
                ));
            }
            Action::SetOutbound { peer, spi } => {
                if let Some(p) = self.peers.get(peer.0 as usize) {
                    out.extend(p.set_outbound(*spi).into_iter().map(|op| (*peer, op)));
                }
            }
            Action::DeleteSa { peer, dir, spi } => {
                let Some(p) = self.peers.get(peer.0 as usize) else {
                    return;
                };
                out.push((
                    *peer,
                    match dir {
                        SaDir::In => p.delete_inbound_sa(*spi),
                        SaDir::Out => p.delete_outbound_sa(*spi),
                    },
                ));
            }
            Action::Send { .. } | Action::Event(_) => {}
        }
    }

    /// Applies the kernel part of `actions` in one batch, preceded by the
    /// refused operations of the same peers (and any that are due). Failures
    /// are logged with the peer, the errno and the kernel's text, counted,
    /// and queued for retry; one peer's failure never stops another's
    /// operations.
    fn apply(&mut self, now: Time, actions: &[Action]) {
        let mut new = Vec::new();
        for a in actions {
            self.ops_for(a, &mut new);
        }
        if new.is_empty() && self.retry.next_due().is_none_or(|t| t > now) {
            return;
        }
        let batch = self.retry.batch(now, new);
        if batch.is_empty() {
            return;
        }
        let (who, ops): (Vec<(PeerId, u32)>, Vec<Op>) = batch
            .into_iter()
            .map(|(peer, op, attempts)| ((peer, attempts), op))
            .unzip();
        let results = match self.xfrm.apply(&ops) {
            Ok(r) => r,
            Err(e) => {
                warn!("netlink batch of {} operations failed: {e}", ops.len());
                (0..ops.len()).map(|_| OpResult::Unknown).collect()
            }
        };
        for (((peer, attempts), op), r) in who.into_iter().zip(ops).zip(results) {
            let name = self.names.get(peer);
            let refusal: Option<(i32, String)> = match &r {
                OpResult::Done => None,
                // Already in the wanted state: a deletion of something gone,
                // or an add our earlier (reply-lost or retried) attempt made.
                OpResult::Failed(e)
                    if (matches!(op, Op::DeleteSa(_)) && e.errno == libc::ESRCH)
                        || (matches!(op, Op::DeletePolicy(_)) && e.errno == libc::ENOENT)
                        || (matches!(op, Op::AddSa(_))
                            && e.errno == libc::EEXIST
                            && attempts > 0) =>
                {
                    None
                }
                OpResult::Failed(e) => Some((e.errno, e.to_string())),
                other => Some((0, format!("{op}: {other:?}"))),
            };
            if let Some((errno, why)) = refusal {
                self.errors += 1;
                let p = self.retry.failed(now, peer, op, attempts);
                warn!(
                    peer = name,
                    errno,
                    attempt = p.attempts,
                    retry_in_ms = p.due.since(now),
                    "kernel refused: {why}"
                );
            } else if attempts > 0 {
                info!(peer = name, attempts, "kernel accepted on retry: {op}");
            }
        }
    }

    /// When the earliest refused operation is due again.
    fn retry_due(&self) -> Option<Time> {
        self.retry.next_due()
    }

    fn remove_all(&mut self) {
        // The ND bypass carries no reqid (no template): delete it by id.
        let ops: Vec<Op> = self
            .peers
            .iter()
            .flat_map(|p| p.nd_bypass_ids())
            .map(Op::DeletePolicy)
            .collect();
        if !ops.is_empty() {
            match self.xfrm.apply(&ops) {
                Ok(results) => {
                    for (op, r) in ops.iter().zip(results) {
                        match r {
                            OpResult::Done => {}
                            OpResult::Failed(e) if e.errno == libc::ENOENT => {}
                            other => warn!("{op}: {other:?}"),
                        }
                    }
                }
                Err(e) => warn!("removing the neighbour-discovery bypass policies: {e}"),
            }
        }
        match self.xfrm.remove_owned() {
            Ok(r) => info!(
                sas = r.sas,
                policies = r.policies,
                "removed rotor's SAs and policies"
            ),
            Err(e) => warn!("removing rotor's SAs and policies: {e}"),
        }
    }
}

fn log_event(e: &Event, names: &NameTable, role: &str) {
    let name = |p: &PeerId| names.get(*p);
    match e {
        Event::Rotated {
            peer,
            generation,
            spi,
            tx_spi,
        } => {
            info!(
                role,
                peer = name(peer),
                generation,
                spi = format!("{spi:#010x}"),
                tx_spi = format!("{tx_spi:#010x}"),
                "rotated"
            )
        }
        Event::Resent {
            peer,
            generation,
            spi,
        } => {
            info!(
                role,
                peer = name(peer),
                generation,
                spi = format!("{spi:#010x}"),
                "resent key (peer still on the previous generation)"
            )
        }
        Event::Initialised { peer, spi } => info!(
            role,
            peer = name(peer),
            spi = format!("{spi:#010x}"),
            "initialised"
        ),
        Event::Confirmed { peer, generation } => {
            debug!(role, peer = name(peer), generation, "confirmed")
        }
        Event::FallbackToInit { unanswered } => warn!(
            role,
            unanswered, "no answer from the hub: falling back to init"
        ),
        Event::Dropped { reason } => {
            debug!(role, reason = reason.name(), "dropped a control datagram")
        }
    }
}

/// Most control datagrams the hub takes in one step before acting on them.
const MAX_BURST: usize = 1024;

/// The earlier of two optional deadlines.
fn earliest(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Drains the core's actions: kernel changes first (one batch), then sends.
async fn execute(
    now: Time,
    actions: Vec<Action>,
    kernel: &mut KernelExec,
    udp: &UdpSocket,
    addr_of: &dyn Fn(PeerId) -> Option<SocketAddr>,
    role: &str,
) {
    kernel.apply(now, &actions);
    let mut out: Vec<(SocketAddr, &[u8])> = Vec::new();
    for a in &actions {
        match a {
            Action::Send { peer, datagram } => {
                if let Some(to) = addr_of(*peer) {
                    out.push((to, datagram));
                }
            }
            Action::Event(e) => log_event(e, &kernel.names, role),
            _ => {}
        }
    }
    if !out.is_empty() {
        let (_, refused) = udp_batch::send_many(udp, &out).await;
        if refused > 0 {
            debug!(
                role,
                refused, "control datagrams the kernel refused to send"
            );
        }
    }
}

fn key_bits(b: u16) -> KeyBits {
    if b == 128 {
        KeyBits::Aes128
    } else {
        KeyBits::Aes256
    }
}

fn drops_map(
    d: &std::collections::BTreeMap<rotor_core::DropReason, u64>,
) -> std::collections::BTreeMap<String, u64> {
    d.iter().map(|(k, v)| (k.name().to_string(), *v)).collect()
}

fn to_wire_status(p: rotor_core::PeerStatus) -> control::PeerStatus {
    control::PeerStatus {
        name: p.name,
        generation: p.generation,
        tx_spi: p.tx_spi,
        rx_spis: p.rx_spis,
        state: p.state.as_str().to_string(),
        rotations: p.rotations,
        resends: p.resends,
        inits: p.inits,
        last_seen_ms: p.last_seen_ms,
    }
}

async fn answer(
    stream: tokio::net::UnixStream,
    handle: &mut dyn FnMut(Request) -> serde_json::Value,
) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(control::MAX_REQUEST as u64));
    let reply = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        reader.read_line(&mut line),
    )
    .await
    {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req),
            Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
        },
        _ => serde_json::json!({"ok": false, "error": "no request received"}),
    };
    let mut out = reply.to_string();
    out.push('\n');
    let _ = w.write_all(out.as_bytes()).await;
}

use tokio::io::AsyncReadExt;

/// Signals that stop the daemon.
struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> anyhow::Result<Self> {
        Ok(Stop {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Runs the hub until SIGTERM/SIGINT.
pub async fn run_hub(mut cfg: HubConfig) -> anyhow::Result<()> {
    let own = Ownership::default();
    // The nodes' entries are moved out of the parsed configuration (their
    // strings are not copied), and what the daemon keeps per node goes into
    // a few large allocations: small long-lived blocks scattered among the
    // parser's garbage would keep its pages from returning to the system.
    let nodes = std::mem::take(&mut cfg.nodes);
    let node_count = nodes.len();
    let names = NameTable::from_names(nodes.iter().map(|n| n.name.as_str()));
    let mut peers = Vec::with_capacity(node_count);
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(node_count);
    let mut specs = Vec::with_capacity(node_count);
    for (i, n) in nodes.into_iter().enumerate() {
        let reqid = own
            .reqid_for(i as u32)
            .with_context(|| format!("too many nodes for rotor's reqid range ({})", own.len()))?;
        peers.push(PeerKernel {
            reqid,
            local: cfg.address,
            remote: n.address,
            mode: n.mode,
            priority: cfg.priority,
            replay_window: cfg.replay_window,
        });
        addrs.push(SocketAddr::new(n.address, cfg.port));
        specs.push(rotor_core::NodeSpec {
            name: n.name,
            psk: Secret32::new(*n.psk),
            rotate_interval_ms: n.rotate_interval.as_millis() as u64,
        });
    }
    let clock = Clock {
        origin: Instant::now(),
    };
    let mut hub = Hub::new(
        rotor_core::HubConfig {
            nodes: specs,
            grace_ms: cfg.grace.as_millis() as u64,
            key_bits: key_bits(cfg.key_bits),
            init_skew_ms: cfg.init_skew.as_millis() as u64,
        },
        clock.read(),
        os_seed()?,
    )
    .context("hub configuration")?;
    hub.start();
    let mut kernel = KernelExec::open(peers, names)?;
    if let Err(e) = kernel.start() {
        // Leave nothing half-installed: the policies of the parts that went in.
        kernel.remove_all();
        return Err(e);
    }
    // Give the heap the configuration parser and the policy set-up left
    // behind back to the system (measured: ~1 KB per node at 10,000 nodes).
    // SAFETY: malloc_trim only releases free heap pages; it is always safe.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    let udp = bind_control_udp(SocketAddr::new(cfg.address, cfg.port))?;
    let ctl = bind_control_unix(&cfg.socket)?;
    let mut stop = Stop::new()?;
    info!(address = %cfg.address, port = cfg.port, nodes = node_count, socket = %cfg.socket.display(), "hub running");
    let addr_of = |p: PeerId| addrs.get(p.0 as usize).copied();
    let result = hub_loop(
        &mut hub,
        &clock,
        &mut kernel,
        &udp,
        &ctl,
        &mut stop,
        &addr_of,
    )
    .await;
    kernel.remove_all();
    let _ = std::fs::remove_file(&cfg.socket);
    info!("hub stopped");
    result
}

#[allow(clippy::too_many_arguments)]
async fn hub_loop(
    hub: &mut Hub,
    clock: &Clock,
    kernel: &mut KernelExec,
    udp: &UdpSocket,
    ctl: &UnixListener,
    stop: &mut Stop,
    addr_of: &dyn Fn(PeerId) -> Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut batch = RecvBatch::default();
    loop {
        // The core's next timer, or a refused kernel operation's retry; an
        // early wake-up is harmless (handle_timeout fires only what is due).
        let wake = earliest(hub.poll_timeout(), kernel.retry_due()).map(|t| clock.instant(t));
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            r = udp_batch::recv_many(udp, &mut batch) => {
                // A burst (hellos after `rotate --all`) is taken whole, up to
                // MAX_BURST datagrams, so that its kernel changes go in one
                // netlink batch and its replies in few sendmmsg calls.
                let mut more = r.is_ok();
                let mut taken = 0;
                while more {
                    // One clock read per receive call, not per datagram
                    // (without a vDSO each read is a system call).
                    let now = clock.read();
                    for d in batch.datagrams() {
                        hub.handle_datagram(now, d);
                        taken += 1;
                    }
                    more = taken < MAX_BURST
                        && udp_batch::try_recv_many(udp, &mut batch).is_ok_and(|n| n > 0);
                }
            }
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                hub.handle_timeout(clock.read());
            }
            c = ctl.accept() => {
                if let Ok((stream, _)) = c {
                    let errors = kernel.errors;
                    let mut handle = |req: Request| -> serde_json::Value {
                        let now = clock.now();
                        match req {
                            Request::Status => {
                                let st = Status {
                                    role: "hub".into(),
                                    peers: hub.status(now).into_iter().map(to_wire_status).collect(),
                                    drops: drops_map(hub.drops()),
                                    kernel_errors: errors,
                                };
                                let mut v = serde_json::to_value(st).unwrap_or_default();
                                v["ok"] = true.into();
                                v
                            }
                            Request::Rotate { node, all } => {
                                if all {
                                    // Paced by the hub: TIMER_BATCH nodes per
                                    // loop turn, hellos served in between.
                                    let n = hub.rotate_all(now);
                                    return serde_json::json!({"ok": true, "rotating": n});
                                }
                                match node.as_deref().and_then(|n| hub.node_id(n)) {
                                    Some(id) => {
                                        let _ = hub.rotate_now(clock.read(), id);
                                        serde_json::json!({"ok": true, "rotating": 1})
                                    }
                                    None => serde_json::json!({"ok": false, "error": format!("no node named {:?}", node.unwrap_or_default())}),
                                }
                            }
                        }
                    };
                    answer(stream, &mut handle).await;
                }
            }
        }
        let mut actions = Vec::new();
        while let Some(a) = hub.poll_action() {
            actions.push(a);
        }
        execute(clock.now(), actions, kernel, udp, addr_of, "hub").await;
    }
}

/// Runs a node until SIGTERM/SIGINT.
pub async fn run_node(cfg: NodeConfig) -> anyhow::Result<()> {
    let own = Ownership::default();
    let peer = PeerKernel {
        reqid: own.base(),
        local: cfg.address,
        remote: cfg.hub.ip(),
        mode: cfg.mode.clone(),
        priority: cfg.priority,
        replay_window: cfg.replay_window,
    };
    let clock = Clock {
        origin: Instant::now(),
    };
    let mut node = Node::new(
        rotor_core::NodeConfig {
            name: cfg.name.clone(),
            psk: Secret32::new(*cfg.psk),
            hello_interval_ms: cfg.hello_interval.as_millis() as u64,
            retries: cfg.retries,
            grace_ms: cfg.grace.as_millis() as u64,
            key_bits: key_bits(cfg.key_bits),
        },
        clock.read(),
        os_seed()?,
    )
    .context("node configuration")?;
    let mut kernel = KernelExec::open(vec![peer], NameTable::from_names(["hub"]))?;
    if let Err(e) = kernel.start() {
        // Leave nothing half-installed: the policies of the parts that went in.
        kernel.remove_all();
        return Err(e);
    }
    let udp = bind_control_udp(SocketAddr::new(cfg.address, cfg.hub.port()))?;
    let ctl = bind_control_unix(&cfg.socket)?;
    let mut stop = Stop::new()?;
    info!(name = %cfg.name, address = %cfg.address, hub = %cfg.hub, socket = %cfg.socket.display(), "node running");
    let hub_addr = cfg.hub;
    let addr_of = move |_p: PeerId| Some(hub_addr);
    let socket_path: PathBuf = cfg.socket.clone();
    let mut buf = vec![0u8; 2048];
    let result: anyhow::Result<()> = loop {
        let wake = earliest(node.poll_timeout(), kernel.retry_due()).map(|t| clock.instant(t));
        tokio::select! {
            _ = stop.wait() => break Ok(()),
            r = udp.recv_from(&mut buf) => {
                // Only the configured hub may talk to us.
                if let Ok((n, from)) = r && from.ip() == hub_addr.ip() {
                    node.handle_datagram(clock.read(), &buf[..n]);
                }
            }
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                node.handle_timeout(clock.read());
            }
            c = ctl.accept() => {
                if let Ok((stream, _)) = c {
                    let errors = kernel.errors;
                    let mut handle = |req: Request| -> serde_json::Value {
                        let now = clock.now();
                        match req {
                            Request::Status => {
                                let st = Status {
                                    role: "node".into(),
                                    peers: vec![to_wire_status(node.status(now))],
                                    drops: drops_map(node.drops()),
                                    kernel_errors: errors,
                                };
                                let mut v = serde_json::to_value(st).unwrap_or_default();
                                v["ok"] = true.into();
                                v
                            }
                            Request::Rotate { .. } => {
                                node.request_rotation(now);
                                serde_json::json!({"ok": true, "requested": true})
                            }
                        }
                    };
                    answer(stream, &mut handle).await;
                }
            }
        }
        let mut actions = Vec::new();
        while let Some(a) = node.poll_action() {
            actions.push(a);
        }
        execute(clock.now(), actions, &mut kernel, &udp, &addr_of, "node").await;
    };
    kernel.remove_all();
    let _ = std::fs::remove_file(&socket_path);
    info!("node stopped");
    result
}
