//! A node's state machine.
//!
//! The node sends on its latest generation N and accepts N and N-1 (I1). It
//! says `hello` under N every interval, carrying its ratchet share for the
//! step out of N; the hub answers every hello (`ack`, or `key` for N+1). On
//! `key` N+1 under N it derives N+1's secret with its ratchet private key
//! (then replaces that key), installs N+1 inbound first, then outbound,
//! switches to it, and confirms with a hello under N+1 (I3). After
//! `retries` unanswered hellos it falls back to init, keeping its current SAs
//! until the init reply gives it a new chain (make before break).
//!
//! A hello the hub has not answered within a quarter of the interval is
//! repeated (a fresh counter each time), up to [`HELLOS_PER_RETRY`] ×
//! `retries` unanswered hellos in a row: under heavy loss the node keeps its
//! chain (a lost hello or ack costs a quarter interval, not an init), while
//! a dead hub is still given up on after about `(retries + 1) ×
//! hello_interval`.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use zeroize::Zeroizing;

use crate::action::{Action, DropReason, Event, Now, PeerId, SaDir, Time};
use crate::config::{ConfigError, NodeConfig};
use crate::generation::{EspKeys, Generation};
use crate::key_schedule::{
    init_reply_mac_key, init_request_key, init_session_key, init_spi, ratchet_secret,
    record_psk_tag,
};
use crate::machine::Machine;
use crate::persist::{self, GenRecord, KernelView, Kind, Record, RestoreReport};
use crate::secret::Secret32;
use crate::status::{PeerState, PeerStatus};
use crate::wire::{self, Message, MsgType};
use crate::x25519::Ephemeral;

/// The hub, as seen from a node.
pub const HUB: PeerId = PeerId(0);

/// Hellos per configured retry: a node falls back to init after
/// `HELLOS_PER_RETRY × retries` unanswered hellos in a row, repeated a
/// quarter interval apart, i.e. after about the same silence as `retries`
/// hellos a whole interval apart, but with four times the chances for one
/// of them to get through.
pub const HELLOS_PER_RETRY: u32 = 4;

/// An init request waiting for its reply. Retransmissions send the same
/// datagram, so the hub answers them with the same reply (one generation 1
/// per attempt, never two competing chains).
struct PendingInit {
    nonce: [u8; 32],
    eph: Ephemeral,
    /// The key of the reply's MAC, checked before the X25519.
    reply_mac: crate::secret::ControlKey,
    datagram: Vec<u8>,
    /// The hub's cookie for this init, from its latest cookie message:
    /// appended to every retransmission.
    cookie: Option<[u8; wire::COOKIE_LEN]>,
    created: Time,
}

/// An init attempt is retransmitted unchanged for this long, then replaced by
/// a fresh one (new nonce, key and timestamp), well inside the hub's default
/// 120 s timestamp skew.
pub const INIT_REFRESH_MS: u64 = 30_000;

impl std::fmt::Debug for PendingInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingInit(<redacted>)")
    }
}

/// The node.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    /// [`record_psk_tag`] of the PSK and name, computed once (every record
    /// carries it).
    psk_tag: [u8; 16],
    init_spi: u32,
    latest: Option<Generation>,
    previous: Option<Generation>,
    /// The key pair of the ratchet step out of `latest`: its public share
    /// goes in every hello under `latest`; it derives the next generation's
    /// secret, and is then replaced (the old private key zeroized).
    ratchet: Option<Ephemeral>,
    pending: Option<PendingInit>,
    /// The chain an init reply replaced: kept until the hub is heard under the
    /// new chain (proof it no longer sends on the old one), then retired.
    superseded: Vec<u32>,
    init_attempts: u32,
    last_init_ts: u64,
    unanswered: u32,
    /// When the last hello went out (a timely answer resumes the normal
    /// cadence from it).
    last_hello_at: Time,
    rotate_requested: bool,
    /// When to send the next hello (running) or init (initialising).
    next_send: Time,
    /// SPIs to delete after grace; the flag says whether the outbound SA is
    /// there to delete (see `Generation::out_missing`).
    retire_queue: VecDeque<(Time, u32, bool)>,
    /// Durable state changed since the last [`Node::take_dirty`].
    dirty: bool,
    last_seen: Option<Time>,
    rotations: u64,
    inits: u64,
    actions: VecDeque<Action>,
    drops: BTreeMap<DropReason, u64>,
    /// Init nonces, ephemeral keys and backoff jitter.
    rng: StdRng,
    /// Where this node sends from, as it sees it (said in every hello, so
    /// the hub can tell a NAT; unspecified until the caller knows).
    source: SocketAddr,
    /// The hub's verdict: a NAT sits between (ESP in UDP).
    nat: bool,
    /// Path changes move SAs in place ([`Node::set_move_in_place`]).
    in_place: bool,
}

impl Node {
    /// A node with no keys: its first timeout (at `now`) sends `init`.
    /// `rng_seed` seeds every random choice the node makes (init nonces,
    /// ephemeral keys, backoff jitter): a restarted node needs a fresh seed.
    pub fn new(cfg: NodeConfig, now: Now, rng_seed: [u8; 32]) -> Result<Node, ConfigError> {
        let now = now.mono;
        cfg.validate()?;
        Ok(Node {
            init_spi: init_spi(&cfg.psk),
            psk_tag: record_psk_tag(&cfg.psk, &cfg.name),
            cfg,
            latest: None,
            previous: None,
            ratchet: None,
            pending: None,
            superseded: Vec::new(),
            init_attempts: 0,
            last_init_ts: 0,
            unanswered: 0,
            last_hello_at: now,
            rotate_requested: false,
            next_send: now,
            retire_queue: VecDeque::new(),
            dirty: false,
            last_seen: None,
            rotations: 0,
            inits: 0,
            source: SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            nat: false,
            in_place: false,
            actions: VecDeque::new(),
            drops: BTreeMap::new(),
            rng: StdRng::from_seed(rng_seed),
        })
    }

