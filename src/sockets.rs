//! The daemon's sockets: the UDP control channel (exempt from IPsec) and the
//! local Unix control socket (root only).

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use rotor_xfrm::{Family, bypass_ipsec};

/// Receive/send buffer asked for on the control socket: a hub with many
/// nodes must not drop hellos for lack of buffer space.
const UDP_BUFFER: i32 = 8 * 1024 * 1024;

fn set_buf(fd: i32, force: i32, plain: i32, size: i32) {
    for name in [force, plain] {
        // SAFETY: setsockopt reads size_of::<c_int>() bytes from a valid pointer.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&size as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Binds the UDP control channel at `addr`, exempts it from every IPsec
/// policy (so it works while the SAs it manages are broken) and enlarges its
/// buffers. Non-blocking, ready for tokio.
pub fn bind_control_udp(addr: SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
    use std::os::fd::AsRawFd;
    let sock = UdpSocket::bind(addr).with_context(|| {
        format!("binding the UDP control channel on {addr} (is another rotor running, or the address not configured here?)")
    })?;
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
    let fd = sock.as_raw_fd();
    set_buf(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, UDP_BUFFER);
    set_buf(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, UDP_BUFFER);
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
    if path.exists() {
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
    // SAFETY: umask has no preconditions; it is restored right after bind.
    let old = unsafe { libc::umask(0o177) };
    let l = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(l)?)
}

/// Returns free heap pages to the system (glibc's `malloc_trim`); nothing
/// elsewhere.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free heap pages; it is always safe.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
