//! What a node, or whoever holds its key, can make the hub do is bounded
//! (`rotor_core::hub::{REQUESTED_ROTATIONS, INITS, RESENDS}`), and the hub
//! tells, before any cryptography, which datagrams come from where their
//! node is (`Hub::classify`). A node checks an init reply's MAC before its
//! X25519, and takes an ack only for a hello it sent.

use std::net::SocketAddr;

use rotor_core::hub::{INITS, REQUESTED_ROTATIONS};
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
    // As the daemon does with a configured address.
    h.set_path(PeerId(0), node_addr(), false, true);
    h.start();
    h
}

fn node(now: Now, seed: u8) -> Node {
    let mut n = Node::new(node_cfg(), now, [seed; 32]).expect("node config");
    n.set_path(node_addr(), false);
    n
}

fn node_addr() -> SocketAddr {
    "192.0.2.2:4820".parse().unwrap()
}

fn hub_addr() -> SocketAddr {
    "192.0.2.1:4820".parse().unwrap()
}

/// What the hub did in one exchange.
#[derive(Default)]
struct Tally {
    installs: usize,
    deletes: usize,
}

/// Delivers every datagram between the two, at `now`, until neither has
/// anything to send; counts the hub's SA installs and deletions.
fn pump(h: &mut Hub, n: &mut Node, now: Now, t: &mut Tally) {
    loop {
        let mut quiet = true;
        while let Some(a) = n.poll_action() {
            if let Action::Send { datagram, .. } = a {
                quiet = false;
                h.handle_datagram(now, node_addr(), &datagram);
            }
        }
        while let Some(a) = h.poll_action() {
            match a {
                Action::Send { datagram, .. } => {
                    quiet = false;
                    n.handle_datagram(now, hub_addr(), &datagram);
                }
                Action::InstallSa { .. } => t.installs += 1,
                Action::DeleteSa { .. } => t.deletes += 1,
                _ => {}
            }
        }
        if quiet {
            return;
        }
    }
}

fn at(ms: u64) -> Now {
    Now::new(Time(ms), UNIX_MS + ms)
}

/// A hub and its node, initialised and in sync at 1 s.
fn pair() -> (Hub, Node, Tally) {
    let mut h = hub();
    let mut n = node(at(1_000), 9);
    let mut t = Tally::default();
    n.handle_timeout(at(1_000));
    pump(&mut h, &mut n, at(1_000), &mut t);
    assert_eq!(h.generation_of(PeerId(0)), 1, "initialised");
    assert_eq!(t.installs, 2);
    (h, n, t)
}

fn drops(h: &Hub, r: DropReason) -> u64 {
    h.drops().get(&r).copied().unwrap_or(0)
}

/// The attack of issue 13: 5,000 requested rotations within one
/// millisecond made 10,002 SA installs. Now the node's budget bounds it:
/// the burst at once, then one a second, every other request answered
/// with an ack and counted.
#[test]
fn five_thousand_requested_rotations_cost_a_bounded_number_of_sa_installs() {
    let (mut h, mut n, mut t) = pair();
    let burst = REQUESTED_ROTATIONS.burst as usize;
    for _ in 0..5_000 {
        n.request_rotation(Time(2_000));
        n.handle_timeout(at(2_000));
        pump(&mut h, &mut n, at(2_000), &mut t);
    }
    let installs_at_once = t.installs - 2;
    assert_eq!(
        installs_at_once,
        2 * burst,
        "two SAs per rotation, the burst's rotations only"
    );
    assert_eq!(h.generation_of(PeerId(0)), 1 + burst as u64);
    assert_eq!(n.generation(), h.generation_of(PeerId(0)), "node in step");
    assert!(
        drops(&h, DropReason::RotationDeferred) >= 5_000 - burst as u64,
        "every request beyond the burst is counted"
    );
    // Ten seconds of asking without pause: about one rotation a second.
    let before = t.installs;
    for ms in (2_001..12_000).step_by(10) {
        n.request_rotation(Time(ms));
        n.handle_timeout(at(ms));
        pump(&mut h, &mut n, at(ms), &mut t);
    }
    let rotations = (t.installs - before) / 2;
    let per_10s = (10_000 / REQUESTED_ROTATIONS.every_ms) as usize;
    assert!(
        (per_10s - 1..=per_10s + 1).contains(&rotations),
        "{rotations} rotations in 10 s of asking"
    );
    // The grace deletions follow the rotations: nothing piles up (the
    // rotation heap keeps up to 64 stale deadlines before compacting).
    let later = at(20_000);
    h.handle_timeout(later);
    n.handle_timeout(later);
    pump(&mut h, &mut n, later, &mut t);
    // Every generation's SAs deleted but the live two's, and those of the
    // one the node's last (deferred) request gets at this instant.
    assert!(
        t.deletes + 6 >= t.installs,
        "{} of {} SAs deleted",
        t.deletes,
        t.installs
    );
    assert!(h.timer_entries() <= 2 + 64, "{} timers", h.timer_entries());
}

