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
//!
//! The hub's state is split in two so that one node's step can hold its
//! entry and everything else mutably at once: the per-node entries
//! (`NodeState`, one per configured node) and `Shared` (key-SPI table, names,
//! timers, action queue, drop counters, settings, RNG). Handlers take
//! `(&mut Shared, &mut NodeState)` and never index the node list again.
//! By concern: `init.rs` answers init requests; `rotation.rs` hellos,
//! confirmations, rotations and resends; `timers.rs` the rotation heap,
//! `rotate --all` pacing and the grace-period retire queue.

mod admit;
mod cookie;
mod init;
mod path;
mod persist;
mod rotation;
mod timers;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::action::{Action, DropReason, Event, Now, PeerId, SaDir, Time};
use crate::config::{ConfigError, HubConfig};
use crate::generation::Generation;
use crate::key_schedule::{KeyBits, init_spi, record_psk_tag};
use crate::key_spi_table::{KeySpiTable, SpiOwner};
use crate::machine::{Class, Machine};
use crate::names::NameTable;
use crate::ratchet::HubEpoch;
use crate::secret::Secret32;
use crate::status::{PeerState, PeerStatus};
use crate::wire::{self, MsgType};

pub use admit::{INITS, Limit, REQUESTED_ROTATIONS, RESENDS, RETIRING_PER_NODE, RETIRING_SLACK};
pub use cookie::{
    LOAD_HOLD_MS, REPLIES_PER_S as COOKIE_REPLIES_PER_S, SECRET_MS as COOKIE_SECRET_MS,
    UNDER_LOAD_INITS,
};
pub use path::behind_nat;
pub use timers::TIMER_BATCH;

/// One node's entry: its chain and counters. Kept small (a unit test
/// guards its size): at 100,000 nodes it is most of the hub's memory.
#[derive(Debug)]
struct NodeState {
    psk: Secret32,
    /// [`record_psk_tag`] of `psk` and the name, computed once: every record
    /// write carries it, and an HKDF per write cost the hub more than the
    /// rest of the encoding.
    psk_tag: [u8; 16],
    init_spi: u32,
    rotate_interval_ms: u64,
    latest: Option<Generation>,
    previous: Option<Generation>,
    /// The node proved it holds `latest`.
    confirmed: bool,
    /// SPI the hub sends on.
    outbound: Option<u32>,
    /// The node's X25519 share for the ratchet step out of `latest`, from
    /// its hellos under `latest`; all zero until one is heard (a rotation
    /// waits for it).
    node_share: [u8; 32],
    /// What the `key` message of `latest` carries, for sending the same
    /// message again (I4); dropped once the node confirms `latest`.
    pending: Option<Box<PendingKey>>,
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
    /// Where the node is reached (`None`: not heard from yet, and no
    /// address configured).
    path: path::Place,
    /// A NAT sits between: ESP in UDP.
    nat: bool,
    /// The path's address is configured: messages from elsewhere are
    /// answered there but never move the node (its port may change).
    pinned: bool,
    /// Freshness (generation, counter) of the message that set `path`:
    /// only a fresher one moves the node (see [`path`]).
    path_mark: u64,
    /// Durable state changed since the last [`Hub::take_dirty`] (the id is
    /// then in `Shared::dirty`).
    dirty: bool,
    /// Budgets of what the node may ask for ([`admit`]); not durable (a
    /// restarted hub starts them full).
    rotate_bucket: admit::Bucket,
    init_bucket: admit::Bucket,
    resend_bucket: admit::Bucket,
}

/// The parts of a rotation's `key` message that a resend repeats: the
/// hub's random value and share, and the node share they were combined with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingKey {
    /// The hub's random value (the `key` message's 32-byte value field).
    pub random: Secret32,
    /// The hub's X25519 share.
    pub hub_share: [u8; 32],
    /// The node's share the new generation was derived with.
    pub node_share: [u8; 32],
}

