//! Arbitrary datagrams fed to a hub with running chains: must never panic,
//! and must never produce anything but a "dropped" event (no key, no SA, no
//! send can be caused without the keys).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor_core::{Action, Event, Hub, HubConfig, KeyBits, NodeSpec, Now, Secret32, Time};

fuzz_target!(|data: &[u8]| {
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
    let Ok(mut hub) = Hub::new(cfg, Now::new(Time(0), 1_750_000_000_000), [1; 32]) else {
        return;
    };
    let from = std::net::SocketAddr::from(([192, 0, 2, 9], 4820));
    hub.handle_datagram(Now::new(Time(1), 1_750_000_000_000), from, data);
    while let Some(a) = hub.poll_action() {
        assert!(matches!(a, Action::Event(Event::Dropped { .. })), "{a:?}");
    }
});
