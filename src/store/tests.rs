use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::*;

type State = BTreeMap<String, Vec<u8>>;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn state_dir(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("state")
}

/// Everything `Loaded` holds, as plain bytes for comparison.
fn drain(mut loaded: Loaded) -> State {
    let keys: Vec<String> = loaded.keys().map(str::to_owned).collect();
    keys.into_iter()
        .map(|k| {
            let v = loaded.take(&k).expect("listed key").to_vec();
            (k, v)
        })
        .collect()
}

fn open(dir: &Path) -> (Store, Loaded) {
    Store::open(dir, "hub").expect("open")
}

fn reopen(dir: &Path) -> (Store, State) {
    let (s, l) = open(dir);
    (s, drain(l))
}

fn put(store: &mut Store, state: &mut State, batch: &[(&str, &[u8])]) {
    store
        .write_batch(batch.iter().copied())
        .expect("write_batch");
    for (k, v) in batch {
        state.insert((*k).to_owned(), v.to_vec());
    }
}

fn record(i: usize, round: u8) -> Vec<u8> {
    (0..200).map(|j| (i as u8) ^ (j as u8) ^ round).collect()
}

fn as_pairs(state: &State) -> impl Iterator<Item = (&str, &[u8])> {
    state.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
}

#[test]
fn round_trip() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, loaded) = open(&dir);
    assert!(loaded.is_empty() && !loaded.torn_tail && !loaded.stale_log);
    let mut state = State::new();
    put(
        &mut store,
        &mut state,
        &[("a", b"one"), ("b", &[0u8; 300]), ("c", b"")],
    );
    put(&mut store, &mut state, &[("node-x", b"\xff\x00")]);
    drop(store);
    let (_store, got) = reopen(&dir);
    assert_eq!(got, state);
}

#[test]
fn overwrite_and_tombstones_last_write_wins() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    store
        .write_batch([("a", &b"1"[..]), ("b", b"1"), ("a", b"2")])
        .unwrap();
    store.remove_batch(["b"]).unwrap();
    store.write_batch([("c", &b"1"[..])]).unwrap();
    store.remove_batch(["c", "never-there"]).unwrap();
    store.write_batch([("c", &b"3"[..])]).unwrap();
    // Empty batches write nothing.
    let before = fs::metadata(dir.join("hub.log")).unwrap().len();
    store.write_batch(std::iter::empty()).unwrap();
    store.remove_batch(std::iter::empty()).unwrap();
    assert_eq!(fs::metadata(dir.join("hub.log")).unwrap().len(), before);
    drop(store);
    let (_s, got) = reopen(&dir);
    let want: State = [("a", b"2"), ("c", b"3")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn bad_keys_are_refused_and_write_nothing() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let long = "x".repeat(256);
    let before = fs::metadata(dir.join("hub.log")).unwrap().len();
    for key in ["", long.as_str()] {
        let err = store
            .write_batch([("ok", &b"v"[..]), (key, b"v")])
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidKey { .. }), "{err}");
    }
    assert_eq!(fs::metadata(dir.join("hub.log")).unwrap().len(), before);
    // Still usable.
    store.write_batch([("ok", &b"v"[..])]).unwrap();
}