    /// Next action to execute, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        let g = self.retire_queue.front().map(|(t, _, _)| *t);
        Some(g.map_or(self.next_send, |g| g.min(self.next_send)))
    }

    /// Datagrams dropped so far, by reason.
    pub fn drops(&self) -> &BTreeMap<DropReason, u64> {
        &self.drops
    }

    /// Asks the hub for a rotation with the next hello (sent at once).
    pub fn request_rotation(&mut self, now: Time) {
        self.rotate_requested = true;
        self.dirty = true;
        if self.latest.is_some() && self.pending.is_none() {
            self.next_send = now;
        }
    }

    /// The SPIs of replaced generations waiting out their grace period:
    /// their SAs are still wanted in the kernel, though no [`crate::KernelView`]
    /// lists them.
    pub fn retiring(&self) -> impl Iterator<Item = u32> + '_ {
        self.retire_queue.iter().map(|&(_, spi, _)| spi)
    }

    /// Latest generation number (0 = none), for invariant checks.
    pub fn generation(&self) -> u64 {
        self.latest.as_ref().map_or(0, |g| g.number)
    }

    /// SPI this node sends on (`None`: blocked, no chain or its outbound SA
    /// lost, see [`Self::kernel_lost`]).
    pub fn tx_spi(&self) -> Option<u32> {
        self.latest
            .as_ref()
            .filter(|g| !g.out_missing)
            .map(|g| g.spi)
    }

    /// The node's row of the key-SPI table.
    pub fn status(&self, now: Time) -> PeerStatus {
        PeerStatus {
            name: self.cfg.name.clone(),
            generation: self.generation(),
            tx_spi: self.tx_spi(),
            rx_spis: [self.previous.as_ref(), self.latest.as_ref()]
                .into_iter()
                .flatten()
                .map(|g| g.spi)
                .collect(),
            state: if self.latest.is_none() || self.pending.is_some() {
                PeerState::Init
            } else {
                PeerState::InSync
            },
            rotations: self.rotations,
            resends: 0,
            inits: self.inits,
            last_seen_ms: self.last_seen.map(|t| now.since(t)),
            key_age_ms: None,
        }
    }

    fn drop_reason(&mut self, reason: DropReason, peer: Option<PeerId>) {
        *self.drops.entry(reason).or_insert(0) += 1;
        self.actions
            .push_back(Action::Event(Event::Dropped { reason, peer }));
    }

    /// Fires due timers: hello (or init) sends, and SA deletions after grace.
    /// An init is stamped with `now.unix_ms`.
    pub fn handle_timeout(&mut self, now: Now) {
        let Now { mono: now, unix_ms } = now;
        while let Some(&(t, spi, out)) = self.retire_queue.front() {
            if t > now {
                break;
            }
            self.retire_queue.pop_front();
            self.actions.push_back(Action::DeleteSa {
                peer: HUB,
                dir: SaDir::In,
                spi,
            });
            if out {
                self.actions.push_back(Action::DeleteSa {
                    peer: HUB,
                    dir: SaDir::Out,
                    spi,
                });
            }
        }
        if now < self.next_send {
            return;
        }
        let running = self.latest.is_some() && self.pending.is_none();
        if running && self.unanswered < HELLOS_PER_RETRY.saturating_mul(self.cfg.retries) {
            self.send_hello(now);
        } else {
            if running {
                self.actions.push_back(Action::Event(Event::FallbackToInit {
                    unanswered: self.unanswered,
                }));
            }
            self.send_init(now, unix_ms);
        }
    }

    fn send_hello(&mut self, now: Time) {
        let rotate = self.rotate_requested;
        if self.latest.is_some() && self.ratchet.is_none() {
            // Every path that sets a latest generation makes its key pair;
            // this only covers a state that somehow lacks one. The record
            // holds it before the hello carrying its share leaves.
            self.ratchet = Ephemeral::generate(&mut self.rng);
            self.dirty = true;
        }
        let share = self.ratchet.as_ref().map_or([0; 32], |e| *e.public());
        if let Some(g) = self.latest.as_mut() {
            let (counter, reserve) = g.next_counter();
            let datagram = Message::Hello {
                spi: g.spi,
                counter,
                generation: g.number,
                rotate,
                share,
                source: self.source,
            }
            .seal(&g.ctl_n2h);
            self.actions.push_back(Action::Send {
                peer: HUB,
                datagram,
            });
            self.unanswered += 1;
            // A hello changes no durable state but the send counter, which
            // is written once per block (`generation::TX_RESERVE`).
            if reserve {
                self.dirty = true;
            }
        }
        self.last_hello_at = now;
        // Repeated if unanswered by then; an answer moves this back to the
        // normal cadence (`answered`).
        self.next_send = now.plus_ms(self.repeat_after_ms());
    }

    /// How long a hello waits for its answer before it is repeated: a
    /// quarter of the interval, at least 50 ms (a round trip), at most the
    /// interval.
    fn repeat_after_ms(&self) -> u64 {
        let i = self.cfg.hello_interval_ms;
        (i / 4).max(50).min(i)
    }

    /// Sends the pending init request again, or a fresh one (new nonce, new
    /// ephemeral key, newer timestamp) when there is none or it is old; with
    /// backoff and jitter between sends.
    fn send_init(&mut self, now: Time, unix_ms: u64) {
        match &self.pending {
            Some(p) if now.since(p.created) < INIT_REFRESH_MS => {
                let datagram = match &p.cookie {
                    Some(c) => wire::with_cookie(&p.datagram, c),
                    None => p.datagram.clone(),
                };
                self.actions.push_back(Action::Send {
                    peer: HUB,
                    datagram,
                });
            }
            _ => self.new_init(now, unix_ms),
        }
        self.init_attempts += 1;
        // Backoff: 1, 2, 4, 4, ... hello intervals, +-25 % jitter so that many
        // nodes restarting together do not init in lockstep.
        let factor = 1u64 << self.init_attempts.saturating_sub(1).min(2);
        let base = self.cfg.hello_interval_ms.saturating_mul(factor);
        let jitter = if base >= 4 {
            self.rng.next_u64() % (base / 2)
        } else {
            0
        };
        self.next_send = now.plus_ms(base - base / 4 + jitter);
    }

    fn new_init(&mut self, now: Time, unix_ms: u64) {
        let mut nonce = [0u8; 32];
        self.rng.fill_bytes(&mut nonce);
        // Never refused (see `Ephemeral::generate`); without a key pair
        // there is no init to send, and the next tick tries again.
        let Some(eph) = Ephemeral::generate(&mut self.rng) else {
            return;
        };
        let eph_pub = *eph.public();
        let ts = unix_ms.max(self.last_init_ts.saturating_add(1));
        self.last_init_ts = ts;
        self.dirty = true;
        let key = init_request_key(&self.cfg.psk, &self.cfg.name, &nonce);
        let datagram = Message::Init {
            spi: self.init_spi,
            counter: 0,
            nonce,
            timestamp_ms: ts,
            eph_pub,
        }
        .seal(&key);
        self.actions.push_back(Action::Send {
            peer: HUB,
            datagram: datagram.clone(),
        });
        self.pending = Some(PendingInit {
            reply_mac: init_reply_mac_key(&self.cfg.psk, &self.cfg.name, &nonce),
            nonce,
            eph,
            datagram,
            cookie: None,
            created: now,
        });
    }

    /// Handles a datagram from the hub. Anything that is not a valid, fresh
    /// message for this node changes nothing but the drop counters.
    /// `from` is not looked at: the caller passes only what comes from the
    /// hub's address, and the hub's keys authenticate the rest.
    pub fn handle_datagram(&mut self, now: Now, from: SocketAddr, data: &[u8]) {
        let _ = from;
        if let Err(r) = self.datagram(now.mono, data) {
            let peer = self.carries_own_spi(data).then_some(HUB);
            self.drop_reason(r, peer);
        }
    }

    /// Whether `data`'s header carries one of this node's SPIs (its init
    /// SPI or a generation's): then the hub's key was checked, see
    /// [`Event::Dropped`]. Only called for dropped datagrams.
    fn carries_own_spi(&self, data: &[u8]) -> bool {
        let Ok(dg) = wire::parse(data) else {
            return false;
        };
        let spi = dg.header.spi;
        spi == self.init_spi
            || [self.latest.as_ref(), self.previous.as_ref()]
                .into_iter()
                .flatten()
                .any(|g| g.spi == spi)
    }

    fn datagram(&mut self, now: Time, data: &[u8]) -> Result<(), DropReason> {
        let dg = wire::parse(data).map_err(DropReason::Wire)?;
        if dg.header.kind.from_node() {
            return Err(DropReason::UnexpectedType);
        }
        if dg.header.kind == MsgType::Cookie {
            return self.cookie(&dg);
        }
        if dg.header.spi == self.init_spi {
            return self.init_reply(now, &dg);
        }
        let is_latest = self.latest.as_ref().is_some_and(|g| g.spi == dg.header.spi);
        let is_previous = self
            .previous
            .as_ref()
            .is_some_and(|g| g.spi == dg.header.spi);
        let g = match (is_latest, is_previous) {
            (true, _) => self.latest.as_mut(),
            (_, true) => self.previous.as_mut(),
            _ => None,
        }
        .ok_or(DropReason::UnknownSpi)?;
        if dg.header.flags & !wire::FLAG_NAT != 0 {
            return Err(DropReason::UnexpectedType);
        }
        if !g.rx_window.check(dg.header.counter) {
            return Err(DropReason::Replay);
        }
        let msg = dg.open(&g.ctl_h2n).map_err(DropReason::Wire)?;
        if is_latest
            && !self.superseded.is_empty()
            && matches!(msg, Message::Ack { .. } | Message::Key { .. })
        {
            // The hub answered under the new chain: it has switched to it.
            let end = now.plus_ms(self.cfg.grace_ms);
            for spi in std::mem::take(&mut self.superseded) {
                self.retire_queue.push_back((end, spi, true));
            }
            self.dirty = true;
        }
        let nat = matches!(
            msg,
            Message::Ack { nat: true, .. } | Message::Key { nat: true, .. }
        );
        let r = self.answer(now, is_latest, dg.header.counter, msg);
        if r.is_ok() && nat != self.nat {
            // Authenticated and fresh: the hub's verdict on the path holds.
            self.nat = nat;
            self.repath(now, None, None, true);
        }
        r
    }

    /// An authenticated answer from the hub under the latest generation
    /// (`is_latest`) or the previous one.
    fn answer(
        &mut self,
        now: Time,
        is_latest: bool,
        counter: u64,
        msg: Message,
    ) -> Result<(), DropReason> {
        let g = if is_latest {
            self.latest.as_mut()
        } else {
            self.previous.as_mut()
        }
        .ok_or(DropReason::UnknownSpi)?;
        match msg {
            Message::Ack { hello, .. } => {
                // Only an answer to a hello we sent under this generation.
                if hello >= g.tx_counter {
                    return Err(DropReason::Unsolicited);
                }
                g.rx_window.commit(counter);
                self.answered(now);
                Ok(())
            }
            Message::Key {
                generation,
                gen_spi: spi,
                secret: hub_random,
                hub_share,
                ..
            } => {
                let latest = self.latest.as_ref().map(|l| (l.number, l.spi));
                let prev_spi = self.previous.as_ref().map(|p| p.spi);
                match latest {
                    Some((n, lspi))
                        if is_latest
                            && generation == n + 1
                            && spi != lspi
                            && Some(spi) != prev_spi
                            && spi > 0xff =>
                    {
                        // A zero hub share: the hub made this rotation
                        // without a ratchet step (`ratchet_every`).
                        let (dh, node_share) = if hub_share == [0; 32] {
                            (Zeroizing::new([0; 32]), [0; 32])
                        } else {
                            let eph = self.ratchet.as_ref().ok_or(DropReason::StaleGeneration)?;
                            let dh = eph.agree(&hub_share).ok_or(DropReason::BadEphemeral)?;
                            (dh, *eph.public())
                        };
                        let secret = ratchet_secret(
                            hub_random.expose(),
                            &dh,
                            &self.cfg.name,
                            generation,
                            spi,
                            &node_share,
                            &hub_share,
                        );
                        if let Some(l) = self.latest.as_mut() {
                            l.rx_window.commit(counter);
                        }
                        self.answered(now);
                        self.adopt_next(now, generation, spi, secret);
                        Ok(())
                    }
                    Some((n, lspi)) if generation == n && spi == lspi => {
                        // A resend of what we already have: confirm again.
                        if let Some(g) = if is_latest {
                            self.latest.as_mut()
                        } else {
                            self.previous.as_mut()
                        } {
                            g.rx_window.commit(counter);
                        }
                        self.answered(now);
                        self.send_hello(now);
                        Ok(())
                    }
                    _ => Err(DropReason::StaleGeneration),
                }
            }
            _ => Err(DropReason::UnexpectedType),
        }
    }

    /// The hub answered. Not durable (the receive window that accepted the
    /// answer is written lazily): see `crate::persist` on why an answer
    /// accepted again after a restart is harmless.
    fn answered(&mut self, now: Time) {
        self.unanswered = 0;
        self.last_seen = Some(now);
        if self.pending.is_none() {
            self.next_send = self.last_hello_at.plus_ms(self.cfg.hello_interval_ms);
        }
    }

    /// Installs generation N+1 received under N: inbound first, then
    /// outbound, then the switch (I3); retires N-1 after the grace period.
    fn adopt_next(&mut self, now: Time, generation: u64, spi: u32, secret: Secret32) {
        let (g, esp) = Generation::new(generation, spi, secret, &self.cfg.name, self.cfg.key_bits);
        self.install(g.spi, esp);
        if let Some(old) = self.previous.take() {
            self.retire_queue.push_back((
                now.plus_ms(self.cfg.grace_ms),
                old.spi,
                !old.out_missing,
            ));
        }
        self.previous = self.latest.take();
        self.latest = Some(g);
        // The step that derived `g` is done: its private key goes (zeroized
        // on drop), and the next step gets a fresh one.
        self.ratchet = Ephemeral::generate(&mut self.rng);
        self.rotations += 1;
        self.rotate_requested = false;
        self.dirty = true;
        self.actions.push_back(Action::Event(Event::Rotated {
            peer: HUB,
            generation,
            spi,
            tx_spi: spi,
        }));
        self.send_hello(now);
    }

    fn install(&mut self, spi: u32, esp: EspKeys) {
        let EspKeys { h2n, n2h } = esp;
        self.actions.push_back(Action::InstallSa {
            peer: HUB,
            dir: SaDir::In,
            spi,
            key: h2n,
        });
        self.actions.push_back(Action::InstallSa {
            peer: HUB,
            dir: SaDir::Out,
            spi,
            key: n2h,
        });
        self.actions.push_back(Action::SetOutbound {
            peer: HUB,
            spi: Some(spi),
        });
    }

    /// A cookie message: taken only if it echoes the tag of the pending
    /// init (which only a receiver of that init knows); the init goes again
    /// at once with the cookie, and so do its retransmissions. A repeated
    /// cookie changes nothing.
    fn cookie(&mut self, dg: &wire::Datagram<'_>) -> Result<(), DropReason> {
        let (cookie, echo) = dg.cookie().ok_or(DropReason::UnexpectedType)?;
        let p = self.pending.as_mut().ok_or(DropReason::Unsolicited)?;
        let tag = p
            .datagram
            .len()
            .checked_sub(wire::TAG_LEN)
            .and_then(|at| p.datagram.get(at..));
        if dg.header.spi != self.init_spi || tag != Some(&echo[..]) {
            return Err(DropReason::Unsolicited);
        }
        if p.cookie == Some(cookie) {
            return Ok(());
        }
        p.cookie = Some(cookie);
        let datagram = wire::with_cookie(&p.datagram, &cookie);
        self.actions.push_back(Action::Send {
            peer: HUB,
            datagram,
        });
        Ok(())
    }

    fn init_reply(&mut self, now: Time, dg: &wire::Datagram<'_>) -> Result<(), DropReason> {
        let reply = dg.init_reply().ok_or(DropReason::UnexpectedType)?;
        let p = self.pending.as_ref().ok_or(DropReason::StaleGeneration)?;
        // The MAC first: a forged reply under our (public) init SPI costs
        // an HMAC, not an X25519.
        dg.check_mac(&p.reply_mac).map_err(DropReason::Wire)?;
        let shared = p
            .eph
            .agree(&reply.hub_pub)
            .ok_or(DropReason::BadEphemeral)?;
        let key = init_session_key(
            &self.cfg.psk,
            &shared,
            &p.nonce,
            &reply.hub_nonce,
            &self.cfg.name,
        );
        let Message::Key {
            generation,
            gen_spi: spi,
            secret,
            nat,
            ..
        } = dg.open(&key).map_err(DropReason::Wire)?
        else {
            return Err(DropReason::UnexpectedType);
        };
        if generation != 1 || spi <= 0xff {
            return Err(DropReason::StaleGeneration);
        }
        if nat != self.nat {
            // The new chain goes in on the path the hub sees; what is
            // installed of the old one moves there without repair (it is
            // superseded below).
            self.nat = nat;
            self.repath(now, None, None, false);
        }
        // Accepted: adopt the new chain, retire the old one after grace.
        self.pending = None;
        self.init_attempts = 0;
        // Every replaced chain stays until the hub is heard under the new one
        // (the hub keeps sending on an old one until it sees us use the new).
        let grace_end = now.plus_ms(self.cfg.grace_ms);
        for g in [self.previous.take(), self.latest.take()]
            .into_iter()
            .flatten()
            .filter(|g| g.spi != spi)
        {
            if g.out_missing {
                // Known half-gone: retired on its own, inbound SA only.
                self.retire_queue.push_back((grace_end, g.spi, false));
            } else {
                self.superseded.push(g.spi);
            }
        }
        let excess = self
            .superseded
            .len()
            .saturating_sub(crate::hub::MAX_SUPERSEDED);
        for old in self.superseded.drain(..excess).collect::<Vec<_>>() {
            self.retire_queue.push_back((grace_end, old, true));
        }
        let (g, esp) = Generation::new(1, spi, secret, &self.cfg.name, self.cfg.key_bits);
        self.install(g.spi, esp);
        self.latest = Some(g);
        self.ratchet = Ephemeral::generate(&mut self.rng);
        self.inits += 1;
        self.dirty = true;
        self.unanswered = 0;
        self.last_seen = Some(now);
        self.actions
            .push_back(Action::Event(Event::Initialised { peer: HUB, spi }));
        self.send_hello(now);
        Ok(())
    }
}

