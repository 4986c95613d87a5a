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
//! [`parse`] checks every length before reading, so no input can make it
//! panic; [`Datagram::open`] authenticates before anything is decoded.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::secret::{ControlKey, Secret32};

/// Protocol version carried in byte 0.
pub const VERSION: u8 = 1;
/// Length of the clear header.
pub const HEADER_LEN: usize = 16;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// `flags` bit of a `key` message that answers an `init`: it carries the hub's
/// nonce and ephemeral public key in clear.
pub const FLAG_INIT_REPLY: u16 = 0x0001;

/// Message type (byte 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// Node -> hub keepalive under the node's send generation.
    Hello = 1,
    /// Node -> hub (re)initialisation request under a PSK-derived key.
    Init = 2,
    /// Hub -> node: a generation's secret.
    Key = 3,
    /// Hub -> node: in sync, nothing to change.
    Ack = 4,
}

impl MsgType {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(MsgType::Hello),
            2 => Some(MsgType::Init),
            3 => Some(MsgType::Key),
            4 => Some(MsgType::Ack),
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

/// The decrypted meaning of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Keepalive: the node's latest generation and whether it asks to rotate.
    Hello {
        /// Node's latest generation.
        generation: u64,
        /// The node asks for a rotation.
        rotate: bool,
    },
    /// Init request: node's wall clock and ephemeral X25519 public key.
    Init {
        /// Milliseconds since the Unix epoch; strictly increasing per node.
        timestamp_ms: u64,
        /// Node's ephemeral public key.
        eph_pub: [u8; 32],
    },
    /// A generation's secret and SPI.
    Key {
        /// Generation number.
        generation: u64,
        /// SPI of the generation.
        spi: u32,
        /// The generation secret.
        secret: Secret32,
    },
    /// Nothing to change; the hub's latest generation for this node.
    Ack {
        /// Hub's latest generation.
        generation: u64,
    },
}

const HELLO_LEN: usize = 9;
const INIT_LEN: usize = 40;
const KEY_LEN: usize = 44;
const ACK_LEN: usize = 8;

fn body_len(kind: MsgType) -> usize {
    match kind {
        MsgType::Hello => HELLO_LEN,
        MsgType::Init => INIT_LEN,
        MsgType::Key => KEY_LEN,
        MsgType::Ack => ACK_LEN,
    }
}

fn clear_len(kind: MsgType, flags: u16) -> Result<usize, WireError> {
    match (kind, flags) {
        (MsgType::Init, 0) => Ok(32),
        (MsgType::Key, FLAG_INIT_REPLY) => Ok(64),
        (_, 0) => Ok(0),
        _ => Err(WireError::BadFlags),
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
    let clear = clear_len(kind, flags)?;
    if buf.len() != HEADER_LEN + clear + body_len(kind) + TAG_LEN {
        return Err(WireError::BadLength);
    }
    let spi = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&buf[8..16]);
    Ok(Datagram {
        header: Header {
            kind,
            flags,
            spi,
            counter: u64::from_be_bytes(c),
        },
        clear: &buf[HEADER_LEN..HEADER_LEN + clear],
        aad: &buf[..HEADER_LEN + clear],
        sealed: &buf[HEADER_LEN + clear..],
    })
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

impl Datagram<'_> {
    /// Authenticates and decrypts with `key`. Nothing is trusted before this.
    pub fn open(&self, key: &ControlKey) -> Result<Body, WireError> {
        let aead = ChaCha20Poly1305::new(Key::from_slice(&key.0));
        let plain = zeroize::Zeroizing::new(
            aead.decrypt(
                Nonce::from_slice(&nonce(self.header.counter)),
                Payload {
                    msg: self.sealed,
                    aad: self.aad,
                },
            )
            .map_err(|_| WireError::AuthFailed)?,
        );
        // parse() fixed the length for the type, so these reads are in bounds.
        let p = &plain[..];
        Ok(match self.header.kind {
            MsgType::Hello => Body::Hello {
                generation: u64_at(p, 0),
                rotate: p[8] & 1 != 0,
            },
            MsgType::Init => {
                let mut eph_pub = [0u8; 32];
                eph_pub.copy_from_slice(&p[8..40]);
                Body::Init {
                    timestamp_ms: u64_at(p, 0),
                    eph_pub,
                }
            }
            MsgType::Key => {
                let mut s = zeroize::Zeroizing::new([0u8; 32]);
                s.copy_from_slice(&p[12..44]);
                Body::Key {
                    generation: u64_at(p, 0),
                    spi: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
                    secret: Secret32::new(*s),
                }
            }
            MsgType::Ack => Body::Ack {
                generation: u64_at(p, 0),
            },
        })
    }
}

