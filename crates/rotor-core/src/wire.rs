//! The control-message wire format (byte by byte in `docs/protocol.md`).
//!
//! ```text
//! header (16, clear)  | clear extension (0/32/64) | ciphertext of body | tag (16)
//! ver type flags  spi  counter
//!  1   1    2      4     8
//! ```
//! The AEAD is ChaCha20-Poly1305 with the header and the clear extension as
//! associated data and the nonce `00 00 00 00 || counter (8, big-endian)`.
//! Every key is used in one direction only and every sender increments its
//! counter per message, so a (key, nonce) pair never repeats.
//!
//! Sending: build a [`Message`] and [`Message::seal`] it; the variant fixes
//! type, flags and clear extension, so sealing cannot fail. Receiving:
//! [`parse`] checks every length before reading, so no input can make it
//! panic; [`Datagram::open`] authenticates before anything is decoded and
//! gives the [`Message`] back.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::{ControlKey, Secret32};

/// Protocol version carried in byte 0. Version 2 added the ratchet shares
/// (a node's X25519 share in the hello body, the hub's at the end of the
/// key body), the hello's source endpoint, the NAT flag and the non-ESP
/// marker; a datagram of any other version is dropped.
pub const VERSION: u8 = 2;
/// What every control datagram starts with on the wire, before the
/// header: the RFC 3948 non-ESP marker. The control port is also the
/// ESP-in-UDP port, and the kernel takes a datagram there that starts with
/// four non-zero bytes as ESP; the marker makes it pass the datagram to
/// rotor instead. [`frame`] adds it, [`unframe`] checks and removes it.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// Length of the clear header.
pub const HEADER_LEN: usize = 16;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// `flags` bit of a `key` message that answers an `init`: it carries the hub's
/// nonce and ephemeral public key in clear.
pub const FLAG_INIT_REPLY: u16 = 0x0001;
/// `flags` bit of a `key` or `ack` message: the hub saw the node's hello
/// come from another address or port than the node said it sent from (a
/// NAT on the path), so both ends carry ESP in UDP (RFC 3948).
pub const FLAG_NAT: u16 = 0x0002;
/// Length of the MAC that ends an init reply, after its AEAD tag: a node
/// checks it, under a key of its own init (PSK and nonce), before it
/// spends an X25519 on the reply ([`Datagram::check_mac`]).
pub const INIT_REPLY_MAC_LEN: usize = 16;
/// Length of a cookie (docs/protocol.md §4, "Cookies"), and of the echo
/// of the init's tag in a cookie message.
pub const COOKIE_LEN: usize = 16;
/// Length of a cookie message: the header, the cookie, the echo. Shorter
/// than the init it answers (104 bytes): no amplification.
pub const COOKIE_MSG_LEN: usize = HEADER_LEN + 2 * COOKIE_LEN;
/// Length of an endpoint on the wire: the IPv6 address (IPv4 as
/// IPv4-mapped `::ffff:a.b.c.d`) then the port.
pub const ENDPOINT_LEN: usize = 18;

/// Message type (byte 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// Node -> hub keepalive under the node's send generation.
    Hello = 1,
    /// Node -> hub (re)initialisation request under a PSK-derived key.
    Init = 2,
    /// Hub -> node: a new generation (its secret, or what the node derives
    /// it from).
    Key = 3,
    /// Hub -> node: in sync, nothing to change.
    Ack = 4,
    /// Hub -> node, in clear: an init was not looked at because the hub is
    /// under load; send it again with this cookie (proof that the node
    /// receives at the address it sends from). See [`cookie_message`].
    Cookie = 5,
}

impl MsgType {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(MsgType::Hello),
            2 => Some(MsgType::Init),
            3 => Some(MsgType::Key),
            4 => Some(MsgType::Ack),
            5 => Some(MsgType::Cookie),
            _ => None,
        }
    }

    /// Whether nodes send this type (else the hub does).
    pub fn from_node(self) -> bool {
        matches!(self, MsgType::Hello | MsgType::Init)
    }
}

