//! Two kernel queues on one UDP port: a socket group (`SO_REUSEPORT`) of a
//! main socket and a priority socket, and a classic BPF program, run by the
//! kernel on every datagram before it is queued, that picks the priority
//! socket for the datagrams from a set of IPv4 source addresses.
//!
//! A hub's nodes at their known addresses then never share a queue with a
//! flood from elsewhere: the main socket's queue may overflow, the
//! priority one holds only what comes from the nodes' addresses.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;

use rustix::net::{AddressFamily, SocketType, sockopt};

/// Most source addresses one program can steer (a classic BPF program has
/// at most 4,096 instructions; the search tree takes 5 per address).
pub const MAX_SOURCES: usize = 800;

/// Binds a UDP socket at `addr` as a member of the port's `SO_REUSEPORT`
/// group (the first member creates it). Blocking, like `UdpSocket::bind`.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    bind_with(addr, true, false)
}

/// A UDP socket bound to `addr`, which may be an address this host does
/// not hold yet (`IP_FREEBIND` / `IPV6_FREEBIND`): a hub taking over binds
/// the service address before it adds it. In `SO_REUSEPORT` mode if
/// `reuseport`, as [`bind_reuseport`].
pub fn bind_freebind(addr: SocketAddr, reuseport: bool) -> io::Result<UdpSocket> {
    bind_with(addr, reuseport, true)
}

fn bind_with(addr: SocketAddr, reuseport: bool, freebind: bool) -> io::Result<UdpSocket> {
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket(family, SocketType::DGRAM, None)?;
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    if freebind {
        if addr.is_ipv4() {
            sockopt::set_ip_freebind(&fd, true)?;
        } else {
            sockopt::set_ipv6_freebind(&fd, true)?;
        }
    }
    rustix::net::bind(&fd, &addr)?;
    Ok(UdpSocket::from(fd))
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The search tree over sorted, distinct `a`: returns 1 if the loaded
/// address (in the accumulator) is one of them, else 0. Forward jumps only,
/// long ones through `ja` (32-bit offsets), so any size fits.
fn tree(a: &[u32]) -> Vec<libc::sock_filter> {
    if a.is_empty() {
        return vec![insn(RET_K, 0, 0, 0)];
    }
    let mid = a.len() / 2;
    let (left, right) = (tree(&a[..mid]), tree(&a[mid + 1..]));
    let k = a[mid];
    let mut out = vec![
        // == k: the next instruction (return 1); else skip it.
        insn(JEQ_K, 0, 1, k),
        insn(RET_K, 0, 0, 1),
        // > k: the next instruction (jump over the left subtree); else
        // skip it, into the left subtree.
        insn(JGT_K, 0, 1, k),
        insn(JA, 0, 0, left.len() as u32),
    ];
    out.extend(left);
    out.extend(right);
    out
}

/// The program: load the IPv4 source address (from the network header:
/// the program runs with the UDP payload as its data), then the tree.
fn program(sources: &[Ipv4Addr]) -> Vec<libc::sock_filter> {
    let mut a: Vec<u32> = sources.iter().map(|s| u32::from(*s)).collect();
    a.sort_unstable();
    a.dedup();
    let mut p = vec![insn(LD_W_ABS, 0, 0, (libc::SKF_NET_OFF + 12) as u32)];
    p.extend(tree(&a));
    p
}

/// Makes the kernel queue every datagram to `sock`'s port from one of
/// `sources` on the group's second member (the priority socket), and every
/// other on its first (the main socket). Replaces the program attached
/// before, atomically for the datagrams. An empty set sends everything to
/// the first member, whatever joins the group later. For an IPv4 group
/// only; more than [`MAX_SOURCES`] addresses: `EINVAL`, nothing changed.
pub fn steer_sources(sock: impl AsFd, sources: &[Ipv4Addr]) -> io::Result<()> {
    if sources.len() > MAX_SOURCES {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut code = program(sources);
    crate::sockopt::attach_cbpf(sock.as_fd(), libc::SO_ATTACH_REUSEPORT_CBPF, &mut code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs the program on a source address as the kernel would (only the
    /// instructions [`program`] emits).
    fn run(p: &[libc::sock_filter], src: u32) -> u32 {
        let (mut pc, a) = (1usize, src);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                RET_K => return i.k,
                JA => pc += i.k as usize,
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                JGT_K => pc += usize::from(if a > i.k { i.jt } else { i.jf }),
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn the_tree_finds_exactly_the_sources() {
        for n in [0usize, 1, 2, 3, 7, 100, MAX_SOURCES] {
            let sources: Vec<Ipv4Addr> = (0..n as u32)
                .map(|i| Ipv4Addr::from(0x0a00_0000 + i * 7919))
                .collect();
            let p = program(&sources);
            assert!(p.len() <= 4096, "{} instructions for {n}", p.len());
            for s in &sources {
                assert_eq!(run(&p, u32::from(*s)), 1, "{s} of {n}");
                assert_eq!(run(&p, u32::from(*s) + 1), 0);
            }
            assert_eq!(run(&p, 0), 0);
            assert_eq!(run(&p, u32::MAX), 0);
        }
    }

    /// On the real kernel (loopback: every 127/8 address is local):
    /// datagrams from a listed source reach the second socket of the
    /// group, all others the first.
    #[test]
    fn the_kernel_steers_by_source() {
        let main = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let at = main.local_addr().unwrap();
        let prio = bind_reuseport(at).unwrap();
        steer_sources(&main, &["127.0.0.2".parse().unwrap()]).unwrap();
        for s in [&main, &prio] {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
        }
        let listed = UdpSocket::bind("127.0.0.2:0").unwrap();
        let other = UdpSocket::bind("127.0.0.3:0").unwrap();
        for _ in 0..20 {
            listed.send_to(b"listed", at).unwrap();
            other.send_to(b"other", at).unwrap();
        }
        let mut b = [0u8; 16];
        for _ in 0..20 {
            let (n, from) = prio.recv_from(&mut b).unwrap();
            assert_eq!(
                (&b[..n], from.ip()),
                (&b"listed"[..], listed.local_addr().unwrap().ip())
            );
            let (n, _) = main.recv_from(&mut b).unwrap();
            assert_eq!(&b[..n], b"other");
        }
        // An empty set: everything to the first member.
        steer_sources(&prio, &[]).unwrap();
        listed.send_to(b"listed", at).unwrap();
        let (n, _) = main.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], b"listed");
    }
}
