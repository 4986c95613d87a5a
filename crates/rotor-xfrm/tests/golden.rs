//! Golden bytes: rotor-xfrm's messages compared with what iproute2 sends for
//! the same request. The payloads were captured on the host with
//! `strace -e trace=sendmsg -xx -s 4096 ip <command>` (iproute2 6.1, the
//! command is above each constant; the netlink header is not compared because
//! its sequence number and flags differ by design).

use netlink_packet_core::NetlinkSerializable;
use rotor_xfrm::encode::encode;
use rotor_xfrm::{
    AeadKey, IpNet, Lifetimes, Mode, Op, Ownership, PolicyDir, PolicyId, PolicySelector,
    PolicySpec, SaId, SaSpec, UdpEncap,
};

fn hex(parts: &[&str]) -> Vec<u8> {
    let s: String = parts.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn bytes(op: &Op) -> (u16, Vec<u8>) {
    let msg = encode(&Ownership::default(), op).unwrap();
    let mut v = vec![0; NetlinkSerializable::buffer_len(&msg)];
    msg.serialize(&mut v);
    (msg.message_type(), v)
}

fn assert_same(ours: &[u8], theirs: &[u8]) {
    if ours != theirs {
        let first = ours.iter().zip(theirs).position(|(a, b)| a != b);
        panic!(
            "bytes differ: ours {} bytes, iproute2 {} bytes, first difference at {:?}",
            ours.len(),
            theirs.len(),
            first
        );
    }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    IpNet::parse(s).unwrap()
}

/// `ip ip xfrm state add src 10.9.0.1 dst 10.9.0.2 proto esp spi 0x1001 reqid 0x52540001 mode transport flag esn replay-window 1024 aead rfc4106(gcm(aes)) 0x0101010101010101010101010101010101010101 128` (XFRM_MSG_NEWSA)
const SA_ADD_V4_TRANSPORT_ESN: &[&str] = &[
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000a09000200000000",
    "000000000000000000001001320000000a090001000000000000000000000000",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000001005452020000008000000000000000",
    "60001200726663343130362867636d2861657329290000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "00000000a0000000800000000101010101010101010101010101010101010101",
    "1c001700200000000000000000000000000000000000000000040000",
];

/// `ip ip xfrm policy add src 10.9.0.1/32 dst 10.9.0.2/32 dir out priority 1000 tmpl proto esp spi 0x1001 reqid 0x52540001 mode transport` (XFRM_MSG_NEWPOLICY)
const POLICY_ADD_OUT_PINNED: &[&str] = &[
    "0a0900020000000000000000000000000a090001000000000000000000000000",
    "000000000000000002002020000000000000000000000000ffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffff0000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000e803000000000000",
    "0100000000000000440005000000000000000000000000000000000000001001",
    "3200000002000000000000000000000000000000000000000100545200000000",
    "ffffffffffffffffffffffff",
];

/// `ip ip xfrm state add src fd00:9::1 dst fd00:9::2 proto esp spi 0x1601 reqid 0x52540002 mode tunnel flag esn replay-window 64 aead rfc4106(gcm(aes)) 0x020202020202020202020202020202020202020202020202020202020202020202020202 128 encap espinudp 4500 4500 0.0.0.0` (XFRM_MSG_NEWSA)
const SA_ADD_V6_TUNNEL_ENCAP: &[&str] = &[
    "0000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000fd00000900000000",
    "00000000000000020000160132000000fd000009000000000000000000000001",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "00000000000000000000000000000000020054520a0001008000000000000000",
    "70001200726663343130362867636d2861657329290000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000020010000800000000202020202020202020202020202020202020202",
    "020202020202020202020202020202021c000400020011941194000000000000",
    "0000000000000000000000001c00170002000000000000000000000000000000",
    "0000000040000000",
];

/// `ip ip xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir fwd priority 1000 tmpl src 10.9.0.2 dst 10.9.0.1 proto esp reqid 0x52540002 mode tunnel` (XFRM_MSG_NEWPOLICY)
const POLICY_ADD_FWD_TUNNEL: &[&str] = &[
    "0a0200000000000000000000000000000a010000000000000000000000000000",
    "000000000000000002001818000000000000000000000000ffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffff0000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000e803000000000000",
    "0200000000000000440005000a09000100000000000000000000000000000000",
    "32000000020000000a0900020000000000000000000000000200545201000000",
    "ffffffffffffffffffffffff",
];

/// `ip ip xfrm policy update src 10.9.0.1/32 dst 10.9.0.2/32 dir out priority 1000 tmpl proto esp spi 0x1002 reqid 0x52540001 mode transport` (XFRM_MSG_UPDPOLICY)
const POLICY_UPDATE_OUT_SWITCH: &[&str] = &[
    "0a0900020000000000000000000000000a090001000000000000000000000000",
    "000000000000000002002020000000000000000000000000ffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffff0000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000e803000000000000",
    "0100000000000000440005000000000000000000000000000000000000001002",
    "3200000002000000000000000000000000000000000000000100545200000000",
    "ffffffffffffffffffffffff",
];

/// `ip ip xfrm state delete src 10.9.0.1 dst 10.9.0.2 proto esp spi 0x1001` (XFRM_MSG_DELSA)
const SA_DELETE: &[&str] = &[
    "0a090002000000000000000000000000000010010200320014000d000a090001",
    "000000000000000000000000",
];

/// `ip ip xfrm policy delete src 10.9.0.1/32 dst 10.9.0.2/32 dir out` (XFRM_MSG_DELPOLICY)
const POLICY_DELETE: &[&str] = &[
    "0a0900020000000000000000000000000a090001000000000000000000000000",
    "0000000000000000020020200000000000000000000000000000000001000000",
];

const K1: [u8; 20] = [1; 20];
const K2: [u8; 36] = [2; 36];

#[test]
fn sa_add_v4_transport_esn_matches_iproute2() {
    let (t, b) = bytes(&Op::AddSa(SaSpec {
        src: ip("10.9.0.1"),
        dst: ip("10.9.0.2"),
        spi: 0x1001,
        reqid: 0x5254_0001,
        mode: Mode::Transport,
        key: AeadKey::new(K1.to_vec()).unwrap(),
        replay_window: 1024,
        esn: true,
        encap: None,
        lifetimes: Lifetimes::default(),
        selector: None,
    }));
    assert_eq!(t, 0x10);
    assert_same(&b, &hex(SA_ADD_V4_TRANSPORT_ESN));
}

#[test]
fn sa_add_v6_tunnel_encap_matches_iproute2() {
    let (t, b) = bytes(&Op::AddSa(SaSpec {
        src: ip("fd00:9::1"),
        dst: ip("fd00:9::2"),
        spi: 0x1601,
        reqid: 0x5254_0002,
        mode: Mode::Tunnel,
        key: AeadKey::new(K2.to_vec()).unwrap(),
        replay_window: 64,
        esn: true,
        encap: Some(UdpEncap {
            sport: 4500,
            dport: 4500,
        }),
        lifetimes: Lifetimes::default(),
        selector: None,
    }));
    assert_eq!(t, 0x10);
    assert_same(&b, &hex(SA_ADD_V6_TUNNEL_ENCAP));
}

fn out_policy(spi: u32) -> PolicySpec {
    PolicySpec {
        id: PolicyId {
            dir: PolicyDir::Out,
            selector: PolicySelector {
                src: net("10.9.0.1/32"),
                dst: net("10.9.0.2/32"),
                proto: None,
                sport: None,
            },
        },
        priority: 1000,
        tmpl_endpoints: None,
        spi,
        reqid: 0x5254_0001,
        mode: Mode::Transport,
        block: false,
    }
}

#[test]
fn policy_add_out_pinned_matches_iproute2() {
    let (t, b) = bytes(&Op::AddPolicy(out_policy(0x1001)));
    assert_eq!(t, 0x13);
    assert_same(&b, &hex(POLICY_ADD_OUT_PINNED));
}

#[test]
fn policy_update_matches_iproute2() {
    let (t, b) = bytes(&Op::UpdatePolicy(out_policy(0x1002)));
    assert_eq!(t, 0x19);
    assert_same(&b, &hex(POLICY_UPDATE_OUT_SWITCH));
}

#[test]
fn policy_add_fwd_tunnel_matches_iproute2() {
    let (t, b) = bytes(&Op::AddPolicy(PolicySpec {
        id: PolicyId {
            dir: PolicyDir::Fwd,
            selector: PolicySelector {
                src: net("10.1.0.0/24"),
                dst: net("10.2.0.0/24"),
                proto: None,
                sport: None,
            },
        },
        priority: 1000,
        tmpl_endpoints: Some((ip("10.9.0.2"), ip("10.9.0.1"))),
        spi: 0,
        reqid: 0x5254_0002,
        mode: Mode::Tunnel,
        block: false,
    }));
    assert_eq!(t, 0x13);
    assert_same(&b, &hex(POLICY_ADD_FWD_TUNNEL));
}

#[test]
fn sa_delete_matches_iproute2_fixed_part() {
    // iproute2 also sends XFRMA_SRCADDR; the kernel needs only the id.
    let (t, b) = bytes(&Op::DeleteSa(SaId {
        dst: ip("10.9.0.2"),
        spi: 0x1001,
    }));
    assert_eq!(t, 0x11);
    let theirs = hex(SA_DELETE);
    assert_same(&b, &theirs[..b.len()]);
}

#[test]
fn policy_delete_matches_iproute2() {
    let (t, b) = bytes(&Op::DeletePolicy(out_policy(0).id));
    assert_eq!(t, 0x14);
    assert_same(&b, &hex(POLICY_DELETE));
}
