//! A dropped datagram names the peer whose key it was checked against, so
//! the daemon can say which node has a wrong key or a skewed clock; a
//! datagram under no peer's SPI names none.

use rotor_core::wire::WireError;
use rotor_core::{
    Action, DropReason, Event, Hub, HubConfig, KeyBits, Node, NodeConfig, NodeSpec, Now, PeerId,
    Secret32, Time,
};

const UNIX_MS: u64 = 1_750_000_000_000;
const SKEW_MS: u64 = 60_000;

fn psk(i: u8) -> Secret32 {
    Secret32::new([i; 32])
}

fn hub() -> Hub {
    let nodes = (0..2u8)
        .map(|i| NodeSpec {
            name: format!("mn{i}"),
            psk: psk(i + 1),
            rotate_interval_ms: 60_000,
        })
        .collect();
    let cfg = HubConfig {
        nodes,
        grace_ms: 1_000,
        key_bits: KeyBits::Aes128,
        init_skew_ms: SKEW_MS,
        ratchet_epoch_ms: rotor_core::config::DEFAULT_RATCHET_EPOCH_MS,
        ratchet_every: rotor_core::config::DEFAULT_RATCHET_EVERY,
    };
    let mut h = Hub::new(cfg, Now::new(Time(0), UNIX_MS), [7; 32]).expect("hub config");
    h.start();
    h
}

/// The init datagram a node called `name` holding `key` sends at `unix_ms`.
fn init_from(name: &str, key: Secret32, unix_ms: u64) -> Vec<u8> {
    let cfg = NodeConfig {
        name: name.to_string(),
        psk: key,
        hello_interval_ms: 1_000,
        retries: 3,
        grace_ms: 1_000,
        key_bits: KeyBits::Aes128,
    };
    let now = Now::new(Time(0), unix_ms);
    let mut n = Node::new(cfg, now, [9; 32]).expect("node config");
    n.handle_timeout(now);
    std::iter::from_fn(|| n.poll_action())
        .find_map(|a| match a {
            Action::Send { datagram, .. } => Some(datagram),
            _ => None,
        })
        .expect("a node without keys sends an init")
}

/// The events a datagram caused at the hub.
fn drops(h: &mut Hub, data: &[u8]) -> Vec<(DropReason, Option<PeerId>)> {
    h.handle_datagram(
        Now::new(Time(10), UNIX_MS),
        "192.0.2.2:4820".parse().unwrap(),
        data,
    );
    std::iter::from_fn(|| h.poll_action())
        .filter_map(|a| match a {
            Action::Event(Event::Dropped { reason, peer }) => Some((reason, peer)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_init_failing_a_nodes_key_names_that_node() {
    let mut h = hub();
    // mn1's init key under another name: the init SPI (derived from the key
    // alone) is mn1's, the AEAD (bound to the name) fails.
    let d = init_from("impostor", psk(2), UNIX_MS);
    assert_eq!(
        drops(&mut h, &d),
        vec![(DropReason::Wire(WireError::AuthFailed), Some(PeerId(1)))]
    );
}

#[test]
fn an_init_from_a_skewed_clock_names_the_node() {
    let mut h = hub();
    let d = init_from("mn0", psk(1), UNIX_MS + SKEW_MS + 1_000);
    assert_eq!(
        drops(&mut h, &d),
        vec![(DropReason::InitClockSkew, Some(PeerId(0)))]
    );
    // The same node within the window is accepted: no drop.
    let d = init_from("mn0", psk(1), UNIX_MS + 1_000);
    assert!(drops(&mut h, &d).is_empty());
}

#[test]
fn a_datagram_under_no_nodes_spi_names_no_one() {
    let mut h = hub();
    let d = init_from("mn0", psk(42), UNIX_MS);
    assert_eq!(drops(&mut h, &d), vec![(DropReason::UnknownSpi, None)]);
    assert_eq!(
        drops(&mut h, b"junk"),
        vec![(DropReason::Wire(WireError::TooShort), None)]
    );
}

#[test]
fn a_node_names_the_hub_when_a_reply_under_its_spi_fails() {
    let cfg = NodeConfig {
        name: "mn0".into(),
        psk: psk(1),
        hello_interval_ms: 1_000,
        retries: 3,
        grace_ms: 1_000,
        key_bits: KeyBits::Aes128,
    };
    let now = Now::new(Time(0), UNIX_MS);
    let mut n = Node::new(cfg, now, [3; 32]).expect("node config");
    n.handle_timeout(now);
    let init = std::iter::from_fn(|| n.poll_action())
        .find_map(|a| match a {
            Action::Send { datagram, .. } => Some(datagram),
            _ => None,
        })
        .expect("init");
    // The hub's genuine reply, one byte of its ciphertext flipped.
    let mut h = hub();
    h.handle_datagram(
        Now::new(Time(10), UNIX_MS),
        "192.0.2.2:4820".parse().unwrap(),
        &init,
    );
    let mut reply = std::iter::from_fn(|| h.poll_action())
        .find_map(|a| match a {
            Action::Send { datagram, .. } => Some(datagram),
            _ => None,
        })
        .expect("the hub answers the init");
    let last = reply.len() - 1;
    reply[last] ^= 1;
    n.handle_datagram(
        Now::new(Time(20), UNIX_MS),
        "192.0.2.1:4820".parse().unwrap(),
        &reply,
    );
    let got: Vec<_> = std::iter::from_fn(|| n.poll_action())
        .filter_map(|a| match a {
            Action::Event(Event::Dropped { reason, peer }) => Some((reason, peer)),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        vec![(DropReason::Wire(WireError::AuthFailed), Some(PeerId(0)))]
    );
}
