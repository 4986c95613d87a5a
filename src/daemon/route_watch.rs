//! Tells a node when its addresses or routes change, so it can check at
//! once where it now sends from (roaming: DHCP, a new Wi-Fi, LTE). The
//! kernel's rtnetlink notifications of address and route changes are only
//! a wake-up: what counts is the source address the routes give towards
//! the hub, asked afresh each time ([`super::route_source`]).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// rtnetlink multicast groups (the legacy bit masks of `rtnetlink.h`):
/// IPv4 and IPv6 addresses and routes.
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// A NETLINK_ROUTE socket subscribed to address and route changes.
pub struct RouteWatch {
    sock: Socket,
    buf: Vec<u8>,
}

impl RouteWatch {
    /// Subscribes; non-blocking, for tokio's `AsyncFd`.
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(
            0,
            RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE,
        ))?;
        sock.set_non_blocking(true)?;
        Ok(RouteWatch {
            sock,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Reads every queued notification; `Ok(true)` if there was any. An
    /// overrun (ENOBUFS: notifications lost) counts as a change too.
    pub fn drain(&mut self) -> io::Result<bool> {
        let mut any = false;
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(0) => return Ok(any),
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(any),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for RouteWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
