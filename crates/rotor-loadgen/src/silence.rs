//! How long the nodes wait for their hub: per node, the moment of the
//! oldest datagram it sent that the hub has not answered yet, and the
//! waits that ended (an authenticated message from the hub) after lasting
//! at least a threshold.
//!
//! A failover or a restart of the hub shows here as nodes whose hellos go
//! unanswered; the moment the last such wait ends is when every node that
//! noticed the outage hears from a hub again. A hello answered within the
//! threshold (a round trip) is no wait. Only nodes past their first init
//! are followed: an init that waits for its reply is the hub's init
//! pacing, not an outage.

use rotor_core::Now;
use serde_json::json;

/// The nodes' waits for the hub.
#[derive(Debug, Clone)]
pub struct Silences {
    threshold_ms: u64,
    /// Per node: when the oldest unanswered datagram left (monotonic ms).
    since: Vec<Option<u64>>,
    /// Waits of at least the threshold that ended since the last restart.
    waits: u64,
    /// The longest of them, in ms.
    max_ms: u64,
    /// When the latest of them ended (Unix ms).
    last_end_unix_ms: Option<u64>,
    /// The most nodes seen waiting at once (at [`Silences::observe`]).
    peak: usize,
}

impl Silences {
    /// `count` nodes, none waiting; a wait counts from `threshold_ms` on.
    pub fn new(count: usize, threshold_ms: u64) -> Silences {
        Silences {
            threshold_ms,
            since: vec![None; count],
            waits: 0,
            max_ms: 0,
            last_end_unix_ms: None,
            peak: 0,
        }
    }

    /// Node `i` sent a datagram at `mono_ms`: it waits from then unless it
    /// already waits for an earlier one.
    pub fn sent(&mut self, i: usize, mono_ms: u64) {
        if let Some(s) = self.since.get_mut(i)
            && s.is_none()
        {
            *s = Some(mono_ms);
        }
    }

    /// Node `i` heard from the hub at `now`: its wait, if any, ends.
    pub fn heard(&mut self, i: usize, now: Now) {
        let Some(Some(t0)) = self.since.get_mut(i).map(Option::take) else {
            return;
        };
        let waited = now.mono.0.saturating_sub(t0);
        if waited >= self.threshold_ms {
            self.waits += 1;
            self.max_ms = self.max_ms.max(waited);
            self.last_end_unix_ms = Some(now.unix_ms);
        }
    }

    /// Nodes waiting at `mono_ms` for at least the threshold; also kept as
    /// the peak.
    pub fn observe(&mut self, mono_ms: u64) -> usize {
        let n = self
            .since
            .iter()
            .filter(|s| s.is_some_and(|t0| mono_ms.saturating_sub(t0) >= self.threshold_ms))
            .count();
        self.peak = self.peak.max(n);
        n
    }

    /// Starts the ended-wait figures and the peak over (the waits under
    /// way stay: one that ends later is counted whole).
    pub fn restart(&mut self) {
        self.waits = 0;
        self.max_ms = 0;
        self.last_end_unix_ms = None;
        self.peak = 0;
    }

    /// The figures for the progress JSON, `waiting` as [`Silences::observe`]
    /// returned it.
    pub fn json(&self, waiting: usize) -> serde_json::Value {
        json!({
            "threshold_ms": self.threshold_ms,
            "waiting": waiting,
            "waiting_peak": self.peak,
            "waits": self.waits,
            "wait_max_ms": self.max_ms,
            "last_wait_end_unix_ms": self.last_end_unix_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rotor_core::Time;

    fn at(mono: u64) -> Now {
        Now::new(Time(mono), 1_000_000 + mono)
    }

    #[test]
    fn a_wait_runs_from_the_first_unanswered_send_to_the_answer() {
        let mut s = Silences::new(2, 1000);
        s.sent(0, 100);
        s.sent(0, 2_000); // a repeat: still the first one's wait
        assert_eq!(s.observe(1_099), 0);
        assert_eq!(s.observe(1_100), 1);
        s.heard(0, at(5_100));
        assert_eq!(s.observe(5_100), 0);
        let j = s.json(0);
        assert_eq!(j["waits"], 1);
        assert_eq!(j["wait_max_ms"], 5_000);
        assert_eq!(j["last_wait_end_unix_ms"], 1_005_100);
        assert_eq!(j["waiting_peak"], 1);
    }

    #[test]
    fn a_round_trip_under_the_threshold_is_no_wait() {
        let mut s = Silences::new(1, 1000);
        s.sent(0, 100);
        s.heard(0, at(1_099));
        assert_eq!(s.json(0)["waits"], 0);
        assert_eq!(s.json(0)["last_wait_end_unix_ms"], serde_json::Value::Null);
        // Heard without having sent: nothing to end.
        s.heard(0, at(9_000));
        assert_eq!(s.json(0)["waits"], 0);
    }

    #[test]
    fn a_restart_forgets_ended_waits_but_keeps_the_one_under_way() {
        let mut s = Silences::new(2, 10);
        s.sent(0, 0);
        s.heard(0, at(50));
        s.sent(1, 40);
        s.observe(60);
        s.restart();
        assert_eq!(s.json(0)["waits"], 0);
        assert_eq!(s.json(0)["waiting_peak"], 0);
        s.heard(1, at(100));
        let j = s.json(0);
        assert_eq!(j["waits"], 1);
        assert_eq!(j["wait_max_ms"], 60);
    }

    #[test]
    fn an_index_out_of_range_changes_nothing() {
        let mut s = Silences::new(1, 10);
        s.sent(5, 0);
        s.heard(5, at(100));
        assert_eq!(s.observe(100), 0);
        assert_eq!(s.json(0)["waits"], 0);
    }
}
