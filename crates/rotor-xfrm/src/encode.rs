//! Turns [`Op`]s into XFRM netlink messages (payload types from
//! `netlink-packet-xfrm`), checking every value first.
//!
//! Key bytes are copied into the message only here; callers serialize the
//! message at once and [`scrub`] it afterwards, so no key outlives the write.

use std::net::IpAddr;

use netlink_packet_xfrm::{
    Address, AlgAead, EncapTmpl, LifetimeConfig, MigrateMessage, ReplayEsn, Selector, UserMigrate,
    UserPolicyId, UserPolicyInfo, UserSaId, UserSaInfo, UserTemplate, XFRM_POLICY_ALLOW,
    XFRM_POLICY_BLOCK, XFRM_STATE_ESN, XfrmAttrs, XfrmMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_ESP, UDP_ENCAP_ESPINUDP},
    policy::{DelGetMessage as PolicyDelGet, ModifyMessage as PolicyModify},
    state::{DelGetMessage as SaDelGet, ModifyMessage as SaModify},
};
use zeroize::Zeroize;

use crate::error::SpecError;
use crate::ownership::Ownership;
use crate::spec::{
    IpNet, Lifetimes, MAX_REPLAY_WINDOW, Mode, Op, PolicyId, PolicySelector, PolicySpec, SaId,
    SaMigrate, SaSpec, UdpEncap,
};

/// The AEAD the kernel is asked for: AES-GCM with an implicit 4-byte salt.
pub const AEAD_ALG: &str = "rfc4106(gcm(aes))";
/// ICV (tag) length in bits.
pub const AEAD_ICV_BITS: u32 = 128;

