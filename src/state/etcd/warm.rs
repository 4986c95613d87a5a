//! A standby's warm copy of the records: read once at start, kept current
//! by a watch on the record prefix, completed after winning by one read of
//! what changed since the copy's revision.
//!
//! # Why the completed copy is exactly what etcd holds
//! The copy holds every record as of revision `R` (the read's revision at
//! start, then one less than the newest revision the watch applied: events
//! of one revision might in principle span two watch responses, so the
//! newest one counts as possibly incomplete). After this hub won, the
//! catch-up reads at one revision `V`, after the win (etcd's reads are
//! linearizable):
//! * every key modified after `R` (a range with a minimum mod revision of
//!   `R + 1`), whose values replace the copy's: a key changed after `R` has
//!   its value at `V`; a key not changed after `R` still has its value at
//!   `R`;
//! * the number of keys under the prefix at `V`. The copy's keys are then
//!   a superset of etcd's (keys deleted after `R`, and only those, may be
//!   left over): if the counts differ, the keys at `V` are read (keys only)
//!   and the copy keeps just those.
//!
//! Between the win and `V` no other hub wrote: the old leader's writes
//! were conditional on its own token (fencing), so they all precede the
//! win. The watch itself is only an optimisation: if it stalls or fails
//! (a compaction, a member gone), `R` stays where it was and the catch-up
//! reads more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, SortOrder, SortTarget, WatchOptions};

use tokio::time::Instant;

use super::worker::{CallError, patiently};
use super::{PAGE, Stored, prefix_end};

/// The copy, shared between the watch task and the store.
#[derive(Debug, Default)]
pub(super) struct WarmCopy {
    /// Key -> sealed value, as in etcd.
    pub(super) records: HashMap<Vec<u8>, Vec<u8>>,
    /// Every record is as of this revision (see the module's doc).
    pub(super) revision: i64,
    /// Watch events applied since the start (for the log).
    pub(super) events: u64,
    /// Taken for the takeover: the watch stops applying.
    pub(super) taken: bool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Follows the prefix from the copy's revision, applying puts and deletes,
/// until the copy is taken; restarts the watch after a failure. A watch
/// refused for a compacted revision reads the whole prefix again.
pub(super) async fn follow(mut c: Client, prefix: Vec<u8>, copy: Arc<Mutex<WarmCopy>>) {
    loop {
        let from = {
            let g = lock(&copy);
            if g.taken {
                return;
            }
            g.revision + 1
        };
        let opts = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut compacted = false;
        if let Ok(mut w) = c.watch(prefix.clone(), Some(opts)).await {
            while let Ok(Some(resp)) = w.message().await {
                if resp.compact_revision() > 0 {
                    compacted = true;
                    break;
                }
                if resp.canceled() {
                    break;
                }
                let mut g = lock(&copy);
                if g.taken {
                    return;
                }
                let mut newest = 0;
                for e in resp.events() {
                    let Some(kv) = e.kv() else { continue };
                    newest = newest.max(kv.mod_revision());
                    g.events += 1;
                    match e.event_type() {
                        EventType::Put => {
                            g.records.insert(kv.key().to_vec(), kv.value().to_vec());
                        }
                        EventType::Delete => {
                            g.records.remove(kv.key());
                        }
                    }
                }
                if newest > 0 {
                    g.revision = g.revision.max(newest - 1);
                }
            }
        }
        if compacted {
            // The history after the copy's revision is gone: read it all.
            if let Ok((all, revision)) = read_changed(&c, &prefix, 0, super::CALL_DEADLINE).await {
                let mut g = lock(&copy);
                if g.taken {
                    return;
                }
                g.records = all.into_iter().collect();
                g.revision = revision;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every (key, sealed value) under `prefix` modified after revision
/// `after` (0: every one), read in pages at one revision, which it
/// returns. Pages after the first ask for that revision. A page that fails
/// is asked again; the read fails only when no page answered for `stall`
/// (100,000 records are 100 pages: a deadline on the whole read would fail
/// a slow but working cluster).
pub(super) async fn read_changed(
    c: &Client,
    prefix: &[u8],
    after: i64,
    stall: Duration,
) -> Result<(Vec<Stored>, i64), CallError> {
    let end = prefix_end(prefix);
    let mut all = Vec::new();
    let mut from = prefix.to_vec();
    let mut revision = 0;
    let mut progress = Instant::now();
    loop {
        let mut o = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if after > 0 {
            o = o.with_min_mod_revision(after + 1);
        }
        if revision > 0 {
            o = o.with_revision(revision);
        }
        let mut resp = patiently(&mut progress, stall, || {
            let (mut c, from, o) = (c.clone(), from.clone(), o.clone());
            async move { c.get(from, Some(o)).await }
        })
        .await?;
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        let Some(last) = kvs.last() else { break };
        // The next page starts just after the last key of this one.
        from = last.key().to_vec();
        from.push(0);
        all.extend(kvs.into_iter().map(|kv| kv.into_key_value()));
        if !more {
            break;
        }
    }
    Ok((all, revision))
}

/// How many keys are under `prefix` at `revision`.
pub(super) async fn count(
    c: &mut Client,
    prefix: &[u8],
    revision: i64,
) -> Result<i64, etcd_client::Error> {
    let o = GetOptions::new()
        .with_range(prefix_end(prefix))
        .with_count_only()
        .with_revision(revision);
    Ok(c.get(prefix.to_vec(), Some(o)).await?.count())
}

/// Every key under `prefix` at `revision` (no values), in pages, each
/// asked again after a failure, as in [`read_changed`].
pub(super) async fn keys_at(
    c: &Client,
    prefix: &[u8],
    revision: i64,
    stall: Duration,
) -> Result<Vec<Vec<u8>>, CallError> {
    let end = prefix_end(prefix);
    let mut all = Vec::new();
    let mut from = prefix.to_vec();
    let mut progress = Instant::now();
    loop {
        let o = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_keys_only()
            .with_sort(SortTarget::Key, SortOrder::Ascend)
            .with_revision(revision);
        let mut resp = patiently(&mut progress, stall, || {
            let (mut c, from, o) = (c.clone(), from.clone(), o.clone());
            async move { c.get(from, Some(o)).await }
        })
        .await?;
        let more = resp.more();
        let kvs = resp.take_kvs();
        let Some(last) = kvs.last() else { break };
        from = last.key().to_vec();
        from.push(0);
        all.extend(kvs.into_iter().map(|kv| kv.key().to_vec()));
        if !more {
            break;
        }
    }
    Ok(all)
}
