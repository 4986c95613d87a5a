//! A hub whose state is in etcd leads before it serves: it waits as a
//! standby until it wins the election ([`crate::state::etcd::lead`]),
//! installs what the nodes need, then takes the service address, and stops
//! the process the moment the lead is lost. Stepping down is exiting:
//! whatever the event loop was doing, nothing more leaves this hub, and the
//! service manager starts it again as a standby. A clean stop hands over
//! make-before-break ([`Lead::hand_over`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tracing::{error, info, warn};

use super::event_loop::BeforeFirstSend;
use super::service_addr;
use crate::config::ServiceAddress;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::state::etcd::lead::{Successor, mark_serving, wait_serving};
use crate::state::etcd::{Election, EtcdTarget, Fence};

/// The exit status of a hub that lost the lead (EX_TEMPFAIL: start again);
/// also `rotor`'s status when a write was refused for another leader.
pub const EXIT_STEPPED_DOWN: i32 = 75;

/// How long a leader handing over waits for another hub to lead (a
/// standby wins within milliseconds of the revocation) before it gives up
/// the service address anyway.
pub const HAND_OVER_LEAD: Duration = Duration::from_secs(3);
/// How long it then waits for that hub to serve (its records read, every
/// SA and policy installed, the address taken): the nodes' traffic reaches
/// this hub's intact SAs meanwhile.
pub const HAND_OVER_SERVE: Duration = Duration::from_secs(30);
/// How long a leader handing over keeps the address once its successor
/// serves: the successor sent its first gratuitous ARP before its mark,
/// and one more is on its way within a second; packets a node sent before
/// its entry moved still reach this hub meanwhile. A gratuitous ARP
/// updates a neighbour entry at once, whatever its `locktime`.
pub const HAND_OVER_LINGER: Duration = Duration::from_secs(1);

/// This hub's lead, held until [`Lead::hand_over`] or the process ends.
pub struct Lead {
    /// Held for its lease: dropping it (after the address is given up)
    /// revokes the lease.
    election: Option<Election>,
    target: EtcdTarget,
    fence: Fence,
    service: Option<ServiceAddress>,
    /// The service address is held (taken before the first answer,
    /// [`Lead::before_first_send`]).
    holding: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    lease_file: PathBuf,
}

