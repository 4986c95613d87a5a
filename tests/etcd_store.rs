//! The etcd state backend against a real etcd (Debian's `etcd-server`,
//! which scripts/test.sh installs): one single-member etcd per test on
//! 127.0.0.1, random ports, a temporary data directory. Without etcd on the
//! machine these tests fail, saying so.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rotor::state::etcd::{ClusterKey, EtcdError, EtcdStore, EtcdTarget, MAX_TXN_OPS, OpenError};

/// A single-member etcd, killed when dropped.
struct Etcd {
    child: Child,
    client: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (client, peer) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd's log file");
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("t={p}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start etcd ({e}): install Debian's etcd-server \
                     (apt-get install etcd-server; scripts/test.sh installs it)"
                )
            });
        let etcd = Etcd { child, client, dir };
        let until = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(
                Instant::now() < until,
                "etcd did not listen on 127.0.0.1:{client} within 20 s; its log: {}",
                std::fs::read_to_string(etcd.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }

    fn target(&self, prefix: &str) -> EtcdTarget {
        EtcdTarget::parse(&format!("etcd://127.0.0.1:{}/{prefix}", self.client))
            .expect("a valid URL")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key(b: u8) -> ClusterKey {
    ClusterKey::from_bytes([b; 32])
}

/// A record of `len` bytes that differs per node and per round.
fn record(name: &str, round: u32, len: usize) -> Vec<u8> {
    let seed = format!("{name}/{round}/");
    seed.bytes().cycle().take(len).collect()
}

fn all(loaded: &mut rotor::store::Loaded) -> HashMap<String, Vec<u8>> {
    let keys: Vec<String> = loaded.keys().map(str::to_string).collect();
    keys.into_iter()
        .map(|k| {
            let v = loaded.take(&k).expect("listed key").to_vec();
            (k, v)
        })
        .collect()
}

fn requests_for(n: usize) -> usize {
    n.div_ceil(MAX_TXN_OPS)
}

#[test]
fn batches_reopen_to_exactly_the_records_written_and_removed_ones_stay_gone() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/t1");
    let (mut s, loaded) = EtcdStore::open(&t, &key(1)).expect("open an empty prefix");
    assert!(loaded.is_empty());
    let mut want = HashMap::new();
    // 300 records of 100-600 bytes: three transactions.
    let mut b = s.batch().unwrap();
    for i in 0..300usize {
        let name = format!("n{i}");
        let v = record(&name, 1, 100 + i % 501);
        b.put(&name, &v).unwrap();
        want.insert(name, v);
    }
    b.commit().unwrap();
    let st = s.last_commit();
    assert_eq!((st.records, st.requests), (300, requests_for(300)));
    // Overwrite some, remove others.
    let mut b = s.batch().unwrap();
    for i in (0..300usize).step_by(7) {
        let name = format!("n{i}");
        let v = record(&name, 2, 321);
        b.put(&name, &v).unwrap();
        want.insert(name, v);
    }
    b.commit().unwrap();
    let gone: Vec<String> = (0..300usize).step_by(11).map(|i| format!("n{i}")).collect();
    s.remove_batch(gone.iter().map(String::as_str)).unwrap();
    for g in &gone {
        want.remove(g);
    }
    // An empty batch sends nothing.
    s.batch().unwrap().commit().unwrap();
    drop(s);

    let (s, mut loaded) = EtcdStore::open(&t, &key(1)).expect("reopen");
    assert_eq!(all(&mut loaded), want);
    for g in &gone {
        assert!(!want.contains_key(g));
    }
    // Another prefix on the same cluster sees none of them.
    let (_, other) = EtcdStore::open(&etcd.target("rotor/t1x"), &key(1)).unwrap();
    assert!(other.is_empty(), "prefixes are separate");
    assert_eq!(s.purge().unwrap() as usize, want.len());
    let (_, loaded) = EtcdStore::open(&t, &key(1)).unwrap();
    assert!(loaded.is_empty(), "purge leaves nothing");
}

#[test]
fn a_wrong_cluster_key_names_the_record_and_not_its_content() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/t2");
    let (mut s, _) = EtcdStore::open(&t, &key(1)).unwrap();
    let secret = b"SECRET-KEY-MATERIAL-0123456789";
    let mut b = s.batch().unwrap();
    b.put("alpha", secret).unwrap();
    b.put("beta", secret).unwrap();
    b.commit().unwrap();
    drop(s);
    let e = EtcdStore::open(&t, &key(2)).expect_err("another key must not open the records");
    assert!(
        matches!(&e, EtcdError::Unsealable { key, why: OpenError::Mismatch, .. } if key == "rotor/t2/node/alpha"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("record \"rotor/t2/node/alpha\"")
            && msg.contains("does not decrypt with the cluster key")
            && msg.contains("state_key_file"),
        "{msg}"
    );
    assert!(
        !msg.contains("SECRET") && !format!("{e:?}").contains("SECRET"),
        "{msg}"
    );
    // The right key still opens them.
    let (_, mut loaded) = EtcdStore::open(&t, &key(1)).unwrap();
    assert_eq!(loaded.take("beta").unwrap().as_slice(), secret);
}

#[test]
fn a_burst_of_10000_records_takes_one_transaction_per_128() {
    const N: usize = 10_000;
    let etcd = Etcd::start();
    let t = etcd.target("rotor/t3");
    let (mut s, _) = EtcdStore::open(&t, &key(3)).unwrap();
    for round in 1..=3u32 {
        let started = Instant::now();
        let mut b = s.batch().unwrap();
        for i in 0..N {
            let name = format!("node-{i:05}");
            b.put(&name, &record(&name, round, 300)).unwrap();
        }
        b.commit().unwrap();
        let took = started.elapsed();
        let st = s.last_commit();
        println!(
            "burst {round}: {} records, {} bytes sealed, {} etcd transactions, {:.1} ms",
            st.records,
            st.bytes,
            st.requests,
            took.as_secs_f64() * 1e3
        );
        assert_eq!((st.records, st.requests), (N, requests_for(N)));
    }
    drop(s);
    let started = Instant::now();
    let (_, loaded) = EtcdStore::open(&t, &key(3)).unwrap();
    println!(
        "open: {} records loaded in {:.1} ms",
        loaded.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(loaded.len(), N);
}

#[test]
fn no_etcd_at_the_address_is_an_error_naming_the_cluster() {
    // A port nobody listens on (bound, then released).
    let port = free_port();
    let t = EtcdTarget::parse(&format!("etcd://127.0.0.1:{port}/rotor/t4")).unwrap();
    let e = EtcdStore::open(&t, &key(4)).expect_err("nothing listens there");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("etcd://127.0.0.1:{port}/rotor/t4: cannot ")),
        "{msg}"
    );
}

