//! Many UDP datagrams per system call: `recvmmsg(2)` and `sendmmsg(2)` on a
//! non-blocking socket.
//!
//! A hub rotating thousands of nodes receives a burst of hellos and sends a
//! burst of keys; inside User-Mode Linux every system call is expensive, and
//! one per datagram dominated the hub's CPU (docs/performance.md). The load
//! generator moves the other side of the same traffic the same way.
//!
//! Socket addresses and control messages are encoded and decoded as bytes in
//! the kernel's layout (checked against `libc`'s structs at compile time), so
//! the only `unsafe` here is the two system calls and the all-zero headers
//! handed to them.

use std::io;
use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

/// Largest datagram received whole; longer ones arrive truncated to this.
/// rotor's control datagrams are under 200 bytes.
pub const DATAGRAM_MAX: usize = 2048;

/// Datagrams per system call.
pub const BATCH: usize = 64;

/// Room for one socket address (`sockaddr_in6` is the larger of the two).
const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();

/// Room for the control messages of one datagram: one `IP_PKTINFO` or
/// `IPV6_PKTINFO` needs 32 or 40 bytes on 64-bit Linux; the rest is slack for
/// a message the kernel adds unasked (it then sets `MSG_CTRUNC` rather than
/// overrun).
const CONTROL_LEN: usize = 64;

/// A socket address buffer, aligned as `sockaddr_in6` needs.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Name([u8; NAME_LEN]);

/// A control-message buffer, aligned as `cmsghdr` needs.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

// The kernel's `struct cmsghdr`: a `size_t` length, then level and type.
const WORD: usize = size_of::<usize>();
const CMSG_HDR: usize = WORD + 8;
const fn cmsg_align(n: usize) -> usize {
    (n + WORD - 1) & !(WORD - 1)
}
/// Where a control message's data starts (`CMSG_DATA`).
const CMSG_DATA_AT: usize = cmsg_align(CMSG_HDR);
const PKTINFO_LEN: usize = size_of::<libc::in_pktinfo>();
const PKTINFO6_LEN: usize = size_of::<libc::in6_pktinfo>();

// The byte layouts below are the kernel's; these fail the build if `libc`
// (which mirrors the kernel's headers) disagrees.
const _: () = {
    assert!(size_of::<libc::cmsghdr>() == CMSG_HDR);
    assert!(offset_of!(libc::cmsghdr, cmsg_level) == WORD);
    assert!(offset_of!(libc::cmsghdr, cmsg_type) == WORD + 4);
    assert!(size_of::<libc::sockaddr_in>() == 16);
    assert!(offset_of!(libc::sockaddr_in, sin_port) == 2);
    assert!(offset_of!(libc::sockaddr_in, sin_addr) == 4);
    assert!(NAME_LEN == 28);
    assert!(offset_of!(libc::sockaddr_in6, sin6_port) == 2);
    assert!(offset_of!(libc::sockaddr_in6, sin6_flowinfo) == 4);
    assert!(offset_of!(libc::sockaddr_in6, sin6_addr) == 8);
    assert!(offset_of!(libc::sockaddr_in6, sin6_scope_id) == 24);
    assert!(PKTINFO_LEN == 12);
    assert!(offset_of!(libc::in_pktinfo, ipi_spec_dst) == 4);
    assert!(offset_of!(libc::in_pktinfo, ipi_addr) == 8);
    assert!(PKTINFO6_LEN == 20);
    assert!(offset_of!(libc::in6_pktinfo, ipi6_addr) == 0);
    assert!(CMSG_DATA_AT + cmsg_align(PKTINFO6_LEN) <= CONTROL_LEN);
};

