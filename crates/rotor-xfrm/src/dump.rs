//! What the kernel reports back: SAs with their counters, and policies, as
//! read by a dump. Key bytes that the kernel includes in SA dumps are wiped as
//! soon as the entry is parsed; they are never kept.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_xfrm::{
    Address, Selector, UserPolicyInfo, XFRM_MSG_NEWPOLICY, XFRM_MSG_NEWSA, XfrmAttrs, XfrmMessage,
    constants::AF_INET6,
};

use crate::encode::{is_rfc4106, scrub};
use crate::ownership::Ownership;
use crate::spec::{IpNet, Mode, PolicyDir, PolicyId, PolicySelector, SaId};

/// One SA as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaInfo {
    /// Destination and SPI.
    pub id: SaId,
    /// Outer source address.
    pub src: IpAddr,
    /// Request id.
    pub reqid: u32,
    /// Mode, `None` for modes rotor never installs.
    pub mode: Option<Mode>,
    /// IP protocol of the SA (50 for ESP).
    pub proto: u8,
    /// Whether its AEAD is `rfc4106(gcm(aes))`.
    pub rfc4106: bool,
    /// AEAD key length in bits including the salt (160 or 288), 0 without AEAD.
    pub aead_key_bits: u32,
    /// Packets processed by this SA.
    pub packets: u64,
    /// Bytes processed by this SA.
    pub bytes: u64,
    /// Packets dropped as replays.
    pub replay_drops: u32,
    /// Packets that failed integrity checks.
    pub integrity_failed: u32,
    /// Anti-replay window (from the ESN attribute when present).
    pub replay_window: u32,
    /// Whether the SA uses extended sequence numbers.
    pub esn: bool,
    /// Whether the SA is ESP-in-UDP encapsulated.
    pub encap: bool,
    /// Seconds since the epoch when the SA was added.
    pub add_time: u64,
}

/// One policy as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// Direction and selector; `None` for socket policies and unknown directions.
    pub id: Option<PolicyId>,
    /// Priority.
    pub priority: u32,
    /// Kernel index.
    pub index: u32,
    /// (spi, reqid, mode) of each template.
    pub templates: Vec<(u32, u32, Option<Mode>)>,
    /// Whether the policy drops its traffic (action block).
    pub block: bool,
    /// Whether the policy carries a mark or interface id (it cannot be deleted
    /// by selector alone then; rotor never installs such policies).
    pub has_mark_or_ifid: bool,
}

/// What [`crate::Kernel::dump_owned`] found: the SAs whose reqid, and the
/// policies any of whose templates' reqid, lies in the handle's ownership
/// range (in no particular order). Template-less (bypass) policies carry no
/// reqid and are never in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedObjects {
    /// rotor's SAs.
    pub sas: Vec<SaInfo>,
    /// rotor's policies.
    pub policies: Vec<PolicyInfo>,
}

impl PolicyInfo {
    /// Whether any template names a reqid in `own`'s range: rotor's policy.
    pub fn owned_by(&self, own: &Ownership) -> bool {
        self.templates.iter().any(|(_, reqid, _)| own.owns(*reqid))
    }
}