#[test]
fn torn_tail_at_every_offset_of_the_last_frame() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let mut before = State::new();
    put(&mut store, &mut before, &[("a", b"old-a"), ("b", b"old-b")]);
    let start = fs::metadata(dir.join("hub.log")).unwrap().len();
    store
        .write_batch([("a", &b"new-a"[..]), ("c", &[7u8; 150][..])])
        .unwrap();
    store.remove_batch(["b"]).unwrap(); // a third frame, cut away below with the second
    drop(store);
    let log = dir.join("hub.log");
    let full = fs::read(&log).unwrap();
    // The last frame is the tombstone; take the batch frame as "the last
    // entry" by cutting the tombstone off first.
    let mut frames = vec![];
    let mut off = HEADER_LEN;
    while off < full.len() {
        let len = u32::from_le_bytes(full[off..off + 4].try_into().unwrap()) as usize;
        frames.push(off);
        off += 8 + len;
    }
    assert_eq!(frames.len(), 3);
    let (last_start, last_end) = (frames[1], frames[2]);
    assert_eq!(last_start as u64, start);
    for cut in last_start + 1..last_end {
        fs::write(&log, &full[..cut]).unwrap();
        let (mut store, loaded) = open(&dir);
        assert!(loaded.torn_tail, "cut at {cut}");
        assert_eq!(drain(loaded), before, "cut at {cut}");
        assert_eq!(fs::metadata(&log).unwrap().len(), last_start as u64);
        store.write_batch([("d", &b"after"[..])]).unwrap();
        drop(store);
        let (_s, got) = reopen(&dir);
        let mut want = before.clone();
        want.insert("d".into(), b"after".to_vec());
        assert_eq!(got, want, "cut at {cut}");
    }
    // Cut exactly at a frame boundary: nothing torn.
    fs::write(&log, &full[..last_start]).unwrap();
    let (_s, loaded) = open(&dir);
    assert!(!loaded.torn_tail);
    assert_eq!(drain(loaded), before);
}

#[test]
fn zeroed_or_garbled_tail_is_torn() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let mut state = State::new();
    put(&mut store, &mut state, &[("a", b"1")]);
    drop(store);
    let log = dir.join("hub.log");
    let good = fs::read(&log).unwrap();
    for tail in [
        vec![0u8; 4096],
        vec![0xa5; 17],
        vec![1, 0, 0, 0, 0, 0, 0, 0, 9],
    ] {
        let mut bytes = good.clone();
        bytes.extend_from_slice(&tail);
        fs::write(&log, &bytes).unwrap();
        let (_s, loaded) = open(&dir);
        assert!(loaded.torn_tail);
        assert_eq!(drain(loaded), state);
        assert_eq!(fs::read(&log).unwrap(), good);
    }
}

#[test]
fn bad_frame_before_good_frames_is_an_error() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    store.write_batch([("a", &b"first"[..])]).unwrap();
    store.write_batch([("a", &b"second"[..])]).unwrap();
    drop(store);
    let log = dir.join("hub.log");
    let mut bytes = fs::read(&log).unwrap();
    let flip = HEADER_LEN + 8 + 6 + 1 + 2; // inside the first frame's value
    bytes[flip] ^= 0x40;
    fs::write(&log, &bytes).unwrap();
    let err = Store::open(&dir, "hub").unwrap_err();
    match &err {
        StoreError::Corrupt { path, offset, .. } => {
            assert_eq!(path, &log);
            assert_eq!(*offset, HEADER_LEN as u64);
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("offset 32"), "{err}");
}

#[test]
fn flipped_byte_in_snapshot_is_an_error_naming_file_and_offset() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let state: State = (0..50)
        .map(|i| (format!("n{i:02}"), record(i, 0)))
        .collect();
    store.compact(as_pairs(&state)).unwrap();
    drop(store);
    let snap = dir.join("hub.snap");
    let good = fs::read(&snap).unwrap();
    // Every frame of the snapshot here is 8 + 6 + 3 + 200 bytes.
    let frame = 8 + 6 + 3 + 200;
    for flip in [
        HEADER_LEN + 20 * frame + 100,
        HEADER_LEN + 31 * frame + 1,
        HEADER_LEN + 7 * frame + 9,
    ] {
        let mut bytes = good.clone();
        bytes[flip] ^= 1;
        fs::write(&snap, &bytes).unwrap();
        let err = Store::open(&dir, "hub").unwrap_err();
        let frame_start = (HEADER_LEN + (flip - HEADER_LEN) / frame * frame) as u64;
        match &err {
            StoreError::Corrupt { path, offset, .. } => {
                assert_eq!(path, &snap);
                assert_eq!(*offset, frame_start);
            }
            other => panic!("{other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("offset {frame_start}")) && msg.contains("hub.snap"),
            "{msg}"
        );
    }
    // Header damage, truncation and trailing bytes are errors too.
    let mut bytes = good.clone();
    bytes[13] ^= 1;
    fs::write(&snap, &bytes).unwrap();
    assert!(matches!(
        Store::open(&dir, "hub"),
        Err(StoreError::Corrupt { offset: 0, .. })
    ));
    fs::write(&snap, &good[..good.len() - frame]).unwrap();
    assert!(matches!(
        Store::open(&dir, "hub"),
        Err(StoreError::Corrupt { .. })
    ));
    let mut bytes = good.clone();
    bytes.push(0);
    fs::write(&snap, &bytes).unwrap();
    assert!(matches!(
        Store::open(&dir, "hub"),
        Err(StoreError::Corrupt { .. })
    ));
    fs::write(&snap, &good).unwrap();
    let (_s, got) = reopen(&dir);
    assert_eq!(got, state);
}

