//! One active hub per etcd prefix: an election on an etcd lease, and the
//! fencing token every record write of the winner carries.
//!
//! # Election
//! Each contender holds a lease of `ttl` (kept alive every `ttl / 3`) and
//! campaigns by creating `PREFIX/leader` under it, only if the key does
//! not exist (a transaction comparing its create revision with 0). The
//! winner's key lives as long as its lease: a hub that dies (or is cut off
//! from etcd) stops renewing, etcd deletes the key when the lease runs
//! out, and a waiting contender (it watches the key) creates it anew.
//!
//! # Fencing
//! The create revision of the winner's key is its token ([`Fence`]): every
//! write of the winner's records compares `PREFIX/leader`'s create revision
//! with it, so once the key is gone or another hub's, the old winner's
//! writes are refused by etcd itself, and it sends nothing of them.
//!
//! A winner also steps down on its own clock: etcd cannot expire the lease
//! before `ttl` after the last keep-alive it received, which was sent after
//! the instant this side records, so until that instant plus `ttl` minus
//! [`MARGIN`] no other hub can have won ([`Fence::check`]). Past that, the
//! fence refuses and [`Fence::wait_lost`] returns.
//!
//! # Hand-over
//! A leader that serves (its SAs and policies installed, the service
//! address taken and announced) says so: `PREFIX/serving` under its lease,
//! holding its token ([`mark_serving`]). A leader stopping cleanly revokes
//! its lease first (its loop has stopped: it sends and writes nothing
//! more), then keeps its service address until a successor marks itself
//! serving ([`wait_serving`], bounded), and only then gives the address up:
//! the nodes' traffic always has a hub holding its SAs to go to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::oneshot;

use super::EtcdTarget;

/// How long before the lease can run out in etcd a leader stops acting:
/// covers a burst's send after its last fence check and the two clocks'
/// rates.
pub const MARGIN: Duration = Duration::from_millis(500);
/// The lease's time to live unless configured (`hub.lease_ttl`). It must
/// outlast an etcd leader election (about one election timeout, 1 s by
/// default) plus a keep-alive interval plus [`MARGIN`], or the loss of
/// etcd's leader makes the hub step down. etcd grants at least its own
/// minimum (2 s with its default timings); the granted TTL is what counts.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);
/// How long taking the first lease may take, retries included.
const START_DEADLINE: Duration = Duration::from_secs(5);
/// How long one request of the election may take.
const REQUEST: Duration = Duration::from_secs(1);

/// Why the election could not be run or was lost.
#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    /// etcd could not be reached or refused.
    #[error("{target}: leader election: cannot {op}: {source}")]
    Etcd {
        /// The state URL.
        target: String,
        /// What we were doing.
        op: &'static str,
        /// Why.
        #[source]
        source: etcd_client::Error,
    },
    /// The election thread is gone.
    #[error("{target}: the leader election thread stopped")]
    Gone {
        /// The state URL.
        target: String,
    },
}

/// The winner's right to write: the token and the clock it runs out on.
/// Clones share one state.
#[derive(Clone, Debug)]
pub struct Fence {
    key: String,
    token: i64,
    lease: i64,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Until when this side may act (last acknowledged keep-alive's send
    /// instant + TTL - MARGIN).
    until: Mutex<Instant>,
    /// Set once the lease or the key is known gone: never cleared.
    lost: AtomicBool,
    why: Mutex<String>,
}

impl Fence {
    /// The etcd key whose create revision is the token.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token: the create revision of this hub's leader key.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// The leader lease's id.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// `Ok` while this hub certainly still leads; otherwise why not, in
    /// words fit for the log.
    pub fn check(&self) -> Result<(), String> {
        if self.shared.lost.load(Ordering::SeqCst) {
            return Err(self.why());
        }
        let until = *lock(&self.shared.until);
        if Instant::now() >= until {
            self.lose(format!(
                "no keep-alive of the leader lease acknowledged in time (step-down at TTL - {MARGIN:?})"
            ));
            return Err(self.why());
        }
        Ok(())
    }

