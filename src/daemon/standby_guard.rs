//! A standby hub's clear-text guard: put in before the hub campaigns, its
//! sets empty ([`Guard::prepare`]), and checked on a thread of its own
//! while the hub waits to lead, as a leader's periodic pass checks its
//! guard. The takeover then only fills the sets.
//!
//! Why ahead of time: the guard's iptables runs are process starts, tens
//! of ms on an idle host but seconds on a loaded one, and a takeover's
//! time to serve is what the nodes' patience is measured against. A
//! standby whose guard cannot be installed (no `ipset`, no `xt_policy`)
//! also fails at its start, not at the takeover.

use std::net::IpAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tracing::{error, info, warn};

use crate::config::{HubConfig, PeerMode};
use crate::guard::Guard;

/// The prepared guard and the thread that checks it.
pub struct StandbyGuard {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<Guard>,
}

/// The local sides the hub's selector pairs will have: its address for
/// transport-mode nodes, the local subnets of tunnel-mode ones (the
/// families the guard needs).
pub fn sources(cfg: &HubConfig) -> impl Iterator<Item = IpAddr> + '_ {
    cfg.nodes.iter().flat_map(move |n| match &n.mode {
        PeerMode::Transport => vec![cfg.address],
        PeerMode::Tunnel { local, .. } => local.iter().map(|l| l.addr).collect(),
    })
}

impl StandbyGuard {
    /// Puts `guard` in for the families of `sources`, sized for
    /// `expected` pairs, and starts checking it every `every`.
    pub fn start(
        mut guard: Guard,
        sources: impl IntoIterator<Item = IpAddr>,
        expected: usize,
        every: Duration,
    ) -> anyhow::Result<StandbyGuard> {
        let t = std::time::Instant::now();
        let adopted = guard
            .prepare(sources, expected)
            .context("putting in the standby's clear-text guard (`guard`)")?;
        info!(
            adopted,
            ms = t.elapsed().as_millis() as u64,
            "standby: clear-text guard in place, dropping nothing until this hub leads: {}",
            guard.describe()
        );
        let (stop, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rotor-guard".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    match guard.keep_prepared() {
                        Ok(bad) if bad.is_empty() => {}
                        Ok(bad) => warn!(
                            "standby: the clear-text guard had changed ({}): put back",
                            bad.join("; ")
                        ),
                        Err(e) => error!("standby: checking the clear-text guard: {e}"),
                    }
                }
                guard
            })
            .context("starting the standby's guard check")?;
        Ok(StandbyGuard { stop, thread })
    }

    /// Stops the checks and hands the guard back (after a check under
    /// way, if any, has finished).
    pub fn take(self) -> anyhow::Result<Guard> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the standby's guard check panicked"))
    }
}
