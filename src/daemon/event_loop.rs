//! The one event loop, generic over the [`Role`] and the [`Kernel`]: it
//! feeds the machine datagrams, timeouts and control calls, and executes the
//! actions that come out (kernel changes in one batch per step, then the
//! datagrams), until `shutdown` completes.
//!
//! Fairness: a burst of datagrams is bounded ([`MAX_BURST`]); after every
//! wake-up, whatever woke it, the loop fires due timers and answers waiting
//! control calls, and after a full burst it yields to the runtime so the
//! control connections (and tokio's drivers) run. A socket kept full of junk
//! therefore costs throughput, never timers, retries or `rotor status`.
//!
//! Priority: every datagram of a burst is classified before any
//! cryptography ([`Machine::classify`]). What comes from where its peer is,
//! and what is dropped for nanoseconds anyway, is handled in arrival order;
//! what would cost a key derivation or an AEAD and comes from elsewhere (a
//! moved node, or a flood of forgeries under a node's public init SPI) is
//! handled after the rest of the burst, at most [`COSTLY_PER_BURST`] of
//! them; the excess is shed unread (counted as `shed`). Before that, a
//! hub's kernel already queued the datagrams from its nodes' addresses on a
//! socket of their own ([`rotor_sys::steer`]), read first: a flood from
//! elsewhere overflows only the other queue.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use rotor_core::{Action, Class, DropReason, Machine, Now, SaDir, Time};
use rotor_xfrm::{Kernel, KernelEvent, Monitor, Op, PolicyId, SaId};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::signal::unix::Signal;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::clock::Clock;
use super::control_server::{Call, PAGE};
use super::kernel::KernelExec;
use super::log::{self, Logbook};
use super::notify::Notifier;
use super::persist::Persist;
use super::reconcile;
use super::repairs::{Repairs, SETTLE_PER_TURN};
use super::role::Role;
use super::route_watch::RouteWatch;
use crate::control::{self, ReloadReply, StatusHead};
use crate::guard::{Guard, GuardError};
use crate::state::StateError;
use crate::udp_batch::{self, RecvBatch};

/// Most control datagrams taken in one step before acting on them: a burst
/// (hellos after `rotate --all`) is taken whole up to this, so its kernel
/// changes go in one netlink batch and its replies in few sendmmsg calls.
pub const MAX_BURST: usize = 1024;
/// Longest the loop runs without letting the runtime's other tasks (the
/// control socket's server, the metrics server) run: a control call then
/// waits at most this plus one turn.
pub const YIELD_EVERY_MS: u64 = 20;
/// Costly datagrams ([`Class::Costly`]) handled per burst, after the
/// burst's others. A flood of forgeries under nodes' init SPIs then costs
/// the hub at most this many key derivations per burst, while a node that
/// moved still gets through (its next hello, if a flood took this burst's
/// budget).
pub const COSTLY_PER_BURST: usize = 32;
/// Costly datagrams handled per burst from one address (several nodes may
/// sit behind one NAT address).
pub const COSTLY_PER_SOURCE: usize = 4;
/// Control calls answered per loop turn, beyond the one that woke it.
pub const CALLS_PER_TURN: usize = 8;

/// How soon after the kernel reports a change to rotor's objects the
/// reconcile pass runs: long enough to take a flush's burst of
/// notifications as one, far inside the 1 s repair bound.
pub const RECONCILE_DELAY_MS: u64 = 20;
/// Least time between two reported-change passes: a stream of
/// notifications (someone else's churn) costs at most five dumps a second.
pub const RECONCILE_GAP_MS: u64 = 200;
/// How long SAs in their grace period at a reload are kept (longer than
/// the default grace; the core no longer tracks them).
pub const LINGER_MS: u64 = 60_000;

