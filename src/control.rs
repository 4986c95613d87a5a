//! The local control socket's protocol: `rotor status` and `rotor rotate`
//! talk to a running daemon over a Unix stream socket (mode 0600, root only),
//! one JSON request line and one JSON response line per connection.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"rotate","node":"mn1"}`,
//! `{"cmd":"rotate","all":true}`, `{"cmd":"reload"}`. Responses: `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`. The status response is a [`Status`]: `role`,
//! `kernel_errors`, `drops` and the `peers` array of the key-SPI table (one
//! [`PeerStatus`] per peer); the daemon writes it in pieces as it builds it
//! (`daemon::control_server`), so it is still one line of JSON. SPIs are
//! strings `0x` + 8 hex digits, as `ip xfrm` and the table print them.
//! docs/cli.md documents every field. No response ever contains key
//! material.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// No daemon answers on the control socket (none configured there, or it is
/// not running): `rotor` exits with its own status for this (docs/cli.md).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotRunning(pub String);

/// Several daemons answer and none was chosen: a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Ambiguous(pub String);

/// Where the daemons put their control sockets by default.
pub const SOCKET_DIR: &str = "/run/rotor";

/// The control socket to talk to: `explicit` if given, else the one socket
/// in [`SOCKET_DIR`] a daemon answers on (a hub's or a node's: whichever
/// role runs here). Several live sockets are an error that lists them.
pub fn find_socket(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let dir = Path::new(SOCKET_DIR);
    let mut live: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .filter(|p| UnixStream::connect(p).is_ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {SOCKET_DIR}")),
    };
    live.sort();
    match live.len() {
        0 => Err(NotRunning(format!(
            "no rotor daemon answers on a socket in {SOCKET_DIR} (is it running? a daemon with another `socket` setting needs --socket)"
        ))
        .into()),
        1 => Ok(live.remove(0)),
        _ => Err(Ambiguous(format!(
            "several rotor daemons run here; choose one with --socket: {}",
            live.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

/// Largest request line the daemon reads.
pub const MAX_REQUEST: usize = 4096;

/// A request from `rotor status` / `rotor rotate`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The key-SPI table.
    Status,
    /// Re-read the configuration and apply the difference.
    Reload,
    /// Rotate one node (hub), all nodes (hub), or request a rotation (node).
    Rotate {
        /// The node's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// Every node.
        #[serde(default)]
        all: bool,
    },
}

/// One row of the key-SPI table.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Peer name (the node's name; on a node, its own name).
    pub name: String,
    /// Latest generation N (0 before the first key).
    pub generation: u64,
    /// SPI this side sends on, if any (`"0x1a2b3c4d"` in JSON).
    #[serde(with = "spi_hex::option")]
    pub tx_spi: Option<u32>,
    /// SPIs this side accepts (strings like `tx_spi`).
    #[serde(with = "spi_hex::list")]
    pub rx_spis: Vec<u32>,
    /// `init`, `in_sync`, `awaiting_confirm`, or `kernel_pending` (the
    /// kernel refused some of the peer's SAs or policies; retried).
    pub state: String,
    /// Rotations completed.
    pub rotations: u64,
    /// Keys resent because the node missed one.
    pub resends: u64,
    /// (Re)initialisations.
    pub inits: u64,
    /// Milliseconds since the last authenticated message from the peer, if any.
    pub last_seen_ms: Option<u64>,
    /// The kernel's side: how many of the peer's SA and policy operations
    /// the kernel refused and rotor retries (0: the kernel holds what the
    /// state says; a drift found by a reconcile pass is repaired at once).
    #[serde(default)]
    pub kernel_retrying: usize,
    /// Milliseconds since this peer's latest key was made (hub: first sent;
    /// since the daemon started, for a key restored from its state); `None`
    /// on a node, or before the first key.
    #[serde(default)]
    pub key_age_ms: Option<u64>,
    /// Where the peer is reached (`ADDR:PORT`; on a hub, learned from the
    /// node's freshest authenticated message), `None` before it is known.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A NAT sits between: ESP travels in UDP on the control port.
    #[serde(default)]
    pub nat: bool,
}

/// The status response.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Status {
    /// `hub` or `node`.
    pub role: String,
    /// One row per peer.
    pub peers: Vec<PeerStatus>,
    /// Datagrams dropped, by reason.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Kernel operations that failed (and were retried or reconciled).
    pub kernel_errors: u64,
    /// Kernel operations refused and waiting for a retry now.
    #[serde(default)]
    pub kernel_retrying: u64,
    /// Control datagrams received since the daemon started.
    #[serde(default)]
    pub control_received: u64,
    /// Control datagrams sent since the daemon started.
    #[serde(default)]
    pub control_sent: u64,
}

/// The head of a status response: everything but the peers, which follow it
/// row by row (see [`StatusHead::open`]).
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct StatusHead {
    /// `hub` or `node`.
    pub role: String,
    /// Datagrams dropped, by reason.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Kernel operations that failed (and were retried or reconciled).
    pub kernel_errors: u64,
    /// Kernel operations refused and waiting for a retry now.
    #[serde(default)]
    pub kernel_retrying: u64,
    /// Control datagrams received since the daemon started.
    #[serde(default)]
    pub control_received: u64,
    /// Control datagrams sent since the daemon started.
    #[serde(default)]
    pub control_sent: u64,
}

impl StatusHead {
    /// The response text up to the first peer row: `{"ok":true,...,"peers":[`.
    /// The rows, comma-separated, and [`STATUS_TAIL`] complete it to one
    /// [`Status`] object on one line.
    pub fn open(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        s.pop(); // the closing brace: the peers array and "ok" follow
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str("\"ok\":true,\"peers\":[");
        s
    }
}

/// What closes a status response after the last row.
pub const STATUS_TAIL: &str = "]}\n";

/// The answer to `rotate`.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct RotateReply {
    /// Always true (a refusal is an [`ErrorReply`]).
    pub ok: bool,
    /// `hub` (rotations started) or `node` (a rotation requested from
    /// the hub); empty from a daemon that predates the field.
    #[serde(default)]
    pub role: String,
    /// Rotations started (hub) or requested (node, always 1).
    pub rotating: usize,
}

/// What a reload changed. Nodes not named kept everything (keys, chains,
/// counters) and noticed nothing.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
pub struct ReloadReply {
    /// Always true (a refusal is an [`ErrorReply`]; nothing changed then).
    pub ok: bool,
    /// Peers added (they initialise).
    pub added: Vec<String>,
    /// Peers removed (their SAs, policies and records are gone).
    pub removed: Vec<String>,
    /// Peers whose settings changed (a changed init key re-initialises the
    /// node; a changed address or mode re-keys it).
    pub changed: Vec<String>,
    /// Peers untouched.
    pub unchanged: usize,
}

/// A refused request.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// Always false.
    pub ok: bool,
    /// What was wrong, for the operator.
    pub error: String,
}

