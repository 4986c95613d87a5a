//! Prometheus metrics over HTTP (text exposition format 0.0.4), served off
//! the event loop like the control socket: each scrape pulls the status
//! head and the peers' rows page by page through the same [`Call`] channel,
//! so a 100,000-node hub answers a scrape without stalling its loop.
//!
//! Only `GET /metrics` is answered; the HTTP handled is the little a scraper
//! needs (one request per connection, `Connection: close`), which is why no
//! HTTP crate is pulled in. The series are aggregates of bounded
//! cardinality; one series per node and metric only with
//! `metrics_per_node = true`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::warn;

use super::control_server::{Call, PAGE, Pages};
use crate::control::{PeerStatus, StatusHead};

/// Largest request head read.
const MAX_REQUEST: usize = 8 << 10;
/// How long a scraper may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 4;

/// The peer states, each reported (0 included) so that a dashboard's
/// series never vanish.
const STATES: [&str; 4] = ["init", "awaiting_confirm", "in_sync", "kernel_pending"];

/// Serves scrapes on `listener` until the task is aborted.
pub fn spawn(
    listener: TcpListener,
    calls: mpsc::Sender<Call>,
    role: &'static str,
    per_node: bool,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                serve(stream, &calls, role, per_node).await;
                drop(slot);
            });
        }
    })
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

