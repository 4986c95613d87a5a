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

use crate::guard::GuardBackend;
use crate::keyfile::{KEY_LEN, KeyReader};
use crate::state::StateConfig;
use crate::state::etcd::ClusterKey;
use rotor_xfrm::IpNet;

mod node_tables;
mod values;

pub use values::NAME_MAX;
use values::{
    BoundedDuration, BoundedInt, DurationError, FilePath, HostAddr, HubEndpoint, IfName, KeyBits,
    MetricsListen, ModeName, Name, StateUrl, Subnet, fmt_ms, parse_ms,
};

/// Default UDP port of the control channel.
pub const DEFAULT_PORT: u16 = 4820;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Shortest `rotate_interval`: every rotation costs a key message, a hello
/// and two SA installs per node; a second keeps that well clear of the hub's
/// 200 ms crossing hold-off (`docs/protocol.md` §4), within which a hello
/// under the old key is taken for one that crossed the new key.
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

/// Shortest `sa_lifetime`: a hard lifetime below this would expire keys
/// faster than any rotation can replace them.
pub const SA_LIFETIME_MIN_MS: u64 = 10 * SECOND;
/// Longest `sa_lifetime` (30 days).
pub const SA_LIFETIME_MAX_MS: u64 = 30 * DAY;

type SaLifetime = BoundedDuration<SA_LIFETIME_MIN_MS, SA_LIFETIME_MAX_MS>;
type RotateInterval = BoundedDuration<ROTATE_INTERVAL_MIN_MS, ROTATE_INTERVAL_MAX_MS>;
type Grace = BoundedDuration<GRACE_MIN_MS, GRACE_MAX_MS>;
type InitSkew = BoundedDuration<INIT_SKEW_MIN_MS, INIT_SKEW_MAX_MS>;
/// 0 to 10 s (`rotor_core::config::MAX_RATCHET_EPOCH_MS`): how long the hub
/// uses one X25519 key pair for the ratchet of its rotations.
type RatchetEpoch = BoundedDuration<0, { rotor_core::config::MAX_RATCHET_EPOCH_MS }>;
/// 1 (every rotation) to 16 rotations per X25519 ratchet step.
type RatchetEvery = BoundedInt<u32, 1, { rotor_core::config::MAX_RATCHET_EVERY as u64 }>;
/// 2 to 60 s: the leader lease of a hub whose state is in etcd (whole
/// seconds count: etcd grants leases in seconds).
type LeaseTtl = BoundedDuration<2_000, 60_000>;
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

/// A pre-shared init key as read from its key file. Zeroized on drop;
/// `Debug` shows only a 4-byte fingerprint, so a configuration printed for
/// debugging never carries a key.
pub struct InitKey(Zeroizing<[u8; KEY_LEN]>);

impl std::ops::Deref for InitKey {
    type Target = [u8; KEY_LEN];

    fn deref(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl From<Zeroizing<[u8; KEY_LEN]>> for InitKey {
    fn from(key: Zeroizing<[u8; KEY_LEN]>) -> InitKey {
        InitKey(key)
    }
}

impl fmt::Debug for InitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "InitKey(fp={})",
            rotor_core::secret::fingerprint(&self.0[..])
        )
    }
}

/// Settings of one node as the hub sees it.
#[derive(Debug)]
pub struct HubPeer {
    /// Unique name.
    pub name: String,
    /// Outer address of the node, if configured: it is then the only
    /// address the node may be reached at (its port may still change
    /// behind a NAT). `None`: learned from the node's authenticated
    /// messages, and followed when it moves.
    pub address: Option<IpAddr>,
    /// Pre-shared init key.
    pub psk: InitKey,
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
    /// Directory of the durable state (and its lock).
    pub state_dir: PathBuf,
    /// Where the records live: [`StateConfig::Dir`] of `state_dir` unless
    /// `state = "etcd://..."` names etcd.
    pub state: StateConfig,
    /// Hard kernel lifetime of every SA (`None`: the role's default).
    pub sa_lifetime: Option<Duration>,
    /// AES key size of the ESP SAs (128 or 256).
    pub key_bits: u16,
    /// Inbound anti-replay window (packets).
    pub replay_window: u32,
    /// Priority of rotor's policies.
    pub priority: u32,
    /// How far an init timestamp may be from the hub's clock.
    pub init_skew: Duration,
    /// How long one X25519 key pair of the hub serves the ratchet of its
    /// rotations (0: one per rotation).
    pub ratchet_epoch: Duration,
    /// Every how many rotations of a node is an X25519 ratchet step.
    pub ratchet_every: u32,
    /// Where Prometheus metrics are served (`None`: not at all).
    pub metrics: Option<SocketAddr>,
    /// Whether the metrics carry one series per node too.
    pub metrics_per_node: bool,
    /// The tools of the clear-text guard, or off ([`crate::guard`]).
    pub guard: GuardBackend,
    /// The TTL of the leader lease (etcd state only).
    pub lease_ttl: Duration,
    /// The address that moves with the active hub of a failover pair
    /// (`None`: this hub holds `address` itself).
    pub service: Option<ServiceAddress>,
    /// The nodes.
    pub nodes: Vec<HubPeer>,
}

/// `hub.service_address` on `hub.service_interface`: added by the hub that
/// leads, removed by one that steps down. Its address is `hub.address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAddress {
    /// The address and its prefix on the link.
    pub net: IpNet,
    /// The interface it goes on.
    pub interface: String,
}

/// A validated node configuration.
#[derive(Debug)]
pub struct NodeConfig {
    /// This node's name (as in the hub's config).
    pub name: String,
    /// Outer address of this node, if configured: the node then binds to
    /// it and stays there. `None`: the node sends from whatever address
    /// its route to the hub gives, and follows it when it changes
    /// (roaming).
    pub address: Option<IpAddr>,
    /// The hub's control address (resolved at start when the file gives a
    /// name).
    pub hub: SocketAddr,
    /// The hub's DNS name, when the file gives one instead of an address:
    /// resolved again whenever the hub stops answering.
    pub hub_name: Option<String>,
    /// Pre-shared init key.
    pub psk: InitKey,
    /// Keepalive period.
    pub hello_interval: Duration,
    /// Unanswered hellos before falling back to init.
    pub retries: u32,
    /// How long old inbound SAs linger after a rotation.
    pub grace: Duration,
    /// Local control socket.
    pub socket: PathBuf,
    /// Directory of the durable state (and its lock).
    pub state_dir: PathBuf,
    /// Hard kernel lifetime of every SA (`None`: the role's default).
    pub sa_lifetime: Option<Duration>,
    /// AES key size of the ESP SAs (128 or 256).
    pub key_bits: u16,
    /// Inbound anti-replay window (packets).
    pub replay_window: u32,
    /// Priority of rotor's policies.
    pub priority: u32,
    /// Mode and subnets (local = behind this node).
    pub mode: PeerMode,
    /// Where Prometheus metrics are served (`None`: not at all).
    pub metrics: Option<SocketAddr>,
    /// The tools of the clear-text guard, or off ([`crate::guard`]).
    pub guard: GuardBackend,
}

