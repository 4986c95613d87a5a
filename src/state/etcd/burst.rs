//! Sends one burst's transactions: a few at a time ([`Window`]), each
//! retried until etcd acknowledges it, the burst failing only once etcd has
//! acknowledged none of them for [`STALL`].
//!
//! A deadline on the whole burst would fail a healthy but slow cluster as
//! the fleet grows (a fresh start or a takeover writes every node's record
//! in one burst, 10,000 records are about 80 transactions); a deadline on
//! progress fails only a cluster that stopped answering, however large the
//! burst.
//!
//! The window keeps etcd's backlog short, for the leader's own lease: an
//! etcd leader (3.4.20 and later) answers a lease renewal only once it has
//! applied every entry committed before it, and gives up after about a
//! second. A burst sent all at once can keep that backlog above a second
//! for as long as it lasts (three members in UML applied a 128-put
//! transaction in up to 750 ms): every renewal fails, and the hub steps
//! down in the middle of its own takeover. So the window grows by one per
//! transaction acknowledged within [`TARGET`] of its sending, up to
//! [`IN_FLIGHT`], and halves on each slower acknowledgement or failure,
//! down to one: the backlog stays about [`TARGET`] deep, and a cluster that
//! applies quickly still gets several transactions at once to batch into
//! one raft proposal.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::worker::{CallError, FIRST_PAUSE, MAX_PAUSE};

/// Most transactions in flight at once.
pub const IN_FLIGHT: usize = 8;
/// The acknowledgement time the window aims at: well under the second an
/// etcd leader waits for its backlog before it refuses a lease renewal.
pub const TARGET: Duration = Duration::from_millis(250);
/// How long a burst may go without etcd acknowledging any of its
/// transactions before the store gives up.
pub const STALL: Duration = Duration::from_secs(5);

/// How many transactions may be in flight, kept across bursts (one per
/// store): 1 to its maximum, starting at 1.
#[derive(Debug)]
pub struct Window {
    now: AtomicUsize,
    max: usize,
}

impl Window {
    /// A window of 1, growing to at most `max` (at least 1).
    pub fn new(max: usize) -> Window {
        Window {
            now: AtomicUsize::new(1),
            max: max.max(1),
        }
    }

    /// Transactions that may be in flight now.
    pub fn get(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }

    /// One transaction acknowledged `took` after it was sent (`None`: it
    /// failed).
    fn on_ack(&self, took: Option<Duration>) {
        let w = self.get();
        let next = match took {
            Some(t) if t <= TARGET => (w + 1).min(self.max),
            _ => (w / 2).max(1),
        };
        self.now.store(next, Ordering::Relaxed);
    }
}

