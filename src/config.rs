//! Hub and node configuration files (TOML): parsing, defaults, validation.
//!
//! Every error, whichever command reads the file (`rotor hub`, `rotor node`,
//! `rotor check`), is one [`ConfigError`] whose first line is
//! `FILE: KEY: PROBLEM` (`node[2].psk_file`, `hub.rotate_interval`), or
//! `FILE: PROBLEM` for the file as a whole; a TOML syntax error is
//! `FILE: line L, column C: PROBLEM` followed by the offending line and a
//! caret. Unknown keys are errors, so a typo never silently falls back to a
//! default. Each value is checked as it is deserialized (the types of
//! `values`), so a bad value is refused with its key before anything else runs;
//! relations between keys are checked after. Key files are read and checked
//! (0600) here, so a daemon that starts has every key it needs.
//!
//! The bounds are the `*_MS` and other `pub const`s below; `docs/configuration.md`
//! lists them with their reasons.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::keyfile::{KEY_LEN, read_key};
use rotor_xfrm::IpNet;

mod values;

pub use values::NAME_MAX;
use values::{
    BoundedDuration, BoundedInt, DurationError, FilePath, HostAddr, HubEndpoint, KeyBits, ModeName,
    Name, Subnet, fmt_ms, parse_ms,
};

/// Default UDP port of the control channel.
pub const DEFAULT_PORT: u16 = 4820;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Shortest `rotate_interval`: a rotation costs a key message, a hello and
/// two SA installs per node, and a period below a second would also fall
/// inside the hub's 200 ms crossing hold-off (`docs/protocol.md` §4).
pub const ROTATE_INTERVAL_MIN_MS: u64 = SECOND;
/// Longest `rotate_interval` (7 days): beyond a week a "rotating" key is
/// in effect a static one.
pub const ROTATE_INTERVAL_MAX_MS: u64 = 7 * DAY;
/// Shortest `grace`: replaced inbound SAs must outlive packets still in
/// flight under them (reordering, queues); below 100 ms they may not.
pub const GRACE_MIN_MS: u64 = 100;
/// Longest `grace` (1 hour): the SAs of every replaced generation stay in the
/// kernel this long.
pub const GRACE_MAX_MS: u64 = HOUR;
/// On the hub, `grace` may be at most this many rotation periods (of every
/// node), so at most this many replaced generations of a node wait for
/// deletion at once: with `latest` and `previous`, a node has at most 12
/// generations (24 SAs) installed after timer rotations, which keeps per-node
/// kernel state bounded (invariant I8).
pub const GRACE_PER_ROTATION_MAX: u32 = 10;
/// Smallest `init_skew` (60 s): a node retransmits one init request unchanged
/// for up to 30 s (`rotor_core::node::INIT_REFRESH_MS`) before it makes a
/// fresh one, so a smaller skew would refuse its own retransmissions; the
/// other 30 s absorb the difference between the two hosts' clocks.
pub const INIT_SKEW_MIN_MS: u64 = 60 * SECOND;
/// Largest `init_skew` (1 hour): a hub that restarted has forgotten the nodes'
/// last init timestamps, so an init captured on the wire can be replayed to it
/// for this long to reset that node's chain.
pub const INIT_SKEW_MAX_MS: u64 = HOUR;
/// Shortest `hello_interval`: hellos are the node's keepalive and carry the
/// SPI in use; faster than 10 per second they only cost the hub CPU.
pub const HELLO_INTERVAL_MIN_MS: u64 = 100;
/// Longest `hello_interval` (10 minutes): the hub learns that a node missed a
/// key only from its next hello, and a node notices a dead hub only after
/// `retries` of them.
pub const HELLO_INTERVAL_MAX_MS: u64 = 10 * MINUTE;
/// Largest `retries`: `retries` × `hello_interval` is how long a node keeps
/// talking to a hub that does not answer before it falls back to init.
pub const RETRIES_MAX: u32 = 100;
/// Largest `replay_window`: the kernel's maximum ESN replay window.
pub const REPLAY_WINDOW_MAX: u32 = 4096;
/// Most `[[node]]` entries of one hub: every peer needs its own reqid in
/// rotor's reqid range (`docs/xfrm-layer.md`, Ownership).
pub const NODES_MAX: usize = rotor_xfrm::DEFAULT_REQID_LEN as usize;