fn family(addr: &IpAddr) -> u16 {
    if addr.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn selector(src: &IpNet, dst: &IpNet, proto: Option<u8>, sport: Option<u16>) -> Selector {
    let mut sel = Selector::default();
    sel.source_prefix(&src.addr, src.prefix);
    sel.destination_prefix(&dst.addr, dst.prefix);
    // source_prefix() leaves the family unset for unspecified addresses.
    sel.family = family(&src.addr);
    sel.proto = proto.unwrap_or(0);
    if let Some(port) = sport {
        sel.sport = port;
        sel.sport_mask = 0xffff;
    }
    sel
}

fn check_spi(spi: u32) -> Result<(), SpecError> {
    if spi <= 255 {
        return Err(SpecError::ReservedSpi(spi));
    }
    Ok(())
}

fn check_reqid(own: &Ownership, reqid: u32) -> Result<(), SpecError> {
    if !own.owns(reqid) {
        return Err(SpecError::ForeignReqid(reqid));
    }
    Ok(())
}

/// Refuses lifetime pairs that cannot be meant (see
/// [`SpecError::BadLifetime`]).
fn check_lifetimes(l: &Lifetimes) -> Result<(), SpecError> {
    for (which, pair, soft_min) in [
        ("seconds", l.add_seconds, 0),
        ("packets", l.packets, 1),
        ("bytes", l.bytes, 1),
    ] {
        if let Some((soft, hard)) = pair
            && (hard == 0 || soft > hard || soft < soft_min)
        {
            return Err(SpecError::BadLifetime { which, soft, hard });
        }
    }
    Ok(())
}

/// `xfrm_usersa_info.lft`: unset byte and packet limits stay `XFRM_INF`,
/// unset seconds 0 (the kernel's "none"); `use` lifetimes are never set.
fn lifetime_config(l: &Lifetimes) -> LifetimeConfig {
    let mut cfg = LifetimeConfig::default();
    if let Some((soft, hard)) = l.bytes {
        cfg.soft_byte_limit = soft;
        cfg.hard_byte_limit = hard;
    }
    if let Some((soft, hard)) = l.packets {
        cfg.soft_packet_limit = soft;
        cfg.hard_packet_limit = hard;
    }
    if let Some((soft, hard)) = l.add_seconds {
        cfg.soft_add_expires_seconds = soft;
        cfg.hard_add_expires_seconds = hard;
    }
    cfg
}

fn sa_message(own: &Ownership, s: &SaSpec) -> Result<SaModify, SpecError> {
    check_spi(s.spi)?;
    check_reqid(own, s.reqid)?;
    if s.src.is_ipv4() != s.dst.is_ipv4() {
        return Err(SpecError::MixedFamilies("SA source and destination"));
    }
    if s.replay_window > MAX_REPLAY_WINDOW {
        return Err(SpecError::ReplayWindowTooLarge(s.replay_window));
    }
    if s.esn && s.replay_window == 0 {
        return Err(SpecError::EsnWithoutWindow);
    }
    check_lifetimes(&s.lifetimes)?;
    let mut info = UserSaInfo::default();
    info.source(&s.src);
    info.destination(&s.dst);
    info.id.spi = s.spi;
    info.id.proto = IPPROTO_ESP;
    info.reqid = s.reqid;
    info.mode = s.mode.to_kernel();
    info.lifetime_cfg = lifetime_config(&s.lifetimes);
    if let Some((src, dst)) = &s.selector {
        if src.addr.is_ipv4() != dst.addr.is_ipv4() {
            return Err(SpecError::MixedFamilies("SA selector"));
        }
        if s.mode == Mode::Transport && src.addr.is_ipv4() != s.src.is_ipv4() {
            return Err(SpecError::MixedFamilies(
                "transport SA selector and addresses",
            ));
        }
        info.selector = selector(src, dst, None, None);
    }

    let mut alg_name = [0u8; netlink_packet_xfrm::XFRM_ALG_AEAD_NAME_LEN];
    alg_name[..AEAD_ALG.len()].copy_from_slice(AEAD_ALG.as_bytes());
    let key = s.key.as_bytes().to_vec();
    let mut nlas = vec![XfrmAttrs::EncryptionAlgAead(AlgAead {
        alg_name,
        alg_key_len: (key.len() * 8) as u32,
        alg_icv_len: AEAD_ICV_BITS,
        alg_key: key,
    })];
    // Attribute order follows iproute2 (AEAD, encap, replay) so the golden
    // tests can compare bytes.
    if let Some(e) = &s.encap {
        nlas.push(encap_attr(e));
    }
    // Windows above 255, and ESN itself, exist only in the ESN attribute; the
    // legacy u8 field must then be 0. The attribute is sent without its bitmap,
    // as iproute2 does: the kernel allocates a zeroed one of bmp_len words.
    let esn_attr = |window: u32| {
        XfrmAttrs::ReplayStateEsn(ReplayEsn {
            bmp_len: window.div_ceil(32),
            oseq: 0,
            seq: 0,
            oseq_hi: 0,
            seq_hi: 0,
            replay_window: window,
            bmp: vec![],
        })
    };
    if s.esn {
        info.flags |= XFRM_STATE_ESN;
        nlas.push(esn_attr(s.replay_window));
    } else if s.replay_window <= u32::from(u8::MAX) {
        info.replay_window = s.replay_window as u8;
    } else {
        nlas.push(esn_attr(s.replay_window));
    }
    Ok(SaModify {
        user_sa_info: info,
        nlas,
    })
}

fn policy_message(own: &Ownership, p: &PolicySpec) -> Result<PolicyModify, SpecError> {
    check_reqid(own, p.reqid)?;
    if p.spi != 0 {
        check_spi(p.spi)?;
    }
    let sel = &p.id.selector;
    if sel.src.addr.is_ipv4() != sel.dst.addr.is_ipv4() {
        return Err(SpecError::MixedFamilies("policy selector"));
    }
    let mut info = UserPolicyInfo {
        selector: selector(&sel.src, &sel.dst, sel.proto, sel.sport),
        direction: p.id.dir.to_kernel(),
        action: if p.block {
            XFRM_POLICY_BLOCK
        } else {
            XFRM_POLICY_ALLOW
        },
        priority: p.priority,
        ..Default::default()
    };
    info.lifetime_cfg = LifetimeConfig::default();
    let mut tmpl = UserTemplate::default();
    tmpl.protocol(IPPROTO_ESP);
    tmpl.spi(p.spi);
    tmpl.reqid(p.reqid);
    tmpl.mode(p.mode.to_kernel());
    match (p.mode, p.tmpl_endpoints) {
        (Mode::Tunnel, Some((src, dst))) => {
            if src.is_ipv4() != dst.is_ipv4() {
                return Err(SpecError::MixedFamilies("tunnel endpoints"));
            }
            tmpl.source(&src);
            tmpl.destination(&dst);
        }
        (Mode::Tunnel, None) => return Err(SpecError::TunnelWithoutEndpoints),
        (Mode::Transport, _) => {
            tmpl.family = family(&sel.src.addr);
        }
    }
    Ok(PolicyModify {
        user_policy_info: info,
        nlas: vec![XfrmAttrs::Template(vec![tmpl])],
    })
}

/// An allow policy with no template: clear text for what it selects.
fn bypass_message(id: &PolicyId, priority: u32) -> Result<PolicyModify, SpecError> {
    let sel = &id.selector;
    if sel.src.addr.is_ipv4() != sel.dst.addr.is_ipv4() {
        return Err(SpecError::MixedFamilies("policy selector"));
    }
    let mut info = UserPolicyInfo {
        selector: selector(&sel.src, &sel.dst, sel.proto, sel.sport),
        direction: id.dir.to_kernel(),
        action: XFRM_POLICY_ALLOW,
        priority,
        ..Default::default()
    };
    info.lifetime_cfg = LifetimeConfig::default();
    Ok(PolicyModify {
        user_policy_info: info,
        nlas: vec![],
    })
}

fn encap_attr(e: &UdpEncap) -> XfrmAttrs {
    XfrmAttrs::EncapsulationTemplate(EncapTmpl {
        encap_type: UDP_ENCAP_ESPINUDP,
        encap_sport: e.sport,
        encap_dport: e.dport,
        encap_oa: Address::default(),
    })
}

/// `XFRM_MSG_MIGRATE` for one SA: the policy's id, one `XFRMA_MIGRATE`
/// entry and, for ESP in UDP, `XFRMA_ENCAP` (which the kernel applies to
/// every SA the message moves, hence one SA per message).
fn migrate_message(own: &Ownership, m: &SaMigrate) -> Result<MigrateMessage, SpecError> {
    check_reqid(own, m.reqid)?;
    let v4 = m.old.0.is_ipv4();
    if [m.old.1, m.new.0, m.new.1]
        .iter()
        .any(|a| a.is_ipv4() != v4)
    {
        return Err(SpecError::MixedFamilies("SA migration addresses"));
    }
    // The kernel refuses an unspecified new address (EINVAL).
    if m.new.0.is_unspecified() || m.new.1.is_unspecified() {
        return Err(SpecError::UnspecifiedAddress(
            "an SA migration's new address",
        ));
    }
    let fam = family(&m.old.0);
    let mut nlas = vec![XfrmAttrs::Migrate(UserMigrate {
        old_daddr: Address::from_ip(&m.old.1),
        old_saddr: Address::from_ip(&m.old.0),
        new_daddr: Address::from_ip(&m.new.1),
        new_saddr: Address::from_ip(&m.new.0),
        proto: IPPROTO_ESP,
        mode: m.mode.to_kernel(),
        reserved: 0,
        reqid: m.reqid,
        old_family: fam,
        new_family: fam,
    })];
    if let Some(e) = &m.encap {
        nlas.push(encap_attr(e));
    }
    Ok(MigrateMessage {
        user_policy_id: policy_id(&m.policy),
        nlas,
    })
}

/// The netlink identity of an SA for delete/get.
pub(crate) fn sa_id_message(id: &SaId) -> SaDelGet {
    let mut sid = UserSaId::default();
    sid.destination(&id.dst);
    sid.spi = id.spi;
    sid.proto = IPPROTO_ESP;
    SaDelGet {
        user_sa_id: sid,
        nlas: vec![],
    }
}

/// The netlink identity of a policy for delete/get.
pub(crate) fn policy_id_message(id: &PolicyId) -> PolicyDelGet {
    PolicyDelGet {
        user_policy_id: policy_id(id),
        nlas: vec![],
    }
}

pub(crate) fn policy_id(id: &PolicyId) -> UserPolicyId {
    let PolicySelector {
        src,
        dst,
        proto,
        sport,
    } = &id.selector;
    UserPolicyId {
        selector: selector(src, dst, *proto, *sport),
        index: 0,
        direction: id.dir.to_kernel(),
    }
}

/// Builds the message for one operation, or says which value is wrong.
pub fn encode(own: &Ownership, op: &Op) -> Result<XfrmMessage, SpecError> {
    Ok(match op {
        Op::AddSa(s) => XfrmMessage::AddSa(sa_message(own, s)?),
        Op::UpdateSa(s) => XfrmMessage::UpdateSa(sa_message(own, s)?),
        Op::DeleteSa(id) => XfrmMessage::DeleteSa(sa_id_message(id)),
        Op::MigrateSa(m) => XfrmMessage::Migrate(migrate_message(own, m)?),
        Op::AddPolicy(p) => XfrmMessage::AddPolicy(policy_message(own, p)?),
        Op::UpdatePolicy(p) => XfrmMessage::UpdatePolicy(policy_message(own, p)?),
        Op::DeletePolicy(id) => XfrmMessage::DeletePolicy(policy_id_message(id)),
        Op::UpdateBypassPolicy { id, priority } => {
            XfrmMessage::UpdatePolicy(bypass_message(id, *priority)?)
        }
    })
}

/// Wipes any key bytes held in a message (after it has been serialized).
pub fn scrub(msg: &mut XfrmMessage) {
    let nlas = match msg {
        XfrmMessage::AddSa(m) | XfrmMessage::UpdateSa(m) => &mut m.nlas,
        _ => return,
    };
    for nla in nlas.iter_mut() {
        match nla {
            XfrmAttrs::EncryptionAlgAead(a) => a.alg_key.zeroize(),
            XfrmAttrs::EncryptionAlg(a) | XfrmAttrs::AuthenticationAlg(a) => a.alg_key.zeroize(),
            XfrmAttrs::AuthenticationAlgTrunc(a) => a.alg_key.zeroize(),
            _ => {}
        }
    }
}

/// Whether an SA is encrypted with `rfc4106(gcm(aes))` (for tests and dumps).
pub(crate) fn is_rfc4106(a: &AlgAead) -> bool {
    let end = a
        .alg_name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(a.alg_name.len());
    &a.alg_name[..end] == AEAD_ALG.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::AeadKey;
    use netlink_packet_core::NetlinkSerializable;
    use netlink_packet_xfrm::XFRM_INF;

    fn spec(lifetimes: Lifetimes) -> SaSpec {
        SaSpec {
            src: "10.9.0.1".parse().unwrap(),
            dst: "10.9.0.2".parse().unwrap(),
            spi: 0x1001,
            reqid: Ownership::default().base(),
            mode: Mode::Transport,
            key: AeadKey::new(vec![1; 20]).unwrap(),
            replay_window: 64,
            esn: false,
            encap: None,
            lifetimes,
            selector: None,
        }
    }

    /// The eight u64s of `xfrm_usersa_info.lft` (`struct
    /// xfrm_lifetime_cfg`): at offset 96, after the selector (56 bytes),
    /// the id (24) and saddr (16).
    fn lft(l: Lifetimes) -> [u64; 8] {
        let msg = encode(&Ownership::default(), &Op::AddSa(spec(l))).unwrap();
        let mut v = vec![0; NetlinkSerializable::buffer_len(&msg)];
        msg.serialize(&mut v);
        let mut out = [0u64; 8];
        for (i, o) in out.iter_mut().enumerate() {
            let at = 96 + 8 * i;
            *o = u64::from_ne_bytes(v[at..at + 8].try_into().unwrap());
        }
        v.zeroize();
        out
    }

    #[test]
    fn lifetimes_land_in_the_kernel_fields() {
        // soft_byte, hard_byte, soft_packet, hard_packet, soft_add,
        // hard_add, soft_use, hard_use.
        assert_eq!(
            lft(Lifetimes::default()),
            [XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0]
        );
        assert_eq!(
            lft(Lifetimes {
                add_seconds: Some((3240, 3600)),
                packets: None,
                bytes: None,
            }),
            [XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 3240, 3600, 0, 0]
        );
        assert_eq!(
            lft(Lifetimes {
                add_seconds: Some((0, 60)),
                packets: Some((1000, 2000)),
                bytes: Some((1 << 30, 1 << 31)),
            }),
            [1 << 30, 1 << 31, 1000, 2000, 0, 60, 0, 0]
        );
    }

    #[test]
    fn lifetimes_that_cannot_be_meant_are_refused() {
        let bad = [
            Lifetimes {
                add_seconds: Some((10, 0)),
                ..Default::default()
            },
            Lifetimes {
                add_seconds: Some((0, 0)),
                ..Default::default()
            },
            Lifetimes {
                add_seconds: Some((61, 60)),
                ..Default::default()
            },
            Lifetimes {
                packets: Some((0, 100)),
                ..Default::default()
            },
            Lifetimes {
                bytes: Some((200, 100)),
                ..Default::default()
            },
        ];
        for l in bad {
            let e = encode(&Ownership::default(), &Op::AddSa(spec(l))).unwrap_err();
            assert!(matches!(e, SpecError::BadLifetime { .. }), "{l:?}: {e}");
            let e = encode(&Ownership::default(), &Op::UpdateSa(spec(l))).unwrap_err();
            assert!(matches!(e, SpecError::BadLifetime { .. }), "{l:?}: {e}");
        }
        let ok = Lifetimes {
            add_seconds: Some((60, 60)),
            packets: Some((1, 1)),
            bytes: None,
        };
        assert!(encode(&Ownership::default(), &Op::AddSa(spec(ok))).is_ok());
    }

    fn migration(encap: Option<UdpEncap>) -> SaMigrate {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        SaMigrate {
            policy: PolicyId {
                dir: crate::spec::PolicyDir::Out,
                selector: PolicySelector {
                    src: IpNet::host(a("10.9.0.1")),
                    dst: IpNet::host(a("10.9.0.2")),
                    proto: None,
                    sport: None,
                },
            },
            old: (a("10.9.0.1"), a("10.9.0.2")),
            new: (a("10.9.0.1"), a("10.9.0.12")),
            reqid: Ownership::default().base() + 7,
            mode: Mode::Transport,
            encap,
            spi: 0x1001,
        }
    }

    fn payload(op: &Op) -> (u16, Vec<u8>) {
        let msg = encode(&Ownership::default(), op).unwrap();
        let mut v = vec![0; NetlinkSerializable::buffer_len(&msg)];
        msg.serialize(&mut v);
        (msg.message_type(), v)
    }

    /// The layout `xfrm_do_migrate` reads (include/uapi/linux/xfrm.h):
    /// `xfrm_userpolicy_id` (selector, index, dir), then `XFRMA_MIGRATE`
    /// holding one 76-byte `xfrm_user_migrate` (old daddr, old saddr, new
    /// daddr, new saddr, proto, mode, reserved, reqid, families), then
    /// `XFRMA_ENCAP` (type, sport, dport in network order, pad, oa).
    #[test]
    fn migrate_has_the_kernels_layout() {
        let (ty, v) = payload(&Op::MigrateSa(migration(Some(UdpEncap {
            sport: 4820,
            dport: 20001,
        }))));
        assert_eq!(ty, 0x21, "XFRM_MSG_MIGRATE");
        assert_eq!(v.len(), 64 + 4 + 76 + 4 + 24);
        // Selector: daddr at 0, saddr at 16, family at 40 (u16), then the
        // index (u32 at 56) and the direction (u8 at 60: out is 1).
        assert_eq!(&v[0..4], &[10, 9, 0, 2]);
        assert_eq!(&v[16..20], &[10, 9, 0, 1]);
        assert_eq!(u16::from_ne_bytes([v[40], v[41]]), AF_INET);
        assert_eq!(v[60], 1);
        let m = &v[64..];
        assert_eq!(u16::from_ne_bytes([m[0], m[1]]), 80, "nla_len");
        assert_eq!(u16::from_ne_bytes([m[2], m[3]]), 17, "XFRMA_MIGRATE");
        let um = &m[4..80];
        assert_eq!(&um[0..4], &[10, 9, 0, 2], "old daddr");
        assert_eq!(&um[16..20], &[10, 9, 0, 1], "old saddr");
        assert_eq!(&um[32..36], &[10, 9, 0, 12], "new daddr");
        assert_eq!(&um[48..52], &[10, 9, 0, 1], "new saddr");
        assert_eq!((um[64], um[65]), (IPPROTO_ESP, 0), "proto esp, transport");
        assert_eq!(
            u32::from_ne_bytes([um[68], um[69], um[70], um[71]]),
            Ownership::default().base() + 7
        );
        assert_eq!(u16::from_ne_bytes([um[72], um[73]]), AF_INET);
        assert_eq!(u16::from_ne_bytes([um[74], um[75]]), AF_INET);
        let e = &m[80..];
        assert_eq!(u16::from_ne_bytes([e[0], e[1]]), 28, "nla_len");
        assert_eq!(u16::from_ne_bytes([e[2], e[3]]), 4, "XFRMA_ENCAP");
        assert_eq!(u16::from_ne_bytes([e[4], e[5]]), UDP_ENCAP_ESPINUDP);
        assert_eq!(&e[6..8], &4820u16.to_be_bytes());
        assert_eq!(&e[8..10], &20001u16.to_be_bytes());

        let (_, plain) = payload(&Op::MigrateSa(migration(None)));
        assert_eq!(plain.len(), 64 + 4 + 76, "no XFRMA_ENCAP without encap");
        assert_eq!(&plain[..], &v[..144]);
    }

    #[test]
    fn migrations_that_cannot_be_meant_are_refused() {
        let own = Ownership::default();
        let mut m = migration(None);
        m.reqid = 1;
        assert_eq!(
            encode(&own, &Op::MigrateSa(m)).unwrap_err(),
            SpecError::ForeignReqid(1)
        );
        let mut m = migration(None);
        m.new.1 = "fd00::2".parse().unwrap();
        assert!(matches!(
            encode(&own, &Op::MigrateSa(m)),
            Err(SpecError::MixedFamilies(_))
        ));
        let mut m = migration(None);
        m.new.1 = "0.0.0.0".parse().unwrap();
        assert!(matches!(
            encode(&own, &Op::MigrateSa(m)),
            Err(SpecError::UnspecifiedAddress(_))
        ));
    }
}