/// Where the node sends from, and the NAT verdict.
impl Node {
    /// Sets where this node sends from and whether the hub sees it behind
    /// a NAT, at start-up (configured, or restored): moves nothing, the
    /// kernel already holds the SAs (or none).
    pub fn set_path(&mut self, source: SocketAddr, nat: bool) {
        self.source = source;
        self.nat = nat;
    }

    /// When the hub was last heard (an authenticated message), if ever.
    pub fn last_seen(&self) -> Option<Time> {
        self.last_seen
    }

    /// Whether a path change moves the SAs in place, state and all
    /// (`true`: the caller can, see [`Action::PeerPath`]'s `in_place`), or
    /// has them removed and re-installed or re-keyed (`false`, the
    /// default).
    pub fn set_move_in_place(&mut self, on: bool) {
        self.in_place = on;
    }

    /// Where this node sends from and whether through a NAT.
    pub fn path(&self) -> (SocketAddr, bool) {
        (self.source, self.nat)
    }

    /// This host's address towards the hub changed to `to` (the caller
    /// watches its addresses and routes): the SAs move there
    /// ([`Action::PeerPath`]), the ones sent on are re-keyed, and a hello
    /// from the new address tells the hub at once.
    pub fn local_moved(&mut self, now: Now, to: SocketAddr) {
        if to == self.source {
            return;
        }
        self.source = to;
        self.repath(now.mono, None, Some(to), true);
        self.actions.push_back(Action::Event(Event::Moved {
            peer: HUB,
            to,
            nat: self.nat,
            first: false,
        }));
    }