#[test]
fn compaction_then_reopen() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let mut state = State::new();
    for round in 0..5u8 {
        let batch: Vec<(String, Vec<u8>)> = (0..40)
            .map(|i| (format!("node-{i}"), record(i, round)))
            .collect();
        store
            .write_batch(batch.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .unwrap();
        state.extend(batch);
    }
    store.remove_batch(["node-3"]).unwrap();
    state.remove("node-3");
    assert!(!store.needs_compaction());
    store.compact(as_pairs(&state)).unwrap();
    assert_eq!(
        fs::metadata(dir.join("hub.log")).unwrap().len(),
        HEADER_LEN as u64
    );
    // Writes after a compaction belong to the new generation.
    put(&mut store, &mut state, &[("node-1", b"after")]);
    drop(store);
    let (mut store, got) = reopen(&dir);
    assert_eq!(got, state);
    // And again, twice, to cross generations.
    store.compact(as_pairs(&state)).unwrap();
    put(&mut store, &mut state, &[("node-2", b"later")]);
    store.compact(as_pairs(&state)).unwrap();
    drop(store);
    let (_s, got) = reopen(&dir);
    assert_eq!(got, state);
}

#[test]
fn needs_compaction_after_16_mib() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let value = vec![1u8; 64 << 10];
    for i in 0..255 {
        store.write_batch([("k", &value[..])]).unwrap();
        assert!(!store.needs_compaction(), "{i}");
    }
    store.write_batch([("k", &value[..])]).unwrap();
    store.write_batch([("k", &value[..])]).unwrap();
    assert!(store.needs_compaction());
    store.compact([("k", &value[..])]).unwrap();
    assert!(!store.needs_compaction());
}

/// Files of the store, as bytes, for rebuilding crash states.
struct Files {
    snap: Vec<u8>,
    log: Vec<u8>,
}

fn files(dir: &Path) -> Files {
    Files {
        snap: fs::read(dir.join("hub.snap")).unwrap(),
        log: fs::read(dir.join("hub.log")).unwrap(),
    }
}

