//! Hub and node configuration files (TOML): parsing, defaults, validation.
//!
//! Every error names the file, the key (`node[2].psk_file`, `hub.port`) and what
//! is wrong with it. Unknown keys are errors, so a typo never silently falls
//! back to a default. Key files are read and checked (0600) here, so a daemon
//! that starts has every key it needs.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::keyfile::{KEY_LEN, read_key};
use rotor_xfrm::IpNet;

/// Default UDP port of the control channel.
pub const DEFAULT_PORT: u16 = 4820;

/// A configuration error: the file, the key and the problem.
#[derive(Debug)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// Dotted key path, or empty for the file as a whole.
    pub key: String,
    /// What is wrong.
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

/// Parses a duration written like `500ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (write e.g. 500ms, 10s, 5m, 1h)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{s:?} has no known unit (use ms, s, m or h, e.g. 10s)"
            ));
        }
    };
    Ok(d)
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
    address: String,
    port: Option<u16>,
    rotate_interval: Option<String>,
    grace: Option<String>,
    socket: Option<PathBuf>,
    key_bits: Option<u16>,
    replay_window: Option<u32>,
    priority: Option<u32>,
    init_skew: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: String,
    address: String,
    psk_file: PathBuf,
    mode: Option<String>,
    local_subnets: Option<Vec<String>>,
    remote_subnets: Option<Vec<String>>,
    rotate_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    node: NodeSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    name: String,
    address: String,
    hub: String,
    psk_file: PathBuf,
    hello_interval: Option<String>,
    retries: Option<u32>,
    grace: Option<String>,
    socket: Option<PathBuf>,
    key_bits: Option<u16>,
    replay_window: Option<u32>,
    priority: Option<u32>,
    mode: Option<String>,
    local_subnets: Option<Vec<String>>,
    remote_subnets: Option<Vec<String>>,
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

    fn duration(
        &self,
        key: &str,
        v: Option<&String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => {
                let d = parse_duration(s).map_err(|e| self.err(key, e))?;
                if d.is_zero() {
                    return Err(self.err(key, "must be greater than zero"));
                }
                Ok(d)
            }
        }
    }

    fn addr(&self, key: &str, s: &str) -> Result<IpAddr, ConfigError> {
        s.parse()
            .map_err(|_| self.err(key, format!("{s:?} is not an IPv4 or IPv6 address")))
    }

    fn key_bits(&self, key: &str, v: Option<u16>) -> Result<u16, ConfigError> {
        match v.unwrap_or(256) {
            b @ (128 | 256) => Ok(b),
            b => Err(self.err(key, format!("{b} is not 128 or 256"))),
        }
    }

    fn replay_window(&self, key: &str, v: Option<u32>) -> Result<u32, ConfigError> {
        match v.unwrap_or(1024) {
            w @ 1..=4096 => Ok(w),
            w => Err(self.err(
                key,
                format!("{w} is outside 1..=4096 (the kernel's maximum)"),
            )),
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
        mode: Option<&String>,
        local: Option<&Vec<String>>,
        remote: Option<&Vec<String>>,
        outer: IpAddr,
    ) -> Result<PeerMode, ConfigError> {
        let nets = |key: &str, v: Option<&Vec<String>>| -> Result<Vec<IpNet>, ConfigError> {
            let key = format!("{prefix}.{key}");
            let v = v.ok_or_else(|| self.err(&key, "tunnel mode needs this list of subnets"))?;
            if v.is_empty() {
                return Err(self.err(&key, "must name at least one subnet"));
            }
            v.iter()
                .map(|s| {
                    let n = IpNet::parse(s).ok_or_else(|| self.err(&key, format!("{s:?} is not ADDRESS/PREFIX")))?;
                    if n.addr.is_ipv4() != outer.is_ipv4() {
                        return Err(self.err(&key, format!("{s} is not of the same address family as the outer addresses (mixed-family tunnels are not supported yet)")));
                    }
                    Ok(n)
                })
                .collect()
        };
        match mode.map(String::as_str).unwrap_or("transport") {
            "transport" => {
                for (k, v) in [("local_subnets", local), ("remote_subnets", remote)] {
                    if v.is_some() {
                        return Err(
                            self.err(format!("{prefix}.{k}"), "only valid with mode = \"tunnel\"")
                        );
                    }
                }
                Ok(PeerMode::Transport)
            }
            "tunnel" => Ok(PeerMode::Tunnel {
                local: nets("local_subnets", local)?,
                remote: nets("remote_subnets", remote)?,
            }),
            other => Err(self.err(
                format!("{prefix}.mode"),
                format!("{other:?} is not \"transport\" or \"tunnel\""),
            )),
        }
    }
}

fn read_toml<T: for<'de> Deserialize<'de>>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        key: String::new(),
        problem: format!("cannot read: {e}"),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        key: String::new(),
        problem: e.to_string().trim_end().replace('\n', " "),
    })
}

