//! The NETLINK_XFRM socket: framing of requests, and parsing of the kernel's
//! acknowledgements (including the extended-ACK text, which
//! `netlink-packet-core` does not parse).
//!
//! This module owns the socket options that make batching safe: capped ACKs
//! (the kernel echoes only our header, not the whole request with its key),
//! extended ACKs (error text), large forced send and receive buffers, and a
//! receive timeout so a lost reply can never hang the daemon.

use std::io;

use std::time::Duration;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_xfrm::XfrmMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_XFRM};
use rotor_sys::sockopt;

use crate::error::XfrmError;

/// Size of `struct nlmsghdr`.
pub(crate) const HDR_LEN: usize = 16;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;
/// `NLM_F_ACK_TLVS` on an NLMSG_ERROR: extended-ACK attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLM_F_CAPPED` on an NLMSG_ERROR: only the request's header is echoed.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLMSGERR_ATTR_MSG`: the extended-ACK error string.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Largest datagram the batcher builds; the send buffer is forced above it
/// (the kernel refuses datagrams longer than `sndbuf - 32`).
pub(crate) const MAX_DATAGRAM: usize = 192 * 1024;
const SNDBUF: usize = 1024 * 1024;
/// Receive buffer: room for about 40,000 capped error replies, so even a
/// batch in which every operation fails does not overrun.
const RCVBUF: usize = 32 * 1024 * 1024;

/// One parsed message of a reply datagram.
#[derive(Debug)]
pub(crate) enum Reply<'a> {
    /// An NLMSG_ERROR: `errno` 0 is an ACK.
    Ack {
        seq: u32,
        errno: i32,
        message: Option<String>,
    },
    /// End of a dump.
    Done { seq: u32 },
    /// A data message (dump entry) with its type and payload.
    Data {
        seq: u32,
        kind: u16,
        payload: &'a [u8],
    },
}

/// A NETLINK_XFRM socket bound to an automatic port.
pub(crate) struct XfrmSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// Buffers for [`XfrmSocket::recv_queued`], allocated at its first use.
    batch: Option<Box<rotor_sys::mmsg::RecvBatch>>,
    /// Our netlink port id: written into every request, so the kernel's
    /// notifications of our own changes carry it.
    portid: u32,
}

fn sock_err(context: &'static str) -> impl FnOnce(io::Error) -> XfrmError {
    move |source| XfrmError::Socket { context, source }
}

impl XfrmSocket {
    /// Opens and configures the socket. Needs no privilege; the kernel checks
    /// CAP_NET_ADMIN per request.
    pub(crate) fn open(timeout: Duration) -> Result<Self, XfrmError> {
        let mut sock = Socket::new(NETLINK_XFRM).map_err(sock_err("opening NETLINK_XFRM"))?;
        let local = sock.bind_auto().map_err(sock_err("binding"))?;
        let portid = local.port_number();
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(sock_err("connecting to the kernel"))?;
        sock.set_cap_ack(true)
            .map_err(sock_err("NETLINK_CAP_ACK"))?;
        sock.set_ext_ack(true)
            .map_err(sock_err("NETLINK_EXT_ACK"))?;
        // The FORCE variants need CAP_NET_ADMIN; these fall back to the capped ones.
        sockopt::set_send_buffer(&sock, SNDBUF).map_err(sock_err("SO_SNDBUF"))?;
        sockopt::set_recv_buffer(&sock, RCVBUF).map_err(sock_err("SO_RCVBUF"))?;
        sockopt::set_recv_timeout(&sock, timeout).map_err(sock_err("SO_RCVTIMEO"))?;
        Ok(XfrmSocket {
            sock,
            seq: 1,
            buf: Vec::with_capacity(256 * 1024),
            batch: None,
            portid,
        })
    }

    /// Our netlink port id.
    pub(crate) fn portid(&self) -> u32 {
        self.portid
    }

    /// Writes `pid` as the sender port id of the request whose header starts
    /// at `at`.
    pub(crate) fn set_pid(out: &mut [u8], at: usize, pid: u32) {
        out[at + 12..at + 16].copy_from_slice(&pid.to_ne_bytes());
    }

