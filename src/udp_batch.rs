//! Many control datagrams per system call: `recvmmsg(2)` and `sendmmsg(2)`
//! (through `rotor_sys::mmsg`) on the daemon's tokio UDP socket.
//!
//! A hub rotating thousands of nodes receives a burst of hellos and sends a
//! burst of keys; one system call per datagram dominated its CPU in the scale
//! benchmark (docs/performance.md). The SPI names the peer, not the source
//! address; the event loop receives addresses so that a node can shed
//! datagrams that do not come from its hub, and a hub can tell a node at
//! its place from anyone else before any cryptography.

use std::io;
use std::net::SocketAddr;

use rotor_sys::mmsg;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub use rotor_sys::mmsg::BATCH;
/// Largest control datagram we accept (the protocol's are < 200 bytes).
pub use rotor_sys::mmsg::DATAGRAM_MAX;
/// Receive buffers for one `recvmmsg` call. `RecvBatch::default()` receives
/// payloads only; `datagrams()` yields the last receive's, in arrival order.
pub use rotor_sys::mmsg::RecvBatch;

/// Waits until the socket is readable, then receives up to [`BATCH`]
/// datagrams in one system call. Returns how many arrived (>= 1). Datagrams
/// longer than [`DATAGRAM_MAX`] arrive truncated; the wire parser drops them.
pub async fn recv_many(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    loop {
        sock.readable().await?;
        match sock.try_io(Interest::READABLE, || mmsg::recv(sock, batch)) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives whatever is queued without waiting; `Ok(0)` when nothing is.
pub fn try_recv_many(sock: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
    match sock.try_io(Interest::READABLE, || mmsg::recv(sock, batch)) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            // tokio may answer from its readiness state without a call.
            batch.clear();
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Sends every datagram, up to [`BATCH`] per system call, waiting for buffer
/// space when the socket is full. A datagram the kernel refuses (e.g. no
/// route to its address) is skipped and counted; the rest still go. Returns
/// (sent, refused).
pub async fn send_many(sock: &UdpSocket, msgs: &[(SocketAddr, &[u8])]) -> (usize, usize) {
    let (mut sent, mut refused) = (0, 0);
    let mut rest = msgs;
    while !rest.is_empty() {
        let r = sock
            .async_io(Interest::WRITABLE, || mmsg::send(sock, rest))
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