/// Everything of the hub's that is not one node's entry.
#[derive(Debug)]
struct Shared {
    /// Node names (bound into every derived key), indexed like the entries.
    names: NameTable,
    table: KeySpiTable,
    grace_ms: u64,
    init_skew_ms: u64,
    key_bits: KeyBits,
    /// How long one X25519 key pair of the hub serves rotations.
    ratchet_epoch_ms: u64,
    /// Every how many rotations of a node is a ratchet step.
    ratchet_every: u64,
    /// The hub's ratchet key pair of the current epoch.
    epoch: HubEpoch,
    /// Rotation deadlines (lazy: an entry is live if it equals the node's
    /// rotate_at; compacted when stale entries outnumber the nodes).
    rotate_heap: BinaryHeap<Reverse<(Time, PeerId)>>,
    /// `rotate --all` in progress: the next node to rotate, and when it was
    /// asked (the due time [`Hub::poll_timeout`] reports until it is done).
    rotate_all: Option<(u32, Time)>,
    /// Most entries of `retire_queue` before rotations are deferred
    /// ([`Hub::retiring_cap`]).
    retiring_cap: usize,
    /// Generations to delete, in deadline order (the grace is constant);
    /// the flag says whether the outbound SA is there to delete (see
    /// `Generation::out_missing`).
    retire_queue: VecDeque<(Time, PeerId, u32, bool)>,
    /// Nodes whose durable state changed since the last [`Hub::take_dirty`].
    dirty: Vec<PeerId>,
    actions: VecDeque<Action>,
    drops: BTreeMap<DropReason, u64>,
    /// Cookie secrets and the load that decides whether inits need one.
    cookies: cookie::CookieJar,
    /// Generation secrets, SPIs, init nonces and ephemeral keys.
    rng: StdRng,
    /// Path changes move SAs in place ([`Hub::set_move_in_place`]).
    in_place: bool,
    /// Repairs rotate nobody at once ([`Hub::hold_repairs`]).
    hold_repairs: bool,
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
    /// One entry per configured node, indexed by [`PeerId`].
    nodes: Vec<NodeState>,
    shared: Shared,
}

