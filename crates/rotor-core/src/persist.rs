//! Durable state: the records a daemon stores so that a restarted hub or node
//! resumes its chains exactly where they were (hitless restart), and the view
//! of the kernel it reconciles against after the restart.
//!
//! A record is one hub-side node entry ([`crate::Hub::save_node`]) or one
//! node machine ([`crate::Node::save`]). Encoding (all integers big-endian):
//!
//! ```text
//! magic "rtrS" | version u8 (=3; 1 and 2 are read too) | kind u8 (1 hub entry, 2 node) |
//! key_bits u8 (16 or 32) | psk_tag [16] | name_len u16 | name |
//! flags u8 | latest gen? | previous gen? | n_superseded u8 | spi u32 * n |
//! last_init_ts u64 | rotations u64 | inits u64 |
//! hub only: outbound u32 (0 = none) | rotate_at_unix_ms u64 | resends u64
//! ratchet (version 3 only):
//!   hub:  node_share [32] (0 = none) | has_pending u8 |
//!         pending? = random [32] | hub_share [32] | node_share [32]
//!   node: has_private u8 | private? [32]
//! gen = number u64 | spi u32 | secret [32] | tx_reserved u64 |
//!       rx_top u64 | rx_lo u64 | rx_hi u64 | out_missing u8
//! ```
//!
//! The ratchet section holds what the next rotation and a resend need
//! (`crate::ratchet`): on a hub, the node's share for the step out of the
//! latest generation and, until the node confirms it, what the latest
//! generation's `key` message carries; on a node, the private key of its
//! step out of the latest generation (it derives the next generation, so it
//! must survive a restart between the hub's key and the node's receipt).
//! A record of version 1 or 2 has none: the hub then rotates at the node's
//! next hello and replaces an unconfirmed generation the node cannot derive;
//! the node makes a fresh key pair.
//!
//! `psk_tag` is [`crate::key_schedule::record_psk_tag`] (HKDF of the PSK and the name): a record
//! of another node, or written under another PSK or ESP key size, is refused.
//! The pending init (nonce, ephemeral key) and the hub's init reply cache are
//! never stored: a node restored without a chain starts init again.
//!
//! **When a record is written.** Only real state changes mark a record
//! dirty (a chain change, a confirmation, an outbound switch, an accepted
//! init, a kernel repair, a forced or requested rotation, a new block of
//! send counters); the per-message churn of hellos and acks does not. The
//! daemon stores a burst's records before it executes any of the burst's
//! actions (sends and outbound switches in particular), so the outbound SPI
//! a record names is the newest the kernel may have sent on: a restored
//! machine never takes an outbound SA it sent on for an unused one.
//!
//! **Control counters by reservation.** `tx_reserved` is not the next send
//! counter but a reservation above it (see [`crate::generation::TX_RESERVE`]):
//! the record written when a generation is made reserves its first block
//! of `TX_RESERVE` counters, and the first counter of every later block
//! marks the record dirty, so the stored reservation is above every counter
//! that ever left under that key, and a restored machine resumes sending
//! at the reservation (at least one block up). No
//! (key, counter) pair, i.e. no ChaCha20-Poly1305 (key, nonce) pair, is ever
//! used twice. Version 1 records stored the exact next counter, which is a
//! valid (tight) reservation: they are read as they are.
//!
//! **Replay windows lazily.** The receive windows are stored as they are
//! whenever a record is written for another reason, never on their own. A
//! restored window can be behind: a message accepted after the last write
//! can be accepted once more per restart. That is harmless for every
//! message that can be accepted without a write, because all it can cause
//! is what its first acceptance caused, from the same durable state:
//! * a hello under the latest generation (hub): an ack, or, if a rotation is
//!   due, forced or asked for by the hello's flag, a rotation. The hello
//!   proves the node held the latest generation, so I2 holds; a replayed
//!   request flag costs at most one extra rotation, and the rotation is
//!   itself written (window included), so that hello is not accepted again.
//!   The first such hello after a rotation confirms the generation; the
//!   `confirmed` flag is written lazily too (one record per rotation
//!   instead of two): a restored hub that lost it awaits the confirmation
//!   again and takes it from the next such hello, replayed or not, which
//!   proves exactly what the lost one did;
//! * a hello under the previous generation (hub): the same key again (I4);
//! * an ack, or a `key` resend of the generation the node holds (node): it
//!   counts as an answer (one more hello interval before falling back to
//!   init, only while an attacker keeps replaying fresh-to-the-window
//!   messages, each once) and, for the resend, one more hello.
//!
//! Anything whose acceptance changes the chain (the hello confirming an
//! init's generation 1, which moves the outbound SA and retires the old
//! chain; a `key` for the next generation, an init, an init reply) is
//! written at once,
//! window included, so it can never be accepted twice. The init high-water
//! mark `last_init_ts` in particular is durable before the init's reply
//! leaves (the init reply cache is not stored, so a replayed init is
//! refused). A crash that loses a burst's records loses its actions too:
//! then nothing of the burst happened, as if the datagram had been lost.
//!
//! Decoding never panics: every read is length-checked, and anything
//! truncated, unknown or inconsistent is a [`RecordError`].

