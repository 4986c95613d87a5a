//! Kernel operations the kernel refused, kept to be tried again.
//!
//! A refused operation (an SA add that hit ENOMEM, a module that could not be
//! loaded yet, ...) must not be forgotten: the protocol core has moved on and
//! believes the SA or policy is in place. Each refused operation is retried
//! with a doubling delay (1 s up to 60 s), for ever, so the kernel converges
//! on the core's view once the cause goes away. Ordering is kept per peer: a
//! peer's pending operations go out before any newer operation for that peer,
//! and a newer operation that makes a pending one pointless removes it (a
//! delete of the SA a pending add would create; a newer setting of the same
//! policy). One peer's failures never hold back another peer's operations.
//!
//! Pure data: time comes in as [`Time`], the caller talks to the kernel.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use rotor_core::{PeerId, Time};
use rotor_xfrm::{Op, PolicyId, SaId};

/// First retry delay; doubles per failed attempt up to [`MAX_DELAY_MS`].
pub const FIRST_DELAY_MS: u64 = 1_000;
/// Longest delay between two attempts of one operation.
pub const MAX_DELAY_MS: u64 = 60_000;

/// One refused operation.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The peer it belongs to.
    pub peer: PeerId,
    /// The operation, as first built.
    pub op: Op,
    /// Failed attempts so far (>= 1).
    pub attempts: u32,
    /// Not to be tried before this time (unless the peer has newer work).
    pub due: Time,
}

/// The kernel object an operation acts on: a newer operation on the same
/// object makes a pending one pointless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Sa(SaId),
    Policy(PolicyId),
}

fn target(op: &Op) -> Target {
    match op {
        Op::AddSa(s) | Op::UpdateSa(s) => Target::Sa(SaId {
            dst: s.dst,
            spi: s.spi,
        }),
        Op::DeleteSa(id) => Target::Sa(*id),
        Op::MigrateSa(m) => Target::Sa(SaId {
            dst: m.old.1,
            spi: m.spi,
        }),
        Op::AddPolicy(p) | Op::UpdatePolicy(p) => Target::Policy(p.id),
        Op::UpdateBypassPolicy { id, .. } | Op::DeletePolicy(id) => Target::Policy(*id),
    }
}

/// Moves a peer's pending operations to `out`, except those acting on one of
/// `skip`; returns how many left the queue.
fn take(q: VecDeque<Pending>, out: &mut Vec<(PeerId, Op, u32)>, skip: &[Target]) -> usize {
    let n = q.len();
    out.extend(
        q.into_iter()
            .filter(|p| !skip.contains(&target(&p.op)))
            .map(|p| (p.peer, p.op, p.attempts)),
    );
    n
}

/// The queue of refused operations: per peer in the order they were first
/// issued, with a heap of due times so finding due work costs O(log n), not
/// a scan of everything queued.
#[derive(Debug, Default)]
pub struct RetryQueue {
    by_peer: HashMap<PeerId, VecDeque<Pending>>,
    /// (due, peer), lazily maintained: an entry is live while the peer has a
    /// pending operation due at that time; stale entries are skipped.
    due: BinaryHeap<Reverse<(Time, PeerId)>>,
    len: usize,
}

impl RetryQueue {
    /// Number of operations waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops `peer`'s waiting add of the SA `id`, if any: the kernel lost
    /// that SA and the core decides afresh whether it may be re-added (an
    /// SA that has sent must never be, and a blind retry would).
    pub fn forget_add(&mut self, peer: PeerId, id: SaId) {
        let Some(q) = self.by_peer.get_mut(&peer) else {
            return;
        };
        let before = q.len();
        q.retain(|p| !matches!(&p.op, Op::AddSa(s) if s.dst == id.dst && s.spi == id.spi));
        self.len -= before - q.len();
        if q.is_empty() {
            self.by_peer.remove(&peer);
        }
        self.prune();
    }

    /// Drops every operation of `peer` waiting for a retry (its path moved:
    /// they name the old one).
    pub fn forget_peer(&mut self, peer: PeerId) {
        if let Some(q) = self.by_peer.remove(&peer) {
            self.len -= q.len();
        }
        self.prune();
    }

    /// Whether `peer` has operations waiting.
    pub fn has(&self, peer: PeerId) -> bool {
        self.count(peer) > 0
    }

    /// How many of `peer`'s operations wait.
    pub fn count(&self, peer: PeerId) -> usize {
        self.by_peer.get(&peer).map_or(0, VecDeque::len)
    }

