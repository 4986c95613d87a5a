//! Makes the kernel match the state: at start-up (adopting what a previous
//! run left, so a restart is hitless), after the kernel reports a change to
//! rotor's objects (a flush, a deletion, an expiry), and periodically.
//!
//! One pass dumps rotor's SAs and policies (its reqid range only: foreign
//! objects are never looked at, let alone touched), then per peer:
//! * SAs the state knows but the kernel lacks go to the core
//!   ([`Role::kernel_lost`]), which re-installs those it safely can and
//!   blocks and re-keys where re-installing would reuse a sending key;
//! * policies that are missing or name the wrong SPI are (re)written with
//!   atomic updates, outbound last, blocking when the core has no SA to send
//!   on: traffic is never sent in clear;
//! * owned SAs and policies no peer's state knows are deleted.
//!
//! A peer with kernel operations waiting for a retry is left alone: its
//! kernel state is in flux and the retry queue converges it.

use std::collections::{HashMap, HashSet};

use std::net::IpAddr;

use rotor_core::{KernelView, Now, PeerId, SaDir};
use rotor_xfrm::{Kernel, Mode, Op, PolicyId, SaId, XfrmError};
use tracing::{info, warn};

use super::kernel::KernelExec;
use super::role::Role;

/// What a policy comparison looks at: template SPI, reqid and mode, block,
/// priority.
type PolicyFields = (u32, u32, Option<Mode>, bool, u32);

/// Peers whose policies go to the kernel in one batch.
const CHUNK: usize = 1024;

/// What one pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// SAs the state knows that the kernel lacked (handed to the core).
    pub sas_lost: usize,
    /// Peers whose lost SAs the core repaired or re-keyed.
    pub peers_repaired: usize,
    /// Policies written because they were missing or wrong.
    pub policies_written: usize,
    /// Policies found as the state wants them and kept.
    pub policies_kept: usize,
    /// Owned SAs no state knows, deleted.
    pub stale_sas: usize,
    /// Owned policies no state knows, deleted.
    pub stale_policies: usize,
    /// Operations the kernel refused in this pass.
    pub refused: usize,
    /// Policies this pass created that did not exist before (for undoing a
    /// failed start).
    pub created: Vec<PolicyId>,
}

impl Report {
    /// Policies a previous run left that were taken over as they were.
    pub fn adopted(&self) -> usize {
        self.policies_kept
    }

    /// Whether the pass changed anything.
    pub fn changed(&self) -> bool {
        self.sas_lost + self.policies_written + self.stale_sas + self.stale_policies > 0
    }
}