/// Whoever holds a node's key and sends 2,000 fresh inits at one instant
/// gets the init budget's burst of chains (each an X25519 and two SAs);
/// every other init is dropped after authentication, before the X25519.
#[test]
fn a_flood_of_genuine_inits_gets_the_burst() {
    let mut h = hub();
    let now = at(1_000);
    let mut installs = 0;
    for i in 0..2_000u64 {
        // Each with its own nonce, key and a newer timestamp.
        let stamp = Now::new(Time(1_000), UNIX_MS + 1_000 + i);
        let mut n = node(stamp, (i % 251) as u8);
        n.handle_timeout(stamp);
        while let Some(a) = n.poll_action() {
            if let Action::Send { datagram, .. } = a {
                h.handle_datagram(now, node_addr(), &datagram);
            }
        }
        while let Some(a) = h.poll_action() {
            installs += usize::from(matches!(a, Action::InstallSa { .. }));
        }
    }
    assert_eq!(installs, 2 * INITS.burst as usize, "{:?}", h.drops());
    assert_eq!(
        h.peer_status(PeerId(0), Time(1_000)).map(|s| s.inits),
        Some(u64::from(INITS.burst))
    );
    assert_eq!(
        drops(&h, DropReason::RateLimited),
        2_000 - u64::from(INITS.burst)
    );
}

/// The first datagram the node's queued actions send.
fn first_send(n: &mut Node) -> Option<Vec<u8>> {
    std::iter::from_fn(|| n.poll_action()).find_map(|a| match a {
        Action::Send { datagram, .. } => Some(datagram),
        _ => None,
    })
}

/// The classification reads headers and addresses only: the node's keys
/// from where it is come first; its init SPI or generation from elsewhere
/// cost cryptography; unknown SPIs and replayed hellos cost nothing.
#[test]
fn datagrams_are_classified_by_spi_source_and_window() {
    let (mut h, mut n, mut t) = pair();
    let here = node_addr();
    let elsewhere: SocketAddr = "198.51.100.9:4820".parse().unwrap();
    // A hello under the current generation, caught before delivery.
    n.request_rotation(Time(1_500));
    n.handle_timeout(at(1_500));
    let hello = first_send(&mut n).expect("a hello");
    assert_eq!(h.classify(here, &hello), Class::Priority);
    assert_eq!(h.classify(elsewhere, &hello), Class::Costly);
    h.handle_datagram(at(1_500), here, &hello);
    pump(&mut h, &mut n, at(1_500), &mut t);
    // Delivered once: a replay of it is refused by the window, for free.
    assert_eq!(h.classify(here, &hello), Class::Cheap);
    assert_eq!(h.classify(elsewhere, &hello), Class::Cheap);
    // An init under the node's init SPI.
    let mut fresh = node(at(2_000), 3);
    fresh.handle_timeout(at(2_000));
    let init = first_send(&mut fresh).expect("an init");
    assert_eq!(h.classify(here, &init), Class::Priority);
    assert_eq!(h.classify(elsewhere, &init), Class::Costly);
    // An SPI no key has, garbage, a truncated header.
    let mut unknown = init.clone();
    unknown[4..8].copy_from_slice(&0x7777_7777u32.to_be_bytes());
    assert_eq!(h.classify(here, &unknown), Class::Cheap);
    assert_eq!(h.classify(here, &[2, 1, 0]), Class::Cheap);
    assert_eq!(h.classify(here, &init[..20]), Class::Cheap);
    // A hub's own message type under the node's SPI.
    let mut retyped = hello.clone();
    retyped[1] = 4;
    assert_eq!(h.classify(here, &retyped), Class::Cheap);
}

