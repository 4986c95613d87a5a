//! One key generation as either side holds it: number, SPI, secret, the keys
//! derived from it, and the control-channel counters that go with those keys.

use crate::key_schedule::{GenerationKeys, KeyBits, generation_keys};
use crate::replay::ReplayWindow;
use crate::secret::Secret32;

/// A generation N of one node's chain.
#[derive(Debug, Clone)]
pub struct Generation {
    /// N.
    pub number: u64,
    /// The SPI that names it in both directions.
    pub spi: u32,
    /// The generation secret (sent to the node in a `key` message).
    pub secret: Secret32,
    /// Keys derived from the secret.
    pub keys: GenerationKeys,
    /// Next counter for control messages we send under this generation.
    pub tx_counter: u64,
    /// Replay window for control messages we receive under it.
    pub rx_window: ReplayWindow,
}

impl Generation {
    /// Derives a generation's keys from its secret.
    pub fn new(number: u64, spi: u32, secret: Secret32, node: &str, bits: KeyBits) -> Self {
        let keys = generation_keys(&secret, node, number, spi, bits);
        Generation {
            number,
            spi,
            secret,
            keys,
            tx_counter: 0,
            rx_window: ReplayWindow::default(),
        }
    }

    /// Takes the next send counter. Each side sends under a generation in one
    /// direction only, so one counter per generation and side suffices.
    pub fn next_counter(&mut self) -> u64 {
        let c = self.tx_counter;
        self.tx_counter += 1;
        c
    }
}