/// `N` bytes of `b` from `at`, if there are that many.
fn bytes<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Writes `a` in the kernel's layout; returns its length.
fn encode_name(a: &SocketAddr, name: &mut Name) -> libc::socklen_t {
    let b = &mut name.0;
    b.fill(0);
    match a {
        SocketAddr::V4(v4) => {
            b[..2].copy_from_slice(&(libc::AF_INET as libc::sa_family_t).to_ne_bytes());
            b[2..4].copy_from_slice(&v4.port().to_be_bytes());
            b[4..8].copy_from_slice(&v4.ip().octets());
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            b[..2].copy_from_slice(&(libc::AF_INET6 as libc::sa_family_t).to_ne_bytes());
            b[2..4].copy_from_slice(&v6.port().to_be_bytes());
            // std keeps flow info and scope id in host order, as the kernel's
            // struct does.
            b[4..8].copy_from_slice(&v6.flowinfo().to_ne_bytes());
            b[8..24].copy_from_slice(&v6.ip().octets());
            b[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
            NAME_LEN as libc::socklen_t
        }
    }
}

/// Reads the first `len` bytes of `b` as a whole `sockaddr_in` or
/// `sockaddr_in6`.
fn decode_name(b: &[u8], len: usize) -> Option<SocketAddr> {
    let b = b.get(..len)?;
    let family = libc::sa_family_t::from_ne_bytes(bytes(b, 0)?);
    let port = u16::from_be_bytes(bytes(b, 2)?);
    match i32::from(family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => Some(SocketAddr::V4(
            SocketAddrV4::new(Ipv4Addr::from(bytes::<4>(b, 4)?), port),
        )),
        libc::AF_INET6 if len >= NAME_LEN => Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(bytes::<16>(b, 8)?),
            port,
            u32::from_ne_bytes(bytes(b, 4)?),
            u32::from_ne_bytes(bytes(b, 24)?),
        ))),
        _ => None,
    }
}

/// Writes one `IP_PKTINFO` (or `IPV6_PKTINFO`) control message asking the
/// kernel to send from `src`; returns the control length (`CMSG_SPACE`).
fn encode_pktinfo(src: IpAddr, control: &mut Control) -> usize {
    let b = &mut control.0;
    b.fill(0);
    let (level, kind, data_len) = match src {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, PKTINFO_LEN),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, PKTINFO6_LEN),
    };
    b[..WORD].copy_from_slice(&(CMSG_DATA_AT + data_len).to_ne_bytes());
    b[WORD..WORD + 4].copy_from_slice(&level.to_ne_bytes());
    b[WORD + 4..WORD + 8].copy_from_slice(&kind.to_ne_bytes());
    let data = &mut b[CMSG_DATA_AT..];
    match src {
        // in_pktinfo: interface 0, ipi_spec_dst = the source to use.
        IpAddr::V4(a) => data[4..8].copy_from_slice(&a.octets()),
        // in6_pktinfo: ipi6_addr = the source to use, interface 0.
        IpAddr::V6(a) => data[..16].copy_from_slice(&a.octets()),
    }
    CMSG_DATA_AT + cmsg_align(data_len)
}

/// The local address an `IP_PKTINFO`/`IPV6_PKTINFO` control message in
/// `control` (the part the kernel filled) says the datagram was sent to.
fn decode_pktinfo(control: &[u8]) -> Option<IpAddr> {
    let mut at = 0;
    while at + CMSG_HDR <= control.len() {
        let len = usize::from_ne_bytes(bytes(control, at)?);
        let level = i32::from_ne_bytes(bytes(control, at + WORD)?);
        let kind = i32::from_ne_bytes(bytes(control, at + WORD + 4)?);
        let data = control.get(at + CMSG_DATA_AT..at.checked_add(len)?)?;
        match (level, kind) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                return Some(IpAddr::V4(Ipv4Addr::from(bytes::<4>(data, 8)?)));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                return Some(IpAddr::V6(Ipv6Addr::from(bytes::<16>(data, 0)?)));
            }
            _ => {}
        }
        at = at.checked_add(cmsg_align(len.max(CMSG_HDR)))?;
    }
    None
}

/// `BATCH` empty message headers (null pointers, zero lengths).
fn empty_headers() -> [libc::mmsghdr; BATCH] {
    // SAFETY: mmsghdr is plain old data (integers and raw pointers, plus
    // private padding on some libcs): all-zero bytes are a valid value, the
    // empty header.
    unsafe { std::mem::zeroed() }
}

const EMPTY_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

/// What one received datagram says about itself.
#[derive(Clone, Copy, Default)]
struct Meta {
    len: usize,
    name_len: usize,
    control_len: usize,
    /// The kernel cut the datagram at `DATAGRAM_MAX` (`MSG_TRUNC`).
    truncated: bool,
}