use zeroize::Zeroize;

use crate::action::SaDir;
use crate::generation::Generation;
use crate::hub::{MAX_SUPERSEDED, PendingKey};
use crate::key_schedule::KeyBits;
use crate::replay::ReplayWindow;
use crate::secret::Secret32;

const MAGIC: &[u8; 4] = b"rtrS";
/// Version of the record encoding written by this build: 3, with the
/// ratchet section. Versions 1 (exact next counters) and 2 (counters as
/// reservations), the same layout without that section, are read too.
pub const RECORD_VERSION: u8 = 3;
/// The oldest version still read.
const OLDEST_VERSION: u8 = 1;
/// Largest stored send counter accepted: far beyond anything reachable
/// (2^62 messages), and far enough from `u64::MAX` that a restored counter
/// can never wrap or stick (a stuck counter would repeat a nonce).
const MAX_TX_RESERVED: u64 = 1 << 62;
const KIND_HUB_ENTRY: u8 = 1;
const KIND_NODE: u8 = 2;
const FLAG_LATEST: u8 = 1;
const FLAG_PREVIOUS: u8 = 2;
const FLAG_CONFIRMED: u8 = 4;
const FLAG_FORCE_ROTATE: u8 = 8;
const FLAG_ROTATE_REQUESTED: u8 = 16;
const GEN_LEN: usize = 8 + 4 + 32 + 8 + 24 + 1;
/// Upper bound of a record's size for a name of `name_len` bytes: callers
/// can reserve it once so no reallocation leaves secret copies behind.
pub const fn max_record_len(name_len: usize) -> usize {
    4 + 3 + 16 + 2 + name_len + 1 + 2 * GEN_LEN + 1 + 4 * MAX_SUPERSEDED + 24 + 20 + 32 + 1 + 96
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record ends early.
    #[error("record truncated")]
    Truncated,
    /// Not a rotor state record.
    #[error("not a rotor state record")]
    BadMagic,
    /// Written by an incompatible version.
    #[error("unsupported record version {0}")]
    Version(u8),
    /// A node record given to the hub or the other way round.
    #[error("record of the wrong kind ({0})")]
    WrongKind(u8),
    /// Written for another node.
    #[error("record is for node {0:?}")]
    WrongName(String),
    /// Written under another PSK.
    #[error("record was written under another init key")]
    WrongPsk,
    /// Written for another ESP key size.
    #[error("record was written for another ESP key size")]
    WrongKeyBits,
    /// Fields that cannot belong together.
    #[error("inconsistent record: {0}")]
    Invalid(&'static str),
    /// Bytes after the end of the record.
    #[error("trailing bytes after the record")]
    Trailing,
}

/// What a restore did, per configured node: `restored` resumed their chain
/// from a record, `fresh` had no record, `refused` had one that was rejected
/// (name and reason). Fresh and refused nodes start at init; the three add up
/// to the number of configured nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Nodes that resumed their chain.
    pub restored: usize,
    /// Nodes without a record (start at init).
    pub fresh: usize,
    /// Nodes whose record was refused, with the reason (start at init).
    pub refused: Vec<(String, String)>,
}

