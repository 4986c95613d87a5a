//! The hub's state machine: one chain of generations per node, every decision
//! taken through the key-SPI table (I5).
//!
//! Per node the hub holds `latest` (N) and `previous` (N-1). It sends on
//! `previous` (I1) and accepts both. A message protected by
//! * the node's **latest** SPI proves the node holds N: the hub confirms N and,
//!   if a rotation is due, requested or forced, creates N+1 (I2: only now);
//! * the **previous** SPI shows the node missed N: the hub sends the same N
//!   again (I4);
//! * the node's **init** SPI asks for (re)initialisation;
//! * anything else is dropped with a counted reason and no state change.
//!
//! Right after init there is no previous generation: the hub sends nothing
//! until the node confirms generation 1, then sends on it (the init exception).
//! Replaced generations linger for the grace period, then their SAs are deleted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use x25519_dalek::{EphemeralSecret, PublicKey};

use crate::action::{Action, DropReason, Event, Now, PeerId, SaDir, Time};
use crate::config::{ConfigError, HubConfig};
use crate::generation::Generation;
use crate::key_schedule::{init_request_key, init_session_key, init_spi};
use crate::key_spi_table::{KeySpiTable, SpiOwner};
use crate::machine::Machine;
use crate::names::NameTable;
use crate::secret::Secret32;
use crate::status::{PeerState, PeerStatus};
use crate::wire::{self, InitReply, Message, MsgType};

#[derive(Debug)]
struct NodeState {
    psk: Secret32,
    init_spi: u32,
    rotate_interval_ms: u64,
    latest: Option<Generation>,
    previous: Option<Generation>,
    /// The node proved it holds `latest`.
    confirmed: bool,
    /// SPI the hub sends on.
    outbound: Option<u32>,
    /// Generations of the chain an init replaced: kept (the hub may still send
    /// on one, the node may still send on them) until the node confirms the new
    /// chain, then retired.
    superseded: Vec<u32>,
    rotate_at: Time,
    /// When the latest key was first sent (by a rotation).
    key_sent_at: Time,
    /// Whether a hello under the previous generation already got no resend
    /// because it crossed the key in flight (at most one per rotation).
    crossing_spared: bool,
    force_rotate: bool,
    last_init_ts: u64,
    /// Nonce of the last accepted init and the reply sent to it: a
    /// retransmission of that init gets the same reply again (I4 for init).
    /// Dropped once the node confirms generation 1: it has the reply then,
    /// and a copy per node would cost the hub ~200 bytes each for nothing.
    last_init: Option<Box<([u8; 32], Vec<u8>)>>,
    last_seen: Option<Time>,
    rotations: u64,
    resends: u64,
    inits: u64,
}

/// A hello under the previous generation that arrives this soon after the
/// rotation sent the new key most likely crossed that key on the wire: the
/// first such hello gets no resend (the node will hello again and get one then
/// if the key was really lost). A timer-driven rotation and the node's hello
/// schedule are phase-locked (both count from the same exchange), so without
/// this about half the rotations cost a needless resend.
pub const CROSSING_HOLDOFF_MS: u64 = 200;

/// Most replaced generations kept per node while a re-init is unconfirmed
/// (bounds per-node state under repeated inits).
pub const MAX_SUPERSEDED: usize = 6;

/// Most timer work items (SA retirements, rotations) one call of
/// [`Hub::handle_timeout`] does. The rest stays due, so the caller comes back
/// at once, after serving its sockets: a `rotate --all` of 100,000 nodes, or
/// the grace expiry that follows it, never stalls the control channel, and
/// the kernel batches and buffers of one call stay small.
pub const TIMER_BATCH: usize = 256;

/// `key` for `latest`, sealed under `prev` (the generation the node holds).
fn key_message(latest: &Generation, prev: &mut Generation) -> Vec<u8> {
    Message::Key {
        spi: prev.spi,
        counter: prev.next_counter(),
        init_reply: None,
        generation: latest.number,
        gen_spi: latest.spi,
        secret: latest.secret.clone(),
    }
    .seal(&prev.ctl_h2n)
}

/// An unknown node name or id was given to a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no such node: {0}")]
pub struct UnknownNode(pub String);