type RotateInterval = BoundedDuration<ROTATE_INTERVAL_MIN_MS, ROTATE_INTERVAL_MAX_MS>;
type Grace = BoundedDuration<GRACE_MIN_MS, GRACE_MAX_MS>;
type InitSkew = BoundedDuration<INIT_SKEW_MIN_MS, INIT_SKEW_MAX_MS>;
type HelloInterval = BoundedDuration<HELLO_INTERVAL_MIN_MS, HELLO_INTERVAL_MAX_MS>;
/// A UDP port; 0 would mean "any port" to the socket layer, never a hub's.
type Port = BoundedInt<u16, 1, { u16::MAX as u64 }>;
/// ESN needs a window of at least one packet.
type ReplayWindow = BoundedInt<u32, 1, { REPLAY_WINDOW_MAX as u64 }>;
/// At least 1: the IPv6 neighbour-discovery bypass policies go one step ahead
/// of rotor's, at `priority - 1` (`docs/operations.md`).
type Priority = BoundedInt<u32, 1, { u32::MAX as u64 }>;
type Retries = BoundedInt<u32, 1, { RETRIES_MAX as u64 }>;

/// A configuration error: the file, the key and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// Dotted key path (`hub.grace`, `node[2].name`), or empty for the file as
    /// a whole.
    pub key: String,
    /// What is wrong. One line, except for TOML syntax errors, which go on
    /// with the offending line and a caret.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses a duration written like `500ms`, `10s`, `5m`, `1h` or `2d`. Any
/// whole number of milliseconds that fits a `u64` is accepted (no bounds:
/// those belong to the config keys); a larger one is an error, never a
/// truncated value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match parse_ms(s) {
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(DurationError::Overflow) => Err(format!("{s:?} is too long (at most {} ms)", u64::MAX)),
        Err(DurationError::Unit) => Err(format!(
            "{s:?} has no known unit (write a number and one of ms, s, m, h, d, e.g. 10s)"
        )),
        Err(DurationError::Syntax) => Err(format!(
            "{s:?} is not a duration (write e.g. 500ms, 10s, 5m, 1h)"
        )),
    }
}

/// ESP mode of a peer, with the subnets tunnel mode protects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMode {
    /// Host-to-host between the two outer addresses.
    Transport,
    /// Subnet-to-subnet; traffic between every local and every remote subnet
    /// is protected.
    Tunnel {
        /// Subnets on this side.
        local: Vec<IpNet>,
        /// Subnets on the other side.
        remote: Vec<IpNet>,
    },
}

/// Settings of one node as the hub sees it.
#[derive(Debug)]
pub struct HubPeer {
    /// Unique name.
    pub name: String,
    /// Outer address of the node.
    pub address: IpAddr,
    /// Pre-shared init key.
    pub psk: Zeroizing<[u8; KEY_LEN]>,
    /// Mode and subnets (local = behind the hub).
    pub mode: PeerMode,
    /// Hub-driven rotation period for this node.
    pub rotate_interval: Duration,
}

/// A validated hub configuration.
#[derive(Debug)]
pub struct HubConfig {
    /// Outer address of the hub.
    pub address: IpAddr,
    /// UDP control port.
    pub port: u16,
    /// Default rotation period.
    pub rotate_interval: Duration,
    /// How long old inbound SAs linger after a rotation.
    pub grace: Duration,
    /// Local control socket.
    pub socket: PathBuf,
    /// AES key size of the ESP SAs (128 or 256).
    pub key_bits: u16,
    /// Inbound anti-replay window (packets).
    pub replay_window: u32,
    /// Priority of rotor's policies.
    pub priority: u32,
    /// How far an init timestamp may be from the hub's clock.
    pub init_skew: Duration,
    /// The nodes.
    pub nodes: Vec<HubPeer>,
}