    /// The hub is now at `hub` (its DNS name resolved to another address;
    /// the caller found that out), and this host sends to it from `source`
    /// if that changed too. The SAs move there like on a local move
    /// ([`Node::local_moved`]) and a hello goes to the new address at once:
    /// the generations continue if the hub there holds this node's chain,
    /// and the node falls back to init there after `retries` if not.
    pub fn hub_moved(&mut self, now: Now, hub: SocketAddr, source: Option<SocketAddr>) {
        let local = source.filter(|s| *s != self.source);
        if let Some(s) = local {
            self.source = s;
        }
        self.unanswered = 0;
        self.repath(now.mono, Some(hub), local, true);
    }

    /// Moves every installed SA to the current path (the hub at `remote`,
    /// this host at `local`, where given): [`Action::PeerPath`] with what
    /// is installed, then (if `repair`) either the SAs move in place and
    /// the outbound policy names the latest again, or the latest and
    /// previous generations are handled as lost by the kernel, which
    /// re-installs inbound SAs, re-keys the outbound one and says hello at
    /// once. Only a new address moves in place (see the hub's
    /// `move_path`: the kernel finds the SA a migration moves by its
    /// addresses).
    fn repath(
        &mut self,
        now: Time,
        remote: Option<SocketAddr>,
        local: Option<SocketAddr>,
        repair: bool,
    ) {
        let in_place = self.in_place && repair && (remote.is_some() || local.is_some());
        let mut lost: Vec<(SaDir, u32)> = Vec::new();
        for g in [&self.latest, &self.previous].into_iter().flatten() {
            lost.push((SaDir::In, g.spi));
            if !g.out_missing {
                lost.push((SaDir::Out, g.spi));
            }
        }
        let mut old_sas = lost.clone();
        for &s in &self.superseded {
            old_sas.push((SaDir::In, s));
            old_sas.push((SaDir::Out, s));
        }
        for &(_, spi, out) in &self.retire_queue {
            old_sas.push((SaDir::In, spi));
            if out {
                old_sas.push((SaDir::Out, spi));
            }
        }
        self.dirty = true;
        self.actions.push_back(Action::PeerPath {
            peer: HUB,
            remote,
            local,
            nat: self.nat,
            old_sas,
            in_place,
        });
        if in_place {
            if let Some(g) = self.latest.as_ref().filter(|g| !g.out_missing) {
                self.actions.push_back(Action::SetOutbound {
                    peer: HUB,
                    spi: Some(g.spi),
                });
            }
            if self.latest.is_some() && self.pending.is_none() {
                self.next_send = now;
            }
        } else if repair && !lost.is_empty() {
            self.lose(now, &lost, true);
        } else if self.latest.is_some() && self.pending.is_none() {
            self.next_send = now;
        }
    }
}

