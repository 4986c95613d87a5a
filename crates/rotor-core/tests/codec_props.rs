//! Property tests of the control-message codec and of the state machines'
//! handling of arbitrary input (the same properties the cargo-fuzz targets in
//! `fuzz/` check with coverage guidance).

use proptest::prelude::*;
use rotor_core::key_schedule::init_request_key;
use rotor_core::wire::{self, Body, FLAG_INIT_REPLY, Header, MsgType};
use rotor_core::{
    Action, Event, Hub, HubConfig, KeyBits, Node, NodeConfig, NodeSpec, Now, Secret32, Time,
};

fn key() -> rotor_core::secret::ControlKey {
    init_request_key(&Secret32::new([7; 32]), "prop", &[1; 32])
}

fn body_strategy() -> impl Strategy<Value = (MsgType, u16, Vec<u8>, Body)> {
    prop_oneof![
        (any::<u64>(), any::<bool>()).prop_map(|(generation, rotate)| (
            MsgType::Hello,
            0,
            vec![],
            Body::Hello { generation, rotate }
        )),
        (any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
            |(timestamp_ms, eph_pub, nonce)| (
                MsgType::Init,
                0,
                nonce.to_vec(),
                Body::Init {
                    timestamp_ms,
                    eph_pub
                }
            )
        ),
        (
            any::<u64>(),
            any::<u32>(),
            any::<[u8; 32]>(),
            any::<bool>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(generation, spi, s, init, extra)| {
                let (flags, clear) = if init {
                    let mut c = extra.to_vec();
                    c.extend_from_slice(&extra);
                    (FLAG_INIT_REPLY, c)
                } else {
                    (0, vec![])
                };
                (
                    MsgType::Key,
                    flags,
                    clear,
                    Body::Key {
                        generation,
                        spi,
                        secret: Secret32::new(s),
                    },
                )
            }),
        any::<u64>().prop_map(|generation| (MsgType::Ack, 0, vec![], Body::Ack { generation })),
    ]
}

fn hub() -> Hub {
    let cfg = HubConfig {
        nodes: (0..4u8)
            .map(|i| NodeSpec {
                name: format!("mn{i}"),
                psk: Secret32::new([i + 1; 32]),
                rotate_interval_ms: 1000,
            })
            .collect(),
        grace_ms: 1000,
        key_bits: KeyBits::Aes128,
        init_skew_ms: 120_000,
    };
    Hub::new(cfg, Now::new(Time(0), 1_750_000_000_000), [3; 32]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// seal -> parse -> open gives back exactly what was sealed.
    #[test]
    fn codec_round_trip((kind, flags, clear, body) in body_strategy(), spi in any::<u32>(), counter in any::<u64>()) {
        let h = Header { kind, flags, spi, counter };
        let d = wire::seal(&key(), h, &clear, &body).unwrap();
        let p = wire::parse(&d).unwrap();
        prop_assert_eq!(p.header, h);
        prop_assert_eq!(p.clear, &clear[..]);
        prop_assert_eq!(p.open(&key()).unwrap(), body);
    }

    /// The parser never panics, and random bytes that pass framing never authenticate.
    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = wire::parse(&data) {
            prop_assert!(p.open(&key()).is_err());
        }
    }

    /// Arbitrary bytes (also with a valid version/type prefix) make a hub and
    /// a node do nothing but count a drop.
    #[test]
    fn state_machines_only_drop_garbage(mut data in proptest::collection::vec(any::<u8>(), 0..200), ty in 1u8..=4) {
        if data.len() >= 2 {
            data[0] = 1;
            data[1] = ty;
        }
        let now = Now::new(Time(5), 1_750_000_000_000);
        let mut h = hub();
        h.handle_datagram(now, &data);
        while let Some(a) = h.poll_action() {
            prop_assert!(matches!(a, Action::Event(Event::Dropped { .. })), "{:?}", a);
        }
        prop_assert_eq!(h.drops().values().sum::<u64>(), 1);
        let mut n = Node::new(NodeConfig {
            name: "mn0".into(),
            psk: Secret32::new([1; 32]),
            hello_interval_ms: 500,
            retries: 3,
            grace_ms: 1000,
            key_bits: KeyBits::Aes128,
        }, Now::new(Time(0), 1_750_000_000_000), [4; 32]).unwrap();
        n.handle_datagram(now, &data);
        while let Some(a) = n.poll_action() {
            prop_assert!(matches!(a, Action::Event(Event::Dropped { .. })), "{:?}", a);
        }
    }
}