impl Lead {
    /// Waits, as a standby, until this hub leads `target`'s prefix, then
    /// arms the step-down. A standby holds no service address, answers no
    /// node and installs nothing; the winner takes the address only once
    /// it can serve ([`Lead::before_first_send`]).
    ///
    /// `lease_file` keeps this run's lease id for the next run on this
    /// host: a restart after a crash revokes it and need not wait out its
    /// TTL. It is per host (next to the control socket): only a run whose
    /// predecessor is dead reads it.
    pub fn campaign(
        target: &EtcdTarget,
        ttl: Duration,
        service: Option<ServiceAddress>,
        lease_file: PathBuf,
    ) -> anyhow::Result<Lead> {
        if let Some(s) = &service {
            // What a killed leader on this host left behind.
            service_addr::give_up(s);
        }
        let id = format!("{}/{}", hostname(), std::process::id());
        let previous = std::fs::read_to_string(&lease_file)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok());
        let mut election =
            Election::start(target, &id, ttl, previous).context("joining the hub election")?;
        std::fs::write(&lease_file, format!("{}\n", election.lease()))
            .with_context(|| format!("writing {}", lease_file.display()))?;
        info!(
            state = %target,
            id = %id,
            lease_ttl_ms = election.ttl().as_millis() as u64,
            "standby: waiting to lead"
        );
        let fence = election.wait_won().context("waiting to lead")?;
        info!(token = fence.token(), "leading");
        let lead = Lead {
            election: Some(election),
            target: target.clone(),
            fence,
            service,
            holding: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
            lease_file,
        };
        lead.arm()?;
        Ok(lead)
    }

    /// The fence the state's writes carry.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// What the event loop runs once every SA and policy of the start is
    /// in and before its first answer
    /// ([`super::event_loop::Lifecycle::before_first_send`]): takes the
    /// service address and announces it, then marks this hub serving in
    /// etcd (a leader handing over gives the address up on that mark).
    pub fn before_first_send(&self) -> BeforeFirstSend {
        let (target, fence) = (self.target.clone(), self.fence.clone());
        let (service, holding) = (self.service.clone(), Arc::clone(&self.holding));
        Box::new(move || {
            serve(&target, &fence, service.as_ref(), &holding).map_err(|e| format!("{e:#}"))
        })
    }

    /// The watchdog: when the lead is lost (the lease's clock ran out,
    /// etcd dropped the key), gives up the service address and exits.
    fn arm(&self) -> anyhow::Result<()> {
        let fence = self.fence.clone();
        let stopping = Arc::clone(&self.stopping);
        let service = self.service.clone();
        std::thread::Builder::new()
            .name("rotor-lead".into())
            .spawn(move || {
                let why = fence.wait_lost();
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                error!("{why}; stepping down: exiting (status {EXIT_STEPPED_DOWN}) so that nothing more leaves this hub");
                if let Some(s) = &service {
                    service_addr::give_up(s);
                }
                std::process::exit(EXIT_STEPPED_DOWN);
            })
            .context("starting the lead's watchdog")?;
        Ok(())
    }

    /// A clean stop once this hub's loop has ended (it sends and writes
    /// nothing more): revokes the lease, so that a standby leads at once,
    /// and keeps the service address (and the kernel's SAs) until that
    /// standby serves ([`HAND_OVER_LEAD`], [`HAND_OVER_SERVE`]); then gives
    /// the address up. Make-before-break: packets that still reach this
    /// hub meanwhile meet the SAs they were sent for. Meanwhile its kernel
    /// probes no neighbour on the service interface
    /// ([`service_addr::quiet_neighbours`]), so that no node's ARP entry
    /// moves back to this hub.
    pub fn hand_over(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let token = self.fence.token();
        // Before the revocation, so before any successor serves: from its
        // first rotation on, a node this host's kernel probed would be
        // lost to it.
        let quiet = self
            .service
            .as_ref()
            .filter(|_| self.holding.load(Ordering::SeqCst))
            .and_then(service_addr::quiet_neighbours);
        // Revoked here: nothing for the next run to revoke.
        let _ = std::fs::remove_file(&self.lease_file);
        // Logged first: the revocation lets a standby lead at once.
        info!(token, "handing over: revoking the lease");
        drop(self.election.take());
        if self.service.is_none() || !self.holding.load(Ordering::SeqCst) {
            return;
        }
        let t = Instant::now();
        match wait_serving(&self.target, token, HAND_OVER_LEAD, HAND_OVER_SERVE) {
            Ok(Successor::Serving(next)) => {
                std::thread::sleep(HAND_OVER_LINGER);
                info!(
                    token = next,
                    waited_ms = t.elapsed().as_millis() as u64,
                    "the next leader serves: giving up the service address"
                );
            }
            Ok(Successor::None) => info!(
                waited_ms = t.elapsed().as_millis() as u64,
                "no standby took over: giving up the service address"
            ),
            Ok(Successor::NotServing) => warn!(
                waited_ms = t.elapsed().as_millis() as u64,
                "the next leader did not serve in time: giving up the service address"
            ),
            Err(e) => warn!("waiting for the next leader: {e}; giving up the service address"),
        }
        if let Some(s) = self.service.take() {
            service_addr::give_up(&s);
        }
        if let Some(q) = quiet {
            q.thaw();
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(s) = &self.service {
            service_addr::give_up(s);
        }
        if self.election.is_some() {
            // Revoked below: nothing for the next run to revoke.
            let _ = std::fs::remove_file(&self.lease_file);
            // The election is dropped next, after the address is gone:
            // revoking its lease lets a standby win at once.
            info!(token = self.fence.token(), "giving up the lead");
        }
    }
}

/// See [`Lead::before_first_send`].
fn serve(
    target: &EtcdTarget,
    fence: &Fence,
    service: Option<&ServiceAddress>,
    holding: &AtomicBool,
) -> anyhow::Result<()> {
    fence
        .check()
        .map_err(anyhow::Error::msg)
        .context("about to take the service address")?;
    if let Some(s) = service {
        holding.store(true, Ordering::SeqCst);
        service_addr::take(s)?;
    }
    match mark_serving(target, fence) {
        Ok(true) => info!(token = fence.token(), "marked serving"),
        Ok(false) => anyhow::bail!(
            "{} no longer carries this hub's token {}: another hub leads",
            fence.key(),
            fence.token()
        ),
        // Only a hand-over waits for the mark, and it is bounded.
        Err(e) => warn!("cannot mark this hub serving: {e}"),
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
