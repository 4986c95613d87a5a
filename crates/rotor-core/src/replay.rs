//! Sliding anti-replay window over 64-bit message counters (as RFC 4303 §3.4.3
//! does for ESP): accepts each counter at most once, and nothing older than
//! the window. `check` never changes state; `commit` is called only after the
//! message authenticated, so a forged datagram cannot move the window.

/// Width of the window in messages.
pub const WINDOW: u64 = 128;

/// Replay state for one key in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest counter accepted so far, plus one (0 = nothing accepted yet).
    top: u64,
    /// Bit i set = counter `top - 1 - i` was accepted: bits 0-63 in `lo`,
    /// 64-127 in `hi` (two words, not a u128, so that a window is 8-aligned
    /// and a hub's per-node generations carry no padding).
    lo: u64,
    hi: u64,
}

impl ReplayWindow {
    fn bits(&self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }

    fn set_bits(&mut self, bits: u128) {
        self.lo = bits as u64;
        self.hi = (bits >> 64) as u64;
    }

    /// The window's state `(top, lo, hi)`, for persisting it.
    pub(crate) fn parts(&self) -> (u64, u64, u64) {
        (self.top, self.lo, self.hi)
    }

    /// A window restored from [`Self::parts`]. Any values are a valid window.
    pub(crate) fn from_parts(top: u64, lo: u64, hi: u64) -> Self {
        ReplayWindow { top, lo, hi }
    }

    /// Whether `counter` would be accepted (fresh and inside the window).
    pub fn check(&self, counter: u64) -> bool {
        if counter == u64::MAX {
            return false;
        }
        if counter >= self.top {
            return true;
        }
        let age = self.top - 1 - counter;
        age < WINDOW && self.bits() & (1u128 << age) == 0
    }

    /// Records `counter` as accepted. Call only after [`Self::check`] passed
    /// and the message authenticated.
    pub fn commit(&mut self, counter: u64) {
        if counter >= self.top {
            let shift = counter + 1 - self.top;
            let bits = if shift >= WINDOW {
                0
            } else {
                self.bits() << shift
            };
            self.set_bits(bits | 1);
            self.top = counter + 1;
        } else {
            let age = self.top - 1 - counter;
            if age < WINDOW {
                self.set_bits(self.bits() | (1u128 << age));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_once_in_any_order_within_window() {
        let mut w = ReplayWindow::default();
        for c in [5u64, 3, 7, 4, 0, 6] {
            assert!(w.check(c), "{c}");
            w.commit(c);
            assert!(!w.check(c), "replay of {c}");
        }
        assert!(w.check(1) && w.check(2) && w.check(8));
    }

    #[test]
    fn rejects_too_old() {
        let mut w = ReplayWindow::default();
        w.commit(1000);
        assert!(!w.check(1000 - WINDOW));
        assert!(w.check(1000 - WINDOW + 1));
        w.commit(5000);
        assert!(!w.check(1000 + 1));
        assert!(!w.check(u64::MAX));
    }

    #[test]
    fn check_does_not_change_state() {
        let w = ReplayWindow::default();
        let before = w.clone();
        let _ = w.check(10);
        assert_eq!(w, before);
    }
}