#[test]
fn crash_between_compaction_steps() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let mut old = State::new();
    put(
        &mut store,
        &mut old,
        &[("a", b"a1"), ("b", b"b1"), ("c", b"c1")],
    );
    store.compact(as_pairs(&old)).unwrap();
    // Generation 2 now. Log frames that a replay over the new snapshot
    // would get wrong: "a" goes back and forth, "b" is removed.
    put(&mut store, &mut old, &[("a", b"a2")]);
    store.remove_batch(["b"]).unwrap();
    old.remove("b");
    put(&mut store, &mut old, &[("a", b"a3"), ("d", b"d1")]);
    let before = files(&dir);
    // The compaction's input: the live state (= old, which the log holds).
    store.compact(as_pairs(&old)).unwrap();
    let after = files(&dir);
    drop(store);
    let (snap, log, tmp) = (
        dir.join("hub.snap"),
        dir.join("hub.log"),
        dir.join("hub.snap.tmp"),
    );
    let check = |what: &str, snap_b: &[u8], log_b: &[u8], tmp_b: Option<&[u8]>| -> Loaded {
        fs::write(&snap, snap_b).unwrap();
        fs::write(&log, log_b).unwrap();
        if let Some(b) = tmp_b {
            fs::write(&tmp, b).unwrap();
        }
        let (mut store, loaded) =
            Store::open(&dir, "hub").unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!tmp.exists(), "{what}");
        let flags = Loaded {
            records: HashMap::new(),
            torn_tail: loaded.torn_tail,
            stale_log: loaded.stale_log,
        };
        assert_eq!(drain(loaded), old, "{what}");
        // The store works on from there.
        store.write_batch([("e", &b"e1"[..])]).unwrap();
        drop(store);
        let (_s, mut got) = reopen(&dir);
        assert_eq!(got.remove("e").as_deref(), Some(&b"e1"[..]), "{what}");
        assert_eq!(got, old, "{what}");
        flags
    };
    // 1. Crash while writing the tmp, or after it but before the rename.
    check(
        "tmp half written",
        &before.snap,
        &before.log,
        Some(&after.snap[..after.snap.len() / 2]),
    );
    check(
        "tmp written, not renamed",
        &before.snap,
        &before.log,
        Some(&after.snap),
    );
    // 2. Renamed, log not yet truncated: the old log must not be replayed.
    let l = check("renamed, log untouched", &after.snap, &before.log, None);
    assert!(l.stale_log);
    // 3. Crash inside the log reset.
    check("log truncated to 0", &after.snap, b"", None);
    let l = check("log header torn", &after.snap, &after.log[..10], None);
    assert!(l.torn_tail);
    let mut zero_header = vec![0u8; HEADER_LEN];
    let l = check("log header zeroed", &after.snap, &zero_header, None);
    assert!(l.torn_tail);
    // A new header followed by old frames: the frames fail their CRC.
    zero_header.clear();
    zero_header.extend_from_slice(&after.log);
    zero_header.extend_from_slice(&before.log[HEADER_LEN..]);
    let l = check("new header, old frames", &after.snap, &zero_header, None);
    assert!(l.torn_tail);
    check("done", &after.snap, &after.log, None);
    // An old snapshot with the new log cannot come from a crash.
    fs::write(&snap, &before.snap).unwrap();
    fs::write(&log, &after.log).unwrap();
    let err = Store::open(&dir, "hub").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::GenerationMismatch {
                log_generation: 3,
                snap_generation: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn log_without_snapshot_is_refused() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    store.write_batch([("a", &b"1"[..])]).unwrap();
    drop(store);
    fs::remove_file(dir.join("hub.snap")).unwrap();
    let err = Store::open(&dir, "hub").unwrap_err();
    assert!(matches!(err, StoreError::MissingSnapshot { .. }), "{err}");
    // A missing log is just created.
    fs::remove_file(dir.join("hub.log")).unwrap();
    let (_s, l) = open(&dir);
    assert!(l.is_empty());
}

#[test]
fn second_open_is_locked_with_pid_other_instance_is_not() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut hub, _) = open(&dir);
    let err = Store::open(&dir, "hub").unwrap_err();
    match &err {
        StoreError::Locked { path, pid } => {
            assert_eq!(path, &dir.join("hub.lock"));
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("{other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "another rotor instance (pid {})",
            std::process::id()
        )),
        "{msg}"
    );
    let (mut node, _) = Store::open(&dir, "node-alpha_1.x").unwrap();
    hub.write_batch([("a", &b"hub"[..])]).unwrap();
    node.write_batch([("a", &b"node"[..])]).unwrap();
    drop(hub);
    drop(node);
    let (_h, mut l) = open(&dir);
    assert_eq!(l.take("a").unwrap().as_slice(), b"hub");
    let (_n, mut l) = Store::open(&dir, "node-alpha_1.x").unwrap();
    assert_eq!(l.take("a").unwrap().as_slice(), b"node");
}

#[test]
fn invalid_instance_names_are_refused() {
    let t = tmp();
    let dir = state_dir(&t);
    let long = "a".repeat(65);
    for bad in ["", "a/b", "hub node", "é", long.as_str()] {
        let err = Store::open(&dir, bad).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidInstance { .. }),
            "{bad:?}: {err}"
        );
    }
    Store::open(&dir, &"a".repeat(64)).unwrap();
}

