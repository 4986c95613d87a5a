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

use rotor_core::{PeerId, Time};
use rotor_xfrm::Op;

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

/// The queue of refused operations, in the order they were first issued.
#[derive(Debug, Default)]
pub struct RetryQueue {
    items: Vec<Pending>,
}

/// What one operation acts on, for superseding: an SA by (dst, spi) or a
/// policy by its id.
fn target(op: &Op) -> Option<String> {
    match op {
        Op::AddSa(s) | Op::UpdateSa(s) => Some(format!("sa {} {}", s.dst, s.spi)),
        Op::DeleteSa(id) => Some(format!("sa {} {}", id.dst, id.spi)),
        Op::AddPolicy(p) | Op::UpdatePolicy(p) => Some(format!("pol {}", p.id)),
        Op::UpdateBypassPolicy { id, .. } => Some(format!("pol {id}")),
        Op::DeletePolicy(id) => Some(format!("pol {id}")),
    }
}

impl RetryQueue {
    /// Number of operations waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// When the earliest pending operation is due.
    pub fn next_due(&self) -> Option<Time> {
        self.items.iter().map(|p| p.due).min()
    }

    /// Builds the next batch: for every peer that has new operations or a
    /// due pending one, all of that peer's pending operations (oldest first)
    /// followed by its new ones; pending operations that a new one makes
    /// pointless are dropped. Returns (peer, op, attempts so far) in order;
    /// new operations have 0 attempts.
    pub fn batch(&mut self, now: Time, new: Vec<(PeerId, Op)>) -> Vec<(PeerId, Op, u32)> {
        // The common case, nothing refused: no superseding to work out.
        if self.items.is_empty() {
            return new.into_iter().map(|(p, op)| (p, op, 0)).collect();
        }
        let new_targets: Vec<(PeerId, Option<String>)> =
            new.iter().map(|(p, op)| (*p, target(op))).collect();
        self.items.retain(|item| {
            let t = target(&item.op);
            !new_targets
                .iter()
                .any(|(p, nt)| *p == item.peer && nt.is_some() && *nt == t)
        });
        let mut peers: Vec<PeerId> = new.iter().map(|(p, _)| *p).collect();
        peers.extend(self.items.iter().filter(|i| i.due <= now).map(|i| i.peer));
        let mut out = Vec::new();
        let mut kept = Vec::new();
        for item in self.items.drain(..) {
            if peers.contains(&item.peer) {
                out.push((item.peer, item.op, item.attempts));
            } else {
                kept.push(item);
            }
        }
        self.items = kept;
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
        self.items.push(Pending {
            peer,
            op,
            attempts,
            due: now.plus_ms(delay),
        });
        let last = self.items.len() - 1;
        &self.items[last]
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
    fn another_peers_op_on_an_equal_target_does_not_supersede() {
        let mut q = RetryQueue::default();
        q.failed(Time(0), A, add(0x1000), 0);
        let b = q.batch(Time(10), vec![(B, del(0x1000))]);
        assert_eq!(b.len(), 1);
        assert_eq!(q.len(), 1);
    }
}
