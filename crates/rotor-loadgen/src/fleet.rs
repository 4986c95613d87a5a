//! The fleet: many [`rotor_core::Node`]s (the same state machine `rotor node`
//! runs) driven by one loop over one [`MultiSocket`], with a timer heap of
//! every node's `poll_timeout`, and optionally the nodes' kernel SAs and
//! policies (`--kernel`), built by the daemon's own [`PeerKernel`] and
//! applied in one batched netlink write per loop turn, before the datagrams
//! of that turn are sent (inbound SAs exist before the hub can use them).
//!
//! Progress and the final summary count what the fleet saw: a node is **in
//! sync** from the moment the hub acknowledges its latest generation (an `ack`
//! under the SPI the node sends on, accepted by the node) until it rotates,
//! re-initialises or gives up on the hub.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rotor::config::PeerMode;
use rotor::peer_kernel::PeerKernel;
use rotor_core::wire::{self, MsgType};
use rotor_core::{Action, Event, Node, NodeConfig, Now, Time};
use rotor_xfrm::{Op, OpResult, Ownership, Xfrm};
use serde_json::json;

use crate::addr::AddrMap;
use crate::silence::Silences;
use crate::udp::{MultiSocket, Outgoing, RecvBatch};

/// Makes SIGTERM/SIGINT end [`Fleet::run`] after its current turn (it then
/// prints its summary).
pub fn install_stop_handlers() -> std::io::Result<()> {
    rotor_sys::signal::catch_stop_signals()
}

/// How to run the fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Address of node 0; node `i` uses the `i`-th address after it.
    pub first_addr: Ipv4Addr,
    /// How node indexes map to addresses.
    pub addr_map: AddrMap,
    /// The hub's control address (nodes send from the same port).
    pub hub: SocketAddrV4,
    /// Send hellos this often.
    pub hello_interval_ms: u64,
    /// At most this many nodes waiting for their first init reply at once
    /// (0: start every node at once).
    pub max_pending: usize,
    /// Install each node's SAs and policies in this namespace.
    pub kernel: bool,
    /// Receive buffer to ask for.
    pub rcvbuf: usize,
    /// Send buffer to ask for.
    pub sndbuf: usize,
    /// Seed the nodes' random generators are drawn from (`None`: from the OS).
    pub seed: Option<u64>,
    /// Progress line on stderr and progress file this often.
    pub progress_ms: u64,
    /// Rewritten (atomically) with the progress JSON every `progress_ms`.
    pub progress_file: Option<PathBuf>,
    /// Stop after this long (`None`: at SIGTERM/SIGINT).
    pub duration: Option<Duration>,
    /// No progress lines on stderr.
    pub quiet: bool,
    /// A node counts as waiting for the hub once a datagram it sent has
    /// gone unanswered this long ([`Silences`]).
    pub silence_ms: u64,
    /// When this file's modification time changes, the ended-wait figures
    /// start over (a caller marks the start of an outage it measures).
    pub mark_file: Option<PathBuf>,
}

/// What the fleet counts.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Nodes started (sent their first init).
    pub started: usize,
    /// Nodes whose latest generation the hub has acknowledged.
    pub in_sync: usize,
    /// Init replies accepted.
    pub inits: u64,
    /// Rotations (new generations adopted).
    pub rotations: u64,
    /// Fallbacks to init after unanswered hellos.
    pub fallbacks: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// Sends the kernel refused.
    pub send_errors: u64,
    /// Datagrams dropped, by reason (the nodes' reasons, plus
    /// `not_from_hub` and `unknown_destination` from the demultiplexer).
    pub drops: BTreeMap<String, u64>,
    /// Kernel operations applied (`--kernel`).
    pub kernel_ops: u64,
    /// Kernel operations that failed.
    pub kernel_errors: u64,
    /// Netlink batches written.
    pub kernel_batches: u64,
    /// Wall clock (Unix ms) of the last time every node became in sync.
    pub all_in_sync_unix_ms: Option<u64>,
}

