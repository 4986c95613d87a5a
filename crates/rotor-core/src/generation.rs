//! One key generation as either side holds it: number, SPI, secret, the
//! control keys derived from it, and the control-channel counters that go with
//! those keys. The ESP keys are handed out once, for installing the SAs, and
//! not kept: the kernel holds them, and a hub with many nodes would otherwise
//! carry four of them per node for nothing.

use crate::key_schedule::{GenerationKeys, KeyBits, generation_control_keys, generation_keys};
use crate::replay::ReplayWindow;
use crate::secret::{ControlKey, EspKey, Secret32};

/// Control-message send counters are persisted by reservation, in blocks of
/// this many: a record stores, per generation, a counter at or above every
/// counter that will be sent before the record is next written, and a
/// restored machine resumes sending there. So a record needs writing once
/// per `TX_RESERVE` messages sent under a generation (about once every 17
/// minutes per node at the default 1 s hello interval), not per message,
/// while no (key, counter) pair is ever sent twice across restarts: the
/// counter is the whole ChaCha20-Poly1305 nonce of the control channel
/// (`00 00 00 00 || counter`, see [`crate::wire`]), and a repeated nonce
/// under one key would leak the XOR of two plaintexts and the Poly1305 key.
///
/// Reservations are block-aligned (multiples of `TX_RESERVE`), so the live
/// reservation is a function of the counter itself and costs no memory:
/// [`Generation::next_counter`] reports the first counter of each block
/// after the first, the caller marks the record dirty, and the daemon
/// stores the record (with [`Generation::tx_reserved`], the next boundary,
/// never below the first) before the message leaves. The first block needs
/// no write of its own: a generation's record is written when the
/// generation is made, before its key leaves, so before any message under
/// it. This is what keeps a rotation at one record write on the hub: the
/// first message it sends under a new generation, the acknowledgement of
/// the node's confirming hello, comes in a later step than the rotation.
/// A restart skips at most `TX_RESERVE` counters per generation; receivers
/// accept any jump ahead.
pub const TX_RESERVE: u64 = 1024;

/// A generation N of one node's chain.
#[derive(Debug, Clone)]
pub struct Generation {
    /// N.
    pub number: u64,
    /// The SPI that names it in both directions.
    pub spi: u32,
    /// The generation secret: the compact form of its four keys (the ESP
    /// keys are re-derived from it to repair the kernel). It yields no other
    /// generation: generation 1's is random, later ones come out of a
    /// ratchet step ([`crate::ratchet`]).
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
    /// control keys; the ESP keys are returned for installing the SAs. The
    /// caller writes the generation's record before any message under it
    /// leaves (it must anyway, before the generation's key leaves): that
    /// write reserves the first block of send counters ([`TX_RESERVE`]).
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
        let g = Generation::with_control_keys(number, spi, secret, ctl_h2n, ctl_n2h);
        let esp = EspKeys {
            h2n: esp_h2n,
            n2h: esp_n2h,
        };
        (g, esp)
    }

    /// A generation restored from its record: the control keys derived
    /// (the same as [`Generation::new`]'s), the ESP keys not (see
    /// [`Generation::esp_keys`]), counters and window fresh.
    pub fn restored(number: u64, spi: u32, secret: Secret32, node: &str) -> Self {
        let (ctl_h2n, ctl_n2h) = generation_control_keys(&secret, node, number, spi);
        Generation::with_control_keys(number, spi, secret, ctl_h2n, ctl_n2h)
    }

    /// A generation with its control keys, counters and window fresh.
    fn with_control_keys(
        number: u64,
        spi: u32,
        secret: Secret32,
        ctl_h2n: ControlKey,
        ctl_n2h: ControlKey,
    ) -> Self {
        Generation {
            number,
            spi,
            secret,
            ctl_h2n,
            ctl_n2h,
            tx_counter: 0,
            rx_window: ReplayWindow::default(),
            out_missing: false,
        }
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

    /// Takes the next send counter, and whether the record must be written
    /// before the message carrying it leaves (`true`: the counter is the
    /// first of a new reservation block, see [`TX_RESERVE`]; the caller
    /// marks its record dirty, and the daemon stores dirty records before it
    /// sends). Each side sends under a generation in one direction only, so
    /// one counter per generation and side suffices.
    #[must_use = "a counter that starts a reservation block must mark the record dirty"]
    pub fn next_counter(&mut self) -> (u64, bool) {
        let c = self.tx_counter;
        self.tx_counter += 1;
        (c, c != 0 && c.is_multiple_of(TX_RESERVE))
    }

    /// The send-counter reservation a record written now stores: the
    /// current counter rounded up to a multiple of [`TX_RESERVE`], at least
    /// one block. Every counter taken so far is below it, and so is every
    /// counter taken before the next block starts (which marks the record
    /// dirty again); the record written when the generation is made covers
    /// its first block.
    pub fn tx_reserved(&self) -> u64 {
        self.tx_counter
            .div_ceil(TX_RESERVE)
            .max(1)
            .saturating_mul(TX_RESERVE)
    }

    /// Resumes sending after a restore from a record's reservation: at the
    /// reservation, rounded up to a block boundary and at least the second
    /// block's start, so that the first counter taken starts a block after
    /// the first (and so writes a new reservation before it leaves) even if
    /// the record was written with another [`TX_RESERVE`], or by a version
    /// that stored 0 for a generation that had sent nothing.
    pub fn resume_tx(&mut self, reserved: u64) {
        self.tx_counter = reserved
            .div_ceil(TX_RESERVE)
            .max(1)
            .saturating_mul(TX_RESERVE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation() -> Generation {
        Generation::new(1, 0x1000, Secret32::new([1; 32]), "mn1", KeyBits::Aes128).0
    }

    /// The record written when a generation is made, then one whenever
    /// `next_counter` asks for it, holds a reservation above every counter
    /// taken, and a generation resumed from it never takes one of them
    /// again. The first block costs no write beyond the one at creation.
    #[test]
    fn reservations_cover_every_counter_taken_and_resume_above_them() {
        let mut g = generation();
        // The generation's own record, written before its key leaves.
        let mut stored = g.tx_reserved();
        let mut marks = 0;
        let n = 3 * TX_RESERVE + 17;
        for _ in 0..n {
            let (c, reserve) = g.next_counter();
            if reserve {
                marks += 1;
                // The daemon writes the record after the step, before sending.
                stored = g.tx_reserved();
            }
            assert!(c < stored, "{c}");
        }
        assert_eq!(marks, n.div_ceil(TX_RESERVE) - 1);
        let mut r = generation();
        r.resume_tx(stored);
        let (c, reserve) = r.next_counter();
        assert!(c >= n && reserve, "resumed at {c}");
        // A reservation written with another block size still resumes at a
        // block start above it, and one of 0 (a generation that had sent
        // nothing, as an older version stored it) at a block that writes.
        for (written, resumed) in [(5, TX_RESERVE), (0, TX_RESERVE)] {
            let mut r = generation();
            r.resume_tx(written);
            assert_eq!(r.next_counter(), (resumed, true), "{written}");
        }
    }
}