/// The hub.
#[derive(Debug)]
pub struct Hub {
    nodes: Vec<NodeState>,
    /// Node names (bound into every derived key), indexed like `nodes`.
    names: NameTable,
    table: KeySpiTable,
    grace_ms: u64,
    init_skew_ms: u64,
    key_bits: crate::key_schedule::KeyBits,
    /// Rotation deadlines (lazy: an entry is live if it equals the node's
    /// rotate_at; compacted when stale entries outnumber the nodes).
    rotate_heap: BinaryHeap<Reverse<(Time, PeerId)>>,
    /// `rotate --all` in progress: the next node to rotate, and when it was
    /// asked (the due time [`Hub::poll_timeout`] reports until it is done).
    rotate_all: Option<(u32, Time)>,
    /// Generations to delete, in deadline order (the grace is constant).
    retire_queue: VecDeque<(Time, PeerId, u32)>,
    actions: VecDeque<Action>,
    drops: BTreeMap<DropReason, u64>,
    /// Generation secrets, SPIs, init nonces and ephemeral keys.
    rng: StdRng,
}

impl Hub {
    /// A hub serving `cfg.nodes`, with no chains yet (every node starts by
    /// sending `init`). `rng_seed` seeds every random choice the hub makes
    /// (secrets, SPIs, nonces, ephemeral keys): the daemon takes it from the
    /// OS, a simulation from its own seed, so a run can be replayed.
    pub fn new(cfg: HubConfig, now: Now, rng_seed: [u8; 32]) -> Result<Hub, ConfigError> {
        cfg.validate()?;
        let now = now.mono;
        let names = NameTable::from_names(cfg.nodes.iter().map(|n| n.name.as_str()));
        let mut table = KeySpiTable::with_capacity(cfg.nodes.len());
        let mut nodes = Vec::with_capacity(cfg.nodes.len());
        for (i, n) in cfg.nodes.into_iter().enumerate() {
            let spi = init_spi(&n.psk);
            table.add_init(spi, PeerId(i as u32));
            nodes.push(NodeState {
                psk: n.psk,
                init_spi: spi,
                rotate_interval_ms: n.rotate_interval_ms,
                latest: None,
                previous: None,
                confirmed: false,
                outbound: None,
                superseded: Vec::new(),
                rotate_at: now.plus_ms(n.rotate_interval_ms),
                key_sent_at: now,
                crossing_spared: true,
                force_rotate: false,
                last_init_ts: 0,
                last_init: None,
                last_seen: None,
                rotations: 0,
                resends: 0,
                inits: 0,
            });
        }
        Ok(Hub {
            nodes,
            names,
            table,
            grace_ms: cfg.grace_ms,
            init_skew_ms: cfg.init_skew_ms,
            key_bits: cfg.key_bits,
            rotate_heap: BinaryHeap::new(),
            rotate_all: None,
            retire_queue: VecDeque::new(),
            actions: VecDeque::new(),
            drops: BTreeMap::new(),
            rng: StdRng::from_seed(rng_seed),
        })
    }