/// Why a datagram was rejected. Each reason is counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum WireError {
    /// Shorter than a header.
    #[error("shorter than a header")]
    TooShort,
    /// Byte 0 is not [`VERSION`].
    #[error("unknown protocol version")]
    BadVersion,
    /// Byte 1 is no known type.
    #[error("unknown message type")]
    UnknownType,
    /// Reserved flag bits set, or a flag on a type that has none.
    #[error("reserved flags set")]
    BadFlags,
    /// The length does not match the type.
    #[error("wrong length for its type")]
    BadLength,
    /// The AEAD tag did not verify (wrong key, forged or corrupted).
    #[error("authentication failed")]
    AuthFailed,
}

/// The clear header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub kind: MsgType,
    /// Flags ([`FLAG_INIT_REPLY`] or 0).
    pub flags: u16,
    /// SPI naming the key that protects the message.
    pub spi: u32,
    /// Sender's per-key message counter (the AEAD nonce).
    pub counter: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = VERSION;
        h[1] = self.kind as u8;
        h[2..4].copy_from_slice(&self.flags.to_be_bytes());
        h[4..8].copy_from_slice(&self.spi.to_be_bytes());
        h[8..16].copy_from_slice(&self.counter.to_be_bytes());
        h
    }
}

/// The clear extension of an init reply: what the node needs, besides its
/// own nonce and ephemeral key, to derive the init session key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitReply {
    /// The hub's fresh nonce.
    pub hub_nonce: [u8; 32],
    /// The hub's ephemeral X25519 public key.
    pub hub_pub: [u8; 32],
}

/// A control message, header fields and body together. Type byte, flags and
/// clear extension follow from the variant, so every value seals into a
/// well-formed datagram: there is no combination [`parse`] would reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Node -> hub keepalive under the node's latest generation.
    Hello {
        /// SPI of the generation that protects it.
        spi: u32,
        /// Sender's counter under that generation.
        counter: u64,
        /// Node's latest generation.
        generation: u64,
        /// The node asks for a rotation.
        rotate: bool,
        /// The node's X25519 share for the ratchet step out of this
        /// generation: the same in every hello under it.
        share: [u8; 32],
        /// The address and port the node sent the hello from, as it sees
        /// them (unspecified, port 0, when it cannot tell): the hub compares
        /// them with what it received from to detect a NAT.
        source: SocketAddr,
    },
    /// Node -> hub (re)initialisation request under the init request key.
    Init {
        /// The node's init SPI.
        spi: u32,
        /// Sender's counter (the request key is fresh per nonce: 0).
        counter: u64,
        /// Node nonce, sent in clear (the request key is derived from it).
        nonce: [u8; 32],
        /// Milliseconds since the Unix epoch; strictly increasing per node.
        timestamp_ms: u64,
        /// Node's ephemeral X25519 public key.
        eph_pub: [u8; 32],
    },
    /// Hub -> node: a generation's SPI and what its secret comes from.
    Key {
        /// SPI of the key that protects it: a generation's, or the node's
        /// init SPI for an init reply.
        spi: u32,
        /// Sender's counter under that key.
        counter: u64,
        /// `Some` for the answer to an init (flag INIT_REPLY, carried in
        /// clear); `None` for a key sent under a generation.
        init_reply: Option<InitReply>,
        /// Number of the generation carried.
        generation: u64,
        /// SPI of the generation carried.
        gen_spi: u32,
        /// An init reply: generation 1's secret. A rotation: the hub's
        /// random value, from which, with the X25519 result of the two
        /// shares, the node derives the generation's secret
        /// ([`crate::key_schedule::ratchet_secret`]).
        secret: Secret32,
        /// A rotation: the hub's X25519 share. An init reply: zero (the
        /// init's own exchange protects generation 1).
        hub_share: [u8; 32],
        /// The hub sees the node behind a NAT (flag [`FLAG_NAT`]).
        nat: bool,
    },
    /// Hub -> node: in sync, nothing to change.
    Ack {
        /// SPI of the generation that protects it (the node's latest).
        spi: u32,
        /// Sender's counter under that generation.
        counter: u64,
        /// Hub's latest generation.
        generation: u64,
        /// The counter of the hello it answers (sent under the same
        /// generation): a node takes only an ack to a hello it sent.
        hello: u64,
        /// The hub sees the node behind a NAT (flag [`FLAG_NAT`]).
        nat: bool,
    },
}

const HELLO_LEN: usize = 9 + 32 + ENDPOINT_LEN;
const INIT_LEN: usize = 40;
const KEY_LEN: usize = 44 + 32;
const ACK_LEN: usize = 16;
/// Longest body: the buffer [`Datagram::open`] decrypts into.
const MAX_BODY_LEN: usize = KEY_LEN;

