//! `rotor-loadgen`: the command line (`run`, `gen`, `floor`, `flood`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rotor::config::parse_duration;
use rotor::keyfile::read_key;
use rotor_core::{KeyBits, NodeConfig, Secret32};
use rotor_loadgen::addr::AddrMap;
use rotor_loadgen::fleet::{Fleet, FleetConfig, install_stop_handlers};
use rotor_loadgen::floor::{self, FloorConfig};
use rotor_loadgen::setup::{self, GenConfig, key_path};

#[derive(Parser)]
#[command(
    name = "rotor-loadgen",
    about = "Load generator for the rotor hub: many real rotor nodes in one process",
    long_about = "Runs COUNT rotor-core nodes (the state machine `rotor node` runs) in one process, \
                  each from its own address (FIRST_ADDR + index, all configured on one interface), \
                  over one UDP socket; optionally installs their SAs and policies like `rotor node`. \
                  `gen` writes matching keys and a hub config; `floor` measures the kernel's cost \
                  of the SA operations of one hub rotation."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the nodes until SIGTERM/SIGINT (or --duration), then print a JSON summary on stdout.
    Run(RunArgs),
    /// Write COUNT init keys (DIR/keys/PREFIX<i>.key, mode 0600) and DIR/hub.toml with one [[node]] each.
    Gen(GenArgs),
    /// Measure the kernel floor of one hub rotation for COUNT nodes (run it in an empty namespace).
    Floor(FloorArgs),
    /// Flood a hub's control port with forged inits, random SPIs and replays; print {"sent": N, "seconds": S}.
    Flood(FloodArgs),
}