/// Where the daemons keep their durable state unless `state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rotor";

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
    state_dir: Option<FilePath>,
    state: Option<StateUrl>,
    state_key_file: Option<FilePath>,
    sa_lifetime: Option<SaLifetime>,
    key_bits: Option<KeyBits>,
    replay_window: Option<ReplayWindow>,
    priority: Option<Priority>,
    init_skew: Option<InitSkew>,
    ratchet_epoch: Option<RatchetEpoch>,
    ratchet_every: Option<RatchetEvery>,
    metrics: Option<MetricsListen>,
    metrics_per_node: Option<bool>,
    guard: Option<GuardBackend>,
    keys_file: Option<FilePath>,
    service_address: Option<Subnet>,
    service_interface: Option<IfName>,
    lease_ttl: Option<LeaseTtl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: Name,
    address: Option<HostAddr>,
    psk_file: Option<FilePath>,
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
    address: Option<HostAddr>,
    hub: HubEndpoint,
    psk_file: FilePath,
    hello_interval: Option<HelloInterval>,
    retries: Option<Retries>,
    grace: Option<Grace>,
    socket: Option<FilePath>,
    state_dir: Option<FilePath>,
    sa_lifetime: Option<SaLifetime>,
    key_bits: Option<KeyBits>,
    replay_window: Option<ReplayWindow>,
    priority: Option<Priority>,
    mode: Option<ModeName>,
    local_subnets: Option<Vec<Subnet>>,
    remote_subnets: Option<Vec<Subnet>>,
    metrics: Option<MetricsListen>,
    guard: Option<GuardBackend>,
}

struct Ctx<'a> {
    file: &'a Path,
    keys: std::cell::RefCell<KeyReader>,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// `path` as written, relative to the configuration file's directory.
    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_relative() {
            self.file.parent().unwrap_or(Path::new(".")).join(path)
        } else {
            path.to_path_buf()
        }
    }

    fn psk(&self, key: &str, path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, ConfigError> {
        self.keys
            .borrow_mut()
            .read(&self.resolve(path))
            .map_err(|e| self.err(key, e.to_string()))
    }

    fn keys_file(&self, key: &str, path: &Path) -> Result<crate::keyfile::Keys, ConfigError> {
        self.keys
            .borrow_mut()
            .read_keys(&self.resolve(path))
            .map_err(|e| self.err(key, e.to_string()))
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
    /// The whole document, or only its head when `nodes` holds the
    /// `[[node]]` tables (see `node_tables`).
    table: toml::Table,
    nodes: Option<Vec<NodeEntry>>,
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
        if let Some((table, nodes)) = node_tables::parse(&text) {
            return Ok(ConfigFile {
                file: file.to_path_buf(),
                table,
                nodes: Some(nodes),
            });
        }
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| whole(syntax_problem(&text, &e)))?;
        Ok(ConfigFile {
            file: file.to_path_buf(),
            table,
            nodes: None,
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
    fn typed<T: for<'de> Deserialize<'de>>(
        file: PathBuf,
        table: toml::Table,
    ) -> Result<T, ConfigError> {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(toml::Value::Table(table), &mut track);
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
        let mut raw: HubFile = Self::typed(self.file, self.table)?;
        if let Some(nodes) = self.nodes {
            raw.node = nodes;
        }
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
        let raw: NodeFile = Self::typed(self.file, self.table)?;
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
    let cx = Ctx {
        file,
        keys: Default::default(),
    };
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
    // One file for many nodes' keys: at 100,000 nodes, one file per key
    // costs most of a start (four system calls each).
    let mut keys = match &h.keys_file {
        Some(f) => Some(cx.keys_file("hub.keys_file", &f.0)?),
        None => None,
    };
    for (i, n) in raw.node.into_iter().enumerate() {
        let p = format!("node[{i}]");
        let name = n.name.0;
        if !names.insert(name.clone()) {
            return Err(cx.err(
                format!("{p}.name"),
                format!("{name:?} is used by an earlier node"),
            ));
        }
        let a = n.address.map(|a| a.0);
        if let Some(a) = a {
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
            // Tunnel nodes behind one NAT share its address; transport
            // selectors are the addresses themselves, so two transport
            // nodes at one address would share one policy.
            if !addrs.insert(a) && n.mode != Some(ModeName::Tunnel) {
                return Err(cx.err(
                    format!("{p}.address"),
                    format!("{a} is used by an earlier node (only tunnel-mode nodes, behind one NAT, may share an address)"),
                ));
            }
        }
        let rotate = match n.rotate_interval {
            Some(d) => {
                check_grace(&cx, &format!("{p}.rotate_interval"), d.0, grace)?;
                d.0
            }
            None => rotate_interval,
        };
        let psk = match (&n.psk_file, keys.as_mut()) {
            (Some(f), _) => cx.psk(&format!("{p}.psk_file"), &f.0)?,
            (None, Some(k)) => k.remove(&name).ok_or_else(|| {
                cx.err(
                    format!("{p}.psk_file"),
                    format!(
                        "missing, and hub.keys_file has no line for {name:?}: give the node a psk_file or add it there"
                    ),
                )
            })?,
            (None, None) => {
                return Err(cx.err(
                    format!("{p}.psk_file"),
                    "missing: every node needs an init key, in its psk_file or in hub.keys_file",
                ));
            }
        };
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
            psk: InitKey(psk),
            mode,
            rotate_interval: rotate,
        });
    }
    check_overlaps(&cx, &nodes)?;
    // An SA is in use for up to two rotations and the grace period: a
    // shorter hard lifetime would expire keys in normal operation.
    let sa_lifetime = h.sa_lifetime.map(|d| d.0);
    if let Some(l) = sa_lifetime {
        let longest = nodes
            .iter()
            .map(|n| n.rotate_interval)
            .max()
            .unwrap_or(rotate_interval);
        let need = longest.saturating_mul(2) + grace;
        if l <= need {
            return Err(cx.err(
                "hub.sa_lifetime",
                format!(
                    "{l:?} is not more than 2 x the longest rotate_interval + grace ({need:?}): keys would expire while in use"
                ),
            ));
        }
    }
    let state_dir_given = h.state_dir.is_some();
    let state_dir = h
        .state_dir
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |p| p.0);
    let state = hub_state(&cx, h.state, h.state_key_file, state_dir_given, &state_dir)?;
    let service = service_address(&cx, h.service_address, h.service_interface, &state, address)?;
    Ok(HubConfig {
        address,
        port: h.port.map_or(DEFAULT_PORT, |p| p.0),
        rotate_interval,
        grace,
        socket: h
            .socket
            .map_or_else(|| PathBuf::from("/run/rotor/hub.sock"), |p| p.0),
        state_dir,
        state,
        sa_lifetime,
        key_bits: h.key_bits.map_or(256, |b| b.0),
        replay_window: h.replay_window.map_or(1024, |w| w.0),
        priority: h.priority.map_or(1000, |p| p.0),
        init_skew: h.init_skew.map_or(Duration::from_secs(120), |d| d.0),
        ratchet_epoch: h.ratchet_epoch.map_or(
            Duration::from_millis(rotor_core::config::DEFAULT_RATCHET_EPOCH_MS),
            |d| d.0,
        ),
        ratchet_every: h
            .ratchet_every
            .map_or(rotor_core::config::DEFAULT_RATCHET_EVERY, |n| n.0),
        metrics: h.metrics.map(|m| m.0),
        metrics_per_node: h.metrics_per_node.unwrap_or(false),
        guard: h.guard.unwrap_or(GuardBackend::Iptables),
        service,
        lease_ttl: h
            .lease_ttl
            .map_or(crate::state::etcd::lead::DEFAULT_TTL, |d| d.0),
        nodes,
    })
}