fn body_len(kind: MsgType) -> usize {
    match kind {
        MsgType::Hello => HELLO_LEN,
        MsgType::Init => INIT_LEN,
        MsgType::Key => KEY_LEN,
        MsgType::Ack => ACK_LEN,
        // Not sealed: parse() takes it apart before any length rule.
        MsgType::Cookie => 0,
    }
}

/// Bytes after the AEAD tag: the init reply's MAC, nothing else.
fn trailer_len(kind: MsgType, flags: u16) -> usize {
    if kind == MsgType::Key && flags & FLAG_INIT_REPLY != 0 {
        INIT_REPLY_MAC_LEN
    } else {
        0
    }
}

/// HMAC-SHA256 of `data` under `key`, as the first [`INIT_REPLY_MAC_LEN`]
/// bytes.
fn init_reply_mac(key: &ControlKey, data: &[u8]) -> [u8; INIT_REPLY_MAC_LEN] {
    let mut out = [0u8; INIT_REPLY_MAC_LEN];
    out.copy_from_slice(&mac_of(key, data).finalize().into_bytes()[..INIT_REPLY_MAC_LEN]);
    out
}

fn mac_of(key: &ControlKey, data: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: a 32-byte key never fails.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(&key.0) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC-SHA256 refused a 32-byte key"),
    };
    m.update(data);
    m
}

fn clear_len(kind: MsgType, flags: u16) -> Result<usize, WireError> {
    // Only the hub's messages carry the NAT verdict.
    let nat = if matches!(kind, MsgType::Key | MsgType::Ack) {
        FLAG_NAT
    } else {
        0
    };
    match (kind, flags & !nat) {
        (MsgType::Init, 0) => Ok(32),
        (MsgType::Key, FLAG_INIT_REPLY) => Ok(64),
        (_, 0) => Ok(0),
        _ => Err(WireError::BadFlags),
    }
}

/// A cookie message (type 5, not encrypted): the node's init SPI in the
/// header (counter 0), then `cookie`, then `echo`, the tag of the init it
/// answers, which only a receiver of that init knows.
pub fn cookie_message(
    init_spi: u32,
    cookie: &[u8; COOKIE_LEN],
    echo: &[u8; COOKIE_LEN],
) -> Vec<u8> {
    let header = Header {
        kind: MsgType::Cookie,
        flags: 0,
        spi: init_spi,
        counter: 0,
    };
    let mut out = Vec::with_capacity(COOKIE_MSG_LEN);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(cookie);
    out.extend_from_slice(echo);
    out
}

/// A sealed init followed by `cookie`: the AEAD covers the init as it was,
/// so the node re-sends the same datagram, never a second seal under the
/// same key and nonce.
pub fn with_cookie(init: &[u8], cookie: &[u8; COOKIE_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(init.len() + COOKIE_LEN);
    out.extend_from_slice(init);
    out.extend_from_slice(cookie);
    out
}

/// `message` as it goes on the wire: [`NON_ESP_MARKER`] first.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NON_ESP_MARKER.len() + message.len());
    out.extend_from_slice(&NON_ESP_MARKER);
    out.extend_from_slice(message);
    out
}

/// The message inside a datagram received from the wire; `None` if it does
/// not start with [`NON_ESP_MARKER`].
pub fn unframe(datagram: &[u8]) -> Option<&[u8]> {
    datagram.strip_prefix(&NON_ESP_MARKER[..])
}

/// `a` as [`ENDPOINT_LEN`] bytes: the IPv6 address (IPv4 as IPv4-mapped),
/// then the port. Also how the daemon stores a peer's place.
pub fn encode_endpoint(a: &SocketAddr) -> [u8; ENDPOINT_LEN] {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut out = [0u8; ENDPOINT_LEN];
    out[..16].copy_from_slice(&ip.octets());
    out[16..].copy_from_slice(&a.port().to_be_bytes());
    out
}