/// What keeps the kernel and the disk in step with the machine.
pub struct Lifecycle {
    /// The durable state; `None` runs without (tests of the loop alone).
    pub persist: Option<Persist>,
    /// The kernel's XFRM notifications; `None`: periodic reconcile only.
    pub monitor: Option<AsyncFd<Monitor>>,
    /// Period of the reconcile pass that runs whatever was reported.
    pub reconcile_every_ms: u64,
    /// Peer index by reqid, for expiry notifications.
    pub reqids: HashMap<u32, usize>,
    /// SIGHUP (reload); `None` in tests.
    pub hangup: Option<Signal>,
    /// SAs a reload found in their grace period, kept until the time given
    /// (then the next periodic pass deletes them).
    pub linger: HashMap<SaId, Time>,
    /// Records of peers no longer configured, dropped once the start is
    /// past every check.
    pub forget: Vec<String>,
    /// Reloads asked for (with the caller's reply channel, if any), done
    /// once the step's actions are executed.
    pub reloads: Vec<Option<oneshot::Sender<Result<ReloadReply, String>>>>,
    /// The Prometheus listener until the loop's servers start (with whether
    /// it serves per-node series).
    pub metrics: Option<(tokio::net::TcpListener, bool)>,
    /// The service manager's notifications (readiness, reloads, stopping,
    /// watchdog); the default sends none.
    pub notify: Notifier,
    /// Address and route changes (a node follows its own address);
    /// `None`: not watched.
    pub routes: Option<AsyncFd<RouteWatch>>,
    /// The clear-text guard, installed before the loop starts; `None`:
    /// configured off (or tests of the loop alone).
    pub guard: Option<Guard>,
    /// The guard being installed on a thread of its own while a restarted
    /// daemon already serves ([`Lifecycle::first_pass_deferred`]).
    pub guard_pending: Option<oneshot::Receiver<(Guard, Result<usize, GuardError>)>>,
    /// The start-up left the first reconcile pass to the loop: a restart
    /// whose kernel still holds the previous run's objects answers its
    /// peers first, and adopts and repairs once the guard is in.
    pub first_pass_deferred: bool,
    /// Run once, in the loop's first step, after its records are written
    /// and its kernel changes made and before its first datagram: a hub
    /// taking over takes its service address there, once the SAs the
    /// start re-installs are in and before its answers rotate any node.
    pub before_first_send: Option<BeforeFirstSend>,
    /// A leader's start holds its repairs and settles them from the loop
    /// ([`super::repairs`]); `None`: repairs are recorded before the
    /// kernel changes they cause, as always.
    pub repairs: Option<Repairs>,
}