impl Etcd {
    /// Sends etcd `signal` (`STOP`, `CONT`): a frozen member keeps its
    /// connections open and answers nothing, as a hung host does.
    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} etcd");
    }
}

#[test]
fn a_burst_waits_out_a_frozen_etcd_and_fails_only_when_it_stays_frozen_for_the_stall() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/t5");
    let (mut s, _) = EtcdStore::open(&t, &key(5)).unwrap();
    let burst = |s: &mut EtcdStore, round: u32| {
        let mut b = s.batch().unwrap();
        for i in 0..1000usize {
            let name = format!("node-{i:04}");
            b.put(&name, &record(&name, round, 300)).unwrap();
        }
        b.commit()
    };
    burst(&mut s, 1).expect("a burst to a live etcd");

    // Frozen for 2.5 s, longer than a request's own timeout (2 s): the
    // transactions time out, are sent again, and go through once it thaws
    // (2.5 s before the stall, room for a loaded machine).
    etcd.signal("STOP");
    let thaw = std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(2500));
            etcd.signal("CONT");
        });
        let started = Instant::now();
        let r = burst(&mut s, 2);
        (r, started.elapsed())
    });
    assert!(thaw.0.is_ok(), "{:?}", thaw.0);
    assert!(thaw.1 >= Duration::from_millis(2500), "{:?}", thaw.1);

    // Frozen for good: the burst fails once nothing was acknowledged for
    // the stall (5 s), saying so, and the store takes no more writes.
    etcd.signal("STOP");
    let started = Instant::now();
    let e = burst(&mut s, 3).expect_err("etcd answers nothing");
    let took = started.elapsed();
    etcd.signal("CONT");
    let msg = e.to_string();
    assert!(
        msg.contains("cannot write the records: etcd acknowledged no write for 5s (0 of 8 transactions acknowledged"),
        "{msg}"
    );
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(
        matches!(s.batch(), Err(EtcdError::Failed { .. })),
        "the store refuses after a failed write"
    );

    // What reached etcd is known only to a reopen: requests already in
    // the frozen member's socket may be applied once it thaws, though the
    // client gave up on them. Every record is whole: round 2's, or the
    // failed round 3's.
    drop(s);
    let (_, mut loaded) = EtcdStore::open(&t, &key(5)).unwrap();
    let got = all(&mut loaded);
    assert_eq!(got.len(), 1000);
    let mut third = 0;
    for (name, v) in &got {
        if *v == record(name, 3, 300) {
            third += 1;
        } else {
            assert_eq!(*v, record(name, 2, 300), "{name}");
        }
    }
    println!("after the failed burst: {third} of 1000 records are its own");
}