/// One reconcile pass; SAs in `linger` are kept even if no state knows
/// them. `Err` only when the kernel could not be dumped (nothing was
/// changed then).
pub fn run<R: Role, K: Kernel>(
    role: &mut R,
    kx: &mut KernelExec<K>,
    now: Now,
    linger: &HashSet<SaId>,
) -> Result<Report, XfrmError> {
    let owned = kx.kernel_mut().dump_owned()?;
    let mut report = Report::default();
    // Per SA: (outer source, reqid, mode) as the kernel holds it.
    let have_sas: HashMap<SaId, (IpAddr, u32, Option<Mode>)> = owned
        .sas
        .iter()
        .map(|s| (s.id, (s.src, s.reqid, s.mode)))
        .collect();
    // Per policy: (template SPI, template reqid, template mode, block,
    // priority) as the kernel holds it.
    let have_policies: HashMap<PolicyId, PolicyFields> = owned
        .policies
        .iter()
        .filter_map(|p| {
            let (spi, reqid, mode) = p.templates.first().copied().unwrap_or((0, 0, None));
            p.id.map(|id| (id, (spi, reqid, mode, p.block, p.priority)))
        })
        .collect();
    let mut keep_sas: HashSet<SaId> = linger.clone();
    // Generations in their grace period stay until the machine deletes them.
    role.for_each_retiring(&mut |i, spi| {
        if let Some(pk) = kx.peer(i) {
            keep_sas.insert(pk.sa_id(SaDir::In, spi));
            keep_sas.insert(pk.sa_id(SaDir::Out, spi));
        }
    });
    let mut keep_policies: HashSet<PolicyId> = HashSet::with_capacity(have_policies.len());
    let mut lost: Vec<(SaDir, u32)> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    let peers = role.peer_count();
    let mut first = 0;
    while first < peers {
        let end = peers.min(first + CHUNK);
        ops.clear();
        for i in first..end {
            let Some(pk) = kx.peer(i).cloned() else {
                continue;
            };
            let peer = PeerId(i as u32);
            let Some(view) = role.kernel_view(i) else {
                continue;
            };
            lost.clear();
            for &(dir, spi) in &view.sas {
                let id = pk.sa_id(dir, spi);
                let want = (pk.sa_src(dir), pk.reqid, Some(pk.xfrm_mode()));
                match have_sas.get(&id) {
                    Some(h) if *h == want => {
                        keep_sas.insert(id);
                    }
                    // Missing, or another peer's layout under that id
                    // (deleted below as stale, re-installed after).
                    _ => lost.push((dir, spi)),
                }
            }
            if !lost.is_empty() {
                for &(dir, spi) in &lost {
                    kx.forget_add(peer, pk.sa_id(dir, spi));
                }
                report.sas_lost += lost.len();
                report.peers_repaired += 1;
                role.kernel_lost(now, i, &lost);
            }
            let busy = kx.has_pending(peer);
            // The core may have changed its outbound choice (blocked it).
            let view: KernelView = role.kernel_view(i).unwrap_or(view);
            for id in pk.nd_bypass_ids() {
                keep_policies.insert(id);
            }
            let mut wrote = false;
            let mut created_pair = false;
            for op in pk
                .inbound_policies()
                .into_iter()
                .chain(pk.set_outbound(view.outbound))
            {
                let Op::UpdatePolicy(spec) = &op else {
                    continue;
                };
                keep_policies.insert(spec.id);
                let want = (
                    spec.spi,
                    spec.reqid,
                    Some(spec.mode),
                    spec.block,
                    spec.priority,
                );
                match have_policies.get(&spec.id) {
                    Some(h) if *h == want => report.policies_kept += 1,
                    Some(_) if busy => {}
                    h => {
                        if h.is_none() {
                            report.created.push(spec.id);
                            created_pair = true;
                        }
                        wrote = true;
                        ops.push(op);
                    }
                }
            }
            // Policies of the pair went missing (a flush): the bypass of
            // neighbour discovery, which carries no reqid and so is not in
            // the dump, went with them.
            if wrote {
                ops.extend(pk.nd_bypass());
                if created_pair {
                    report.created.extend(pk.nd_bypass_ids());
                }
            }
        }
        report.policies_written += ops
            .iter()
            .filter(|o| matches!(o, Op::UpdatePolicy(_)))
            .count();
        report.refused += kx.apply_plain(&ops);
        first = end;
    }
    ops.clear();
    for p in &owned.policies {
        if let Some(id) = p.id
            && !keep_policies.contains(&id)
        {
            ops.push(Op::DeletePolicy(id));
            report.stale_policies += 1;
        }
    }
    for s in &owned.sas {
        if !keep_sas.contains(&s.id) {
            ops.push(Op::DeleteSa(s.id));
            report.stale_sas += 1;
        }
    }
    for chunk in ops.chunks(CHUNK * 4) {
        report.refused += kx.apply_plain(chunk);
    }
    if report.changed() {
        info!(
            sas_lost = report.sas_lost,
            peers_repaired = report.peers_repaired,
            policies_written = report.policies_written,
            stale_sas = report.stale_sas,
            stale_policies = report.stale_policies,
            refused = report.refused,
            "reconciled the kernel with the state"
        );
    }
    if report.refused > 0 {
        warn!(
            refused = report.refused,
            "the kernel refused reconcile operations"
        );
    }
    Ok(report)
}

/// Deletes the policies a failed start created, leaving the kernel as the
/// start found it.
pub fn undo<K: Kernel>(kx: &mut KernelExec<K>, created: &[PolicyId]) {
    let ops: Vec<Op> = created.iter().map(|id| Op::DeletePolicy(*id)).collect();
    for chunk in ops.chunks(CHUNK * 4) {
        if kx.apply_plain(chunk) > 0 {
            warn!("could not remove every policy a failed start created");
        }
    }
}
