//! Socket options the workspace sets. The buffer sizes go through `rustix`;
//! the two options it has no function for (`IP_PKTINFO`, the per-socket
//! IPsec policy) through one raw `setsockopt(2)`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::net::sockopt;

/// Sets the receive buffer to `bytes`: `SO_RCVBUFFORCE` (past
/// `net.core.rmem_max`; needs CAP_NET_ADMIN), else `SO_RCVBUF` (capped by
/// `rmem_max`). The error is the latter's.
pub fn set_recv_buffer(sock: impl AsFd, bytes: usize) -> io::Result<()> {
    let fd = sock.as_fd();
    let bytes = clamp(bytes);
    if sockopt::set_socket_recv_buffer_size_force(fd, bytes).is_ok() {
        return Ok(());
    }
    Ok(sockopt::set_socket_recv_buffer_size(fd, bytes)?)
}

/// Sets the send buffer to `bytes`, as [`set_recv_buffer`] does
/// (`SO_SNDBUFFORCE`, else `SO_SNDBUF`).
pub fn set_send_buffer(sock: impl AsFd, bytes: usize) -> io::Result<()> {
    let fd = sock.as_fd();
    let bytes = clamp(bytes);
    if sockopt::set_socket_send_buffer_size_force(fd, bytes).is_ok() {
        return Ok(());
    }
    Ok(sockopt::set_socket_send_buffer_size(fd, bytes)?)
}

/// The kernel doubles the value it is given (for its bookkeeping) and takes
/// an `int`: ask for at most what still fits.
fn clamp(bytes: usize) -> usize {
    bytes.min(i32::MAX as usize / 2)
}

/// The receive buffer the kernel granted, in bytes (`SO_RCVBUF`, which counts
/// the kernel's bookkeeping too).
pub fn recv_buffer(sock: impl AsFd) -> io::Result<usize> {
    Ok(sockopt::socket_recv_buffer_size(sock)?)
}

/// The send buffer the kernel granted, in bytes (`SO_SNDBUF`).
pub fn send_buffer(sock: impl AsFd) -> io::Result<usize> {
    Ok(sockopt::socket_send_buffer_size(sock)?)
}

/// Makes blocking receives give up after `timeout` (`SO_RCVTIMEO`) with
/// `WouldBlock`; a zero timeout waits forever.
pub fn set_recv_timeout(sock: impl AsFd, timeout: std::time::Duration) -> io::Result<()> {
    let t = (!timeout.is_zero()).then_some(timeout);
    Ok(sockopt::set_socket_timeout(
        sock,
        rustix::net::sockopt::Timeout::Recv,
        t,
    )?)
}

/// Address family of a socket, for the options that exist once per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// AF_INET.
    V4,
    /// AF_INET6.
    V6,
}

/// Asks the kernel to tell, with each received datagram, the local address
/// it was sent to (`IP_PKTINFO` on an IPv4 socket). [`crate::mmsg`] reads it
/// back; it also lets a datagram be sent from a chosen local address.
pub fn set_pktinfo(sock: impl AsFd, on: bool) -> io::Result<()> {
    let v = libc::c_int::from(on);
    setsockopt_bytes(
        sock.as_fd(),
        libc::IPPROTO_IP,
        libc::IP_PKTINFO,
        &v.to_ne_bytes(),
    )
}

/// Makes a UDP socket the kernel's ESP-in-UDP endpoint (RFC 3948,
/// `UDP_ENCAP` = `UDP_ENCAP_ESPINUDP`): datagrams arriving on its port whose
/// first four bytes are not zero are taken as ESP and handed to the SA
/// they name (or dropped by the kernel if there is none); those that start
/// with the four-zero-byte non-ESP marker reach the socket as usual, as do
/// datagrams of up to 8 bytes other than a one-byte 0xff keepalive, which
/// the kernel eats. Works on IPv4 and IPv6 sockets.
pub fn set_udp_encap_espinudp(sock: impl AsFd) -> io::Result<()> {
    const UDP_ENCAP: libc::c_int = 100;
    const UDP_ENCAP_ESPINUDP: libc::c_int = 2;
    setsockopt_bytes(
        sock.as_fd(),
        libc::IPPROTO_UDP,
        UDP_ENCAP,
        &UDP_ENCAP_ESPINUDP.to_ne_bytes(),
    )
}

