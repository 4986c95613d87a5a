//! A hub whose state is in etcd leads before it serves: it waits as a
//! standby until it wins the election ([`crate::state::etcd::lead`]), then
//! takes the service address, and stops the process the moment the lead
//! is lost. Stepping down is exiting: whatever the event loop was doing,
//! nothing more leaves this hub, and the service manager starts it again
//! as a standby.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tracing::{error, info};

use super::service_addr;
use crate::config::ServiceAddress;
use std::path::PathBuf;
use std::time::Duration;

use crate::state::etcd::{Election, EtcdTarget, Fence};

/// The exit status of a hub that lost the lead (EX_TEMPFAIL: start again);
/// also `rotor`'s status when a write was refused for another leader.
pub const EXIT_STEPPED_DOWN: i32 = 75;

/// This hub's lead, held until [`Lead::step_down`] or the process ends.
pub struct Lead {
    /// Held for its lease: dropping it (after the address is given up)
    /// revokes the lease.
    _election: Election,
    fence: Fence,
    service: Option<ServiceAddress>,
    stopping: Arc<AtomicBool>,
    lease_file: PathBuf,
}

impl Lead {
    /// Waits, as a standby, until this hub leads `target`'s prefix; then
    /// takes the service address and arms the step-down. A standby holds
    /// no service address, answers no node and installs nothing.
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
        let stopping = Arc::new(AtomicBool::new(false));
        let lead = Lead {
            _election: election,
            fence,
            service,
            stopping,
            lease_file,
        };
        lead.arm()?;
        if let Some(s) = &lead.service {
            service_addr::take(s)?;
        }
        Ok(lead)
    }

    /// The fence the state's writes carry.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
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

    /// A clean stop: gives up the service address, then the lead (the
    /// lease is revoked, so a standby takes over at once). Dropping does
    /// the same.
    pub fn step_down(self) {
        drop(self);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(s) = &self.service {
            service_addr::give_up(s);
        }
        // Revoked below: nothing for the next run to revoke.
        let _ = std::fs::remove_file(&self.lease_file);
        // The election is dropped next, after the address is gone:
        // revoking its lease lets a standby win at once.
        info!(token = self.fence.token(), "giving up the lead");
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
