//! Executes the kernel part of the core's actions through a [`Kernel`]:
//! one batch per step, in the core's order (inbound SAs exist before
//! anything is sent on them), with refused operations kept in a
//! [`RetryQueue`] until the kernel takes them.

use rotor_core::{Action, NameTable, PeerId, Time};
use rotor_xfrm::{Kernel, Op, OpResult};
use tracing::{info, warn};

use super::retry::RetryQueue;
use crate::peer_kernel::PeerKernel;

/// Start-up installs policies this many peers at a time, so 100,000 peers'
/// policies never sit in memory (and in netlink buffers) at once.
const START_CHUNK: usize = 1024;

/// The kernel side of a daemon: its peers' layout and what the kernel
/// refused.
pub struct KernelExec<K: Kernel> {
    kernel: K,
    peers: Vec<PeerKernel>,
    errors: u64,
    retry: RetryQueue,
}

impl<K: Kernel> KernelExec<K> {
    /// Drives `kernel` for `peers` (indexed by [`PeerId`]).
    pub fn new(kernel: K, peers: Vec<PeerKernel>) -> Self {
        KernelExec {
            kernel,
            peers,
            errors: 0,
            retry: RetryQueue::default(),
        }
    }

    /// Kernel operations refused so far (each retry that fails counts).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Operations waiting to be retried.
    pub fn pending(&self) -> usize {
        self.retry.len()
    }

    /// When the earliest refused operation is due again.
    pub fn retry_due(&self) -> Option<Time> {
        self.retry.next_due()
    }

    /// Removes leftovers of a previous run, then sets every peer up fail
    /// closed: inbound policies, and an outbound policy that blocks until
    /// the first key. On failure the policies that went in are removed
    /// again: nothing is left half-installed.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let r = self.kernel.remove_owned().map_err(|e| {
            anyhow::anyhow!("removing SAs and policies left by an earlier run: {e}")
        })?;
        if r.sas + r.policies > 0 {
            info!(
                sas = r.sas,
                policies = r.policies,
                "removed state left by an earlier run"
            );
        }
        if let Err(e) = self.install_policies() {
            self.remove_all();
            return Err(e);
        }
        Ok(())
    }

    fn install_policies(&mut self) -> anyhow::Result<()> {
        for chunk in self.peers.chunks(START_CHUNK) {
            let mut ops = Vec::new();
            for p in chunk {
                ops.extend(p.nd_bypass());
                ops.extend(p.inbound_policies());
                ops.extend(p.set_outbound(None));
            }
            let results = self
                .kernel
                .apply(&ops)
                .map_err(|e| anyhow::anyhow!("installing policies: {e}"))?;
            for (op, r) in ops.iter().zip(results) {
                if !r.is_done() {
                    anyhow::bail!("installing policies: {}", describe(op, &r));
                }
            }
        }
        Ok(())
    }

    /// Applies the kernel part of `actions` in one batch, preceded by the
    /// refused operations of the same peers (and any that are due). Failures
    /// are logged with the peer, the errno and the kernel's text, counted,
    /// and queued for retry; one peer's failure never stops another's
    /// operations.
    pub fn apply(&mut self, now: Time, actions: &[Action], names: &NameTable) {
        let mut new: Vec<(PeerId, Op)> = Vec::new();
        for a in actions {
            let Some(peer) = action_peer(a) else { continue };
            let Some(p) = self.peers.get(peer.0 as usize) else {
                self.errors += 1;
                warn!(
                    peer = peer.0,
                    "kernel action for a peer with no kernel layout"
                );
                continue;
            };
            if p.ops_for(a, |op| new.push((peer, op))).is_err() {
                self.errors += 1;
                warn!(
                    peer = names.get(peer),
                    "the core produced an unusable ESP key"
                );
            }
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
        let results = match self.kernel.apply(&ops) {
            Ok(r) => r,
            Err(e) => {
                warn!("netlink batch of {} operations failed: {e}", ops.len());
                vec![OpResult::Unknown; ops.len()]
            }
        };
        for (((peer, attempts), op), r) in who.into_iter().zip(ops).zip(results) {
            if r.is_settled(&op, attempts > 0) {
                if attempts > 0 {
                    info!(
                        peer = names.get(peer),
                        attempts, "kernel accepted on retry: {op}"
                    );
                }
                continue;
            }
            self.errors += 1;
            let errno = match &r {
                OpResult::Failed(e) => e.errno,
                _ => 0,
            };
            let why = describe(&op, &r);
            let p = self.retry.failed(now, peer, op, attempts);
            warn!(
                peer = names.get(peer),
                errno,
                attempt = p.attempts,
                retry_in_ms = p.due.since(now),
                "kernel refused: {why}"
            );
        }
    }

    /// Removes everything this daemon installed: the neighbour-discovery
    /// bypass policies (which carry no reqid) by id, then every SA and
    /// policy of rotor's reqid range.
    pub fn remove_all(&mut self) {
        let ops: Vec<Op> = self
            .peers
            .iter()
            .flat_map(|p| p.nd_bypass_ids())
            .map(Op::DeletePolicy)
            .collect();
        if !ops.is_empty() {
            match self.kernel.apply(&ops) {
                Ok(results) => {
                    for (op, r) in ops.iter().zip(results) {
                        if !r.is_settled(op, false) {
                            warn!("{}", describe(op, &r));
                        }
                    }
                }
                Err(e) => warn!("removing the neighbour-discovery bypass policies: {e}"),
            }
        }
        match self.kernel.remove_owned() {
            Ok(r) => info!(
                sas = r.sas,
                policies = r.policies,
                "removed rotor's SAs and policies"
            ),
            Err(e) => warn!("removing rotor's SAs and policies: {e}"),
        }
    }
}

/// The peer a kernel action is for; `None` for sends and events.
fn action_peer(a: &Action) -> Option<PeerId> {
    match a {
        Action::InstallSa { peer, .. }
        | Action::SetOutbound { peer, .. }
        | Action::DeleteSa { peer, .. } => Some(*peer),
        Action::Send { .. } | Action::Event(_) => None,
    }
}

/// One line for an operation's result, naming the operation: the kernel's
/// errno and text, or why it was not sent, or that its reply was lost.
fn describe(op: &Op, r: &OpResult) -> String {
    match r {
        OpResult::Done => format!("{op}: done"),
        OpResult::Failed(e) => e.to_string(),
        OpResult::Invalid(e) => format!("{op}: not sent: {e}"),
        OpResult::Unknown => format!("{op}: the kernel's reply was lost (outcome unknown)"),
    }
}
