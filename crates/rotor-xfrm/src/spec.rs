//! What rotor asks the kernel for: plain descriptions of ESP SAs and policies.
//!
//! These types carry no netlink detail; [`crate::encode`] turns them into XFRM
//! messages. They are validated when built into a message, so a bad value (a key
//! of the wrong length, a replay window over the kernel's maximum, mixed address
//! families) is reported as [`crate::SpecError`] before anything reaches the kernel.

use std::fmt;
use std::net::IpAddr;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// The kernel's largest anti-replay window (`XFRMA_REPLAY_ESN_MAX` / 8 bits).
pub const MAX_REPLAY_WINDOW: u32 = 4096;

/// Length of the salt that `rfc4106(gcm(aes))` takes after the AES key.
pub const GCM_SALT_LEN: usize = 4;

/// Key material for one `rfc4106(gcm(aes))` SA: the AES key followed by the
/// 4-byte salt, exactly as the kernel takes it (20 or 36 bytes).
///
/// Zeroized on drop; `Debug` never shows the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct AeadKey {
    bytes: Vec<u8>,
}

impl AeadKey {
    /// Wraps AES key + salt. Returns `None` unless the length is 20 (AES-128)
    /// or 36 (AES-256) bytes, the only sizes rfc4106 accepts here.
    pub fn new(key_and_salt: Vec<u8>) -> Option<Self> {
        let ok = matches!(key_and_salt.len(), 20 | 36);
        let key = AeadKey {
            bytes: key_and_salt,
        };
        ok.then_some(key)
    }

    /// The key followed by the salt, for the netlink attribute only.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// AES key size in bits (128 or 256).
    pub fn aes_bits(&self) -> u32 {
        ((self.bytes.len() - GCM_SALT_LEN) * 8) as u32
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AeadKey(aes-{}, <redacted>)", self.aes_bits())
    }
}

/// ESP encapsulation mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Host-to-host: the ESP header goes between the IP header and its payload.
    Transport,
    /// Network-to-network: the whole inner packet is carried inside an outer
    /// IP header between the two tunnel endpoints.
    Tunnel,
}

impl Mode {
    pub(crate) fn to_kernel(self) -> u8 {
        match self {
            Mode::Transport => netlink_packet_xfrm::XFRM_MODE_TRANSPORT,
            Mode::Tunnel => netlink_packet_xfrm::XFRM_MODE_TUNNEL,
        }
    }

    pub(crate) fn from_kernel(mode: u8) -> Option<Self> {
        match mode {
            netlink_packet_xfrm::XFRM_MODE_TRANSPORT => Some(Mode::Transport),
            netlink_packet_xfrm::XFRM_MODE_TUNNEL => Some(Mode::Tunnel),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Transport => "transport",
            Mode::Tunnel => "tunnel",
        })
    }
}

/// An IP prefix such as `10.1.0.0/16` or `fd00::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network address (host bits are not checked).
    pub addr: IpAddr,
    /// Prefix length in bits (at most 32 for IPv4, 128 for IPv6).
    pub prefix: u8,
}

impl IpNet {
    /// The single-host prefix of `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        IpNet { addr, prefix }
    }

    /// Parses `ADDR/LEN` or a bare address (a host prefix).
    pub fn parse(s: &str) -> Option<Self> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// ESP-in-UDP encapsulation (NAT traversal, RFC 3948) ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpEncap {
    /// UDP source port of the encapsulated packets (usually 4500).
    pub sport: u16,
    /// UDP destination port (usually 4500).
    pub dport: u16,
}

/// Optional SA lifetimes, enforced by the kernel. `None` fields mean "no limit".
/// The soft limit makes the kernel send an EXPIRE notification; the hard limit
/// deletes the SA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifetimes {
    /// Soft and hard limit on seconds since the SA was added.
    pub add_seconds: Option<(u64, u64)>,
    /// Soft and hard limit on packets.
    pub packets: Option<(u64, u64)>,
    /// Soft and hard limit on bytes.
    pub bytes: Option<(u64, u64)>,
}

/// One ESP SA with an `rfc4106(gcm(aes))` key, as rotor installs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaSpec {
    /// Outer source address (sender of the ESP packets).
    pub src: IpAddr,
    /// Outer destination address (receiver); with `spi` it identifies the SA.
    pub dst: IpAddr,
    /// Security parameter index; 0-255 are reserved by RFC 4303 and refused.
    pub spi: u32,
    /// Request id tying the SA to its policies; must lie in rotor's owned range
    /// (see [`crate::Ownership`]).
    pub reqid: u32,
    /// Transport or tunnel.
    pub mode: Mode,
    /// AES key and salt.
    pub key: AeadKey,
    /// Anti-replay window in packets (1..=4096) for an inbound SA; for an
    /// outbound SA any value >= 1 (the kernel needs a non-zero window with ESN).
    /// 0 disables anti-replay and requires `esn = false`.
    pub replay_window: u32,
    /// Extended (64-bit) sequence numbers, so a busy SA never exhausts its
    /// 32-bit counter.
    pub esn: bool,
    /// ESP-in-UDP encapsulation, or `None` for plain ESP.
    pub encap: Option<UdpEncap>,
    /// Kernel-enforced lifetimes.
    pub lifetimes: Lifetimes,
    /// Inner traffic the SA may carry; `None` = any. For transport mode a
    /// host selector (src/32 -> dst/32) is usual.
    pub selector: Option<(IpNet, IpNet)>,
}

