//! Per-socket IPsec bypass for the control channel.
//!
//! The control channel must keep working when the ESP SAs it manages are
//! broken, so its UDP socket carries its own "allow" policies in both
//! directions (`IP_XFRM_POLICY` / `IPV6_XFRM_POLICY`), as IKE daemons do.
//! Socket policies take precedence over the SPD, and they go away with the
//! socket: nothing is left in the kernel.

use std::io;
use std::os::fd::AsFd;

use netlink_packet_core::Emitable;
use netlink_packet_xfrm::{
    UserPolicyInfo, XFRM_POLICY_ALLOW, XFRM_POLICY_IN, XFRM_POLICY_OUT,
    constants::{AF_INET, AF_INET6},
};
use rotor_sys::sockopt;

/// Address family of the socket to exempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// An AF_INET socket.
    V4,
    /// An AF_INET6 socket (also covers IPv4-mapped traffic on dual-stack sockets
    /// only for IPv6 policies; open one socket per family).
    V6,
}

/// Exempts `socket` from all IPsec policies, inbound and outbound. Needs
/// CAP_NET_ADMIN (EPERM otherwise).
pub fn bypass_ipsec(socket: &impl AsFd, family: Family) -> io::Result<()> {
    let (af, sys_family) = match family {
        Family::V4 => (AF_INET, sockopt::Family::V4),
        Family::V6 => (AF_INET6, sockopt::Family::V6),
    };
    for dir in [XFRM_POLICY_IN, XFRM_POLICY_OUT] {
        let mut info = UserPolicyInfo {
            action: XFRM_POLICY_ALLOW,
            direction: dir,
            ..Default::default()
        };
        info.selector.family = af;
        let mut buf = vec![0u8; info.buffer_len()];
        info.emit(&mut buf);
        sockopt::set_xfrm_policy(socket, sys_family, &buf)?;
    }
    Ok(())
}