/// The endpoint [`encode_endpoint`] wrote at the start of `b` (`None` if
/// `b` is shorter); IPv4-mapped addresses come back as IPv4.
pub fn decode_endpoint(b: &[u8]) -> Option<SocketAddr> {
    let ip: [u8; 16] = b.get(..16)?.try_into().ok()?;
    let port = u16::from_be_bytes(b.get(16..ENDPOINT_LEN)?.try_into().ok()?);
    let ip = Ipv6Addr::from(ip);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    Some(SocketAddr::new(ip, port))
}

impl Message {
    /// The type byte.
    pub fn kind(&self) -> MsgType {
        match self {
            Message::Hello { .. } => MsgType::Hello,
            Message::Init { .. } => MsgType::Init,
            Message::Key { .. } => MsgType::Key,
            Message::Ack { .. } => MsgType::Ack,
        }
    }

    /// The flags: [`FLAG_INIT_REPLY`] on an init reply, [`FLAG_NAT`] on
    /// a key or ack to a node behind a NAT.
    pub fn flags(&self) -> u16 {
        let nat = |n: &bool| if *n { FLAG_NAT } else { 0 };
        match self {
            Message::Key {
                init_reply: Some(_),
                nat: n,
                ..
            } => FLAG_INIT_REPLY | nat(n),
            Message::Key { nat: n, .. } | Message::Ack { nat: n, .. } => nat(n),
            _ => 0,
        }
    }

    /// The clear header it is sent with.
    pub fn header(&self) -> Header {
        let (Message::Hello { spi, counter, .. }
        | Message::Init { spi, counter, .. }
        | Message::Key { spi, counter, .. }
        | Message::Ack { spi, counter, .. }) = self;
        Header {
            kind: self.kind(),
            flags: self.flags(),
            spi: *spi,
            counter: *counter,
        }
    }

    /// Length of the sealed datagram (91, 104, 108, 188 or 48 bytes).
    pub fn sealed_len(&self) -> usize {
        let h = self.header();
        // clear_len accepts every (kind, flags) a Message has.
        HEADER_LEN
            + clear_len(h.kind, h.flags).unwrap_or(0)
            + body_len(h.kind)
            + TAG_LEN
            + trailer_len(h.kind, h.flags)
    }

    /// An init reply sealed under the init session key `session`, its MAC
    /// under `mac_key` (the node's [`crate::key_schedule::init_reply_mac_key`]);
    /// any other message as [`Self::seal`] seals it.
    pub fn seal_init_reply(&self, session: &ControlKey, mac_key: &ControlKey) -> Vec<u8> {
        self.seal_with(session, mac_key)
    }

    /// Encodes and seals the message under `key` (ChaCha20-Poly1305, nonce
    /// from the counter, header and clear extension authenticated). Cannot
    /// fail: the layout follows from the variant. One allocation, the
    /// datagram; the plaintext exists only inside it until encrypted in place.
    /// An init reply's MAC is made under `key` too, which no node accepts:
    /// the hub seals its replies with [`Self::seal_init_reply`].
    pub fn seal(&self, key: &ControlKey) -> Vec<u8> {
        self.seal_with(key, key)
    }

    fn seal_with(&self, key: &ControlKey, mac_key: &ControlKey) -> Vec<u8> {
        let header = self.header();
        let mut out = Vec::with_capacity(self.sealed_len());
        out.extend_from_slice(&header.encode());
        match self {
            Message::Init { nonce, .. } => out.extend_from_slice(nonce),
            Message::Key {
                init_reply: Some(r),
                ..
            } => {
                out.extend_from_slice(&r.hub_nonce);
                out.extend_from_slice(&r.hub_pub);
            }
            _ => {}
        }
        let aad_len = out.len();
        match self {
            Message::Hello {
                generation,
                rotate,
                share,
                source,
                ..
            } => {
                out.extend_from_slice(&generation.to_be_bytes());
                out.push(u8::from(*rotate));
                out.extend_from_slice(share);
                out.extend_from_slice(&encode_endpoint(source));
            }
            Message::Init {
                timestamp_ms,
                eph_pub,
                ..
            } => {
                out.extend_from_slice(&timestamp_ms.to_be_bytes());
                out.extend_from_slice(eph_pub);
            }
            Message::Key {
                generation,
                gen_spi,
                secret,
                hub_share,
                ..
            } => {
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(&gen_spi.to_be_bytes());
                out.extend_from_slice(secret.expose());
                out.extend_from_slice(hub_share);
            }
            Message::Ack {
                generation, hello, ..
            } => {
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(&hello.to_be_bytes());
            }
        }
        let aead = ChaCha20Poly1305::new(Key::from_slice(&key.0));
        let (aad, body) = out.split_at_mut(aad_len);
        let tag = match aead.encrypt_in_place_detached(
            Nonce::from_slice(&nonce(header.counter)),
            aad,
            body,
        ) {
            Ok(tag) => tag,
            // ChaCha20-Poly1305 refuses only messages of 256 GiB and more;
            // a body is at most MAX_BODY_LEN bytes, whatever the input.
            Err(_) => unreachable!("ChaCha20-Poly1305 refused a {}-byte body", body.len()),
        };
        out.extend_from_slice(&tag);
        if trailer_len(header.kind, header.flags) > 0 {
            let mac = init_reply_mac(mac_key, &out);
            out.extend_from_slice(&mac);
        }
        out
    }
}