    /// Next action to execute, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        let a = self.actions.pop_front();
        if a.is_none() && self.actions.capacity() > 4 * TIMER_BATCH * 8 {
            // A burst left a large queue behind: give the memory back.
            self.actions.shrink_to(TIMER_BATCH * 8);
        }
        a
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        let r = self.rotate_heap.peek().map(|Reverse((t, _))| *t);
        let g = self.retire_queue.front().map(|(t, _, _)| *t);
        let a = self.rotate_all.map(|(_, t)| t);
        [r, g, a].into_iter().flatten().min()
    }

    /// Number of configured nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The id of the node called `name`.
    pub fn node_id(&self, name: &str) -> Option<PeerId> {
        self.names.find(name)
    }

    /// Datagrams dropped so far, by reason.
    pub fn drops(&self) -> &BTreeMap<DropReason, u64> {
        &self.drops
    }

    fn drop_reason(&mut self, reason: DropReason) {
        *self.drops.entry(reason).or_insert(0) += 1;
        self.actions
            .push_back(Action::Event(Event::Dropped { reason }));
    }

    /// Handles a datagram from the network. `now.unix_ms` is checked against
    /// init timestamps. A datagram that is not a valid, fresh message changes
    /// nothing but the drop counters.
    pub fn handle_datagram(&mut self, now: Now, data: &[u8]) {
        if let Err(r) = self.datagram(now.mono, now.unix_ms, data) {
            self.drop_reason(r);
        }
    }

    fn datagram(&mut self, now: Time, unix_ms: u64, data: &[u8]) -> Result<(), DropReason> {
        let dg = wire::parse(data).map_err(DropReason::Wire)?;
        match self.table.lookup(dg.header.spi) {
            None => Err(DropReason::UnknownSpi),
            Some(SpiOwner::Init(_) | SpiOwner::SharedInit) if dg.header.kind != MsgType::Init => {
                Err(DropReason::UnexpectedType)
            }
            Some(SpiOwner::Init(id)) => self.init(now, unix_ms, id, &dg),
            Some(SpiOwner::SharedInit) => {
                // Colliding init SPIs (rare): the AEAD picks the node.
                let mut last = DropReason::Wire(wire::WireError::AuthFailed);
                for id in self.table.init_candidates(dg.header.spi) {
                    match self.init(now, unix_ms, id, &dg) {
                        Ok(()) => return Ok(()),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Some(SpiOwner::Generation(node)) => {
                if dg.header.kind != MsgType::Hello {
                    return Err(DropReason::UnexpectedType);
                }
                self.hello(now, node, &dg)
            }
        }
    }

    fn init(
        &mut self,
        now: Time,
        unix_ms: u64,
        id: PeerId,
        dg: &wire::Datagram<'_>,
    ) -> Result<(), DropReason> {
        let n = &self.nodes[id.0 as usize];
        let node_nonce = dg.init_nonce().ok_or(DropReason::UnexpectedType)?;
        let key = init_request_key(&n.psk, self.names.get(id), &node_nonce);
        let Message::Init {
            timestamp_ms,
            eph_pub,
            ..
        } = dg.open(&key).map_err(DropReason::Wire)?
        else {
            return Err(DropReason::UnexpectedType);
        };
        if timestamp_ms == n.last_init_ts
            && let Some(last) = &n.last_init
            && last.0 == node_nonce
        {
            // The node did not get our reply: send the same one again.
            let datagram = last.1.clone();
            let n = &mut self.nodes[id.0 as usize];
            n.resends += 1;
            self.actions.push_back(Action::Send { peer: id, datagram });
            return Ok(());
        }
        if timestamp_ms <= n.last_init_ts {
            return Err(DropReason::InitReplay);
        }
        if timestamp_ms.abs_diff(unix_ms) > self.init_skew_ms {
            return Err(DropReason::InitClockSkew);
        }
        let eph = EphemeralSecret::random_from_rng(&mut self.rng);
        let hub_pub = PublicKey::from(&eph);
        let shared = eph.diffie_hellman(&PublicKey::from(eph_pub));
        if !shared.was_contributory() {
            return Err(DropReason::BadEphemeral);
        }
        // Accepted: from here on, state changes.
        let mut hub_nonce = [0u8; 32];
        self.rng.fill_bytes(&mut hub_nonce);
        let session = init_session_key(
            &n.psk,
            shared.as_bytes(),
            &node_nonce,
            &hub_nonce,
            self.names.get(id),
        );
        let init_spi = n.init_spi;
        // Make before break across re-init: every replaced chain stays installed
        // (and the hub keeps sending on the one it sends on) until the node
        // confirms the new generation 1; the node may be using any of them.
        let n = &mut self.nodes[id.0 as usize];
        let replaced: Vec<u32> = [n.previous.take(), n.latest.take()]
            .into_iter()
            .flatten()
            .map(|g| g.spi)
            .collect();
        n.superseded.extend(replaced);
        let excess = n.superseded.len().saturating_sub(MAX_SUPERSEDED);
        let dropped: Vec<u32> = n.superseded.drain(..excess).collect();
        for spi in dropped {
            self.retire(now, id, spi);
        }
        let gen1 = self.new_generation(id, 1);
        let n = &mut self.nodes[id.0 as usize];
        n.last_init_ts = timestamp_ms;
        n.previous = None;
        n.confirmed = false;
        n.force_rotate = false;
        n.inits += 1;
        n.last_seen = Some(now);
        n.rotate_at = now.plus_ms(n.rotate_interval_ms);
        let at = n.rotate_at;
        self.push_rotation(at, id);
        let n = &mut self.nodes[id.0 as usize];
        let datagram = Message::Key {
            spi: init_spi,
            counter: 0,
            init_reply: Some(InitReply {
                hub_nonce,
                hub_pub: *hub_pub.as_bytes(),
            }),
            generation: 1,
            gen_spi: gen1.spi,
            secret: gen1.secret.clone(),
        }
        .seal(&session);
        let spi = gen1.spi;
        n.latest = Some(gen1);
        n.last_init = Some(Box::new((node_nonce, datagram.clone())));
        self.actions.push_back(Action::Send { peer: id, datagram });
        self.actions
            .push_back(Action::Event(Event::Initialised { peer: id, spi }));
        Ok(())
    }

    /// Creates generation `number` for `id`, installs its inbound SA (I3: before
    /// the node can learn it) and its outbound SA (unused until the outbound
    /// policy names it).
    fn new_generation(&mut self, id: PeerId, number: u64) -> Generation {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        let secret = Secret32::new(s);
        zeroize::Zeroize::zeroize(&mut s);
        let spi = self.table.allocate(&mut self.rng, id);
        let (g, esp) = Generation::new(number, spi, secret, self.names.get(id), self.key_bits);
        self.actions.push_back(Action::InstallSa {
            peer: id,
            dir: SaDir::In,
            spi,
            key: esp.n2h,
        });
        self.actions.push_back(Action::InstallSa {
            peer: id,
            dir: SaDir::Out,
            spi,
            key: esp.h2n,
        });
        g
    }

    /// Schedules a generation's SAs for deletion after the grace period.
    fn retire(&mut self, now: Time, id: PeerId, spi: u32) {
        self.retire_queue
            .push_back((now.plus_ms(self.grace_ms), id, spi));
    }

    fn set_outbound(&mut self, id: PeerId, spi: Option<u32>) {
        let n = &mut self.nodes[id.0 as usize];
        if n.outbound != spi {
            n.outbound = spi;
            self.actions
                .push_back(Action::SetOutbound { peer: id, spi });
        }
    }

    fn hello(&mut self, now: Time, id: PeerId, dg: &wire::Datagram<'_>) -> Result<(), DropReason> {
        let n = &mut self.nodes[id.0 as usize];
        // The SPI names one of the node's generations: latest, previous, or
        // one replaced (by an init or a rotation) and awaiting deletion.
        let is_latest = n.latest.as_ref().is_some_and(|g| g.spi == dg.header.spi);
        let is_previous = n.previous.as_ref().is_some_and(|g| g.spi == dg.header.spi);
        let g = match (is_latest, is_previous) {
            (true, _) => n.latest.as_mut(),
            (_, true) => n.previous.as_mut(),
            _ => None,
        }
        .ok_or(DropReason::StaleGeneration)?;
        if !g.rx_window.check(dg.header.counter) {
            return Err(DropReason::Replay);
        }
        let Message::Hello {
            generation: claimed,
            rotate,
            ..
        } = dg.open(&g.ctl_n2h).map_err(DropReason::Wire)?
        else {
            return Err(DropReason::UnexpectedType);
        };
        if claimed != g.number {
            return Err(DropReason::StaleGeneration);
        }
        g.rx_window.commit(dg.header.counter);
        n.last_seen = Some(now);
        if is_latest {
            self.in_sync(now, id, rotate);
        } else if !n.crossing_spared && now.since(n.key_sent_at) < CROSSING_HOLDOFF_MS {
            n.crossing_spared = true;
        } else {
            self.resend(id);
        }
        Ok(())
    }

    /// A message under the latest generation: confirm it, rotate if due.
    fn in_sync(&mut self, now: Time, id: PeerId, requested: bool) {
        let n = &mut self.nodes[id.0 as usize];
        if !n.confirmed {
            n.confirmed = true;
            let (number, spi) = n
                .latest
                .as_ref()
                .map(|g| (g.number, g.spi))
                .unwrap_or_default();
            let first = n.previous.is_none();
            self.actions.push_back(Action::Event(Event::Confirmed {
                peer: id,
                generation: number,
            }));
            if first {
                // The init exception: generation 1 is sent on from its
                // confirmation; the chain it replaced can go now, and so can
                // the init reply (the node has it).
                self.nodes[id.0 as usize].last_init = None;
                self.set_outbound(id, Some(spi));
                let old = std::mem::take(&mut self.nodes[id.0 as usize].superseded);
                for s in old {
                    self.retire(now, id, s);
                }
            }
        }
        let n = &self.nodes[id.0 as usize];
        if n.force_rotate || requested || now >= n.rotate_at {
            self.rotate(now, id);
        } else {
            self.send_ack(id);
        }
    }

    /// Tells the node it is in sync, under the latest generation.
    fn send_ack(&mut self, id: PeerId) {
        let n = &mut self.nodes[id.0 as usize];
        if let Some(g) = n.latest.as_mut() {
            let datagram = Message::Ack {
                spi: g.spi,
                counter: g.next_counter(),
                generation: g.number,
            }
            .seal(&g.ctl_h2n);
            self.actions.push_back(Action::Send { peer: id, datagram });
        }
    }

    /// Creates N+1 (the node proved N), switches outbound to N, retires N-1,
    /// and sends N+1 protected under N.
    fn rotate(&mut self, now: Time, id: PeerId) {
        let number = match self.nodes[id.0 as usize].latest.as_ref() {
            Some(g) => g.number + 1,
            None => return,
        };
        let new = self.new_generation(id, number);
        let n = &mut self.nodes[id.0 as usize];
        let old_prev = n.previous.take();
        n.previous = n.latest.take();
        let cur_spi = n.previous.as_ref().map(|g| g.spi);
        self.set_outbound(id, cur_spi);
        if let Some(p) = old_prev {
            self.retire(now, id, p.spi);
        }
        let n = &mut self.nodes[id.0 as usize];
        let (new_number, new_spi) = (new.number, new.spi);
        n.latest = Some(new);
        n.confirmed = false;
        n.force_rotate = false;
        n.rotations += 1;
        n.key_sent_at = now;
        n.crossing_spared = false;
        n.rotate_at = now.plus_ms(n.rotate_interval_ms);
        let at = n.rotate_at;
        self.push_rotation(at, id);
        let n = &mut self.nodes[id.0 as usize];
        if let (Some(latest), Some(prev)) = (n.latest.as_ref(), n.previous.as_mut()) {
            let datagram = key_message(latest, prev);
            self.actions.push_back(Action::Send { peer: id, datagram });
        }
        self.actions.push_back(Action::Event(Event::Rotated {
            peer: id,
            generation: new_number,
            spi: new_spi,
            tx_spi: cur_spi.unwrap_or(0),
        }));
    }

    /// A message under the previous generation: the node missed the latest
    /// key; send the same key again (I4), protected under the previous one.
    fn resend(&mut self, id: PeerId) {
        let n = &mut self.nodes[id.0 as usize];
        let (Some(latest), Some(prev)) = (n.latest.as_ref(), n.previous.as_mut()) else {
            return;
        };
        let (generation, spi) = (latest.number, latest.spi);
        let datagram = key_message(latest, prev);
        n.resends += 1;
        self.actions.push_back(Action::Send { peer: id, datagram });
        self.actions.push_back(Action::Event(Event::Resent {
            peer: id,
            generation,
            spi,
        }));
    }

    /// Fires due timers: SA deletions after the grace period, rotations
    /// (pushed to confirmed nodes at once, else at their next hello) and the
    /// next part of a `rotate --all`. Does at most [`TIMER_BATCH`] items of
    /// each kind per call; what is left stays due in [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Now) {
        let now = now.mono;
        let mut budget = TIMER_BATCH;
        while let Some(&(t, id, spi)) = self.retire_queue.front() {
            if t > now || budget == 0 {
                break;
            }
            budget -= 1;
            self.retire_queue.pop_front();
            if self.nodes[id.0 as usize].outbound == Some(spi) {
                // Never leave the outbound policy pointing at a deleted SA.
                self.set_outbound(id, None);
            }
            self.actions.push_back(Action::DeleteSa {
                peer: id,
                dir: SaDir::In,
                spi,
            });
            self.actions.push_back(Action::DeleteSa {
                peer: id,
                dir: SaDir::Out,
                spi,
            });
            self.table.release(spi);
        }
        let mut budget = TIMER_BATCH;
        while let Some(&Reverse((t, id))) = self.rotate_heap.peek() {
            if t > now || budget == 0 {
                break;
            }
            self.rotate_heap.pop();
            let n = &self.nodes[id.0 as usize];
            if n.rotate_at != t {
                continue; // superseded
            }
            budget -= 1;
            if n.confirmed && n.latest.is_some() {
                self.rotate(now, id);
            }
            // Otherwise the next hello under the latest generation rotates
            // (rotate_at stays in the past).
        }
        if let Some((next, asked)) = self.rotate_all
            && asked <= now
        {
            let end = (next as usize + TIMER_BATCH).min(self.nodes.len());
            for i in next as usize..end {
                self.rotate_one(now, PeerId(i as u32));
            }
            self.rotate_all = (end < self.nodes.len()).then_some((end as u32, asked));
        }
    }

    /// Queues a rotation deadline. The heap is lazy (a node's earlier entries
    /// go stale when it rotates early); once stale entries outnumber the
    /// nodes it is rebuilt, so forced rotations cannot grow it without bound.
    fn push_rotation(&mut self, at: Time, id: PeerId) {
        self.rotate_heap.push(Reverse((at, id)));
        if self.rotate_heap.len() > 2 * self.nodes.len() + 64 {
            let nodes = &self.nodes;
            self.rotate_heap
                .retain(|Reverse((t, id))| nodes[id.0 as usize].rotate_at == *t);
        }
    }

    /// Rotates every node: those in sync [`TIMER_BATCH`] at a time from the
    /// next [`Self::handle_timeout`] on (so the caller keeps serving the
    /// control channel between parts), the others at their next hello under
    /// the latest generation. Returns the number of nodes.
    pub fn rotate_all(&mut self, now: Time) -> usize {
        self.rotate_all = Some((0, now));
        self.nodes.len()
    }

    fn rotate_one(&mut self, now: Time, id: PeerId) {
        let n = &mut self.nodes[id.0 as usize];
        if n.confirmed && n.latest.is_some() {
            self.rotate(now, id);
        } else {
            n.force_rotate = true;
        }
    }

    /// Rotates `id` now if it is in sync, else at its next hello under the
    /// latest generation.
    pub fn rotate_now(&mut self, now: Now, id: PeerId) -> Result<(), UnknownNode> {
        if id.0 as usize >= self.nodes.len() {
            return Err(UnknownNode(format!("#{}", id.0)));
        }
        self.rotate_one(now.mono, id);
        Ok(())
    }

    /// Arms every node's first rotation timer; call once after [`Hub::new`].
    pub fn start(&mut self) {
        self.rotate_heap = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| Reverse((n.rotate_at, PeerId(i as u32))))
            .collect();
    }

    /// The key-SPI table, one row per node.
    pub fn status(&self, now: Time) -> Vec<PeerStatus> {
        (0..self.nodes.len())
            .filter_map(|i| self.peer_status(PeerId(i as u32), now))
            .collect()
    }

    /// One node's row of the key-SPI table.
    pub fn peer_status(&self, id: PeerId, now: Time) -> Option<PeerStatus> {
        let n = self.nodes.get(id.0 as usize)?;
        Some(PeerStatus {
            name: self.names.get(id).to_string(),
            generation: n.latest.as_ref().map_or(0, |g| g.number),
            tx_spi: n.outbound,
            rx_spis: [n.previous.as_ref(), n.latest.as_ref()]
                .into_iter()
                .flatten()
                .map(|g| g.spi)
                .collect(),
            state: match (&n.latest, n.confirmed) {
                (None, _) => PeerState::Init,
                (Some(_), true) => PeerState::InSync,
                (Some(_), false) => PeerState::AwaitingConfirm,
            },
            rotations: n.rotations,
            resends: n.resends,
            inits: n.inits,
            last_seen_ms: n.last_seen.map(|t| now.since(t)),
        })
    }

    /// Timer entries held (rotation deadlines, stale ones included, and SA
    /// retirements awaiting their grace period): bounded by a small multiple
    /// of the node count however often rotations are forced.
    pub fn timer_entries(&self) -> usize {
        self.rotate_heap.len() + self.retire_queue.len()
    }

    /// Latest generation number per node (0 before init), for invariant checks.
    pub fn generation_of(&self, id: PeerId) -> u64 {
        self.nodes
            .get(id.0 as usize)
            .and_then(|n| n.latest.as_ref())
            .map_or(0, |g| g.number)
    }
}

impl Machine for Hub {
    fn handle_datagram(&mut self, now: Now, data: &[u8]) {
        Hub::handle_datagram(self, now, data)
    }

    fn handle_timeout(&mut self, now: Now) {
        Hub::handle_timeout(self, now)
    }

    fn poll_timeout(&self) -> Option<Time> {
        Hub::poll_timeout(self)
    }

    fn poll_action(&mut self) -> Option<Action> {
        Hub::poll_action(self)
    }

    fn drops(&self) -> &BTreeMap<DropReason, u64> {
        Hub::drops(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hub's per-node state is most of its memory at scale (issue 5:
    /// <= 1 KiB per node in all, kernel executor and tables included).
    #[test]
    fn per_node_state_stays_small() {
        let size = std::mem::size_of::<NodeState>();
        assert!(size <= 456, "NodeState is {size} bytes");
    }
}