    /// Next request sequence number (never 0, which the kernel uses for
    /// notifications).
    pub(crate) fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1).max(1);
        s
    }

    /// Appends one request to `out` at a 4-byte aligned offset and returns the
    /// offset of its header. `ack` sets NLM_F_ACK, `dump` sets NLM_F_DUMP.
    pub(crate) fn frame(
        out: &mut Vec<u8>,
        msg: &XfrmMessage,
        seq: u32,
        ack: bool,
        dump: bool,
    ) -> usize {
        use netlink_packet_core::NetlinkSerializable;
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        let start = out.len();
        let len = HDR_LEN + msg.buffer_len();
        let mut flags = NLM_F_REQUEST;
        if ack {
            flags |= NLM_F_ACK;
        }
        if dump {
            flags |= NLM_F_DUMP;
        }
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&msg.message_type().to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.resize(start + len, 0);
        msg.serialize(&mut out[start + HDR_LEN..start + len]);
        start
    }

    /// Sets NLM_F_ACK on the request whose header starts at `at`.
    pub(crate) fn set_ack(out: &mut [u8], at: usize) {
        let f = u16::from_ne_bytes([out[at + 6], out[at + 7]]) | NLM_F_ACK;
        out[at + 6..at + 8].copy_from_slice(&f.to_ne_bytes());
    }

    /// Sends one datagram (the kernel processes all of it before returning).
    pub(crate) fn send(&self, datagram: &[u8], context: &str) -> Result<(), XfrmError> {
        let n = self
            .sock
            .send(datagram, 0)
            .map_err(|source| XfrmError::Io {
                context: context.to_string(),
                source,
            })?;
        if n != datagram.len() {
            return Err(XfrmError::Io {
                context: context.to_string(),
                source: io::Error::other(format!("short netlink send: {n} of {}", datagram.len())),
            });
        }
        Ok(())
    }

    /// Receives one datagram and hands each message in it to `f`. Returns
    /// `Err(Overrun)` when the kernel reports ENOBUFS (replies were lost).
    /// `f` returning `false` does not stop parsing the rest of the datagram.
    pub(crate) fn recv_each(
        &mut self,
        context: &str,
        mut f: impl FnMut(Reply<'_>),
    ) -> Result<(), XfrmError> {
        self.buf.clear();
        if self.buf.capacity() < 64 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        // Peek for the size so a large dump datagram is never truncated.
        let mut empty: Vec<u8> = Vec::new();
        let peek = self.sock.recv(&mut empty, libc::MSG_PEEK | libc::MSG_TRUNC);
        let want = match peek {
            Ok(n) => n,
            Err(e) => return Err(self.map_recv_err(e, context)),
        };
        self.buf.reserve(want);
        let n = match self.sock.recv(&mut self.buf, 0) {
            Ok(n) => n,
            Err(e) => return Err(self.map_recv_err(e, context)),
        };
        let data = &self.buf[..n.min(self.buf.len())];
        replies(data, context, &mut f)
    }

    /// Receives, without waiting, every datagram queued now, up to
    /// [`rotor_sys::mmsg::BATCH`] per system call, and hands each message
    /// to `f`; a datagram longer than [`rotor_sys::mmsg::DATAGRAM_MAX`]
    /// arrives cut and only its first message's sequence number is handed
    /// to `cut`. Returns how many datagrams it read: 0 when none was
    /// queued. For the answers to requests that are all answered while
    /// [`XfrmSocket::send`] runs (a batch of `GETSA`): one system call
    /// instead of two per answer.
    pub(crate) fn recv_queued(
        &mut self,
        context: &str,
        mut f: impl FnMut(Reply<'_>),
        mut cut: impl FnMut(u32),
    ) -> Result<usize, XfrmError> {
        let batch = self.batch.get_or_insert_with(Default::default);
        let mut total = 0;
        loop {
            let n = match rotor_sys::mmsg::recv(&self.sock, batch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) => {
                    return Err(match e.raw_os_error() {
                        Some(libc::ENOBUFS) => XfrmError::Overrun(context.to_string()),
                        _ => XfrmError::Io {
                            context: context.to_string(),
                            source: e,
                        },
                    });
                }
            };
            for i in 0..n {
                let Some(d) = batch.get(i) else { continue };
                if batch.truncated(i) {
                    if let Some(seq) = d.data.get(8..12) {
                        cut(u32::from_ne_bytes([seq[0], seq[1], seq[2], seq[3]]));
                    }
                } else {
                    replies(d.data, context, &mut f)?;
                }
            }
            total += n;
            if n < rotor_sys::mmsg::BATCH {
                return Ok(total);
            }
        }
    }

    fn map_recv_err(&self, e: io::Error, context: &str) -> XfrmError {
        match e.raw_os_error() {
            Some(libc::ENOBUFS) => XfrmError::Overrun(context.to_string()),
            Some(libc::EAGAIN) => XfrmError::Timeout(0, context.to_string()),
            _ => XfrmError::Io {
                context: context.to_string(),
                source: e,
            },
        }
    }

    /// Overwrites the receive buffer (dumps of SAs carry their keys).
    pub(crate) fn wipe_rx(&mut self) {
        use zeroize::Zeroize;
        self.buf.zeroize();
        if let Some(b) = self.batch.as_mut() {
            b.wipe();
        }
    }
}