// --- Leader election and fencing -------------------------------------------

use rotor::state::etcd::{Election, Fence};

const TTL: Duration = Duration::from_secs(2);
// (etcd's minimum with its default timings: the fastest takeover.)

fn contender(t: &EtcdTarget, id: &str) -> Election {
    Election::start(t, id, TTL, None).expect("a lease from etcd")
}

/// Waits up to `limit` for `e` to win.
fn won_within(e: &mut Election, limit: Duration) -> Option<Fence> {
    e.wait_won_for(limit).expect("the campaign runs")
}

/// Revokes `lease` from another client, as an operator (or etcd expiring
/// it) would.
fn revoke(t: &EtcdTarget, lease: i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(&t.endpoints, None)
            .await
            .unwrap();
        c.lease_revoke(lease).await.unwrap();
    });
}

/// "hub-a", alone, leads `t` within 3 s, and opens the records under
/// `key` with its fence: its election (held for its lease), its fence, its
/// store.
fn sole_leader(t: &EtcdTarget, key: &ClusterKey) -> (Election, Fence, EtcdStore) {
    let mut a = contender(t, "hub-a");
    let fa = won_within(&mut a, Duration::from_secs(3)).expect("alone, a leads");
    let (mut sa, _) = EtcdStore::open(t, key).unwrap();
    sa.set_fence(fa.clone());
    (a, fa, sa)
}

fn put_one(s: &mut EtcdStore, name: &str, v: &[u8]) -> Result<(), EtcdError> {
    let mut b = s.batch()?;
    b.put(name, v)?;
    b.commit()
}

#[test]
fn of_two_contenders_exactly_one_leads_and_a_clean_step_down_hands_over_at_once() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/e1");
    let mut a = contender(&t, "hub-a");
    let mut b = contender(&t, "hub-b");
    assert_eq!(a.ttl(), TTL, "etcd granted the TTL asked for");
    let fa = won_within(&mut a, Duration::from_secs(3));
    let fb = won_within(&mut b, Duration::from_secs(1));
    assert!(
        fa.is_some() != fb.is_some(),
        "exactly one leads: a {fa:?}, b {fb:?}"
    );
    // Whoever lost keeps waiting while the winner lives (longer than a TTL:
    // the keep-alives hold the lease).
    let (mut winner, mut loser, fence) = match (fa, fb) {
        (Some(f), None) => (a, b, f),
        (None, Some(f)) => (b, a, f),
        _ => unreachable!(),
    };
    assert!(
        won_within(&mut loser, TTL * 2).is_none(),
        "a live leader keeps the lead"
    );
    assert!(fence.check().is_ok());
    assert!(
        winner.wait_won_for(Duration::from_millis(10)).is_err(),
        "a contender wins once"
    );
    // A clean step-down revokes the lease: the other leads at once, with a
    // later token.
    let started = Instant::now();
    drop(winner);
    assert!(fence.check().is_err(), "the old fence is void");
    let next = won_within(&mut loser, Duration::from_secs(1)).expect("takes over");
    println!("hand-over after a clean step-down: {:?}", started.elapsed());
    assert!(next.token() > fence.token());
}