    /// When the earliest pending operation is due.
    pub fn next_due(&self) -> Option<Time> {
        self.due.peek().map(|Reverse((t, _))| *t)
    }

    /// Drops heap entries that no longer name a pending operation, so
    /// [`Self::next_due`] is exact.
    fn prune(&mut self) {
        while let Some(Reverse((t, peer))) = self.due.peek().copied() {
            let live = self
                .by_peer
                .get(&peer)
                .is_some_and(|q| q.iter().any(|p| p.due == t));
            if live {
                return;
            }
            self.due.pop();
        }
    }

    /// Builds the next batch: for every peer that has new operations or a
    /// due pending one, all of that peer's pending operations (oldest first)
    /// before any of its new ones; pending operations that a new one of the
    /// same peer makes pointless (same SA or policy) are dropped. Returns
    /// (peer, op, attempts so far) in order; new operations have 0 attempts.
    pub fn batch(&mut self, now: Time, new: Vec<(PeerId, Op)>) -> Vec<(PeerId, Op, u32)> {
        // The common case, nothing refused: no superseding to work out.
        if self.len == 0 {
            return new.into_iter().map(|(p, op)| (p, op, 0)).collect();
        }
        let mut out = Vec::new();
        // Peers with new work: their pending operations first.
        let mut seen: Vec<PeerId> = Vec::new();
        for (peer, _) in &new {
            if seen.contains(peer) || !self.by_peer.contains_key(peer) {
                continue;
            }
            seen.push(*peer);
            let targets: Vec<Target> = new
                .iter()
                .filter(|(p, _)| p == peer)
                .map(|(_, op)| target(op))
                .collect();
            if let Some(q) = self.by_peer.remove(peer) {
                self.len -= take(q, &mut out, &targets);
            }
        }
        // Peers whose pending operations are due.
        while let Some(Reverse((t, peer))) = self.due.peek().copied() {
            if t > now {
                break;
            }
            self.due.pop();
            // A stale entry (the peer's queue went out with new work since,
            // and failed again later) must not pull newer work forward.
            let due = self
                .by_peer
                .get(&peer)
                .is_some_and(|q| q.iter().any(|p| p.due <= now));
            if due && let Some(q) = self.by_peer.remove(&peer) {
                self.len -= take(q, &mut out, &[]);
            }
        }
        self.prune();
        out.extend(new.into_iter().map(|(p, op)| (p, op, 0)));
        out
    }

    /// Records that `op` failed again (its `attempts` before this one given):
    /// it is due after a delay that doubles per attempt.
    pub fn failed(&mut self, now: Time, peer: PeerId, op: Op, attempts_before: u32) -> &Pending {
        let attempts = attempts_before.saturating_add(1);
        let delay = FIRST_DELAY_MS
            .saturating_mul(1u64 << (attempts - 1).min(16))
            .min(MAX_DELAY_MS);
        let due = now.plus_ms(delay);
        self.due.push(Reverse((due, peer)));
        self.len += 1;
        let q = self.by_peer.entry(peer).or_default();
        q.push_back(Pending {
            peer,
            op,
            attempts,
            due,
        });
        &q[q.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rotor_xfrm::{
        AeadKey, IpNet, Lifetimes, Mode, PolicyDir, PolicyId, PolicySelector, PolicySpec, SaId,
        SaSpec,
    };

    fn add(spi: u32) -> Op {
        Op::AddSa(SaSpec {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            spi,
            reqid: rotor_xfrm::DEFAULT_REQID_BASE,
            mode: Mode::Transport,
            key: AeadKey::new(vec![7; 36]).unwrap(),
            replay_window: 32,
            esn: true,
            encap: None,
            lifetimes: Lifetimes::default(),
            selector: None,
        })
    }

    fn del(spi: u32) -> Op {
        Op::DeleteSa(SaId {
            dst: "10.0.0.2".parse().unwrap(),
            spi,
        })
    }

    fn out_policy(spi: u32) -> Op {
        Op::UpdatePolicy(PolicySpec {
            id: PolicyId {
                dir: PolicyDir::Out,
                selector: PolicySelector {
                    src: IpNet::parse("10.0.0.1").unwrap(),
                    dst: IpNet::parse("10.0.0.2").unwrap(),
                    proto: None,
                    sport: None,
                },
            },
            priority: 1000,
            tmpl_endpoints: None,
            spi,
            reqid: rotor_xfrm::DEFAULT_REQID_BASE,
            mode: Mode::Transport,
            block: false,
        })
    }

    const A: PeerId = PeerId(0);
    const B: PeerId = PeerId(1);

    #[test]
    fn a_forgotten_add_is_never_retried_and_other_ops_stay() {
        let mut q = RetryQueue::default();
        let t = Time(0);
        q.failed(t, A, add(0x100), 0);
        q.failed(t, A, out_policy(0x100), 0);
        q.failed(t, B, add(0x100), 0);
        q.forget_add(
            A,
            SaId {
                dst: "10.0.0.2".parse().unwrap(),
                spi: 0x100,
            },
        );
        assert_eq!(q.len(), 2);
        let later = Time(FIRST_DELAY_MS * 4);
        let batch = q.batch(later, Vec::new());
        assert!(
            !batch
                .iter()
                .any(|(p, op, _)| *p == A && matches!(op, Op::AddSa(_))),
            "A's add is gone"
        );
        assert!(
            batch
                .iter()
                .any(|(p, op, _)| *p == A && matches!(op, Op::UpdatePolicy(_)))
        );
        assert!(
            batch
                .iter()
                .any(|(p, op, _)| *p == B && matches!(op, Op::AddSa(_)))
        );
    }

    #[test]
    fn failed_ops_come_back_when_due_with_doubling_delay() {
        let mut q = RetryQueue::default();
        let t0 = Time(0);
        assert_eq!(q.failed(t0, A, add(0x1000), 0).due, Time(1_000));
        assert!(q.batch(Time(999), vec![]).is_empty(), "not due yet");
        let b = q.batch(Time(1_000), vec![]);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].2, 1);
        assert!(q.is_empty());
        let p = q.failed(Time(1_000), A, b[0].1.clone(), b[0].2);
        assert_eq!((p.attempts, p.due), (2, Time(3_000)));
        let p = q.failed(Time(0), A, add(1), 20).clone();
        assert_eq!(p.due, Time(MAX_DELAY_MS), "capped");
    }