/// The SAs the state says the kernel holds for one peer, for reconciling
/// after a restart: every (direction, SPI) listed should be in the kernel;
/// those missing go to `kernel_lost`. A kernel SA of the peer that is not
/// listed is a leftover (a generation awaiting deletion when the process
/// stopped, or a repair's forgotten half): the daemon deletes it, best after
/// the grace period, to spare packets in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelView {
    /// Every SA that should be installed.
    pub sas: Vec<(SaDir, u32)>,
    /// The SPI the outbound policy should name (`None`: blocked).
    pub outbound: Option<u32>,
}

/// One generation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GenRecord {
    pub number: u64,
    pub spi: u32,
    pub secret: Secret32,
    /// Send counter reservation ([`Generation::tx_reserved`]).
    pub tx_reserved: u64,
    pub rx: (u64, u64, u64),
    pub out_missing: bool,
}

impl GenRecord {
    pub fn of(g: &Generation) -> GenRecord {
        GenRecord {
            number: g.number,
            spi: g.spi,
            secret: g.secret.clone(),
            tx_reserved: g.tx_reserved(),
            rx: g.rx_window.parts(),
            out_missing: g.out_missing,
        }
    }

    /// The generation again, control keys re-derived.
    pub fn into_generation(self, node: &str) -> Generation {
        let mut g = Generation::restored(self.number, self.spi, self.secret, node);
        g.resume_tx(self.tx_reserved);
        g.rx_window = ReplayWindow::from_parts(self.rx.0, self.rx.1, self.rx.2);
        g.out_missing = self.out_missing;
        g
    }
}

/// The chain and counters a record holds (both kinds).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Record {
    pub latest: Option<GenRecord>,
    pub previous: Option<GenRecord>,
    pub superseded: Vec<u32>,
    pub last_init_ts: u64,
    pub rotations: u64,
    pub inits: u64,
    /// Node only.
    pub rotate_requested: bool,
    /// Hub only from here on.
    pub confirmed: bool,
    pub force_rotate: bool,
    pub outbound: Option<u32>,
    pub rotate_at_unix_ms: u64,
    pub resends: u64,
    /// Hub only: the node's ratchet share for the step out of `latest`
    /// (zero: none heard).
    pub node_share: [u8; 32],
    /// Hub only: the ratchet parts of `latest`'s `key` message.
    pub pending: Option<PendingKey>,
    /// Node only: the private key of the step out of `latest`.
    pub ratchet_private: Option<Secret32>,
}

/// Which side a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    HubEntry,
    Node,
}

fn bits_byte(b: KeyBits) -> u8 {
    (b.aes_len() * 8) as u8
}

