//! `rotor-loadgen gen`: init keys (one 0600 file per node, as `rotor genkey`
//! writes them) and a hub configuration with one `[[node]]` per key, named
//! and addressed the way `rotor-loadgen run` expects, and `addresses.batch`:
//! the nodes' addresses as `ip -batch` lines for an interface named `DEV`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;
use rotor::keyfile::{KEY_LEN, write_key};
use zeroize::Zeroizing;

use crate::addr::AddrMap;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Number of nodes.
    pub count: u32,
    /// Output directory (created): `hub.toml` and `keys/NAME.key`.
    pub dir: PathBuf,
    /// Address of node 0.
    pub first_addr: Ipv4Addr,
    /// How node indexes map to addresses.
    pub addr_map: AddrMap,
    /// The hub's address.
    pub hub_addr: IpAddr,
    /// The control port.
    pub port: u16,
    /// Node names are this prefix and the node's index.
    pub name_prefix: String,
    /// `hub.rotate_interval`, e.g. `1h`.
    pub rotate_interval: String,
    /// `hub.grace`, e.g. `1s`.
    pub grace: String,
    /// `hub.ratchet_every`: every K-th rotation is a DH ratchet step.
    pub ratchet_every: u32,
    /// `hub.socket`.
    pub socket: PathBuf,
    /// All keys in one `hub.keys_file` (`keys/nodes.keys`) besides the
    /// per-node files, and no `psk_file` in the `[[node]]` entries.
    pub keys_file: bool,
}

/// The key file of node `i`, as `gen` writes it and `run` reads it.
pub fn key_path(dir: &Path, prefix: &str, i: u32) -> PathBuf {
    dir.join(format!("{prefix}{i}.key"))
}

/// Writes the keys and `hub.toml`; returns the config's path.
pub fn generate(c: &GenConfig) -> anyhow::Result<PathBuf> {
    let keys = c.dir.join("keys");
    std::fs::create_dir_all(&keys).with_context(|| format!("creating {}", keys.display()))?;
    let mut toml = String::with_capacity(c.count as usize * 96 + 256);
    let _ = writeln!(
        toml,
        "# {} nodes, written by rotor-loadgen gen\n[hub]\naddress = \"{}\"\nport = {}\nrotate_interval = \"{}\"\ngrace = \"{}\"\nratchet_every = {}\nsocket = \"{}\"\nstate_dir = \"{}\"",
        c.count,
        c.hub_addr,
        c.port,
        c.rotate_interval,
        c.grace,
        c.ratchet_every,
        c.socket.display(),
        c.dir.join("state").display()
    );
    if c.keys_file {
        let _ = writeln!(
            toml,
            "keys_file = \"{}\"",
            keys.join("nodes.keys").display()
        );
    }
    // The keys file's lines, zeroized when dropped; reserved whole, so no
    // reallocation leaves a copy behind.
    let mut lines = Zeroizing::new(String::with_capacity(if c.keys_file {
        c.count as usize * (c.name_prefix.len() + 60)
    } else {
        0
    }));
    let mut rng = rand::rngs::OsRng;
    for i in 0..c.count {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rng.try_fill_bytes(k.as_mut())
            .context("reading the OS random number generator")?;
        let path = key_path(&keys, &c.name_prefix, i);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("replacing {}", path.display()))?;
        }
        write_key(&path, &k).with_context(|| format!("writing {}", path.display()))?;
        let _ = write!(
            toml,
            "\n[[node]]\nname = \"{}{i}\"\naddress = \"{}\"\n",
            c.name_prefix,
            c.addr_map.addr(c.first_addr, i),
        );
        if c.keys_file {
            let _ = writeln!(
                lines,
                "{}{i} {}",
                c.name_prefix,
                rotor::keyfile::encode_key(&k).as_str()
            );
        } else {
            let _ = writeln!(toml, "psk_file = \"{}\"", path.display());
        }
    }
    if c.keys_file {
        let path = keys.join("nodes.keys");
        write_secret(&path, lines.as_bytes())?;
    }
    // The nodes' addresses as `ip -batch` commands (for interface DEV: sed it).
    let mut batch = String::with_capacity(c.count as usize * 40);
    for i in 0..c.count {
        let _ = writeln!(
            batch,
            "addr add {}/32 dev DEV",
            c.addr_map.addr(c.first_addr, i)
        );
    }
    let path = c.dir.join("addresses.batch");
    std::fs::write(&path, batch).with_context(|| format!("writing {}", path.display()))?;
    let cfg = c.dir.join("hub.toml");
    std::fs::write(&cfg, toml).with_context(|| format!("writing {}", cfg.display()))?;
    Ok(cfg)
}

/// Writes `data` to a new file of mode 0600 at `path` (replacing one).
fn write_secret(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        std::fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .with_context(|| format!("writing {}", path.display()))
}