/// A checked view of a datagram: lengths verified, nothing authenticated yet.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The clear header.
    pub header: Header,
    /// The clear extension (init: node nonce; init reply: hub nonce + hub
    /// ephemeral public key). Unauthenticated until [`Self::open`] succeeds.
    pub clear: &'a [u8],
    aad: &'a [u8],
    sealed: &'a [u8],
    /// Everything before the trailer, and the trailer (an init reply's MAC,
    /// an init's cookie; empty for every other message).
    maced: &'a [u8],
    trailer: &'a [u8],
}

/// Checks a datagram's framing. Never panics, whatever the input.
pub fn parse(buf: &[u8]) -> Result<Datagram<'_>, WireError> {
    if buf.len() < HEADER_LEN {
        return Err(WireError::TooShort);
    }
    if buf[0] != VERSION {
        return Err(WireError::BadVersion);
    }
    let kind = MsgType::from_u8(buf[1]).ok_or(WireError::UnknownType)?;
    let flags = u16::from_be_bytes([buf[2], buf[3]]);
    let spi = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&buf[8..16]);
    let header = Header {
        kind,
        flags,
        spi,
        counter: u64::from_be_bytes(c),
    };
    if kind == MsgType::Cookie {
        if flags != 0 {
            return Err(WireError::BadFlags);
        }
        if buf.len() != COOKIE_MSG_LEN {
            return Err(WireError::BadLength);
        }
        return Ok(Datagram {
            header,
            clear: &buf[HEADER_LEN..],
            aad: buf,
            sealed: &[],
            maced: buf,
            trailer: &[],
        });
    }
    let clear = clear_len(kind, flags)?;
    let trailer = trailer_len(kind, flags);
    let end = HEADER_LEN + clear + body_len(kind) + TAG_LEN;
    // An init may end in a cookie, outside its AEAD.
    let cookie = kind == MsgType::Init && buf.len() == end + COOKIE_LEN;
    if buf.len() != end + trailer && !cookie {
        return Err(WireError::BadLength);
    }
    Ok(Datagram {
        header,
        clear: &buf[HEADER_LEN..HEADER_LEN + clear],
        aad: &buf[..HEADER_LEN + clear],
        sealed: &buf[HEADER_LEN + clear..end],
        maced: &buf[..end],
        trailer: &buf[end..],
    })
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

