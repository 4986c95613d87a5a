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

use std::net::SocketAddr;

use rotor_core::{Action, DropReason, Machine, Now, Time};
use rotor_xfrm::Kernel;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use super::clock::Clock;
use super::control_server::{Call, PAGE};
use super::kernel::KernelExec;
use super::log;
use super::role::Role;
use crate::control::{self, StatusHead};
use crate::udp_batch::{self, RecvBatch};

/// Most control datagrams taken in one step before acting on them: a burst
/// (hellos after `rotate --all`) is taken whole up to this, so its kernel
/// changes go in one netlink batch and its replies in few sendmmsg calls.
pub const MAX_BURST: usize = 1024;
/// Control calls answered per loop turn, beyond the one that woke it.
pub const CALLS_PER_TURN: usize = 8;

/// Runs `role` until `shutdown` completes. Kernel state is left as it is:
/// the caller decides what stopping means for it.
pub async fn run<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &mut KernelExec<K>,
    udp: &UdpSocket,
    calls: &mut mpsc::Receiver<Call>,
    clock: &Clock,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // With source addresses: a node sheds datagrams not from its hub.
    let mut batch = RecvBatch::with_addresses();
    let mut actions: Vec<Action> = Vec::new();
    // Datagrams shed for their source, shown with the machine's drops.
    let mut wrong_source: u64 = 0;
    loop {
        // The core's next timer, or a refused kernel operation's retry; an
        // early wake-up is harmless (only what is due fires).
        let wake =
            earliest(role.machine().poll_timeout(), kernel.retry_due()).map(|t| clock.instant(t));
        let mut full_burst = false;
        tokio::select! {
            _ = &mut shutdown => return,
            r = udp_batch::recv_many(udp, &mut batch) => {
                let mut more = r.is_ok();
                let mut taken = 0;
                while more {
                    // One clock read per receive call, not per datagram
                    // (without a vDSO each read is a system call).
                    let now = clock.now();
                    for d in (0..batch.len()).filter_map(|i| batch.get(i)) {
                        if d.from.is_some_and(|from| role.accepts_from(from)) {
                            role.machine_mut().handle_datagram(now, d.data);
                        } else {
                            wrong_source += 1;
                        }
                        taken += 1;
                    }
                    more = taken < MAX_BURST
                        && udp_batch::try_recv_many(udp, &mut batch).is_ok_and(|n| n > 0);
                }
                full_burst = taken >= MAX_BURST;
            }
            _ = sleep_until(wake) => {}
            Some(call) = calls.recv() => answer(role, kernel, wrong_source, clock.now(), call),
        }
        let now = clock.now();
        if role.machine().poll_timeout().is_some_and(|t| t <= now.mono) {
            role.machine_mut().handle_timeout(now);
        }
        for _ in 0..CALLS_PER_TURN {
            match calls.try_recv() {
                Ok(call) => answer(role, kernel, wrong_source, now, call),
                Err(_) => break,
            }
        }
        execute(role, kernel, udp, now.mono, &mut actions).await;
        if full_burst {
            tokio::task::yield_now().await;
        }
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

/// Drains the machine's actions: kernel changes first (one batch, with any
/// due retries), then the datagrams, then the log lines.
async fn execute<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &mut KernelExec<K>,
    udp: &UdpSocket,
    now: Time,
    actions: &mut Vec<Action>,
) {
    actions.clear();
    while let Some(a) = role.machine_mut().poll_action() {
        actions.push(a);
    }
    kernel.apply(now, actions, role.names());
    let mut out: Vec<(SocketAddr, &[u8])> = Vec::new();
    for a in actions.iter() {
        match a {
            Action::Send { peer, datagram } => {
                if let Some(to) = role.peer_addr(*peer) {
                    out.push((to, datagram));
                }
            }
            Action::Event(e) => log::event(e, role.names(), R::NAME),
            _ => {}
        }
    }
    if !out.is_empty() {
        let (_, refused) = udp_batch::send_many(udp, &out).await;
        if refused > 0 {
            debug!(
                role = R::NAME,
                refused, "control datagrams the kernel refused to send"
            );
        }
    }
}

/// Answers one control call from the machine's current state.
fn answer<R: Role, K: Kernel>(
    role: &mut R,
    kernel: &KernelExec<K>,
    wrong_source: u64,
    now: Now,
    call: Call,
) {
    match call {
        Call::Status { from, reply } => {
            // The head goes out once, with the first page.
            let head = (from == 0).then(|| {
                let mut drops = drops_map(role.machine().drops());
                if wrong_source > 0 {
                    drops.insert("wrong_source".to_string(), wrong_source);
                }
                StatusHead {
                    role: R::NAME.to_string(),
                    drops,
                    kernel_errors: kernel.errors(),
                }
            });
            let end = role.peer_count().min(from.saturating_add(PAGE));
            let rows = (from..end)
                .filter_map(|i| role.peer_status(i, now.mono))
                .map(to_wire_status)
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
