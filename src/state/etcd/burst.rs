//! Sends one burst's transactions: at most [`IN_FLIGHT`] at a time, each
//! retried until etcd acknowledges it, the burst failing only once etcd has
//! acknowledged none of them for [`STALL`].
//!
//! A deadline on the whole burst would fail a healthy but slow cluster as
//! the fleet grows (a fresh start or a takeover writes every node's record
//! in one burst, 10,000 records are about 80 transactions); a deadline on
//! progress fails only a cluster that stopped answering, however large the
//! burst. Bounding the transactions in flight keeps one burst from filling
//! etcd's queues ahead of everyone else's requests (the election's
//! keep-alives, the other hub's watch) and costs nothing in throughput:
//! etcd batches what it has in hand into one raft proposal anyway.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::worker::CallError;

/// Transactions of one burst in flight at once.
pub const IN_FLIGHT: usize = 8;
/// How long a burst may go without etcd acknowledging any of its
/// transactions before the store gives up.
pub const STALL: Duration = Duration::from_secs(5);
/// The first pause before a transaction is sent again; it doubles on each
/// failure up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Sends transactions `0..count` through `send`, at most `in_flight` at a
/// time; an `Err` from `send` (a member gone, an etcd leader election, the
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
    in_flight: usize,
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
        while set.len() < in_flight.max(1) && next < count {
            let i = next;
            next += 1;
            let send = Arc::clone(&send);
            let last_error = Arc::clone(&last_error);
            set.spawn(async move {
                let mut pause = FIRST_PAUSE;
                loop {
                    match send(i).await {
                        Ok(applied) => return applied,
                        Err(e) => {
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn refused() -> etcd_client::Error {
        etcd_client::Error::InvalidArgs("refused".into())
    }

    /// A burst that takes far longer than `stall` in all succeeds, as long
    /// as each transaction is acknowledged within it; never more than
    /// `in_flight` are outstanding.
    #[tokio::test(start_paused = true)]
    async fn a_slow_burst_succeeds_while_it_progresses() {
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (n, p) = (Arc::clone(&now), Arc::clone(&peak));
        let start = Instant::now();
        let r = send_burst(
            40,
            4,
            Duration::from_secs(1),
            move |_| {
                let (n, p) = (Arc::clone(&n), Arc::clone(&p));
                async move {
                    let c = n.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(c, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    n.fetch_sub(1, Ordering::SeqCst);
                    Ok(true)
                }
            },
            || true,
        )
        .await;
        assert!(matches!(r, Ok(true)), "{r:?}");
        assert_eq!(peak.load(Ordering::SeqCst), 4);
        // 40 transactions, 4 at a time, 0.8 s each: 8 s, eight stalls' worth.
        assert_eq!(start.elapsed(), Duration::from_secs(8));
    }

    /// Failed sends are repeated until acknowledged.
    #[tokio::test(start_paused = true)]
    async fn failures_are_retried() {
        let tries = Arc::new(AtomicUsize::new(0));
        let t = Arc::clone(&tries);
        let r = send_burst(
            3,
            8,
            Duration::from_secs(5),
            move |i| {
                let t = Arc::clone(&t);
                async move {
                    let k = t.fetch_add(1, Ordering::SeqCst);
                    // Transaction 1 fails its first three attempts.
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
            2,
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
            2,
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
            1,
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
