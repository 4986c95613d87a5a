//! One UDP socket for many node addresses.
//!
//! The socket is bound to the wildcard address on the control port, so it
//! receives what the hub sends to any of the nodes' addresses; `IP_PKTINFO`
//! tells which address a datagram was sent to (the node it is for), and a
//! `IP_PKTINFO` control message on each sent datagram picks the node's address
//! as the source. Datagrams move in batches (`recvmmsg`/`sendmmsg`): inside
//! User-Mode Linux every system call is expensive, and the load generator
//! shares the CPU with the hub it measures.
//!
//! Like the daemon's control socket, it is exempt from IPsec policies, so the
//! load generator's own SAs (`--kernel`) never capture its control traffic.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use rotor_xfrm::{Family, bypass_ipsec};

/// Largest control datagram accepted (rotor's are under 200 bytes).
pub const MAX_DATAGRAM: usize = 2048;

/// Datagrams moved per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;

/// Room for one `IP_PKTINFO` control message (`CMSG_SPACE(sizeof(in_pktinfo))`).
const CMSG_ROOM: usize = 64;

/// A received datagram's addresses and length (the bytes are in the batch).
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Who sent it.
    pub from: SocketAddrV4,
    /// The address it was sent to (`None` if the kernel gave no `IP_PKTINFO`).
    pub to: Option<Ipv4Addr>,
    /// Its length (longer datagrams are truncated to [`MAX_DATAGRAM`]).
    pub len: usize,
}

/// Receive buffers for one `recvmmsg` call.
pub struct RecvBatch {
    bufs: Vec<[u8; MAX_DATAGRAM]>,
    names: Vec<libc::sockaddr_in>,
    cmsgs: Vec<[u64; CMSG_ROOM / 8]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    got: Vec<Received>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Buffers for [`BATCH`] datagrams.
    pub fn new() -> Self {
        RecvBatch {
            bufs: vec![[0u8; MAX_DATAGRAM]; BATCH],
            // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
            names: vec![unsafe { zeroed() }; BATCH],
            cmsgs: vec![[0u64; CMSG_ROOM / 8]; BATCH],
            // SAFETY: as above, for iovec and mmsghdr (null pointers, zero lengths).
            iovs: vec![unsafe { zeroed() }; BATCH],
            hdrs: vec![unsafe { zeroed() }; BATCH],
            got: Vec::with_capacity(BATCH),
        }
    }

    /// The `i`-th datagram of the last receive, with its bytes.
    pub fn get(&self, i: usize) -> Option<(Received, &[u8])> {
        let r = *self.got.get(i)?;
        let data = self.bufs.get(i)?.get(..r.len.min(MAX_DATAGRAM))?;
        Some((r, data))
    }

    /// Number of datagrams of the last receive.
    pub fn len(&self) -> usize {
        self.got.len()
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.got.is_empty()
    }
}

/// One datagram to send: from a node's address to the hub.
pub struct Outgoing {
    /// Source address (the node's).
    pub from: Ipv4Addr,
    /// Destination.
    pub to: SocketAddrV4,
    /// The datagram.
    pub data: Vec<u8>,
}

/// The wildcard-bound UDP socket.
pub struct MultiSocket {
    fd: OwnedFd,
    /// Receive buffer the kernel granted (bytes, as `SO_RCVBUF` reports it).
    pub rcvbuf: usize,
    /// Send buffer the kernel granted.
    pub sndbuf: usize,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn set_int(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads size_of::<c_int>() bytes from a valid pointer.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

fn get_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut v: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes to a valid, aligned i32.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) })?;
    Ok(v)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: plain old data; all-zero is valid.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

impl MultiSocket {
    /// Binds `0.0.0.0:port` with `IP_PKTINFO`, the IPsec bypass, and buffers
    /// of `rcvbuf`/`sndbuf` bytes (forced past `rmem_max` when privileged).
    pub fn bind(port: u16, rcvbuf: usize, sndbuf: usize) -> io::Result<Self> {
        // SAFETY: socket() has no memory preconditions; the fd is owned below.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_int(raw, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        let clamp = |v: usize| i32::try_from(v).unwrap_or(i32::MAX / 2);
        for (force, plain, size) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, clamp(rcvbuf)),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, clamp(sndbuf)),
        ] {
            if set_int(raw, libc::SOL_SOCKET, force, size).is_err() {
                set_int(raw, libc::SOL_SOCKET, plain, size)?;
            }
        }
        bypass_ipsec(&fd, Family::V4)?;
        let addr = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        // SAFETY: bind reads a valid sockaddr_in of the given length.
        cvt(unsafe {
            libc::bind(
                raw,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        })?;
        let rcv = get_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        let snd = get_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
        Ok(MultiSocket {
            fd,
            rcvbuf: usize::try_from(rcv).unwrap_or(0),
            sndbuf: usize::try_from(snd).unwrap_or(0),
        })
    }

    /// Receives up to [`BATCH`] datagrams without blocking; 0 when none is
    /// waiting.
    pub fn recv_batch(&self, b: &mut RecvBatch) -> io::Result<usize> {
        b.got.clear();
        for i in 0..BATCH {
            b.iovs[i] = libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            // SAFETY: plain old data; all-zero is valid.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut b.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = b.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_ROOM as _;
            b.hdrs[i] = libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            };
        }
        // SAFETY: every header points into buffers owned by `b`, which outlive
        // the call; the kernel writes at most the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                b.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            let h = &b.hdrs[i];
            let name = &b.names[i];
            let from = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
                u16::from_be(name.sin_port),
            );
            let mut to = None;
            // SAFETY: the header and its control buffer are valid and were
            // filled by the kernel; CMSG_* walk within msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                        let info: libc::in_pktinfo =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        to = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            b.got.push(Received {
                from,
                to,
                len: h.msg_len as usize,
            });
        }
        Ok(n)
    }

    /// Sends as many of `out` as the socket takes without blocking, each from
    /// its node's address; returns how many left (from the front).
    /// `WouldBlock` comes back as `Ok(0)`.
    pub fn send_batch(&self, out: &[Outgoing]) -> io::Result<usize> {
        let n = out.len().min(BATCH);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: plain old data; all-zero is valid.
        let mut names: Vec<libc::sockaddr_in> = Vec::with_capacity(n);
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(n);
        let mut cmsgs: Vec<[u64; CMSG_ROOM / 8]> = vec![[0u64; CMSG_ROOM / 8]; n];
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
        for o in &out[..n] {
            names.push(sockaddr(o.to));
            iovs.push(libc::iovec {
                iov_base: o.data.as_ptr() as *mut libc::c_void,
                iov_len: o.data.len(),
            });
        }
        // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
        let (space, clen) = unsafe {
            (
                libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize,
                libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize,
            )
        };
        for i in 0..n {
            // SAFETY: plain old data; all-zero is valid.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = space as _;
            // SAFETY: the control buffer is CMSG_ROOM >= `space` bytes, aligned
            // for cmsghdr (u64 array); we write one header and its data.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&h);
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len = clen as _;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(out[i].from).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            }
            hdrs.push(libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            });
        }
        // SAFETY: every header points into vectors alive until after the call.
        let r = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }

    /// Waits up to `timeout_ms` for the socket to become readable (or
    /// writable too, with `want_write`). Returns early on a signal.
    pub fn wait(&self, timeout_ms: i32, want_write: bool) {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN | if want_write { libc::POLLOUT } else { 0 },
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe {
            libc::poll(&mut p, 1, timeout_ms);
        }
    }
}