fn put_gen(out: &mut Vec<u8>, g: &GenRecord) {
    out.extend_from_slice(&g.number.to_be_bytes());
    out.extend_from_slice(&g.spi.to_be_bytes());
    out.extend_from_slice(g.secret.expose());
    out.extend_from_slice(&g.tx_reserved.to_be_bytes());
    for w in [g.rx.0, g.rx.1, g.rx.2] {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out.push(u8::from(g.out_missing));
}

/// Encodes `r` into `out` (cleared first; capacity reserved up front so that
/// no reallocation leaves secret bytes behind: pass a
/// `Zeroizing<Vec<u8>>`). Names longer than 65535 bytes are truncated (and
/// then refused at decode: names are bound into keys and never that long).
pub(crate) fn encode(
    kind: Kind,
    name: &str,
    psk_tag: &[u8; 16],
    bits: KeyBits,
    r: &Record,
    out: &mut Vec<u8>,
) {
    out.clear();
    let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
    out.reserve(max_record_len(name.len()));
    out.extend_from_slice(MAGIC);
    out.push(RECORD_VERSION);
    out.push(match kind {
        Kind::HubEntry => KIND_HUB_ENTRY,
        Kind::Node => KIND_NODE,
    });
    out.push(bits_byte(bits));
    out.extend_from_slice(psk_tag);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    let mut flags = 0;
    for (on, f) in [
        (r.latest.is_some(), FLAG_LATEST),
        (r.previous.is_some(), FLAG_PREVIOUS),
        (r.confirmed, FLAG_CONFIRMED),
        (r.force_rotate, FLAG_FORCE_ROTATE),
        (r.rotate_requested, FLAG_ROTATE_REQUESTED),
    ] {
        if on {
            flags |= f;
        }
    }
    out.push(flags);
    for g in [&r.latest, &r.previous].into_iter().flatten() {
        put_gen(out, g);
    }
    let sup = &r.superseded[..r.superseded.len().min(MAX_SUPERSEDED)];
    out.push(sup.len() as u8);
    for s in sup {
        out.extend_from_slice(&s.to_be_bytes());
    }
    for v in [r.last_init_ts, r.rotations, r.inits] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    if kind == Kind::HubEntry {
        out.extend_from_slice(&r.outbound.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&r.rotate_at_unix_ms.to_be_bytes());
        out.extend_from_slice(&r.resends.to_be_bytes());
        out.extend_from_slice(&r.node_share);
        out.push(u8::from(r.pending.is_some()));
        if let Some(p) = &r.pending {
            out.extend_from_slice(p.random.expose());
            out.extend_from_slice(&p.hub_share);
            out.extend_from_slice(&p.node_share);
        }
    } else {
        out.push(u8::from(r.ratchet_private.is_some()));
        if let Some(k) = &r.ratchet_private {
            out.extend_from_slice(k.expose());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn flag(&mut self) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(RecordError::Invalid("bad flag byte")),
        }
    }
    fn secret(&mut self) -> Result<Secret32, RecordError> {
        let mut s = self.array::<32>()?;
        let secret = Secret32::new(s);
        s.zeroize();
        Ok(secret)
    }
    fn gen_record(&mut self) -> Result<GenRecord, RecordError> {
        let number = self.u64()?;
        let spi = self.u32()?;
        let mut s = self.array::<32>()?;
        let secret = Secret32::new(s);
        s.zeroize();
        let tx_reserved = self.u64()?;
        if tx_reserved > MAX_TX_RESERVED {
            return Err(RecordError::Invalid("send counter exhausted"));
        }
        let rx = (self.u64()?, self.u64()?, self.u64()?);
        let out_missing = match self.u8()? {
            0 => false,
            1 => true,
            _ => return Err(RecordError::Invalid("bad flag byte")),
        };
        Ok(GenRecord {
            number,
            spi,
            secret,
            tx_reserved,
            rx,
            out_missing,
        })
    }
}

/// Decodes a record of `kind` for node `name` under the PSK whose
/// [`crate::key_schedule::record_psk_tag`] is `psk_tag` and `bits`, and checks that its fields
/// belong together. Never panics.
pub(crate) fn decode(
    kind: Kind,
    name: &str,
    psk_tag: &[u8; 16],
    bits: KeyBits,
    data: &[u8],
) -> Result<Record, RecordError> {
    let mut r = Reader(data);
    if r.take(4)? != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let v = r.u8()?;
    if !(OLDEST_VERSION..=RECORD_VERSION).contains(&v) {
        return Err(RecordError::Version(v));
    }
    let k = r.u8()?;
    let want = match kind {
        Kind::HubEntry => KIND_HUB_ENTRY,
        Kind::Node => KIND_NODE,
    };
    if k != want {
        return Err(RecordError::WrongKind(k));
    }
    let b = r.u8()?;
    let tag: [u8; 16] = r.array()?;
    let len = r.u16()? as usize;
    let rec_name = r.take(len)?;
    if rec_name != name.as_bytes() {
        return Err(RecordError::WrongName(
            String::from_utf8_lossy(rec_name).into_owned(),
        ));
    }
    if &tag != psk_tag {
        return Err(RecordError::WrongPsk);
    }
    if b != bits_byte(bits) {
        return Err(RecordError::WrongKeyBits);
    }
    let flags = r.u8()?;
    if flags & !0x1f != 0 {
        return Err(RecordError::Invalid("unknown flags"));
    }
    let latest = if flags & FLAG_LATEST != 0 {
        Some(r.gen_record()?)
    } else {
        None
    };
    let previous = if flags & FLAG_PREVIOUS != 0 {
        Some(r.gen_record()?)
    } else {
        None
    };
    let n = r.u8()? as usize;
    if n > MAX_SUPERSEDED {
        return Err(RecordError::Invalid("too many superseded generations"));
    }
    let mut superseded = Vec::with_capacity(n);
    for _ in 0..n {
        superseded.push(r.u32()?);
    }
    let mut rec = Record {
        latest,
        previous,
        superseded,
        last_init_ts: r.u64()?,
        rotations: r.u64()?,
        inits: r.u64()?,
        rotate_requested: flags & FLAG_ROTATE_REQUESTED != 0,
        confirmed: flags & FLAG_CONFIRMED != 0,
        force_rotate: flags & FLAG_FORCE_ROTATE != 0,
        ..Record::default()
    };
    if kind == Kind::HubEntry {
        let o = r.u32()?;
        rec.outbound = (o != 0).then_some(o);
        rec.rotate_at_unix_ms = r.u64()?;
        rec.resends = r.u64()?;
    }
    if v >= 3 {
        if kind == Kind::HubEntry {
            rec.node_share = r.array()?;
            if r.flag()? {
                rec.pending = Some(PendingKey {
                    random: r.secret()?,
                    hub_share: r.array()?,
                    node_share: r.array()?,
                });
            }
        } else if r.flag()? {
            rec.ratchet_private = Some(r.secret()?);
        }
    }
    if !r.0.is_empty() {
        return Err(RecordError::Trailing);
    }
    check(kind, &rec)?;
    Ok(rec)
}

/// The invariants of a chain the machines keep: checked on every decoded
/// record, so a restored machine never holds a state it could not reach.
fn check(kind: Kind, r: &Record) -> Result<(), RecordError> {
    let bad = RecordError::Invalid;
    let mut spis: Vec<u32> = r.superseded.clone();
    match (&r.latest, &r.previous) {
        (None, Some(_)) => return Err(bad("previous generation without a latest")),
        (None, None) => {
            if r.confirmed || r.outbound.is_some_and(|o| !r.superseded.contains(&o)) {
                return Err(bad("confirmed or sending without a chain"));
            }
        }
        (Some(l), p) => {
            if l.number == 0 {
                return Err(bad("generation 0"));
            }
            spis.push(l.spi);
            if let Some(p) = p {
                if p.number.checked_add(1) != Some(l.number) {
                    return Err(bad("previous is not latest - 1"));
                }
                spis.push(p.spi);
            }
        }
    }
    if spis.iter().any(|s| *s <= 0xff) {
        return Err(bad("reserved SPI"));
    }
    let mut sorted = spis.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != spis.len() {
        return Err(bad("an SPI appears twice"));
    }
    if kind == Kind::HubEntry
        && let Some(o) = r.outbound
    {
        let gen_ok =
            |g: &Option<GenRecord>| g.as_ref().is_some_and(|g| g.spi == o && !g.out_missing);
        if !(gen_ok(&r.latest) || gen_ok(&r.previous) || r.superseded.contains(&o)) {
            return Err(bad("outbound names no usable SA"));
        }
    }
    if kind == Kind::Node
        && (r.confirmed
            || r.force_rotate
            || r.outbound.is_some()
            || r.pending.is_some()
            || r.node_share != [0; 32])
    {
        return Err(bad("hub fields in a node record"));
    }
    if kind == Kind::HubEntry && r.ratchet_private.is_some() {
        return Err(bad("node fields in a hub record"));
    }
    if r.pending.is_some() && r.previous.is_none() {
        return Err(bad("a pending key without a previous generation"));
    }
    if r.ratchet_private.is_some() && r.latest.is_none() {
        return Err(bad("a ratchet key without a chain"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_schedule::record_psk_tag;
    use proptest::prelude::*;

    fn psk() -> Secret32 {
        Secret32::new([7; 32])
    }

    fn gen_strategy() -> impl Strategy<Value = (u64, u32, [u8; 32], u64, (u64, u64, u64), bool)> {
        (
            1u64..u64::MAX,
            0x100u32..,
            any::<[u8; 32]>(),
            0..=MAX_TX_RESERVED,
            any::<(u64, u64, u64)>(),
            any::<bool>(),
        )
    }

    fn mk(t: (u64, u32, [u8; 32], u64, (u64, u64, u64), bool)) -> GenRecord {
        GenRecord {
            number: t.0,
            spi: t.1,
            secret: Secret32::new(t.2),
            tx_reserved: t.3,
            rx: t.4,
            out_missing: t.5,
        }
    }

    prop_compose! {
        fn record(kind: Kind)(
            latest in proptest::option::of(gen_strategy()),
            prev in proptest::option::of(gen_strategy()),
            sup in proptest::collection::vec(0x100u32.., 0..=MAX_SUPERSEDED),
            nums in any::<[u64; 5]>(),
            bools in any::<[bool; 4]>(),
            out_pick in 0usize..4,
            keys in any::<[[u8; 32]; 4]>(),
            with_ratchet in any::<bool>(),
        ) -> Record {
            let mut r = Record {
                latest: latest.map(mk),
                superseded: sup,
                last_init_ts: nums[0],
                rotations: nums[1],
                inits: nums[2],
                ..Record::default()
            };
            if let Some(l) = &r.latest
                && let Some(p) = prev
            {
                let mut p = mk(p);
                p.number = l.number - 1;
                r.previous = Some(p);
            }
            if r.latest.as_ref().is_some_and(|l| l.number == 1) {
                r.previous = None;
            }
            if let (Some(l), Some(p)) = (&r.latest, &mut r.previous)
                && p.spi == l.spi
            {
                p.spi = if l.spi == u32::MAX { 0x100 } else { l.spi + 1 };
            }
            let mut seen: std::collections::HashSet<u32> = [&r.latest, &r.previous]
                .into_iter()
                .flatten()
                .map(|g| g.spi)
                .collect();
            r.superseded.retain(|s| seen.insert(*s));
            match kind {
                Kind::Node => {
                    r.rotate_requested = bools[0];
                    r.ratchet_private = (with_ratchet && r.latest.is_some())
                        .then(|| Secret32::new(keys[0]));
                }
                Kind::HubEntry => {
                    r.node_share = keys[0];
                    r.pending = (with_ratchet && r.previous.is_some()).then(|| PendingKey {
                        random: Secret32::new(keys[1]),
                        hub_share: keys[2],
                        node_share: keys[3],
                    });
                    r.confirmed = bools[1] && r.latest.is_some();
                    r.force_rotate = bools[2];
                    r.rotate_at_unix_ms = nums[3];
                    r.resends = nums[4];
                    let usable = |g: &Option<GenRecord>| g.as_ref().filter(|g| !g.out_missing).map(|g| g.spi);
                    r.outbound = match out_pick {
                        0 => usable(&r.latest),
                        1 => usable(&r.previous),
                        2 => r.superseded.first().copied(),
                        _ => None,
                    };
                }
            }
            r
        }
    }

    proptest! {
        #[test]
        fn hub_records_round_trip(r in record(Kind::HubEntry), name in "[a-z0-9]{1,20}") {
            let mut out = Vec::new();
            encode(Kind::HubEntry, &name, &record_psk_tag(&psk(), &name), KeyBits::Aes256, &r, &mut out);
            prop_assert!(out.len() <= max_record_len(name.len()));
            let back = decode(Kind::HubEntry, &name, &record_psk_tag(&psk(), &name), KeyBits::Aes256, &out);
            prop_assert_eq!(back, Ok(r));
            // Every strict prefix is refused, never a panic.
            for n in 0..out.len() {
                prop_assert!(decode(Kind::HubEntry, &name, &record_psk_tag(&psk(), &name), KeyBits::Aes256, &out[..n]).is_err());
            }
        }

        #[test]
        fn node_records_round_trip(r in record(Kind::Node), name in "[a-z0-9]{1,20}") {
            let mut out = Vec::new();
            encode(Kind::Node, &name, &record_psk_tag(&psk(), &name), KeyBits::Aes128, &r, &mut out);
            let back = decode(Kind::Node, &name, &record_psk_tag(&psk(), &name), KeyBits::Aes128, &out);
            prop_assert_eq!(back, Ok(r));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(Kind::HubEntry, "mn1", &record_psk_tag(&psk(), "mn1"), KeyBits::Aes128, &data);
            let _ = decode(Kind::Node, "mn1", &record_psk_tag(&psk(), "mn1"), KeyBits::Aes128, &data);
        }

        /// Valid header, then garbage: still never a panic.
        #[test]
        fn garbage_after_a_valid_header_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            kind_hub in any::<bool>(),
        ) {
            let kind = if kind_hub { Kind::HubEntry } else { Kind::Node };
            let mut out = Vec::new();
            encode(kind, "mn1", &record_psk_tag(&psk(), "mn1"), KeyBits::Aes128, &Record::default(), &mut out);
            out.truncate(4 + 3 + 16 + 2 + 3);
            out.extend_from_slice(&body);
            let _ = decode(kind, "mn1", &record_psk_tag(&psk(), "mn1"), KeyBits::Aes128, &out);
        }
    }

    fn sample() -> (Record, Vec<u8>) {
        let g = |n, spi| GenRecord {
            number: n,
            spi,
            secret: Secret32::new([n as u8; 32]),
            tx_reserved: 5,
            rx: (3, 7, 0),
            out_missing: false,
        };
        let r = Record {
            latest: Some(g(4, 0x1000)),
            previous: Some(g(3, 0x2000)),
            outbound: Some(0x2000),
            confirmed: true,
            ..Record::default()
        };
        let mut out = Vec::new();
        encode(
            Kind::HubEntry,
            "mn1",
            &record_psk_tag(&psk(), "mn1"),
            KeyBits::Aes128,
            &r,
            &mut out,
        );
        (r, out)
    }

    #[test]
    fn wrong_name_psk_bits_kind_version_are_refused() {
        let (_, out) = sample();
        let d = |name, psk: &Secret32, bits, kind| {
            decode(kind, name, &record_psk_tag(psk, name), bits, &out)
        };
        let (p, b, h) = (psk(), KeyBits::Aes128, Kind::HubEntry);
        assert!(d("mn1", &p, b, h).is_ok());
        assert_eq!(
            d("mn2", &p, b, h),
            Err(RecordError::WrongName("mn1".into()))
        );
        assert_eq!(
            d("mn1", &Secret32::new([8; 32]), b, h),
            Err(RecordError::WrongPsk)
        );
        assert_eq!(
            d("mn1", &p, KeyBits::Aes256, h),
            Err(RecordError::WrongKeyBits)
        );
        assert_eq!(d("mn1", &p, b, Kind::Node), Err(RecordError::WrongKind(1)));
        let mut v = out.clone();
        v[4] = 4;
        assert_eq!(
            decode(h, "mn1", &record_psk_tag(&p, "mn1"), b, &v),
            Err(RecordError::Version(4))
        );
        v[4] = 0;
        assert_eq!(
            decode(h, "mn1", &record_psk_tag(&p, "mn1"), b, &v),
            Err(RecordError::Version(0))
        );
        // Versions 1 and 2 have the same layout without the ratchet section
        // (the hub's: a 32-byte share and a pending flag; version 1's exact
        // counters are tight reservations): read as they are, without the
        // ratchet parts, so an upgrade re-initialises nothing.
        let old = &out[..out.len() - 33];
        for version in [1, 2] {
            let mut v = old.to_vec();
            v[4] = version;
            let back = decode(h, "mn1", &record_psk_tag(&p, "mn1"), b, &v);
            assert_eq!(back.map(|r| (r.node_share, r.pending)), Ok(([0; 32], None)));
        }
        // A version 3 record without its ratchet section is truncated.
        let mut v = old.to_vec();
        v[4] = 3;
        assert_eq!(
            decode(h, "mn1", &record_psk_tag(&p, "mn1"), b, &v),
            Err(RecordError::Truncated)
        );
        v = out.clone();
        v[0] = b'x';
        assert_eq!(
            decode(h, "mn1", &record_psk_tag(&p, "mn1"), b, &v),
            Err(RecordError::BadMagic)
        );
        v = out.clone();
        v.push(0);
        assert_eq!(
            decode(h, "mn1", &record_psk_tag(&p, "mn1"), b, &v),
            Err(RecordError::Trailing)
        );
        assert_eq!(
            decode(
                h,
                "mn1",
                &record_psk_tag(&p, "mn1"),
                b,
                &out[..out.len() - 1]
            ),
            Err(RecordError::Truncated)
        );
    }

    #[test]
    fn exhausted_counters_are_refused() {
        let (mut r, _) = sample();
        if let Some(l) = r.latest.as_mut() {
            l.tx_reserved = MAX_TX_RESERVED + 1;
        }
        let mut out = Vec::new();
        encode(
            Kind::HubEntry,
            "mn1",
            &record_psk_tag(&psk(), "mn1"),
            KeyBits::Aes128,
            &r,
            &mut out,
        );
        assert_eq!(
            decode(
                Kind::HubEntry,
                "mn1",
                &record_psk_tag(&psk(), "mn1"),
                KeyBits::Aes128,
                &out
            ),
            Err(RecordError::Invalid("send counter exhausted"))
        );
    }

    #[test]
    fn inconsistent_chains_are_refused() {
        let (r, _) = sample();
        let enc = |r: &Record| {
            let mut out = Vec::new();
            encode(
                Kind::HubEntry,
                "mn1",
                &record_psk_tag(&psk(), "mn1"),
                KeyBits::Aes128,
                r,
                &mut out,
            );
            decode(
                Kind::HubEntry,
                "mn1",
                &record_psk_tag(&psk(), "mn1"),
                KeyBits::Aes128,
                &out,
            )
        };
        let mut x = r.clone();
        if let Some(p) = x.previous.as_mut() {
            p.number = 1;
        }
        assert!(matches!(enc(&x), Err(RecordError::Invalid(_))));
        x = r.clone();
        x.outbound = Some(0x3000);
        assert!(matches!(enc(&x), Err(RecordError::Invalid(_))));
        x = r.clone();
        x.superseded = vec![0x1000];
        assert!(matches!(enc(&x), Err(RecordError::Invalid(_))));
        x = r.clone();
        if let Some(p) = x.previous.as_mut() {
            p.out_missing = true;
        }
        assert!(matches!(enc(&x), Err(RecordError::Invalid(_))));
    }

    #[test]
    fn debug_shows_no_secret() {
        let (r, _) = sample();
        let d = format!("{r:?}");
        assert!(d.contains("Secret32(fp=") && !d.contains("4, 4, 4"), "{d}");
    }
}
