//! The cookie round (docs/protocol.md §4, "Cookies"): a flood of forged
//! inits from addresses where their node is not turns cookies on; then
//! such inits cost the hub an HMAC and a bounded number of cookie messages,
//! never an AEAD, and a genuine node that inits from a new address gets in
//! after one more round trip.

use std::net::SocketAddr;

use rotor_core::hub::{COOKIE_REPLIES_PER_S, LOAD_HOLD_MS, UNDER_LOAD_INITS};
use rotor_core::wire::{self, WireError};
use rotor_core::{
    Action, Class, DropReason, Hub, HubConfig, KeyBits, Node, NodeConfig, NodeSpec, Now, PeerId,
    Secret32, Time,
};

const UNIX_MS: u64 = 1_750_000_000_000;

fn node_cfg() -> NodeConfig {
    NodeConfig {
        name: "mn1".to_string(),
        psk: Secret32::new([1; 32]),
        hello_interval_ms: 1_000,
        retries: 3,
        grace_ms: 1_000,
        key_bits: KeyBits::Aes128,
    }
}

/// A hub whose node's address is learned (no `address` in its config).
fn hub() -> Hub {
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
    h.start();
    h
}

fn at(ms: u64) -> Now {
    Now::new(Time(ms), UNIX_MS + ms)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn hub_addr() -> SocketAddr {
    addr("192.0.2.1:4820")
}

fn drops(h: &Hub, r: DropReason) -> u64 {
    h.drops().get(&r).copied().unwrap_or(0)
}

/// Delivers every datagram between the hub and a node at `node_at`, at
/// `now`, until neither sends; the hub's replies reach the node only if
/// they go to `node_at`. Returns the lengths of the node's datagrams.
fn pump(h: &mut Hub, n: &mut Node, node_at: SocketAddr, now: Now) -> Vec<usize> {
    let mut sent = Vec::new();
    loop {
        let mut quiet = true;
        while let Some(a) = n.poll_action() {
            if let Action::Send { datagram, .. } = a {
                quiet = false;
                sent.push(datagram.len());
                h.handle_datagram(now, node_at, &datagram);
            }
        }
        while let Some(a) = h.poll_action() {
            let to_node = match &a {
                Action::Send { .. } => true,
                Action::Reply { to, .. } => *to == node_at,
                _ => false,
            };
            if let (true, Action::Send { datagram, .. } | Action::Reply { datagram, .. }) =
                (to_node, a)
            {
                quiet = false;
                n.handle_datagram(now, hub_addr(), &datagram);
            }
        }
        if quiet {
            return sent;
        }
    }
}

/// The node's next init datagram, caught before delivery.
fn next_init(n: &mut Node, now: Now) -> Vec<u8> {
    n.handle_timeout(now);
    std::iter::from_fn(|| n.poll_action())
        .find_map(|a| match a {
            Action::Send { datagram, .. } => Some(datagram),
            _ => None,
        })
        .expect("an init")
}

/// A forged init under the node's (public) init SPI: the real header, a
/// random-looking rest.
fn forged(init: &[u8], i: u32) -> Vec<u8> {
    let mut f = init.to_vec();
    for (k, b) in f.iter_mut().enumerate().skip(16) {
        *b = (k as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8;
    }
    f
}

#[test]
fn a_flood_turns_cookies_on_and_a_node_at_a_new_address_still_gets_in() {
    let mut h = hub();
    let first = addr("10.0.0.2:4820");
    let mut n = Node::new(node_cfg(), at(1_000), [9; 32]).unwrap();
    n.set_path(first, false);
    n.handle_timeout(at(1_000));
    pump(&mut h, &mut n, first, at(1_000));
    let synced = h.generation_of(PeerId(0));
    assert!(synced >= 1, "initialised without a cookie");
    assert_eq!(h.path(PeerId(0)).map(|p| p.0), Some(first));

    // 1,000 forged inits from 1,000 spoofed sources within one second.
    let sample = {
        let mut other = Node::new(node_cfg(), at(2_000), [3; 32]).unwrap();
        next_init(&mut other, at(2_000))
    };
    let mut replies = 0;
    for i in 0..1_000u32 {
        let from = SocketAddr::new(
            std::net::Ipv4Addr::from(0xcb00_7100 + i).into(),
            1024 + (i % 60_000) as u16,
        );
        h.handle_datagram(at(2_000), from, &forged(&sample, i));
        while let Some(a) = h.poll_action() {
            match a {
                Action::Reply { to, datagram } => {
                    assert_eq!(to, from, "a cookie goes back where the init came from");
                    assert_eq!(datagram.len(), wire::COOKIE_MSG_LEN);
                    replies += 1;
                }
                Action::InstallSa { .. } | Action::Send { .. } => panic!("a forgery got {a:?}"),
                _ => {}
            }
        }
    }
    // Up to the threshold each was authenticated (and failed); the rest
    // cost an HMAC, and the replies are bounded.
    let authenticated = u64::from(UNDER_LOAD_INITS);
    assert_eq!(
        drops(&h, DropReason::Wire(WireError::AuthFailed)),
        authenticated
    );
    assert_eq!(drops(&h, DropReason::CookieRequired), 1_000 - authenticated);
    assert_eq!(
        replies as u64,
        (1_000 - authenticated).min(u64::from(COOKIE_REPLIES_PER_S))
    );
    assert_eq!(h.generation_of(PeerId(0)), synced, "no state changed");

    // The node lost its state and comes back from another address.
    let second = addr("10.0.9.7:40000");
    let mut n = Node::new(node_cfg(), at(2_100), [5; 32]).unwrap();
    n.set_path(second, false);
    let init = next_init(&mut n, at(2_100));
    assert_eq!(
        h.classify(second, &init),
        Class::Cheap,
        "answered with a cookie"
    );
    h.handle_datagram(at(2_100), second, &init);
    let cookie_msg = std::iter::from_fn(|| h.poll_action())
        .find_map(|a| match a {
            Action::Reply { to, datagram } if to == second => Some(datagram),
            _ => None,
        })
        .expect("a cookie for the genuine init");
    assert_eq!(
        drops(&h, DropReason::CookieRequired),
        1_000 - authenticated + 1
    );
    // The cookie is good from where it was sent to, and only there.
    let (cookie, _) = wire::parse(&cookie_msg).unwrap().cookie().unwrap();
    let with = wire::with_cookie(&init, &cookie);
    assert_eq!(h.classify(second, &with), Class::Costly);
    assert_eq!(h.classify(addr("10.0.9.8:40000"), &with), Class::Cheap);
    h.handle_datagram(at(2_100), addr("10.0.9.8:40000"), &with);
    assert_eq!(
        drops(&h, DropReason::CookieRequired),
        1_000 - authenticated + 2
    );
    assert_eq!(h.generation_of(PeerId(0)), synced);
    while h.poll_action().is_some() {}

    // Delivered: the node sends its init again with the cookie (120 bytes),
    // the hub accepts it, and the two are in sync on a new chain.
    n.handle_datagram(at(2_100), hub_addr(), &cookie_msg);
    let sent = pump(&mut h, &mut n, second, at(2_100));
    assert_eq!(
        sent.first(),
        Some(&120),
        "the init again, with its cookie: {sent:?}"
    );
    let status = h.peer_status(PeerId(0), Time(2_100)).unwrap();
    assert_eq!(status.inits, 2, "{:?}", h.drops());
    assert_eq!(h.path(PeerId(0)).map(|p| p.0), Some(second));
    assert!(n.status(Time(2_100)).generation >= 1);

    // Cookies are asked for until the load has been gone for a while.
    let calm = at(2_000 + 1_000 + LOAD_HOLD_MS);
    let mut m = Node::new(node_cfg(), calm, [6; 32]).unwrap();
    let third = addr("10.0.9.9:40000");
    m.set_path(third, false);
    m.handle_timeout(calm);
    let sent = pump(&mut h, &mut m, third, calm);
    assert_eq!(
        sent.first(),
        Some(&104),
        "no cookie needed once calm: {sent:?}"
    );
    assert_eq!(h.peer_status(PeerId(0), calm.mono).unwrap().inits, 3);
}

#[test]
fn a_node_takes_only_a_cookie_that_echoes_its_pending_init() {
    let mut n = Node::new(node_cfg(), at(1_000), [9; 32]).unwrap();
    let init = next_init(&mut n, at(1_000));
    let spi = wire::parse(&init).unwrap().header.spi;
    let tag = wire::parse(&init).unwrap().tag().unwrap();
    let unsolicited = |n: &Node| {
        n.drops()
            .get(&DropReason::Unsolicited)
            .copied()
            .unwrap_or(0)
    };
    // Wrong echo (an off-path forger cannot know the tag): nothing sent.
    n.handle_datagram(
        at(1_001),
        hub_addr(),
        &wire::cookie_message(spi, &[1; 16], &[0; 16]),
    );
    assert_eq!(unsolicited(&n), 1);
    assert!(std::iter::from_fn(|| n.poll_action()).all(|a| !matches!(a, Action::Send { .. })));
    // The right echo: the same init, with the cookie, at once; the same
    // cookie again changes nothing.
    n.handle_datagram(
        at(1_002),
        hub_addr(),
        &wire::cookie_message(spi, &[1; 16], &tag),
    );
    let again: Vec<Vec<u8>> = std::iter::from_fn(|| n.poll_action())
        .filter_map(|a| match a {
            Action::Send { datagram, .. } => Some(datagram),
            _ => None,
        })
        .collect();
    assert_eq!(again, vec![wire::with_cookie(&init, &[1; 16])]);
    n.handle_datagram(
        at(1_003),
        hub_addr(),
        &wire::cookie_message(spi, &[1; 16], &tag),
    );
    assert!(std::iter::from_fn(|| n.poll_action()).all(|a| !matches!(a, Action::Send { .. })));
    // Its retransmissions carry the cookie too.
    n.handle_timeout(at(10_000));
    let retransmitted = std::iter::from_fn(|| n.poll_action()).find_map(|a| match a {
        Action::Send { datagram, .. } => Some(datagram),
        _ => None,
    });
    assert_eq!(retransmitted, Some(wire::with_cookie(&init, &[1; 16])));
}