#[derive(clap::Args)]
struct FloodArgs {
    /// The hub's control address, ADDR:PORT.
    #[arg(long)]
    to: SocketAddr,
    /// Init key files of the nodes whose init SPIs the forged inits carry.
    #[arg(long, value_delimiter = ',')]
    keys: Vec<PathBuf>,
    /// A JSON list of hex datagrams (as captured on the wire) to replay.
    #[arg(long)]
    samples: Option<PathBuf>,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the random parts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn flood(a: FloodArgs) -> anyhow::Result<()> {
    let mut keys = Vec::new();
    for k in &a.keys {
        let psk = read_key(k).with_context(|| format!("reading {}", k.display()))?;
        keys.push(Secret32::new(*psk));
    }
    let replays = match &a.samples {
        None => Vec::new(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let hex: Vec<String> =
                serde_json::from_str(&text).context("the samples: a JSON list of hex strings")?;
            hex.iter()
                .map(|h| {
                    (0..h.len() / 2)
                        .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
                        .collect::<Result<Vec<u8>, _>>()
                })
                .collect::<Result<_, _>>()
                .context("the samples: a JSON list of hex strings")?
        }
    };
    let (sent, seconds) = rotor_loadgen::flood::run(&rotor_loadgen::flood::FloodConfig {
        to: a.to,
        keys,
        replays,
        duration: a.duration,
        seed: a.seed,
    })?;
    println!(
        "{}",
        serde_json::json!({"sent": sent, "seconds": (seconds * 100.0).round() / 100.0})
    );
    Ok(())
}

#[derive(clap::Args)]
struct RunArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Address of node 0; node i uses the i-th address after it (all must be configured here).
    #[arg(long)]
    first_addr: Ipv4Addr,
    /// How node i's address is chosen: FIRST + i, or FIRST + (i * K mod 2^22) (see docs/performance.md).
    #[arg(long, value_enum, default_value = "scattered")]
    addr_map: AddrMap,
    /// The hub's control address, ADDR:PORT (the nodes send from the same port).
    #[arg(long)]
    hub: SocketAddr,
    /// Directory of the init keys: node i reads DIR/PREFIX<i>.key (as `gen` writes them).
    #[arg(long)]
    psk_dir: PathBuf,
    /// Node names are PREFIX<i>, as in the hub's config.
    #[arg(long, default_value = "n")]
    name_prefix: String,
    /// Hello (keepalive) interval, e.g. 1s, 30s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    hello_interval: Duration,
    /// Unanswered hellos before a node falls back to init.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// How long replaced SAs linger (with --kernel).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    grace: Duration,
    /// ESP key size, 128 or 256 (must match the hub).
    #[arg(long, default_value_t = 256)]
    key_bits: u16,
    /// At most this many nodes waiting for their first init reply at once (0: all start together).
    #[arg(long, default_value_t = 256)]
    max_pending: usize,
    /// Also install every node's SAs and policies in this namespace, batched, as `rotor node` does.
    #[arg(long)]
    kernel: bool,
    /// Seed of the nodes' random generator (default: from the OS).
    #[arg(long)]
    seed: Option<u64>,
    /// UDP receive buffer in bytes (SO_RCVBUFFORCE when root).
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    rcvbuf: usize,
    /// UDP send buffer in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    sndbuf: usize,
    /// Progress period (stderr line and --progress-file).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    progress: Duration,
    /// Rewrite this file with the progress JSON every period (atomically).
    #[arg(long)]
    progress_file: Option<PathBuf>,
    /// Stop after this long.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// A node counts as waiting for the hub once a datagram it sent has
    /// gone unanswered this long (the progress JSON's `silence`).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    silence: Duration,
    /// When this file's modification time changes, the progress JSON's
    /// ended-wait figures (`silence.waits`, `wait_max_ms`,
    /// `last_wait_end_unix_ms`, `waiting_peak`) start over at the next
    /// progress period: touch it just before an outage you measure.
    #[arg(long)]
    mark_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct GenArgs {
    /// Number of nodes.
    #[arg(long)]
    count: u32,
    /// Output directory.
    #[arg(long)]
    dir: PathBuf,
    /// Address of node 0.
    #[arg(long)]
    first_addr: Ipv4Addr,
    /// How node i's address is chosen: FIRST + i, or FIRST + (i * K mod 2^22) (see docs/performance.md).
    #[arg(long, value_enum, default_value = "scattered")]
    addr_map: AddrMap,
    /// The hub's address.
    #[arg(long)]
    hub_addr: IpAddr,
    /// Control port.
    #[arg(long, default_value_t = 4820)]
    port: u16,
    /// Node name prefix.
    #[arg(long, default_value = "n")]
    name_prefix: String,
    /// hub.rotate_interval (long, so rotations happen only when asked).
    #[arg(long, default_value = "1h")]
    rotate_interval: String,
    /// hub.grace.
    #[arg(long, default_value = "1s")]
    grace: String,
    /// hub.ratchet_every: every K-th rotation is a DH ratchet step (1 = every one, the default).
    #[arg(long, default_value_t = 1)]
    ratchet_every: u32,
    /// hub.socket (default: DIR/hub.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also write every key into one hub.keys_file (keys/nodes.keys) and
    /// leave psk_file out of the [[node]] entries.
    #[arg(long)]
    keys_file: bool,
}

#[derive(clap::Args)]
struct FloorArgs {
    /// Number of nodes (rotations).
    #[arg(long, default_value_t = 10_000)]
    count: u32,
    /// The hub's address.
    #[arg(long, default_value = "10.9.0.1")]
    local: Ipv4Addr,
    /// Address of node 0.
    #[arg(long, default_value = "10.64.0.0")]
    first_remote: Ipv4Addr,
    /// How node i's address is chosen: FIRST + i, or FIRST + (i * K mod 2^22) (see docs/performance.md).
    #[arg(long, value_enum, default_value = "scattered")]
    addr_map: AddrMap,
    /// Keep the generated `ip -batch` file here.
    #[arg(long)]
    batch_file: Option<PathBuf>,
    /// Skip the `ip -batch` measurement.
    #[arg(long)]
    no_ip: bool,
    /// Repeat each measurement this many times and sum (UML counts CPU in 10 ms ticks).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Also time each kind of operation (SA add in/out, policy update, SA deletes) in its own batch.
    #[arg(long)]
    by_kind: bool,
}

fn key_bits(b: u16) -> anyhow::Result<KeyBits> {
    match b {
        128 => Ok(KeyBits::Aes128),
        256 => Ok(KeyBits::Aes256),
        _ => bail!("--key-bits must be 128 or 256, not {b}"),
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let SocketAddr::V4(hub) = a.hub else {
        bail!("--hub: only IPv4 is supported by the load generator so far");
    };
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let bits = key_bits(a.key_bits)?;
    let mut nodes = Vec::with_capacity(a.count as usize);
    for i in 0..a.count {
        let path = key_path(&a.psk_dir, &a.name_prefix, i);
        let psk = read_key(&path).with_context(|| format!("node {i}'s init key"))?;
        nodes.push(NodeConfig {
            name: format!("{}{i}", a.name_prefix),
            psk: Secret32::new(*psk),
            hello_interval_ms: a.hello_interval.as_millis() as u64,
            retries: a.retries,
            grace_ms: a.grace.as_millis() as u64,
            key_bits: bits,
        });
    }
    let cfg = FleetConfig {
        first_addr: a.first_addr,
        addr_map: a.addr_map,
        hub: SocketAddrV4::new(*hub.ip(), hub.port()),
        hello_interval_ms: a.hello_interval.as_millis() as u64,
        max_pending: a.max_pending,
        kernel: a.kernel,
        rcvbuf: a.rcvbuf,
        sndbuf: a.sndbuf,
        seed: a.seed,
        progress_ms: a.progress.as_millis() as u64,
        progress_file: a.progress_file,
        duration: a.duration,
        quiet: a.quiet,
        silence_ms: a.silence.as_millis() as u64,
        mark_file: a.mark_file,
    };
    let mut fleet = Fleet::new(cfg, nodes)?;
    install_stop_handlers().context("catching SIGTERM and SIGINT")?;
    let summary = fleet.run()?;
    println!("{summary}");
    Ok(())
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Run(a) => run(a),
        Cmd::Gen(a) => {
            let socket = a.socket.clone().unwrap_or_else(|| a.dir.join("hub.sock"));
            setup::generate(&GenConfig {
                count: a.count,
                dir: a.dir,
                first_addr: a.first_addr,
                addr_map: a.addr_map,
                hub_addr: a.hub_addr,
                port: a.port,
                name_prefix: a.name_prefix,
                rotate_interval: a.rotate_interval,
                grace: a.grace,
                ratchet_every: a.ratchet_every,
                socket,
                keys_file: a.keys_file,
            })
            .map(|p| println!("{}", p.display()))
        }
        Cmd::Flood(a) => flood(a),
        Cmd::Floor(a) => floor::run(&FloorConfig {
            count: a.count,
            local: a.local,
            first_remote: a.first_remote,
            addr_map: a.addr_map,
            batch_file: a.batch_file,
            no_ip: a.no_ip,
            repeat: a.repeat,
            by_kind: a.by_kind,
        })
        .map(|v| println!("{v}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rotor-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