    /// Blocks until this hub no longer leads; returns why.
    pub fn wait_lost(&self) -> String {
        loop {
            if let Err(why) = self.check() {
                return why;
            }
            let until = *lock(&self.shared.until);
            let nap = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20));
            std::thread::sleep(nap);
        }
    }

    fn lose(&self, why: String) {
        let mut w = lock(&self.shared.why);
        if !self.shared.lost.swap(true, Ordering::SeqCst) {
            *w = why;
        }
    }

    fn why(&self) -> String {
        format!(
            "this hub no longer leads (token {} of {}): {}",
            self.token,
            self.key,
            lock(&self.shared.why)
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A contender: its lease, kept alive on a thread of its own. Dropping it
/// revokes the lease (a clean hand-over: the next contender wins at once).
pub struct Election {
    target: String,
    lease: i64,
    ttl: Duration,
    won: Option<std_mpsc::Receiver<Fence>>,
    stop: Option<oneshot::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl Election {
    /// Connects to `target`, revokes `previous` (the lease of this hub's
    /// own previous run, known dead: a killed leader's successor on the
    /// same host need not wait out its TTL; an unknown lease is ignored),
    /// takes a lease of `ttl` and starts campaigning for `PREFIX/leader`
    /// with `id` (who leads, for operators) as value.
    pub fn start(
        target: &EtcdTarget,
        id: &str,
        ttl: Duration,
        previous: Option<i64>,
    ) -> Result<Election, LeadError> {
        let name = target.to_string();
        let err = |op| {
            let name = name.clone();
            move |source| LeadError::Etcd {
                target: name,
                op,
                source,
            }
        };
        let endpoints = target.endpoints.clone();
        let key = format!("{}/leader", target.prefix);
        let (won_tx, won_rx) = std_mpsc::sync_channel(1);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let id = id.to_owned();
        let ttl_s = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        // Everything on the thread's own runtime: the caller may be inside
        // one (the daemon's), where another cannot be entered.
        let thread = std::thread::Builder::new()
            .name("etcd-lead".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx
                            .send(Err(("start its runtime", etcd_client::Error::IoError(e))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let asked = Instant::now();
                    let options = ConnectOptions::new()
                        .with_connect_timeout(REQUEST)
                        .with_timeout(REQUEST)
                        .with_require_leader(true);
                    let mut c = match Client::connect(&endpoints, Some(options)).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(("connect", e)));
                            return;
                        }
                    };
                    if let Some(old) = previous {
                        // Revoking the lease deletes the keys under it: the
                        // leader key, if the previous run led.
                        let _ = c.lease_revoke(old).await;
                    }
                    // Retried for a while: a member that is electing its
                    // leader (or just started) refuses at first.
                    let until = Instant::now() + START_DEADLINE;
                    let mut asked = asked;
                    let g = loop {
                        match c.lease_grant(ttl_s, None).await {
                            Ok(g) => break g,
                            Err(e) if Instant::now() >= until => {
                                let _ = ready_tx.send(Err(("take a lease", e)));
                                return;
                            }
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                asked = Instant::now();
                            }
                        }
                    };
                    let lease = Lease {
                        id: g.id(),
                        ttl: Duration::from_secs(u64::try_from(g.ttl()).unwrap_or(0)),
                        asked,
                    };
                    let _ = ready_tx.send(Ok((lease.id, lease.ttl)));
                    run(c, key, id, lease, won_tx, stop_rx).await;
                });
            })
            .map_err(|e| err("start its thread")(etcd_client::Error::IoError(e)))?;
        let (lease, granted) = match ready_rx.recv() {
            Ok(Ok(v)) => v,
            Ok(Err((op, e))) => {
                let _ = thread.join();
                return Err(err(op)(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(LeadError::Gone { target: name });
            }
        };
        Ok(Election {
            target: name,
            lease,
            ttl: granted,
            won: Some(won_rx),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The lease's id (for operators: `etcdctl lease timetolive`).
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The TTL etcd granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Blocks until this contender leads; its fence is then valid.
    pub fn wait_won(&mut self) -> Result<Fence, LeadError> {
        let gone = || LeadError::Gone {
            target: self.target.clone(),
        };
        let rx = self.won.take().ok_or_else(gone)?;
        rx.recv().map_err(|_| gone())
    }

    /// Like [`Election::wait_won`], giving up after `limit` (`None`: not
    /// won yet; the campaign goes on).
    pub fn wait_won_for(&mut self, limit: Duration) -> Result<Option<Fence>, LeadError> {
        let gone = || LeadError::Gone {
            target: self.target.clone(),
        };
        let rx = self.won.as_ref().ok_or_else(gone)?;
        match rx.recv_timeout(limit) {
            Ok(f) => {
                self.won = None;
                Ok(Some(f))
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }

    /// Stops keeping the lease alive without revoking it: what a crash
    /// leaves, the lease running out in etcd after its TTL.
    pub fn abandon(mut self) {
        self.finish(false);
    }

    fn finish(&mut self, revoke: bool) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(revoke);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// A granted lease and when it was asked for (its TTL runs from no
/// earlier than that).
struct Lease {
    id: i64,
    ttl: Duration,
    asked: Instant,
}

/// The election thread: keeps the lease alive, campaigns until it wins,
/// then keeps renewing the fence's clock and watches for the lease's or
/// the key's loss. Ends when told to (revoking the lease or not).
async fn run(
    client: Client,
    key: String,
    id: String,
    lease: Lease,
    won: std_mpsc::SyncSender<Fence>,
    mut stop: oneshot::Receiver<bool>,
) {
    let Lease {
        id: lease,
        ttl,
        asked,
    } = lease;
    let shared = Arc::new(Shared {
        until: Mutex::new(asked + ttl.saturating_sub(MARGIN)),
        lost: AtomicBool::new(false),
        why: Mutex::new(String::new()),
    });
    let fence = Arc::new(Mutex::new(None::<Fence>));
    let keep = tokio::spawn(keep_alive(
        client.clone(),
        lease,
        ttl,
        Arc::clone(&shared),
        Arc::clone(&fence),
    ));
    let campaign = async {
        // A lease lost before winning (revoked, expired while etcd was
        // out of reach) can win nothing: the election ends, and
        // `wait_won` says so.
        let Some(token) = campaign(client.clone(), &key, &id, lease, &shared).await else {
            return;
        };
        let f = Fence {
            key: key.clone(),
            token,
            lease,
            shared: Arc::clone(&shared),
        };
        *lock(&fence) = Some(f.clone());
        let _ = won.send(f.clone());
        watch_own(client.clone(), &key, token, &f).await;
        std::future::pending::<()>().await;
    };
    let revoke = tokio::select! {
        r = &mut stop => r.unwrap_or(true),
        () = campaign => true,
    };
    keep.abort();
    // Abandoned (a crash, as tests play it): the fence runs out on its
    // clock, as it would with keep-alives that stopped getting through.
    if revoke {
        if let Some(f) = lock(&fence).as_ref() {
            f.lose("this hub stepped down".into());
        }
        let mut c = client;
        let _ = tokio::time::timeout(REQUEST, c.lease_revoke(lease)).await;
    }
}

/// Tries to create the key until it succeeds; returns its create revision
/// (`None`: the lease is gone).
async fn campaign(mut c: Client, key: &str, id: &str, lease: i64, shared: &Shared) -> Option<i64> {
    loop {
        if shared.lost.load(Ordering::SeqCst) {
            return None;
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                id,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let revision = match c.txn(txn).await {
            Ok(r) if r.succeeded() => {
                if let Some(h) = r.header() {
                    return Some(h.revision());
                }
                // Read it back: the create revision is the token.
                if let Ok(Some(rev)) = create_revision(&mut c, key).await {
                    return Some(rev);
                }
                None
            }
            Ok(r) => r.header().map(|h| h.revision()),
            Err(_) => None,
        };
        // Held by another: wait for its deletion (or a second, in case a
        // watch event is missed while a member changes).
        let wait = async {
            let Some(rev) = revision else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            };
            let opts = WatchOptions::new().with_start_revision(rev + 1);
            let Ok(mut w) = c.watch(key, Some(opts)).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            };
            while let Ok(Some(resp)) = w.message().await {
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
    }
}

async fn create_revision(c: &mut Client, key: &str) -> Result<Option<i64>, etcd_client::Error> {
    let r = c.get(key, None).await?;
    Ok(r.kvs().first().map(|kv| kv.create_revision()))
}

/// Renews the lease every TTL/3; each acknowledged renewal moves the
/// fence's clock to its send instant + TTL - MARGIN. A lease etcd reports
/// gone loses the fence at once.
async fn keep_alive(
    mut c: Client,
    lease: i64,
    ttl: Duration,
    shared: Arc<Shared>,
    fence: Arc<Mutex<Option<Fence>>>,
) {
    let every = ttl / 3;
    let mut stream = None;
    loop {
        let sent = Instant::now();
        if stream.is_none() {
            stream = tokio::time::timeout(REQUEST, c.lease_keep_alive(lease))
                .await
                .ok()
                .and_then(Result::ok);
        }
        if let Some((keeper, msgs)) = stream.as_mut() {
            let ack = tokio::time::timeout(every.max(Duration::from_millis(100)), async {
                keeper.keep_alive().await?;
                msgs.message().await
            })
            .await;
            match ack {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    let mut u = lock(&shared.until);
                    let next = sent + ttl.saturating_sub(MARGIN);
                    if next > *u {
                        *u = next;
                    }
                }
                Ok(Ok(Some(_))) => {
                    if let Some(f) = lock(&fence).as_ref() {
                        f.lose("etcd reports the leader lease expired".into());
                    }
                    shared.lost.store(true, Ordering::SeqCst);
                    return;
                }
                _ => stream = None,
            }
        }
        // After a failure (a member gone, an etcd election) try again
        // soon: the fence's clock runs meanwhile.
        let pause = if stream.is_none() {
            every.min(Duration::from_millis(200))
        } else {
            every
        };
        tokio::time::sleep(pause.saturating_sub(sent.elapsed())).await;
    }
}

/// While leading, watches the key: a deletion or another create revision
/// (an operator's `etcdctl del`, the lease revoked) loses the fence.
async fn watch_own(mut c: Client, key: &str, token: i64, f: &Fence) {
    loop {
        if f.shared.lost.load(Ordering::SeqCst) {
            return;
        }
        match create_revision(&mut c, key).await {
            Ok(Some(rev)) if rev == token => {}
            Ok(_) => {
                f.lose(format!("{key} was deleted or taken by another hub"));
                return;
            }
            Err(_) => {}
        }
        let opts = WatchOptions::new().with_start_revision(token + 1);
        if let Ok(mut w) = c.watch(key, Some(opts)).await {
            while let Ok(Some(resp)) = w.message().await {
                if resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    f.lose(format!("{key} was deleted (lease expired or revoked)"));
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The key a serving leader marks itself in.
fn serving_key(target: &EtcdTarget) -> String {
    format!("{}/serving", target.prefix)
}

/// Runs `f` with a client of `target` on a thread and runtime of its own
/// (the caller may be inside the daemon's runtime), giving up after
/// `limit`.
fn with_client<T, F, Fut>(target: &EtcdTarget, limit: Duration, f: F) -> Result<T, LeadError>
where
    T: Send,
    F: FnOnce(Client) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let name = target.to_string();
    let endpoints = target.endpoints.clone();
    let err = |op, source| LeadError::Etcd {
        target: name.clone(),
        op,
        source,
    };
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ("start its runtime", etcd_client::Error::IoError(e)))?;
            rt.block_on(async move {
                let options = ConnectOptions::new()
                    .with_connect_timeout(REQUEST)
                    .with_timeout(REQUEST)
                    .with_require_leader(true);
                let c = Client::connect(&endpoints, Some(options))
                    .await
                    .map_err(|e| ("connect", e))?;
                match tokio::time::timeout(limit, f(c)).await {
                    Ok(r) => r.map_err(|e| ("read or write the leader's keys", e)),
                    Err(_) => Err((
                        "finish in time",
                        etcd_client::Error::IoError(std::io::Error::from(
                            std::io::ErrorKind::TimedOut,
                        )),
                    )),
                }
            })
        });
        match h.join() {
            Ok(r) => r.map_err(|(op, e)| err(op, e)),
            Err(_) => Err(LeadError::Gone {
                target: name.clone(),
            }),
        }
    })
}

/// Marks the leader of `fence` serving (see the module's doc): a put of
/// `PREFIX/serving` under its lease, only while `PREFIX/leader` still
/// carries its token. `Ok(false)`: it no longer does.
pub fn mark_serving(target: &EtcdTarget, fence: &Fence) -> Result<bool, LeadError> {
    let (leader, token, lease) = (fence.key.clone(), fence.token, fence.lease);
    let key = serving_key(target);
    with_client(target, Duration::from_secs(5), move |mut c| async move {
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader.as_str(),
                CompareOp::Equal,
                token,
            )])
            .and_then([TxnOp::put(
                key.as_str(),
                token.to_string(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        Ok(c.txn(txn).await?.succeeded())
    })
}

/// What a leader handing over saw of its successor ([`wait_serving`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Successor {
    /// A leader with this token marked itself serving.
    Serving(i64),
    /// No other hub led within the first limit.
    None,
    /// Another hub led but did not serve within the second limit (or its
    /// lead ended before it served).
    NotServing,
}

/// After this hub (token `own`) revoked its lease: waits up to `lead` for
/// another hub to lead, then up to `serve` more for it to mark itself
/// serving. Polls every 50 ms (a hand-over is rare; a watch would not
/// make it faster).
pub fn wait_serving(
    target: &EtcdTarget,
    own: i64,
    lead: Duration,
    serve: Duration,
) -> Result<Successor, LeadError> {
    let leader = format!("{}/leader", target.prefix);
    let serving = serving_key(target);
    with_client(target, lead + serve + REQUEST, move |mut c| async move {
        let start = Instant::now();
        let mut led: Option<(i64, Instant)> = None;
        loop {
            let now = Instant::now();
            // A request that fails (a member gone) is tried again.
            if let (Ok(l), Ok(s)) = (
                c.get(leader.as_str(), None).await,
                c.get(serving.as_str(), None).await,
            ) {
                let token = l
                    .kvs()
                    .first()
                    .map(|kv| kv.create_revision())
                    .filter(|&t| t != own);
                let marked = s
                    .kvs()
                    .first()
                    .and_then(|kv| std::str::from_utf8(kv.value()).ok())
                    .and_then(|v| v.parse::<i64>().ok());
                match (token, led) {
                    (Some(t), _) if marked == Some(t) => return Ok(Successor::Serving(t)),
                    (Some(t), None) => led = Some((t, now)),
                    // Another successor (the first one's lead ended): its
                    // own time to serve.
                    (Some(t), Some((first, _))) if t != first => led = Some((t, now)),
                    (None, Some(_)) => return Ok(Successor::NotServing),
                    _ => {}
                }
            }
            match led {
                None if now >= start + lead => return Ok(Successor::None),
                Some((_, since)) if now >= since + serve => return Ok(Successor::NotServing),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}