/// Durable state and kernel repair (see [`crate::persist`]).
impl Node {
    /// Whether the node's record (what [`Self::save`] encodes) must be
    /// written since the last call; clears the flag. The daemon calls it
    /// after every burst and stores the record before executing the burst's
    /// actions. Hellos and the hub's answers do not set it, except once per
    /// block of send counters (see [`crate::persist`]).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Encodes the node's record into `out` (cleared first). It holds
    /// generation secrets: pass a `Zeroizing<Vec<u8>>`. The pending init is
    /// not stored: a node restored without a chain starts init again.
    pub fn save(&self, _now: Now, out: &mut Vec<u8>) {
        let rec = Record {
            latest: self.latest.as_ref().map(GenRecord::of),
            previous: self.previous.as_ref().map(GenRecord::of),
            superseded: self.superseded.clone(),
            last_init_ts: self.last_init_ts,
            rotations: self.rotations,
            inits: self.inits,
            rotate_requested: self.rotate_requested,
            ratchet_private: self
                .ratchet
                .as_ref()
                .map(|e| Secret32::new(*e.private_bytes())),
            ..Record::default()
        };
        persist::encode(
            Kind::Node,
            &self.cfg.name,
            &self.psk_tag,
            self.cfg.key_bits,
            &rec,
            out,
        );
    }