/// Hands each message of one received datagram to `f`.
fn replies(data: &[u8], context: &str, f: &mut impl FnMut(Reply<'_>)) -> Result<(), XfrmError> {
    let mut off = 0;
    while off + HDR_LEN <= data.len() {
        let len =
            u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]) as usize;
        if len < HDR_LEN || off + len > data.len() {
            return Err(XfrmError::Malformed {
                context: context.to_string(),
                detail: format!(
                    "netlink message length {len} at offset {off} of {}",
                    data.len()
                ),
            });
        }
        let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
        let flags = u16::from_ne_bytes([data[off + 6], data[off + 7]]);
        let seq =
            u32::from_ne_bytes([data[off + 8], data[off + 9], data[off + 10], data[off + 11]]);
        let payload = &data[off + HDR_LEN..off + len];
        match kind {
            NLMSG_ERROR => {
                let (errno, message) =
                    parse_error(payload, flags).ok_or_else(|| XfrmError::Malformed {
                        context: context.to_string(),
                        detail: "short NLMSG_ERROR".to_string(),
                    })?;
                f(Reply::Ack {
                    seq,
                    errno,
                    message,
                });
            }
            NLMSG_DONE => f(Reply::Done { seq }),
            NLMSG_OVERRUN => return Err(XfrmError::Overrun(context.to_string())),
            _ => f(Reply::Data { seq, kind, payload }),
        }
        off += (len + 3) & !3;
    }
    Ok(())
}

/// Parses an NLMSG_ERROR payload: `int error`, the echoed request (header only
/// when capped), then extended-ACK TLVs. Returns the positive errno (0 = ACK)
/// and the kernel's message.
pub(crate) fn parse_error(payload: &[u8], flags: u16) -> Option<(i32, Option<String>)> {
    let raw = i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?);
    let errno = raw.checked_neg().unwrap_or(i32::MAX);
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let echoed = if flags & NLM_F_CAPPED != 0 {
            HDR_LEN
        } else {
            let l = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?) as usize;
            (l + 3) & !3
        };
        let mut tlvs = payload.get(4 + echoed..).unwrap_or(&[]);
        while tlvs.len() >= 4 {
            let l = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
            let t = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
            if l < 4 || l > tlvs.len() {
                break;
            }
            if t == NLMSGERR_ATTR_MSG {
                let v = &tlvs[4..l];
                let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
                message = Some(String::from_utf8_lossy(&v[..end]).into_owned());
            }
            tlvs = tlvs.get((l + 3) & !3..).unwrap_or(&[]);
        }
    }
    Some((errno, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_capped_error_with_ext_ack_text() {
        // Shape of the reply seen from `ip xfrm state add` on a kernel without
        // AES-GCM: error -ENOSYS, the capped request header, NLMSGERR_ATTR_MSG.
        let mut p = (-libc::ENOSYS).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; 16]);
        p.extend(nla(
            NLMSGERR_ATTR_MSG,
            b"Requested AEAD algorithm not found\0",
        ));
        let (errno, msg) = parse_error(&p, NLM_F_ACK_TLVS | NLM_F_CAPPED).unwrap();
        assert_eq!(errno, libc::ENOSYS);
        assert_eq!(msg.as_deref(), Some("Requested AEAD algorithm not found"));
    }

    #[test]
    fn parses_plain_ack_and_rejects_short() {
        let p = 0i32.to_ne_bytes();
        assert_eq!(parse_error(&p, 0), Some((0, None)));
        assert_eq!(parse_error(&[1, 2], 0), None);
    }

    #[test]
    fn truncated_tlvs_do_not_panic() {
        let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; 16]);
        p.extend_from_slice(&[200, 0, 1, 0, b'x']);
        let (errno, msg) = parse_error(&p, NLM_F_ACK_TLVS | NLM_F_CAPPED).unwrap();
        assert_eq!(errno, libc::EINVAL);
        assert_eq!(msg, None);
    }
}
