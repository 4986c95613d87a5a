//! The service address of a failover pair: the address nodes reach the
//! hub at, held by whichever hub leads. The leader adds it to its
//! interface and announces it (IPv4: three gratuitous ARPs a second apart
//! with `arping -U`, the first out before it answers;
//! IPv6: added without duplicate address detection, the kernel's
//! unsolicited neighbour advertisement when `ndisc_notify` is on); a hub
//! that stops leading, or starts as a standby, removes it.
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