/// Routes a request head (the bytes up to the blank line).
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    if method != "GET" {
        return Route::BadMethod;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

async fn serve(mut stream: TcpStream, calls: &mpsc::Sender<Call>, role: &str, per_node: bool) {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        true
    })
    .await;
    let response = match (read, route(&head)) {
        (Ok(true), Route::Metrics) => match gather(calls, role, per_node).await {
            Some(body) => reply("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body),
            None => return,
        },
        (Ok(true), Route::NotFound) => reply(
            "404 Not Found",
            "text/plain",
            "rotor serves /metrics only\n",
        ),
        (Ok(true), Route::BadMethod) => reply("405 Method Not Allowed", "text/plain", "GET only\n"),
        _ => reply("400 Bad Request", "text/plain", "bad request\n"),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

fn reply(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The exposition, from the loop's status pages; `None` if the loop has
/// stopped.
async fn gather(calls: &mpsc::Sender<Call>, role: &str, per_node: bool) -> Option<String> {
    let mut pages = Pages::new(calls);
    let mut exp: Option<Exposition> = None;
    loop {
        let (head, rows) = pages.next().await?;
        if let Some(h) = head {
            exp = Some(Exposition::new(h, role, per_node));
        }
        let e = exp.as_mut()?;
        for r in &rows {
            e.add(r);
        }
        if rows.len() < PAGE {
            break;
        }
    }
    exp.map(Exposition::finish)
}

/// The metrics of one scrape, built row by row.
#[derive(Debug)]
pub struct Exposition {
    head: StatusHead,
    role: String,
    per_node: bool,
    states: [u64; STATES.len()],
    other_states: u64,
    rotations: u64,
    resends: u64,
    inits: u64,
    lag_ms: u64,
    silence_ms: u64,
    /// The per-node samples, one text per entry of [`NODE_METRICS`].
    nodes: [String; NODE_METRICS.len()],
}

/// The per-node metrics: name, type, help.
const NODE_METRICS: [(&str, &str, &str); 6] = [
    (
        "rotor_node_rotations_total",
        "counter",
        "Rotations of this node.",
    ),
    ("rotor_node_inits_total", "counter", "Inits of this node."),
    (
        "rotor_node_resends_total",
        "counter",
        "Keys resent to this node.",
    ),
    ("rotor_node_in_sync", "gauge", "1 if this node is in sync."),
    (
        "rotor_node_key_age_seconds",
        "gauge",
        "Age of this node's latest key.",
    ),
    (
        "rotor_node_last_seen_seconds",
        "gauge",
        "Time since this node was last heard.",
    ),
];

impl Exposition {
    /// Starts from the status head.
    pub fn new(head: StatusHead, role: &str, per_node: bool) -> Self {
        Exposition {
            head,
            role: role.to_string(),
            per_node,
            states: [0; STATES.len()],
            other_states: 0,
            rotations: 0,
            resends: 0,
            inits: 0,
            lag_ms: 0,
            silence_ms: 0,
            nodes: Default::default(),
        }
    }

    /// Adds one peer's row.
    pub fn add(&mut self, p: &PeerStatus) {
        match STATES.iter().position(|s| *s == p.state) {
            Some(i) => self.states[i] += 1,
            None => self.other_states += 1,
        }
        self.rotations += p.rotations;
        self.resends += p.resends;
        self.inits += p.inits;
        self.lag_ms = self.lag_ms.max(p.key_age_ms.unwrap_or(0));
        self.silence_ms = self.silence_ms.max(p.last_seen_ms.unwrap_or(0));
        if self.per_node {
            let n = label(&p.name);
            let values = [
                Some(p.rotations.to_string()),
                Some(p.inits.to_string()),
                Some(p.resends.to_string()),
                Some(u8::from(p.state == "in_sync").to_string()),
                p.key_age_ms.map(secs),
                p.last_seen_ms.map(secs),
            ];
            for ((text, (name, _, _)), v) in self.nodes.iter_mut().zip(NODE_METRICS).zip(values) {
                if let Some(v) = v {
                    let _ = writeln!(text, "{name}{{node=\"{n}\"}} {v}");
                }
            }
        }
    }

    /// The text exposition.
    pub fn finish(self) -> String {
        let mut o = String::with_capacity(4096 + self.nodes.iter().map(String::len).sum::<usize>());
        let h = &self.head;
        metric(
            &mut o,
            "rotor_info",
            "gauge",
            "The running daemon: its role and version.",
        );
        let _ = writeln!(
            o,
            "rotor_info{{role=\"{}\",version=\"{}\"}} 1",
            label(&self.role),
            env!("CARGO_PKG_VERSION")
        );
        metric(
            &mut o,
            "rotor_peers",
            "gauge",
            "Peers by state (a node has one peer, its hub).",
        );
        for (s, n) in STATES.iter().zip(self.states) {
            let _ = writeln!(o, "rotor_peers{{state=\"{s}\"}} {n}");
        }
        if self.other_states > 0 {
            let _ = writeln!(o, "rotor_peers{{state=\"other\"}} {}", self.other_states);
        }
        for (name, help, v) in [
            (
                "rotor_rotations_total",
                "Rotations (new key generations), summed over the configured peers.",
                self.rotations,
            ),
            (
                "rotor_resends_total",
                "Keys sent again to a peer that missed one, summed over the configured peers.",
                self.resends,
            ),
            (
                "rotor_inits_total",
                "Chains (re)initialised from the pre-shared init key, summed over the configured peers.",
                self.inits,
            ),
            (
                "rotor_kernel_errors_total",
                "Kernel SA and policy operations refused (each failed retry counted).",
                h.kernel_errors,
            ),
            (
                "rotor_control_datagrams_received_total",
                "Control datagrams received on the UDP port.",
                h.control_received,
            ),
            (
                "rotor_control_datagrams_sent_total",
                "Control datagrams sent.",
                h.control_sent,
            ),
        ] {
            metric(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {v}");
        }
        metric(
            &mut o,
            "rotor_dropped_datagrams_total",
            "counter",
            "Control datagrams dropped, by reason.",
        );
        for (reason, n) in &h.drops {
            let _ = writeln!(
                o,
                "rotor_dropped_datagrams_total{{reason=\"{}\"}} {n}",
                label(reason)
            );
        }
        metric(
            &mut o,
            "rotor_kernel_retrying_operations",
            "gauge",
            "Kernel operations refused and waiting for a retry.",
        );
        let _ = writeln!(o, "rotor_kernel_retrying_operations {}", h.kernel_retrying);
        metric(
            &mut o,
            "rotor_rotation_lag_seconds",
            "gauge",
            "Age of the oldest latest key over all peers (hub: since it was sent); grows past rotate_interval when rotation stalls.",
        );
        let _ = writeln!(o, "rotor_rotation_lag_seconds {}", secs(self.lag_ms));
        metric(
            &mut o,
            "rotor_peer_silence_seconds",
            "gauge",
            "Longest time since any peer was last heard (authenticated), over the peers heard at least once.",
        );
        let _ = writeln!(o, "rotor_peer_silence_seconds {}", secs(self.silence_ms));
        if self.per_node {
            for (text, (name, kind, help)) in self.nodes.iter().zip(NODE_METRICS) {
                metric(&mut o, name, kind, help);
                o.push_str(text);
            }
        }
        o
    }
}

fn metric(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> StatusHead {
        StatusHead {
            role: "hub".into(),
            drops: [("replay".to_string(), 2), ("unknown_spi".to_string(), 5)]
                .into_iter()
                .collect(),
            kernel_errors: 3,
            kernel_retrying: 1,
            control_received: 40,
            control_sent: 38,
        }
    }

    fn row(name: &str, state: &str, rotations: u64, age: Option<u64>) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            generation: rotations + 1,
            tx_spi: Some(0x1000),
            rx_spis: vec![0x1000],
            state: state.into(),
            rotations,
            resends: 1,
            inits: 1,
            last_seen_ms: Some(1500),
            kernel_retrying: 0,
            key_age_ms: age,
            endpoint: None,
            nat: false,
        }
    }

    /// Every sample line of `text` whose name and labels are `key`.
    fn value(text: &str, key: &str) -> Option<String> {
        text.lines()
            .find(|l| !l.starts_with('#') && l.rsplit_once(' ').is_some_and(|(k, _)| k == key))
            .and_then(|l| l.rsplit_once(' ').map(|(_, v)| v.to_string()))
    }

    #[test]
    fn aggregates_and_per_node_series() {
        let mut e = Exposition::new(head(), "hub", false);
        e.add(&row("mn1", "in_sync", 4, Some(2500)));
        e.add(&row("mn2", "awaiting_confirm", 6, Some(61_000)));
        e.add(&row("mn3", "init", 0, None));
        let t = e.finish();
        assert_eq!(value(&t, "rotor_rotations_total").as_deref(), Some("10"));
        assert_eq!(value(&t, "rotor_inits_total").as_deref(), Some("3"));
        assert_eq!(
            value(&t, "rotor_peers{state=\"in_sync\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&t, "rotor_peers{state=\"kernel_pending\"}").as_deref(),
            Some("0")
        );
        assert_eq!(
            value(&t, "rotor_rotation_lag_seconds").as_deref(),
            Some("61.000")
        );
        assert_eq!(
            value(&t, "rotor_dropped_datagrams_total{reason=\"unknown_spi\"}").as_deref(),
            Some("5")
        );
        assert_eq!(value(&t, "rotor_kernel_errors_total").as_deref(), Some("3"));
        assert_eq!(
            value(&t, "rotor_control_datagrams_sent_total").as_deref(),
            Some("38")
        );
        assert_eq!(
            value(&t, "rotor_info{role=\"hub\",version=\"0.1.0\"}").as_deref(),
            Some("1")
        );
        assert!(
            !t.contains("rotor_node_"),
            "no per-node series unless asked"
        );
        // Every sample has its TYPE line before it, once.
        let mut typed = std::collections::HashSet::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(typed.insert(name.to_string()), "TYPE {name} twice");
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap_or_default();
                assert!(typed.contains(name), "{name} has no TYPE before it");
            }
        }

        let mut e = Exposition::new(head(), "hub", true);
        e.add(&row("mn\"1", "in_sync", 4, Some(2500)));
        let t = e.finish();
        assert_eq!(
            value(&t, "rotor_node_rotations_total{node=\"mn\\\"1\"}").as_deref(),
            Some("4")
        );
        assert_eq!(
            value(&t, "rotor_node_in_sync{node=\"mn\\\"1\"}").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"\x16\x03\x01 garbage"), Route::Bad);
        assert_eq!(route(b""), Route::Bad);
    }
}