/// The entry of the node the key-SPI table named. The table only names
/// configured nodes; a miss is dropped like an unknown SPI, never a panic.
fn entry(nodes: &mut [NodeState], id: PeerId) -> Result<&mut NodeState, DropReason> {
    nodes.get_mut(id.0 as usize).ok_or(DropReason::UnknownSpi)
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
                psk_tag: record_psk_tag(&n.psk, &n.name),
                psk: n.psk,
                init_spi: spi,
                rotate_interval_ms: n.rotate_interval_ms,
                latest: None,
                previous: None,
                confirmed: false,
                outbound: None,
                node_share: [0; 32],
                pending: None,
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
                path: path::Place::default(),
                nat: false,
                pinned: false,
                path_mark: 0,
                dirty: false,
                rotate_bucket: admit::Bucket::full(now),
                init_bucket: admit::Bucket::full(now),
                resend_bucket: admit::Bucket::full(now),
            });
        }
        let mut hub = Hub {
            nodes,
            shared: Shared {
                names,
                table,
                grace_ms: cfg.grace_ms,
                init_skew_ms: cfg.init_skew_ms,
                key_bits: cfg.key_bits,
                ratchet_epoch_ms: cfg.ratchet_epoch_ms,
                ratchet_every: u64::from(cfg.ratchet_every),
                epoch: HubEpoch::default(),
                rotate_heap: BinaryHeap::new(),
                rotate_all: None,
                retiring_cap: 0,
                retire_queue: VecDeque::new(),
                dirty: Vec::new(),
                actions: VecDeque::new(),
                drops: BTreeMap::new(),
                cookies: cookie::CookieJar::new(),
                rng: StdRng::from_seed(rng_seed),
                in_place: false,
                hold_repairs: false,
            },
        };
        hub.shared.retiring_cap = hub.retiring_cap();
        Ok(hub)
    }

    /// Next action to execute, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        let actions = &mut self.shared.actions;
        let a = actions.pop_front();
        if a.is_none() && actions.capacity() > 4 * TIMER_BATCH * 8 {
            // A burst left a large queue behind: give the memory back.
            actions.shrink_to(TIMER_BATCH * 8);
        }
        a
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        let sh = &self.shared;
        let r = sh.rotate_heap.peek().map(|Reverse((t, _))| *t);
        let g = sh.retire_queue.front().map(|(t, _, _, _)| *t);
        let a = sh.rotate_all.map(|(_, t)| t);
        let e = sh.epoch.deadline();
        [r, g, a, e].into_iter().flatten().min()
    }

    /// Number of configured nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The id of the node called `name`.
    pub fn node_id(&self, name: &str) -> Option<PeerId> {
        self.shared.names.find(name)
    }

    /// Datagrams dropped so far, by reason.
    pub fn drops(&self) -> &BTreeMap<DropReason, u64> {
        &self.shared.drops
    }

    /// Handles a datagram from the network, received from `from`.
    /// `now.unix_ms` is checked against init timestamps. A datagram that is
    /// not a valid, fresh message changes nothing but the drop counters.
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddr, data: &[u8]) {
        if let Err(r) = self.datagram(now, from, data) {
            let peer = self.spi_owner(data);
            self.shared.drop_reason(r, peer);
        }
        self.compact_timers();
    }

    /// The one node whose SPI `data`'s header carries (see
    /// [`Event::Dropped`]). Only called for dropped datagrams: the parse is
    /// repeated there rather than threaded through every handler.
    fn spi_owner(&self, data: &[u8]) -> Option<PeerId> {
        let dg = wire::parse(data).ok()?;
        match self.shared.table.lookup(dg.header.spi)? {
            SpiOwner::Init(id) | SpiOwner::Generation(id) => Some(id),
            SpiOwner::SharedInit => None,
        }
    }

    /// Routes a datagram by its header SPI (I5) to the handler of its node.
    fn datagram(&mut self, now: Now, from: SocketAddr, data: &[u8]) -> Result<(), DropReason> {
        let dg = wire::parse(data).map_err(DropReason::Wire)?;
        if dg.header.kind == MsgType::Init {
            self.cookie_gate(now.mono, from, &dg)?;
        }
        let Hub { nodes, shared: sh } = self;
        match sh.table.lookup(dg.header.spi) {
            None => Err(DropReason::UnknownSpi),
            Some(SpiOwner::Init(_) | SpiOwner::SharedInit) if dg.header.kind != MsgType::Init => {
                Err(DropReason::UnexpectedType)
            }
            Some(SpiOwner::Init(id)) => sh.init_from(now, id, entry(nodes, id)?, from, &dg),
            Some(SpiOwner::SharedInit) => {
                // Colliding init SPIs (rare): the AEAD picks the node.
                let mut last = DropReason::Wire(wire::WireError::AuthFailed);
                for id in sh.table.init_candidates(dg.header.spi) {
                    match entry(nodes, id).and_then(|n| sh.init_from(now, id, n, from, &dg)) {
                        Ok(()) => return Ok(()),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Some(SpiOwner::Generation(id)) => {
                if dg.header.kind != MsgType::Hello {
                    return Err(DropReason::UnexpectedType);
                }
                sh.hello(now.mono, id, entry(nodes, id)?, from, &dg)
            }
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
            name: self.shared.names.get(id).to_string(),
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
            key_age_ms: n.latest.as_ref().map(|_| now.since(n.key_sent_at)),
        })
    }

    /// Where node `id` is reached and whether through a NAT (`None`: not
    /// heard from, nothing configured or restored).
    pub fn path(&self, id: PeerId) -> Option<(SocketAddr, bool)> {
        let n = self.nodes.get(id.0 as usize)?;
        n.path.get().map(|p| (p, n.nat))
    }

    /// Sets where node `id` is, as configured or restored after a restart,
    /// without moving anything: the kernel already holds its SAs there (or
    /// none). Later messages move it as usual, except that a `pinned`
    /// node's address never changes (its port may, behind a NAT).
    pub fn set_path(&mut self, id: PeerId, to: SocketAddr, nat: bool, pinned: bool) {
        if let Some(n) = self.nodes.get_mut(id.0 as usize) {
            n.path = path::Place::of(to);
            n.nat = nat;
            n.pinned = pinned;
        }
    }

    /// Whether a node's path change moves its SAs in place, state and
    /// all (`true`: the caller can, see [`Action::PeerPath`]'s
    /// `in_place`), or has them removed and re-installed or re-keyed
    /// (`false`, the default).
    pub fn set_move_in_place(&mut self, on: bool) {
        self.shared.in_place = on;
    }

    /// Latest generation number per node (0 before init), for invariant checks.
    pub fn generation_of(&self, id: PeerId) -> u64 {
        self.nodes
            .get(id.0 as usize)
            .and_then(|n| n.latest.as_ref())
            .map_or(0, |g| g.number)
    }
}

impl Shared {
    /// An init under node `id`'s init SPI from `from`: an accepted one
    /// (not a retransmission) also sets where the node is.
    fn init_from(
        &mut self,
        now: Now,
        id: PeerId,
        n: &mut NodeState,
        from: SocketAddr,
        dg: &wire::Datagram<'_>,
    ) -> Result<(), DropReason> {
        let before = n.inits;
        self.init(now, id, n, dg)?;
        if n.inits != before {
            self.heard_from(now.mono, id, n, from, None, None);
        }
        Ok(())
    }

    /// Notes that node `id`'s durable state changed (see [`Hub::take_dirty`]).
    fn mark(&mut self, id: PeerId, n: &mut NodeState) {
        if !n.dirty {
            n.dirty = true;
            self.dirty.push(id);
        }
    }

    fn drop_reason(&mut self, reason: DropReason, peer: Option<PeerId>) {
        *self.drops.entry(reason).or_insert(0) += 1;
        self.actions
            .push_back(Action::Event(Event::Dropped { reason, peer }));
    }

    /// 32 random bytes: generation 1's secret, or a rotation's random value.
    fn random32(&mut self) -> Secret32 {
        let mut s = zeroize::Zeroizing::new([0u8; 32]);
        self.rng.fill_bytes(s.as_mut());
        Secret32::new(*s)
    }

    /// Creates generation `number` for `id` with `secret` and `spi`,
    /// installs its inbound SA (I3: before the node can learn it) and its
    /// outbound SA (unused until the outbound policy names it).
    fn new_generation(
        &mut self,
        id: PeerId,
        number: u64,
        spi: u32,
        secret: Secret32,
    ) -> Generation {
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

    /// Points the node's outbound policy at `spi` (`None`: block), if it
    /// does not already.
    fn set_outbound(&mut self, id: PeerId, n: &mut NodeState, spi: Option<u32>) {
        if n.outbound != spi {
            n.outbound = spi;
            self.mark(id, n);
            self.actions
                .push_back(Action::SetOutbound { peer: id, spi });
        }
    }
}

impl Machine for Hub {
    fn handle_datagram(&mut self, now: Now, from: SocketAddr, data: &[u8]) {
        Hub::handle_datagram(self, now, from, data)
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

    fn classify(&self, from: SocketAddr, data: &[u8]) -> Class {
        Hub::classify(self, from, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hub's per-node state is most of its memory at scale (issue 5:
    /// <= 1 KiB per node in all, kernel executor and tables included); the
    /// three budgets of [`admit`] take 16 of these bytes.
    #[test]
    fn per_node_state_stays_small() {
        let size = std::mem::size_of::<NodeState>();
        assert!(size <= 544, "NodeState is {size} bytes");
    }
}