#[test]
fn a_crashed_leader_is_replaced_after_its_lease_runs_out_and_steps_down_first() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/e2");
    let key = key(5);
    let (a, fa, mut sa) = sole_leader(&t, &key);
    put_one(&mut sa, "n1", b"from-a-1").expect("the leader writes");
    let mut b = contender(&t, "hub-b");
    // A crash: no more keep-alives, the lease is not revoked.
    let crashed = Instant::now();
    a.abandon();
    let watch = fa.clone();
    let stepped = std::thread::spawn(move || {
        let why = watch.wait_lost();
        (Instant::now(), why)
    });
    let fb = won_within(&mut b, TTL + Duration::from_secs(2)).expect("b takes over");
    let won_at = Instant::now();
    let (down_at, why) = stepped.join().unwrap();
    println!(
        "crash -> a stepped down {:?}, b leads {:?} (TTL {TTL:?}); a: {why}",
        down_at - crashed,
        won_at - crashed
    );
    assert!(
        down_at < won_at,
        "the old leader stops acting before the new one leads"
    );
    assert!(
        won_at - crashed <= TTL + Duration::from_millis(1500),
        "takeover within TTL + etcd's expiry check + campaign"
    );
    // The old leader's write is refused and says why; nothing of it lands.
    let e = put_one(&mut sa, "n1", b"from-a-2").expect_err("a no longer leads");
    let msg = e.to_string();
    assert!(
        matches!(e, EtcdError::Fenced { .. }) && msg.contains("no longer leads"),
        "{msg}"
    );
    let (mut sb, mut loaded) = EtcdStore::open(&t, &key).unwrap();
    assert_eq!(loaded.take("n1").unwrap().as_slice(), b"from-a-1");
    sb.set_fence(fb);
    put_one(&mut sb, "n1", b"from-b-1").expect("the new leader writes");
}

#[test]
fn a_restart_revoking_its_previous_lease_leads_at_once() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/e4");
    let (a, fa, mut sa) = sole_leader(&t, &key(7));
    put_one(&mut sa, "n1", b"one").unwrap();
    let old = a.lease();
    a.abandon();
    let started = Instant::now();
    let mut again = Election::start(&t, "hub-a", TTL, Some(old)).unwrap();
    let f = won_within(&mut again, Duration::from_secs(1)).expect("leads at once");
    println!(
        "restart after a crash -> leading after {:?}",
        started.elapsed()
    );
    assert!(f.token() > fa.token());
    // The old fence's clock has not run out yet (nothing watches for it
    // any more): etcd itself refuses its write, by the token.
    assert!(fa.check().is_ok(), "still within its clock");
    let e = put_one(&mut sa, "n1", b"two").expect_err("a stale token");
    let msg = e.to_string();
    assert!(
        matches!(e, EtcdError::Fenced { .. })
            && msg.contains(&format!("no longer holds this hub's token {}", fa.token())),
        "{msg}"
    );
    let (_, mut loaded) = EtcdStore::open(&t, &key(7)).unwrap();
    assert_eq!(loaded.take("n1").unwrap().as_slice(), b"one");
}

#[test]
fn etcd_refuses_a_write_with_a_stale_token() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/e3");
    let (a, fa, mut sa) = sole_leader(&t, &key(6));
    put_one(&mut sa, "n1", b"one").unwrap();
    let mut b = contender(&t, "hub-b");
    // The lease killed in etcd: the key goes at once, b campaigns on its
    // deletion; a learns it from its watch or its next keep-alive.
    let killed = Instant::now();
    revoke(&t, a.lease());
    let fb = won_within(&mut b, Duration::from_secs(2)).expect("b takes over");
    println!("lease revoked -> b leads after {:?}", killed.elapsed());
    assert!(fb.token() > fa.token());
    let e = put_one(&mut sa, "n1", b"two").expect_err("stale token");
    assert!(matches!(e, EtcdError::Fenced { .. }), "{e}");
    // A later batch is refused too (the store is failed, not retried).
    assert!(sa.batch().is_err());
    let (_, mut loaded) = EtcdStore::open(&t, &key(6)).unwrap();
    assert_eq!(loaded.take("n1").unwrap().as_slice(), b"one");
}