    #[test]
    fn a_peers_pending_ops_go_before_its_new_ones_and_only_its_own() {
        let mut q = RetryQueue::default();
        q.failed(Time(0), A, add(0x1000), 0);
        q.failed(Time(0), B, add(0x2000), 0);
        // New work for A before anything is due: A's pending add goes first,
        // B's stays queued.
        let b = q.batch(Time(10), vec![(A, out_policy(0x1000))]);
        let ops: Vec<_> = b.iter().map(|(p, op, n)| (*p, op.clone(), *n)).collect();
        assert_eq!(ops.len(), 2);
        assert_eq!((ops[0].0, &ops[0].1, ops[0].2), (A, &add(0x1000), 1));
        assert_eq!((ops[1].0, &ops[1].1, ops[1].2), (A, &out_policy(0x1000), 0));
        assert_eq!(q.len(), 1);
        assert_eq!(q.next_due(), Some(Time(1_000)));
    }

    #[test]
    fn a_newer_op_on_the_same_object_supersedes_the_pending_one() {
        let mut q = RetryQueue::default();
        q.failed(Time(0), A, add(0x1000), 0);
        q.failed(Time(0), A, out_policy(0x1000), 0);
        // The core gave up on 0x1000: it deletes the SA and points the policy
        // elsewhere. Neither stale op may be replayed after the new ones.
        let b = q.batch(Time(10), vec![(A, del(0x1000)), (A, out_policy(0x3000))]);
        let ops: Vec<Op> = b.into_iter().map(|(_, op, _)| op).collect();
        assert_eq!(ops, vec![del(0x1000), out_policy(0x3000)]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_stale_due_entry_does_not_pull_newer_work_forward() {
        let mut q = RetryQueue::default();
        q.failed(Time(0), A, add(0x1000), 0);
        // New work for A at 10 takes the pending add along; it fails again.
        let b = q.batch(Time(10), vec![(A, out_policy(0x1000))]);
        assert_eq!(b.len(), 2);
        q.failed(Time(10), A, b[0].1.clone(), b[0].2);
        assert_eq!(q.next_due(), Some(Time(2_010)));
        assert!(q.batch(Time(1_000), vec![]).is_empty(), "due at 2010 only");
        assert_eq!(q.batch(Time(2_010), vec![]).len(), 1);
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn another_peers_op_on_an_equal_target_does_not_supersede() {
        let mut q = RetryQueue::default();
        q.failed(Time(0), A, add(0x1000), 0);
        let b = q.batch(Time(10), vec![(B, del(0x1000))]);
        assert_eq!(b.len(), 1);
        assert_eq!(q.len(), 1);
    }
}