/// `hub.service_address` and `hub.service_interface`: both or neither,
/// only with an etcd state (one leader among hubs), and the address is
/// `hub.address` (what the nodes and the SAs use).
fn service_address(
    cx: &Ctx<'_>,
    net: Option<Subnet>,
    interface: Option<IfName>,
    state: &StateConfig,
    address: IpAddr,
) -> Result<Option<ServiceAddress>, ConfigError> {
    match (net, interface) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(cx.err(
            "hub.service_interface",
            "needed with service_address: the interface the address goes on".to_string(),
        )),
        (None, Some(_)) => Err(cx.err(
            "hub.service_address",
            "needed with service_interface: ADDRESS/PREFIX".to_string(),
        )),
        (Some(_), Some(_)) if !matches!(state, StateConfig::Etcd { .. }) => Err(cx.err(
            "hub.service_address",
            "only used with state = \"etcd://...\" (hubs that elect a leader)".to_string(),
        )),
        (Some(Subnet(net)), Some(_)) if net.addr != address => Err(cx.err(
            "hub.service_address",
            format!(
                "{} is not hub.address ({address}): nodes reach the hub at the service address",
                net.addr
            ),
        )),
        (Some(Subnet(net)), Some(IfName(interface))) => Ok(Some(ServiceAddress { net, interface })),
    }
}

/// `hub.state` and `hub.state_key_file`: both or neither; with an etcd
/// state, no `state_dir` (it would be silently unused).
fn hub_state(
    cx: &Ctx<'_>,
    url: Option<StateUrl>,
    key_file: Option<FilePath>,
    state_dir_given: bool,
    state_dir: &Path,
) -> Result<StateConfig, ConfigError> {
    const ETCD: &str = "state = \"etcd://...\"";
    match (url, key_file) {
        (None, None) => Ok(StateConfig::Dir(state_dir.to_path_buf())),
        (None, Some(_)) => Err(cx.err("hub.state_key_file", format!("only used with {ETCD}"))),
        (Some(_), None) => Err(cx.err(
            "hub.state_key_file",
            format!("needed with {ETCD}: the file of the cluster key the records are sealed with (rotor genkey; the same on every hub of the cluster)"),
        )),
        (Some(_), Some(_)) if state_dir_given => Err(cx.err(
            "hub.state_dir",
            format!("not used with {ETCD}; remove one of them"),
        )),
        (Some(StateUrl(target)), Some(FilePath(file))) => {
            let key = cx.psk("hub.state_key_file", &file)?;
            Ok(StateConfig::Etcd {
                target,
                key_file: cx.resolve(&file),
                key: ClusterKey::new(key),
            })
        }
    }
}

