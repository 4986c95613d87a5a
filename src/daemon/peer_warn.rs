//! Per-peer warnings, rate-limited: a node with a wrong key or a refused SA
//! keeps failing for as long as the cause stays, and a hub of thousands must
//! not write a line per failed datagram. Each (peer, trouble) pair may warn
//! once per [`WARN_EVERY_MS`]; the warnings held back meanwhile are counted
//! and reported with the next one.
//!
//! Pure data: time comes in as [`Time`], the caller writes the log line.

use std::collections::HashMap;

use rotor_core::Time;

/// Least time between two warnings of one kind about one peer.
pub const WARN_EVERY_MS: u64 = 60_000;

/// What is wrong with a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trouble {
    /// Its datagrams fail our key for it, or carry an SPI none of ours has.
    WrongKey,
    /// Its init timestamp is outside the allowed skew.
    ClockSkew,
    /// The kernel refused an SA or policy operation for it.
    KernelRefused,
    /// One of its SAs reached the kernel's soft lifetime.
    RotationOverdue,
}

impl Trouble {
    const ALL: usize = 4;

    fn index(self) -> usize {
        match self {
            Trouble::WrongKey => 0,
            Trouble::ClockSkew => 1,
            Trouble::KernelRefused => 2,
            Trouble::RotationOverdue => 3,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// When the last warning was let through; `None`: never.
    last: Option<Time>,
    /// Warnings held back since.
    suppressed: u64,
}

/// The rate limiter. Holds an entry only for peers that had trouble; idle
/// entries are dropped as the table grows, so a burst of trouble across a
/// large hub does not pin memory for good.
#[derive(Debug)]
pub struct PeerWarnings {
    every_ms: u64,
    slots: HashMap<String, [Slot; Trouble::ALL]>,
    /// Size at which the next sweep of idle entries runs.
    sweep_at: usize,
}

impl Default for PeerWarnings {
    fn default() -> Self {
        PeerWarnings::new(WARN_EVERY_MS)
    }
}

impl PeerWarnings {
    /// At most one warning per peer and trouble every `every_ms`.
    pub fn new(every_ms: u64) -> Self {
        PeerWarnings {
            every_ms,
            slots: HashMap::new(),
            sweep_at: 64,
        }
    }

    /// Whether a warning about `peer`'s `trouble` may be written at `now`:
    /// `Some(n)` with the number held back since the last one, or `None`
    /// (this one is held back and counted).
    pub fn allow(&mut self, peer: &str, trouble: Trouble, now: Time) -> Option<u64> {
        if !self.slots.contains_key(peer) {
            if self.slots.len() >= self.sweep_at {
                self.sweep(now);
            }
            self.slots.insert(peer.to_string(), Default::default());
        }
        let slot = self.slots.get_mut(peer)?.get_mut(trouble.index())?;
        match slot.last {
            Some(t) if now.since(t) < self.every_ms => {
                slot.suppressed += 1;
                None
            }
            _ => {
                slot.last = Some(now);
                Some(std::mem::take(&mut slot.suppressed))
            }
        }
    }

    /// Peers with an entry (for tests and the sweep).
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }

    /// Drops entries with nothing held back whose every warning is older
    /// than the interval (the next warning would pass anyway), then lets
    /// the table double before sweeping again.
    fn sweep(&mut self, now: Time) {
        let every = self.every_ms;
        self.slots.retain(|_, slots| {
            slots
                .iter()
                .any(|s| s.suppressed > 0 || s.last.is_some_and(|t| now.since(t) < every))
        });
        self.sweep_at = (self.slots.len() * 2).max(64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_peer_and_trouble_per_interval_with_the_held_back_count() {
        let mut w = PeerWarnings::new(1_000);
        assert_eq!(w.allow("mn1", Trouble::WrongKey, Time(0)), Some(0));
        assert_eq!(w.allow("mn1", Trouble::WrongKey, Time(10)), None);
        assert_eq!(w.allow("mn1", Trouble::WrongKey, Time(999)), None);
        // Other peers and other troubles have their own budget.
        assert_eq!(w.allow("mn2", Trouble::WrongKey, Time(10)), Some(0));
        assert_eq!(w.allow("mn1", Trouble::ClockSkew, Time(10)), Some(0));
        // A full interval after the last one let through: the next passes
        // and reports the two held back.
        assert_eq!(w.allow("mn1", Trouble::WrongKey, Time(1_000)), Some(2));
        assert_eq!(w.allow("mn1", Trouble::WrongKey, Time(1_500)), None);
        assert_eq!(w.allow("mn1", Trouble::WrongKey, Time(5_000)), Some(1));
        assert_eq!(w.allow("mn1", Trouble::WrongKey, Time(9_000)), Some(0));
    }

    #[test]
    fn idle_entries_are_swept_but_held_back_counts_survive() {
        let mut w = PeerWarnings::new(1_000);
        assert_eq!(w.allow("keep", Trouble::KernelRefused, Time(0)), Some(0));
        assert_eq!(w.allow("keep", Trouble::KernelRefused, Time(1)), None);
        for i in 0..63 {
            w.allow(&format!("mn{i}"), Trouble::WrongKey, Time(0));
        }
        assert_eq!(w.tracked(), 64);
        // Long after: the 63 idle entries go at the next new peer, the one
        // with a held-back warning stays.
        w.allow("new", Trouble::WrongKey, Time(10_000));
        assert_eq!(w.tracked(), 2);
        assert_eq!(
            w.allow("keep", Trouble::KernelRefused, Time(10_000)),
            Some(1)
        );
    }
}