/// Buffers for one [`recv`]: up to [`BATCH`] datagrams and, if asked for,
/// their addresses. Holds no pointers between calls, so it can move freely
/// (and across threads).
pub struct RecvBatch {
    bufs: Vec<[u8; DATAGRAM_MAX]>,
    names: Vec<Name>,
    controls: Vec<Control>,
    meta: Vec<Meta>,
    count: usize,
    /// Buffers written since the last [`RecvBatch::wipe`].
    used: usize,
}

impl Default for RecvBatch {
    /// Payloads only: the kernel copies no addresses.
    fn default() -> Self {
        RecvBatch {
            bufs: vec![[0u8; DATAGRAM_MAX]; BATCH],
            names: Vec::new(),
            controls: Vec::new(),
            meta: vec![Meta::default(); BATCH],
            count: 0,
            used: 0,
        }
    }
}

/// One received datagram.
#[derive(Clone, Copy, Debug)]
pub struct Received<'a> {
    /// Its bytes (truncated to [`DATAGRAM_MAX`]).
    pub data: &'a [u8],
    /// Who sent it (`None` for a payload-only batch).
    pub from: Option<SocketAddr>,
    /// The local address it was sent to: `None` for a payload-only batch, or
    /// if the socket did not ask for `IP_PKTINFO`/`IPV6_RECVPKTINFO`
    /// ([`crate::sockopt::set_pktinfo`]).
    pub to: Option<IpAddr>,
}

impl RecvBatch {
    /// Buffers that receive payloads only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers that also receive each datagram's source address and its
    /// `IP_PKTINFO`/`IPV6_PKTINFO` control message.
    pub fn with_addresses() -> Self {
        RecvBatch {
            names: vec![Name([0; NAME_LEN]); BATCH],
            controls: vec![Control([0; CONTROL_LEN]); BATCH],
            ..Self::default()
        }
    }

    /// Forgets the last receive's datagrams.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Overwrites with zeros every buffer written since the last wipe (for
    /// datagrams that carried secrets, such as the kernel's answers about
    /// SAs), and forgets the datagrams.
    pub fn wipe(&mut self) {
        for b in self.bufs.iter_mut().take(self.used) {
            b.fill(0);
        }
        self.used = 0;
        self.count = 0;
    }

    /// Whether the `i`-th datagram of the last receive was longer than
    /// [`DATAGRAM_MAX`] and arrived cut.
    pub fn truncated(&self, i: usize) -> bool {
        i < self.count && self.meta.get(i).is_some_and(|m| m.truncated)
    }

    /// Number of datagrams the last receive got.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The datagrams the last receive got, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .zip(&self.meta)
            .take(self.count)
            .map(|(b, m)| &b[..m.len])
    }

    /// The `i`-th datagram of the last receive, with its addresses.
    pub fn get(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.count {
            return None;
        }
        let m = self.meta.get(i)?;
        let data = self.bufs.get(i)?.get(..m.len)?;
        let from = self
            .names
            .get(i)
            .and_then(|n| decode_name(&n.0, m.name_len));
        let to = self
            .controls
            .get(i)
            .and_then(|c| c.0.get(..m.control_len))
            .and_then(decode_pktinfo);
        Some(Received { data, from, to })
    }
}