impl ErrorReply {
    /// A refusal saying `error`.
    pub fn new(error: impl Into<String>) -> Self {
        ErrorReply {
            ok: false,
            error: error.into(),
        }
    }
}

/// Sends one request and returns the parsed JSON response (or the daemon's error).
pub fn call(socket: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        NotRunning(format!(
            "connecting to {}: {e} (is the daemon running? use --socket to name another)",
            socket.display()
        ))
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)
        .with_context(|| format!("writing to {}", socket.display()))?;
    let mut resp = String::new();
    BufReader::new(&s)
        .read_line(&mut resp)
        .with_context(|| format!("reading the reply from {}", socket.display()))?;
    let v: serde_json::Value = serde_json::from_str(&resp).with_context(|| {
        format!(
            "the daemon at {} sent something that is not JSON",
            socket.display()
        )
    })?;
    if v.get("ok") != Some(&serde_json::Value::Bool(true)) {
        let e = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("unknown error");
        bail!("the daemon refused: {e}");
    }
    Ok(v)
}

/// Renders the status as an aligned table.
pub fn table(st: &Status) -> String {
    let mut out = format!(
        "{:<16} {:<23} {:>6} {:>10} {:<21} {:<17} {:<11} {:>9} {:>7} {:>5} {:>10}\n",
        "PEER",
        "REACHED_AT",
        "GEN",
        "TX_SPI",
        "RX_SPIS",
        "STATE",
        "KERNEL",
        "ROTATIONS",
        "RESENDS",
        "INITS",
        "LAST_SEEN"
    );
    for p in &st.peers {
        let tx = p
            .tx_spi
            .map(|s| format!("{s:#010x}"))
            .unwrap_or_else(|| "-".into());
        let rx: Vec<String> = p.rx_spis.iter().map(|s| format!("{s:#010x}")).collect();
        let seen = p
            .last_seen_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "never".into());
        let kernel = match p.kernel_retrying {
            0 => "ok".to_string(),
            n => format!("retrying {n}"),
        };
        let at = match (&p.endpoint, p.nat) {
            (Some(e), true) => format!("{e} nat"),
            (Some(e), false) => e.clone(),
            (None, _) => "-".into(),
        };
        out.push_str(&format!(
            "{:<16} {:<23} {:>6} {:>10} {:<21} {:<17} {:<11} {:>9} {:>7} {:>5} {:>10}\n",
            p.name,
            at,
            p.generation,
            tx,
            rx.join(","),
            p.state,
            kernel,
            p.rotations,
            p.resends,
            p.inits,
            seen
        ));
    }
    if !st.drops.is_empty() {
        let d: Vec<String> = st.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("drops: {}\n", d.join(" ")));
    }
    if st.kernel_errors > 0 {
        out.push_str(&format!("kernel errors: {}\n", st.kernel_errors));
    }
    out
}