#[test]
fn insecure_directory_is_refused() {
    let t = tmp();
    let dir = state_dir(&t);
    fs::create_dir(&dir).unwrap();
    for mode in [0o777, 0o770, 0o702] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        let err = Store::open(&dir, "hub").unwrap_err();
        match &err {
            StoreError::DirMode { path, mode: m } => {
                assert_eq!(path, &dir);
                assert_eq!(*m, mode);
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains(&format!("{mode:04o}")), "{err}");
    }
    // Readable by others is tolerated for the directory (files are 0600).
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    Store::open(&dir, "hub").unwrap();
    // A file there that others may read is refused.
    fs::set_permissions(dir.join("hub.log"), fs::Permissions::from_mode(0o644)).unwrap();
    let err = Store::open(&dir, "hub").unwrap_err();
    assert!(
        matches!(err, StoreError::FileMode { mode: 0o644, .. }),
        "{err}"
    );
}

#[test]
fn directory_of_another_user_is_refused() {
    if lock::my_uid() != 0 {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let t = tmp();
    let dir = state_dir(&t);
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(4242), None).unwrap();
    let err = Store::open(&dir, "hub").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Owner {
                owner: 4242,
                me: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn modes_are_0600_and_0700() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    store.write_batch([("a", &b"1"[..])]).unwrap();
    store.compact([("a", &b"1"[..])]).unwrap();
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
    for f in ["hub.snap", "hub.log", "hub.lock"] {
        assert_eq!(
            fs::metadata(dir.join(f)).unwrap().mode() & 0o7777,
            0o600,
            "{f}"
        );
    }
    assert!(!dir.join("hub.snap.tmp").exists());
}

#[test]
fn purge_removes_everything() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    store.write_batch([("a", &b"1"[..])]).unwrap();
    store.purge().unwrap();
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    let (_s, l) = open(&dir);
    assert!(l.is_empty());
}

#[test]
fn debug_and_errors_show_no_content() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    store.write_batch([("a", &b"SECRET-BYTES"[..])]).unwrap();
    drop(store);
    let (store, loaded) = open(&dir);
    let dbg = format!("{store:?} {loaded:?}");
    assert!(
        !dbg.contains("SECRET") && !dbg.contains("83, 69, 67"),
        "{dbg}"
    );
}

#[test]
fn load_100k_records_timing() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let n = 100_000;
    let keys: Vec<String> = (0..n).map(|i| format!("node-{i:06}")).collect();
    let values: Vec<Vec<u8>> = (0..n).map(|i| record(i, 1)).collect();
    let pairs = || {
        keys.iter()
            .map(String::as_str)
            .zip(values.iter().map(Vec::as_slice))
    };
    let t0 = Instant::now();
    store.compact(pairs()).unwrap();
    let compact = t0.elapsed();
    drop(store);
    let t0 = Instant::now();
    let (mut store, loaded) = open(&dir);
    let from_snap = t0.elapsed();
    assert_eq!(loaded.len(), n);
    drop(loaded);
    // The same again as log frames (1,000 records a batch).
    let t0 = Instant::now();
    for chunk in keys.chunks(1000).zip(values.chunks(1000)) {
        store
            .write_batch(
                chunk
                    .0
                    .iter()
                    .map(String::as_str)
                    .zip(chunk.1.iter().map(Vec::as_slice)),
            )
            .unwrap();
    }
    let write = t0.elapsed();
    drop(store);
    let t0 = Instant::now();
    let (_store, loaded) = open(&dir);
    let from_both = t0.elapsed();
    assert_eq!(loaded.len(), n);
    let t0 = Instant::now();
    drop(loaded);
    let dropped = t0.elapsed();
    eprintln!(
        "100,000 records of 200 bytes: compact {compact:?}; open from snapshot {from_snap:?}; \
         100 batches of 1,000 {write:?}; open from snapshot + log {from_both:?}; drop Loaded {dropped:?}"
    );
}

