//! `rotor check`: validates a configuration (keys included) and whether this
//! kernel and process can run rotor, without changing anything the host can
//! see (the ESP probe runs in a throwaway network namespace).

use std::path::Path;

use anyhow::bail;
use rotor_xfrm::{Capability, probe_esp};

use crate::config::{ConfigFile, PeerMode, Role};

/// Runs every check, prints one line per check, fails if any failed. A bad
/// configuration fails first, with exactly the error `rotor hub` or
/// `rotor node` would print for the same file (the same loader produces it).
pub fn run(file: &Path) -> anyhow::Result<()> {
    let mut failed = 0;
    let cfg = ConfigFile::read(file)?;
    match cfg.role()? {
        Role::Hub => {
            let c = cfg.into_hub()?;
            println!(
                "ok   config: hub {}:{} with {} node(s), rotate every {:?}, AES-{}",
                c.address,
                c.port,
                c.nodes.len(),
                c.rotate_interval,
                c.key_bits
            );
            for n in &c.nodes {
                let mode = match &n.mode {
                    PeerMode::Transport => "transport".to_string(),
                    PeerMode::Tunnel { local, remote } => format!(
                        "tunnel ({} local, {} remote subnets)",
                        local.len(),
                        remote.len()
                    ),
                };
                println!("ok   node {}: {} {mode}, key file 0600", n.name, n.address);
            }
        }
        Role::Node => {
            let c = cfg.into_node()?;
            println!(
                "ok   config: node {} at {}, hub {}, hello every {:?}, key file 0600",
                c.name, c.address, c.hub, c.hello_interval
            );
        }
    }
    match probe_esp() {
        Capability::Ok => println!(
            "ok   kernel: ESP SAs with rfc4106(gcm(aes)) and ESN can be created (IPv4 and IPv6)"
        ),
        Capability::NotPermitted(m) => {
            failed += 1;
            println!("FAIL privileges: {m} (rotor needs root or CAP_NET_ADMIN)");
        }
        Capability::Refused(e) => {
            failed += 1;
            println!("FAIL kernel: {e}");
        }
        Capability::Failed(m) => {
            failed += 1;
            println!("FAIL kernel probe: {m}");
        }
    }
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}
