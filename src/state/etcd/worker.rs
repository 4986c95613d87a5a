//! The etcd client on a thread of its own: the daemon's event loop is a
//! single-threaded runtime whose state writes are synchronous (durable
//! before the burst's datagrams go out), so each call is handed to this
//! thread's own runtime and the caller blocks on the reply, exactly as it
//! would block in `fdatasync`.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Why a call did not complete.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The client or the cluster refused or failed, until the deadline.
    #[error("{0}")]
    Etcd(#[from] etcd_client::Error),
    /// No answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A burst of writes in which etcd acknowledged nothing for `stall`.
    #[error(
        "etcd acknowledged no write for {stall:?} ({acked} of {total} transactions acknowledged{})",
        last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default()
    )]
    Stalled {
        /// How long without an acknowledgement.
        stall: Duration,
        /// Transactions acknowledged before.
        acked: usize,
        /// Transactions in the burst.
        total: usize,
        /// The last error a send got, if any.
        last_error: Option<String>,
    },
    /// The client thread is gone (it panicked or could not start).
    #[error("the etcd client thread is gone")]
    Gone,
}

type Job = Box<dyn FnOnce(Client) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A connected client on its own thread. Dropping it ends the thread.
pub struct Worker {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread and its client for `endpoints`; every request gets
    /// `timeout` (and the connection attempt too). The client connects
    /// lazily: the first call tells whether the cluster answers.
    pub fn start(endpoints: Vec<String>, timeout: Duration) -> Result<Worker, CallError> {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<(), etcd_client::Error>>(1);
        let thread = std::thread::Builder::new()
            .name("etcd-client".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(etcd_client::Error::IoError(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let options = ConnectOptions::new()
                        .with_connect_timeout(timeout)
                        .with_timeout(timeout)
                        // A member cut off from the others answers "no
                        // leader" at once instead of holding a write.
                        .with_require_leader(true);
                    let client = match Client::connect(&endpoints, Some(options)).await {
                        Ok(c) => {
                            let _ = ready_tx.send(Ok(()));
                            c
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    while let Some(job) = rx.recv().await {
                        job(client.clone()).await;
                    }
                });
            })
            .map_err(|e| CallError::Etcd(etcd_client::Error::IoError(e)))?;
        let worker = Worker {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => Err(CallError::Etcd(e)),
            Err(_) => Err(CallError::Gone),
        }
    }

    /// Runs `op` on the client thread, again on failure (after 50 ms, 100
    /// ms, ... up to 500 ms) until it succeeds or `deadline` has passed
    /// since the call: a member that died, or a leader election in
    /// progress, costs a retry, not the daemon. Every operation given must
    /// be safe to repeat (puts of the same value, deletes). Blocks the
    /// calling thread until then.
    pub fn call<T, F, Fut>(&self, deadline: Duration, op: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        self.run(move |client: Client| retry(client, deadline, op))
    }
}

impl Worker {
    /// Runs `op` once on the client thread, with no deadline or retry of
    /// its own (`op` brings both), and blocks until it ends.
    pub fn run<T, F, Fut>(&self, op: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, CallError>> + Send + 'static,
    {
        let (tx, rx) = std_mpsc::sync_channel::<Result<T, CallError>>(1);
        let job: Job = Box::new(move |client: Client| {
            Box::pin(async move {
                let _ = tx.send(op(client).await);
            })
        });
        let jobs = self.jobs.as_ref().ok_or(CallError::Gone)?;
        jobs.send(job).map_err(|_| CallError::Gone)?;
        rx.recv().map_err(|_| CallError::Gone)?
    }

    /// Starts `task` on the client thread, in the background: it runs
    /// beside the calls until it ends or the worker is dropped.
    pub fn spawn<F, Fut>(&self, task: F) -> Result<(), CallError>
    where
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let job: Job = Box::new(move |client: Client| {
            Box::pin(async move {
                tokio::spawn(task(client));
            })
        });
        let jobs = self.jobs.as_ref().ok_or(CallError::Gone)?;
        jobs.send(job).map_err(|_| CallError::Gone)
    }
}

/// The first pause before a failed request is sent again; it doubles on
/// each failure up to [`MAX_PAUSE`].
pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two sends of one request.
pub(super) const MAX_PAUSE: Duration = Duration::from_millis(500);

/// [`patiently`] with `deadline` counted from the call.
async fn retry<T, F, Fut>(client: Client, deadline: Duration, op: F) -> Result<T, CallError>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut since = Instant::now();
    patiently(&mut since, deadline, move || op(client.clone())).await
}

/// Runs `ask` (one request: a call, a page of a read) until it answers,
/// again after each failure (pauses from [`FIRST_PAUSE`] doubling up to
/// [`MAX_PAUSE`]); fails once nothing answered for `stall` since
/// `progress`, which an answer moves to now. A read of many pages passes
/// one `progress` to each page, so it fails only when it stops moving.
pub(super) async fn patiently<T, F, Fut>(
    progress: &mut Instant,
    stall: Duration,
    mut ask: F,
) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut pause = FIRST_PAUSE;
    loop {
        let left = (*progress + stall).saturating_duration_since(Instant::now());
        let err = match tokio::time::timeout(left, ask()).await {
            Ok(Ok(v)) => {
                *progress = Instant::now();
                return Ok(v);
            }
            Ok(Err(e)) => CallError::Etcd(e),
            Err(_) => CallError::Timeout(stall),
        };
        if Instant::now() + pause >= *progress + stall {
            return Err(err);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once it is idle.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten pages of 1 s each under a 2 s stall: the read takes 10 s and
    /// succeeds, each answer moving the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_read_of_many_slow_pages_succeeds_while_each_answers() {
        let start = Instant::now();
        let mut progress = Instant::now();
        for _ in 0..10 {
            let r = patiently(&mut progress, Duration::from_secs(2), || async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, etcd_client::Error>(())
            })
            .await;
            assert!(r.is_ok(), "{r:?}");
        }
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    /// A page that fails is asked again; one that never answers fails the
    /// read once the stall has passed since the last answer.
    #[tokio::test(start_paused = true)]
    async fn a_failing_page_is_asked_again_until_the_stall() {
        let mut progress = Instant::now();
        let mut tries = 0;
        let r = patiently(&mut progress, Duration::from_secs(2), || {
            tries += 1;
            let k = tries;
            async move {
                if k < 4 {
                    Err(etcd_client::Error::InvalidArgs("no leader".into()))
                } else {
                    Ok(k)
                }
            }
        })
        .await;
        assert_eq!(r.ok(), Some(4));
        let start = Instant::now();
        let r: Result<(), CallError> = patiently(&mut progress, Duration::from_secs(2), || async {
            Err(etcd_client::Error::InvalidArgs("no leader".into()))
        })
        .await;
        assert!(matches!(r, Err(CallError::Etcd(_))), "{r:?}");
        let took = start.elapsed();
        assert!(took <= Duration::from_secs(2), "{took:?}");
    }
}
