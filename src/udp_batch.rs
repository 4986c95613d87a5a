//! Many control datagrams per system call: `recvmmsg(2)` and `sendmmsg(2)` on
//! the daemon's tokio UDP socket.
//!
//! A hub rotating thousands of nodes receives a burst of hellos and sends a
//! burst of keys; one system call per datagram dominated its CPU in the scale
//! benchmark (docs/performance.md). The daemons never look at a datagram's
//! source address (the SPI names the peer), so receiving skips it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest control datagram we accept (the protocol's are < 200 bytes).
pub const DATAGRAM_MAX: usize = 2048;
/// Datagrams per system call.
pub const BATCH: usize = 64;

/// Receive buffers for one `recvmmsg` call.
pub struct RecvBatch {
    bufs: Vec<[u8; DATAGRAM_MAX]>,
    lens: Vec<usize>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![[0u8; DATAGRAM_MAX]; BATCH],
            lens: vec![0; BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// The datagrams the last receive filled, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .zip(&self.lens)
            .take(self.count)
            .map(|(b, &n)| &b[..n])
    }
}

/// Waits until the socket is readable, then receives up to [`BATCH`]
/// datagrams in one system call. Returns how many arrived (>= 1). Datagrams
/// longer than [`DATAGRAM_MAX`] arrive truncated; the wire parser drops them.
pub async fn recv_many(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    loop {
        sock.readable().await?;
        match sock.try_io(Interest::READABLE, || recvmmsg_now(sock, batch)) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives whatever is queued without waiting; `Ok(0)` when nothing is.
pub fn try_recv_many(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    match sock.try_io(Interest::READABLE, || recvmmsg_now(sock, batch)) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            batch.count = 0;
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

fn recvmmsg_now(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.count = 0;
    let mut iovs: Vec<libc::iovec> = batch
        .bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: DATAGRAM_MAX,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { zeroed() }).collect();
    for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at one live iovec over a live buffer of
    // DATAGRAM_MAX bytes; the vectors outlive the call; no source address
    // or control buffer is requested.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (len, h) in batch.lens.iter_mut().zip(&hdrs).take(n) {
        *len = (h.msg_len as usize).min(DATAGRAM_MAX);
    }
    batch.count = n;
    Ok(n)
}

/// A socket address in the kernel's layout.
fn raw_addr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut st: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (st, len as libc::socklen_t)
}

/// Sends every datagram, up to [`BATCH`] per system call, waiting for buffer
/// space when the socket is full. A datagram the kernel refuses (e.g. no
/// route to its address) is skipped and counted; the rest still go. Returns
/// (sent, refused).
pub async fn send_many(sock: &UdpSocket, msgs: &[(SocketAddr, &[u8])]) -> (usize, usize) {
    let (mut sent, mut refused) = (0, 0);
    let mut rest = msgs;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH)];
        let r = sock
            .async_io(Interest::WRITABLE, || sendmmsg_now(sock, chunk))
            .await;
        match r {
            Ok(n) => {
                sent += n;
                rest = &rest[n..];
            }
            Err(_) => {
                // The first datagram of the chunk was refused: skip it.
                refused += 1;
                rest = &rest[1..];
            }
        }
    }
    (sent, refused)
}

fn sendmmsg_now(sock: &UdpSocket, msgs: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
    let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
        msgs.iter().map(|(a, _)| raw_addr(a)).collect();
    let mut iovs: Vec<libc::iovec> = msgs
        .iter()
        .map(|(_, d)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
    let mut hdrs: Vec<libc::mmsghdr> = (0..msgs.len()).map(|_| unsafe { zeroed() }).collect();
    for ((h, iov), (addr, len)) in hdrs.iter_mut().zip(iovs.iter_mut()).zip(addrs.iter_mut()) {
        h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = *len;
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at a live address and one live iovec over
    // a datagram the caller holds for the duration of the call; the kernel
    // only reads them.
    let n = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_goes_out_and_comes_back_in_few_calls() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..150u8).map(|i| vec![i; 1 + i as usize]).collect();
        let msgs: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (to, &p[..])).collect();
        assert_eq!(send_many(&a, &msgs).await, (150, 0));
        let mut got = Vec::new();
        let mut batch = RecvBatch::default();
        let mut calls = 0;
        while got.len() < 150 {
            let n = recv_many(&b, &mut batch).await.unwrap();
            assert!((1..=BATCH).contains(&n));
            calls += 1;
            got.extend(batch.datagrams().map(|d| d.to_vec()));
        }
        assert_eq!(got, payloads, "every datagram, whole and in order");
        assert!(calls <= 150 / BATCH + 2, "{calls} receive calls");
        assert_eq!(try_recv_many(&b, &mut batch).unwrap(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ipv6_and_oversized_datagrams() {
        let Ok(a) = UdpSocket::bind("[::1]:0").await else {
            return; // no IPv6 loopback on this host
        };
        let b = UdpSocket::bind("[::1]:0").await.unwrap();
        let big = vec![7u8; DATAGRAM_MAX + 100];
        let msgs = [(b.local_addr().unwrap(), &big[..])];
        assert_eq!(send_many(&a, &msgs).await, (1, 0));
        let mut batch = RecvBatch::default();
        assert_eq!(recv_many(&b, &mut batch).await.unwrap(), 1);
        assert_eq!(
            batch.datagrams().next().unwrap().len(),
            DATAGRAM_MAX,
            "truncated"
        );
    }
}