/// SPIs in JSON: `"0x"` and 8 hex digits, the form `ip xfrm` and the status
/// table print; plain integers are read too (a daemon from before).
mod spi_hex {
    use super::*;

    fn text(spi: u32) -> String {
        format!("{spi:#010x}")
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Number(u32),
    }

    fn parse<E: serde::de::Error>(w: Wire) -> Result<u32, E> {
        match w {
            Wire::Number(n) => Ok(n),
            Wire::Text(t) => t
                .strip_prefix("0x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or_else(|| E::custom(format!("{t:?} is not an SPI (0x + hex digits)"))),
        }
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
            v.map(text).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
            Option::<Wire>::deserialize(d)?.map(parse).transpose()
        }
    }

    pub mod list {
        use super::*;

        pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(v.iter().map(|spi| text(*spi)))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
            Vec::<Wire>::deserialize(d)?
                .into_iter()
                .map(parse)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_json_shape() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        let r = Request::Rotate {
            node: Some("mn1".into()),
            all: false,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"cmd":"rotate","node":"mn1","all":false}"#
        );
        let back: Request = serde_json::from_str(r#"{"cmd":"rotate","all":true}"#).unwrap();
        assert_eq!(
            back,
            Request::Rotate {
                node: None,
                all: true
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn spis_are_hex_strings_in_json_and_integers_are_still_read() {
        let row = PeerStatus {
            name: "mn1".into(),
            generation: 7,
            tx_spi: Some(0x1a2b_3c4d),
            rx_spis: vec![0x1006, 0xffff_ffff],
            state: "in_sync".into(),
            rotations: 6,
            resends: 0,
            inits: 1,
            last_seen_ms: Some(5),
            kernel_retrying: 0,
            key_age_ms: None,
            endpoint: None,
            nat: false,
        };
        let v = serde_json::to_value(&row).unwrap();
        assert_eq!(v["tx_spi"], "0x1a2b3c4d");
        assert_eq!(
            v["rx_spis"],
            serde_json::json!(["0x00001006", "0xffffffff"])
        );
        let back: PeerStatus = serde_json::from_value(v).unwrap();
        assert_eq!(back, row);
        let none = PeerStatus {
            tx_spi: None,
            rx_spis: vec![],
            ..row.clone()
        };
        assert_eq!(
            serde_json::to_value(&none).unwrap()["tx_spi"],
            serde_json::Value::Null
        );
        let mut old = serde_json::to_value(&row).unwrap();
        old["tx_spi"] = serde_json::json!(4096);
        old["rx_spis"] = serde_json::json!([4096, 4097]);
        let back: PeerStatus = serde_json::from_value(old).unwrap();
        assert_eq!((back.tx_spi, back.rx_spis), (Some(4096), vec![4096, 4097]));
        let mut bad = serde_json::to_value(&row).unwrap();
        bad["tx_spi"] = serde_json::json!("4096");
        let e = serde_json::from_value::<PeerStatus>(bad).unwrap_err();
        assert!(e.to_string().contains("not an SPI"), "{e}");
    }

    #[test]
    fn a_streamed_status_parses_as_one_status() {
        let head = StatusHead {
            role: "hub".into(),
            drops: [("replay".to_string(), 2)].into_iter().collect(),
            kernel_errors: 3,
            kernel_retrying: 1,
            control_received: 10,
            control_sent: 9,
        };
        let row = PeerStatus {
            name: "mn1".into(),
            generation: 7,
            tx_spi: Some(0x1006),
            rx_spis: vec![0x1006, 0x1007],
            state: "in_sync".into(),
            rotations: 6,
            resends: 1,
            inits: 1,
            last_seen_ms: None,
            kernel_retrying: 0,
            key_age_ms: None,
            endpoint: None,
            nat: false,
        };
        for rows in [vec![], vec![row.clone()], vec![row.clone(), row.clone()]] {
            let body: Vec<String> = rows
                .iter()
                .map(|r| serde_json::to_string(r).unwrap())
                .collect();
            let text = format!("{}{}{}", head.open(), body.join(","), STATUS_TAIL);
            assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["ok"], true);
            let st: Status = serde_json::from_value(v).unwrap();
            assert_eq!(st.role, "hub");
            assert_eq!(st.kernel_errors, 3);
            assert_eq!(st.peers, rows);
            assert_eq!(st.drops["replay"], 2);
        }
    }

    #[test]
    fn table_prints_spis_and_state() {
        let st = Status {
            role: "hub".into(),
            peers: vec![PeerStatus {
                name: "mn1".into(),
                generation: 7,
                tx_spi: Some(0x1006),
                rx_spis: vec![0x1006, 0x1007],
                state: "awaiting_confirm".into(),
                rotations: 6,
                resends: 1,
                inits: 1,
                last_seen_ms: Some(1500),
                kernel_retrying: 0,
                key_age_ms: None,
                endpoint: None,
                nat: false,
            }],
            drops: [("replay".to_string(), 2)].into_iter().collect(),
            kernel_errors: 0,
            kernel_retrying: 0,
            control_received: 0,
            control_sent: 0,
        };
        let t = table(&st);
        assert!(t.contains("KERNEL") && t.contains(" ok "), "{t}");
        let mut refused = st.clone();
        refused.peers[0].kernel_retrying = 3;
        refused.peers[0].state = "kernel_pending".into();
        refused.kernel_errors = 5;
        let r = table(&refused);
        assert!(
            r.contains("kernel_pending") && r.contains("retrying 3"),
            "{r}"
        );
        assert!(r.contains("kernel errors: 5"), "{r}");
        assert!(t.contains("mn1"));
        assert!(t.contains("0x00001006"));
        assert!(t.contains("0x00001006,0x00001007"));
        assert!(t.contains("awaiting_confirm"));
        assert!(t.contains("drops: replay=2"));
    }
}
