//! The daemon's clocks, read once per step and handed to the core as one
//! [`Now`].

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rotor_core::{Now, Time};

/// Monotonic milliseconds since the process first read a [`Clock`], and the
/// wall clock. Every `Clock` of a process shares that origin, so a machine
/// built before the event loop starts and the loop agree on the time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

static ORIGIN: OnceLock<Instant> = OnceLock::new();

impl Default for Clock {
    fn default() -> Self {
        Clock {
            origin: *ORIGIN.get_or_init(Instant::now),
        }
    }
}

impl Clock {
    /// Both clocks, now. A wall clock before 1970 reads as 0 (init
    /// timestamps then fail the hub's skew check instead of wrapping).
    pub fn now(&self) -> Now {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Now {
            mono: self.mono(),
            unix_ms,
        }
    }

    /// The monotonic clock alone.
    pub fn mono(&self) -> Time {
        Time(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// The tokio instant of core time `t`, for sleeping until it.
    pub fn instant(&self, t: Time) -> tokio::time::Instant {
        let at = self
            .origin
            .checked_add(Duration::from_millis(t.0))
            // Far beyond any deadline the core sets: a day from now will do.
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::time::Instant::from_std(at)
    }
}
