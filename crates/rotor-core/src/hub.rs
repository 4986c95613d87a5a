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

use rand::{CryptoRng, RngCore};
use x25519_dalek::{EphemeralSecret, PublicKey};

use crate::action::{Action, DropReason, Event, PeerId, SaDir, Time};
use crate::config::{ConfigError, HubConfig};
use crate::generation::Generation;
use crate::key_schedule::{init_request_key, init_session_key, init_spi};
use crate::key_spi_table::{KeySpiTable, SpiOwner};
use crate::secret::Secret32;
use crate::status::{PeerState, PeerStatus};
use crate::wire::{self, Body, FLAG_INIT_REPLY, Header, MsgType};

#[derive(Debug)]
struct NodeState {
    name: String,
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
    last_init: Option<([u8; 32], Vec<u8>)>,
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

/// An unknown node name or id was given to a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no such node: {0}")]
pub struct UnknownNode(pub String);

/// The hub.
#[derive(Debug)]
pub struct Hub {
    nodes: Vec<NodeState>,
    table: KeySpiTable,
    grace_ms: u64,
    init_skew_ms: u64,
    key_bits: crate::key_schedule::KeyBits,
    /// Rotation deadlines (lazy: an entry is live if it equals the node's rotate_at).
    rotate_heap: BinaryHeap<Reverse<(Time, PeerId)>>,
    /// Generations to delete, in deadline order (the grace is constant).
    retire_queue: VecDeque<(Time, PeerId, u32)>,
    actions: VecDeque<Action>,
    drops: BTreeMap<DropReason, u64>,
}

impl Hub {
    /// A hub serving `cfg.nodes`, with no chains yet (every node starts by
    /// sending `init`).
    pub fn new(cfg: HubConfig, now: Time) -> Result<Hub, ConfigError> {
        cfg.validate()?;
        let mut table = KeySpiTable::with_capacity(cfg.nodes.len());
        let mut nodes = Vec::with_capacity(cfg.nodes.len());
        for (i, n) in cfg.nodes.into_iter().enumerate() {
            let spi = init_spi(&n.psk);
            table.add_init(spi, PeerId(i as u32));
            nodes.push(NodeState {
                name: n.name,
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
            table,
            grace_ms: cfg.grace_ms,
            init_skew_ms: cfg.init_skew_ms,
            key_bits: cfg.key_bits,
            rotate_heap: BinaryHeap::new(),
            retire_queue: VecDeque::new(),
            actions: VecDeque::new(),
            drops: BTreeMap::new(),
        })
    }

    /// Next action to execute, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        let r = self.rotate_heap.peek().map(|Reverse((t, _))| *t);
        let g = self.retire_queue.front().map(|(t, _, _)| *t);
        match (r, g) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Number of configured nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The id of the node called `name`.
    pub fn node_id(&self, name: &str) -> Option<PeerId> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .map(|i| PeerId(i as u32))
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

    /// Handles a datagram from the network. `unix_ms` is the hub's wall clock
    /// (for init timestamps). A datagram that is not a valid, fresh message
    /// changes nothing but the drop counters.
    pub fn handle_datagram(
        &mut self,
        now: Time,
        unix_ms: u64,
        data: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) {
        if let Err(r) = self.datagram(now, unix_ms, data, rng) {
            self.drop_reason(r);
        }
    }

    fn datagram(
        &mut self,
        now: Time,
        unix_ms: u64,
        data: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), DropReason> {
        let dg = wire::parse(data).map_err(DropReason::Wire)?;
        match self.table.lookup(dg.header.spi).cloned() {
            None => Err(DropReason::UnknownSpi),
            Some(SpiOwner::Init(candidates)) => {
                if dg.header.kind != MsgType::Init {
                    return Err(DropReason::UnexpectedType);
                }
                // Usually one candidate; with colliding init SPIs the AEAD picks.
                let mut last = DropReason::Wire(wire::WireError::AuthFailed);
                for id in candidates {
                    match self.init(now, unix_ms, id, &dg, rng) {
                        Ok(()) => return Ok(()),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Some(SpiOwner::Generation { node, generation }) => {
                if dg.header.kind != MsgType::Hello {
                    return Err(DropReason::UnexpectedType);
                }
                self.hello(now, node, generation, &dg, rng)
            }
        }
    }

    fn init(
        &mut self,
        now: Time,
        unix_ms: u64,
        id: PeerId,
        dg: &wire::Datagram<'_>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), DropReason> {
        let n = &self.nodes[id.0 as usize];
        let mut node_nonce = [0u8; 32];
        node_nonce.copy_from_slice(dg.clear);
        let key = init_request_key(&n.psk, &n.name, &node_nonce);
        let Body::Init {
            timestamp_ms,
            eph_pub,
        } = dg.open(&key).map_err(DropReason::Wire)?
        else {
            return Err(DropReason::UnexpectedType);
        };
        if timestamp_ms == n.last_init_ts
            && let Some((nonce, reply)) = &n.last_init
            && *nonce == node_nonce
        {
            // The node did not get our reply: send the same one again.
            let datagram = reply.clone();
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
        let eph = EphemeralSecret::random_from_rng(&mut *rng);
        let hub_pub = PublicKey::from(&eph);
        let shared = eph.diffie_hellman(&PublicKey::from(eph_pub));
        if !shared.was_contributory() {
            return Err(DropReason::BadEphemeral);
        }
        // Accepted: from here on, state changes.
        let mut hub_nonce = [0u8; 32];
        rng.fill_bytes(&mut hub_nonce);
        let session = init_session_key(&n.psk, shared.as_bytes(), &node_nonce, &hub_nonce, &n.name);
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
        let gen1 = self.new_generation(rng, id, 1);
        let n = &mut self.nodes[id.0 as usize];
        n.last_init_ts = timestamp_ms;
        n.previous = None;
        n.confirmed = false;
        n.force_rotate = false;
        n.inits += 1;
        n.last_seen = Some(now);
        n.rotate_at = now.plus_ms(n.rotate_interval_ms);
        self.rotate_heap.push(Reverse((n.rotate_at, id)));
        let n = &mut self.nodes[id.0 as usize];
        let mut clear = [0u8; 64];
        clear[..32].copy_from_slice(&hub_nonce);
        clear[32..].copy_from_slice(hub_pub.as_bytes());
        let header = Header {
            kind: MsgType::Key,
            flags: FLAG_INIT_REPLY,
            spi: init_spi,
            counter: 0,
        };
        let body = Body::Key {
            generation: 1,
            spi: gen1.spi,
            secret: gen1.secret.clone(),
        };
        let spi = gen1.spi;
        n.latest = Some(gen1);
        let datagram = wire::seal(&session, header, &clear, &body).unwrap_or_default();
        n.last_init = Some((node_nonce, datagram.clone()));
        self.actions.push_back(Action::Send { peer: id, datagram });
        self.actions
            .push_back(Action::Event(Event::Initialised { peer: id, spi }));
        Ok(())
    }

    /// Creates generation `number` for `id`, installs its inbound SA (I3: before
    /// the node can learn it) and its outbound SA (unused until the outbound
    /// policy names it).
    fn new_generation(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        id: PeerId,
        number: u64,
    ) -> Generation {
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        let secret = Secret32::new(s);
        zeroize::Zeroize::zeroize(&mut s);
        let spi = self.table.allocate(rng, id, number);
        let g = Generation::new(
            number,
            spi,
            secret,
            &self.nodes[id.0 as usize].name,
            self.key_bits,
        );
        self.actions.push_back(Action::InstallSa {
            peer: id,
            dir: SaDir::In,
            spi,
            key: g.keys.esp_n2h.clone(),
        });
        self.actions.push_back(Action::InstallSa {
            peer: id,
            dir: SaDir::Out,
            spi,
            key: g.keys.esp_h2n.clone(),
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

    fn hello(
        &mut self,
        now: Time,
        id: PeerId,
        generation: u64,
        dg: &wire::Datagram<'_>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), DropReason> {
        let n = &mut self.nodes[id.0 as usize];
        let is_latest = n
            .latest
            .as_ref()
            .is_some_and(|g| g.number == generation && g.spi == dg.header.spi);
        let is_previous = n
            .previous
            .as_ref()
            .is_some_and(|g| g.number == generation && g.spi == dg.header.spi);
        let g = match (is_latest, is_previous) {
            (true, _) => n.latest.as_mut(),
            (_, true) => n.previous.as_mut(),
            _ => None,
        }
        .ok_or(DropReason::StaleGeneration)?;
        if !g.rx_window.check(dg.header.counter) {
            return Err(DropReason::Replay);
        }
        let Body::Hello {
            generation: claimed,
            rotate,
        } = dg.open(&g.keys.ctl_n2h).map_err(DropReason::Wire)?
        else {
            return Err(DropReason::UnexpectedType);
        };
        if claimed != g.number {
            return Err(DropReason::StaleGeneration);
        }
        g.rx_window.commit(dg.header.counter);
        n.last_seen = Some(now);
        if is_latest {
            self.in_sync(now, id, rotate, rng);
        } else if !n.crossing_spared && now.since(n.key_sent_at) < CROSSING_HOLDOFF_MS {
            n.crossing_spared = true;
        } else {
            self.resend(id);
        }
        Ok(())
    }

    /// A message under the latest generation: confirm it, rotate if due.
    fn in_sync(
        &mut self,
        now: Time,
        id: PeerId,
        requested: bool,
        rng: &mut (impl RngCore + CryptoRng),
    ) {
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
                // confirmation; the chain it replaced can go now.
                self.set_outbound(id, Some(spi));
                let old = std::mem::take(&mut self.nodes[id.0 as usize].superseded);
                for s in old {
                    self.retire(now, id, s);
                }
            }
        }
        let n = &self.nodes[id.0 as usize];
        if n.force_rotate || requested || now >= n.rotate_at {
            self.rotate(now, id, rng);
        } else {
            self.send_ack(id);
        }
    }

    /// Tells the node it is in sync, under the latest generation.
    fn send_ack(&mut self, id: PeerId) {
        let n = &mut self.nodes[id.0 as usize];
        if let Some(g) = n.latest.as_mut() {
            let header = Header {
                kind: MsgType::Ack,
                flags: 0,
                spi: g.spi,
                counter: g.next_counter(),
            };
            let b = Body::Ack {
                generation: g.number,
            };
            let datagram = wire::seal(&g.keys.ctl_h2n, header, &[], &b).unwrap_or_default();
            self.actions.push_back(Action::Send { peer: id, datagram });
        }
    }

    /// Creates N+1 (the node proved N), switches outbound to N, retires N-1,
    /// and sends N+1 protected under N.
    fn rotate(&mut self, now: Time, id: PeerId, rng: &mut (impl RngCore + CryptoRng)) {
        let number = match self.nodes[id.0 as usize].latest.as_ref() {
            Some(g) => g.number + 1,
            None => return,
        };
        let new = self.new_generation(rng, id, number);
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
        let body = Body::Key {
            generation: new.number,
            spi: new.spi,
            secret: new.secret.clone(),
        };
        n.latest = Some(new);
        n.confirmed = false;
        n.force_rotate = false;
        n.rotations += 1;
        n.key_sent_at = now;
        n.crossing_spared = false;
        n.rotate_at = now.plus_ms(n.rotate_interval_ms);
        self.rotate_heap.push(Reverse((n.rotate_at, id)));
        if let Some(prev) = n.previous.as_mut() {
            let header = Header {
                kind: MsgType::Key,
                flags: 0,
                spi: prev.spi,
                counter: prev.next_counter(),
            };
            let datagram = wire::seal(&prev.keys.ctl_h2n, header, &[], &body).unwrap_or_default();
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
        let body = Body::Key {
            generation: latest.number,
            spi: latest.spi,
            secret: latest.secret.clone(),
        };
        let (generation, spi) = (latest.number, latest.spi);
        let header = Header {
            kind: MsgType::Key,
            flags: 0,
            spi: prev.spi,
            counter: prev.next_counter(),
        };
        let datagram = wire::seal(&prev.keys.ctl_h2n, header, &[], &body).unwrap_or_default();
        n.resends += 1;
        self.actions.push_back(Action::Send { peer: id, datagram });
        self.actions.push_back(Action::Event(Event::Resent {
            peer: id,
            generation,
            spi,
        }));
    }

    /// Fires due timers: rotations (pushed to confirmed nodes at once, else at
    /// their next hello) and SA deletions after the grace period.
    pub fn handle_timeout(&mut self, now: Time, rng: &mut (impl RngCore + CryptoRng)) {
        while let Some(&(t, id, spi)) = self.retire_queue.front() {
            if t > now {
                break;
            }
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
        while let Some(&Reverse((t, id))) = self.rotate_heap.peek() {
            if t > now {
                break;
            }
            self.rotate_heap.pop();
            let n = &self.nodes[id.0 as usize];
            if n.rotate_at != t {
                continue; // superseded
            }
            if n.confirmed && n.latest.is_some() {
                self.rotate(now, id, rng);
            }
            // Otherwise the next hello under the latest generation rotates
            // (rotate_at stays in the past).
        }
    }

    /// Rotates `id` now if it is in sync, else at its next hello under the
    /// latest generation.
    pub fn rotate_now(
        &mut self,
        now: Time,
        id: PeerId,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), UnknownNode> {
        let n = self
            .nodes
            .get_mut(id.0 as usize)
            .ok_or_else(|| UnknownNode(format!("#{}", id.0)))?;
        if n.confirmed && n.latest.is_some() {
            self.rotate(now, id, rng);
        } else {
            n.force_rotate = true;
        }
        Ok(())
    }

    /// Arms every node's first rotation timer; call once after [`Hub::new`].
    pub fn start(&mut self) {
        for (i, n) in self.nodes.iter().enumerate() {
            self.rotate_heap
                .push(Reverse((n.rotate_at, PeerId(i as u32))));
        }
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
            name: n.name.clone(),
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

    /// Latest generation number per node (0 before init), for invariant checks.
    pub fn generation_of(&self, id: PeerId) -> u64 {
        self.nodes
            .get(id.0 as usize)
            .and_then(|n| n.latest.as_ref())
            .map_or(0, |g| g.number)
    }
}