/// Identifies one SA in the kernel: destination address, SPI and protocol (ESP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SaId {
    /// Outer destination address.
    pub dst: IpAddr,
    /// Security parameter index.
    pub spi: u32,
}

impl fmt::Display for SaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spi={:#010x} dst={}", self.spi, self.dst)
    }
}

/// Direction of a policy, as the kernel names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyDir {
    /// Packets arriving for this host: which SAs must have protected them.
    In,
    /// Packets leaving this host: which SA protects them.
    Out,
    /// Packets forwarded through this host (tunnel mode gateways).
    Fwd,
}

impl PolicyDir {
    pub(crate) fn to_kernel(self) -> u8 {
        match self {
            PolicyDir::In => netlink_packet_xfrm::XFRM_POLICY_IN,
            PolicyDir::Out => netlink_packet_xfrm::XFRM_POLICY_OUT,
            PolicyDir::Fwd => netlink_packet_xfrm::XFRM_POLICY_FWD,
        }
    }

    pub(crate) fn from_kernel(dir: u8) -> Option<Self> {
        match dir {
            netlink_packet_xfrm::XFRM_POLICY_IN => Some(PolicyDir::In),
            netlink_packet_xfrm::XFRM_POLICY_OUT => Some(PolicyDir::Out),
            netlink_packet_xfrm::XFRM_POLICY_FWD => Some(PolicyDir::Fwd),
            _ => None,
        }
    }
}

impl fmt::Display for PolicyDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyDir::In => "in",
            PolicyDir::Out => "out",
            PolicyDir::Fwd => "fwd",
        })
    }
}

/// The traffic a policy applies to. With its direction it identifies the
/// policy in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicySelector {
    /// Source prefix.
    pub src: IpNet,
    /// Destination prefix.
    pub dst: IpNet,
    /// IP protocol number, or `None` for any.
    pub proto: Option<u8>,
    /// Exact source port, or for ICMP/ICMPv6 the message type (the kernel
    /// keys ICMP flows by type in the source-port slot); `None` for any.
    pub sport: Option<u16>,
}

impl fmt::Display for PolicySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)?;
        if let Some(p) = self.proto {
            write!(f, " proto {p}")?;
        }
        if let Some(s) = self.sport {
            write!(f, " sport/type {s}")?;
        }
        Ok(())
    }
}

/// Identifies one policy in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyId {
    /// Direction.
    pub dir: PolicyDir,
    /// Selector.
    pub selector: PolicySelector,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.dir, self.selector)
    }
}

/// A policy with one ESP template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    /// Direction and selector.
    pub id: PolicyId,
    /// Kernel priority: lower numbers win.
    pub priority: u32,
    /// Outer endpoints of the template: required in tunnel mode (source, then
    /// destination of the outer header); ignored (sent as zero) in transport mode.
    pub tmpl_endpoints: Option<(IpAddr, IpAddr)>,
    /// SPI the template names. On an outbound policy this pins the kernel to
    /// exactly that SA; 0 lets any SA with the reqid match (use 0 for inbound
    /// policies, which must accept two generations at once).
    pub spi: u32,
    /// Request id; must lie in rotor's owned range.
    pub reqid: u32,
    /// Transport or tunnel.
    pub mode: Mode,
    /// Drop matching traffic instead of protecting it: how a peer whose
    /// outbound SA does not exist yet fails closed (no clear-text leak, no
    /// kernel ACQUIRE). The template is still sent, so the policy stays
    /// recognisable as rotor's.
    pub block: bool,
}