/// A validated node configuration.
#[derive(Debug)]
pub struct NodeConfig {
    /// This node's name (as in the hub's config).
    pub name: String,
    /// Outer address of this node.
    pub address: IpAddr,
    /// The hub's control address.
    pub hub: SocketAddr,
    /// Pre-shared init key.
    pub psk: Zeroizing<[u8; KEY_LEN]>,
    /// Keepalive period.
    pub hello_interval: Duration,
    /// Unanswered hellos before falling back to init.
    pub retries: u32,
    /// How long old inbound SAs linger after a rotation.
    pub grace: Duration,
    /// Local control socket.
    pub socket: PathBuf,
    /// AES key size of the ESP SAs (128 or 256).
    pub key_bits: u16,
    /// Inbound anti-replay window (packets).
    pub replay_window: u32,
    /// Priority of rotor's policies.
    pub priority: u32,
    /// Mode and subnets (local = behind this node).
    pub mode: PeerMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HubFile {
    hub: HubSection,
    #[serde(default)]
    node: Vec<NodeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HubSection {
    address: HostAddr,
    port: Option<Port>,
    rotate_interval: Option<RotateInterval>,
    grace: Option<Grace>,
    socket: Option<FilePath>,
    key_bits: Option<KeyBits>,
    replay_window: Option<ReplayWindow>,
    priority: Option<Priority>,
    init_skew: Option<InitSkew>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: Name,
    address: HostAddr,
    psk_file: FilePath,
    mode: Option<ModeName>,
    local_subnets: Option<Vec<Subnet>>,
    remote_subnets: Option<Vec<Subnet>>,
    rotate_interval: Option<RotateInterval>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    node: NodeSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    name: Name,
    address: HostAddr,
    hub: HubEndpoint,
    psk_file: FilePath,
    hello_interval: Option<HelloInterval>,
    retries: Option<Retries>,
    grace: Option<Grace>,
    socket: Option<FilePath>,
    key_bits: Option<KeyBits>,
    replay_window: Option<ReplayWindow>,
    priority: Option<Priority>,
    mode: Option<ModeName>,
    local_subnets: Option<Vec<Subnet>>,
    remote_subnets: Option<Vec<Subnet>>,
}

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn psk(&self, key: &str, path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, ConfigError> {
        let path = if path.is_relative() {
            self.file.parent().unwrap_or(Path::new(".")).join(path)
        } else {
            path.to_path_buf()
        };
        read_key(&path).map_err(|e| self.err(key, e.to_string()))
    }

    fn mode(
        &self,
        prefix: &str,
        mode: Option<ModeName>,
        local: Option<&[Subnet]>,
        remote: Option<&[Subnet]>,
        outer: IpAddr,
    ) -> Result<PeerMode, ConfigError> {
        let nets = |key: &str, v: Option<&[Subnet]>| -> Result<Vec<IpNet>, ConfigError> {
            let key = format!("{prefix}.{key}");
            let v = v.ok_or_else(|| self.err(&key, "tunnel mode needs this list of subnets"))?;
            if v.is_empty() {
                return Err(self.err(&key, "must name at least one subnet"));
            }
            v.iter()
                .map(|&Subnet(n)| {
                    if n.addr.is_ipv4() != outer.is_ipv4() {
                        return Err(self.err(&key, format!("{n} is not of the same address family as the outer addresses (mixed-family tunnels are not supported yet)")));
                    }
                    Ok(n)
                })
                .collect()
        };
        match mode.unwrap_or(ModeName::Transport) {
            ModeName::Transport => {
                for (k, v) in [("local_subnets", local), ("remote_subnets", remote)] {
                    if v.is_some() {
                        return Err(
                            self.err(format!("{prefix}.{k}"), "only valid with mode = \"tunnel\"")
                        );
                    }
                }
                Ok(PeerMode::Transport)
            }
            ModeName::Tunnel => Ok(PeerMode::Tunnel {
                local: nets("local_subnets", local)?,
                remote: nets("remote_subnets", remote)?,
            }),
        }
    }
}

/// Which daemon a configuration file is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The file has a `[hub]` table.
    Hub,
    /// The file has a `[node]` table and no `[hub]`.
    Node,
}

/// A configuration file read and parsed as TOML, not yet validated.
#[derive(Debug)]
pub struct ConfigFile {
    file: PathBuf,
    table: toml::Table,
}

impl ConfigFile {
    /// Reads and parses `file`. A file that cannot be read, or is not TOML, is
    /// an error in the one format of this module (see the module docs).
    pub fn read(file: &Path) -> Result<ConfigFile, ConfigError> {
        let whole = |problem: String| ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            problem,
        };
        let text = std::fs::read_to_string(file).map_err(|e| whole(format!("cannot read: {e}")))?;
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| whole(syntax_problem(&text, &e)))?;
        Ok(ConfigFile {
            file: file.to_path_buf(),
            table,
        })
    }

    /// The role the file's top-level table names: `[hub]` wins over `[node]`
    /// (a hub's file has `[[node]]` entries too).
    pub fn role(&self) -> Result<Role, ConfigError> {
        match (
            self.table.contains_key("hub"),
            self.table.contains_key("node"),
        ) {
            (true, _) => Ok(Role::Hub),
            (false, true) => Ok(Role::Node),
            _ => Err(self.whole("neither a [hub] nor a [node] table: not a rotor config")),
        }
    }

    fn whole(&self, problem: &str) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: String::new(),
            problem: problem.to_string(),
        }
    }

    /// Deserializes the table, every value checked by its type; an error
    /// names the key it was found under.
    fn typed<T: for<'de> Deserialize<'de>>(self) -> Result<T, ConfigError> {
        let file = self.file;
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(toml::Value::Table(self.table), &mut track);
        T::deserialize(de).map_err(|e| {
            let path = track.path().to_string();
            ConfigError {
                file,
                // The root's path prints as ".": an error of the file as a whole.
                key: if path == "." { String::new() } else { path },
                problem: e.message().trim_end().replace('\n', "; "),
            }
        })
    }

    /// Validates the file as a hub configuration, reading every node's key
    /// file. On success every bound of this module holds.
    pub fn into_hub(self) -> Result<HubConfig, ConfigError> {
        if self.role()? != Role::Hub {
            return Err(self.whole(
                "no [hub] table (a [node] table: this is a node's config, run `rotor node`)",
            ));
        }
        let file = self.file.clone();
        let raw: HubFile = self.typed()?;
        hub_config(&file, raw)
    }

    /// Validates the file as a node configuration, reading its key file. On
    /// success every bound of this module holds.
    pub fn into_node(self) -> Result<NodeConfig, ConfigError> {
        if self.role()? != Role::Node {
            return Err(self
                .whole("a [hub] table: this is the hub's config (run `rotor hub`), not a node's"));
        }
        let file = self.file.clone();
        let raw: NodeFile = self.typed()?;
        node_config(&file, raw)
    }
}