/// See [`Lifecycle::before_first_send`]; the error stops the daemon.
pub type BeforeFirstSend = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Why the loop stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The state can no longer be written: nothing more may be sent.
    #[error("the durable state: {0}")]
    Store(#[from] StateError),
    /// The clear-text guard a restarted daemon installs while it serves
    /// could not be installed.
    #[error("installing the clear-text guard (`guard`): {0}")]
    Guard(#[from] GuardError),
    /// [`Lifecycle::before_first_send`] failed.
    #[error("before the first answer: {0}")]
    BeforeFirstSend(String),
}

/// Runs `role` until `shutdown` completes. Kernel state is left as it is:
/// the caller decides what stopping means for it. Fails when the state can
/// no longer be written: then nothing more may be sent (a restart resumes
/// from what is durable, the kernel keeps the current keys); or when the
/// guard a restart installs while serving cannot be installed.
///
/// A reconcile pass dumps the kernel on a thread of its own
/// ([`reconcile::begin`]) and compares in the loop when the dump is in
/// ([`reconcile::finish`]): at 100,000 peers the dump takes seconds,
/// longer than a node waits for an answer to its hello.
pub async fn run<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &mut KernelExec<K>,
    udp: &UdpSocket,
    calls: &mut mpsc::Receiver<Call>,
    clock: &Clock,
    life: &mut Lifecycle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LoopError> {
    tokio::pin!(shutdown);
    let mut events: Vec<KernelEvent> = Vec::new();
    let mut next_reconcile = clock.mono().plus_ms(life.reconcile_every_ms);
    // A reported change waits RECONCILE_DELAY_MS for its siblings, and at
    // least RECONCILE_GAP_MS after the last pass.
    let mut reconcile_at: Option<Time> =
        (life.first_pass_deferred && life.guard_pending.is_none()).then(|| clock.mono());
    let mut last_pass = Time(0);
    // Dumps taken on their own thread, and whether one is under way.
    let (dumped_tx, mut dumped) = mpsc::unbounded_channel::<reconcile::Taken>();
    let mut dumping = false;
    // With source addresses: a node sheds datagrams not from its hub.
    let mut batch = RecvBatch::with_addresses();
    let mut actions: Vec<Action> = Vec::new();
    let mut book = Logbook::new(clock.mono(), kernel.errors());
    // What the start-up pass asked for (re-installs after a reboot) goes
    // out now, not at the first timer.
    execute(
        role,
        kernel,
        udp,
        clock.now(),
        life,
        &mut actions,
        &mut book,
    )
    .await?;
    // From here on control calls are answered: the daemon serves.
    life.notify.ready();
    // Datagrams shed for their source, shown with the machine's drops.
    let mut wrong_source: u64 = 0;
    let mut costly = Deferred::default();
    // A hub's nodes at their addresses get a kernel queue of their own.
    let priority = (R::NAME == "hub")
        .then(|| crate::sockets::bind_priority_udp(udp).ok())
        .flatten();
    let mut steered = Steering::default();
    steered.refresh(role, udp, priority.is_some(), book.moves);
    let mut yielded = clock.mono();
    loop {
        // The core's next timer, or a refused kernel operation's retry; an
        // early wake-up is harmless (only what is due fires).
        let due = earliest(role.machine().poll_timeout(), kernel.retry_due());
        // A pass waits for the one under way, and for the guard.
        let may_pass = !dumping && life.guard_pending.is_none();
        let due = if may_pass {
            let due = earliest(
                due,
                Some(reconcile_at.map_or(next_reconcile, |t| t.min(next_reconcile))),
            );
            // SAs kept over a reload go when their time is up.
            earliest(due, life.linger.values().min().copied())
        } else {
            due
        };
        let due = earliest(due, book.due(kernel.errors()));
        // Held repairs settle a slice per turn until none is left.
        let due = earliest(
            due,
            life.repairs
                .as_ref()
                .filter(|r| r.pending())
                .map(|_| clock.mono()),
        );
        let due = earliest(due, life.notify.next_ping());
        let wake = due.map(|t| clock.instant(t));
        let mut full_burst = false;
        let mut read = false;
        let mut dump_in: Option<reconcile::Taken> = None;
        tokio::select! {
            _ = &mut shutdown => {
                life.notify.stopping();
                return Ok(());
            }
            r = readable(udp, priority.as_ref()) => {
                read = true;
                if r.is_ok() {
                    let mut burst = Burst { clock, book: &mut book, costly: &mut costly, wrong_source: &mut wrong_source };
                    full_burst = burst.read(role, udp, priority.as_ref(), &mut batch) >= MAX_BURST;
                }
            }
            _ = sleep_until(wake) => {}
            Some(t) = dumped.recv() => dump_in = Some(t),
            r = guard_ready(life.guard_pending.as_mut()) => {
                life.guard_pending = None;
                match r {
                    Some((g, Ok(pairs))) => {
                        info!(pairs, "clear-text guard in place: {}", g.describe());
                        life.guard = Some(g);
                    }
                    Some((_, Err(e))) => return Err(e.into()),
                    None => warn!("the clear-text guard's installer stopped without an answer"),
                }
                // The guard is in: the start-up's pass may write policies.
                reconcile_at = Some(clock.mono());
            }
            Some(call) = calls.recv() => answer(role, kernel, life, (wrong_source, &book), clock.now(), call),
            Some(()) = hangup(life.hangup.as_mut()) => life.reloads.push(None),
            r = read_routes(life.routes.as_mut()) => {
                match r {
                    Ok(true) => role.route_changed(clock.now()),
                    Ok(false) => {}
                    Err(e) => {
                        warn!("reading the kernel's route notifications: {e}; address changes are no longer followed");
                        life.routes = None;
                    }
                }
            }
            r = read_monitor(life.monitor.as_mut(), &mut events) => {
                let now = clock.now();
                match r {
                    Ok(_) => {
                        if let Some((at, urgent)) = on_kernel_events(role, life, &mut book, &events, now) {
                            let at = if urgent { at } else { at.max(last_pass.plus_ms(RECONCILE_GAP_MS)) };
                            reconcile_at = Some(reconcile_at.map_or(at, |t| t.min(at)));
                        }
                    }
                    Err(e) => {
                        warn!("reading the kernel's XFRM notifications: {e}; periodic reconcile only");
                        life.monitor = None;
                    }
                }
                events.clear();
            }
        }
        let now = clock.now();
        if role.machine().poll_timeout().is_some_and(|t| t <= now.mono) {
            role.machine_mut().handle_timeout(now);
        }
        role.poll(now);
        for _ in 0..CALLS_PER_TURN {
            match calls.try_recv() {
                Ok(call) => answer(role, kernel, life, (wrong_source, &book), now, call),
                Err(_) => break,
            }
        }
        if !read && life.repairs.as_ref().is_some_and(Repairs::pending) {
            // Settling wakes every turn: the nodes' datagrams are read in
            // each too, not only when the wake-up happens to be theirs.
            let mut burst = Burst {
                clock,
                book: &mut book,
                costly: &mut costly,
                wrong_source: &mut wrong_source,
            };
            full_burst = burst.read(role, udp, priority.as_ref(), &mut batch) >= MAX_BURST;
        }
        if let Some(r) = life.repairs.as_mut() {
            // A reload rebuilds the role: everything held is settled first.
            let limit = if life.reloads.is_empty() {
                SETTLE_PER_TURN
            } else {
                usize::MAX
            };
            r.settle_some(role, now, limit);
        }
        execute(role, kernel, udp, now, life, &mut actions, &mut book).await?;
        // This turn's records are written: the marker may go.
        if life.repairs.as_mut().is_some_and(Repairs::finish_if_done) {
            life.repairs = None;
        }
        // Only once every action is executed does the kernel show what the
        // machine believes: the pass compares the two.
        if let Some(t) = dump_in {
            dumping = false;
            let linger: HashSet<SaId> = life.linger.keys().copied().collect();
            let pass = reconcile::finish(role, kernel, now, &linger, t);
            // A pass's dump and indexes are large and short-lived: give
            // their pages back (at 10,000 peers ~1 KB per peer otherwise).
            rotor_sys::malloc_trim();
            match pass {
                Ok(report) => {
                    if std::mem::take(&mut life.first_pass_deferred) {
                        report.log_adopted(true);
                    }
                    execute(role, kernel, udp, now, life, &mut actions, &mut book).await?
                }
                Err(e) => warn!("reconcile: dumping the kernel's XFRM state: {e}"),
            }
        }
        let linger_due = life.linger.values().min().copied();
        if !dumping
            && life.guard_pending.is_none()
            && (reconcile_at.is_some_and(|t| t <= now.mono)
                || next_reconcile <= now.mono
                || linger_due.is_some_and(|t| t <= now.mono))
        {
            // The guard is not in XFRM, so no notification reports a change
            // to it: the periodic pass checks it.
            if next_reconcile <= now.mono {
                check_guard(life.guard.as_mut(), kernel);
            }
            life.linger.retain(|_, until| *until > now.mono);
            reconcile_at = None;
            last_pass = now.mono;
            next_reconcile = now.mono.plus_ms(life.reconcile_every_ms);
            let tx = dumped_tx.clone();
            match reconcile::begin(kernel, move |t| {
                let _ = tx.send(t);
            }) {
                Ok(()) => dumping = true,
                Err(e) => warn!("reconcile: dumping the kernel's XFRM state: {e}"),
            }
        }
        // Likewise a reload: the old machine's actions are all executed and
        // its records written before it is replaced.
        if !life.reloads.is_empty() {
            life.notify.reloading();
            let r = reload(role, kernel, life, now);
            book.peers_changed();
            book.moves += 1;
            match &r {
                Ok(c) => info!(
                    added = ?c.added,
                    removed = ?c.removed,
                    changed = ?c.changed,
                    unchanged = c.unchanged,
                    "configuration reloaded"
                ),
                Err(e) => error!("reload refused, nothing changed: {e}"),
            }
            for reply in life.reloads.drain(..).flatten() {
                let _ = reply.send(r.clone());
            }
            execute(role, kernel, udp, now, life, &mut actions, &mut book).await?;
            life.notify.ready();
        }
        steered.refresh(role, udp, priority.is_some(), book.moves);
        book.tick(R::NAME, now.mono, kernel.errors());
        // Only a loop that turns pings: one stuck anywhere gets restarted.
        life.notify.ping_if_due(clock.mono());
        // A loop whose wake-ups are always ready (a full socket, repairs
        // settling) never waits, so the runtime's other tasks (the control
        // socket's and the metrics' servers) would run only when tokio's
        // cooperative budget forces a wait: tens of turns apart.
        if full_burst || clock.mono() >= yielded.plus_ms(YIELD_EVERY_MS) {
            tokio::task::yield_now().await;
            yielded = clock.mono();
        }
    }
}

/// Waits until `main` or `priority` has datagrams queued.
async fn readable(main: &UdpSocket, priority: Option<&UdpSocket>) -> std::io::Result<()> {
    match priority {
        None => main.readable().await,
        Some(p) => tokio::select! {
            r = p.readable() => r,
            r = main.readable() => r,
        },
    }
}

/// What one burst of reads updates besides the machine.
struct Burst<'a> {
    clock: &'a Clock,
    book: &'a mut Logbook,
    costly: &'a mut Deferred,
    wrong_source: &'a mut u64,
}

