//! Executes the kernel part of the core's actions through a [`Kernel`]:
//! one batch per step, in the core's order (inbound SAs exist before
//! anything is sent on them), with refused operations kept in a
//! [`RetryQueue`] until the kernel takes them.

use rotor_core::{Action, NameTable, PeerId, SaDir, Time};
use rotor_xfrm::{IpNet, Kernel, Op, OpResult, RemoveReport, SaId, SaMigrate, XfrmError};
use tracing::{debug, info, warn};

use super::peer_warn::{PeerWarnings, Trouble};
use super::retry::RetryQueue;
use crate::peer_kernel::PeerKernel;

/// Selector pairs (source, destination prefix).
pub type Pairs = Vec<(IpNet, IpNet)>;

/// The kernel side of a daemon: its peers' layout and what the kernel
/// refused.
pub struct KernelExec<K: Kernel> {
    kernel: K,
    peers: Vec<PeerKernel>,
    errors: u64,
    retry: RetryQueue,
    /// Refusals are warned about once a minute per peer: a kernel that
    /// refuses every SA of a large hub must not write a line per attempt.
    warnings: PeerWarnings,
    /// Selector pairs that path changes added and removed, for the
    /// clear-text guard ([`Self::take_moved_pairs`]).
    moved_pairs: (Pairs, Pairs),
    /// Peers whose SAs the kernel would not move in place, with the SAs
    /// now removed ([`Self::take_unmoved`]).
    unmoved: Vec<(PeerId, Vec<(SaDir, u32)>)>,
    /// Counts [`Self::mark`]s: what a dump taken at a mark can be trusted
    /// for ([`Self::touched_since`]).
    epoch: u32,
    /// Per peer, the epoch of its last kernel operation.
    touched: Vec<u32>,
    /// The epoch of the last [`Self::replace_peers`]: a dump marked before
    /// it describes another layout.
    replaced: u32,
}

/// One peer's in-place move within a batch: its SAs, where they were and
/// where they go, to remove them on both paths if a migration fails (or
/// one SA whose update in place failed).
struct InPlace {
    /// A migration of the peer's SAs, not an update of one SA.
    migration: bool,
    peer: PeerId,
    old_sas: Vec<(SaDir, u32)>,
    ids: Vec<SaId>,
    failed: bool,
}

impl<K: Kernel> KernelExec<K> {
    /// Drives `kernel` for `peers` (indexed by [`PeerId`]).
    pub fn new(kernel: K, peers: Vec<PeerKernel>) -> Self {
        KernelExec {
            kernel,
            peers,
            errors: 0,
            retry: RetryQueue::default(),
            warnings: PeerWarnings::default(),
            moved_pairs: (Vec::new(), Vec::new()),
            unmoved: Vec::new(),
            epoch: 0,
            touched: Vec::new(),
            replaced: 0,
        }
    }

    /// A mark for a dump about to be taken on another thread: a peer whose
    /// operations went to the kernel after it may or may not show them in
    /// that dump ([`Self::touched_since`]).
    pub fn mark(&mut self) -> u32 {
        // Four billion passes: decades at five a second.
        self.epoch = self.epoch.saturating_add(1);
        self.epoch
    }

    /// Whether peer `index`'s kernel objects may have changed by our own
    /// operations since `mark` (or the layout was replaced): a dump taken
    /// at `mark` says nothing certain about them.
    pub fn touched_since(&self, index: usize, mark: u32) -> bool {
        self.replaced >= mark || self.touched.get(index).is_some_and(|&t| t >= mark)
    }

    /// Whether the peers' layout was replaced (a reload) since `mark`: a
    /// dump taken at `mark` then describes another layout.
    pub fn replaced_since(&self, mark: u32) -> bool {
        self.replaced >= mark
    }

    fn touch(&mut self, peer: PeerId) {
        let i = peer.0 as usize;
        if self.touched.len() <= i {
            self.touched.resize(i + 1, 0);
        }
        self.touched[i] = self.epoch;
    }

