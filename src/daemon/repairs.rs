//! A leader that starts on a kernel lacking its SAs (a standby taking
//! over, a leader back after a reboot) serves before it records its
//! repairs. Its start-up pass re-installs every SA it safely can with the
//! core's repairs held ([`rotor_core::Hub::hold_repairs`]): nothing of that
//! needs a record written first, so the service address moves, and the
//! nodes' traffic reaches this hub, once the kernel is ready rather than
//! once a record per node is in etcd (a minute at 100,000 nodes).
//!
//! What is owed after that, per repaired node: a rotation (a re-installed
//! inbound SA starts a fresh replay window) whose record must survive a
//! restart. Until it is recorded, a marker file on this host says so: only
//! a restart on this same kernel could adopt the re-installed SAs and see
//! nothing missing, and a restart that finds the marker rotates every node
//! (it cannot tell which ones were settled). [`Repairs::settle_some`] then
//! rotates the repaired nodes in sync, and records the others, a slice per
//! turn of the loop, so the hub answers its nodes meanwhile; the marker
//! goes once the last slice is durable.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use rotor_core::Now;
use tracing::{info, warn};

use super::role::Role;

/// Repaired nodes settled per turn of the event loop: their records go in
/// one burst of writes (at 1,024, about 2 s on three etcd members in
/// UML), and the loop answers the nodes between two.
pub const SETTLE_PER_TURN: usize = 1024;

/// The repairs a leader's start held, until each is settled.
#[derive(Debug)]
pub struct Repairs {
    marker: PathBuf,
    /// Still to settle, taken from the end.
    queue: Vec<usize>,
    /// Set every node's `force_rotate` first: an earlier run's marker was
    /// found, and which nodes it left unsettled is unknown.
    force: bool,
    marked: bool,
    total: usize,
    since: Instant,
}

impl Repairs {
    /// Repairs whose marker is `marker` (a file on this host, next to the
    /// control socket, that lives as long as the kernel's SAs do). Reads
    /// whether an earlier run left one; [`Self::mark`] writes it.
    pub fn new(marker: PathBuf) -> Repairs {
        let force = marker.exists();
        if force {
            warn!(
                marker = %marker.display(),
                "an earlier run on this kernel left repairs unrecorded: every node is rotated"
            );
        }
        Repairs {
            marker,
            queue: Vec::new(),
            force,
            marked: false,
            total: 0,
            since: Instant::now(),
        }
    }

    /// Makes the marker durable: before the start's first kernel change
    /// (it is removed again once nothing is owed, [`Self::finish_if_done`]).
    pub fn mark(&mut self) -> anyhow::Result<()> {
        write_marker(&self.marker)
            .with_context(|| format!("writing the repair marker {}", self.marker.display()))?;
        self.marked = true;
        Ok(())
    }

    /// After the start-up pass, before its actions are executed: takes the
    /// nodes whose repairs it held (the role's dirty set, which held
    /// repairs alone filled since the start's first write), or every node
    /// after an earlier run's marker.
    pub fn take_held<R: Role>(&mut self, role: &mut R) {
        role.take_dirty(&mut self.queue);
        if self.force {
            self.queue.clear();
            self.queue.extend(0..role.peer_count());
        }
        self.queue.sort_unstable_by(|a, b| b.cmp(a));
        self.queue.dedup();
        self.total = self.queue.len();
        self.since = Instant::now();
        if self.queue.is_empty() {
            return;
        }
        info!(
            nodes = self.total,
            rotate_all = self.force,
            per_turn = SETTLE_PER_TURN,
            "repairs held: serving first, rotating and recording the repaired nodes a slice at a time"
        );
    }

    /// The start failed before the loop, so nothing it held was
    /// re-installed: the marker goes, unless an earlier run left it.
    pub fn abandon(&mut self) {
        self.queue.clear();
        if !self.force {
            self.unmark();
        }
    }

    /// Whether nodes remain to settle (the loop wakes at once then).
    pub fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Settles up to `limit` nodes ([`rotor_core::Hub::settle_repair`]);
    /// their records and rotations go with this turn's actions.
    pub fn settle_some<R: Role>(&mut self, role: &mut R, now: Now, limit: usize) {
        let keep = self.queue.len().saturating_sub(limit);
        for i in self.queue.drain(keep..).rev() {
            role.settle_repair(now, i, self.force);
        }
    }

    /// After a turn whose records were written: once every repaired node
    /// is settled, removes the marker. Returns whether all is settled.
    pub fn finish_if_done(&mut self) -> bool {
        if self.pending() {
            return false;
        }
        self.unmark();
        if self.total > 0 {
            info!(
                nodes = self.total,
                ms = self.since.elapsed().as_millis() as u64,
                "repairs settled: every repaired node rotated or recorded"
            );
            self.total = 0;
        }
        true
    }

    /// Removes the marker if this run holds it.
    fn unmark(&mut self) {
        if !self.marked {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.marker) {
            // A marker left behind costs the next start on this kernel
            // one rotation of every node, nothing worse.
            warn!(marker = %self.marker.display(), "removing the repair marker: {e}");
        }
        self.marked = false;
    }
}

/// Creates `path` and makes it durable (the file and its directory
/// entry).
fn write_marker(path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(b"repairs held: rotate every node before trusting this kernel's SAs\n")?;
    f.sync_all()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_durable_and_found_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.repairing");
        let mut r = Repairs::new(path.clone());
        assert!(!r.force);
        r.mark().unwrap();
        let again = Repairs::new(path.clone());
        assert!(again.force, "a marker left behind forces a rotation of all");
        assert!(r.finish_if_done(), "nothing was held");
        assert!(!path.exists(), "the marker goes once nothing is owed");
        // A failed start removes its own marker, never an earlier run's.
        let mut r = Repairs::new(path.clone());
        r.mark().unwrap();
        r.abandon();
        assert!(!path.exists());
        std::fs::write(&path, b"left\n").unwrap();
        let mut r = Repairs::new(path.clone());
        r.mark().unwrap();
        r.abandon();
        assert!(path.exists(), "an earlier run's marker stays");
    }
}