impl Burst<'_> {
    /// Reads what the nodes' queue (`priority`), whole, then `sock` have
    /// queued, and feeds the machine the costly messages kept within their
    /// budget. Returns how many datagrams it read.
    fn read<R: Role>(
        &mut self,
        role: &mut R,
        sock: &UdpSocket,
        priority: Option<&UdpSocket>,
        batch: &mut RecvBatch,
    ) -> usize {
        self.costly.clear();
        let mut taken = 0;
        if let Some(p) = priority {
            taken += self.take(role, p, batch);
        }
        taken += self.take(role, sock, batch);
        let now = self.clock.now();
        for (from, message) in self.costly.iter() {
            handle(role, self.book, now, from, message);
        }
        taken
    }

    /// Reads what `sock` has queued, up to [`MAX_BURST`] datagrams, and
    /// feeds the machine all but the costly ones, which it keeps within
    /// their budget (the excess is shed). Returns how many it read.
    fn take<R: Role>(&mut self, role: &mut R, sock: &UdpSocket, batch: &mut RecvBatch) -> usize {
        let mut taken = 0;
        while taken < MAX_BURST && udp_batch::try_recv_many(sock, batch).is_ok_and(|n| n > 0) {
            // One clock read per receive call, not per datagram (without
            // a vDSO each read is a system call).
            let now = self.clock.now();
            for d in (0..batch.len()).filter_map(|i| batch.get(i)) {
                let from = d
                    .from
                    .map(|f| SocketAddr::new(f.ip().to_canonical(), f.port()))
                    .filter(|from| role.accepts_from(*from));
                match (from, rotor_core::wire::unframe(d.data)) {
                    (Some(from), Some(message)) => {
                        if role.machine().classify(from, message) != Class::Costly {
                            handle(role, self.book, now, from, message);
                        } else if !self.costly.push(from, message) {
                            self.book.shed += 1;
                        }
                    }
                    (None, _) => *self.wrong_source += 1,
                    (Some(_), None) => self.book.unframed += 1,
                }
                taken += 1;
            }
            self.book.received += batch.len() as u64;
        }
        taken
    }
}

