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

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Instant;

use rotor_core::{Now, PeerId, SaDir};
use rotor_xfrm::{
    Kernel, Mode, Op, OwnedObjects, PolicyDir, PolicyId, PolicyInfo, SaId, SaInfo, XfrmError,
};

use crate::peer_kernel::PeerKernel;
use tracing::{debug, info, warn};

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

    /// Logs what a start-up's pass took over and did (`while_serving`: a
    /// restart's pass, run from the loop after the daemon began to answer).
    pub fn log_adopted(&self, while_serving: bool) {
        info!(
            adopted_policies = self.adopted(),
            created_policies = self.created.len(),
            lost_sas = self.sas_lost,
            stale_sas = self.stale_sas,
            stale_policies = self.stale_policies,
            refused = self.refused,
            while_serving,
            "kernel state adopted"
        );
    }

    /// Whether the pass changed anything.
    pub fn changed(&self) -> bool {
        self.sas_lost + self.policies_written + self.stale_sas + self.stale_policies > 0
    }
}

/// A total order on policy ids, for finding them in the sorted dump.
type PolicyKey = (u8, IpAddr, u8, IpAddr, u8, Option<u8>, Option<u16>);

fn policy_key(id: &PolicyId) -> PolicyKey {
    let dir = match id.dir {
        PolicyDir::In => 0,
        PolicyDir::Out => 1,
        PolicyDir::Fwd => 2,
    };
    let s = &id.selector;
    (
        dir,
        s.src.addr,
        s.src.prefix,
        s.dst.addr,
        s.dst.prefix,
        s.proto,
        s.sport,
    )
}

/// The dump, sorted so that lookups need no index beside it: at 100,000
/// peers it holds 400,000 SAs and 200,000 policies, and maps or sets of
/// them would be tens of MB of fresh pages per pass (page faults are what
/// UML makes most expensive). `keep_*` mark what some state still wants.
struct Dumped {
    sas: Vec<SaInfo>,
    policies: Vec<PolicyInfo>,
    keep_sas: Vec<bool>,
    keep_policies: Vec<bool>,
}

impl Dumped {
    fn new(mut owned: OwnedObjects) -> Dumped {
        owned.sas.sort_unstable_by_key(|s| (s.id.dst, s.id.spi));
        owned
            .policies
            .sort_unstable_by_key(|p| p.id.as_ref().map(policy_key));
        Dumped {
            keep_sas: vec![false; owned.sas.len()],
            keep_policies: vec![false; owned.policies.len()],
            sas: owned.sas,
            policies: owned.policies,
        }
    }

    fn sa(&self, id: &SaId) -> Option<usize> {
        self.sas
            .binary_search_by_key(&(id.dst, id.spi), |s| (s.id.dst, s.id.spi))
            .ok()
    }

    fn keep_sa(&mut self, id: &SaId) {
        if let Some(i) = self.sa(id) {
            self.keep_sas[i] = true;
        }
    }

    /// Keeps every dumped object of the peers `skipped`: those of their
    /// reqids (`reqids`, sorted) in one sweep of the dump, whatever the
    /// number of peers, and their policies by id (a blocking policy
    /// carries no template, so no reqid).
    fn keep_peers<'a>(&mut self, reqids: &[u32], skipped: impl Iterator<Item = &'a PeerKernel>) {
        let has = |q: u32| reqids.binary_search(&q).is_ok();
        for (s, keep) in self.sas.iter().zip(self.keep_sas.iter_mut()) {
            *keep |= has(s.reqid);
        }
        for (p, keep) in self.policies.iter().zip(self.keep_policies.iter_mut()) {
            *keep |= p.templates.iter().any(|t| has(t.1));
        }
        for pk in skipped {
            for op in pk
                .inbound_policies()
                .into_iter()
                .chain(pk.set_outbound(None))
            {
                if let Op::UpdatePolicy(spec) = &op
                    && let Some(k) = self.policy(&spec.id)
                {
                    self.keep_policies[k] = true;
                }
            }
        }
    }

    fn policy(&self, id: &PolicyId) -> Option<usize> {
        let key = Some(policy_key(id));
        self.policies
            .binary_search_by_key(&key, |p| p.id.as_ref().map(policy_key))
            .ok()
    }

    /// What a policy comparison looks at, as the kernel holds it.
    fn policy_fields(&self, i: usize) -> PolicyFields {
        let p = &self.policies[i];
        let (spi, reqid, mode) = p.templates.first().copied().unwrap_or((0, 0, None));
        (spi, reqid, mode, p.block, p.priority)
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
    let t0 = Instant::now();
    let owned = kx.kernel_mut().dump_owned()?;
    Ok(compare(role, kx, now, linger, owned, None, t0))
}

/// A dump taken on another thread ([`Kernel::dumper`]) since `mark`
/// ([`KernelExec::mark`]), for [`finish`].
pub struct Taken {
    /// What the kernel held.
    pub owned: Result<OwnedObjects, XfrmError>,
    /// The mark taken before the dump began.
    pub mark: u32,
    /// When the dump began.
    pub began: Instant,
}

/// Starts a pass whose dump runs on a thread of its own, so the loop keeps
/// serving while a large kernel is read; `done` is called there with the
/// dump, which [`finish`] then compares. `Err` if the dump could not be
/// started (nothing was changed).
pub fn begin<K: Kernel>(
    kx: &mut KernelExec<K>,
    done: impl FnOnce(Taken) + Send + 'static,
) -> Result<(), XfrmError> {
    let began = Instant::now();
    let dumper = kx.kernel_mut().dumper()?;
    let mark = kx.mark();
    std::thread::Builder::new()
        .name("rotor-dump".into())
        .spawn(move || {
            done(Taken {
                owned: dumper(),
                mark,
                began,
            })
        })
        .map(|_| ())
        .map_err(|source| XfrmError::Io {
            context: "starting the dump thread".into(),
            source,
        })
}

