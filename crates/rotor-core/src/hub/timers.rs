//! The hub's timers: rotation deadlines (a lazy heap), `rotate --all`
//! pacing, and the retire queue that deletes replaced generations' SAs after
//! the grace period. Every timer call does a bounded amount of work.

use std::cmp::Reverse;

use super::{Hub, NodeState, Shared, UnknownNode};
use crate::action::{Action, Now, PeerId, SaDir, Time};

/// Most timer work items (SA retirements, rotations) one call of
/// [`Hub::handle_timeout`] does. The rest stays due, so the caller comes back
/// at once, after serving its sockets: a `rotate --all` of 100,000 nodes, or
/// the grace expiry that follows it, never stalls the control channel, and
/// the kernel batches and buffers of one call stay small.
pub const TIMER_BATCH: usize = 256;

impl Hub {
    /// Fires due timers: SA deletions after the grace period, rotations
    /// (pushed to confirmed nodes whose ratchet share is known at once, else
    /// at their next hello), the next part of a `rotate --all`, and the end
    /// of the ratchet key pair's epoch. Does at most [`TIMER_BATCH`] items of
    /// each kind per call; what is left stays due in [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Now) {
        let now = now.mono;
        let Hub { nodes, shared: sh } = self;
        // The ratchet key pair goes when its epoch ends, rotations or not.
        sh.epoch.expire(now);
        let mut budget = TIMER_BATCH;
        while let Some(&(t, id, spi, out)) = sh.retire_queue.front() {
            if t > now || budget == 0 {
                break;
            }
            budget -= 1;
            sh.retire_queue.pop_front();
            if let Some(n) = nodes.get_mut(id.0 as usize)
                && n.outbound == Some(spi)
            {
                // Never leave the outbound policy pointing at a deleted SA.
                sh.set_outbound(id, n, None);
            }
            sh.actions.push_back(Action::DeleteSa {
                peer: id,
                dir: SaDir::In,
                spi,
            });
            if out {
                sh.actions.push_back(Action::DeleteSa {
                    peer: id,
                    dir: SaDir::Out,
                    spi,
                });
            }
            sh.table.release(spi);
        }
        let mut budget = TIMER_BATCH;
        while let Some(&Reverse((t, id))) = sh.rotate_heap.peek() {
            if t > now || budget == 0 {
                break;
            }
            sh.rotate_heap.pop();
            let Some(n) = nodes.get_mut(id.0 as usize) else {
                continue;
            };
            if n.rotate_at != t {
                continue; // superseded
            }
            budget -= 1;
            if n.confirmed && n.latest.is_some() {
                sh.rotate(now, id, n);
            }
            // Otherwise the next hello under the latest generation rotates
            // (rotate_at stays in the past).
        }
        if let Some((next, asked)) = sh.rotate_all
            && asked <= now
        {
            let next = next as usize;
            let end = (next + TIMER_BATCH).min(nodes.len());
            for (i, n) in nodes.iter_mut().enumerate().take(end).skip(next) {
                sh.rotate_one(now, PeerId(i as u32), n);
            }
            sh.rotate_all = (end < nodes.len()).then_some((end as u32, asked));
        }
        self.compact_timers();
    }

    /// Drops stale rotation deadlines once they outnumber the nodes (a
    /// node's earlier entries go stale when it rotates early), so forced
    /// rotations cannot grow the heap without bound. Called at the end of
    /// every step that may push deadlines.
    pub(super) fn compact_timers(&mut self) {
        let heap = &mut self.shared.rotate_heap;
        if heap.len() > 2 * self.nodes.len() + 64 {
            let nodes = &self.nodes;
            heap.retain(|Reverse((t, id))| {
                nodes.get(id.0 as usize).is_some_and(|n| n.rotate_at == *t)
            });
        }
    }

    /// Rotates every node: those in sync [`TIMER_BATCH`] at a time from the
    /// next [`Self::handle_timeout`] on (so the caller keeps serving the
    /// control channel between parts), the others at their next hello under
    /// the latest generation, which their part asks for. Returns the number
    /// of nodes.
    pub fn rotate_all(&mut self, now: Time) -> usize {
        self.shared.rotate_all = Some((0, now));
        self.nodes.len()
    }

    /// Rotates `id` now if it is in sync, else at its next hello under the
    /// latest generation (asked for at once).
    pub fn rotate_now(&mut self, now: Now, id: PeerId) -> Result<(), UnknownNode> {
        let Hub { nodes, shared } = self;
        let n = nodes
            .get_mut(id.0 as usize)
            .ok_or_else(|| UnknownNode(format!("#{}", id.0)))?;
        shared.rotate_one(now.mono, id, n);
        self.compact_timers();
        Ok(())
    }

    /// Arms every node's first rotation timer; call once after [`Hub::new`].
    pub fn start(&mut self) {
        self.shared.rotate_heap = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Reverse((n.rotate_at, PeerId(i as u32))))
            .collect();
    }

    /// Timer entries held (rotation deadlines, stale ones included, and SA
    /// retirements awaiting their grace period): bounded by a small multiple
    /// of the node count however often rotations are forced.
    pub fn timer_entries(&self) -> usize {
        self.shared.rotate_heap.len() + self.shared.retire_queue.len()
    }
}

impl Shared {
    /// Queues a rotation deadline. The heap is lazy: an entry is live while
    /// it equals the node's `rotate_at` ([`Hub::compact_timers`] drops the rest).
    pub(super) fn push_rotation(&mut self, at: Time, id: PeerId) {
        self.rotate_heap.push(Reverse((at, id)));
    }

    /// Rotates a node in sync now; marks any other to rotate at its next
    /// hello under the latest generation, and asks a node with a chain for
    /// that hello at once (`rotate_or_ask`): after a restart the hub has
    /// seldom seen the confirmations, which are written lazily, and an
    /// operator's rotation should not wait for the nodes' hello intervals.
    fn rotate_one(&mut self, now: Time, id: PeerId, n: &mut NodeState) {
        if !self.rotate_or_ask(now, id, n) && !n.force_rotate {
            n.force_rotate = true;
            self.mark(id, n);
        }
    }

    /// Schedules a generation's SAs for deletion after the grace period
    /// (the outbound one only if `out`: it may be known missing).
    pub(super) fn retire(&mut self, now: Time, id: PeerId, spi: u32, out: bool) {
        self.retire_queue
            .push_back((now.plus_ms(self.grace_ms), id, spi, out));
    }
}
