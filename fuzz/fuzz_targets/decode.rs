//! Any bytes through the wire parser and, if framing passes, an AEAD open
//! with a fixed key: must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor_core::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = wire::parse(data) {
        let key = rotor_core::key_schedule::init_request_key(
            &rotor_core::Secret32::new([7; 32]),
            "fuzz",
            &[0; 32],
        );
        let _ = d.open(&key);
    }
});