fn u64_at(b: &[u8; MAX_BODY_LEN], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn array32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

impl Datagram<'_> {
    /// The node nonce of an init request (unauthenticated until
    /// [`Self::open`]); `None` for every other type.
    pub fn init_nonce(&self) -> Option<[u8; 32]> {
        match self.header.kind {
            MsgType::Init => array32(self.clear),
            _ => None,
        }
    }

    /// The cookie an init ends with, if any (not authenticated by the
    /// AEAD: the hub checks it against the source address).
    pub fn init_cookie(&self) -> Option<[u8; COOKIE_LEN]> {
        match self.header.kind {
            MsgType::Init => self.trailer.try_into().ok(),
            _ => None,
        }
    }

    /// The AEAD tag of a sealed message (what a cookie message echoes).
    pub fn tag(&self) -> Option<[u8; COOKIE_LEN]> {
        let at = self.sealed.len().checked_sub(TAG_LEN)?;
        self.sealed.get(at..)?.try_into().ok()
    }

    /// A cookie message's cookie and echo; `None` for every other type.
    pub fn cookie(&self) -> Option<([u8; COOKIE_LEN], [u8; COOKIE_LEN])> {
        if self.header.kind != MsgType::Cookie {
            return None;
        }
        let (c, e) = self.clear.split_at_checked(COOKIE_LEN)?;
        Some((c.try_into().ok()?, e.try_into().ok()?))
    }

    /// The clear extension of an init reply (unauthenticated until
    /// [`Self::open`]); `None` for every other message.
    pub fn init_reply(&self) -> Option<InitReply> {
        if self.header.kind != MsgType::Key || self.header.flags & FLAG_INIT_REPLY == 0 {
            return None;
        }
        let (n, p) = self.clear.split_at_checked(32)?;
        Some(InitReply {
            hub_nonce: array32(n)?,
            hub_pub: array32(p)?,
        })
    }

    /// Checks an init reply's MAC under `mac_key` (constant time): cheap
    /// (one HMAC), and done before the X25519 the reply's AEAD key needs.
    /// Every other message has no MAC and passes.
    pub fn check_mac(&self, mac_key: &ControlKey) -> Result<(), WireError> {
        if self.header.kind != MsgType::Key || self.trailer.is_empty() {
            return Ok(());
        }
        mac_of(mac_key, self.maced)
            .verify_truncated_left(self.trailer)
            .map_err(|_| WireError::AuthFailed)
    }

    /// Authenticates and decrypts with `key`, and gives the whole message
    /// (header fields, clear extension, body). Nothing is trusted before this.
    pub fn open(&self, key: &ControlKey) -> Result<Message, WireError> {
        let n = self
            .sealed
            .len()
            .checked_sub(TAG_LEN)
            .filter(|n| *n <= MAX_BODY_LEN)
            .ok_or(WireError::BadLength)?;
        let (ct, tag) = self.sealed.split_at(n);
        // Decrypted on the stack (no allocation per message), wiped on drop.
        let mut plain = zeroize::Zeroizing::new([0u8; MAX_BODY_LEN]);
        plain[..n].copy_from_slice(ct);
        let aead = ChaCha20Poly1305::new(Key::from_slice(&key.0));
        aead.decrypt_in_place_detached(
            Nonce::from_slice(&nonce(self.header.counter)),
            self.aad,
            &mut plain[..n],
            Tag::from_slice(tag),
        )
        .map_err(|_| WireError::AuthFailed)?;
        // parse() fixed the length for the type, so these reads are in bounds.
        let p = &*plain;
        let Header {
            spi,
            counter,
            flags,
            ..
        } = self.header;
        let nat = flags & FLAG_NAT != 0;
        Ok(match self.header.kind {
            MsgType::Hello => Message::Hello {
                spi,
                counter,
                generation: u64_at(p, 0),
                rotate: p[8] & 1 != 0,
                share: array32(&p[9..41]).ok_or(WireError::BadLength)?,
                source: decode_endpoint(&p[41..41 + ENDPOINT_LEN]).ok_or(WireError::BadLength)?,
            },
            MsgType::Init => Message::Init {
                spi,
                counter,
                nonce: self.init_nonce().ok_or(WireError::BadLength)?,
                timestamp_ms: u64_at(p, 0),
                eph_pub: array32(&p[8..40]).ok_or(WireError::BadLength)?,
            },
            MsgType::Key => {
                let mut s = zeroize::Zeroizing::new([0u8; 32]);
                s.copy_from_slice(&p[12..44]);
                Message::Key {
                    spi,
                    counter,
                    init_reply: self.init_reply(),
                    generation: u64_at(p, 0),
                    gen_spi: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
                    secret: Secret32::new(*s),
                    hub_share: array32(&p[44..76]).ok_or(WireError::BadLength)?,
                    nat,
                }
            }
            MsgType::Ack => Message::Ack {
                spi,
                counter,
                generation: u64_at(p, 0),
                hello: u64_at(p, 8),
                nat,
            },
            // parse() gives a cookie no sealed part: refused above.
            MsgType::Cookie => return Err(WireError::BadLength),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ControlKey {
        ControlKey([b; 32])
    }

    /// One message of each kind, with the header and clear extension it
    /// must be sent with.
    fn samples() -> Vec<(Header, Vec<u8>, Message)> {
        let h = |kind, flags| Header {
            kind,
            flags,
            spi: 0x1234_5678,
            counter: 42,
        };
        let (spi, counter) = (0x1234_5678, 42);
        vec![
            (
                h(MsgType::Hello, 0),
                vec![],
                Message::Hello {
                    spi,
                    counter,
                    generation: 7,
                    rotate: true,
                    share: [4; 32],
                    source: "192.0.2.7:4820".parse().unwrap(),
                },
            ),
            (
                h(MsgType::Hello, 0),
                vec![],
                Message::Hello {
                    spi,
                    counter,
                    generation: 7,
                    rotate: false,
                    share: [5; 32],
                    source: "[2001:db8::7]:40000".parse().unwrap(),
                },
            ),
            (
                h(MsgType::Init, 0),
                vec![9; 32],
                Message::Init {
                    spi,
                    counter,
                    nonce: [9; 32],
                    timestamp_ms: 1_700_000_000_000,
                    eph_pub: [5; 32],
                },
            ),
            (
                h(MsgType::Key, 0),
                vec![],
                Message::Key {
                    spi,
                    counter,
                    init_reply: None,
                    generation: 8,
                    gen_spi: 0xabcd,
                    secret: Secret32::new([6; 32]),
                    hub_share: [8; 32],
                    nat: false,
                },
            ),
            (
                h(MsgType::Key, FLAG_NAT),
                vec![],
                Message::Key {
                    spi,
                    counter,
                    init_reply: None,
                    generation: 8,
                    gen_spi: 0xabcd,
                    secret: Secret32::new([6; 32]),
                    hub_share: [8; 32],
                    nat: true,
                },
            ),
            (
                h(MsgType::Key, FLAG_INIT_REPLY),
                vec![3; 64],
                Message::Key {
                    spi,
                    counter,
                    init_reply: Some(InitReply {
                        hub_nonce: [3; 32],
                        hub_pub: [3; 32],
                    }),
                    generation: 1,
                    gen_spi: 0x999,
                    secret: Secret32::new([7; 32]),
                    hub_share: [0; 32],
                    nat: false,
                },
            ),
            (
                h(MsgType::Key, FLAG_INIT_REPLY | FLAG_NAT),
                vec![3; 64],
                Message::Key {
                    spi,
                    counter,
                    init_reply: Some(InitReply {
                        hub_nonce: [3; 32],
                        hub_pub: [3; 32],
                    }),
                    generation: 1,
                    gen_spi: 0x999,
                    secret: Secret32::new([7; 32]),
                    hub_share: [0; 32],
                    nat: true,
                },
            ),
            (
                h(MsgType::Ack, 0),
                vec![],
                Message::Ack {
                    spi,
                    counter,
                    generation: 8,
                    hello: 41,
                    nat: false,
                },
            ),
            (
                h(MsgType::Ack, FLAG_NAT),
                vec![],
                Message::Ack {
                    spi,
                    counter,
                    generation: 8,
                    hello: 41,
                    nat: true,
                },
            ),
        ]
    }

    #[test]
    fn round_trip_every_type() {
        for (h, clear, msg) in samples() {
            assert_eq!(msg.header(), h);
            let d = msg.seal(&key(1));
            let p = parse(&d).unwrap();
            assert_eq!(p.header, h);
            assert_eq!(p.clear, &clear[..]);
            assert_eq!(p.open(&key(1)).unwrap(), msg);
            assert_eq!(p.open(&key(2)), Err(WireError::AuthFailed));
        }
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        for (_, _, msg) in samples() {
            let d = msg.seal(&key(1));
            for i in 0..d.len() * 8 {
                let mut m = d.clone();
                m[i / 8] ^= 1 << (i % 8);
                let ok =
                    parse(&m).and_then(|p| p.check_mac(&key(1)).and_then(|()| p.open(&key(1))));
                assert!(ok.is_err(), "flip of bit {i} accepted");
            }
        }
    }

    /// Version 1 datagrams (no ratchet shares) are refused before any
    /// cryptography, whatever their length.
    #[test]
    fn other_versions_are_refused() {
        for (_, _, msg) in samples() {
            let mut d = msg.seal(&key(1));
            for v in [0, 1, 3, 255] {
                d[0] = v;
                assert_eq!(parse(&d).err(), Some(WireError::BadVersion));
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        for (_, _, msg) in samples() {
            let d = msg.seal(&key(1));
            for n in 0..d.len() {
                assert!(parse(&d[..n]).is_err(), "truncated to {n}");
            }
        }
    }

    #[test]
    fn sizes_are_as_documented() {
        let sizes: Vec<usize> = samples()
            .into_iter()
            .map(|(_, _, m)| {
                assert_eq!(m.sealed_len(), m.seal(&key(1)).len());
                m.seal(&key(1)).len()
            })
            .collect();
        assert_eq!(sizes, vec![91, 91, 104, 108, 108, 188, 188, 48, 48]);
    }

    #[test]
    fn an_init_may_end_in_a_cookie_and_a_cookie_message_is_48_bytes() {
        let init = Message::Init {
            spi: 7,
            counter: 0,
            nonce: [9; 32],
            timestamp_ms: 1,
            eph_pub: [5; 32],
        };
        let sealed = init.seal(&key(1));
        let plain = parse(&sealed).unwrap();
        assert_eq!(plain.init_cookie(), None);
        let tag = plain.tag().unwrap();
        assert_eq!(&tag[..], &sealed[sealed.len() - TAG_LEN..]);
        let cookied = with_cookie(&sealed, &[3; COOKIE_LEN]);
        assert_eq!(cookied.len(), 120);
        let p = parse(&cookied).unwrap();
        assert_eq!(p.init_cookie(), Some([3; COOKIE_LEN]));
        // The AEAD still covers the init, and only it.
        assert_eq!(p.open(&key(1)).unwrap(), init);
        assert_eq!(p.tag(), Some(tag));
        // Any other length is refused; other types take no cookie.
        assert_eq!(parse(&cookied[..119]).err(), Some(WireError::BadLength));
        let hello = samples()[0].2.seal(&key(1));
        assert_eq!(
            parse(&with_cookie(&hello, &[3; COOKIE_LEN])).err(),
            Some(WireError::BadLength)
        );
        let c = cookie_message(7, &[1; COOKIE_LEN], &tag);
        assert_eq!(c.len(), COOKIE_MSG_LEN);
        assert!(c.len() < sealed.len(), "a cookie message amplifies nothing");
        let p = parse(&c).unwrap();
        assert_eq!(p.header.kind, MsgType::Cookie);
        assert_eq!(p.header.spi, 7);
        assert_eq!(p.cookie(), Some(([1; COOKIE_LEN], tag)));
        assert!(p.open(&key(1)).is_err());
        assert_eq!(parse(&c[..47]).err(), Some(WireError::BadLength));
        let mut flagged = c.clone();
        flagged[3] = 1;
        assert_eq!(parse(&flagged).err(), Some(WireError::BadFlags));
    }

    /// A message whose parts do not match (a clear extension or a flag on a
    /// type that has none) cannot be built as a [`Message`]; on the wire,
    /// such a datagram is refused before any cryptography.
    #[test]
    fn mismatched_parts_are_refused() {
        let hello = Message::Hello {
            spi: 1,
            counter: 0,
            generation: 1,
            rotate: false,
            share: [0; 32],
            source: "192.0.2.1:4820".parse().unwrap(),
        }
        .seal(&key(1));
        // A hello with a 32-byte clear extension spliced in.
        let mut with_clear = hello[..HEADER_LEN].to_vec();
        with_clear.extend_from_slice(&[0; 32]);
        with_clear.extend_from_slice(&hello[HEADER_LEN..]);
        assert_eq!(parse(&with_clear).err(), Some(WireError::BadLength));
        // A hello flagged as an init reply.
        let mut flagged = hello.clone();
        flagged[3] = FLAG_INIT_REPLY as u8;
        assert_eq!(parse(&flagged).err(), Some(WireError::BadFlags));
        // Only the hub's messages carry the NAT verdict.
        flagged[3] = FLAG_NAT as u8;
        assert_eq!(parse(&flagged).err(), Some(WireError::BadFlags));
        // An ack-sized body under a hello header.
        let ack = Message::Ack {
            spi: 1,
            counter: 0,
            generation: 1,
            hello: 0,
            nat: false,
        }
        .seal(&key(1));
        let mut retyped = ack.clone();
        retyped[1] = MsgType::Hello as u8;
        assert_eq!(parse(&retyped).err(), Some(WireError::BadLength));
    }
}