/// The sources whose datagrams the kernel queues on the priority socket:
/// every peer's IPv4 address, re-sent to the kernel when peers moved or a
/// reload changed them.
#[derive(Default)]
struct Steering {
    seen: Option<u64>,
    sources: Vec<std::net::Ipv4Addr>,
}

impl Steering {
    fn refresh<R: Role>(&mut self, role: &R, udp: &UdpSocket, on: bool, moves: u64) {
        if !on || self.seen == Some(moves) {
            return;
        }
        self.seen = Some(moves);
        let mut sources: Vec<std::net::Ipv4Addr> = (0..role.peer_count())
            .filter_map(|i| role.peer_addr(rotor_core::PeerId(u32::try_from(i).ok()?)))
            .filter_map(|a| match a.ip().to_canonical() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        sources.sort_unstable();
        sources.dedup();
        if sources.len() > rotor_sys::steer::MAX_SOURCES {
            // Too many for one program: one queue for all, as without.
            sources.clear();
        }
        if sources == self.sources && !sources.is_empty() {
            return;
        }
        match rotor_sys::steer::steer_sources(udp, &sources) {
            Ok(()) => {
                debug!(
                    sources = sources.len(),
                    "nodes at their addresses queue apart"
                );
                self.sources = sources;
            }
            Err(e) => warn!("the control socket's queue program: {e}; one queue for all"),
        }
    }
}

/// Feeds one datagram to the machine; a drop for an unknown SPI from a
/// peer's address is worth a warning (a wrong key, usually).
fn handle<R: Role>(role: &mut R, book: &mut Logbook, now: Now, from: SocketAddr, message: &[u8]) {
    let unknown = log::unknown_spis(role.machine());
    role.machine_mut().handle_datagram(now, from, message);
    if log::unknown_spis(role.machine()) != unknown {
        book.unknown_spi_from(role, from, now.mono);
    }
}

/// The costly datagrams of one burst, copied out of the receive buffers
/// (which the burst's next receive reuses): at most [`COSTLY_PER_BURST`],
/// in one buffer kept from burst to burst.
#[derive(Default)]
struct Deferred {
    data: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
}

impl Deferred {
    fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
    }

    /// Keeps `message` from `from`; `false` (nothing kept) once the burst's
    /// budget is spent, or [`COSTLY_PER_SOURCE`] from `from`'s address are
    /// kept: a sender with one address (even one that echoes cookies) gets
    /// a few of the burst's slots, never all.
    fn push(&mut self, from: SocketAddr, message: &[u8]) -> bool {
        if self.items.len() >= COSTLY_PER_BURST
            || self.items.iter().filter(|i| i.0.ip() == from.ip()).count() >= COSTLY_PER_SOURCE
        {
            return false;
        }
        let at = self.data.len();
        self.data.extend_from_slice(message);
        self.items.push((from, at, message.len()));
        true
    }

    fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.items
            .iter()
            .filter_map(|&(from, at, len)| Some((from, self.data.get(at..at + len)?)))
    }
}

/// Waits for address or route notifications and reads them all; whether
/// there were any. Never completes without a watch.
async fn read_routes(w: Option<&mut AsyncFd<RouteWatch>>) -> std::io::Result<bool> {
    let Some(w) = w else {
        return std::future::pending().await;
    };
    let mut guard = w.readable_mut().await?;
    let r = guard.get_inner_mut().drain();
    guard.clear_ready();
    r
}

/// Waits until the monitor has notifications and reads all of them into
/// `out`; never completes without a monitor.
async fn read_monitor(
    m: Option<&mut AsyncFd<Monitor>>,
    out: &mut Vec<KernelEvent>,
) -> std::io::Result<usize> {
    let Some(m) = m else {
        return std::future::pending().await;
    };
    let mut guard = m.readable_mut().await?;
    let r = guard.get_inner_mut().read_events(out);
    // read_events reads until the socket is empty: wait for the next edge.
    guard.clear_ready();
    r.map_err(std::io::Error::other)
}