#[test]
fn a_standby_whose_lease_is_gone_gives_up_instead_of_waiting_for_ever() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/e5");
    let mut a = contender(&t, "hub-a");
    let fa = won_within(&mut a, Duration::from_secs(3)).expect("a leads");
    let mut b = contender(&t, "hub-b");
    assert!(won_within(&mut b, Duration::from_millis(300)).is_none());
    revoke(&t, b.lease());
    let started = Instant::now();
    let r = b.wait_won_for(TTL * 2);
    assert!(
        r.is_err(),
        "a standby with a revoked lease ends its campaign: {r:?}"
    );
    println!(
        "standby's lease revoked -> gave up after {:?}",
        started.elapsed()
    );
    // The leader is untouched.
    assert!(fa.check().is_ok());
}

// --- Warm standby and hand-over ---------------------------------------------

use rotor::state::etcd::lead::{Successor, mark_serving, wait_serving};

/// Compacts etcd's history up to now: a watch from an older revision is
/// refused.
fn compact_now(t: &EtcdTarget) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(&t.endpoints, None)
            .await
            .unwrap();
        let rev = c
            .get("x", None)
            .await
            .unwrap()
            .header()
            .map(|h| h.revision())
            .unwrap();
        c.compact(rev, None).await.unwrap();
    });
}

#[test]
fn a_warm_copy_completed_after_winning_equals_a_fresh_read() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/w1");
    let k = key(7);
    let (mut leader, _) = EtcdStore::open(&t, &k).unwrap();
    let mut want = HashMap::new();
    let mut b = leader.batch().unwrap();
    for i in 0..200usize {
        let name = format!("n{i}");
        let v = record(&name, 1, 80);
        b.put(&name, &v).unwrap();
        want.insert(name, v);
    }
    b.commit().unwrap();
    let mut standby = EtcdStore::open_standby(&t, &k).expect("a standby's store");
    // While it waits: overwrites (seen by its watch), then removals.
    let mut b = leader.batch().unwrap();
    for i in (0..200usize).step_by(3) {
        let name = format!("n{i}");
        let v = record(&name, 2, 90);
        b.put(&name, &v).unwrap();
        want.insert(name, v);
    }
    b.commit().unwrap();
    let gone: Vec<String> = (0..200usize).step_by(10).map(|i| format!("n{i}")).collect();
    leader
        .remove_batch(gone.iter().map(String::as_str))
        .unwrap();
    for g in &gone {
        want.remove(g);
    }
    // New records after the removals.
    for i in 200..210usize {
        let name = format!("n{i}");
        let v = record(&name, 3, 70);
        put_one(&mut leader, &name, &v).unwrap();
        want.insert(name, v);
    }
    let (mut loaded, stats) = standby.take_warm().expect("completed");
    println!("warm copy: {stats:?}");
    assert_eq!(all(&mut loaded), want, "exactly what etcd holds");
    let (_, mut fresh) = EtcdStore::open(&t, &k).unwrap();
    assert_eq!(all(&mut fresh), want);
    assert!(
        stats.changed < 200,
        "the completion read only what the watch may not have applied ({} records)",
        stats.changed
    );
}

#[test]
fn a_warm_copy_is_completed_exactly_across_a_compaction() {
    // Whatever the watch applied before the history was compacted (a
    // restarted watch then re-reads everything), the completion makes the
    // copy exact, removals included.
    let etcd = Etcd::start();
    let t = etcd.target("rotor/w2");
    let k = key(8);
    let (mut leader, _) = EtcdStore::open(&t, &k).unwrap();
    for i in 0..50usize {
        put_one(&mut leader, &format!("n{i}"), &record("x", 1, 40)).unwrap();
    }
    let mut standby = EtcdStore::open_standby(&t, &k).unwrap();
    let mut want: HashMap<String, Vec<u8>> = (0..50usize)
        .map(|i| (format!("n{i}"), record("x", 1, 40)))
        .collect();
    for i in 0..5usize {
        let name = format!("n{i}");
        put_one(&mut leader, &name, &record(&name, 2, 40)).unwrap();
        want.insert(name, record(&format!("n{i}"), 2, 40));
    }
    leader.remove_batch(["n10", "n11"]).unwrap();
    want.remove("n10");
    want.remove("n11");
    compact_now(&t);
    let (mut loaded, _) = standby.take_warm().unwrap();
    assert_eq!(all(&mut loaded), want);
}

