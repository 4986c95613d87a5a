//! The daemons. One event loop ([`event_loop::run`]) drives either role
//! ([`HubRole`], [`NodeRole`], both behind [`Role`]) against a kernel behind
//! the [`rotor_xfrm::Kernel`] seam: the real one through netlink
//! ([`run_hub`], [`run_node`]), or an in-memory model in tests ([`serve`]
//! with [`rotor_xfrm::ModelKernel`]).
//!
//! Layout: [`clock`] (time as the core wants it), [`role`] with [`hub`] and
//! [`node`], [`kernel`] (actions to batched kernel operations) with
//! [`retry`] (what the kernel refused), [`control_server`] (the control
//! socket, off the loop), [`event_loop`], [`shutdown`] (signals), [`log`].
//!
//! Start-up runs every check that can fail without touching the kernel
//! first (configuration, UDP bind, control socket), then removes rotor-owned
//! SAs and policies a crashed run left behind and installs each peer's
//! inbound policies and a blocking outbound policy (fail closed until keys
//! exist). SIGTERM/SIGINT stop the loop and remove everything rotor owns.

pub mod clock;
pub mod control_server;
pub mod event_loop;
pub mod hub;
pub mod kernel;
pub mod log;
pub mod node;
pub mod retry;
pub mod role;
pub mod shutdown;

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use rotor_core::{Hub, KeyBits, NameTable, Node, Secret32};
use rotor_xfrm::{Kernel, Ownership, Xfrm};
use tokio::net::{UdpSocket, UnixListener};
use tokio::sync::mpsc;
use tracing::info;

pub use clock::Clock;
pub use hub::HubRole;
pub use kernel::KernelExec;
pub use node::NodeRole;
pub use role::Role;

use crate::config::{HubConfig, NodeConfig};
use crate::peer_kernel::PeerKernel;
use crate::sockets::{bind_control_udp, bind_control_unix};

fn key_bits(b: u16) -> KeyBits {
    if b == 128 {
        KeyBits::Aes128
    } else {
        KeyBits::Aes256
    }
}

/// Serves `role` on `udp` and the control `listener` until `shutdown`
/// completes: sets the kernel up ([`KernelExec::start`]), runs the event
/// loop, and on the way out removes what it installed. On a failed start the
/// kernel is left as it was found.
pub async fn serve<R: Role, K: Kernel>(
    mut role: R,
    mut kernel: KernelExec<K>,
    udp: UdpSocket,
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let clock = Clock::default();
    kernel.start()?;
    // Give the heap the configuration parser and the policy set-up left
    // behind back to the system (measured: ~1 KB per node at 10,000 nodes).
    rotor_sys::malloc_trim();
    let (tx, mut calls) = mpsc::channel(control_server::QUEUE);
    let server = control_server::spawn(listener, tx);
    event_loop::run(&mut role, &mut kernel, &udp, &mut calls, &clock, shutdown).await;
    server.abort();
    kernel.remove_all();
    Ok(())
}

/// The hub's role and kernel layout from its configuration.
pub fn hub_parts(mut cfg: HubConfig, own: Ownership) -> anyhow::Result<(HubRole, Vec<PeerKernel>)> {
    // The nodes' entries are moved out of the parsed configuration (their
    // strings are not copied), and what the daemon keeps per node goes into
    // a few large allocations: small long-lived blocks scattered among the
    // parser's garbage would keep its pages from returning to the system.
    let nodes = std::mem::take(&mut cfg.nodes);
    let names = NameTable::from_names(nodes.iter().map(|n| n.name.as_str()));
    let mut peers = Vec::with_capacity(nodes.len());
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(nodes.len());
    let mut specs = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.into_iter().enumerate() {
        let reqid = u32::try_from(i)
            .ok()
            .and_then(|i| own.reqid_for(i))
            .with_context(|| format!("too many nodes for rotor's reqid range ({})", own.len()))?;
        peers.push(PeerKernel {
            reqid,
            local: cfg.address,
            remote: n.address,
            mode: n.mode,
            priority: cfg.priority,
            replay_window: cfg.replay_window,
        });
        addrs.push(SocketAddr::new(n.address, cfg.port));
        specs.push(rotor_core::NodeSpec {
            name: n.name,
            psk: Secret32::new(*n.psk),
            rotate_interval_ms: millis(n.rotate_interval),
        });
    }
    let hub = Hub::new(
        rotor_core::HubConfig {
            nodes: specs,
            grace_ms: millis(cfg.grace),
            key_bits: key_bits(cfg.key_bits),
            init_skew_ms: millis(cfg.init_skew),
        },
        Clock::default().now(),
        seed()?,
    )
    .context("hub configuration")?;
    Ok((HubRole::new(hub, names, addrs), peers))
}