/// Receives up to [`BATCH`] datagrams from `sock` in one `recvmmsg(2)`
/// without blocking. Returns how many arrived (>= 1); when none is queued,
/// the error is `WouldBlock`, as a readiness-driven caller (tokio's
/// `try_io`) needs it. The batch then holds nothing.
pub fn recv(sock: impl AsFd, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.count = 0;
    let addresses = !batch.names.is_empty();
    let mut iovs = [EMPTY_IOV; BATCH];
    let mut hdrs = empty_headers();
    for (h, (iov, buf)) in hdrs
        .iter_mut()
        .zip(iovs.iter_mut().zip(batch.bufs.iter_mut()))
    {
        *iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: DATAGRAM_MAX,
        };
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    if addresses {
        for (h, (name, control)) in hdrs
            .iter_mut()
            .zip(batch.names.iter_mut().zip(batch.controls.iter_mut()))
        {
            h.msg_hdr.msg_name = name.0.as_mut_ptr().cast();
            h.msg_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
            h.msg_hdr.msg_control = control.0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CONTROL_LEN as _;
        }
    }
    // SAFETY: each of the BATCH headers points at one iovec over a distinct
    // DATAGRAM_MAX-byte buffer of `batch.bufs` and, with addresses, at a
    // distinct NAME_LEN-byte name and CONTROL_LEN-byte control buffer of
    // `batch` (exactly BATCH of each were allocated); the kernel writes at
    // most the lengths given. `hdrs`, `iovs` and `batch` outlive the call,
    // and nothing else touches them during it.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_fd().as_raw_fd(),
            hdrs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (n as usize).min(BATCH);
    for (m, h) in batch.meta.iter_mut().zip(&hdrs).take(n) {
        *m = Meta {
            len: (h.msg_len as usize).min(DATAGRAM_MAX),
            name_len: if addresses {
                (h.msg_hdr.msg_namelen as usize).min(NAME_LEN)
            } else {
                0
            },
            // size_t with glibc, socklen_t with musl.
            #[allow(clippy::unnecessary_cast)]
            control_len: if addresses {
                (h.msg_hdr.msg_controllen as usize).min(CONTROL_LEN)
            } else {
                0
            },
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    batch.count = n;
    batch.used = batch.used.max(n);
    Ok(n)
}

/// A datagram for [`send`].
pub trait Outgoing {
    /// Where it goes.
    fn to(&self) -> SocketAddr;
    /// The local address to send it from (`IP_PKTINFO`/`IPV6_PKTINFO`), or
    /// `None` for the kernel's choice.
    fn from(&self) -> Option<IpAddr> {
        None
    }
    /// Its bytes.
    fn data(&self) -> &[u8];
}

impl Outgoing for (SocketAddr, &[u8]) {
    fn to(&self) -> SocketAddr {
        self.0
    }
    fn data(&self) -> &[u8] {
        self.1
    }
}

/// Sends the first [`BATCH`] (at most) of `msgs` from `sock` in one
/// `sendmmsg(2)` without blocking. Returns how many the kernel took, from the
/// front (>= 1). If the first one cannot go, the error says why: `WouldBlock`
/// when the send buffer is full, or what the kernel refused it for (e.g. no
/// route to its address); the ones after it were not tried. `Ok(0)` only for
/// an empty `msgs`.
pub fn send<M: Outgoing>(sock: impl AsFd, msgs: &[M]) -> io::Result<usize> {
    let msgs = &msgs[..msgs.len().min(BATCH)];
    if msgs.is_empty() {
        return Ok(0);
    }
    let mut names = [Name([0; NAME_LEN]); BATCH];
    let mut controls = [Control([0; CONTROL_LEN]); BATCH];
    let mut iovs = [EMPTY_IOV; BATCH];
    let mut hdrs = empty_headers();
    for ((m, h), (iov, (name, control))) in msgs.iter().zip(hdrs.iter_mut()).zip(
        iovs.iter_mut()
            .zip(names.iter_mut().zip(controls.iter_mut())),
    ) {
        let data = m.data();
        *iov = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        h.msg_hdr.msg_namelen = encode_name(&m.to(), name);
        h.msg_hdr.msg_name = name.0.as_mut_ptr().cast();
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        if let Some(src) = m.from() {
            h.msg_hdr.msg_controllen = encode_pktinfo(src, control) as _;
            h.msg_hdr.msg_control = control.0.as_mut_ptr().cast();
        }
    }
    // SAFETY: the first msgs.len() headers each point at a distinct name and
    // (if set) control buffer of their stated lengths, and at one iovec over a
    // datagram the caller's `msgs` borrow keeps alive; sendmmsg only reads
    // through them (the iovec's mutable pointer is never written through).
    // Everything outlives the call.
    let n = unsafe {
        libc::sendmmsg(
            sock.as_fd().as_raw_fd(),
            hdrs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn layouts_match_the_c_macros() {
        // SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic.
        let (len, space, space6) = unsafe {
            (
                libc::CMSG_LEN(PKTINFO_LEN as u32) as usize,
                libc::CMSG_SPACE(PKTINFO_LEN as u32) as usize,
                libc::CMSG_SPACE(PKTINFO6_LEN as u32) as usize,
            )
        };
        assert_eq!(len, CMSG_DATA_AT + PKTINFO_LEN);
        let mut c = Control([0; CONTROL_LEN]);
        assert_eq!(encode_pktinfo(Ipv4Addr::LOCALHOST.into(), &mut c), space);
        assert_eq!(encode_pktinfo(Ipv6Addr::LOCALHOST.into(), &mut c), space6);
    }

    #[test]
    fn names_round_trip() {
        let mut n = Name([0; NAME_LEN]);
        for a in [
            "192.0.2.7:4500".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("2001:db8::9".parse().unwrap(), 500, 7, 3)),
        ] {
            let len = encode_name(&a, &mut n) as usize;
            assert_eq!(decode_name(&n.0, len), Some(a));
            assert_eq!(decode_name(&n.0, len - 1), None, "short");
        }
        assert_eq!(decode_name(&[0; NAME_LEN], NAME_LEN), None, "AF_UNSPEC");
    }

    #[test]
    fn a_long_datagram_is_marked_cut_and_wipe_zeroes_what_arrived() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        tx.send_to(&[0xab; DATAGRAM_MAX + 100], to).unwrap();
        tx.send_to(&[0xcd; 40], to).unwrap();
        let mut b = RecvBatch::new();
        let mut got = 0;
        for _ in 0..100 {
            got += recv(&rx, &mut b).unwrap_or(0);
            if got == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!((got, b.len()), (2, 2), "both datagrams in one call");
        assert!(b.truncated(0) && !b.truncated(1) && !b.truncated(2));
        assert_eq!(b.get(0).unwrap().data.len(), DATAGRAM_MAX);
        assert_eq!(b.get(1).unwrap().data, &[0xcd; 40][..]);
        b.wipe();
        assert!(b.is_empty());
        assert!(b.bufs.iter().take(2).all(|d| d.iter().all(|&x| x == 0)));
    }

    #[test]
    fn a_truncated_or_foreign_control_message_yields_nothing() {
        let mut c = Control([0; CONTROL_LEN]);
        let len = encode_pktinfo(Ipv4Addr::LOCALHOST.into(), &mut c);
        assert_eq!(decode_pktinfo(&c.0[..len - 8]), None, "data cut off");
        c.0[WORD + 4] = 99; // another type at the same level
        assert_eq!(decode_pktinfo(&c.0[..len]), None);
        // A zero length must not loop forever.
        assert_eq!(decode_pktinfo(&[0; CONTROL_LEN]), None);
    }

    #[test]
    fn addresses_come_back_with_the_datagrams() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        crate::sockopt::set_pktinfo(&b, true).unwrap();
        let to = b.local_addr().unwrap();
        struct Msg(SocketAddr, Vec<u8>);
        impl Outgoing for Msg {
            fn to(&self) -> SocketAddr {
                self.0
            }
            fn from(&self) -> Option<IpAddr> {
                Some(Ipv4Addr::LOCALHOST.into())
            }
            fn data(&self) -> &[u8] {
                &self.1
            }
        }
        let msgs: Vec<Msg> = (0..3u8).map(|i| Msg(to, vec![i; 10])).collect();
        assert_eq!(send(&a, &msgs).unwrap(), 3);
        let mut batch = RecvBatch::with_addresses();
        let mut got = 0;
        while got < 3 {
            match recv(&b, &mut batch) {
                Ok(n) => {
                    for i in 0..n {
                        let r = batch.get(i).unwrap();
                        assert_eq!(r.data, &[got as u8; 10][..]);
                        assert_eq!(r.from, Some(a.local_addr().unwrap()));
                        assert_eq!(r.to, Some(Ipv4Addr::LOCALHOST.into()));
                        got += 1;
                    }
                    assert!(batch.get(n).is_none());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        let e = recv(&b, &mut batch).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(batch.is_empty());
    }

    #[test]
    fn a_payload_only_batch_has_no_addresses() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let msgs = [(b.local_addr().unwrap(), &b"hi"[..])];
        assert_eq!(send(&a, &msgs).unwrap(), 1);
        let mut batch = RecvBatch::new();
        // A blocking socket, but recv does not wait: let the datagram arrive.
        let mut peek = [0u8; 4];
        b.peek(&mut peek).unwrap();
        assert_eq!(recv(&b, &mut batch).unwrap(), 1);
        let r = batch.get(0).unwrap();
        assert_eq!((r.data, r.from, r.to), (&b"hi"[..], None, None));
        assert_eq!(send(&a, &[] as &[(SocketAddr, &[u8])]).unwrap(), 0);
    }
}