    /// A node built like [`Node::new`] that resumes from `record`: with a
    /// valid record for this name, PSK and key size it resumes its chain and
    /// sends its next hello under the latest generation at `now` (so the hub
    /// hears it at once), keeping its init high-water mark, so any later
    /// init is newer than every earlier one; with none, or a refused one
    /// (reported), it starts at init. Emits no actions: the daemon compares
    /// [`Self::kernel_view`] with the kernel and reports what is missing
    /// through [`Self::kernel_lost`]. Generations awaiting deletion are not
    /// stored; their SAs are left to the daemon (see [`KernelView`]).
    pub fn restore(
        cfg: NodeConfig,
        now: Now,
        rng_seed: [u8; 32],
        record: Option<Zeroizing<Vec<u8>>>,
    ) -> Result<(Node, RestoreReport), ConfigError> {
        let mut node = Node::new(cfg, now, rng_seed)?;
        let mut report = RestoreReport::default();
        let Some(data) = record else {
            report.fresh = 1;
            return Ok((node, report));
        };
        let c = &node.cfg;
        match persist::decode(Kind::Node, &c.name, &node.psk_tag, c.key_bits, &data) {
            Ok(rec) => {
                node.latest = rec.latest.map(|g| g.into_generation(&c.name));
                node.previous = rec.previous.map(|g| g.into_generation(&c.name));
                node.superseded = rec.superseded;
                node.last_init_ts = rec.last_init_ts;
                node.rotations = rec.rotations;
                node.inits = rec.inits;
                node.rotate_requested = rec.rotate_requested;
                node.ratchet = match rec.ratchet_private {
                    Some(k) => Ephemeral::from_private(k.expose()),
                    // A record of a version without the ratchet: a fresh
                    // key pair, stored before its first hello leaves (the
                    // hub re-keys a generation it made for another share).
                    None if node.latest.is_some() => {
                        node.dirty = true;
                        Ephemeral::generate(&mut node.rng)
                    }
                    None => None,
                };
                report.restored = 1;
            }
            Err(e) => {
                node.dirty = true;
                report.refused.push((c.name.clone(), e.to_string()));
            }
        }
        Ok((node, report))
    }

    /// Every SA (direction, SPI) the node's state says the kernel holds
    /// (latest and previous generations, and a replaced chain awaiting the
    /// hub's switch; an outbound SA known missing is not listed), and the SPI
    /// the outbound policy names: the latest generation's, `None` (blocked)
    /// without a chain or when its outbound SA is missing.
    pub fn kernel_view(&self) -> KernelView {
        let mut sas = Vec::with_capacity(4 + 2 * self.superseded.len());
        for g in [&self.latest, &self.previous].into_iter().flatten() {
            sas.push((SaDir::In, g.spi));
            if !g.out_missing {
                sas.push((SaDir::Out, g.spi));
            }
        }
        for s in &self.superseded {
            sas.push((SaDir::In, *s));
            sas.push((SaDir::Out, *s));
        }
        KernelView {
            sas,
            outbound: self
                .latest
                .as_ref()
                .filter(|g| !g.out_missing)
                .map(|g| g.spi),
        }
    }

    /// The daemon found these SAs missing from the kernel. The node sends on
    /// its latest generation (and sent on the previous one), so those
    /// outbound SAs are never re-installed (I6: a re-added SA restarts the
    /// sequence number AES-GCM builds its IVs from): they are marked missing,
    /// and if the latest one is lost, outbound traffic is blocked (fail
    /// closed) until the next key arrives. Inbound SAs of the latest and
    /// previous generations are re-installed (keys re-derived); lost SAs of
    /// a replaced chain are forgotten. After any repair the node asks for a
    /// rotation with a hello sent at once: the new generation brings fresh
    /// SAs in both directions, and the re-installed inbound SAs, whose kernel
    /// replay window starts afresh (a captured packet could be replayed
    /// once), retire through the normal rotations. Emits
    /// [`Event::KernelRepaired`] and marks the node dirty.
    pub fn kernel_lost(&mut self, now: Now, lost: &[(SaDir, u32)]) {
        self.lose(now.mono, lost, false);
    }

    /// [`Self::kernel_lost`]; for a path change (`moved`) without an
    /// [`Event::KernelRepaired`] (the move is reported).
    fn lose(&mut self, now: Time, lost: &[(SaDir, u32)], moved: bool) {
        let mut reinstalled = 0u32;
        let mut blocked = false;
        let mut any = false;
        for &(dir, spi) in lost {
            let is_latest = self.latest.as_ref().is_some_and(|g| g.spi == spi);
            let g = if is_latest {
                self.latest.as_mut()
            } else {
                self.previous.as_mut().filter(|g| g.spi == spi)
            };
            if let Some(g) = g {
                match dir {
                    SaDir::In => {
                        let esp = g.esp_keys(&self.cfg.name, self.cfg.key_bits);
                        self.actions.push_back(Action::InstallSa {
                            peer: HUB,
                            dir,
                            spi,
                            key: esp.h2n,
                        });
                        reinstalled += 1;
                    }
                    SaDir::Out if g.out_missing => continue,
                    SaDir::Out => {
                        g.out_missing = true;
                        if is_latest {
                            self.actions.push_back(Action::SetOutbound {
                                peer: HUB,
                                spi: None,
                            });
                            blocked = true;
                        }
                    }
                }
                any = true;
            } else if let Some(pos) = self.superseded.iter().position(|s| *s == spi) {
                self.superseded.remove(pos);
                any = true;
            }
        }
        if !any {
            return;
        }
        self.dirty = true;
        if !moved {
            self.actions.push_back(Action::Event(Event::KernelRepaired {
                peer: HUB,
                reinstalled,
                blocked,
            }));
        }
        self.request_rotation(now);
    }
}

impl Machine for Node {
    fn handle_datagram(&mut self, now: Now, from: SocketAddr, data: &[u8]) {
        Node::handle_datagram(self, now, from, data)
    }

    fn handle_timeout(&mut self, now: Now) {
        Node::handle_timeout(self, now)
    }

    fn poll_timeout(&self) -> Option<Time> {
        Node::poll_timeout(self)
    }

    fn poll_action(&mut self) -> Option<Action> {
        Node::poll_action(self)
    }