/// The sends the hub's queued actions make.
fn hub_sends(h: &mut Hub) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| h.poll_action())
        .filter_map(|a| match a {
            Action::Send { datagram, .. } => Some(datagram),
            _ => None,
        })
        .collect()
}

fn node_drops(n: &Node, r: DropReason) -> u64 {
    n.drops().get(&r).copied().unwrap_or(0)
}

/// A reply under the node's (public) init SPI is checked by its MAC first:
/// one whose hub share is a low-order point (which the X25519 would refuse
/// as `bad_ephemeral`) but whose MAC fails is refused as `auth_failed`, so
/// the X25519 never ran; the genuine reply is then taken.
#[test]
fn an_init_reply_is_checked_by_its_mac_before_the_x25519() {
    let mut h = hub();
    let mut n = node(at(1_000), 5);
    n.handle_timeout(at(1_000));
    let init = first_send(&mut n).expect("an init");
    h.handle_datagram(at(1_000), node_addr(), &init);
    let reply = hub_sends(&mut h).pop().expect("an init reply");
    assert_eq!(
        reply.len(),
        188,
        "header, hub nonce and share, body, tag, MAC"
    );
    let mut low_order = reply.clone();
    low_order[48..80].fill(0);
    n.handle_datagram(at(1_001), hub_addr(), &low_order);
    let mut bad_mac = reply.clone();
    let last = bad_mac.len() - 1;
    bad_mac[last] ^= 1;
    n.handle_datagram(at(1_001), hub_addr(), &bad_mac);
    let auth = DropReason::Wire(rotor_core::wire::WireError::AuthFailed);
    assert_eq!(node_drops(&n, auth), 2);
    assert_eq!(node_drops(&n, DropReason::BadEphemeral), 0);
    assert_eq!(n.generation(), 0, "still initialising");
    n.handle_datagram(at(1_002), hub_addr(), &reply);
    assert_eq!(n.generation(), 1, "the genuine reply is taken");
}

/// An ack names the hello it answers; one naming a hello the node never
/// sent does not count as an answer. Two nodes made alike (same seed, same
/// clock) hold the same chain: the hub's ack to the second hello of one is
/// an ack to a hello the other never sent.
#[test]
fn an_ack_answers_a_hello_the_node_sent() {
    let mut h = hub();
    let (mut a, mut b) = (node(at(1_000), 9), node(at(1_000), 9));
    a.handle_timeout(at(1_000));
    b.handle_timeout(at(1_000));
    let init = first_send(&mut a).expect("an init");
    assert_eq!(Some(&init), first_send(&mut b).as_ref(), "twins");
    h.handle_datagram(at(1_000), node_addr(), &init);
    let reply = hub_sends(&mut h).pop().expect("an init reply");
    a.handle_datagram(at(1_001), hub_addr(), &reply);
    b.handle_datagram(at(1_001), hub_addr(), &reply);
    // Both say hello 0; only a's reaches the hub, and a says hello 1 too.
    let hello0 = first_send(&mut a).expect("hello 0");
    assert_eq!(Some(&hello0), first_send(&mut b).as_ref());
    h.handle_datagram(at(1_002), node_addr(), &hello0);
    let ack0 = hub_sends(&mut h).pop().expect("ack to hello 0");
    assert_eq!((ack0[1], ack0.len()), (4, 48), "an ack, 48 bytes");
    a.handle_datagram(at(1_003), hub_addr(), &ack0);
    a.handle_timeout(at(2_500));
    let hello1 = first_send(&mut a).expect("hello 1");
    h.handle_datagram(at(2_500), node_addr(), &hello1);
    let ack1 = hub_sends(&mut h).pop().expect("ack to hello 1");
    a.handle_datagram(at(2_501), hub_addr(), &ack1);
    assert_eq!(node_drops(&a, DropReason::Unsolicited), 0);
    // b never sent hello 1: the ack to it is refused; the ack to hello 0
    // (which b sent too) is taken.
    b.handle_datagram(at(2_501), hub_addr(), &ack1);
    assert_eq!(node_drops(&b, DropReason::Unsolicited), 1);
    b.handle_datagram(at(2_502), hub_addr(), &ack0);
    assert_eq!(node_drops(&b, DropReason::Unsolicited), 1);
    assert_eq!(b.drops().values().sum::<u64>(), 1, "{:?}", b.drops());
}