/// Acts on the kernel's notifications: drift of rotor's objects (a
/// deletion or flush by someone else, a hard expiry, lost notifications)
/// asks for a reconcile pass (returned: when, and whether it is urgent: a
/// flush, repaired at once); a soft expiry means a rotation is overdue, so
/// the peer is rotated now.
fn on_kernel_events<R: Role>(
    role: &mut R,
    life: &Lifecycle,
    book: &mut Logbook,
    events: &[KernelEvent],
    now: Now,
) -> Option<(Time, bool)> {
    let mut drift = false;
    let mut flushed = false;
    let mut overdue: Vec<usize> = Vec::new();
    for e in events {
        match e {
            KernelEvent::SaExpired {
                reqid, hard: false, ..
            } => {
                // Both SAs of a generation expire together: one rotation.
                if let Some(&i) = life.reqids.get(reqid)
                    && !overdue.contains(&i)
                {
                    overdue.push(i);
                    if let Ok(p) = u32::try_from(i) {
                        book.rotation_overdue(role.names().get(rotor_core::PeerId(p)), now.mono);
                    }
                    role.rotate_overdue(now, i);
                }
            }
            KernelEvent::SaAdded { .. } | KernelEvent::PolicyAdded { .. } => {}
            // A flush is one notification, and until the pass every
            // protected packet is dropped (SAs) or sent in clear
            // (policies): no wait.
            KernelEvent::SaFlushed | KernelEvent::PolicyFlushed => flushed = true,
            _ => drift = true,
        }
    }
    if flushed {
        Some((now.mono, true))
    } else {
        drift.then(|| (now.mono.plus_ms(RECONCILE_DELAY_MS), false))
    }
}