struct Slot {
    node: Node,
    /// Deadline the heap holds for this node (`None`: not armed).
    armed: Option<u64>,
    started: bool,
    initialised: bool,
    in_sync: bool,
}

/// The fleet of nodes.
pub struct Fleet {
    cfg: FleetConfig,
    slots: Vec<Slot>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    next_start: usize,
    pending: usize,
    out: Vec<Outgoing>,
    ops: Vec<Op>,
    stats: Stats,
    origin: Instant,
    own: Ownership,
    xfrm: Option<Xfrm>,
    silences: Silences,
    /// Nodes waiting for the hub at the last report.
    waiting: usize,
    /// The mark file's modification time last seen.
    mark: Option<SystemTime>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Fleet {
    /// A fleet of one node per config (node `i` at `first_addr + i`).
    pub fn new(cfg: FleetConfig, nodes: Vec<NodeConfig>) -> anyhow::Result<Fleet> {
        let origin = Instant::now();
        let own = Ownership::default();
        if nodes.len() > cfg.addr_map.capacity() {
            anyhow::bail!(
                "{} nodes do not fit the {:?} address map",
                nodes.len(),
                cfg.addr_map
            );
        }
        if nodes.len() > own.len() as usize {
            anyhow::bail!(
                "{} nodes do not fit rotor's reqid range ({})",
                nodes.len(),
                own.len()
            );
        }
        // Each node's RNG gets its own seed, drawn from one fleet RNG: with
        // `seed` set, a run's random choices repeat.
        let mut seeds = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        let start = Now::new(Time(0), unix_ms());
        let mut slots = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.into_iter().enumerate() {
            let name = n.name.clone();
            let mut node = Node::new(n, start, seeds.r#gen())
                .with_context(|| format!("node {i} ({name}): invalid settings"))?;
            // Each node says where it sends from, so the hub sees no NAT.
            let from = cfg.addr_map.addr(cfg.first_addr, i as u32);
            node.set_path(SocketAddr::new(IpAddr::V4(from), cfg.hub.port()), false);
            slots.push(Slot {
                node,
                armed: None,
                started: false,
                initialised: false,
                in_sync: false,
            });
        }
        let silences = Silences::new(slots.len(), cfg.silence_ms);
        Ok(Fleet {
            cfg,
            slots,
            heap: BinaryHeap::new(),
            next_start: 0,
            pending: 0,
            out: Vec::new(),
            ops: Vec::new(),
            stats: Stats::default(),
            origin,
            own,
            xfrm: None,
            silences,
            waiting: 0,
            mark: None,
        })
    }

    fn now(&self) -> Time {
        Time(self.origin.elapsed().as_millis() as u64)
    }

    /// Both clocks, read together, as the nodes take them.
    fn clock(&self) -> Now {
        Now::new(self.now(), unix_ms())
    }

    fn addr(&self, i: usize) -> Ipv4Addr {
        self.cfg.addr_map.addr(self.cfg.first_addr, i as u32)
    }

    fn peer_kernel(&self, i: usize) -> Option<PeerKernel> {
        Some(PeerKernel {
            reqid: self.own.reqid_for(i as u32)?,
            local: IpAddr::V4(self.addr(i)),
            remote: IpAddr::V4(*self.cfg.hub.ip()),
            local_port: self.cfg.hub.port(),
            remote_port: self.cfg.hub.port(),
            nat: false,
            mode: PeerMode::Transport,
            priority: 1000,
            replay_window: 1024,
            lifetime: Some(rotor::daemon::node_lifetime(None)),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn set_in_sync(&mut self, i: usize, v: bool) {
        let s = &mut self.slots[i];
        if s.in_sync == v {
            return;
        }
        s.in_sync = v;
        if v {
            self.stats.in_sync += 1;
            if self.stats.in_sync == self.slots.len() {
                self.stats.all_in_sync_unix_ms = Some(unix_ms());
            }
        } else {
            self.stats.in_sync -= 1;
        }
    }

    /// Executes node `i`'s actions at `now`; returns whether it dropped a
    /// datagram.
    fn drain(&mut self, i: usize, now: Time) -> bool {
        let mut dropped = false;
        while let Some(a) = self.slots[i].node.poll_action() {
            match a {
                Action::Send { datagram, .. } => {
                    if self.slots[i].initialised {
                        self.silences.sent(i, now.0);
                    }
                    self.out.push(Outgoing {
                        from: self.addr(i),
                        to: self.cfg.hub,
                        data: wire::frame(&datagram),
                    });
                }
                Action::Event(e) => match e {
                    Event::Rotated { .. } => {
                        self.stats.rotations += 1;
                        self.set_in_sync(i, false);
                    }
                    Event::Initialised { .. } => {
                        self.stats.inits += 1;
                        self.set_in_sync(i, false);
                        if !self.slots[i].initialised {
                            self.slots[i].initialised = true;
                            self.pending = self.pending.saturating_sub(1);
                        }
                    }
                    Event::FallbackToInit { .. } => {
                        self.stats.fallbacks += 1;
                        self.set_in_sync(i, false);
                    }
                    Event::Dropped { reason, .. } => {
                        dropped = true;
                        *self
                            .stats
                            .drops
                            .entry(reason.name().to_string())
                            .or_insert(0) += 1;
                    }
                    Event::Resent { .. }
                    | Event::Confirmed { .. }
                    | Event::Moved { .. }
                    | Event::KernelRepaired { .. } => {}
                },
                kernel_action => {
                    if self.cfg.kernel {
                        self.kernel_op(i, &kernel_action);
                    }
                }
            }
        }
        self.rearm(i);
        dropped
    }

    fn kernel_op(&mut self, i: usize, a: &Action) {
        let Some(p) = self.peer_kernel(i) else {
            self.stats.kernel_errors += 1;
            return;
        };
        let ops = &mut self.ops;
        if p.ops_for(a, |op| ops.push(op)).is_err() {
            self.stats.kernel_errors += 1;
        }
    }

    fn rearm(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if !s.started {
            return;
        }
        let t = s.node.poll_timeout().map(|t| t.0);
        if t != s.armed {
            s.armed = t;
            if let Some(t) = t {
                self.heap.push(Reverse((t, i as u32)));
            }
        }
    }

    fn start_nodes(&mut self, now: Now) {
        while self.next_start < self.slots.len()
            && (self.cfg.max_pending == 0 || self.pending < self.cfg.max_pending)
        {
            let i = self.next_start;
            self.next_start += 1;
            self.pending += 1;
            self.stats.started += 1;
            self.slots[i].started = true;
            self.slots[i].node.handle_timeout(now);
            self.drain(i, now.mono);
        }
    }

    fn fire_timers(&mut self, now: Now) {
        while let Some(&Reverse((t, i))) = self.heap.peek() {
            if t > now.mono.0 {
                break;
            }
            self.heap.pop();
            let i = i as usize;
            if self.slots[i].armed != Some(t) {
                continue; // superseded
            }
            self.slots[i].armed = None;
            self.slots[i].node.handle_timeout(now);
            self.drain(i, now.mono);
        }
    }

    fn handle(&mut self, now: Now, from: SocketAddrV4, to: Option<Ipv4Addr>, data: &[u8]) {
        self.stats.received += 1;
        if from.ip() != self.cfg.hub.ip() {
            *self.stats.drops.entry("not_from_hub".into()).or_insert(0) += 1;
            return;
        }
        let idx = to.and_then(|a| {
            self.cfg
                .addr_map
                .index(self.cfg.first_addr, a, self.slots.len())
        });
        let Some(i) = idx else {
            *self
                .stats
                .drops
                .entry("unknown_destination".into())
                .or_insert(0) += 1;
            return;
        };
        if !self.slots[i].started {
            *self
                .stats
                .drops
                .entry("node_not_started".into())
                .or_insert(0) += 1;
            return;
        }
        let Some(data) = wire::unframe(data) else {
            *self.stats.drops.entry("unframed".into()).or_insert(0) += 1;
            return;
        };
        let ack_spi = wire::parse(data)
            .ok()
            .filter(|d| d.header.kind == MsgType::Ack)
            .map(|d| d.header.spi);
        let seen = self.slots[i].node.last_seen();
        self.slots[i]
            .node
            .handle_datagram(now, SocketAddr::V4(from), data);
        let dropped = self.drain(i, now.mono);
        // Heard: the node took an authenticated message (its last-seen
        // moved; within the same millisecond, it dropped nothing).
        let after = self.slots[i].node.last_seen();
        if after != seen || (!dropped && after == Some(now.mono)) {
            self.silences.heard(i, now);
        }
        if !dropped && ack_spi.is_some() && ack_spi == self.slots[i].node.tx_spi() {
            self.set_in_sync(i, true);
        }
    }

    /// Applies the kernel operations gathered this turn (one batch), then
    /// sends the datagrams.
    fn flush(&mut self, sock: &MultiSocket) {
        if !self.ops.is_empty() {
            let ops = std::mem::take(&mut self.ops);
            self.stats.kernel_batches += 1;
            self.stats.kernel_ops += ops.len() as u64;
            match self.xfrm.as_mut().map(|x| x.apply(&ops)) {
                Some(Ok(results)) => {
                    for (op, r) in ops.iter().zip(results) {
                        match r {
                            OpResult::Done => {}
                            OpResult::Failed(e)
                                if matches!(op, Op::DeleteSa(_)) && e.errno == libc::ESRCH => {}
                            _ => self.stats.kernel_errors += 1,
                        }
                    }
                }
                Some(Err(e)) => {
                    self.stats.kernel_errors += ops.len() as u64;
                    eprintln!("rotor-loadgen: netlink batch failed: {e}");
                }
                None => self.stats.kernel_errors += ops.len() as u64,
            }
        }
        let mut at = 0;
        let mut stalls = 0;
        while at < self.out.len() {
            match sock.send_batch(&self.out[at..]) {
                Ok(0) => {
                    // Send buffer full: wait for room, a bounded number of times.
                    stalls += 1;
                    if stalls > 50 {
                        let left = (self.out.len() - at) as u64;
                        self.stats.send_errors += left;
                        *self
                            .stats
                            .drops
                            .entry("send_buffer_full".into())
                            .or_insert(0) += left;
                        break;
                    }
                    sock.wait(20, true);
                }
                Ok(n) => {
                    self.stats.sent += n as u64;
                    at += n;
                }
                Err(_) => {
                    // This datagram was refused; go on with the next.
                    self.stats.send_errors += 1;
                    at += 1;
                }
            }
        }
        self.out.clear();
    }

    /// The progress snapshot as JSON (`silence` as of the last report).
    pub fn progress_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let waiting = self.waiting;
        json!({
            "count": self.slots.len(),
            "elapsed_ms": self.origin.elapsed().as_millis() as u64,
            "unix_ms": unix_ms(),
            "started": s.started,
            "in_sync": s.in_sync,
            "inits": s.inits,
            "rotations": s.rotations,
            "fallbacks": s.fallbacks,
            "sent": s.sent,
            "received": s.received,
            "send_errors": s.send_errors,
            "drops": s.drops,
            "kernel_ops": s.kernel_ops,
            "kernel_errors": s.kernel_errors,
            "kernel_batches": s.kernel_batches,
            "all_in_sync_unix_ms": s.all_in_sync_unix_ms,
            "silence": self.silences.json(waiting),
        })
    }

    /// Starts the ended-wait figures over when the mark file was touched.
    fn check_mark(&mut self) {
        let Some(path) = &self.cfg.mark_file else {
            return;
        };
        let m = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if m.is_some() && m != self.mark {
            self.mark = m;
            self.silences.restart();
        }
    }

    fn report(&mut self) {
        self.check_mark();
        self.waiting = self.silences.observe(self.now().0);
        let v = self.progress_json();
        if let Some(path) = &self.cfg.progress_file {
            let tmp = path.with_extension("tmp");
            let ok = std::fs::File::create(&tmp)
                .and_then(|mut f| writeln!(f, "{v}"))
                .and_then(|_| std::fs::rename(&tmp, path));
            if let Err(e) = ok {
                eprintln!("rotor-loadgen: writing {}: {e}", path.display());
            }
        }
        if !self.cfg.quiet {
            let s = &self.stats;
            eprintln!(
                "rotor-loadgen: t={:.1}s started={} in_sync={}/{} inits={} rotations={} sent={} received={} drops={} waiting={}",
                self.origin.elapsed().as_secs_f64(),
                s.started,
                s.in_sync,
                self.slots.len(),
                s.inits,
                s.rotations,
                s.sent,
                s.received,
                s.drops.values().sum::<u64>(),
                self.waiting
            );
        }
    }

    /// Runs until SIGTERM/SIGINT or the configured duration; returns the
    /// final summary (JSON).
    pub fn run(&mut self) -> anyhow::Result<serde_json::Value> {
        let sock = MultiSocket::bind(self.cfg.hub.port(), self.cfg.rcvbuf, self.cfg.sndbuf)
            .with_context(|| {
                format!(
                    "binding UDP 0.0.0.0:{} with IP_PKTINFO and the IPsec bypass (needs CAP_NET_ADMIN)",
                    self.cfg.hub.port()
                )
            })?;
        if self.cfg.kernel {
            let mut x = Xfrm::open(self.own).context("opening the XFRM netlink socket")?;
            x.remove_owned()
                .context("removing SAs and policies left by an earlier run")?;
            let mut ops = Vec::new();
            for i in 0..self.slots.len() {
                if let Some(p) = self.peer_kernel(i) {
                    ops.extend(p.inbound_policies());
                    ops.extend(p.set_outbound(None));
                }
            }
            x.apply_all(&ops)
                .context("installing the nodes' policies")?;
            self.xfrm = Some(x);
        }
        let mut batch = RecvBatch::new();
        let end = self.cfg.duration.map(|d| Instant::now() + d);
        let mut next_report = Instant::now();
        let every = Duration::from_millis(self.cfg.progress_ms.max(10));
        while !rotor_sys::signal::stop_requested() {
            if end.is_some_and(|e| Instant::now() >= e) {
                break;
            }
            let now = self.clock();
            self.fire_timers(now);
            self.start_nodes(now);
            let mut got = 0;
            // A bounded number of batches per turn, so timers never starve.
            for _ in 0..16 {
                let n = sock.recv_batch(&mut batch).context("receiving")?;
                let now = self.clock();
                for k in 0..n {
                    if let Some((r, data)) = batch.get(k) {
                        self.handle(now, r.from, r.to, data);
                    }
                }
                got += n;
                if n < crate::udp::BATCH {
                    break;
                }
            }
            self.flush(&sock);
            if Instant::now() >= next_report {
                self.report();
                next_report = Instant::now() + every;
            }
            if got == 0 {
                let now = self.now().0;
                let timer = self
                    .heap
                    .peek()
                    .map(|Reverse((t, _))| t.saturating_sub(now))
                    .unwrap_or(1000);
                let rep = next_report
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64;
                let wait = timer.min(rep).min(1000);
                if wait > 0 {
                    sock.wait(wait as i32, false);
                }
            }
        }
        self.report();
        let mut v = self.progress_json();
        v["rcvbuf"] = sock.rcvbuf.into();
        v["sndbuf"] = sock.sndbuf.into();
        if let Some(mut x) = self.xfrm.take() {
            match x.remove_owned() {
                Ok(r) => {
                    v["kernel_removed_sas"] = r.sas.into();
                    v["kernel_removed_policies"] = r.policies.into();
                }
                Err(e) => eprintln!("rotor-loadgen: removing the nodes' SAs and policies: {e}"),
            }
        }
        Ok(v)
    }
}