/// Moves one SA to new outer addresses and, behind a NAT, new ESP-in-UDP
/// ports, keeping its SPI, key, sequence numbers and replay window
/// (`XFRM_MSG_MIGRATE`; the kernel clones the SA with the new addresses
/// and deletes the old one in the same call).
///
/// The kernel finds the SA by (old addresses, reqid, mode), not by SPI:
/// with several SAs of one reqid between the same addresses (two
/// generations), each migration moves one of them, the most recently added
/// first, and moving all of them takes one operation per SA. It also
/// needs `policy` to exist with a template of the same reqid and mode (in
/// tunnel mode, naming the old endpoints, which the call then moves to the
/// new ones): ENOENT without the policy, ENODATA without such a template.
/// An SA that is not there is no error (nothing moves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaMigrate {
    /// The policy whose template covers the SA.
    pub policy: PolicyId,
    /// Outer (source, destination) now.
    pub old: (IpAddr, IpAddr),
    /// Outer (source, destination) after the move.
    pub new: (IpAddr, IpAddr),
    /// The SA's reqid (must be owned).
    pub reqid: u32,
    /// The SA's mode.
    pub mode: Mode,
    /// ESP-in-UDP ports after the move. `None` keeps whatever
    /// encapsulation the SA has: the kernel cannot remove one by a
    /// migration.
    pub encap: Option<UdpEncap>,
    /// The SPI the caller expects to move, for its logs; the kernel's
    /// message has no field for it.
    pub spi: u32,
}

/// One kernel operation in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Add an SA (`XFRM_MSG_NEWSA`); fails with EEXIST if (dst, spi) exists.
    AddSa(SaSpec),
    /// Update an existing SA (`XFRM_MSG_UPDSA`): its selector, lifetimes and
    /// encapsulation only. The kernel never changes an SA's key in place
    /// (ESRCH if the SA does not exist): a new key needs a new SPI.
    UpdateSa(SaSpec),
    /// Delete an SA (`XFRM_MSG_DELSA`).
    DeleteSa(SaId),
    /// Move an SA to new outer addresses and encapsulation in place
    /// (`XFRM_MSG_MIGRATE`); see [`SaMigrate`].
    MigrateSa(SaMigrate),
    /// Add a policy (`XFRM_MSG_NEWPOLICY`); fails with EEXIST if it exists.
    AddPolicy(PolicySpec),
    /// Add or replace a policy atomically (`XFRM_MSG_UPDPOLICY`): the way to
    /// move a peer's outbound traffic to another SPI.
    UpdatePolicy(PolicySpec),
    /// Delete a policy (`XFRM_MSG_DELPOLICY`).
    DeletePolicy(PolicyId),
    /// Add or replace an allow policy without template
    /// (`XFRM_MSG_UPDPOLICY`): matching traffic passes in clear text, ahead
    /// of any policy with a larger priority number. Such a policy has no
    /// template to carry a reqid, so `remove_owned` cannot recognise it: the
    /// caller deletes it by its exact id. rotor uses it only for IPv6
    /// neighbour discovery between a transport-mode peer pair.
    UpdateBypassPolicy {
        /// Direction and selector.
        id: PolicyId,
        /// Kernel priority: lower numbers win.
        priority: u32,
    },
}

impl fmt::Display for Op {
    /// A one-line description for logs and errors; never shows key bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddSa(s) => write!(f, "add SA spi={:#010x} {} -> {}", s.spi, s.src, s.dst),
            Op::UpdateSa(s) => {
                write!(f, "update SA spi={:#010x} {} -> {}", s.spi, s.src, s.dst)
            }
            Op::DeleteSa(id) => write!(f, "delete SA {id}"),
            Op::MigrateSa(m) => write!(
                f,
                "migrate SA spi={:#010x} {} -> {} to {} -> {}",
                m.spi, m.old.0, m.old.1, m.new.0, m.new.1
            ),
            Op::AddPolicy(p) => write!(f, "add policy {} spi={:#010x}", p.id, p.spi),
            Op::UpdatePolicy(p) => write!(f, "update policy {} spi={:#010x}", p.id, p.spi),
            Op::DeletePolicy(id) => write!(f, "delete policy {id}"),
            Op::UpdateBypassPolicy { id, priority } => {
                write!(f, "update bypass policy {id} priority {priority}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aead_key_accepts_only_rfc4106_lengths() {
        assert!(AeadKey::new(vec![0; 20]).is_some());
        assert!(AeadKey::new(vec![0; 36]).is_some());
        for len in [0, 16, 19, 21, 32, 35, 37] {
            assert!(AeadKey::new(vec![0; len]).is_none(), "len {len}");
        }
    }

    #[test]
    fn aead_key_debug_hides_bytes() {
        let k = AeadKey::new(vec![0xab; 36]).unwrap();
        let s = format!("{k:?}");
        assert!(!s.to_lowercase().contains("ab, "), "{s}");
        assert!(!s.contains("171"), "{s}");
        assert_eq!(s, "AeadKey(aes-256, <redacted>)");
    }

    #[test]
    fn ipnet_parse() {
        assert_eq!(IpNet::parse("10.1.0.0/16").unwrap().prefix, 16);
        assert_eq!(IpNet::parse("10.1.0.1").unwrap().prefix, 32);
        assert_eq!(IpNet::parse("fd00::/64").unwrap().prefix, 64);
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("fd00::/129").is_none());
        assert!(IpNet::parse("nonsense").is_none());
    }
}