/// The node's role and kernel layout from its configuration.
pub fn node_parts(cfg: &NodeConfig, own: Ownership) -> anyhow::Result<(NodeRole, Vec<PeerKernel>)> {
    let peer = PeerKernel {
        reqid: own.base(),
        local: cfg.address,
        remote: cfg.hub.ip(),
        mode: cfg.mode.clone(),
        priority: cfg.priority,
        replay_window: cfg.replay_window,
    };
    let node = Node::new(
        rotor_core::NodeConfig {
            name: cfg.name.clone(),
            psk: Secret32::new(*cfg.psk),
            hello_interval_ms: millis(cfg.hello_interval),
            retries: cfg.retries,
            grace_ms: millis(cfg.grace),
            key_bits: key_bits(cfg.key_bits),
        },
        Clock::default().now(),
        seed()?,
    )
    .context("node configuration")?;
    Ok((NodeRole::new(node, cfg.name.clone(), cfg.hub), vec![peer]))
}

/// A seed for a machine's random number generator, from the OS.
fn seed() -> anyhow::Result<[u8; 32]> {
    let mut s = [0u8; 32];
    rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut s)
        .context("reading the OS random number generator")?;
    Ok(s)
}

/// A configured duration in milliseconds (the config bounds it far below
/// overflow; saturating all the same).
fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Binds both sockets before anything touches the kernel, so a start that
/// cannot bind (another instance running, address not configured) changes
/// nothing.
fn bind(udp_at: SocketAddr, socket: &Path) -> anyhow::Result<(UdpSocket, UnixListener)> {
    let udp = bind_control_udp(udp_at)?;
    let listener = bind_control_unix(socket)?;
    Ok((udp, listener))
}

/// Runs the hub until SIGTERM/SIGINT.
pub async fn run_hub(cfg: HubConfig) -> anyhow::Result<()> {
    let own = Ownership::default();
    let (address, port, socket) = (cfg.address, cfg.port, cfg.socket.clone());
    let (role, peers) = hub_parts(cfg, own)?;
    let nodes = peers.len();
    let (udp, listener) = bind(SocketAddr::new(address, port), &socket)?;
    let xfrm = Xfrm::open(own).context("opening the XFRM netlink socket")?;
    let stop = shutdown::on_signal()?;
    info!(%address, port, nodes, socket = %socket.display(), "hub starting");
    let r = serve(role, KernelExec::new(xfrm, peers), udp, listener, stop).await;
    let _ = std::fs::remove_file(&socket);
    info!("hub stopped");
    r
}

/// Runs a node until SIGTERM/SIGINT.
pub async fn run_node(cfg: NodeConfig) -> anyhow::Result<()> {
    let own = Ownership::default();
    let (role, peers) = node_parts(&cfg, own)?;
    let (udp, listener) = bind(SocketAddr::new(cfg.address, cfg.hub.port()), &cfg.socket)?;
    let xfrm = Xfrm::open(own).context("opening the XFRM netlink socket")?;
    let stop = shutdown::on_signal()?;
    info!(name = %cfg.name, address = %cfg.address, hub = %cfg.hub, socket = %cfg.socket.display(), "node starting");
    let r = serve(role, KernelExec::new(xfrm, peers), udp, listener, stop).await;
    let _ = std::fs::remove_file(&cfg.socket);
    info!("node stopped");
    r
}