/// Installs one per-socket IPsec policy (`IP_XFRM_POLICY` or
/// `IPV6_XFRM_POLICY`, by `family`). `policy` is a `struct
/// xfrm_userpolicy_info` (optionally followed by templates) in the kernel's
/// layout, which the kernel copies and checks; it holds no pointers. Needs
/// CAP_NET_ADMIN (EPERM otherwise).
pub fn set_xfrm_policy(sock: impl AsFd, family: Family, policy: &[u8]) -> io::Result<()> {
    let (level, name) = match family {
        Family::V4 => (libc::IPPROTO_IP, libc::IP_XFRM_POLICY),
        Family::V6 => (libc::IPPROTO_IPV6, libc::IPV6_XFRM_POLICY),
    };
    setsockopt_bytes(sock.as_fd(), level, name, policy)
}

/// Attaches a classic BPF filter to a netlink socket that drops every
/// message whose header names `portid` as its sender (`nlmsg_pid`, at
/// offset 12), and passes all others whole. The kernel copies the
/// requester's port id into the notifications of its changes, so a
/// daemon's notification socket filtered on its own request socket's port
/// id never even wakes up for the daemon's own changes.
pub fn drop_netlink_sender(sock: impl AsFd, portid: u32) -> io::Result<()> {
    // The header is in host byte order; a BPF word load reads network
    // order: compare against the bytes as the load will see them.
    let k = u32::from_be_bytes(portid.to_ne_bytes());
    let mut code = [
        // A = word at offset 12 (nlmsg_pid)
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 12,
        },
        // if A == k: next (drop), else skip one (accept)
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k,
        },
        // return 0: drop
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // return all of it
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        },
    ];
    attach_cbpf(sock.as_fd(), libc::SO_ATTACH_FILTER, &mut code)
}

/// Hands the classic BPF program `code` to the kernel with `option`
/// (`SO_ATTACH_FILTER`, `SO_ATTACH_REUSEPORT_CBPF`) at `SOL_SOCKET`.
pub(crate) fn attach_cbpf(
    fd: BorrowedFd<'_>,
    option: i32,
    code: &mut [libc::sock_filter],
) -> io::Result<()> {
    let len = libc::c_ushort::try_from(code.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `code`, `len` instructions that live until
    // the call returns; the kernel copies the program during the call (and
    // verifies it) and keeps no pointer into our memory.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setsockopt(2)` with a value given as bytes. Private: only for options
/// whose value is plain data (no pointers the kernel would follow).
fn setsockopt_bytes(fd: BorrowedFd<'_>, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    let len = libc::socklen_t::try_from(value.len())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the kernel reads `len` bytes from `value`, a live slice of that
    // length; the callers pass only options whose value is plain data, so
    // the kernel follows no pointer out of it.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn buffers_grow_and_are_reported() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_recv_buffer(&s, 4096).unwrap();
        set_send_buffer(&s, 4096).unwrap();
        // The kernel doubles what it is given and has a floor.
        assert!(recv_buffer(&s).unwrap() >= 4096);
        assert!(send_buffer(&s).unwrap() >= 4096);
        set_recv_buffer(&s, usize::MAX).unwrap();
        set_recv_timeout(&s, std::time::Duration::from_millis(5)).unwrap();
        set_recv_timeout(&s, std::time::Duration::ZERO).unwrap();
    }

    #[test]
    fn errors_keep_the_errno() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Too short for a struct xfrm_userpolicy_info.
        let e = set_xfrm_policy(&s, Family::V4, &[0; 4]).unwrap_err();
        assert!(e.raw_os_error().is_some(), "{e}");
        set_pktinfo(&s, true).unwrap();
    }
}