    fn drops(&self) -> &BTreeMap<DropReason, u64> {
        Node::drops(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HubConfig, NodeSpec};
    use crate::hub::Hub;
    use crate::key_schedule::{KeyBits, generation_keys, ratchet_secret};
    use crate::secret::EspKey;

    const UNIX: u64 = 1_750_000_000_000;

    fn at(ms: u64) -> Now {
        Now::new(Time(ms), UNIX + ms)
    }

    const NODE_AT: &str = "192.0.2.2:4820";
    const HUB_AT: &str = "192.0.2.1:4820";

    /// Delivers every datagram both ways until nothing moves; records each
    /// one (the passive attacker's capture) and the node's installed keys.
    fn pump(
        hub: &mut Hub,
        node: &mut Node,
        now: Now,
        capture: &mut Vec<Vec<u8>>,
        installed: &mut Vec<(u32, SaDir, EspKey)>,
    ) {
        loop {
            let mut moved = false;
            while let Some(a) = node.poll_action() {
                match a {
                    Action::Send { datagram, .. } => {
                        hub.handle_datagram(now, NODE_AT.parse().expect("address"), &datagram);
                        capture.push(datagram);
                        moved = true;
                    }
                    Action::InstallSa { dir, spi, key, .. } => installed.push((spi, dir, key)),
                    _ => {}
                }
            }
            while let Some(a) = hub.poll_action() {
                if let Action::Send { datagram, .. } = a {
                    node.handle_datagram(now, HUB_AT.parse().expect("address"), &datagram);
                    capture.push(datagram);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// What a passive attacker holding generation N's secret learns from a
    /// capture: every message under N opens, so it reads the node's share
    /// (hellos under N) and the `key` message for N+1 (number, SPI, the
    /// 32-byte value, the hub's share).
    struct Loot {
        node_share: [u8; 32],
        key: Option<(u64, u32, Secret32, [u8; 32])>,
    }

    fn open_capture(capture: &[Vec<u8>], secret: &Secret32, n: u64, spi: u32) -> Loot {
        let keys = generation_keys(secret, "mn0", n, spi, KeyBits::Aes128);
        let mut loot = Loot {
            node_share: [0; 32],
            key: None,
        };
        for d in capture {
            let Ok(dg) = wire::parse(d) else { continue };
            if dg.header.spi != spi {
                continue;
            }
            match dg.open(&keys.ctl_n2h).or_else(|_| dg.open(&keys.ctl_h2n)) {
                Ok(Message::Hello { share, .. }) => loot.node_share = share,
                Ok(Message::Key {
                    generation,
                    gen_spi,
                    secret,
                    hub_share,
                    ..
                }) => loot.key = Some((generation, gen_spi, secret, hub_share)),
                _ => {}
            }
        }
        loot
    }

    /// Version 1 sent generation N+1's secret under N's control key, so one
    /// stolen generation secret and a capture gave every later generation.
    /// Version 2: the same attacker opens the same messages, but neither the
    /// value the `key` message carries (the version 1 attack) nor any
    /// derivation from what it can see yields N+1's keys; with the node's
    /// ephemeral private key as well (the control case, which shows the
    /// attack code extracts the right parts), it does.
    fn hub_and_node(ratchet_every: u32) -> (Hub, Node, NodeConfig) {
        let hub_cfg = HubConfig {
            nodes: vec![NodeSpec {
                name: "mn0".into(),
                psk: Secret32::new([1; 32]),
                rotate_interval_ms: 3_600_000,
            }],
            grace_ms: 1000,
            key_bits: KeyBits::Aes128,
            init_skew_ms: 120_000,
            ratchet_epoch_ms: 1000,
            ratchet_every,
        };
        let mut hub = Hub::new(hub_cfg, at(0), [2; 32]).expect("hub config");
        hub.start();
        let node_cfg = NodeConfig {
            name: "mn0".into(),
            psk: Secret32::new([1; 32]),
            hello_interval_ms: 1000,
            retries: 3,
            grace_ms: 1000,
            key_bits: KeyBits::Aes128,
        };
        let mut node = Node::new(node_cfg.clone(), at(0), [3; 32]).expect("node config");
        node.set_path(NODE_AT.parse().expect("address"), false);
        hub.set_path(PeerId(0), NODE_AT.parse().expect("address"), false, false);
        (hub, node, node_cfg)
    }

    #[test]
    fn a_stolen_generation_secret_and_a_capture_do_not_yield_the_next() {
        let (mut hub, mut node, _) = hub_and_node(1);
        let (mut capture, mut installed) = (Vec::new(), Vec::new());
        node.handle_timeout(at(0));
        pump(&mut hub, &mut node, at(0), &mut capture, &mut installed);
        let id = PeerId(0);
        hub.rotate_now(at(10), id).expect("node 0");
        pump(&mut hub, &mut node, at(10), &mut capture, &mut installed);
        assert_eq!(node.generation(), 2);

        // The theft: generation 2's secret (and, for the control case
        // only, the private key the node holds for the step out of it).
        let (n, spi, stolen) = node
            .latest
            .as_ref()
            .map(|g| (g.number, g.spi, g.secret.clone()))
            .expect("generation 2");
        let node_private = node.ratchet.as_ref().map(|e| *e.private_bytes());

        hub.rotate_now(at(20), id).expect("node 0");
        pump(&mut hub, &mut node, at(20), &mut capture, &mut installed);
        assert_eq!(node.generation(), 3);
        let next_spi = node.tx_spi().expect("generation 3");
        let real = installed
            .iter()
            .find(|(s, dir, _)| *s == next_spi && *dir == SaDir::In)
            .map(|(_, _, k)| k.clone())
            .expect("generation 3 installed");

        let loot = open_capture(&capture, &stolen, n, spi);
        let (next_gen, gen_spi, value, hub_share) = loot.key.expect("the key message opens");
        assert_eq!((next_gen, gen_spi), (3, next_spi));
        assert_ne!(loot.node_share, [0; 32], "the hello under N opens");
        let h2n = |secret: &Secret32| {
            generation_keys(secret, "mn0", next_gen, gen_spi, KeyBits::Aes128).esp_h2n
        };
        // The version 1 attack: the value is the secret.
        assert_ne!(h2n(&value), real, "the key message carried the secret");
        // Every X25519 stand-in computable without a private key.
        for dh in [
            [0; 32],
            loot.node_share,
            hub_share,
            *value.expose(),
            *stolen.expose(),
        ] {
            let guess = ratchet_secret(
                value.expose(),
                &dh,
                "mn0",
                next_gen,
                gen_spi,
                &loot.node_share,
                &hub_share,
            );
            assert_ne!(h2n(&guess), real);
        }
        // Control: with the node's ephemeral private key the same loot
        // gives generation 3.
        let eph = Ephemeral::from_private(&node_private.expect("a ratchet key")).unwrap();
        assert_eq!(eph.public(), &loot.node_share);
        let dh = eph.agree(&hub_share).expect("contributory");
        let secret = ratchet_secret(
            value.expose(),
            &dh,
            "mn0",
            next_gen,
            gen_spi,
            &loot.node_share,
            &hub_share,
        );
        assert_eq!(h2n(&secret), real);
        // And the node no longer holds that private key.
        let now_private = node.ratchet.as_ref().map(|e| *e.private_bytes());
        assert_ne!(now_private, node_private);
    }

    /// A node restored from a record of a version without the ratchet (an
    /// upgrade) has a fresh key pair, so it cannot derive a generation the
    /// hub made for its old share: the hub sees the new share in the
    /// node's hello under the previous generation and replaces the
    /// unconfirmed generation instead of resending it; the node adopts it.
    #[test]
    fn a_generation_made_for_a_lost_share_is_replaced() {
        let (mut hub, mut node, cfg) = hub_and_node(1);
        let (mut capture, mut installed) = (Vec::new(), Vec::new());
        node.handle_timeout(at(0));
        pump(&mut hub, &mut node, at(0), &mut capture, &mut installed);
        let id = PeerId(0);
        hub.rotate_now(at(10), id).expect("node 0");
        pump(&mut hub, &mut node, at(10), &mut capture, &mut installed);
        assert_eq!((node.generation(), hub.generation_of(id)), (2, 2));
        // The key for generation 3 is lost on the way.
        hub.rotate_now(at(20), id).expect("node 0");
        while hub.poll_action().is_some() {}
        assert_eq!(hub.generation_of(id), 3);
        let lost_spi = hub.peer_status(id, Time(20)).map(|s| s.rx_spis);
        // The node restarts from its record, written as version 2 (the
        // same layout without the ratchet section).
        let mut rec = Vec::new();
        node.save(at(30), &mut rec);
        rec.truncate(rec.len() - 33);
        rec[4] = 2;
        let (mut node, report) =
            Node::restore(cfg, at(30), [9; 32], Some(Zeroizing::new(rec))).expect("config");
        assert_eq!(report.restored, 1);
        assert_eq!(node.generation(), 2);
        node.set_path(NODE_AT.parse().expect("address"), false);
        node.handle_timeout(at(30));
        pump(&mut hub, &mut node, at(30), &mut capture, &mut installed);
        assert_eq!((node.generation(), hub.generation_of(id)), (3, 3));
        let status = hub.peer_status(id, Time(30)).expect("node 0");
        assert_eq!(status.state, crate::status::PeerState::InSync);
        assert_ne!(
            Some(status.rx_spis.clone()),
            lost_spi,
            "generation 3 was replaced"
        );
        assert_eq!(node.tx_spi(), status.rx_spis.last().copied());
        assert_eq!(hub.drops().values().sum::<u64>(), 0);
        assert_eq!(node.drops().values().sum::<u64>(), 0);
    }

    /// With `ratchet_every = 2` the documented granularity holds, no more:
    /// a stolen secret of generation 2 (a ratchet step) and a capture yield
    /// generation 3 (a rotation without a step, whose secret comes from the
    /// random value sent under 2) and stop at generation 4 (the next step).
    #[test]
    fn every_other_rotation_exposes_one_generation_and_no_more() {
        let (mut hub, mut node, _) = hub_and_node(2);
        let (mut capture, mut installed) = (Vec::new(), Vec::new());
        node.handle_timeout(at(0));
        pump(&mut hub, &mut node, at(0), &mut capture, &mut installed);
        let id = PeerId(0);
        hub.rotate_now(at(10), id).expect("node 0");
        pump(&mut hub, &mut node, at(10), &mut capture, &mut installed);
        let (n, spi, stolen) = node
            .latest
            .as_ref()
            .map(|g| (g.number, g.spi, g.secret.clone()))
            .expect("generation 2");
        assert_eq!(n, 2);
        for t in [20, 30] {
            hub.rotate_now(at(t), id).expect("node 0");
            pump(&mut hub, &mut node, at(t), &mut capture, &mut installed);
        }
        assert_eq!(node.generation(), 4);
        assert_eq!(hub.drops().values().sum::<u64>(), 0);
        let real = |spi: u32| {
            installed
                .iter()
                .find(|(s, dir, _)| *s == spi && *dir == SaDir::In)
                .map(|(_, _, k)| k.clone())
        };
        // Generation 3: no step, so the loot of generation 2 yields it.
        let loot = open_capture(&capture, &stolen, n, spi);
        let (g3, spi3, value, hub_share) = loot.key.expect("the key for 3 opens");
        assert_eq!((g3, hub_share), (3, [0; 32]));
        let secret3 = ratchet_secret(value.expose(), &[0; 32], "mn0", 3, spi3, &[0; 32], &[0; 32]);
        let keys3 = generation_keys(&secret3, "mn0", 3, spi3, KeyBits::Aes128);
        assert_eq!(Some(keys3.esp_h2n), real(spi3));
        // Generation 4: a step; generation 3's secret no longer helps.
        let loot = open_capture(&capture, &secret3, 3, spi3);
        let (g4, spi4, value, hub_share) = loot.key.expect("the key for 4 opens");
        assert_eq!(g4, 4);
        assert_ne!(hub_share, [0; 32]);
        for dh in [[0; 32], loot.node_share, hub_share, *value.expose()] {
            let guess = ratchet_secret(
                value.expose(),
                &dh,
                "mn0",
                4,
                spi4,
                &loot.node_share,
                &hub_share,
            );
            let keys = generation_keys(&guess, "mn0", 4, spi4, KeyBits::Aes128);
            assert_ne!(Some(keys.esp_h2n), real(spi4));
        }
    }
}