/// Encodes and seals one message. `clear` must be the clear extension the
/// type and flags require (checked: returns `None` otherwise).
pub fn seal(key: &ControlKey, header: Header, clear: &[u8], body: &Body) -> Option<Vec<u8>> {
    if clear_len(header.kind, header.flags).ok()? != clear.len() {
        return None;
    }
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(KEY_LEN));
    match (header.kind, body) {
        (MsgType::Hello, Body::Hello { generation, rotate }) => {
            plain.extend_from_slice(&generation.to_be_bytes());
            plain.push(u8::from(*rotate));
        }
        (
            MsgType::Init,
            Body::Init {
                timestamp_ms,
                eph_pub,
            },
        ) => {
            plain.extend_from_slice(&timestamp_ms.to_be_bytes());
            plain.extend_from_slice(eph_pub);
        }
        (
            MsgType::Key,
            Body::Key {
                generation,
                spi,
                secret,
            },
        ) => {
            plain.extend_from_slice(&generation.to_be_bytes());
            plain.extend_from_slice(&spi.to_be_bytes());
            plain.extend_from_slice(secret.expose());
        }
        (MsgType::Ack, Body::Ack { generation }) => {
            plain.extend_from_slice(&generation.to_be_bytes())
        }
        _ => return None,
    }
    let mut out = Vec::with_capacity(HEADER_LEN + clear.len() + plain.len() + TAG_LEN);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(clear);
    let aead = ChaCha20Poly1305::new(Key::from_slice(&key.0));
    let ct = aead
        .encrypt(
            Nonce::from_slice(&nonce(header.counter)),
            Payload {
                msg: &plain,
                aad: &out,
            },
        )
        .ok()?;
    out.extend_from_slice(&ct);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> ControlKey {
        ControlKey([b; 32])
    }

    fn samples() -> Vec<(Header, Vec<u8>, Body)> {
        let h = |kind, flags| Header {
            kind,
            flags,
            spi: 0x1234_5678,
            counter: 42,
        };
        vec![
            (
                h(MsgType::Hello, 0),
                vec![],
                Body::Hello {
                    generation: 7,
                    rotate: true,
                },
            ),
            (
                h(MsgType::Init, 0),
                vec![9; 32],
                Body::Init {
                    timestamp_ms: 1_700_000_000_000,
                    eph_pub: [5; 32],
                },
            ),
            (
                h(MsgType::Key, 0),
                vec![],
                Body::Key {
                    generation: 8,
                    spi: 0xabcd,
                    secret: Secret32::new([6; 32]),
                },
            ),
            (
                h(MsgType::Key, FLAG_INIT_REPLY),
                vec![3; 64],
                Body::Key {
                    generation: 1,
                    spi: 0x999,
                    secret: Secret32::new([7; 32]),
                },
            ),
            (h(MsgType::Ack, 0), vec![], Body::Ack { generation: 8 }),
        ]
    }

    #[test]
    fn round_trip_every_type() {
        for (h, clear, body) in samples() {
            let d = seal(&key(1), h, &clear, &body).unwrap();
            let p = parse(&d).unwrap();
            assert_eq!(p.header, h);
            assert_eq!(p.clear, &clear[..]);
            assert_eq!(p.open(&key(1)).unwrap(), body);
            assert_eq!(p.open(&key(2)), Err(WireError::AuthFailed));
        }
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        for (h, clear, body) in samples() {
            let d = seal(&key(1), h, &clear, &body).unwrap();
            for i in 0..d.len() * 8 {
                let mut m = d.clone();
                m[i / 8] ^= 1 << (i % 8);
                let ok = parse(&m).and_then(|p| p.open(&key(1)));
                assert!(ok.is_err(), "flip of bit {i} accepted");
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        for (h, clear, body) in samples() {
            let d = seal(&key(1), h, &clear, &body).unwrap();
            for n in 0..d.len() {
                assert!(parse(&d[..n]).is_err(), "truncated to {n}");
            }
        }
    }

    #[test]
    fn sizes_are_as_documented() {
        let sizes: Vec<usize> = samples()
            .into_iter()
            .map(|(h, c, b)| seal(&key(1), h, &c, &b).unwrap().len())
            .collect();
        assert_eq!(sizes, vec![41, 104, 76, 140, 40]);
    }

    #[test]
    fn seal_refuses_mismatched_parts() {
        let h = Header {
            kind: MsgType::Hello,
            flags: 0,
            spi: 1,
            counter: 0,
        };
        assert!(
            seal(
                &key(1),
                h,
                &[0; 32],
                &Body::Hello {
                    generation: 1,
                    rotate: false
                }
            )
            .is_none()
        );
        assert!(seal(&key(1), h, &[], &Body::Ack { generation: 1 }).is_none());
    }
}
