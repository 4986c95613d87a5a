//! The service address of a failover pair: the address nodes reach the
//! hub at, held by whichever hub leads. The leader adds it to its
//! interface and announces it (IPv4: three gratuitous ARPs a second apart
//! with `arping -U`, the first out before it answers;
//! IPv6: added without duplicate address detection, the kernel's
//! unsolicited neighbour advertisement when `ndisc_notify` is on); a hub
//! that stops leading, or starts as a standby, removes it. A hub handing
//! over keeps the address for a second after its successor serves, its
//! neighbour entries on that interface held without probing meanwhile
//! ([`quiet_neighbours`]).
//!
//! Through `ip` and `arping` like the guard's tools: two commands per
//! takeover, nothing on any hot path.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tracing::{info, warn};

use crate::config::ServiceAddress;

/// Gratuitous ARPs sent on takeover: neighbours ignore an update within
/// their `locktime` (1 s by default) of the last one, so a few, a second
/// apart.
const ANNOUNCEMENTS: &str = "3";
/// How long [`take`] waits for the first announcement to leave (arping's
/// start; in UML a process start takes up to ~150 ms).
const FIRST_ANNOUNCEMENT: Duration = Duration::from_secs(1);

fn ip_args(s: &ServiceAddress, verb: &str) -> Vec<String> {
    let mut v = vec![
        if s.net.addr.is_ipv6() { "-6" } else { "-4" }.to_string(),
        "addr".into(),
        verb.into(),
        format!("{}/{}", s.net.addr, s.net.prefix),
        "dev".into(),
        s.interface.clone(),
    ];
    if s.net.addr.is_ipv6() && verb != "del" {
        // A tentative address cannot be bound; the other hub's copy is
        // gone (or going) by the time we lead.
        v.push("nodad".into());
    }
    v
}