    /// The peers whose SAs an in-place move could not move, each with the
    /// SAs it had (all removed from the kernel): the caller reports them
    /// lost to the core (`kernel_lost`), which re-installs or re-keys them.
    pub fn take_unmoved(&mut self) -> Vec<(PeerId, Vec<(SaDir, u32)>)> {
        std::mem::take(&mut self.unmoved)
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

    /// The kernel handle.
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// Replaces the peers' layout (a reload); refused operations waiting
    /// for a retry are dropped (they name peers by their old index): the
    /// reconcile pass that follows a reload finds whatever is still wrong.
    pub fn replace_peers(&mut self, peers: Vec<PeerKernel>) {
        self.peers = peers;
        self.retry = RetryQueue::default();
        self.touched.clear();
        self.replaced = self.epoch;
    }

    /// Every peer's outbound selector pairs (what the clear-text guard
    /// covers), in peer order.
    pub fn guard_selectors(&self) -> Vec<(rotor_xfrm::IpNet, rotor_xfrm::IpNet)> {
        self.peers
            .iter()
            .flat_map(|p| p.outbound_selectors())
            .collect()
    }

    /// The selector pairs path changes added and removed since the last
    /// call.
    pub fn take_moved_pairs(&mut self) -> (Pairs, Pairs) {
        std::mem::take(&mut self.moved_pairs)
    }

    /// Kernel layout of peer `index`.
    pub fn peer(&self, index: usize) -> Option<&PeerKernel> {
        self.peers.get(index)
    }

    /// Drops `peer`'s refused add of SA `id` waiting for a retry (see
    /// [`RetryQueue::forget_add`]).
    pub fn forget_add(&mut self, peer: PeerId, id: rotor_xfrm::SaId) {
        self.retry.forget_add(peer, id);
    }

    /// Whether `peer` has refused operations waiting for a retry.
    pub fn has_pending(&self, peer: PeerId) -> bool {
        self.retry.has(peer)
    }

    /// How many of `peer`'s refused operations wait for a retry.
    pub fn pending_for(&self, peer: PeerId) -> usize {
        self.retry.count(peer)
    }

    /// Applies `ops` that belong to no action (reconcile, start-up): each
    /// refusal is logged with the kernel's errno and text and counted; none
    /// is queued (the next reconcile pass finds what is still wrong).
    /// Returns how many were refused.
    pub fn apply_plain(&mut self, ops: &[Op]) -> usize {
        if ops.is_empty() {
            return 0;
        }
        let results = match self.kernel.apply(ops) {
            Ok(r) => r,
            Err(e) => {
                warn!("netlink batch of {} operations failed: {e}", ops.len());
                vec![OpResult::Unknown; ops.len()]
            }
        };
        let mut refused = 0;
        for (op, r) in ops.iter().zip(results) {
            if !r.is_settled(op, false) {
                refused += 1;
                warn!("kernel refused: {}", describe(op, &r));
            }
        }
        self.errors += refused as u64;
        refused
    }

    /// Applies the kernel part of `actions` in one batch, preceded by the
    /// refused operations of the same peers (and any that are due). Failures
    /// are counted and queued for retry, and logged with the peer, the errno
    /// and the kernel's text: as a warning at most once a minute per peer
    /// (with the number held back since), at debug otherwise. One peer's
    /// failure never stops another's operations.
    pub fn apply(&mut self, now: Time, actions: &[Action], names: &NameTable) {
        let mut new: Vec<(PeerId, Op)> = Vec::new();
        let mut in_place: Vec<InPlace> = Vec::new();
        for a in actions {
            if let Action::PeerPath {
                peer,
                remote,
                local,
                nat,
                old_sas,
                in_place: moving,
            } = a
            {
                // In order: the actions after it (re-installs) go to the
                // new path.
                let Some(p) = self.peers.get_mut(peer.0 as usize) else {
                    continue;
                };
                let to = p.moved(*remote, *local, *nat);
                if *moving && p.known() && to.known() {
                    let mut ids = Vec::new();
                    for &(dir, spi) in old_sas {
                        for id in [p.sa_id(dir, spi), to.sa_id(dir, spi)] {
                            if !ids.contains(&id) {
                                ids.push(id);
                            }
                        }
                    }
                    in_place.push(InPlace {
                        migration: true,
                        peer: *peer,
                        old_sas: old_sas.clone(),
                        ids,
                        failed: false,
                    });
                    new.extend(
                        p.migrate_ops(&to, old_sas)
                            .into_iter()
                            .map(|op| (*peer, op)),
                    );
                } else {
                    new.extend(p.move_ops(&to, old_sas).into_iter().map(|op| (*peer, op)));
                    if *moving && p.known() {
                        // Nothing to move to: what move_ops removes, the
                        // core must repair.
                        self.unmoved.push((*peer, old_sas.clone()));
                    }
                }
                let (old_pairs, new_pairs) = (p.outbound_selectors(), to.outbound_selectors());
                if old_pairs != new_pairs {
                    self.moved_pairs.0.extend(new_pairs);
                    self.moved_pairs.1.extend(old_pairs);
                }
                *p = to;
                // What waits for a retry names the old path.
                self.retry.forget_peer(*peer);
                continue;
            }
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
        for &(peer, _) in &who {
            self.touch(peer);
        }
        let results = match self.kernel.apply(&ops) {
            Ok(r) => r,
            Err(e) => {
                warn!("netlink batch of {} operations failed: {e}", ops.len());
                vec![OpResult::Unknown; ops.len()]
            }
        };
        for (((peer, attempts), op), r) in who.into_iter().zip(ops).zip(results) {
            if let OpResult::Foreign { .. } = r {
                warn!(peer = names.get(peer), "{}", describe(&op, &r));
            }
            if let Op::MigrateSa(m) = &op {
                // Never retried: the SAs are removed and repaired instead.
                if !r.is_done() {
                    self.errors += 1;
                    migration_refused(&mut in_place, peer, m, &r, names);
                }
                continue;
            }
            if let Op::UpdateSa(s) = &op {
                // Never retried: the SA is removed and repaired instead.
                if !r.is_done() {
                    self.errors += 1;
                    warn!(
                        peer = names.get(peer),
                        errno = errno_of(&r),
                        "updating an SA in place failed, re-adding it: {}",
                        describe(&op, &r)
                    );
                    let dir = match self.peers.get(peer.0 as usize) {
                        Some(p) if p.local == s.dst => SaDir::In,
                        _ => SaDir::Out,
                    };
                    let id = SaId {
                        dst: s.dst,
                        spi: s.spi,
                    };
                    in_place.push(InPlace {
                        migration: false,
                        peer,
                        old_sas: vec![(dir, s.spi)],
                        ids: vec![id],
                        failed: true,
                    });
                }
                continue;
            }
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
            let name = names.get(peer);
            if let Some(held) = self.warnings.allow(name, Trouble::KernelRefused, now) {
                warn!(
                    peer = name,
                    errno,
                    attempt = p.attempts,
                    retry_in_ms = p.due.since(now),
                    suppressed = held,
                    "kernel refused: {why}"
                );
            } else {
                debug!(
                    peer = name,
                    errno,
                    attempt = p.attempts,
                    retry_in_ms = p.due.since(now),
                    "kernel refused: {why}"
                );
            }
        }
        self.fall_back(in_place);
    }

    /// Removes, on both paths, every SA of the peers whose in-place move
    /// failed, and keeps them for [`Self::take_unmoved`]: which SA a
    /// failed migration left behind cannot be told (the kernel picks by
    /// addresses), so the whole move falls back to re-adding.
    fn fall_back(&mut self, in_place: Vec<InPlace>) {
        let failed: Vec<InPlace> = in_place.into_iter().filter(|m| m.failed).collect();
        if failed.is_empty() {
            return;
        }
        let ops: Vec<Op> = failed
            .iter()
            .flat_map(|m| m.ids.iter().map(|id| Op::DeleteSa(*id)))
            .collect();
        for m in &failed {
            self.touch(m.peer);
        }
        self.apply_plain(&ops);
        self.unmoved
            .extend(failed.into_iter().map(|m| (m.peer, m.old_sas)));
    }

    /// Removes everything this daemon installed: the neighbour-discovery
    /// bypass policies (which carry no reqid) by id, then every SA and
    /// policy of its reqid range.
    pub fn remove_all(&mut self) -> Result<RemoveReport, XfrmError> {
        let ops: Vec<Op> = self
            .peers
            .iter()
            .flat_map(|p| p.nd_bypass_ids())
            .map(Op::DeletePolicy)
            .collect();
        for chunk in ops.chunks(4096) {
            let results = self.kernel.apply(chunk)?;
            for (op, r) in chunk.iter().zip(results) {
                if !r.is_settled(op, false) {
                    warn!("{}", describe(op, &r));
                }
            }
        }
        let r = self.kernel.remove_owned()?;
        info!(
            sas = r.sas,
            policies = r.policies,
            "removed rotor's SAs and policies"
        );
        Ok(r)
    }
}

/// Marks `peer`'s in-place move failed and says why, with the kernel's
/// errno: a kernel without `CONFIG_XFRM_MIGRATE` answers ENOPROTOOPT.
fn migration_refused(
    moves: &mut [InPlace],
    peer: PeerId,
    m: &SaMigrate,
    r: &OpResult,
    names: &NameTable,
) {
    warn!(
        peer = names.get(peer),
        errno = errno_of(r),
        "moving the SAs in place failed, re-adding them on the new path: {}",
        describe(&Op::MigrateSa(*m), r)
    );
    if let Some(mv) = moves
        .iter_mut()
        .rev()
        .find(|mv| mv.migration && mv.peer == peer)
    {
        mv.failed = true;
    }
}

/// The kernel's errno in `r`, 0 if it has none.
fn errno_of(r: &OpResult) -> i32 {
    match r {
        OpResult::Failed(e) => e.errno,
        _ => 0,
    }
}

/// The peer a kernel action is for; `None` for sends and events.
fn action_peer(a: &Action) -> Option<PeerId> {
    match a {
        Action::InstallSa { peer, .. }
        | Action::UpdateSa { peer, .. }
        | Action::SetOutbound { peer, .. }
        | Action::DeleteSa { peer, .. } => Some(*peer),
        Action::PeerPath { .. } | Action::Send { .. } | Action::Reply { .. } | Action::Event(_) => {
            None
        }
    }
}

/// One line for an operation's result, naming the operation: the kernel's
/// errno and text, or why it was not sent, or that its reply was lost.
pub(crate) fn describe(op: &Op, r: &OpResult) -> String {
    match r {
        OpResult::Done => format!("{op}: done"),
        OpResult::Failed(e) => e.to_string(),
        OpResult::Invalid(e) => format!("{op}: not sent: {e}"),
        OpResult::Unknown => format!("{op}: the kernel's reply was lost (outcome unknown)"),
        OpResult::Foreign { reqid } => {
            format!("{op}: not sent: the SA there has reqid {reqid}, not ours (left alone)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerMode;
    use rotor_xfrm::{AeadKey, DEFAULT_REQID_BASE, ModelKernel, Ownership};

    fn layout() -> PeerKernel {
        PeerKernel {
            reqid: DEFAULT_REQID_BASE + 1,
            local: "10.9.0.1".parse().unwrap(),
            remote: "10.9.0.2".parse().unwrap(),
            local_port: 4820,
            remote_port: 4820,
            nat: false,
            mode: PeerMode::Transport,
            priority: 1000,
            replay_window: 1024,
            lifetime: None,
        }
    }

    /// A peer with generation 0x1001 installed both ways and sent on.
    fn installed(refuse_migrations: bool) -> (ModelKernel, KernelExec<ModelKernel>) {
        let model = ModelKernel::new(Ownership::default());
        let p = layout();
        let key = || AeadKey::new(vec![7; 20]).unwrap();
        let mut ops = p.inbound_policies();
        ops.push(p.add_inbound_sa(0x1001, key()));
        ops.push(p.add_outbound_sa(0x1001, key()));
        ops.extend(p.set_outbound(Some(0x1001)));
        let mut k = KernelExec::new(model.clone(), vec![p]);
        assert_eq!(k.apply_plain(&ops), 0);
        if refuse_migrations {
            model.refuse(Some(Box::new(|op| {
                matches!(op, Op::MigrateSa(_)).then_some(libc::ENOPROTOOPT)
            })));
        }
        (model, k)
    }

    fn move_in_place(k: &mut KernelExec<ModelKernel>) {
        let actions = [
            Action::PeerPath {
                peer: PeerId(0),
                remote: Some("10.9.0.12:4820".parse().unwrap()),
                local: None,
                nat: false,
                old_sas: vec![(SaDir::In, 0x1001), (SaDir::Out, 0x1001)],
                in_place: true,
            },
            Action::SetOutbound {
                peer: PeerId(0),
                spi: Some(0x1001),
            },
        ];
        k.apply(Time(0), &actions, &NameTable::from_names(["n1"]));
    }

    #[test]
    fn an_in_place_move_keeps_the_sas_and_points_the_new_policy_at_them() {
        let (model, mut k) = installed(false);
        move_in_place(&mut k);
        let new: std::net::IpAddr = "10.9.0.12".parse().unwrap();
        assert!(
            model.has_sa(SaId {
                dst: new,
                spi: 0x1001
            }),
            "outbound moved"
        );
        assert!(!model.has_sa(SaId {
            dst: "10.9.0.2".parse().unwrap(),
            spi: 0x1001
        }));
        assert!(model.has_sa(SaId {
            dst: "10.9.0.1".parse().unwrap(),
            spi: 0x1001
        }));
        assert!(k.take_unmoved().is_empty());
        let out = model.outbound();
        assert_eq!(out.len(), 1, "the old path's outbound is gone: {out:?}");
        assert_eq!(out[0].0.selector.dst, IpNet::host(new));
        assert!(!out[0].1.block && out[0].1.spi == 0x1001, "{out:?}");
    }

    #[test]
    fn a_refused_migration_removes_the_sas_and_reports_them_lost() {
        let (model, mut k) = installed(true);
        move_in_place(&mut k);
        assert_eq!(model.sa_count(), 0, "removed on both paths");
        assert_eq!(
            k.take_unmoved(),
            vec![(PeerId(0), vec![(SaDir::In, 0x1001), (SaDir::Out, 0x1001)])]
        );
        assert!(k.errors() >= 2, "each refusal counts");
    }
}

#[cfg(test)]
mod mark_tests {
    use super::*;
    use crate::config::PeerMode;
    use rotor_xfrm::{DEFAULT_REQID_BASE, ModelKernel, Ownership};

    fn layout(i: u32) -> PeerKernel {
        PeerKernel {
            reqid: DEFAULT_REQID_BASE + i,
            local: "10.9.0.1".parse().unwrap(),
            remote: format!("10.9.0.{}", i + 2).parse().unwrap(),
            local_port: 4820,
            remote_port: 4820,
            nat: false,
            mode: PeerMode::Transport,
            priority: 1000,
            replay_window: 1024,
            lifetime: None,
        }
    }

    #[test]
    fn a_dump_mark_distrusts_exactly_the_peers_operated_on_after_it_and_any_reload() {
        let model = ModelKernel::new(Ownership::default());
        let mut k = KernelExec::new(model, vec![layout(0), layout(1)]);
        let names = NameTable::from_names(["n0", "n1"]);
        let set = |p: u32| Action::SetOutbound {
            peer: PeerId(p),
            spi: None,
        };
        k.apply(Time(0), &[set(0), set(1)], &names);
        let mark = k.mark();
        assert!(!k.touched_since(0, mark) && !k.touched_since(1, mark));
        k.apply(Time(1), &[set(1)], &names);
        assert!(!k.touched_since(0, mark), "peer 0 had nothing since");
        assert!(k.touched_since(1, mark), "peer 1 was operated on");
        assert!(!k.replaced_since(mark));
        let later = k.mark();
        assert!(!k.touched_since(1, later), "a later mark trusts it again");
        k.replace_peers(vec![layout(0), layout(1)]);
        assert!(k.replaced_since(later) && k.touched_since(0, later));
        let after = k.mark();
        assert!(!k.replaced_since(after));
    }
}