/// Reads and validates a hub configuration, including every node's key file.
pub fn load_hub(file: &Path) -> Result<HubConfig, ConfigError> {
    let raw: HubFile = read_toml(file)?;
    let cx = Ctx { file };
    let h = &raw.hub;
    let address = cx.addr("hub.address", &h.address)?;
    let rotate_interval = cx.duration(
        "hub.rotate_interval",
        h.rotate_interval.as_ref(),
        Duration::from_secs(60),
    )?;
    let port = h.port.unwrap_or(DEFAULT_PORT);
    if port == 0 {
        return Err(cx.err("hub.port", "must not be 0"));
    }
    if raw.node.is_empty() {
        return Err(cx.err("node", "no [[node]] entries: the hub has nobody to serve"));
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut nodes = Vec::with_capacity(raw.node.len());
    for (i, n) in raw.node.iter().enumerate() {
        let p = format!("node[{i}]");
        if n.name.is_empty()
            || n.name.len() > 64
            || !n
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(cx.err(
                format!("{p}.name"),
                format!("{:?} must be 1-64 characters of A-Z a-z 0-9 - _ .", n.name),
            ));
        }
        if !names.insert(n.name.clone()) {
            return Err(cx.err(
                format!("{p}.name"),
                format!("{:?} is used by an earlier node", n.name),
            ));
        }
        let a = cx.addr(&format!("{p}.address"), &n.address)?;
        if a.is_ipv4() != address.is_ipv4() {
            return Err(cx.err(
                format!("{p}.address"),
                "must be of the same address family as hub.address",
            ));
        }
        if !addrs.insert(a) {
            return Err(cx.err(
                format!("{p}.address"),
                format!("{a} is used by an earlier node"),
            ));
        }
        nodes.push(HubPeer {
            name: n.name.clone(),
            address: a,
            psk: cx.psk(&format!("{p}.psk_file"), &n.psk_file)?,
            mode: cx.mode(
                &p,
                n.mode.as_ref(),
                n.local_subnets.as_ref(),
                n.remote_subnets.as_ref(),
                address,
            )?,
            rotate_interval: cx.duration(
                &format!("{p}.rotate_interval"),
                n.rotate_interval.as_ref(),
                rotate_interval,
            )?,
        });
    }
    Ok(HubConfig {
        address,
        port,
        rotate_interval,
        grace: cx.duration("hub.grace", h.grace.as_ref(), Duration::from_secs(5))?,
        socket: h
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/rotor/hub.sock")),
        key_bits: cx.key_bits("hub.key_bits", h.key_bits)?,
        replay_window: cx.replay_window("hub.replay_window", h.replay_window)?,
        priority: h.priority.unwrap_or(1000),
        init_skew: cx.duration(
            "hub.init_skew",
            h.init_skew.as_ref(),
            Duration::from_secs(120),
        )?,
        nodes,
    })
}

/// Reads and validates a node configuration, including its key file.
pub fn load_node(file: &Path) -> Result<NodeConfig, ConfigError> {
    let raw: NodeFile = read_toml(file)?;
    let cx = Ctx { file };
    let n = &raw.node;
    let address = cx.addr("node.address", &n.address)?;
    let hub: SocketAddr = match n.hub.parse::<SocketAddr>() {
        Ok(s) => s,
        Err(_) => {
            match n.hub.parse::<IpAddr>() {
                Ok(a) => SocketAddr::new(a, DEFAULT_PORT),
                Err(_) => {
                    return Err(cx.err("node.hub", format!("{:?} is not ADDRESS:PORT (e.g. \"10.9.0.1:4820\" or \"[fd00::1]:4820\")", n.hub)));
                }
            }
        }
    };
    if hub.is_ipv4() != address.is_ipv4() {
        return Err(cx.err(
            "node.hub",
            "must be of the same address family as node.address",
        ));
    }
    let retries = n.retries.unwrap_or(3);
    if retries == 0 {
        return Err(cx.err("node.retries", "must be at least 1"));
    }
    let name_ok = !n.name.is_empty()
        && n.name.len() <= 64
        && n.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(cx.err(
            "node.name",
            format!("{:?} must be 1-64 characters of A-Z a-z 0-9 - _ .", n.name),
        ));
    }
    Ok(NodeConfig {
        name: n.name.clone(),
        address,
        hub,
        psk: cx.psk("node.psk_file", &n.psk_file)?,
        hello_interval: cx.duration(
            "node.hello_interval",
            n.hello_interval.as_ref(),
            Duration::from_secs(1),
        )?,
        retries,
        grace: cx.duration("node.grace", n.grace.as_ref(), Duration::from_secs(5))?,
        socket: n
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/rotor/{}.sock", n.name))),
        key_bits: cx.key_bits("node.key_bits", n.key_bits)?,
        replay_window: cx.replay_window("node.replay_window", n.replay_window)?,
        priority: n.priority.unwrap_or(1000),
        mode: cx.mode(
            "node",
            n.mode.as_ref(),
            n.local_subnets.as_ref(),
            n.remote_subnets.as_ref(),
            address,
        )?,
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
