//! How the hub moves a node's SAs when the node turns up elsewhere: in
//! place where the caller can (`Hub::set_move_in_place`), state and all,
//! or removed and re-installed or re-keyed.

use std::net::SocketAddr;

use rotor_core::{
    Action, Hub, HubConfig, KeyBits, Node, NodeConfig, NodeSpec, Now, PeerId, SaDir, Secret32, Time,
};

const UNIX_MS: u64 = 1_750_000_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn pair(in_place: bool) -> (Hub, Node) {
    let cfg = HubConfig {
        nodes: vec![NodeSpec {
            name: "mn1".to_string(),
            psk: Secret32::new([1; 32]),
            rotate_interval_ms: 3_600_000,
        }],
        grace_ms: 1_000,
        key_bits: KeyBits::Aes128,
        init_skew_ms: 60_000,
        ratchet_epoch_ms: rotor_core::config::DEFAULT_RATCHET_EPOCH_MS,
        ratchet_every: rotor_core::config::DEFAULT_RATCHET_EVERY,
    };
    let mut h = Hub::new(cfg, Now::new(Time(0), UNIX_MS), [7; 32]).expect("hub config");
    h.set_move_in_place(in_place);
    h.start();
    let mut n = Node::new(
        NodeConfig {
            name: "mn1".to_string(),
            psk: Secret32::new([1; 32]),
            hello_interval_ms: 1_000,
            retries: 3,
            grace_ms: 1_000,
            key_bits: KeyBits::Aes128,
        },
        Now::new(Time(0), UNIX_MS),
        [3; 32],
    )
    .expect("node config");
    // Behind a NAT: it sends from a private address.
    n.set_path(addr("192.168.1.11:4820"), false);
    (h, n)
}

/// The node's timers at `t` ms, then every datagram both ways until
/// neither sends (the node's arrive from `from`); the hub's actions.
fn step(h: &mut Hub, n: &mut Node, t: u64, from: SocketAddr) -> Vec<Action> {
    let now = Now::new(Time(t), UNIX_MS + t);
    n.handle_timeout(now);
    h.handle_timeout(now);
    let mut seen = Vec::new();
    loop {
        let mut quiet = true;
        while let Some(a) = n.poll_action() {
            if let Action::Send { datagram, .. } = a {
                quiet = false;
                h.handle_datagram(now, from, &datagram);
            }
        }
        while let Some(a) = h.poll_action() {
            if let Action::Send { datagram, .. } = &a {
                quiet = false;
                n.handle_datagram(now, addr("192.0.2.1:4820"), datagram);
            }
            seen.push(a);
        }
        if quiet {
            return seen;
        }
    }
}

/// A node in sync behind a NAT at 198.51.100.1:4820, and the hub's
/// outbound SPI.
fn settled(in_place: bool) -> (Hub, Node, u64, u32) {
    let (mut h, mut n) = pair(in_place);
    let nat = addr("198.51.100.1:4820");
    let mut t = 0;
    for _ in 0..6 {
        step(&mut h, &mut n, t, nat);
        t += 1_000;
    }
    assert_eq!(h.path(PeerId(0)), Some((nat, true)));
    let out = h.kernel_view(PeerId(0)).and_then(|v| v.outbound);
    let out = out.expect("the hub sends on an SA");
    (h, n, t, out)
}

#[test]
fn a_new_nat_port_updates_the_sas_in_place() {
    let (mut h, mut n, t, out) = settled(true);
    let a = step(&mut h, &mut n, t, addr("198.51.100.1:20001"));
    assert_eq!(h.path(PeerId(0)), Some((addr("198.51.100.1:20001"), true)));
    let path = a.iter().find_map(|a| match a {
        Action::PeerPath {
            in_place, old_sas, ..
        } => Some((*in_place, old_sas.len())),
        _ => None,
    });
    assert_eq!(path, Some((false, 0)), "nothing to remove: {a:?}");
    let updated: Vec<(SaDir, u32)> = a
        .iter()
        .filter_map(|a| match a {
            Action::UpdateSa { dir, spi, .. } => Some((*dir, *spi)),
            _ => None,
        })
        .collect();
    assert!(updated.contains(&(SaDir::Out, out)), "{a:?}");
    assert!(updated.iter().any(|(d, _)| *d == SaDir::In), "{a:?}");
    assert!(
        !a.iter()
            .any(|a| matches!(a, Action::InstallSa { .. } | Action::DeleteSa { .. })),
        "{a:?}"
    );
    assert!(
        a.contains(&Action::SetOutbound {
            peer: PeerId(0),
            spi: Some(out)
        }),
        "the same SA again: {a:?}"
    );
}

#[test]
fn a_new_address_moves_the_sas_in_place_and_re_keys_nothing() {
    let (mut h, mut n, t, out) = settled(true);
    let a = step(&mut h, &mut n, t, addr("198.51.100.2:20001"));
    assert!(
        a.iter().any(
            |a| matches!(a, Action::PeerPath { in_place: true, old_sas, .. } if !old_sas.is_empty())
        ),
        "{a:?}"
    );
    assert!(
        !a.iter().any(|a| matches!(
            a,
            Action::InstallSa { .. } | Action::UpdateSa { .. } | Action::DeleteSa { .. }
        )),
        "{a:?}"
    );
    assert!(
        a.contains(&Action::SetOutbound {
            peer: PeerId(0),
            spi: Some(out)
        }),
        "{a:?}"
    );
}

#[test]
fn without_in_place_moves_the_sas_are_re_added_and_the_outbound_re_keyed() {
    let (mut h, mut n, t, out) = settled(false);
    let a = step(&mut h, &mut n, t, addr("198.51.100.1:20001"));
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::PeerPath { in_place: false, old_sas, .. } if !old_sas.is_empty())),
        "{a:?}"
    );
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::InstallSa { dir: SaDir::In, .. })),
        "{a:?}"
    );
    assert!(
        !a.contains(&Action::SetOutbound {
            peer: PeerId(0),
            spi: Some(out)
        }),
        "the sent-on SA is not used again: {a:?}"
    );
}