#[test]
fn unknown_version_is_an_error_not_a_torn_header() {
    let t = tmp();
    let dir = state_dir(&t);
    drop(open(&dir));
    let log = dir.join("hub.log");
    let mut header = fs::read(&log).unwrap();
    assert_eq!(header.len(), HEADER_LEN);
    header[8] = 2; // version 2, CRC fixed up
    let crc = crc32fast::hash(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&log, &header).unwrap();
    let err = Store::open(&dir, "hub").unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("version"), "{err}");
}

/// A batch bigger than one write chunk is still one frame: it reads back
/// whole, and whatever part of it a crash left (a body without its head,
/// a prefix of the body) is a torn tail that leaves the state before it.
#[test]
fn a_batch_spanning_several_chunks_is_one_frame() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let mut before = State::new();
    put(&mut store, &mut before, &[("a", b"old-a")]);
    let start = fs::metadata(dir.join("hub.log")).unwrap().len() as usize;
    let n = 3 * writer::CHUNK / 200;
    let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    let values: Vec<Vec<u8>> = (0..n).map(|i| record(i, 1)).collect();
    let mut after = before.clone();
    {
        let mut b = store.batch().unwrap();
        for (k, v) in names.iter().zip(&values) {
            b.put(k, v).unwrap();
            after.insert(k.clone(), v.clone());
        }
        b.remove("a").unwrap();
        after.remove("a");
        b.commit().unwrap();
    }
    drop(store);
    let log = dir.join("hub.log");
    let full = fs::read(&log).unwrap();
    let len = u32::from_le_bytes(full[start..start + 4].try_into().unwrap()) as usize;
    assert_eq!(
        start + 8 + len,
        full.len(),
        "one frame holds the whole batch"
    );
    let (_s, got) = reopen(&dir);
    assert_eq!(got, after);
    drop(_s);

    let mut no_head = full.clone();
    no_head[start..start + 8].fill(0);
    for (what, bytes) in [
        ("body without head", no_head),
        (
            "first chunk only",
            full[..start + 8 + writer::CHUNK].to_vec(),
        ),
        ("all but the last byte", full[..full.len() - 1].to_vec()),
    ] {
        fs::write(&log, &bytes).unwrap();
        let (_s, loaded) = open(&dir);
        assert!(loaded.torn_tail, "{what}");
        assert_eq!(drain(loaded), before, "{what}");
        assert_eq!(fs::metadata(&log).unwrap().len() as usize, start, "{what}");
    }
}

/// A batch abandoned after part of it reached the log leaves the store
/// failed (what follows the log's end is unknown), and nothing of it is
/// read back.
#[test]
fn a_batch_dropped_after_a_chunk_fails_the_store() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let mut before = State::new();
    put(&mut store, &mut before, &[("a", b"1")]);
    {
        let mut b = store.batch().unwrap();
        for i in 0..(writer::CHUNK / 200 + 10) {
            b.put(&format!("n{i}"), &record(i, 2)).unwrap();
        }
    }
    assert!(matches!(
        store.write_batch([("b", &b"2"[..])]),
        Err(StoreError::Failed { .. })
    ));
    drop(store);
    let (_s, loaded) = open(&dir);
    assert!(loaded.torn_tail);
    assert_eq!(drain(loaded), before);
}

/// An empty batch, or one dropped before it wrote anything, changes
/// nothing and leaves the store usable.
#[test]
fn an_abandoned_small_batch_changes_nothing() {
    let t = tmp();
    let dir = state_dir(&t);
    let (mut store, _) = open(&dir);
    let mut state = State::new();
    put(&mut store, &mut state, &[("a", b"1")]);
    let len = fs::metadata(dir.join("hub.log")).unwrap().len();
    store.batch().unwrap().commit().unwrap();
    {
        let mut b = store.batch().unwrap();
        b.put("b", b"2").unwrap();
    }
    assert_eq!(fs::metadata(dir.join("hub.log")).unwrap().len(), len);
    put(&mut store, &mut state, &[("c", b"3")]);
    drop(store);
    let (_s, got) = reopen(&dir);
    assert_eq!(got, state);
}