/// A TOML syntax error as `line L, column C: MESSAGE`, then the line and a
/// caret under the column (the shape every command prints).
fn syntax_problem(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().replace('\n', "; ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or("");
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or("");
    let column = text
        .get(line_start..start)
        .map_or(1, |s| s.chars().count() + 1);
    let gutter = " ".repeat(line_no.to_string().len());
    format!(
        "line {line_no}, column {column}: {message}\n{gutter} |\n{line_no} | {line}\n{gutter} | {}^",
        " ".repeat(column - 1)
    )
}

/// Reads and validates a hub configuration, including every node's key file.
pub fn load_hub(file: &Path) -> Result<HubConfig, ConfigError> {
    ConfigFile::read(file)?.into_hub()
}

/// Reads and validates a node configuration, including its key file.
pub fn load_node(file: &Path) -> Result<NodeConfig, ConfigError> {
    ConfigFile::read(file)?.into_node()
}

fn hub_config(file: &Path, raw: HubFile) -> Result<HubConfig, ConfigError> {
    let cx = Ctx { file };
    let h = raw.hub;
    let address = h.address.0;
    let rotate_interval = h.rotate_interval.map_or(Duration::from_secs(60), |d| d.0);
    let grace = h.grace.map_or(Duration::from_secs(5), |d| d.0);
    if raw.node.is_empty() {
        return Err(cx.err("node", "no [[node]] entries: the hub has nobody to serve"));
    }
    if raw.node.len() > NODES_MAX {
        return Err(cx.err(
            "node",
            format!(
                "{} entries; a hub serves at most {NODES_MAX} nodes (one reqid each)",
                raw.node.len()
            ),
        ));
    }
    // The key to blame is the one the operator wrote: the period if set,
    // else the grace.
    let default_key = if h.rotate_interval.is_some() {
        "hub.rotate_interval"
    } else {
        "hub.grace"
    };
    check_grace(&cx, default_key, rotate_interval, grace)?;
    let mut names = HashSet::with_capacity(raw.node.len());
    let mut addrs = HashSet::with_capacity(raw.node.len());
    // Init keys by a keyed hash, so the map holds no copy of a key; equal
    // hashes are confirmed by comparing the keys themselves.
    let psk_hasher = RandomState::new();
    let mut psks: HashMap<u64, Vec<usize>> = HashMap::with_capacity(raw.node.len());
    let mut nodes: Vec<HubPeer> = Vec::with_capacity(raw.node.len());
    for (i, n) in raw.node.into_iter().enumerate() {
        let p = format!("node[{i}]");
        let name = n.name.0;
        if !names.insert(name.clone()) {
            return Err(cx.err(
                format!("{p}.name"),
                format!("{name:?} is used by an earlier node"),
            ));
        }
        let a = n.address.0;
        if a.is_ipv4() != address.is_ipv4() {
            return Err(cx.err(
                format!("{p}.address"),
                "must be of the same address family as hub.address",
            ));
        }
        if a == address {
            return Err(cx.err(
                format!("{p}.address"),
                format!("{a} is hub.address; a node needs an address of its own"),
            ));
        }
        if !addrs.insert(a) {
            return Err(cx.err(
                format!("{p}.address"),
                format!("{a} is used by an earlier node"),
            ));
        }
        let rotate = match n.rotate_interval {
            Some(d) => {
                check_grace(&cx, &format!("{p}.rotate_interval"), d.0, grace)?;
                d.0
            }
            None => rotate_interval,
        };
        let psk = cx.psk(&format!("{p}.psk_file"), &n.psk_file.0)?;
        let same = psks.entry(psk_hasher.hash_one(&psk[..])).or_default();
        if let Some(&j) = same.iter().find(|&&j| nodes[j].psk[..] == psk[..]) {
            return Err(cx.err(
                format!("{p}.psk_file"),
                format!(
                    "holds the same init key as node[{j}] ({:?}); every node needs its own (rotor genkey)",
                    nodes[j].name
                ),
            ));
        }
        same.push(i);
        let mode = cx.mode(
            &p,
            n.mode,
            n.local_subnets.as_deref(),
            n.remote_subnets.as_deref(),
            address,
        )?;
        nodes.push(HubPeer {
            name,
            address: a,
            psk,
            mode,
            rotate_interval: rotate,
        });
    }
    Ok(HubConfig {
        address,
        port: h.port.map_or(DEFAULT_PORT, |p| p.0),
        rotate_interval,
        grace,
        socket: h
            .socket
            .map_or_else(|| PathBuf::from("/run/rotor/hub.sock"), |p| p.0),
        key_bits: h.key_bits.map_or(256, |b| b.0),
        replay_window: h.replay_window.map_or(1024, |w| w.0),
        priority: h.priority.map_or(1000, |p| p.0),
        init_skew: h.init_skew.map_or(Duration::from_secs(120), |d| d.0),
        nodes,
    })
}

/// Checks `grace` <= [`GRACE_PER_ROTATION_MAX`] × `rotate`; the error names
/// `key`, the setting the operator wrote that breaks the relation.
fn check_grace(
    cx: &Ctx<'_>,
    key: &str,
    rotate: Duration,
    grace: Duration,
) -> Result<(), ConfigError> {
    if grace > rotate.saturating_mul(GRACE_PER_ROTATION_MAX) {
        let ms = |d: Duration| fmt_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        return Err(cx.err(
            key,
            format!(
                "grace {} is more than {GRACE_PER_ROTATION_MAX} x rotate_interval {}: a node could have more than {} generations installed at once; shorten hub.grace or lengthen the rotation period",
                ms(grace),
                ms(rotate),
                GRACE_PER_ROTATION_MAX + 2
            ),
        ));
    }
    Ok(())
}

fn node_config(file: &Path, raw: NodeFile) -> Result<NodeConfig, ConfigError> {
    let cx = Ctx { file };
    let n = raw.node;
    let address = n.address.0;
    let hub = n.hub.0;
    if hub.is_ipv4() != address.is_ipv4() {
        return Err(cx.err(
            "node.hub",
            "must be of the same address family as node.address",
        ));
    }
    if hub.ip() == address {
        return Err(cx.err(
            "node.hub",
            format!("{} is node.address; the hub is another host", hub.ip()),
        ));
    }
    let name = n.name.0;
    let psk = cx.psk("node.psk_file", &n.psk_file.0)?;
    let mode = cx.mode(
        "node",
        n.mode,
        n.local_subnets.as_deref(),
        n.remote_subnets.as_deref(),
        address,
    )?;
    Ok(NodeConfig {
        socket: n
            .socket
            .map_or_else(|| PathBuf::from(format!("/run/rotor/{name}.sock")), |p| p.0),
        name,
        address,
        hub,
        psk,
        hello_interval: n.hello_interval.map_or(Duration::from_secs(1), |d| d.0),
        retries: n.retries.map_or(3, |r| r.0),
        grace: n.grace.map_or(Duration::from_secs(5), |d| d.0),
        key_bits: n.key_bits.map_or(256, |b| b.0),
        replay_window: n.replay_window.map_or(1024, |w| w.0),
        priority: n.priority.map_or(1000, |p| p.0),
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyfile::write_key;
    use std::fs;

    fn setup(hub_toml: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        write_key(&dir.path().join("mn1.key"), &[1; 32]).unwrap();
        write_key(&dir.path().join("mn2.key"), &[2; 32]).unwrap();
        let f = dir.path().join("hub.toml");
        fs::write(&f, hub_toml).unwrap();
        (dir, f)
    }

    const MINIMAL: &str = r#"
[hub]
address = "10.9.0.1"
port = 4820
rotate_interval = "60s"
socket = "/run/rotor/hub.sock"

[[node]]
name = "mn1"
address = "10.9.0.2"
psk_file = "mn1.key"
mode = "transport"
"#;

    #[test]
    fn minimal_hub_config_from_the_design_loads_with_defaults() {
        let (_d, f) = setup(MINIMAL);
        let c = load_hub(&f).unwrap();
        assert_eq!(c.port, 4820);
        assert_eq!(c.rotate_interval, Duration::from_secs(60));
        assert_eq!(c.grace, Duration::from_secs(5));
        assert_eq!(c.key_bits, 256);
        assert_eq!(c.replay_window, 1024);
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.nodes[0].mode, PeerMode::Transport);
        assert_eq!(*c.nodes[0].psk, [1; 32]);
    }

    fn err_of(toml: &str) -> String {
        let (_d, f) = setup(toml);
        load_hub(&f).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = err_of(&MINIMAL.replace("\"60s\"", "\"60 parsecs\""));
        assert!(
            e.contains("hub.toml: hub.rotate_interval: \"60 parsecs\" has no known unit"),
            "{e}"
        );
        let e = err_of(&MINIMAL.replace("\"10.9.0.2\"", "\"10.9.0.256\""));
        assert!(
            e.contains("node[0].address: \"10.9.0.256\" is not an IPv4"),
            "{e}"
        );
        let e = err_of(&MINIMAL.replace("mode = \"transport\"", "mode = \"tunnel\""));
        assert!(
            e.contains("node[0].local_subnets: tunnel mode needs"),
            "{e}"
        );
        let e = err_of(&MINIMAL.replace("port = 4820", "prot = 4820"));
        assert!(e.contains("unknown field `prot`"), "{e}");
        let e = err_of(&MINIMAL.replace("mn1.key", "missing.key"));
        assert!(
            e.contains("node[0].psk_file:") && e.contains("missing.key: cannot read"),
            "{e}"
        );
        let dup = format!(
            "{MINIMAL}\n[[node]]\nname = \"mn1\"\naddress = \"10.9.0.3\"\npsk_file = \"mn2.key\"\n"
        );
        let e = err_of(&dup);
        assert!(
            e.contains("node[1].name: \"mn1\" is used by an earlier node"),
            "{e}"
        );
    }

    #[test]
    fn world_readable_key_is_refused_at_load() {
        use std::os::unix::fs::PermissionsExt;
        let (d, f) = setup(MINIMAL);
        fs::set_permissions(d.path().join("mn1.key"), fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_hub(&f).unwrap_err().to_string();
        assert!(
            e.contains("node[0].psk_file") && e.contains("chmod 600"),
            "{e}"
        );
    }

    #[test]
    fn tunnel_mode_parses_subnets() {
        let t = MINIMAL.replace(
            "mode = \"transport\"",
            "mode = \"tunnel\"\nlocal_subnets = [\"10.1.0.0/24\"]\nremote_subnets = [\"10.2.0.0/24\", \"10.3.0.0/16\"]",
        );
        let (_d, f) = setup(&t);
        let c = load_hub(&f).unwrap();
        match &c.nodes[0].mode {
            PeerMode::Tunnel { local, remote } => {
                assert_eq!(local.len(), 1);
                assert_eq!(remote.len(), 2);
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn node_config_from_the_design_loads() {
        let dir = tempfile::tempdir().unwrap();
        write_key(&dir.path().join("mn1.key"), &[1; 32]).unwrap();
        let f = dir.path().join("mn1.toml");
        fs::write(
            &f,
            r#"
[node]
name = "mn1"
address = "10.9.0.2"
hub = "10.9.0.1:4820"
psk_file = "mn1.key"
hello_interval = "1s"
socket = "/run/rotor/mn1.sock"
mode = "transport"
"#,
        )
        .unwrap();
        let c = load_node(&f).unwrap();
        assert_eq!(c.hub, "10.9.0.1:4820".parse().unwrap());
        assert_eq!(c.hello_interval, Duration::from_secs(1));
        assert_eq!(c.retries, 3);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }
}