#[test]
fn a_record_that_reaches_a_standby_unopenable_fails_the_takeover_naming_its_key() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/w3");
    let (mut good, _) = EtcdStore::open(&t, &key(1)).unwrap();
    put_one(&mut good, "n1", b"one").unwrap();
    let mut standby = EtcdStore::open_standby(&t, &key(1)).unwrap();
    // Written under another cluster key while the standby waits.
    let k2 = "rotor/w3/node/n2";
    let sealed = rotor::state::etcd::Sealer::new(&key(2))
        .unwrap()
        .seal(k2.as_bytes(), b"SECRET-two")
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(&t.endpoints, None)
            .await
            .unwrap();
        c.put(k2, sealed, None).await.unwrap();
    });
    let err = match standby.take_warm() {
        Ok(_) => panic!("a record that does not open is refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("rotor/w3/node/n2"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
    // And a standby refuses at start what it cannot open.
    match EtcdStore::open_standby(&t, &key(1)) {
        Ok(_) => panic!("refused at start"),
        Err(e) => assert!(e.to_string().contains("rotor/w3/node/n2"), "{e}"),
    }
}

#[test]
fn a_leader_handing_over_sees_its_successor_serve_and_only_then() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/h1");
    let mut a = contender(&t, "hub-a");
    let fa = won_within(&mut a, Duration::from_secs(3)).expect("alone, a leads");
    assert!(mark_serving(&t, &fa).unwrap(), "the leader marks itself");
    let mut b = contender(&t, "hub-b");
    // a hands over: its lease revoked, it watches for b serving.
    let token_a = fa.token();
    drop(a);
    let waiter = {
        let t = t.clone();
        std::thread::spawn(move || {
            let r = wait_serving(&t, token_a, Duration::from_secs(3), Duration::from_secs(5));
            (Instant::now(), r)
        })
    };
    let fb = won_within(&mut b, Duration::from_secs(2)).expect("b takes over");
    // b "installs" for a while before it serves: a must still wait.
    std::thread::sleep(Duration::from_millis(600));
    assert!(!waiter.is_finished(), "a waits until b serves");
    let marked = Instant::now();
    assert!(mark_serving(&t, &fb).unwrap());
    let (seen, r) = waiter.join().unwrap();
    assert_eq!(r.unwrap(), Successor::Serving(fb.token()));
    assert!(seen >= marked);
    println!("serving mark seen after {:?}", seen - marked);
    // A fence that no longer leads cannot mark itself serving.
    assert!(!mark_serving(&t, &fa).unwrap());
    drop(b);
    // Without a standby the wait ends after its first limit.
    let started = Instant::now();
    let r = wait_serving(
        &t,
        fb.token(),
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    assert_eq!(r.unwrap(), Successor::None);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn at_10000_records_the_completion_reads_only_what_changed() {
    let etcd = Etcd::start();
    let t = etcd.target("rotor/w4");
    let k = key(9);
    let (mut leader, _) = EtcdStore::open(&t, &k).unwrap();
    let mut b = leader.batch().unwrap();
    for i in 0..10_000usize {
        let name = format!("n{i}");
        b.put(&name, &record(&name, 1, 200)).unwrap();
    }
    b.commit().unwrap();
    let mut standby = EtcdStore::open_standby(&t, &k).unwrap();
    // One burst of a leader rotating 100 nodes while the standby waits.
    let mut b = leader.batch().unwrap();
    for i in 0..100usize {
        let name = format!("n{i}");
        b.put(&name, &record(&name, 2, 200)).unwrap();
    }
    b.commit().unwrap();
    let t0 = Instant::now();
    let (mut warm, stats) = standby.take_warm().unwrap();
    let warm_took = t0.elapsed();
    let t0 = Instant::now();
    let (_, mut cold) = EtcdStore::open(&t, &k).unwrap();
    let cold_took = t0.elapsed();
    println!(
        "10,000 records: completing the warm copy {warm_took:?} ({} read), a full read {cold_took:?}",
        stats.changed
    );
    assert!(stats.changed <= 100, "{stats:?}");
    assert_eq!(all(&mut warm), all(&mut cold));
}
