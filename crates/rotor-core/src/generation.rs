//! One key generation as either side holds it: number, SPI, secret, the
//! control keys derived from it, and the control-channel counters that go with
//! those keys. The ESP keys are handed out once, for installing the SAs, and
//! not kept: the kernel holds them, and a hub with many nodes would otherwise
//! carry four of them per node for nothing.

use crate::key_schedule::{GenerationKeys, KeyBits, generation_keys};
use crate::replay::ReplayWindow;
use crate::secret::{ControlKey, EspKey, Secret32};

/// A generation N of one node's chain.
#[derive(Debug, Clone)]
pub struct Generation {
    /// N.
    pub number: u64,
    /// The SPI that names it in both directions.
    pub spi: u32,
    /// The generation secret (sent to the node in a `key` message).
    pub secret: Secret32,
    /// Key of control messages hub -> node under this generation.
    pub ctl_h2n: ControlKey,
    /// Key of control messages node -> hub under this generation.
    pub ctl_n2h: ControlKey,
    /// Next counter for control messages we send under this generation.
    pub tx_counter: u64,
    /// Replay window for control messages we receive under it.
    pub rx_window: ReplayWindow,
    /// This side's outbound SA of the generation went missing from the
    /// kernel after it may have sent on it, and was deliberately not
    /// re-installed (a re-added SA restarts its sequence number, hence its
    /// AES-GCM IVs: I6). The outbound policy never names it again and its
    /// deletion skips it.
    pub out_missing: bool,
}

/// The two ESP keys of a generation, for installing its SAs.
#[derive(Debug, Clone)]
pub struct EspKeys {
    /// SA hub -> node.
    pub h2n: EspKey,
    /// SA node -> hub.
    pub n2h: EspKey,
}

impl Generation {
    /// Derives a generation's keys from its secret: the generation keeps the
    /// control keys; the ESP keys are returned for installing the SAs.
    pub fn new(
        number: u64,
        spi: u32,
        secret: Secret32,
        node: &str,
        bits: KeyBits,
    ) -> (Self, EspKeys) {
        let GenerationKeys {
            esp_h2n,
            esp_n2h,
            ctl_h2n,
            ctl_n2h,
        } = generation_keys(&secret, node, number, spi, bits);
        let g = Generation {
            number,
            spi,
            secret,
            ctl_h2n,
            ctl_n2h,
            tx_counter: 0,
            rx_window: ReplayWindow::default(),
            out_missing: false,
        };
        let esp = EspKeys {
            h2n: esp_h2n,
            n2h: esp_n2h,
        };
        (g, esp)
    }

    /// Re-derives the ESP keys of this generation (the same derivation as
    /// [`Generation::new`]), for re-installing SAs the kernel lost.
    pub fn esp_keys(&self, node: &str, bits: KeyBits) -> EspKeys {
        let k = generation_keys(&self.secret, node, self.number, self.spi, bits);
        EspKeys {
            h2n: k.esp_h2n.clone(),
            n2h: k.esp_n2h.clone(),
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
