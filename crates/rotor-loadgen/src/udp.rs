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
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use rotor_sys::{mmsg, sockopt};
use rotor_xfrm::{Family, bypass_ipsec};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// Largest control datagram accepted (rotor's are under 200 bytes).
pub const MAX_DATAGRAM: usize = mmsg::DATAGRAM_MAX;

/// Datagrams moved per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = mmsg::BATCH;

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

/// Receive buffers for one `recvmmsg` call, with each datagram's addresses.
pub struct RecvBatch(mmsg::RecvBatch);

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Buffers for [`BATCH`] datagrams.
    pub fn new() -> Self {
        RecvBatch(mmsg::RecvBatch::with_addresses())
    }

    /// The `i`-th datagram of the last receive, with its bytes.
    pub fn get(&self, i: usize) -> Option<(Received, &[u8])> {
        let r = self.0.get(i)?;
        // The socket is IPv4: anything else cannot come, and an unknown
        // sender is dropped as not the hub.
        let from = match r.from {
            Some(SocketAddr::V4(a)) => a,
            _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        };
        let to = match r.to {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        };
        let len = r.data.len();
        Some((Received { from, to, len }, r.data))
    }

    /// Number of datagrams of the last receive.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
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

impl mmsg::Outgoing for Outgoing {
    fn to(&self) -> SocketAddr {
        SocketAddr::V4(self.to)
    }
    fn from(&self) -> Option<IpAddr> {
        Some(IpAddr::V4(self.from))
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
}

/// The wildcard-bound UDP socket.
pub struct MultiSocket {
    sock: UdpSocket,
    /// Receive buffer the kernel granted (bytes, as `SO_RCVBUF` reports it).
    pub rcvbuf: usize,
    /// Send buffer the kernel granted.
    pub sndbuf: usize,
}

/// Nothing queued (or the call was interrupted): try again later.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl MultiSocket {
    /// Binds `0.0.0.0:port` with `IP_PKTINFO`, the IPsec bypass, and buffers
    /// of `rcvbuf`/`sndbuf` bytes (forced past `rmem_max` when privileged).
    /// Nothing reaches the port before the fleet starts, so setting the
    /// options right after binding loses no datagram.
    pub fn bind(port: u16, rcvbuf: usize, sndbuf: usize) -> io::Result<Self> {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
        sock.set_nonblocking(true)?;
        sockopt::set_pktinfo(&sock, true)?;
        sockopt::set_recv_buffer(&sock, rcvbuf)?;
        sockopt::set_send_buffer(&sock, sndbuf)?;
        bypass_ipsec(&sock, Family::V4)?;
        Ok(MultiSocket {
            rcvbuf: sockopt::recv_buffer(&sock)?,
            sndbuf: sockopt::send_buffer(&sock)?,
            sock,
        })
    }

    /// Receives up to [`BATCH`] datagrams without blocking; 0 when none is
    /// waiting.
    pub fn recv_batch(&self, b: &mut RecvBatch) -> io::Result<usize> {
        match mmsg::recv(&self.sock, &mut b.0) {
            Err(e) if is_transient(&e) => Ok(0),
            r => r,
        }
    }

    /// Sends as many of `out` as the socket takes without blocking, each from
    /// its node's address; returns how many left (from the front).
    /// `WouldBlock` comes back as `Ok(0)`.
    pub fn send_batch(&self, out: &[Outgoing]) -> io::Result<usize> {
        match mmsg::send(&self.sock, out) {
            Err(e) if is_transient(&e) => Ok(0),
            r => r,
        }
    }

    /// Waits up to `timeout_ms` for the socket to become readable (or
    /// writable too, with `want_write`). Returns early on a signal.
    pub fn wait(&self, timeout_ms: i32, want_write: bool) {
        let mut flags = PollFlags::IN;
        if want_write {
            flags |= PollFlags::OUT;
        }
        let ms = u64::try_from(timeout_ms).unwrap_or(0);
        let timeout = Timespec::try_from(Duration::from_millis(ms)).unwrap_or_default();
        // An error (EINTR from the stop signal) just ends the wait early,
        // like a timeout: the caller's loop looks at the socket and the
        // stop flag either way.
        let _ = poll(&mut [PollFd::new(&self.sock, flags)], Some(&timeout));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_carry_the_node_addresses_both_ways() {
        // The IPsec bypass needs CAP_NET_ADMIN.
        let Ok(s) = MultiSocket::bind(0, 1 << 16, 1 << 16) else {
            return;
        };
        assert!(s.rcvbuf > 0 && s.sndbuf > 0);
        let port = s.sock.local_addr().unwrap().port();
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let out: Vec<Outgoing> = (1..=3u8)
            .map(|i| Outgoing {
                from: Ipv4Addr::new(127, 0, 0, i),
                to,
                data: vec![i; 5],
            })
            .collect();
        assert_eq!(s.send_batch(&out).unwrap(), 3);
        let mut b = RecvBatch::new();
        let mut got = Vec::new();
        for _ in 0..100 {
            s.wait(100, false);
            let n = s.recv_batch(&mut b).unwrap();
            for i in 0..n {
                let (r, data) = b.get(i).unwrap();
                assert_eq!(r.len, data.len());
                got.push((*r.from.ip(), r.to, data.to_vec()));
            }
            if got.len() == 3 {
                break;
            }
        }
        let want: Vec<_> = out
            .iter()
            .map(|o| (o.from, Some(Ipv4Addr::LOCALHOST), o.data.clone()))
            .collect();
        assert_eq!(got, want, "each from its node's address, to the socket's");
        assert_eq!(s.recv_batch(&mut b).unwrap(), 0, "WouldBlock is 0");
        assert!(b.is_empty());
    }
}