/// No two tunnel-mode nodes may claim overlapping remote subnets: traffic
/// to the overlap would follow whichever of their policies the kernel found
/// first, i.e. go to the wrong node. Sorted by start, so a 100,000-node
/// configuration costs one sort, not a comparison of every pair.
fn check_overlaps(cx: &Ctx<'_>, nodes: &[HubPeer]) -> Result<(), ConfigError> {
    fn range(n: &IpNet) -> (bool, u128, u128) {
        let (v6, bits, width) = match n.addr {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32u32),
            IpAddr::V6(a) => (true, u128::from(a), 128u32),
        };
        let host = width.saturating_sub(u32::from(n.prefix));
        let mask = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        (v6, bits & !mask, (bits & !mask) | mask)
    }
    let mut ranges: Vec<(bool, u128, u128, usize, IpNet)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if let PeerMode::Tunnel { remote, .. } = &n.mode {
            for net in remote {
                let (v6, lo, hi) = range(net);
                ranges.push((v6, lo, hi, i, *net));
            }
        }
    }
    ranges.sort_unstable_by_key(|r| (r.0, r.1, r.2));
    // The widest range seen so far in the family: a later start inside it
    // overlaps (a /8 followed by two /24s inside it catches both).
    let mut widest: Option<(bool, u128, usize, IpNet)> = None;
    for &(v6, lo, hi, i, net) in &ranges {
        if let Some((wv6, whi, j, wnet)) = widest
            && wv6 == v6
            && lo <= whi
            && i != j
        {
            let (first, second, a, b) = if j < i {
                (j, i, wnet, net)
            } else {
                (i, j, net, wnet)
            };
            return Err(cx.err(
                format!("node[{second}].remote_subnets"),
                format!(
                    "{b} overlaps {a} of node[{first}] ({:?}): traffic to the overlap would go to either node; give each node its own subnets",
                    nodes[first].name
                ),
            ));
        }
        if widest.is_none_or(|(wv6, whi, _, _)| wv6 != v6 || hi > whi) {
            widest = Some((v6, hi, i, net));
        }
    }
    Ok(())
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
    let cx = Ctx {
        file,
        keys: Default::default(),
    };
    let n = raw.node;
    let address = n.address.map(|a| a.0);
    let (hub, hub_name) = match n.hub {
        HubEndpoint::Addr(sa) => (sa, None),
        HubEndpoint::Name(host, port) => {
            let hub = crate::resolve::resolve(&host, port, address.map(|a| a.is_ipv4()))
                .map_err(|e| cx.err("node.hub", e))?;
            (hub, Some(host))
        }
    };
    if let Some(address) = address {
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
    }
    let name = n.name.0;
    let psk = cx.psk("node.psk_file", &n.psk_file.0)?;
    let mode = cx.mode(
        "node",
        n.mode,
        n.local_subnets.as_deref(),
        n.remote_subnets.as_deref(),
        address.unwrap_or(hub.ip()),
    )?;
    Ok(NodeConfig {
        socket: n
            .socket
            .map_or_else(|| PathBuf::from(format!("/run/rotor/{name}.sock")), |p| p.0),
        state_dir: n
            .state_dir
            .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |p| p.0),
        sa_lifetime: n.sa_lifetime.map(|d| d.0),
        name,
        address,
        hub,
        hub_name,
        psk: InitKey(psk),
        hello_interval: n.hello_interval.map_or(Duration::from_secs(1), |d| d.0),
        retries: n.retries.map_or(3, |r| r.0),
        grace: n.grace.map_or(Duration::from_secs(5), |d| d.0),
        key_bits: n.key_bits.map_or(256, |b| b.0),
        replay_window: n.replay_window.map_or(1024, |w| w.0),
        priority: n.priority.map_or(1000, |p| p.0),
        mode,
        metrics: n.metrics.map(|m| m.0),
        guard: n.guard.unwrap_or(GuardBackend::Iptables),
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

    #[test]
    fn node_tables_parsed_one_by_one_give_the_config_the_whole_parse_gives() {
        let text = MINIMAL.to_string()
            + "local_subnets = [\n  \"10.1.0.0/16\",\n] # behind the hub\n\n[[node]] # tunnel\r\nname = \"mn2\"\naddress = \"10.9.0.3\"\npsk_file = \"mn2.key\"\nmode = \"tunnel\"\nlocal_subnets = [\"10.1.0.0/16\"]\nremote_subnets = [\"10.2.0.0/16\"]\nrotate_interval = \"2m\"\n";
        let text = text.replace(
            "mode = \"transport\"\n",
            "mode = \"tunnel\"\nremote_subnets = [\"10.3.0.0/16\"]\n",
        );
        let (_d, f) = setup(&text);
        let fast = ConfigFile::read(&f).unwrap();
        assert!(fast.nodes.is_some(), "the plain shape is cut");
        // A `'''` anywhere, even in a comment, sends the file to the whole
        // parse; it changes nothing else.
        let (_d2, f2) = setup(&format!("# '''\n{text}"));
        let whole = ConfigFile::read(&f2).unwrap();
        assert!(whole.nodes.is_none());
        let (fast, whole) = (fast.into_hub().unwrap(), whole.into_hub().unwrap());
        assert_eq!(fast.nodes.len(), 2);
        assert_eq!(format!("{:?}", fast.nodes), format!("{:?}", whole.nodes));
        assert_eq!(fast.nodes[1].rotate_interval, Duration::from_secs(120));
        assert!(!format!("{fast:?}").contains("[1, 1, 1"), "no key in Debug");

        // An error in one node table is the whole parse's error, line and all.
        let bad = text.replace("rotate_interval = \"2m\"", "rotate_interval = 2m");
        let (_d3, f3) = setup(&bad);
        let e = ConfigFile::read(&f3).unwrap_err().to_string();
        assert!(e.contains("line 25, column 20"), "{e}");
        let typo = text.replace("name = \"mn2\"", "nmae = \"mn2\"");
        let (_d4, f4) = setup(&typo);
        let e = load_hub(&f4).unwrap_err().to_string();
        assert!(e.contains("node[1].nmae: unknown field `nmae`"), "{e}");
    }

    /// MINIMAL with a second node, both keyed from `nodes.keys` (written
    /// with `lines` and `mode`), mn1 without its psk_file.
    fn keys_file_result(lines: &str, mode: u32) -> Result<HubConfig, String> {
        use std::os::unix::fs::PermissionsExt;
        let toml = MINIMAL
            .replace("socket =", "keys_file = \"nodes.keys\"\nsocket =")
            .replace("psk_file = \"mn1.key\"\n", "")
            + "\n[[node]]\nname = \"mn2\"\naddress = \"10.9.0.3\"\n";
        let (d, f) = setup(&toml);
        let k = d.path().join("nodes.keys");
        fs::write(&k, lines).unwrap();
        fs::set_permissions(&k, fs::Permissions::from_mode(mode)).unwrap();
        load_hub(&f).map_err(|e| e.to_string())
    }

    #[test]
    fn a_keys_file_gives_the_nodes_without_a_psk_file_their_keys() {
        let one = crate::keyfile::encode_key(&[1; 32]);
        let two = crate::keyfile::encode_key(&[2; 32]);
        let good = format!(
            "# the nodes' init keys\nmn1 {}\n\n  mn2\t{}\nother {}\n",
            *one, *two, *one
        );
        let c = keys_file_result(&good, 0o600).unwrap();
        assert_eq!(*c.nodes[0].psk, [1; 32]);
        assert_eq!(*c.nodes[1].psk, [2; 32]);

        let missing = keys_file_result(&format!("mn1 {}\n", *one), 0o600).unwrap_err();
        assert!(
            missing
                .contains("node[1].psk_file: missing, and hub.keys_file has no line for \"mn2\""),
            "{missing}"
        );
        let bad =
            keys_file_result(&format!("mn1 {}\nmn2 {} extra\n", *one, *two), 0o600).unwrap_err();
        assert!(
            bad.contains("hub.keys_file:")
                && bad.contains("nodes.keys: line 2: not a name and a key"),
            "{bad}"
        );
        assert!(!bad.contains(two.as_str()), "no key in errors: {bad}");
        let twice = keys_file_result(&format!("mn1 {}\nmn1 {}\n", *one, *two), 0o600).unwrap_err();
        assert!(
            twice.contains("line 2: \"mn1\" is listed on an earlier line too"),
            "{twice}"
        );
        let short = keys_file_result("mn1 AAAA\n", 0o600).unwrap_err();
        assert!(short.contains("line 1: decodes to 3 bytes"), "{short}");
        let open = keys_file_result(&good, 0o644).unwrap_err();
        assert!(
            open.contains("mode 0644 lets other users read the key"),
            "{open}"
        );
        let same = keys_file_result(&format!("mn1 {}\nmn2 {}\n", *one, *one), 0o600).unwrap_err();
        assert!(
            same.contains("node[1].psk_file: holds the same init key as node[0]"),
            "{same}"
        );
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
    fn etcd_state_with_its_cluster_key_file() {
        let t = MINIMAL.replace(
            "socket = \"/run/rotor/hub.sock\"",
            "socket = \"/run/rotor/hub.sock\"\nstate = \"etcd://10.99.0.11:2379,10.99.0.12:2379/rotor/a\"\nstate_key_file = \"mn2.key\"",
        );
        let (d, f) = setup(&t);
        let c = load_hub(&f).unwrap();
        match &c.state {
            StateConfig::Etcd {
                target,
                key_file,
                key,
            } => {
                assert_eq!(
                    target.endpoints,
                    ["http://10.99.0.11:2379", "http://10.99.0.12:2379"]
                );
                assert_eq!(target.prefix, "rotor/a");
                assert_eq!(key_file, &d.path().join("mn2.key"));
                assert_eq!(key, &ClusterKey::from_bytes([2; 32]));
            }
            s => panic!("{s:?}"),
        }
        let debug = format!("{c:?}");
        assert!(debug.contains("ClusterKey(..)"), "{debug}");
        // The default: the file store in state_dir.
        let c = load_hub(&setup(MINIMAL).1).unwrap();
        assert_eq!(c.state, StateConfig::Dir(PathBuf::from(DEFAULT_STATE_DIR)));
    }

    #[test]
    fn a_service_address_needs_its_interface_etcd_and_the_hub_address() {
        let with = |extra: &str| {
            MINIMAL.replace(
                "socket = \"/run/rotor/hub.sock\"",
                &format!("socket = \"/run/rotor/hub.sock\"\n{extra}"),
            )
        };
        const ETCD: &str = "state = \"etcd://e1/r\"\nstate_key_file = \"mn2.key\"\n";
        let t = with(&format!(
            "{ETCD}service_address = \"10.9.0.1/24\"\nservice_interface = \"veth0\""
        ));
        let (_d, f) = setup(&t);
        let c = load_hub(&f).unwrap();
        let s = c.service.expect("a service address");
        assert_eq!(
            (s.net.to_string(), s.interface.as_str()),
            ("10.9.0.1/24".into(), "veth0")
        );
        assert_eq!(load_hub(&setup(MINIMAL).1).unwrap().service, None);
        let e = err_of(&with(&format!("{ETCD}service_address = \"10.9.0.1/24\"")));
        assert!(e.contains("hub.service_interface: needed with"), "{e}");
        let e = err_of(&with(&format!("{ETCD}service_interface = \"veth0\"")));
        assert!(e.contains("hub.service_address: needed with"), "{e}");
        let e = err_of(&with(
            "service_address = \"10.9.0.1/24\"\nservice_interface = \"veth0\"",
        ));
        assert!(
            e.contains("hub.service_address: only used with state"),
            "{e}"
        );
        let e = err_of(&with(&format!(
            "{ETCD}service_address = \"10.9.0.7/24\"\nservice_interface = \"veth0\""
        )));
        assert!(e.contains("10.9.0.7 is not hub.address (10.9.0.1)"), "{e}");
        let e = err_of(&with(&format!(
            "{ETCD}service_address = \"10.9.0.1/24\"\nservice_interface = \"a b\""
        )));
        assert!(e.contains("is not an interface name"), "{e}");
    }

    #[test]
    fn etcd_state_errors_name_the_field() {
        let with = |extra: &str| {
            err_of(&MINIMAL.replace(
                "socket = \"/run/rotor/hub.sock\"",
                &format!("socket = \"/run/rotor/hub.sock\"\n{extra}"),
            ))
        };
        let e = with("state = \"http://e1:2379/r\"\nstate_key_file = \"mn2.key\"");
        assert!(
            e.contains("hub.state: \"http://e1:2379/r\" is not an etcd URL"),
            "{e}"
        );
        let e = with("state = \"etcd://e1:0/r\"\nstate_key_file = \"mn2.key\"");
        assert!(
            e.contains("hub.state: ") && e.contains("has no valid port"),
            "{e}"
        );
        let e = with("state = \"etcd://e1/r\"");
        assert!(e.contains("hub.state_key_file: needed with state"), "{e}");
        let e = with("state_key_file = \"mn2.key\"");
        assert!(
            e.contains("hub.state_key_file: only used with state"),
            "{e}"
        );
        let e =
            with("state = \"etcd://e1/r\"\nstate_key_file = \"mn2.key\"\nstate_dir = \"/tmp/x\"");
        assert!(e.contains("hub.state_dir: not used with state"), "{e}");
        let e = with("state = \"etcd://e1/r\"\nstate_key_file = \"nokey.key\"");
        assert!(
            e.contains("hub.state_key_file:") && e.contains("nokey.key: cannot read"),
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
    fn overlapping_remote_subnets_of_two_nodes_are_refused() {
        let two = |a: &str, b: &str| {
            format!(
                "{}\n[[node]]\nname = \"mn2\"\naddress = \"10.9.0.3\"\npsk_file = \"mn2.key\"\nmode = \"tunnel\"\nlocal_subnets = [\"10.1.0.0/24\"]\nremote_subnets = [{b}]\n",
                MINIMAL.replace(
                    "mode = \"transport\"",
                    &format!("mode = \"tunnel\"\nlocal_subnets = [\"10.1.0.0/24\"]\nremote_subnets = [{a}]"),
                )
            )
        };
        for (a, b) in [
            ("\"10.2.0.0/16\"", "\"10.2.7.0/24\""),
            ("\"10.2.7.0/24\"", "\"10.0.0.0/8\""),
            ("\"10.5.0.0/24\", \"10.2.0.0/24\"", "\"10.2.0.128/25\""),
            ("\"10.2.0.0/24\"", "\"10.2.0.0/24\""),
        ] {
            let (_d, f) = setup(&two(a, b));
            let e = load_hub(&f).unwrap_err().to_string();
            assert!(
                e.contains("node[1].remote_subnets")
                    && e.contains("overlaps")
                    && e.contains("\"mn1\""),
                "{a} / {b}: {e}"
            );
        }
        for (a, b) in [
            ("\"10.2.0.0/24\"", "\"10.2.1.0/24\""),
            ("\"10.2.0.0/25\"", "\"10.2.0.128/25\""),
        ] {
            let (_d, f) = setup(&two(a, b));
            assert!(load_hub(&f).is_ok(), "{a} / {b}");
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

    // ---- bounds: every bounded key, its edge values accepted and the values
    // just outside refused, with the key named.

    const HUB_DEFAULTS: &[(&str, &str)] = &[("address", "\"10.9.0.1\"")];
    const ENTRY_DEFAULTS: &[(&str, &str)] = &[
        ("name", "\"mn1\""),
        ("address", "\"10.9.0.2\""),
        ("psk_file", "\"mn1.key\""),
    ];
    const NODE_DEFAULTS: &[(&str, &str)] = &[
        ("name", "\"mn1\""),
        ("address", "\"10.9.0.2\""),
        ("hub", "\"10.9.0.1:4820\""),
        ("psk_file", "\"mn1.key\""),
    ];

    /// A TOML table body: `defaults` unless overridden by `set`, then `set`.
    fn table(defaults: &[(&str, &str)], set: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for (k, v) in defaults {
            if !set.iter().any(|(s, _)| s == k) {
                out += &format!("{k} = {v}\n");
            }
        }
        for (k, v) in set {
            out += &format!("{k} = {v}\n");
        }
        out
    }

    fn hub_file(hub: &[(&str, &str)], entry: &[(&str, &str)]) -> String {
        format!(
            "[hub]\n{}\n[[node]]\n{}",
            table(HUB_DEFAULTS, hub),
            table(ENTRY_DEFAULTS, entry)
        )
    }

    fn node_file(node: &[(&str, &str)]) -> String {
        format!("[node]\n{}", table(NODE_DEFAULTS, node))
    }

    /// Writes `text` as FILE_NAME next to the keys mn1.key and mn2.key.
    fn write(file_name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        write_key(&dir.path().join("mn1.key"), &[1; 32]).unwrap();
        write_key(&dir.path().join("mn2.key"), &[2; 32]).unwrap();
        write_key(&dir.path().join("same-as-mn1.key"), &[1; 32]).unwrap();
        let f = dir.path().join(file_name);
        fs::write(&f, text).unwrap();
        (dir, f)
    }

    fn hub_result(text: &str) -> Result<HubConfig, ConfigError> {
        let (_d, f) = write("hub.toml", text);
        load_hub(&f)
    }

    fn node_result(text: &str) -> Result<NodeConfig, ConfigError> {
        let (_d, f) = write("node.toml", text);
        load_node(&f)
    }

    /// A key, values it accepts, and values it refuses with the expected problem.
    type BoundCase = (
        &'static str,
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    );

    /// Asserts the error is about `key` and its problem contains `needle`.
    fn assert_refused(r: Result<impl fmt::Debug, ConfigError>, key: &str, needle: &str) {
        let e = r.expect_err("accepted a bad value");
        assert_eq!(e.key, key, "{e}");
        assert!(e.problem.contains(needle), "{e}");
        assert!(!e.problem.contains('\n'), "one line: {e}");
    }

    #[test]
    fn hub_bounds_accept_the_edges_and_refuse_beyond() {
        // (key, accepted, [(refused, expected problem)]); the hub's grace
        // cases run with a 6m period so that the 1h maximum meets the
        // grace/period relation.
        let cases: &[BoundCase] = &[
            (
                "rotate_interval",
                &["\"1s\"", "\"1000ms\"", "\"7d\"", "\"168h\""],
                &[
                    ("\"999ms\"", "\"999ms\" is less than the minimum, 1s"),
                    ("\"0s\"", "less than the minimum, 1s"),
                    ("\"169h\"", "\"169h\" is more than the maximum, 7d"),
                    (
                        "\"99999999999999h\"",
                        "\"99999999999999h\" is more than the maximum, 7d",
                    ),
                    ("\"18446744073709551616ms\"", "more than the maximum, 7d"),
                    ("\"1.5s\"", "is not a duration"),
                    ("\"-1s\"", "is not a duration"),
                    ("\"10\"", "is not a duration"),
                    ("\"10 years\"", "has no known unit"),
                    (
                        "10",
                        "invalid type: integer `10`, expected a duration from 1s to 7d",
                    ),
                ],
            ),
            (
                "grace",
                &["\"100ms\"", "\"1h\""],
                &[
                    ("\"99ms\"", "less than the minimum, 100ms"),
                    ("\"3601s\"", "more than the maximum, 1h"),
                ],
            ),
            (
                "ratchet_epoch",
                &["\"0s\"", "\"10s\""],
                &[("\"10001ms\"", "more than the maximum, 10s")],
            ),
            (
                "init_skew",
                &["\"60s\"", "\"1h\""],
                &[
                    ("\"59999ms\"", "less than the minimum, 1m"),
                    ("\"61m\"", "more than the maximum, 1h"),
                ],
            ),
            (
                "ratchet_every",
                &["1", "16"],
                &[("0", "0 is outside 1..=16"), ("17", "17 is outside 1..=16")],
            ),
            (
                "port",
                &["1", "65535"],
                &[
                    ("0", "0 is outside 1..=65535"),
                    ("65536", "65536 is outside 1..=65535"),
                    ("-1", "-1 is outside 1..=65535"),
                    ("\"4820\"", "expected an integer in 1..=65535"),
                ],
            ),
            (
                "key_bits",
                &["128", "256"],
                &[
                    ("0", "0 is not 128 or 256"),
                    ("192", "192 is not 128 or 256"),
                ],
            ),
            (
                "replay_window",
                &["1", "4096"],
                &[
                    ("0", "0 is outside 1..=4096"),
                    ("4097", "4097 is outside 1..=4096"),
                ],
            ),
            (
                "priority",
                &["1", "4294967295"],
                &[
                    ("0", "0 is outside 1..=4294967295"),
                    ("4294967296", "4294967296 is outside 1..=4294967295"),
                ],
            ),
            (
                "socket",
                &["\"hub.sock\""],
                &[("\"\"", "must not be empty")],
            ),
        ];
        for (key, good, bad) in cases {
            let period = ("rotate_interval", "\"6m\"");
            let with = |v: &'static str| -> Vec<(&str, &str)> {
                if *key == "rotate_interval" {
                    vec![(key, v)]
                } else {
                    vec![period, (key, v)]
                }
            };
            for v in *good {
                let r = hub_result(&hub_file(&with(v), &[]));
                assert!(r.is_ok(), "hub.{key} = {v}: {}", r.unwrap_err());
            }
            for (v, needle) in *bad {
                let r = hub_result(&hub_file(&with(v), &[]));
                assert_refused(r, &format!("hub.{key}"), needle);
            }
        }
        let c = hub_result(&hub_file(&[("rotate_interval", "\"7d\"")], &[])).unwrap();
        assert_eq!(c.rotate_interval, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn node_entry_bounds() {
        for v in ["\"1s\"", "\"7d\""] {
            let c = hub_result(&hub_file(&[], &[("rotate_interval", v)])).unwrap();
            assert!(c.nodes[0].rotate_interval >= Duration::from_secs(1));
        }
        assert_refused(
            hub_result(&hub_file(&[], &[("rotate_interval", "\"999ms\"")])),
            "node[0].rotate_interval",
            "less than the minimum, 1s",
        );
        assert_refused(
            hub_result(&hub_file(&[], &[("mode", "\"tunel\"")])),
            "node[0].mode",
            "unknown variant `tunel`, expected `transport` or `tunnel`",
        );
        assert_refused(
            hub_result(&hub_file(
                &[],
                &[
                    ("mode", "\"tunnel\""),
                    ("local_subnets", "[\"10.1.0.0/33\"]"),
                    ("remote_subnets", "[\"10.2.0.0/24\"]"),
                ],
            )),
            "node[0].local_subnets[0]",
            "\"10.1.0.0/33\" is not ADDRESS/PREFIX",
        );
        assert_refused(
            hub_result(&hub_file(&[], &[("psk_file", "\"\"")])),
            "node[0].psk_file",
            "must not be empty",
        );
    }

    #[test]
    fn node_bounds_accept_the_edges_and_refuse_beyond() {
        let cases: &[BoundCase] = &[
            (
                "hello_interval",
                &["\"100ms\"", "\"10m\""],
                &[
                    ("\"99ms\"", "less than the minimum, 100ms"),
                    ("\"601s\"", "more than the maximum, 10m"),
                    ("\"99999999999999h\"", "more than the maximum, 10m"),
                ],
            ),
            (
                "retries",
                &["1", "100"],
                &[
                    ("0", "0 is outside 1..=100"),
                    ("101", "101 is outside 1..=100"),
                ],
            ),
            (
                "grace",
                &["\"100ms\"", "\"1h\""],
                &[
                    ("\"99ms\"", "less than the minimum, 100ms"),
                    ("\"3601s\"", "more than the maximum, 1h"),
                ],
            ),
            (
                "key_bits",
                &["128", "256"],
                &[
                    ("512", "512 is not 128 or 256"),
                    ("-3", "-3 is not 128 or 256"),
                ],
            ),
            (
                "replay_window",
                &["1", "4096"],
                &[
                    ("0", "0 is outside 1..=4096"),
                    ("4097", "4097 is outside 1..=4096"),
                ],
            ),
            (
                "priority",
                &["1", "4294967295"],
                &[("0", "0 is outside 1..=4294967295")],
            ),
            (
                "hub",
                &[
                    "\"10.9.0.1:1\"",
                    "\"10.9.0.1:65535\"",
                    "\"10.9.0.1\"",
                    "\"10.9.0.99:4820\"",
                    "\"localhost:4830\"",
                    "\"LocalHost\"",
                ],
                &[
                    (
                        "\"10.9.0.1:0\"",
                        "\"10.9.0.1:0\" has port 0; use a port in 1..=65535",
                    ),
                    ("\"x:0\"", "\"x:0\" has port 0"),
                    ("\"10.9.0.1:65536\"", "\"65536\" is not a port"),
                    (
                        "\"vpn_1.example\"",
                        "only letters, digits, hyphens and dots",
                    ),
                    ("\"-vpn.example\"", "neither starts nor ends with a hyphen"),
                    ("\"10.9.0\"", "not all digits"),
                    (
                        "\"no-such-host.invalid\"",
                        "cannot resolve \"no-such-host.invalid\"",
                    ),
                    ("\"0.0.0.0:4820\"", "is the unspecified address"),
                    ("\"224.0.0.1:4820\"", "is a multicast address"),
                    ("\"[fd00::1]:4820\"", "same address family as node.address"),
                    ("\"10.9.0.2:4820\"", "10.9.0.2 is node.address"),
                ],
            ),
            (
                "socket",
                &["\"/run/x.sock\""],
                &[("\"\"", "must not be empty")],
            ),
        ];
        for (key, good, bad) in cases {
            for v in *good {
                let r = node_result(&node_file(&[(key, v)]));
                assert!(r.is_ok(), "node.{key} = {v}: {}", r.unwrap_err());
            }
            for (v, needle) in *bad {
                assert_refused(
                    node_result(&node_file(&[(key, v)])),
                    &format!("node.{key}"),
                    needle,
                );
            }
        }
        let c = node_result(&node_file(&[("hub", "\"10.9.0.1\"")])).unwrap();
        assert_eq!(c.hub, SocketAddr::new(c.hub.ip(), DEFAULT_PORT));
        assert_eq!(c.hub_name, None);
        let c = node_result(&node_file(&[("hub", "\"LocalHost\"")])).unwrap();
        assert_eq!(c.hub, "127.0.0.1:4820".parse().unwrap());
        assert_eq!(c.hub_name.as_deref(), Some("localhost"));
        let c = node_result(&node_file(&[("hello_interval", "\"10m\"")])).unwrap();
        assert_eq!(c.hello_interval, Duration::from_secs(600));
        assert_eq!(c.socket, PathBuf::from("/run/rotor/mn1.sock"));
    }

    #[test]
    fn names_follow_one_rule_on_both_sides() {
        let longest = format!("\"{}\"", "n".repeat(NAME_MAX));
        let too_long = format!("\"{}\"", "n".repeat(NAME_MAX + 1));
        for good in ["\"a\"", "\"9\"", "\"mn-1_x.y\"", longest.as_str()] {
            assert!(
                hub_result(&hub_file(&[], &[("name", good)])).is_ok(),
                "{good}"
            );
            assert!(node_result(&node_file(&[("name", good)])).is_ok(), "{good}");
        }
        for bad in [
            "\"\"",
            too_long.as_str(),
            "\"-mn1\"",
            "\".mn1\"",
            "\"mn 1\"",
            "\"mn/1\"",
            "\"m\u{e9}\"",
        ] {
            let rule =
                "must be 1-64 characters of A-Z a-z 0-9 - _ . starting with a letter or digit";
            assert_refused(
                hub_result(&hub_file(&[], &[("name", bad)])),
                "node[0].name",
                rule,
            );
            assert_refused(node_result(&node_file(&[("name", bad)])), "node.name", rule);
        }
    }

    #[test]
    fn addresses_must_be_unicast_and_distinct() {
        for (bad, needle) in [
            ("\"0.0.0.0\"", "is the unspecified address"),
            ("\"::\"", "is the unspecified address"),
            ("\"ff02::1\"", "is a multicast address"),
            ("\"255.255.255.255\"", "is the broadcast address"),
            (
                "\"10.9.0.256\"",
                "\"10.9.0.256\" is not an IPv4 or IPv6 address",
            ),
        ] {
            assert_refused(
                hub_result(&hub_file(&[("address", bad)], &[])),
                "hub.address",
                needle,
            );
            assert_refused(
                hub_result(&hub_file(&[], &[("address", bad)])),
                "node[0].address",
                needle,
            );
            assert_refused(
                node_result(&node_file(&[("address", bad)])),
                "node.address",
                needle,
            );
        }
        assert_refused(
            hub_result(&hub_file(&[], &[("address", "\"10.9.0.1\"")])),
            "node[0].address",
            "10.9.0.1 is hub.address",
        );
        assert_refused(
            hub_result(&hub_file(&[], &[("address", "\"fd00::2\"")])),
            "node[0].address",
            "same address family as hub.address",
        );
    }

    #[test]
    fn hub_grace_is_at_most_ten_rotation_periods() {
        // Exactly 10 periods: accepted, for the default and a node's own period.
        assert!(
            hub_result(&hub_file(
                &[("rotate_interval", "\"60s\""), ("grace", "\"10m\"")],
                &[]
            ))
            .is_ok()
        );
        assert!(
            hub_result(&hub_file(
                &[("grace", "\"10s\"")],
                &[("rotate_interval", "\"1s\"")]
            ))
            .is_ok()
        );
        // Beyond: the key named is the one the operator wrote.
        assert_refused(
            hub_result(&hub_file(
                &[("rotate_interval", "\"60s\""), ("grace", "\"601s\"")],
                &[],
            )),
            "hub.rotate_interval",
            "grace 601s is more than 10 x rotate_interval 1m",
        );
        assert_refused(
            hub_result(&hub_file(&[("grace", "\"601s\"")], &[])),
            "hub.grace",
            "grace 601s is more than 10 x rotate_interval 1m",
        );
        assert_refused(
            hub_result(&hub_file(
                &[("grace", "\"11s\"")],
                &[("rotate_interval", "\"1s\"")],
            )),
            "node[0].rotate_interval",
            "grace 11s is more than 10 x rotate_interval 1s",
        );
        // The defaults (grace 5s) allow the shortest period.
        assert!(hub_result(&hub_file(&[("rotate_interval", "\"1s\"")], &[])).is_ok());
    }

    #[test]
    fn two_nodes_with_one_init_key_are_refused() {
        let text = format!(
            "{}\n[[node]]\nname = \"mn2\"\naddress = \"10.9.0.3\"\npsk_file = \"same-as-mn1.key\"\n",
            hub_file(&[], &[])
        );
        assert_refused(
            hub_result(&text),
            "node[1].psk_file",
            "holds the same init key as node[0] (\"mn1\")",
        );
        let ok = text.replace("same-as-mn1.key", "mn2.key");
        assert_eq!(hub_result(&ok).unwrap().nodes.len(), 2);
    }

    #[test]
    fn a_file_for_the_other_role_is_named_as_such() {
        let e = hub_result(&node_file(&[])).unwrap_err();
        assert!(
            e.key.is_empty() && e.problem.contains("run `rotor node`"),
            "{e}"
        );
        let e = node_result(&hub_file(&[], &[])).unwrap_err();
        assert!(
            e.key.is_empty() && e.problem.contains("run `rotor hub`"),
            "{e}"
        );
        let e = node_result("[other]\nx = 1\n").unwrap_err();
        assert_eq!(
            e.problem,
            "neither a [hub] nor a [node] table: not a rotor config"
        );
    }

    #[test]
    fn syntax_errors_name_the_line_and_column_and_show_a_caret() {
        let (_d, f) = write("hub.toml", "[hub]\naddress = \"10.9.0.1\nport = 1\n");
        let e = load_hub(&f).unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(
            lines[0],
            format!("{}: line 2, column 20: invalid basic string", f.display()),
            "{e}"
        );
        assert_eq!(lines[2], "2 | address = \"10.9.0.1", "{e}");
        assert_eq!(lines[3], format!("  | {}^", " ".repeat(19)), "{e}");
    }

    /// Bad files of every kind: the loader of the role and `rotor check` must
    /// give the very same error (check runs the kernel probe only after the
    /// config passed, so these never reach it).
    #[test]
    fn check_and_the_daemons_report_the_same_error() {
        let hub_bad: Vec<String> = vec![
            "[hub]\naddress = \"10.9.0.1\nport = 1\n".into(),
            "[hub]\naddress = 10.9.0.1\n".into(),
            hub_file(&[("rotate_interval", "\"99999999999999h\"")], &[]),
            hub_file(&[("rotate_interval", "\"1ms\"")], &[]),
            hub_file(&[("port", "0")], &[]),
            hub_file(&[("prot", "4820")], &[]),
            hub_file(&[("grace", "\"11m\"")], &[]),
            hub_file(&[], &[("psk_file", "\"missing.key\"")]),
            hub_file(&[], &[("name", "\"-x\"")]),
            "[hub]\naddress = \"10.9.0.1\"\n".into(),
            "[hub]\nport = 4820\n".into(),
        ];
        for text in &hub_bad {
            let (_d, f) = write("hub.toml", text);
            let from_loader = load_hub(&f).unwrap_err().to_string();
            let from_check = format!("{:#}", crate::check::run(&f).unwrap_err());
            assert_eq!(from_loader, from_check, "for\n{text}");
            assert!(
                from_loader.starts_with(&format!("{}: ", f.display())),
                "{from_loader}"
            );
        }
        let node_bad: Vec<String> = vec![
            "[node]\nname = \"mn1\"\n[node]\n".into(),
            node_file(&[("hub", "\"x:0\"")]),
            node_file(&[("hub", "\"10.9.0.1:0\"")]),
            node_file(&[("hello_interval", "\"99999999999999h\"")]),
            node_file(&[("retries", "0")]),
            node_file(&[("key_bits", "192")]),
            node_file(&[("psk_file", "\"missing.key\"")]),
            "[node]\nname = \"mn1\"\n".into(),
        ];
        for text in &node_bad {
            let (_d, f) = write("node.toml", text);
            let from_loader = load_node(&f).unwrap_err().to_string();
            let from_check = format!("{:#}", crate::check::run(&f).unwrap_err());
            assert_eq!(from_loader, from_check, "for\n{text}");
        }
        // A file that is not there, for either role.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("absent.toml");
        let e = load_hub(&f).unwrap_err().to_string();
        assert_eq!(e, load_node(&f).unwrap_err().to_string());
        assert_eq!(e, format!("{:#}", crate::check::run(&f).unwrap_err()));
        assert!(e.contains("absent.toml: cannot read"), "{e}");
    }

    #[test]
    fn parse_duration_is_checked_and_unbounded() {
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(
            parse_duration("18446744073709551615ms").unwrap(),
            Duration::from_millis(u64::MAX)
        );
        for overflow in ["18446744073709551616ms", "99999999999999h", "213503982335d"] {
            let e = parse_duration(overflow).unwrap_err();
            assert!(e.contains("is too long"), "{overflow}: {e}");
        }
        assert!(parse_duration("").is_err());
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("no known unit")
        );
    }
}