/// Adds the address (a no-op when present) and announces it: the first
/// announcement has left (or a second has passed) when it returns, the
/// others follow in the background. Fails when the address cannot be
/// added.
pub fn take(s: &ServiceAddress) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(ip_args(s, "replace"))
        .stdin(Stdio::null())
        .output()
        .context("running ip to add hub.service_address")?;
    if !out.status.success() {
        bail!(
            "adding hub.service_address {}/{} to {}: {}",
            s.net.addr,
            s.net.prefix,
            s.interface,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    info!(address = %s.net.addr, interface = %s.interface, "service address taken");
    if let IpAddr::V4(a) = s.net.addr {
        let before = tx_packets(&s.interface);
        match arping(s, a, ANNOUNCEMENTS).spawn() {
            // Reaped by a thread of its own: the announcements take seconds.
            Ok(mut child) => {
                let _ = std::thread::Builder::new()
                    .name("rotor-arping".into())
                    .spawn(move || child.wait());
                // The first announcement out before returning: the caller
                // answers next, and its first answers rotate nodes onto
                // keys only this host has; a node still sending to the
                // address's previous holder would lose those packets.
                // (arping itself exits only a second after its last.)
                if let Some(n) = before {
                    let until = Instant::now() + FIRST_ANNOUNCEMENT;
                    while tx_packets(&s.interface).is_some_and(|m| m <= n) && Instant::now() < until
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            Err(e) => warn!(
                "cannot run arping ({e}): neighbours learn the service address's new owner only when their ARP entry expires; install iputils-arping"
            ),
        }
    }
    Ok(())
}

/// Frames sent on `interface` so far (its kernel counter).
fn tx_packets(interface: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/statistics/tx_packets"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `arping -U`: `count` gratuitous ARPs for `a` on the service interface,
/// a second apart, the first at once.
fn arping(s: &ServiceAddress, a: std::net::Ipv4Addr, count: &str) -> Command {
    let mut c = Command::new("arping");
    c.args(["-q", "-U", "-c", count, "-I", &s.interface])
        .arg(a.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Removes the address if this host holds it. Errors are logged: a hub
/// stepping down goes on stepping down.
pub fn give_up(s: &ServiceAddress) {
    let r = Command::new("ip")
        .args(ip_args(s, "del"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match r {
        Ok(st) if st.success() => {
            info!(address = %s.net.addr, interface = %s.interface, "service address given up");
        }
        // Not held (the usual case for a standby): nothing to do.
        Ok(_) => {}
        Err(e) => warn!("running ip to remove hub.service_address: {e}"),
    }
}

/// Neighbour states [`quiet_neighbours`] freezes: the ones the kernel
/// would validate again by probing.
const PROBED_STATES: [&str; 4] = ["REACHABLE", "STALE", "DELAY", "PROBE"];

/// The neighbour entries a hub handing over froze ([`quiet_neighbours`]);
/// [`Quiet::thaw`] lets the kernel validate them again.
pub struct Quiet {
    interface: String,
    /// Each frozen entry as `ip neigh change` names it: its address, its
    /// link-layer address and, for an IPv6 router, `router` (a change
    /// without it would clear the flag).
    entries: Vec<String>,
}

/// The entries of `ip neigh show dev ...` output in a state the kernel
/// probes, spelt for `ip neigh change` (see [`Quiet`]).
fn probed_entries(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_ascii_whitespace().collect();
            let at = w.iter().position(|x| *x == "lladdr")?;
            let mac = w.get(at + 1)?;
            let addr = w.first()?;
            let router = if w.contains(&"router") { " router" } else { "" };
            PROBED_STATES
                .contains(w.last()?)
                .then(|| format!("{addr} lladdr {mac}{router}"))
        })
        .collect()
}

/// One `ip -batch` of `neigh change` lines setting `entries` to `nud`;
/// `-force` goes on past an entry that has gone meanwhile.
fn set_nud(interface: &str, entries: &[String], nud: &str) -> anyhow::Result<()> {
    let batch: String = entries
        .iter()
        .map(|e| format!("neigh change {e} dev {interface} nud {nud}\n"))
        .collect();
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    if let Some(mut pipe) = child.stdin.take() {
        use std::io::Write;
        let _ = pipe.write_all(batch.as_bytes());
    }
    let out = child.wait_with_output().context("running ip -batch")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Keeps this host's kernel from probing its neighbours on the service
/// interface while it still holds the address after handing over: their
/// entries become `noarp` (valid, never probed) until [`Quiet::thaw`].
///
/// Why: a unicast ARP request the kernel sends to re-validate a stale
/// entry carries the service address as its sender, and the neighbour's
/// kernel takes a request's sender as the address's owner at once. While
/// both hubs hold the address, that moves a node back to the old hub,
/// whose kernel lacks the key the new leader has just given it: its
/// traffic is lost until the new leader's next announcement. Errors are
/// logged; the hand-over goes on.
pub fn quiet_neighbours(s: &ServiceAddress) -> Option<Quiet> {
    let out = match Command::new("ip")
        .args(["neigh", "show", "dev", &s.interface])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            warn!(
                "listing the neighbours on {}: {}; they may be probed from the service address during the hand-over",
                s.interface,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            warn!("running ip to list the neighbours on {}: {e}", s.interface);
            return None;
        }
    };
    let entries = probed_entries(&String::from_utf8_lossy(&out.stdout));
    if entries.is_empty() {
        return None;
    }
    match set_nud(&s.interface, &entries, "noarp") {
        Ok(()) => info!(
            interface = %s.interface,
            neighbours = entries.len(),
            "neighbours held without probing while the address is handed over"
        ),
        // `-force` went on past the failed lines: the others are held, and
        // all of them are let go again at the end.
        Err(e) => warn!(
            "holding the neighbours on {} without probing: {e}; those not held may be probed from the service address during the hand-over",
            s.interface
        ),
    }
    Some(Quiet {
        interface: s.interface.clone(),
        entries,
    })
}

impl Quiet {
    /// Sets the frozen entries back to `stale`: the kernel validates each
    /// again the next time it is used, as it would have.
    pub fn thaw(self) {
        if let Err(e) = set_nud(&self.interface, &self.entries, "stale") {
            warn!(
                "letting the kernel probe the neighbours on {} again: {e}; `ip neigh flush dev {}` does",
                self.interface, self.interface
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_the_kernel_probes_are_frozen_and_routers_stay_routers() {
        let out = "10.9.0.2 lladdr 3a:7e:f8:b6:70:f3 REACHABLE\n\
                   10.9.0.3 lladdr 4a:09:57:26:f9:e0 STALE\n\
                   fe80::1 lladdr 4a:09:57:26:f9:e1 router DELAY\n\
                   10.9.0.4 lladdr 4a:09:57:26:f9:e2 PROBE\n\
                   10.9.0.5 INCOMPLETE\n\
                   10.9.0.6 FAILED\n\
                   10.9.0.7 lladdr 4a:09:57:26:f9:e3 PERMANENT\n\
                   10.9.0.8 lladdr 4a:09:57:26:f9:e4 NOARP\n";
        assert_eq!(
            probed_entries(out),
            [
                "10.9.0.2 lladdr 3a:7e:f8:b6:70:f3",
                "10.9.0.3 lladdr 4a:09:57:26:f9:e0",
                "fe80::1 lladdr 4a:09:57:26:f9:e1 router",
                "10.9.0.4 lladdr 4a:09:57:26:f9:e2",
            ]
        );
    }
}
