//! The daemon's sockets: the UDP control channel (exempt from IPsec) and the
//! local Unix control socket (root only).

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use rotor_sys::{sockopt, steer};
use rotor_xfrm::{Family, bypass_ipsec};
use rustix::fs::Mode;
use rustix::process::umask;
use tracing::warn;

/// Receive/send buffer asked for on the control socket: a hub with many
/// nodes must not drop hellos for lack of buffer space.
const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// Binds the UDP control channel at `addr`, exempts it from every IPsec
/// policy (so it works while the SAs it manages are broken), makes it the
/// ESP-in-UDP endpoint of its port (RFC 3948: ESP of peers behind a NAT
/// arrives there; control datagrams carry the non-ESP marker) and enlarges
/// its buffers. Non-blocking, ready for tokio.
///
/// An IPv4 socket is the first member of its port's `SO_REUSEPORT` group,
/// with a program that queues every datagram on it (see
/// [`bind_priority_udp`]); the port must be free (checked with a plain
/// bind first), as without the group.
pub fn bind_control_udp(addr: SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
    bind_udp(addr, false)
}

/// [`bind_control_udp`] for an address this host need not hold yet
/// (`IP_FREEBIND`): a hub taking over binds the service address, with
/// every check a bind makes (the port free), before its first kernel
/// change, and adds the address only once its SAs are in.
pub fn bind_control_udp_freebind(addr: SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
    bind_udp(addr, true)
}

fn bind_udp(addr: SocketAddr, freebind: bool) -> anyhow::Result<tokio::net::UdpSocket> {
    let in_use = || {
        format!(
            "binding the UDP control channel on {addr} (is another rotor running, or the address not configured here?)"
        )
    };
    let sock = if freebind {
        steer::bind_freebind(addr, false)
    } else {
        UdpSocket::bind(addr)
    }
    .with_context(in_use)?;
    let sock = if addr.is_ipv4() && addr.port() != 0 {
        // The plain bind proved the port free; the group's first member
        // takes its place, and its program keeps any later member deaf.
        drop(sock);
        let sock = if freebind {
            steer::bind_freebind(addr, true)
        } else {
            steer::bind_reuseport(addr)
        }
        .with_context(in_use)?;
        steer::steer_sources(&sock, &[])
            .with_context(|| format!("the control socket {addr}'s queue program"))?;
        sock
    } else {
        sock
    };
    configure(sock, addr)
}

/// A second control socket on `main`'s port, in its `SO_REUSEPORT` group,
/// set up as `main` is: [`steer::steer_sources`] on either makes the kernel
/// queue the datagrams from the listed sources on this one, so that a
/// flood from elsewhere never shares their queue. Fails unless `main` came
/// from [`bind_control_udp`] with an IPv4 address.
pub fn bind_priority_udp(main: &tokio::net::UdpSocket) -> anyhow::Result<tokio::net::UdpSocket> {
    let addr = main.local_addr()?;
    if !addr.is_ipv4() {
        bail!("a priority queue needs an IPv4 control socket");
    }
    let sock = steer::bind_reuseport(addr)
        .with_context(|| format!("joining the control socket {addr}'s group"))?;
    configure(sock, addr)
}

/// Exempts `sock` (bound at `addr`) from IPsec, makes it the ESP-in-UDP
/// endpoint, enlarges its buffers, and hands it to tokio.
fn configure(sock: UdpSocket, addr: SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
    let family = if addr.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    bypass_ipsec(&sock, family).with_context(|| {
        format!(
            "exempting the control socket {addr} from IPsec (IP_XFRM_POLICY needs CAP_NET_ADMIN)"
        )
    })?;
    sockopt::set_udp_encap_espinudp(&sock).with_context(|| {
        format!("making {addr} the ESP-in-UDP port (UDP_ENCAP; the kernel needs CONFIG_XFRM)")
    })?;
    // The kernel's default buffers still work (a burst may then lose
    // datagrams, which the protocol retries): warn, don't fail.
    if let Err(e) = sockopt::set_recv_buffer(&sock, UDP_BUFFER) {
        warn!(%addr, "control socket receive buffer: {e}");
    }
    if let Err(e) = sockopt::set_send_buffer(&sock, UDP_BUFFER) {
        warn!(%addr, "control socket send buffer: {e}");
    }
    sock.set_nonblocking(true)?;
    Ok(tokio::net::UdpSocket::from_std(sock)?)
}

/// Binds the local control socket with mode 0600 in a directory of mode 0700
/// (created if missing). A stale socket file from a crash is replaced; a live
/// one (another daemon answering) is an error.
pub fn bind_control_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket is ours to replace: a file or link at that path is
        // something else's, and deleting it would destroy it.
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; rotor will not remove it: move it away, or set another `socket`",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use by a running daemon: stop it first, or set another `socket`",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // Bind under a restrictive umask so the socket is never briefly open to others.
    // 0o177: nothing for group and others, no execute for the owner.
    let old = umask(Mode::XUSR | Mode::RWXG | Mode::RWXO);
    let l = std::os::unix::net::UnixListener::bind(path);
    umask(old);
    let l = l.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(l)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stale socket is replaced; a regular file or a link at the socket's
    /// path is left alone and named in the error.
    #[tokio::test]
    async fn only_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rotor.sock");
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        let l = bind_control_unix(&p).expect("a stale socket is replaced");
        drop(l);
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"precious").unwrap();
        let e = format!("{:#}", bind_control_unix(&p).unwrap_err());
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"precious");
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &p).unwrap();
        assert!(bind_control_unix(&p).is_err());
        assert!(
            std::fs::symlink_metadata(&p)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
