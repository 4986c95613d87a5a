//! The periodic summary: per-rotation lines are debug (a busy hub rotates
//! thousands of nodes a second), so at info the log says every
//! [`SUMMARY_EVERY_MS`] what happened since the last summary, and nothing
//! when nothing did.
//!
//! Pure data: time comes in as [`Time`], the caller writes the line.

use std::collections::BTreeMap;

use rotor_core::{Event, Time};

/// Period of the summary.
pub const SUMMARY_EVERY_MS: u64 = 60_000;

/// What happened in one period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Period {
    /// Milliseconds the period lasted.
    pub ms: u64,
    /// Rotations (new generations).
    pub rotations: u64,
    /// Keys sent again to a peer that missed one.
    pub resends: u64,
    /// Chains (re)initialised.
    pub inits: u64,
    /// Datagrams dropped, by reason.
    pub drops: BTreeMap<&'static str, u64>,
    /// Kernel operations refused.
    pub kernel_errors: u64,
}

impl Period {
    /// Whether anything happened.
    pub fn is_empty(&self) -> bool {
        self.rotations == 0
            && self.resends == 0
            && self.inits == 0
            && self.drops.is_empty()
            && self.kernel_errors == 0
    }

    /// Drops of every reason.
    pub fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }

    /// The drops as `reason=N ...`, or `-`.
    pub fn drops_text(&self) -> String {
        if self.drops.is_empty() {
            return "-".into();
        }
        let parts: Vec<String> = self.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(" ")
    }
}

/// Counts events between summaries.
#[derive(Debug)]
pub struct Summary {
    every_ms: u64,
    /// Start of the current period.
    since: Time,
    /// The kernel error counter at its start.
    kernel_errors_at: u64,
    current: Period,
}

impl Summary {
    /// A summary every `every_ms`, the first period starting at `now` with
    /// the kernel error counter at `kernel_errors`.
    pub fn new(every_ms: u64, now: Time, kernel_errors: u64) -> Self {
        Summary {
            every_ms,
            since: now,
            kernel_errors_at: kernel_errors,
            current: Period::default(),
        }
    }

    /// Counts `e`, if it is one the summary reports.
    pub fn count(&mut self, e: &Event) {
        let c = &mut self.current;
        match e {
            Event::Rotated { .. } => c.rotations += 1,
            Event::Resent { .. } => c.resends += 1,
            Event::Initialised { .. } => c.inits += 1,
            Event::Dropped { reason, .. } => *c.drops.entry(reason.name()).or_insert(0) += 1,
            Event::Confirmed { .. }
            | Event::Moved { .. }
            | Event::FallbackToInit { .. }
            | Event::KernelRepaired { .. } => {}
        }
    }

    /// When the next summary is due: `None` while nothing happened (no
    /// wake-up is needed for an empty one).
    pub fn due(&self, kernel_errors: u64) -> Option<Time> {
        let idle = self.current.is_empty() && kernel_errors == self.kernel_errors_at;
        (!idle).then(|| self.since.plus_ms(self.every_ms))
    }

    /// The period that ended, once it is due and if anything happened;
    /// a new period starts then. A quiet period ends without a summary
    /// and the next one starts at once.
    pub fn take(&mut self, now: Time, kernel_errors: u64) -> Option<Period> {
        if now.since(self.since) < self.every_ms {
            return None;
        }
        let mut p = std::mem::take(&mut self.current);
        p.ms = now.since(self.since);
        p.kernel_errors = kernel_errors.saturating_sub(self.kernel_errors_at);
        self.since = now;
        self.kernel_errors_at = kernel_errors;
        (!p.is_empty()).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use rotor_core::{DropReason, PeerId};

    use super::*;

    fn rotated() -> Event {
        Event::Rotated {
            peer: PeerId(0),
            generation: 2,
            spi: 0x1000,
            tx_spi: 0x0fff,
        }
    }

    #[test]
    fn a_quiet_period_gives_no_summary_and_asks_for_no_wake_up() {
        let mut s = Summary::new(1_000, Time(0), 5);
        assert_eq!(s.due(5), None);
        assert_eq!(s.take(Time(1_000), 5), None);
        s.count(&Event::Confirmed {
            peer: PeerId(0),
            generation: 1,
        });
        assert_eq!(s.due(5), None, "a confirmation alone is not reported");
    }

    #[test]
    fn a_period_reports_what_happened_in_it_once_due() {
        let mut s = Summary::new(1_000, Time(0), 5);
        s.count(&rotated());
        s.count(&rotated());
        s.count(&Event::Resent {
            peer: PeerId(1),
            generation: 2,
            spi: 0x1000,
        });
        for _ in 0..3 {
            s.count(&Event::Dropped {
                reason: DropReason::UnknownSpi,
                peer: None,
            });
        }
        assert_eq!(s.due(5), Some(Time(1_000)));
        assert_eq!(s.take(Time(999), 7), None, "not due yet");
        let p = s.take(Time(1_200), 7).expect("due, and things happened");
        assert_eq!((p.ms, p.rotations, p.resends, p.inits), (1_200, 2, 1, 0));
        assert_eq!(p.dropped(), 3);
        assert_eq!(p.drops_text(), "unknown_spi=3");
        assert_eq!(p.kernel_errors, 2);
        // The next period starts empty at 1200, kernel errors counted from 7.
        assert_eq!(s.due(7), None);
        assert_eq!(s.due(8), Some(Time(2_200)));
        let p = s.take(Time(2_200), 8).expect("a kernel error happened");
        assert_eq!((p.rotations, p.kernel_errors), (0, 1));
    }
}