pub(crate) fn ip(addr: &Address, family: u16) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(addr.addr))
    } else {
        let a = addr.addr;
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

fn net(addr: &Address, prefix: u8, family: u16) -> IpNet {
    IpNet {
        addr: ip(addr, family),
        prefix,
    }
}

pub(crate) fn policy_selector(sel: &Selector) -> PolicySelector {
    PolicySelector {
        src: net(&sel.saddr, sel.prefixlen_s, sel.family),
        dst: net(&sel.daddr, sel.prefixlen_d, sel.family),
        proto: (sel.proto != 0).then_some(sel.proto),
        sport: (sel.sport_mask != 0).then_some(sel.sport),
    }
}

/// Size of `struct xfrm_usersa_info`, the fixed part of an SA message.
const SA_INFO_LEN: usize = netlink_packet_xfrm::XFRM_USER_SA_INFO_LEN;

fn policy_info_len() -> usize {
    UserPolicyInfo::default().buffer_len()
}

/// Parses one dump entry of type NEWSA. Returns `None` for anything else or
/// anything too short to parse safely (netlink-packet-xfrm panics on short
/// input, so lengths are checked here first).
pub(crate) fn parse_sa(kind: u16, payload: &[u8]) -> Option<SaInfo> {
    if kind != XFRM_MSG_NEWSA || payload.len() < SA_INFO_LEN {
        return None;
    }
    let mut msg = XfrmMessage::parse_with_param(payload, kind).ok()?;
    let info = match &msg {
        XfrmMessage::AddSa(m) => {
            let i = &m.user_sa_info;
            let mut out = SaInfo {
                id: SaId {
                    dst: ip(&i.id.daddr, i.family),
                    spi: i.id.spi,
                },
                src: ip(&i.saddr, i.family),
                reqid: i.reqid,
                mode: Mode::from_kernel(i.mode),
                proto: i.id.proto,
                rfc4106: false,
                aead_key_bits: 0,
                packets: i.lifetime_cur.packets,
                bytes: i.lifetime_cur.bytes,
                replay_drops: i.stats.replay,
                integrity_failed: i.stats.integrity_failed,
                replay_window: u32::from(i.replay_window),
                esn: i.flags & netlink_packet_xfrm::XFRM_STATE_ESN != 0,
                encap: false,
                add_time: i.lifetime_cur.add_time,
            };
            for nla in &m.nlas {
                match nla {
                    XfrmAttrs::EncryptionAlgAead(a) => {
                        out.rfc4106 = is_rfc4106(a);
                        out.aead_key_bits = a.alg_key_len;
                    }
                    XfrmAttrs::ReplayStateEsn(r) => out.replay_window = r.replay_window,
                    XfrmAttrs::EncapsulationTemplate(_) => out.encap = true,
                    _ => {}
                }
            }
            Some(out)
        }
        _ => None,
    };
    scrub(&mut msg);
    info
}

/// Parses one dump entry of type NEWPOLICY (see [`parse_sa`] on safety).
pub(crate) fn parse_policy(kind: u16, payload: &[u8]) -> Option<PolicyInfo> {
    if kind != XFRM_MSG_NEWPOLICY || payload.len() < policy_info_len() {
        return None;
    }
    match XfrmMessage::parse_with_param(payload, kind).ok()? {
        XfrmMessage::AddPolicy(m) => {
            let i = &m.user_policy_info;
            let mut templates = Vec::new();
            let mut has_mark_or_ifid = false;
            for nla in &m.nlas {
                match nla {
                    XfrmAttrs::Template(ts) => {
                        templates.extend(
                            ts.iter()
                                .map(|t| (t.id.spi, t.reqid, Mode::from_kernel(t.mode))),
                        );
                    }
                    XfrmAttrs::Mark(_) | XfrmAttrs::IfId(_) => has_mark_or_ifid = true,
                    _ => {}
                }
            }
            let id = PolicyDir::from_kernel(i.direction).map(|dir| PolicyId {
                dir,
                selector: policy_selector(&i.selector),
            });
            Some(PolicyInfo {
                id,
                priority: i.priority,
                index: i.index,
                block: i.action == netlink_packet_xfrm::XFRM_POLICY_BLOCK,
                templates,
                has_mark_or_ifid,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::encode;
    use crate::spec::{AeadKey, Lifetimes, Op, PolicySpec, SaSpec};
    use netlink_packet_core::NetlinkSerializable;

    fn emit(msg: &XfrmMessage) -> Vec<u8> {
        let mut v = vec![0; NetlinkSerializable::buffer_len(msg)];
        msg.serialize(&mut v);
        v
    }

    #[test]
    fn sa_round_trips_through_encode_and_dump_parse() {
        let own = Ownership::default();
        let spec = SaSpec {
            src: "10.9.0.1".parse().unwrap(),
            dst: "10.9.0.2".parse().unwrap(),
            spi: 0x2001,
            reqid: own.reqid_for(3).unwrap(),
            mode: Mode::Transport,
            key: AeadKey::new(vec![7; 36]).unwrap(),
            replay_window: 1024,
            esn: true,
            encap: None,
            lifetimes: Lifetimes::default(),
            selector: None,
        };
        let msg = encode(&own, &Op::AddSa(spec)).unwrap();
        let bytes = emit(&msg);
        let info = parse_sa(XFRM_MSG_NEWSA, &bytes).unwrap();
        assert_eq!(info.id.spi, 0x2001);
        assert_eq!(info.id.dst, "10.9.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(info.src, "10.9.0.1".parse::<IpAddr>().unwrap());
        assert!(own.owns(info.reqid));
        assert!(info.rfc4106);
        assert_eq!(info.aead_key_bits, 288);
        assert_eq!(info.replay_window, 1024);
        assert!(info.esn);
    }

    #[test]
    fn policy_round_trips() {
        let own = Ownership::default();
        let spec = PolicySpec {
            id: PolicyId {
                dir: PolicyDir::Out,
                selector: PolicySelector {
                    src: IpNet::parse("fd00::1").unwrap(),
                    dst: IpNet::parse("fd00::2").unwrap(),
                    proto: None,
                    sport: None,
                },
            },
            priority: 1000,
            tmpl_endpoints: None,
            spi: 0x3003,
            reqid: own.base(),
            mode: Mode::Transport,
            block: false,
        };
        let msg = encode(&own, &Op::AddPolicy(spec.clone())).unwrap();
        let info = parse_policy(XFRM_MSG_NEWPOLICY, &emit(&msg)).unwrap();
        assert_eq!(info.id, Some(spec.id));
        assert_eq!(
            info.templates,
            vec![(0x3003, own.base(), Some(Mode::Transport))]
        );
        assert!(info.owned_by(&own));
        assert!(!info.owned_by(&Ownership::new(1, 100).unwrap()));
    }

    #[test]
    fn short_or_foreign_entries_are_ignored_not_panicking() {
        for len in [0, 1, 16, SA_INFO_LEN - 1] {
            assert!(parse_sa(XFRM_MSG_NEWSA, &vec![0; len]).is_none());
            assert!(parse_policy(XFRM_MSG_NEWPOLICY, &vec![0; len.min(100)]).is_none());
        }
        assert!(parse_sa(XFRM_MSG_NEWPOLICY, &[0; 300]).is_none());
    }
}