/// The guard installed on its own thread; never completes without one
/// under way. `None`: the thread ended without answering.
async fn guard_ready(
    pending: Option<&mut oneshot::Receiver<(Guard, Result<usize, GuardError>)>>,
) -> Option<(Guard, Result<usize, GuardError>)> {
    match pending {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(wake: Option<tokio::time::Instant>) {
    match wake {
        Some(w) => tokio::time::sleep_until(w).await,
        None => std::future::pending().await,
    }
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Time>, b: Option<Time>) -> Option<Time> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Drains the machine's actions: the changed records to disk first, then
/// the kernel changes (one batch, with any due retries), then the
/// datagrams, then the log lines.
async fn execute<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &mut KernelExec<K>,
    udp: &UdpSocket,
    now: Now,
    life: &mut Lifecycle,
    actions: &mut Vec<Action>,
    book: &mut Logbook,
) -> Result<(), LoopError> {
    actions.clear();
    let mut start = 0;
    loop {
        while let Some(a) = role.machine_mut().poll_action() {
            actions.push(a);
        }
        // The records first: a kernel change or datagram of this step must
        // never be ahead of what a restart would find (a restart that believed
        // an outbound SA unused could re-add it with its old key).
        if let Some(p) = life.persist.as_mut()
            && let Err(e) = p.flush(role, now)
        {
            error!("writing the state: {e}; stopping (the kernel keeps the current keys)");
            return Err(e.into());
        }
        kernel.apply(now.mono, &actions[start..], role.names());
        // SAs an in-place move could not move are gone from the kernel:
        // the core repairs them (re-install, re-key) within this step.
        let unmoved = kernel.take_unmoved();
        if unmoved.is_empty() {
            break;
        }
        for (peer, lost) in unmoved {
            role.kernel_lost(now, peer.0 as usize, &lost);
        }
        start = actions.len();
    }
    if let Some(f) = life.before_first_send.take() {
        f().map_err(LoopError::BeforeFirstSend)?;
    }
    let guard = life.guard.as_mut();
    // Moved peers' new pairs are guarded once their policies (blocking
    // until the re-key) are in; the old ones are no longer theirs.
    let (add, del) = kernel.take_moved_pairs();
    if let Some(g) = guard
        && !(add.is_empty() && del.is_empty())
        && let Err(e) = g.change(&add, &del)
    {
        warn!("moving peers' pairs in the clear-text guard: {e}");
    }
    // A move applies to the whole step's datagrams: an init's reply is
    // queued before the move its acceptance causes.
    for a in actions.iter() {
        if let Action::PeerPath {
            peer,
            remote: Some(to),
            ..
        } = a
        {
            role.peer_moved(*peer, *to);
            book.moves += 1;
        }
    }
    let mut framed: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for a in actions.iter() {
        match a {
            Action::Send { peer, datagram } => {
                if let Some(to) = role.peer_addr(*peer) {
                    framed.push((to, rotor_core::wire::frame(datagram)));
                }
            }
            Action::Reply { to, datagram } => framed.push((*to, rotor_core::wire::frame(datagram))),
            Action::Event(e) => book.event(e, role.names(), R::NAME, now.mono),
            _ => {}
        }
    }
    let out: Vec<(SocketAddr, &[u8])> = framed.iter().map(|(a, d)| (*a, &d[..])).collect();
    if !out.is_empty() {
        let (_, refused) = udp_batch::send_many(udp, &out).await;
        book.sent += out.len().saturating_sub(refused) as u64;
        if refused > 0 {
            debug!(
                role = R::NAME,
                refused, "control datagrams the kernel refused to send"
            );
        }
    }
    Ok(())
}

/// Checks the clear-text guard against the peers' selectors and puts back
/// whatever is missing or wrong (someone's `iptables -F`, `ipset flush`).
fn check_guard<K: Kernel>(guard: Option<&mut Guard>, kernel: &KernelExec<K>) {
    let Some(g) = guard else { return };
    match g.repair(&kernel.guard_selectors()) {
        Ok(bad) if bad.is_empty() => {}
        Ok(bad) => warn!(
            "the clear-text guard had changed ({}): put back whole",
            bad.join("; ")
        ),
        Err(e) => error!("checking the clear-text guard: {e}"),
    }
}

/// Sorted `a` without the pairs in sorted `b`.
fn pairs_minus(
    a: &[(rotor_xfrm::IpNet, rotor_xfrm::IpNet)],
    b: &[(rotor_xfrm::IpNet, rotor_xfrm::IpNet)],
) -> Vec<(rotor_xfrm::IpNet, rotor_xfrm::IpNet)> {
    let key =
        |p: &(rotor_xfrm::IpNet, rotor_xfrm::IpNet)| (p.0.addr, p.0.prefix, p.1.addr, p.1.prefix);
    a.iter()
        .filter(|p| b.binary_search_by_key(&key(p), key).is_err())
        .copied()
        .collect()
}

/// The next SIGHUP; never without a handler.
async fn hangup(h: Option<&mut Signal>) -> Option<()> {
    match h {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}

/// Reloads the configuration (see [`super::reload`]): swaps in the rebuilt
/// role and kernel layout, rewrites the store from the new state (removed
/// peers' records go), and runs a reconcile pass (new peers' policies in,
/// removed peers' objects out, changed peers moved). SAs of generations in
/// their grace period stay until the next periodic pass.
fn reload<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &mut KernelExec<K>,
    life: &mut Lifecycle,
    now: Now,
) -> Result<ReloadReply, String> {
    let (new, peers, reply) = role.rebuild(now)?;
    // New peers' pairs are guarded before their policies go in; a guard
    // that cannot take them refuses the reload while nothing has changed.
    let key =
        |p: &(rotor_xfrm::IpNet, rotor_xfrm::IpNet)| (p.0.addr, p.0.prefix, p.1.addr, p.1.prefix);
    let mut old_pairs = kernel.guard_selectors();
    old_pairs.sort_unstable_by_key(key);
    let mut new_pairs: Vec<_> = peers.iter().flat_map(|p| p.outbound_selectors()).collect();
    new_pairs.sort_unstable_by_key(key);
    if let Some(g) = life.guard.as_mut() {
        g.change(&pairs_minus(&new_pairs, &old_pairs), &[])
            .map_err(|e| format!("the clear-text guard: {e}; nothing was changed"))?;
    }
    // Removed peers' records go first: if that fails nothing is swapped
    // (and the store refuses further writes: the daemon stops at its next
    // step, a restart resumes from what is durable).
    if let Some(p) = life.persist.as_mut() {
        p.remove(reply.removed.iter().map(String::as_str))
            .map_err(|e| format!("writing the state: {e}"))?;
    }
    let mut idx: Vec<(usize, u32)> = Vec::new();
    role.for_each_retiring(&mut |i, spi| idx.push((i, spi)));
    let retiring: Vec<(String, u32)> = idx
        .into_iter()
        .map(|(i, spi)| (role.record_key(i).to_string(), spi))
        .collect();
    // The neighbour-discovery bypass policies carry no reqid (no reconcile
    // pass finds them): those of pairs that are gone or moved go here.
    let old_bypass: Vec<(String, Vec<PolicyId>)> = (0..role.peer_count())
        .filter_map(|i| {
            let ids = kernel.peer(i)?.nd_bypass_ids();
            (!ids.is_empty()).then(|| (role.record_key(i).to_string(), ids))
        })
        .collect();
    *role = new;
    kernel.replace_peers(peers);
    life.reqids = (0..role.peer_count())
        .filter_map(|i| kernel.peer(i).map(|p| (p.reqid, i)))
        .collect();
    let index: HashMap<&str, usize> = (0..role.peer_count())
        .map(|i| (role.record_key(i), i))
        .collect();
    // Only this reload's: what an earlier one kept may belong to a peer
    // this one removes.
    life.linger.clear();
    let until = now.mono.plus_ms(LINGER_MS);
    for (name, spi) in retiring {
        let Some(&i) = index.get(name.as_str()) else {
            continue;
        };
        if let Some(pk) = kernel.peer(i) {
            life.linger.insert(pk.sa_id(SaDir::In, spi), until);
            life.linger.insert(pk.sa_id(SaDir::Out, spi), until);
        }
    }
    let mut gone: Vec<Op> = Vec::new();
    for (name, ids) in old_bypass {
        let now_ids = index
            .get(name.as_str())
            .and_then(|&i| kernel.peer(i))
            .map(|p| p.nd_bypass_ids())
            .unwrap_or_default();
        gone.extend(
            ids.into_iter()
                .filter(|id| !now_ids.contains(id))
                .map(Op::DeletePolicy),
        );
    }
    kernel.apply_plain(&gone);
    if let Some(p) = life.persist.as_mut()
        && let Err(e) = p.compact(role, now)
    {
        // The log still holds every record; removed peers' records are
        // dropped at the next start.
        warn!("rewriting the state after the reload: {e}");
    }
    let linger: HashSet<SaId> = life.linger.keys().copied().collect();
    if let Err(e) = reconcile::run(role, kernel, now, &linger) {
        warn!("reconcile after the reload: {e}");
    }
    // Removed pairs leave the guard once their policies are gone: until
    // then their traffic is dropped rather than sent in clear.
    if let Some(g) = life.guard.as_mut()
        && let Err(e) = g.change(&[], &pairs_minus(&old_pairs, &new_pairs))
    {
        warn!("removing the pairs of removed or changed peers from the clear-text guard: {e}");
    }
    Ok(reply)
}

/// Answers one control call from the machine's current state.
fn answer<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &KernelExec<K>,
    life: &mut Lifecycle,
    (wrong_source, book): (u64, &Logbook),
    now: Now,
    call: Call,
) {
    match call {
        Call::Reload { reply } => life.reloads.push(reply),
        Call::Status { from, reply } => {
            // The head goes out once, with the first page.
            let head = (from == 0).then(|| {
                let mut drops = drops_map(role.machine().drops());
                if wrong_source > 0 {
                    drops.insert("wrong_source".to_string(), wrong_source);
                }
                if book.unframed > 0 {
                    drops.insert("no_marker".to_string(), book.unframed);
                }
                if book.shed > 0 {
                    drops.insert("shed".to_string(), book.shed);
                }
                StatusHead {
                    role: R::NAME.to_string(),
                    drops,
                    kernel_errors: kernel.errors(),
                    kernel_retrying: kernel.pending() as u64,
                    control_received: book.received,
                    control_sent: book.sent,
                }
            });
            let end = role.peer_count().min(from.saturating_add(PAGE));
            let rows = (from..end)
                .filter_map(|i| {
                    let p = role.peer_status(i, now.mono)?;
                    Some(to_wire_status(
                        p,
                        kernel.pending_for(rotor_core::PeerId(i as u32)),
                        role.peer_path(i),
                    ))
                })
                .collect();
            // The connection may have gone: nothing to do then.
            let _ = reply.send((head, rows));
        }
        Call::Rotate { node, all, reply } => {
            let _ = reply.send(role.rotate(now, node.as_deref(), all));
        }
    }
}

fn drops_map(
    d: &std::collections::BTreeMap<DropReason, u64>,
) -> std::collections::BTreeMap<String, u64> {
    d.iter().map(|(k, v)| (k.name().to_string(), *v)).collect()
}

/// A peer whose kernel operations wait for a retry is not in sync,
/// whatever the protocol says: its SAs or policies are not (all) in the
/// kernel.
fn to_wire_status(
    p: rotor_core::PeerStatus,
    kernel_retrying: usize,
    path: Option<(SocketAddr, bool)>,
) -> control::PeerStatus {
    let state = if kernel_retrying > 0 {
        "kernel_pending".to_string()
    } else {
        p.state.as_str().to_string()
    };
    control::PeerStatus {
        name: p.name,
        generation: p.generation,
        tx_spi: p.tx_spi,
        rx_spis: p.rx_spis,
        state,
        rotations: p.rotations,
        resends: p.resends,
        inits: p.inits,
        last_seen_ms: p.last_seen_ms,
        kernel_retrying,
        key_age_ms: p.key_age_ms,
        endpoint: path.map(|(a, _)| a.to_string()),
        nat: path.is_some_and(|(_, nat)| nat),
    }
}