/// The second half of a pass begun with [`begin`]: compares and repairs
/// like [`run`], except for peers whose objects our own operations changed
/// while the dump ran (their part of the dump may be stale; their objects
/// are kept and the next pass looks at them).
pub fn finish<R: Role, K: Kernel>(
    role: &mut R,
    kx: &mut KernelExec<K>,
    now: Now,
    linger: &HashSet<SaId>,
    taken: Taken,
) -> Result<Report, XfrmError> {
    if kx.replaced_since(taken.mark) {
        // The reload that replaced the layout ran a pass of its own.
        debug!("reconcile: a dump of the layout before a reload, dropped");
        return Ok(Report::default());
    }
    let owned = taken.owned?;
    Ok(compare(
        role,
        kx,
        now,
        linger,
        owned,
        Some(taken.mark),
        taken.began,
    ))
}

/// Compares `owned`, dumped since `t0`, with the state and repairs; with
/// `since`, peers touched since that mark are left alone.
fn compare<R: Role, K: Kernel>(
    role: &mut R,
    kx: &mut KernelExec<K>,
    now: Now,
    linger: &HashSet<SaId>,
    owned: OwnedObjects,
    since: Option<u32>,
    t0: Instant,
) -> Report {
    let dumped_ms = t0.elapsed().as_millis();
    let mut d = Dumped::new(owned);
    let mut report = Report::default();
    for id in linger {
        d.keep_sa(id);
    }
    // Peers our own operations changed while the dump ran: left alone.
    let skip: Vec<bool> = match since {
        Some(m) => (0..role.peer_count())
            .map(|i| kx.touched_since(i, m))
            .collect(),
        None => Vec::new(),
    };
    let skipped = skip.iter().filter(|&&s| s).count();
    if skipped > 0 {
        let skipped_peers = || {
            skip.iter()
                .enumerate()
                .filter(|(_, s)| **s)
                .filter_map(|(i, _)| kx.peer(i))
        };
        let mut reqids: Vec<u32> = skipped_peers().map(|p| p.reqid).collect();
        reqids.sort_unstable();
        d.keep_peers(&reqids, skipped_peers());
    }
    // Generations in their grace period stay until the machine deletes them.
    role.for_each_retiring(&mut |i, spi| {
        if let Some(pk) = kx.peer(i) {
            d.keep_sa(&pk.sa_id(SaDir::In, spi));
            d.keep_sa(&pk.sa_id(SaDir::Out, spi));
        }
    });
    let indexed_ms = t0.elapsed().as_millis();
    let mut lost: Vec<(SaDir, u32)> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    let peers = role.peer_count();
    let mut first = 0;
    while first < peers {
        let end = peers.min(first + CHUNK);
        ops.clear();
        for i in first..end {
            let peer = PeerId(i as u32);
            if skip.get(i).copied().unwrap_or(false) {
                continue;
            }
            let Some(mut view) = role.kernel_view(i) else {
                continue;
            };
            let Some(pk) = kx.peer(i) else {
                continue;
            };
            lost.clear();
            for &(dir, spi) in &view.sas {
                let id = pk.sa_id(dir, spi);
                let want = (pk.sa_src(dir), pk.reqid, Some(pk.xfrm_mode()));
                match d.sa(&id) {
                    Some(k) if (d.sas[k].src, d.sas[k].reqid, d.sas[k].mode) == want => {
                        d.keep_sas[k] = true;
                    }
                    // Missing, or another peer's layout under that id
                    // (deleted below as stale, re-installed after).
                    _ => lost.push((dir, spi)),
                }
            }
            if !lost.is_empty() {
                let ids: Vec<SaId> = lost.iter().map(|&(dir, spi)| pk.sa_id(dir, spi)).collect();
                for id in ids {
                    kx.forget_add(peer, id);
                }
                report.sas_lost += lost.len();
                report.peers_repaired += 1;
                role.kernel_lost(now, i, &lost);
                // The core may have changed its outbound choice (blocked it).
                view = role.kernel_view(i).unwrap_or(view);
            }
            let busy = kx.has_pending(peer);
            let Some(pk) = kx.peer(i) else {
                continue;
            };
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
                let want = (
                    spec.spi,
                    spec.reqid,
                    Some(spec.mode),
                    spec.block,
                    spec.priority,
                );
                let found = d.policy(&spec.id);
                if let Some(k) = found {
                    d.keep_policies[k] = true;
                }
                match found.map(|k| d.policy_fields(k)) {
                    Some(h) if h == want => report.policies_kept += 1,
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
    let compared_ms = t0.elapsed().as_millis();
    ops.clear();
    for (p, keep) in d.policies.iter().zip(&d.keep_policies) {
        if let Some(id) = p.id
            && !keep
        {
            ops.push(Op::DeletePolicy(id));
            report.stale_policies += 1;
        }
    }
    for (s, keep) in d.sas.iter().zip(&d.keep_sas) {
        if !keep {
            ops.push(Op::DeleteSa(s.id));
            report.stale_sas += 1;
        }
    }
    for chunk in ops.chunks(CHUNK * 4) {
        report.refused += kx.apply_plain(chunk);
    }
    debug!(
        sas = d.sas.len(),
        policies = d.policies.len(),
        dumped_ms,
        indexed_ms,
        compared_ms,
        skipped,
        ms = t0.elapsed().as_millis() as u64,
        "reconcile pass"
    );
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
    report
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
