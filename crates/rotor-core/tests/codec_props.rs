//! Property tests of the control-message codec and of the state machines'
//! handling of arbitrary input (the same properties the cargo-fuzz targets in
//! `fuzz/` check with coverage guidance).

use proptest::prelude::*;
use rotor_core::key_schedule::init_request_key;
use rotor_core::wire::{self, FLAG_INIT_REPLY, FLAG_NAT, Header, InitReply, Message, MsgType};
use rotor_core::{
    Action, Event, Hub, HubConfig, KeyBits, Node, NodeConfig, NodeSpec, Now, Secret32, Time,
};

fn key() -> rotor_core::secret::ControlKey {
    init_request_key(&Secret32::new([7; 32]), "prop", &[1; 32])
}

/// A message of any kind with any field values, and the type, flags and
/// clear extension it must go on the wire with.
fn message_strategy() -> impl Strategy<Value = (MsgType, u16, Vec<u8>, Message)> {
    let spi = any::<u32>();
    let counter = any::<u64>();
    prop_oneof![
        (
            spi,
            counter,
            any::<u64>(),
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<bool>(),
            any::<u16>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(spi, counter, generation, rotate, ip, v4, port, share)| {
                let ip: std::net::IpAddr = if v4 {
                    std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).into()
                } else {
                    // IPv4-mapped IPv6 addresses are how IPv4 travels: they
                    // come back as IPv4.
                    let v6 = std::net::Ipv6Addr::from(ip);
                    v6.to_ipv4_mapped().map_or(v6.into(), Into::into)
                };
                (
                    MsgType::Hello,
                    0,
                    vec![],
                    Message::Hello {
                        spi,
                        counter,
                        generation,
                        rotate,
                        share,
                        source: std::net::SocketAddr::new(ip, port),
                    },
                )
            }),
        (
            spi,
            counter,
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(spi, counter, timestamp_ms, eph_pub, nonce)| (
                MsgType::Init,
                0,
                nonce.to_vec(),
                Message::Init {
                    spi,
                    counter,
                    nonce,
                    timestamp_ms,
                    eph_pub
                }
            )),
        (
            (spi, counter),
            any::<u64>(),
            any::<u32>(),
            any::<[u8; 32]>(),
            (any::<bool>(), any::<bool>()),
            any::<[u8; 32]>(),
            any::<[u8; 32]>()
        )
            .prop_map(
                |((spi, counter), generation, gen_spi, s, (init, nat), extra, hub_share)| {
                    let (flags, clear, init_reply) = if init {
                        let mut c = extra.to_vec();
                        c.extend_from_slice(&extra);
                        let r = InitReply {
                            hub_nonce: extra,
                            hub_pub: extra,
                        };
                        (FLAG_INIT_REPLY, c, Some(r))
                    } else {
                        (0, vec![], None)
                    };
                    let flags = flags | if nat { FLAG_NAT } else { 0 };
                    (
                        MsgType::Key,
                        flags,
                        clear,
                        Message::Key {
                            spi,
                            counter,
                            init_reply,
                            generation,
                            gen_spi,
                            secret: Secret32::new(s),
                            hub_share,
                            nat,
                        },
                    )
                }
            ),
        (spi, counter, any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(spi, counter, generation, hello, nat)| (
                MsgType::Ack,
                if nat { FLAG_NAT } else { 0 },
                vec![],
                Message::Ack {
                    spi,
                    counter,
                    generation,
                    hello,
                    nat
                }
            )
        ),
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
        ratchet_epoch_ms: rotor_core::config::DEFAULT_RATCHET_EPOCH_MS,
        ratchet_every: rotor_core::config::DEFAULT_RATCHET_EVERY,
    };
    Hub::new(cfg, Now::new(Time(0), 1_750_000_000_000), [3; 32]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// seal -> parse -> open gives back exactly what was sealed.
    #[test]
    fn codec_round_trip((kind, flags, clear, msg) in message_strategy()) {
        let h = Header { kind, flags, spi: msg.header().spi, counter: msg.header().counter };
        let d = msg.seal(&key());
        let p = wire::parse(&d).unwrap();
        prop_assert_eq!(p.header, h);
        prop_assert_eq!(p.clear, &clear[..]);
        prop_assert_eq!(p.open(&key()).unwrap(), msg);
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
            data[0] = wire::VERSION;
            data[1] = ty;
        }
        let now = Now::new(Time(5), 1_750_000_000_000);
        let mut h = hub();
        h.handle_datagram(now, "192.0.2.9:4820".parse().unwrap(), &data);
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
        n.handle_datagram(now, "192.0.2.1:4820".parse().unwrap(), &data);
        while let Some(a) = n.poll_action() {
            prop_assert!(matches!(a, Action::Event(Event::Dropped { .. })), "{:?}", a);
        }
    }
}