/// Sends transactions `0..count` through `send`, at most `window` at a
/// time (adjusted as they are acknowledged); an `Err` from `send` (a member gone, an etcd leader election, the
/// client's own request timeout) sends the same transaction again after a
/// pause, so every transaction given must be safe to repeat.
///
/// `Ok(true)`: every transaction was acknowledged and applied.
/// `Ok(false)`: one was acknowledged but not applied (its condition
/// failed), or `go_on` (asked before each send and after each
/// acknowledgement) said stop; the rest were not sent, or abandoned.
/// `Err(Stalled)`: no acknowledgement within `stall` of the start or of the
/// previous one.
pub async fn send_burst<S, Fut>(
    count: usize,
    window: Arc<Window>,
    stall: Duration,
    send: S,
    go_on: impl Fn() -> bool,
) -> Result<bool, CallError>
where
    S: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, etcd_client::Error>> + Send + 'static,
{
    let send = Arc::new(send);
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut set = JoinSet::new();
    let mut next = 0;
    let mut acked = 0;
    let mut deadline = Instant::now() + stall;
    loop {
        if !go_on() {
            return Ok(false);
        }
        while set.len() < window.get() && next < count {
            let i = next;
            next += 1;
            let send = Arc::clone(&send);
            let last_error = Arc::clone(&last_error);
            let window = Arc::clone(&window);
            set.spawn(async move {
                let mut pause = FIRST_PAUSE;
                loop {
                    let sent = Instant::now();
                    match send(i).await {
                        Ok(applied) => {
                            window.on_ack(Some(sent.elapsed()));
                            return applied;
                        }
                        Err(e) => {
                            window.on_ack(None);
                            *lock(&last_error) = Some(e.to_string());
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(MAX_PAUSE);
                        }
                    }
                }
            });
        }
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(None) => return Ok(true),
            Ok(Some(Ok(true))) => {
                acked += 1;
                deadline = Instant::now() + stall;
            }
            Ok(Some(Ok(false))) => return Ok(false),
            Ok(Some(Err(e))) => {
                return Err(CallError::Etcd(etcd_client::Error::IoError(
                    std::io::Error::other(e),
                )));
            }
            Err(_) => {
                return Err(CallError::Stalled {
                    stall,
                    acked,
                    total: count,
                    last_error: lock(&last_error).take(),
                });
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> etcd_client::Error {
        etcd_client::Error::InvalidArgs("refused".into())
    }

    /// Sends `count` transactions, each acknowledged (applied) after
    /// `took(k)` where k is how many were in flight when it was sent, with
    /// a window of at most `max`; returns the result, the most ever in
    /// flight, and the (virtual) time it took.
    async fn run(
        count: usize,
        max: usize,
        stall: Duration,
        took: fn(usize) -> Duration,
    ) -> (Result<bool, CallError>, usize, Duration) {
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (n, p) = (Arc::clone(&now), Arc::clone(&peak));
        let start = Instant::now();
        let r = send_burst(
            count,
            Arc::new(Window::new(max)),
            stall,
            move |_| {
                let (n, p) = (Arc::clone(&n), Arc::clone(&p));
                async move {
                    let k = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(k, Ordering::SeqCst);
                    tokio::time::sleep(took(k)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    Ok(true)
                }
            },
            || true,
        )
        .await;
        (r, peak.load(Ordering::SeqCst), start.elapsed())
    }

    /// A burst that takes far longer than `stall` in all succeeds, as long
    /// as each transaction is acknowledged within it; acknowledgements
    /// slower than the target keep the window at one.
    #[tokio::test(start_paused = true)]
    async fn a_slow_burst_succeeds_while_it_progresses() {
        let (r, peak, took) = run(40, 4, Duration::from_secs(1), |_| {
            Duration::from_millis(800)
        })
        .await;
        assert!(matches!(r, Ok(true)), "{r:?}");
        assert_eq!(peak, 1);
        // 40 transactions one at a time, 0.8 s each: 32 stalls' worth.
        assert_eq!(took, Duration::from_secs(32));
    }

    /// Quick acknowledgements open the window up to its maximum.
    #[tokio::test(start_paused = true)]
    async fn quick_acknowledgements_open_the_window() {
        let (r, peak, _) = run(40, 4, STALL, |_| Duration::from_millis(10)).await;
        assert!(matches!(r, Ok(true)), "{r:?}");
        assert_eq!(peak, 4);
    }

    /// A cluster whose answers slow down with the backlog (each
    /// transaction in flight adds 150 ms): the window settles where an
    /// acknowledgement takes about the target, never deeper.
    #[tokio::test(start_paused = true)]
    async fn the_window_follows_a_backlog_that_costs_time() {
        let (r, peak, _) = run(60, 8, STALL, |k| Duration::from_millis(150 * k as u64)).await;
        assert!(matches!(r, Ok(true)), "{r:?}");
        // One in flight: 150 ms (within 250: grow); two or more: 300 ms
        // and up (halve). A quick acknowledgement while another is out
        // can let a third go before the slow one comes back; no deeper.
        assert!((2..=3).contains(&peak), "{peak}");
    }

    /// Failed sends are repeated until acknowledged.
    #[tokio::test(start_paused = true)]
    async fn failures_are_retried() {
        let tries = Arc::new(AtomicUsize::new(0));
        let t = Arc::clone(&tries);
        let r = send_burst(
            3,
            Arc::new(Window::new(8)),
            Duration::from_secs(5),
            move |i| {
                let t = Arc::clone(&t);
                async move {
                    let k = t.fetch_add(1, Ordering::SeqCst);
                    // Transaction 1 fails its first attempts.
                    if i == 1 && k < 6 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Err(refused())
                    } else {
                        Ok(true)
                    }
                }
            },
            || true,
        )
        .await;
        assert!(matches!(r, Ok(true)), "{r:?}");
        assert!(tries.load(Ordering::SeqCst) >= 4);
    }

    /// No acknowledgement for `stall`: the burst fails, saying how far it
    /// got and the last error seen.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_burst_fails_with_what_it_saw() {
        let start = Instant::now();
        let r = send_burst(
            5,
            Arc::new(Window::new(2)),
            Duration::from_secs(2),
            |i| async move {
                if i < 2 {
                    Ok(true)
                } else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Err(refused())
                }
            },
            || true,
        )
        .await;
        match r {
            Err(CallError::Stalled {
                acked,
                total,
                last_error,
                ..
            }) => {
                assert_eq!((acked, total), (2, 5));
                assert!(last_error.is_some_and(|e| e.contains("refused")));
            }
            other => panic!("{other:?}"),
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    /// A transaction whose condition failed ends the burst at once.
    #[tokio::test(start_paused = true)]
    async fn a_failed_condition_ends_the_burst() {
        let sent = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&sent);
        let r = send_burst(
            100,
            Arc::new(Window::new(2)),
            Duration::from_secs(5),
            move |i| {
                s.fetch_add(1, Ordering::SeqCst);
                async move { Ok(i != 3) }
            },
            || true,
        )
        .await;
        assert!(matches!(r, Ok(false)), "{r:?}");
        assert!(sent.load(Ordering::SeqCst) < 10);
    }

    /// `go_on` saying stop (the fence's clock ran out) ends the burst
    /// before anything more is sent.
    #[tokio::test(start_paused = true)]
    async fn go_on_stops_the_burst() {
        let sent = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&sent);
        let seen = Arc::clone(&sent);
        let r = send_burst(
            100,
            Arc::new(Window::new(1)),
            Duration::from_secs(5),
            move |_| {
                s.fetch_add(1, Ordering::SeqCst);
                async move { Ok(true) }
            },
            move || seen.load(Ordering::SeqCst) < 5,
        )
        .await;
        assert!(matches!(r, Ok(false)), "{r:?}");
        assert_eq!(sent.load(Ordering::SeqCst), 5);
    }
}
