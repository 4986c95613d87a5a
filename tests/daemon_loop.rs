//! The daemon's event loop in-process: a hub and nodes, each on its own
//! thread and current-thread runtime as in the real daemon, talking over
//! loopback UDP, with the in-memory kernel model behind the kernel seam.
//! Assertions are on the model kernel's state and on what the control socket
//! answers, never on log lines.
//!
//! Every test takes its own 127.x.0.0/16 range and port, and the tests run
//! one at a time (a shared lock): some measure how promptly the loop
//! answers, and two daemons fleets on two cores would measure each other.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rotor::config::{HubConfig, HubPeer, NodeConfig, PeerMode};
use rotor::control::{self, Request, Status};
use rotor::daemon::event_loop::BeforeFirstSend;
use rotor::daemon::notify::Notifier;
use rotor::daemon::persist::Persist;
use rotor::daemon::repairs::Repairs;
use rotor::daemon::{self, KernelExec, Lifecycle, Role};
use rotor::peer_kernel::PeerKernel;
use rotor::store::Store;
use rotor_xfrm::{ModelKernel, Op, Ownership, SaId};
use zeroize::Zeroizing;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A daemon on its own thread; dropping it without [`Daemon::stop`] leaves
/// the thread to end with the test process.
struct Daemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    kernel: ModelKernel,
    socket: PathBuf,
}

impl Daemon {
    fn start<R: Role + Send + 'static>(
        role: R,
        peers: Vec<PeerKernel>,
        udp_at: SocketAddr,
        socket: PathBuf,
        kernel: ModelKernel,
        store: Option<Store>,
    ) -> Daemon {
        Self::start_full(
            role,
            peers,
            udp_at,
            socket,
            kernel,
            store,
            None,
            Notifier::default(),
            None,
        )
    }

    /// [`Daemon::start`], serving metrics (per node) on `metrics`.
    fn start_with_metrics<R: Role + Send + 'static>(
        role: R,
        peers: Vec<PeerKernel>,
        udp_at: SocketAddr,
        socket: PathBuf,
        kernel: ModelKernel,
        store: Option<Store>,
        metrics: std::net::TcpListener,
    ) -> Daemon {
        Self::start_full(
            role,
            peers,
            udp_at,
            socket,
            kernel,
            store,
            Some(metrics),
            Notifier::default(),
            None,
        )
    }

    /// [`Daemon::start`], with the service manager's notifications going
    /// where `notify` says.
    fn start_notifying<R: Role + Send + 'static>(
        role: R,
        peers: Vec<PeerKernel>,
        udp_at: SocketAddr,
        socket: PathBuf,
        kernel: ModelKernel,
        store: Option<Store>,
        notify: Notifier,
    ) -> Daemon {
        Self::start_full(
            role, peers, udp_at, socket, kernel, store, None, notify, None,
        )
    }

    /// A daemon serving metrics on `metrics` if given, with the service
    /// manager's notifications going where `notify` says; with `lead`, a
    /// hub that leads: the hook run before its first datagram, and its
    /// held repairs.
    #[allow(clippy::too_many_arguments)]
    fn start_full<R: Role + Send + 'static>(
        role: R,
        peers: Vec<PeerKernel>,
        udp_at: SocketAddr,
        socket: PathBuf,
        kernel: ModelKernel,
        store: Option<Store>,
        metrics: Option<std::net::TcpListener>,
        notify: Notifier,
        lead: Option<(BeforeFirstSend, Repairs)>,
    ) -> Daemon {
        let (before_first_send, repairs) = lead.unzip();
        let udp = UdpSocket::bind(udp_at).expect("bind UDP");
        udp.set_nonblocking(true).unwrap();
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind control");
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let k = kernel.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let udp = tokio::net::UdpSocket::from_std(udp)?;
                let listener = tokio::net::UnixListener::from_std(listener)?;
                let metrics = match metrics {
                    Some(l) => Some((tokio::net::TcpListener::from_std(l)?, true)),
                    None => None,
                };
                let life = Lifecycle {
                    persist: store.map(Persist::new),
                    monitor: None,
                    reconcile_every_ms: RECONCILE_MS,
                    reqids: Default::default(),
                    hangup: None,
                    linger: Default::default(),
                    reloads: Vec::new(),
                    forget: Vec::new(),
                    metrics,
                    notify,
                    routes: None,
                    guard: None,
                    guard_pending: None,
                    first_pass_deferred: false,
                    before_first_send,
                    repairs,
                };
                daemon::serve(
                    role,
                    KernelExec::new(k, peers),
                    udp,
                    listener,
                    life,
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
            })
        });
        let d = Daemon {
            stop: Some(stop),
            thread: Some(thread),
            kernel,
            socket,
        };
        let t0 = Instant::now();
        while status_of(&d.socket).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn status(&self) -> Status {
        status_of(&self.socket).expect("status")
    }

    fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => anyhow::bail!("daemon thread panicked"),
        }
    }
}

fn status_of(socket: &Path) -> anyhow::Result<Status> {
    let v = control::call(socket, &Request::Status)?;
    Ok(serde_json::from_value(v)?)
}

/// A test's address plan: hub 127.`net`.0.1, node i 127.`net`.1.(i+1),
/// far nodes that never run 127.`net`.(2 + i/200).(i%200 + 1).
struct Net {
    net: u8,
    port: u16,
    dir: tempfile::TempDir,
}

impl Net {
    fn new(net: u8) -> Net {
        Net {
            net,
            port: 47_000 + u16::from(net),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn hub_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.net, 0, 1))
    }

    fn node_ip(&self, i: usize) -> IpAddr {
        if i < 200 {
            IpAddr::V4(Ipv4Addr::new(127, self.net, 1, i as u8 + 1))
        } else {
            IpAddr::V4(Ipv4Addr::new(
                127,
                self.net,
                (2 + i / 200) as u8,
                (i % 200) as u8 + 1,
            ))
        }
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

fn psk(i: usize) -> Zeroizing<[u8; 32]> {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    k[31] = 0x5a;
    Zeroizing::new(k)
}

const ROTATE: Duration = Duration::from_millis(400);
const HELLO: Duration = Duration::from_millis(100);
const GRACE: Duration = Duration::from_millis(300);
/// Reconcile period of the daemons under test (the model kernel sends no
/// notifications, so drift is found by the periodic pass).
const RECONCILE_MS: u64 = 200;

fn hub_config(net: &Net, nodes: usize, addr_of: impl Fn(usize) -> IpAddr) -> HubConfig {
    HubConfig {
        address: net.hub_ip(),
        port: net.port,
        rotate_interval: ROTATE,
        grace: GRACE,
        socket: net.sock("hub"),
        state_dir: net.state_dir(),
        state: rotor::state::StateConfig::Dir(net.state_dir()),
        sa_lifetime: None,
        key_bits: 256,
        replay_window: 64,
        priority: 1000,
        init_skew: Duration::from_secs(30),
        ratchet_epoch: Duration::from_secs(1),
        ratchet_every: 1,
        metrics: None,
        metrics_per_node: false,
        guard: rotor::guard::GuardBackend::Off,
        service: None,
        lease_ttl: rotor::state::etcd::lead::DEFAULT_TTL,
        nodes: (0..nodes)
            .map(|i| HubPeer {
                name: format!("n{i}"),
                address: Some(addr_of(i)),
                psk: psk(i).into(),
                mode: PeerMode::Transport,
                rotate_interval: ROTATE,
            })
            .collect(),
    }
}

/// A hub of one node that rotates no node on its own within a test.
fn slow_hub_config(net: &Net) -> HubConfig {
    let slow = Duration::from_secs(600);
    let mut c = hub_config(net, 1, |i| net.node_ip(i));
    c.rotate_interval = slow;
    c.nodes[0].rotate_interval = slow;
    c
}

fn node_config(net: &Net, i: usize, hub: SocketAddr) -> NodeConfig {
    NodeConfig {
        name: format!("n{i}"),
        address: Some(net.node_ip(i)),
        hub,
        hub_name: None,
        psk: psk(i).into(),
        hello_interval: HELLO,
        retries: 3,
        grace: GRACE,
        socket: net.sock(&format!("n{i}")),
        state_dir: net.state_dir(),
        sa_lifetime: None,
        key_bits: 256,
        replay_window: 64,
        priority: 1000,
        mode: PeerMode::Transport,
        metrics: None,
        guard: rotor::guard::GuardBackend::Off,
    }
}

fn start_hub(net: &Net, cfg: HubConfig) -> Daemon {
    start_hub_on(net, cfg, ModelKernel::new(Ownership::default()))
}

/// A hub on `kernel` (a restart passes the previous run's), with its
/// durable state in the config's `state_dir`.
fn start_hub_on(net: &Net, cfg: HubConfig, kernel: ModelKernel) -> Daemon {
    let socket = cfg.socket.clone();
    let (store, mut loaded) = Store::open(&cfg.state_dir, "hub").unwrap();
    let (role, peers, _) = daemon::hub_parts(cfg, Ownership::default(), Some(&mut loaded)).unwrap();
    let at = SocketAddr::new(net.hub_ip(), net.port);
    Daemon::start(role, peers, at, socket, kernel, Some(store))
}

/// A hub on `kernel` that leads: `hook` runs where a leader takes its
/// service address, and its start holds its repairs (marker `marker`).
fn start_hub_leading(
    net: &Net,
    cfg: HubConfig,
    kernel: ModelKernel,
    hook: BeforeFirstSend,
    marker: PathBuf,
) -> Daemon {
    let socket = cfg.socket.clone();
    let (store, mut loaded) = Store::open(&cfg.state_dir, "hub").unwrap();
    let (role, peers, _) = daemon::hub_parts(cfg, Ownership::default(), Some(&mut loaded)).unwrap();
    let at = SocketAddr::new(net.hub_ip(), net.port);
    Daemon::start_full(
        role,
        peers,
        at,
        socket,
        kernel,
        Some(store),
        None,
        Notifier::default(),
        Some((hook, Repairs::new(marker))),
    )
}

fn start_node(net: &Net, cfg: NodeConfig) -> Daemon {
    start_node_on(net, cfg, ModelKernel::new(Ownership::default()))
}

fn start_node_on(net: &Net, cfg: NodeConfig, kernel: ModelKernel) -> Daemon {
    let socket = cfg.socket.clone();
    let at = SocketAddr::new(
        cfg.address.expect("the tests configure node addresses"),
        net.port,
    );
    let (store, mut loaded) = Store::open(&cfg.state_dir, &format!("node-{}", cfg.name)).unwrap();
    let (role, peers, _) =
        daemon::node_parts(&cfg, Ownership::default(), Some(&mut loaded)).unwrap();
    Daemon::start(role, peers, at, socket, kernel, Some(store))
}

/// A hub serving `nodes` nodes, of which node 0 runs (falling back to init
/// after `retries` unanswered hellos), once that node has rotated at least
/// once.
fn hub_and_node(net: &Net, nodes: usize, retries: u32) -> (Daemon, Daemon) {
    let hub = start_hub(net, hub_config(net, nodes, |i| net.node_ip(i)));
    let hub_at = SocketAddr::new(net.hub_ip(), net.port);
    let mut cfg = node_config(net, 0, hub_at);
    cfg.retries = retries;
    let node = start_node(net, cfg);
    wait_for("the node in sync", Duration::from_secs(10), || {
        node_row(&node).generation >= 2
    });
    (hub, node)
}

/// Polls `f` every 20 ms until it holds or `within` passes.
fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The generation, tx SPI and inits of row 0 of a node's status.
fn node_row(d: &Daemon) -> control::PeerStatus {
    d.status().peers.remove(0)
}

/// The kernel states of the hub and a node agree: the node sends on an SA
/// the hub accepts, and the hub sends on one the node accepts, each pointed
/// at by the sender's outbound policy.
fn kernels_agree(
    hub: &Daemon,
    node: &Daemon,
    hub_ip: IpAddr,
    node_ip: IpAddr,
) -> Result<(), String> {
    for (sender, receiver, dst) in [(node, hub, hub_ip), (hub, node, node_ip)] {
        let out: Vec<_> = sender
            .kernel
            .outbound()
            .into_iter()
            .filter(|(id, _)| id.selector.dst.addr == dst)
            .collect();
        if out.len() != 1 {
            return Err(format!(
                "{} outbound policies towards {dst}, want one",
                out.len()
            ));
        }
        let pol = &out[0].1;
        if pol.block {
            return Err(format!("outbound to {dst} is blocked"));
        }
        let id = SaId { dst, spi: pol.spi };
        if !sender.kernel.has_sa(id) {
            return Err(format!(
                "the sender's outbound SA {:#x} is missing",
                pol.spi
            ));
        }
        if !receiver.kernel.has_sa(id) {
            return Err(format!("the receiver does not accept {:#x}", pol.spi));
        }
    }
    Ok(())
}

/// Polls until the kernels agree, for at most `within`.
fn wait_kernels_agree(
    hub: &Daemon,
    node: &Daemon,
    ips: [IpAddr; 2],
    within: Duration,
) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        match kernels_agree(hub, node, ips[0], ips[1]) {
            Ok(()) => return Ok(()),
            Err(e) if t0.elapsed() > within => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

#[test]
fn hub_and_nodes_rotate_and_the_kernels_agree() {
    let _g = serial();
    let net = Net::new(31);
    let hub = start_hub(&net, hub_config(&net, 2, |i| net.node_ip(i)));
    let hub_at = SocketAddr::new(net.hub_ip(), net.port);
    let nodes: Vec<Daemon> = (0..2)
        .map(|i| start_node(&net, node_config(&net, i, hub_at)))
        .collect();
    wait_for(
        "three rotations on both nodes",
        Duration::from_secs(15),
        || nodes.iter().all(|n| node_row(n).generation >= 4),
    );
    // Rotations keep going; sample the kernels between them.
    for _ in 0..5 {
        std::thread::sleep(ROTATE / 3);
        let st = hub.status();
        for (i, n) in nodes.iter().enumerate() {
            let row = node_row(n);
            let hub_row = &st.peers[i];
            assert!(
                hub_row.generation.abs_diff(row.generation) <= 1,
                "never two generations apart"
            );
            assert_eq!(row.inits, 1, "one init, then rotations only");
        }
    }
    // The kernels agree once traffic settles on the current generation; a
    // rotation may be in flight, so allow a few tries.
    for (i, n) in nodes.iter().enumerate() {
        if let Err(e) = wait_kernels_agree(
            &hub,
            n,
            [net.hub_ip(), net.node_ip(i)],
            Duration::from_millis(500),
        ) {
            panic!("node {i}: kernels never agreed: {e}");
        }
    }
    // Old generations are deleted after their grace: the hub holds at most
    // two generations (in and out) per node plus those in grace.
    let per_node = hub.kernel.sa_count() / 2;
    assert!(per_node <= 8, "hub SAs per node: {per_node}");
    for n in nodes {
        n.stop().unwrap();
    }
    hub.stop().unwrap();
}

/// A UDP relay between one node and the hub that drops the next
/// `drop_keys` key messages (message type 3, UDP payload byte 1) going to
/// the node once armed.
struct Relay {
    drop_keys: Arc<AtomicU32>,
    dropped: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Node-facing socket at `front` (the node's `hub`), hub-facing socket
    /// at `back` (the node's address in the hub's config).
    fn start(front: SocketAddr, back: SocketAddr, hub: SocketAddr, node: SocketAddr) -> Relay {
        let front = Arc::new(UdpSocket::bind(front).unwrap());
        let back = Arc::new(UdpSocket::bind(back).unwrap());
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let drop_keys = Arc::new(AtomicU32::new(0));
        let dropped = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // node -> hub
        {
            let (front, back, stop) = (front.clone(), back.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = front.recv_from(&mut buf) {
                        let _ = back.send_to(&buf[..n], hub);
                    }
                }
            }));
        }
        // hub -> node, dropping key messages while armed
        {
            let (front, back, stop) = (front.clone(), back.clone(), stop.clone());
            let (drop_keys, dropped) = (drop_keys.clone(), dropped.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = back.recv_from(&mut buf) {
                        // After the 4-byte non-ESP marker: version, type.
                        let is_key = n > 5 && buf[5] == 3;
                        if is_key
                            && drop_keys
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| {
                                    k.checked_sub(1)
                                })
                                .is_ok()
                        {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let _ = front.send_to(&buf[..n], node);
                    }
                }
            }));
        }
        Relay {
            drop_keys,
            dropped,
            stop,
            threads,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn a_lost_key_is_resent_not_regenerated_and_the_node_never_reinitialises() {
    let _g = serial();
    let net = Net::new(32);
    // The node lives at .1.1; the hub believes it is at the relay's back
    // (.9.1), and the node believes the hub is at the relay's front (.9.2).
    let back = IpAddr::V4(Ipv4Addr::new(127, net.net, 9, 1));
    let front = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, net.net, 9, 2)), net.port);
    let hub_at = SocketAddr::new(net.hub_ip(), net.port);
    let node_at = SocketAddr::new(net.node_ip(0), net.port);
    let relay = Relay::start(front, SocketAddr::new(back, net.port), hub_at, node_at);
    let hub = start_hub(&net, hub_config(&net, 1, |_| back));
    let mut ncfg = node_config(&net, 0, front);
    // Three lost keys need three resends, each after a hello under the
    // previous generation: give the node time before it gives up.
    ncfg.retries = 8;
    let node = start_node(&net, ncfg);
    wait_for("the node in sync", Duration::from_secs(10), || {
        node_row(&node).generation >= 2
    });
    let before = node_row(&node);
    let hub_before = hub.status().peers[0].clone();
    relay.drop_keys.store(3, Ordering::Relaxed);
    wait_for(
        "three key messages dropped",
        Duration::from_secs(10),
        || relay.dropped.load(Ordering::Relaxed) == 3,
    );
    wait_for("the node catching up", Duration::from_secs(10), || {
        node_row(&node).generation > before.generation + 1
    });
    let after = node_row(&node);
    let hub_after = hub.status().peers[0].clone();
    assert_eq!(after.inits, before.inits, "caught up by resend, not init");
    assert!(
        hub_after.resends >= hub_before.resends + 2,
        "resends {} -> {}",
        hub_before.resends,
        hub_after.resends
    );
    assert_eq!(hub_after.inits, hub_before.inits);
    node.stop().unwrap();
    hub.stop().unwrap();
    drop(relay);
}

#[test]
fn a_refused_kernel_operation_is_retried_until_the_kernel_takes_it() {
    let _g = serial();
    let net = Net::new(33);
    let (hub, node) = hub_and_node(&net, 1, 3);
    // The hub's kernel refuses every SA add (ENOMEM) for a while.
    let refusing = Arc::new(AtomicBool::new(true));
    let r = refusing.clone();
    hub.kernel.refuse(Some(Box::new(move |op: &Op| {
        (matches!(op, Op::AddSa(_)) && r.load(Ordering::Relaxed)).then_some(libc::ENOMEM)
    })));
    wait_for(
        "the hub to count kernel errors",
        Duration::from_secs(10),
        || hub.status().kernel_errors > 0,
    );
    let (_, refused) = hub.kernel.counts();
    assert!(refused > 0);
    refusing.store(false, Ordering::Relaxed);
    // Retries start 1 s after the refusal and double; within a few seconds
    // every SA the hub's status names exists in its kernel.
    wait_for(
        "the refused SAs to be installed on retry",
        Duration::from_secs(10),
        || {
            let row = &hub.status().peers[0];
            row.rx_spis.iter().all(|spi| {
                hub.kernel.has_sa(SaId {
                    dst: net.hub_ip(),
                    spi: *spi,
                })
            }) && row.tx_spi.is_none_or(|spi| {
                hub.kernel.has_sa(SaId {
                    dst: net.node_ip(0),
                    spi,
                })
            })
        },
    );
    hub.kernel.refuse(None);
    node.stop().unwrap();
    hub.stop().unwrap();
}

#[test]
fn a_slow_status_reader_does_not_stall_a_hub_of_thousands() {
    let _g = serial();
    let net = Net::new(34);
    let nodes = 3000;
    // The node waits 5 s for an answer before it re-initialises: a busy
    // test machine must not turn slowness into an init this test does not
    // look for.
    let (hub, node) = hub_and_node(&net, nodes, 50);
    // A client asks for the status of 3000 nodes (~500 KB) and reads
    // nothing until told: the socket buffers fill and the connection's task
    // waits, the loop must not. If the loop waited with it, no rotation and
    // no other client's status would complete before the reader is released;
    // the test would then fail on the deadline, however fast the machine.
    let mut slow = std::os::unix::net::UnixStream::connect(&hub.socket).unwrap();
    std::io::Write::write_all(&mut slow, b"{\"cmd\":\"status\"}\n").unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        let _ = released.recv();
        drop(slow);
    });
    let g0 = node_row(&node).generation;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Meanwhile hellos are answered (rotations need them) and other
    // control clients are served, each a full status of every node.
    let mut queries = 0;
    loop {
        let st = hub.status();
        assert_eq!(st.peers.len(), nodes);
        queries += 1;
        let g = node_row(&node).generation;
        if g >= g0 + 4 && queries >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "with a status reader stalled, generation {g0} -> {g} in 30 s at {ROTATE:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = release.send(());
    assert_eq!(node_row(&node).inits, 1);
    reader.join().unwrap();
    node.stop().unwrap();
    hub.stop().unwrap();
}

#[test]
fn a_socket_full_of_junk_delays_neither_status_nor_grace_deletions() {
    let _g = serial();
    let net = Net::new(35);
    // The flood overflows the hub's socket buffer, where the node's hellos
    // queue with the junk: three lost in a row (300 ms) would send the node
    // back to init, a protocol answer to loss this test is not about. It
    // measures the hub's loop, so the node waits 5 s before giving up.
    let (hub, node) = hub_and_node(&net, 1, 50);
    let hub_at = SocketAddr::new(net.hub_ip(), net.port);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU32::new(0));
    let flooders: Vec<_> = (0..2)
        .map(|k| {
            let (stop, sent) = (stop.clone(), sent.clone());
            let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, net.net, 8, k + 1)), 0);
            std::thread::spawn(move || {
                let s = UdpSocket::bind(from).unwrap();
                // The non-ESP marker, version 1, type hello, an SPI nobody
                // has: the cheapest drop for the hub, so the flood outruns
                // it.
                let mut junk = [0u8; 68];
                junk[4] = 1;
                junk[5] = 1;
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(10) {
                    for _ in 0..64 {
                        if s.send_to(&junk, hub_at).is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut max_sas = 0;
    let g0 = hub.status().peers[0].generation;
    while t0.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let st = hub.status();
        slowest = slowest.max(t.elapsed());
        assert!(st.drops.values().sum::<u64>() > 0);
        max_sas = max_sas.max(hub.kernel.sa_count());
        std::thread::sleep(Duration::from_millis(100));
    }
    let g1 = hub.status().peers[0].generation;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let dropped: u64 = hub.status().drops.values().sum();
    assert!(
        dropped > 10_000,
        "the flood reached the hub: {dropped} dropped of {} sent",
        sent.load(Ordering::Relaxed)
    );
    assert!(
        slowest < Duration::from_secs(1),
        "status under flood took {slowest:?} at worst"
    );
    // Rotations every 400 ms with a 300 ms grace: at any instant the hub
    // holds the current and previous generation (in + out each) and at most
    // one more in grace; timers that starved would let them pile up.
    assert!(g1 > g0, "rotations went on under the flood ({g0} -> {g1})");
    assert_eq!(node_row(&node).inits, 1, "the node never re-initialised");
    assert!(max_sas <= 6, "hub SAs peaked at {max_sas}");
    // A node listens to its hub only: the same junk from elsewhere is shed
    // before the core and counted.
    let s = UdpSocket::bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, net.net, 8, 9)),
        0,
    ))
    .unwrap();
    for _ in 0..10 {
        s.send_to(&[1u8, 1, 0, 0], SocketAddr::new(net.node_ip(0), net.port))
            .unwrap();
    }
    wait_for(
        "the node to shed 10 datagrams",
        Duration::from_secs(5),
        || node.status().drops.get("wrong_source") == Some(&10),
    );
    node.stop().unwrap();
    hub.stop().unwrap();
}

/// The SPIs (in and out) of every SA in `k`, sorted.
fn sa_spis(k: &ModelKernel, ips: &[IpAddr]) -> Vec<(IpAddr, u32)> {
    let mut v: Vec<(IpAddr, u32)> = ips
        .iter()
        .flat_map(|ip| k.sa_spis_to(*ip).into_iter().map(move |s| (*ip, s)))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn a_stopped_daemon_leaves_its_kernel_state_and_a_restart_resumes_without_reinit() {
    let _g = serial();
    let net = Net::new(36);
    let (hub, node) = hub_and_node(&net, 1, 3);
    let ips = [net.hub_ip(), net.node_ip(0)];
    let hk = hub.kernel.clone();
    let before = hub.status().peers[0].clone();
    let cfg_net = &net;
    hub.stop().unwrap();
    // Stopped: every SA and the outbound policy stay, nothing is blocked.
    assert!(hk.sa_count() >= 2, "hub SAs kept: {}", hk.sa_count());
    let out = hk.outbound();
    assert_eq!(out.len(), 1);
    assert!(
        !out[0].1.block,
        "outbound still protected by an SA, not blocked"
    );
    let kept = sa_spis(&hk, &ips);
    // The node goes on (its hellos go unanswered for a moment).
    std::thread::sleep(Duration::from_millis(150));
    let hub = start_hub_on(
        cfg_net,
        hub_config(cfg_net, 1, |i| cfg_net.node_ip(i)),
        hk.clone(),
    );
    let row = hub.status().peers[0].clone();
    assert!(row.generation >= before.generation);
    assert_eq!(row.inits, before.inits, "restored, not re-initialised");
    // The restart took over the SAs it found rather than re-adding them.
    let adopted = sa_spis(&hk, &ips);
    assert!(
        kept.iter().filter(|k| adopted.contains(k)).count() >= 2,
        "kept {kept:?}, now {adopted:?}"
    );
    wait_for(
        "rotations after the restart",
        Duration::from_secs(10),
        || node_row(&node).generation >= before.generation + 2,
    );
    assert_eq!(node_row(&node).inits, 1, "the node never re-initialised");
    assert_eq!(hub.status().peers[0].inits, before.inits);
    // And the node restarts the same way.
    let nk = node.kernel.clone();
    let n_before = node_row(&node);
    node.stop().unwrap();
    assert!(nk.sa_count() >= 2);
    let mut ncfg = node_config(&net, 0, SocketAddr::new(net.hub_ip(), net.port));
    ncfg.retries = 3;
    let node = start_node_on(&net, ncfg, nk.clone());
    let n_row = node_row(&node);
    assert!(n_row.generation >= n_before.generation);
    assert_eq!(
        n_row.inits, n_before.inits,
        "node restored, not re-initialised"
    );
    wait_for(
        "rotations after the node's restart",
        Duration::from_secs(10),
        || node_row(&node).generation >= n_before.generation + 2,
    );
    assert_eq!(node_row(&node).inits, 1);
    node.stop().unwrap();
    hub.stop().unwrap();
}

#[test]
fn a_restart_that_serves_first_still_repairs_what_went_missing_while_stopped() {
    let _g = serial();
    let net = Net::new(38);
    let cfg = slow_hub_config;
    let hub = start_hub(&net, cfg(&net));
    let node = start_node(
        &net,
        node_config(&net, 0, SocketAddr::new(net.hub_ip(), net.port)),
    );
    wait_for("the node in sync", Duration::from_secs(10), || {
        node_row(&node).tx_spi.is_some() && hub.status().peers[0].tx_spi.is_some()
    });
    let hk = hub.kernel.clone();
    hub.stop().unwrap();
    // While the hub is down its inbound SA of the current generation goes:
    // its policies stay, so the restart serves before it compares.
    let spi = hk.sa_spis_to(net.hub_ip())[0];
    assert!(hk.delete_sa(SaId {
        dst: net.hub_ip(),
        spi
    }));
    let hub = start_hub_on(&net, cfg(&net), hk.clone());
    let ips = [net.hub_ip(), net.node_ip(0)];
    if let Err(e) = wait_kernels_agree(&hub, &node, ips, Duration::from_millis(1500)) {
        panic!("the SA lost while stopped was not repaired after the restart: {e}");
    }
    assert_eq!(node_row(&node).inits, 1, "repaired, never re-initialised");
    assert_eq!(hub.status().peers[0].inits, 1);
    node.stop().unwrap();
    hub.stop().unwrap();
}

#[test]
fn flushed_sas_and_policies_are_repaired_without_reinit() {
    let _g = serial();
    let net = Net::new(37);
    // No timer rotation during the test: only the reconcile pass can repair.
    let slow = Duration::from_secs(600);
    let mut hcfg = hub_config(&net, 1, |i| net.node_ip(i));
    hcfg.rotate_interval = slow;
    hcfg.nodes[0].rotate_interval = slow;
    let hub = start_hub(&net, hcfg);
    let node = start_node(
        &net,
        node_config(&net, 0, SocketAddr::new(net.hub_ip(), net.port)),
    );
    wait_for("the node in sync", Duration::from_secs(10), || {
        node_row(&node).tx_spi.is_some() && hub.status().peers[0].tx_spi.is_some()
    });
    let ips = [net.hub_ip(), net.node_ip(0)];
    for (who, k) in [("hub", hub.kernel.clone()), ("node", node.kernel.clone())] {
        let gen_before = hub.status().peers[0].generation;
        k.flush_sas();
        assert_eq!(k.sa_count(), 0);
        let t0 = Instant::now();
        // The pair converges on fresh keys (a flushed sending SA is never
        // re-added with its old key: the peer rotates instead).
        wait_for(
            &format!("the {who} to rotate onto fresh keys"),
            Duration::from_millis(1500),
            || hub.status().peers[0].generation > gen_before,
        );
        if let Err(e) = wait_kernels_agree(&hub, &node, ips, Duration::from_millis(1500)) {
            panic!("{who}: SAs not repaired within 1.5 s of a state flush: {e}");
        }
        eprintln!("{who}: state flush repaired in {:?}", t0.elapsed());
        k.flush_policies();
        assert_eq!(k.policy_count(), 0);
        let t0 = Instant::now();
        wait_for(
            &format!("the {who}'s policies back"),
            Duration::from_secs(1),
            || k.outbound().len() == 1 && k.policy_count() >= 2,
        );
        eprintln!("{who}: policy flush repaired in {:?}", t0.elapsed());
        if let Err(e) = wait_kernels_agree(&hub, &node, ips, Duration::from_secs(1)) {
            panic!("{who}: kernels disagree after the policy repair: {e}");
        }
    }
    assert_eq!(node_row(&node).inits, 1, "repaired, never re-initialised");
    assert_eq!(hub.status().peers[0].inits, 1);
    node.stop().unwrap();
    hub.stop().unwrap();
}

/// Writes the hub's configuration for `nodes` (name, address, key index)
/// and their key files into the test's directory; returns its path.
fn write_hub_toml(net: &Net, nodes: &[(&str, IpAddr, usize)], port: u16) -> PathBuf {
    let dir = net.dir.path();
    let mut t = format!(
        "[hub]\naddress = \"{}\"\nport = {port}\nrotate_interval = \"1s\"\ngrace = \"300ms\"\nsocket = \"{}\"\nstate_dir = \"{}\"\n",
        net.hub_ip(),
        net.sock("hub").display(),
        net.state_dir().display()
    );
    for (name, addr, k) in nodes {
        let key = dir.join(format!("{name}.key"));
        let _ = std::fs::remove_file(&key);
        rotor::keyfile::write_key(&key, &psk(*k)).unwrap();
        t.push_str(&format!(
            "\n[[node]]\nname = \"{name}\"\naddress = \"{addr}\"\npsk_file = \"{}\"\n",
            key.display()
        ));
    }
    let path = dir.join("hub.toml");
    std::fs::write(&path, t).unwrap();
    path
}

fn reload(d: &Daemon) -> anyhow::Result<control::ReloadReply> {
    let v = control::call(&d.socket, &Request::Reload)?;
    Ok(serde_json::from_value(v)?)
}

#[test]
fn a_reload_adds_and_removes_nodes_and_the_others_notice_nothing() {
    let _g = serial();
    let net = Net::new(38);
    let path = write_hub_toml(
        &net,
        &[("n0", net.node_ip(0), 0), ("n1", net.node_ip(1), 1)],
        net.port,
    );
    let cfg = rotor::config::load_hub(&path).unwrap();
    let fixed = daemon::reload::HubFixed::of(&cfg);
    let own = Ownership::default();
    let (store, mut loaded) = Store::open(&cfg.state_dir, "hub").unwrap();
    let (mut role, peers, _) = daemon::hub_parts(cfg, own, Some(&mut loaded)).unwrap();
    role.set_source(daemon::reload::Source {
        path: path.clone(),
        own,
        fixed,
    });
    drop(loaded);
    let hub_at = SocketAddr::new(net.hub_ip(), net.port);
    let hub = Daemon::start(
        role,
        peers,
        hub_at,
        net.sock("hub"),
        ModelKernel::new(own),
        Some(store),
    );
    let n0 = start_node(&net, node_config(&net, 0, hub_at));
    let n1 = start_node(&net, node_config(&net, 1, hub_at));
    wait_for("both nodes in sync", Duration::from_secs(10), || {
        node_row(&n0).generation >= 2 && node_row(&n1).generation >= 2
    });
    let before = node_row(&n0);
    // A configuration with an error changes nothing.
    std::fs::write(&path, "[hub]\naddress = ").unwrap();
    let e = reload(&hub).unwrap_err().to_string();
    assert!(e.contains("the daemon refused"), "{e}");
    assert_eq!(hub.status().peers.len(), 2);
    // Neither does a change that needs a restart.
    write_hub_toml(
        &net,
        &[("n0", net.node_ip(0), 0), ("n1", net.node_ip(1), 1)],
        net.port + 1,
    );
    let e = reload(&hub).unwrap_err().to_string();
    assert!(e.contains("hub.port changed"), "{e}");
    // n1 goes, n2 (never started) comes, n0 stays as it is.
    write_hub_toml(
        &net,
        &[("n0", net.node_ip(0), 0), ("n2", net.node_ip(2), 2)],
        net.port,
    );
    let r = reload(&hub).unwrap();
    assert_eq!(
        (r.added, r.removed, r.changed, r.unchanged),
        (vec!["n2".to_string()], vec!["n1".to_string()], vec![], 1)
    );
    let st = hub.status();
    let names: Vec<&str> = st.peers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["n0", "n2"]);
    assert_eq!(st.peers[1].state, "init");
    // n1's SAs and policies are gone from the hub's kernel, n2 has its
    // (blocking) outbound policy.
    wait_for("n1's objects removed", Duration::from_secs(2), || {
        hub.kernel.sa_spis_to(net.node_ip(1)).is_empty()
            && hub
                .kernel
                .outbound()
                .iter()
                .all(|(id, _)| id.selector.dst.addr != net.node_ip(1))
    });
    assert!(
        hub.kernel
            .outbound()
            .iter()
            .any(|(id, p)| id.selector.dst.addr == net.node_ip(2) && p.block)
    );
    // n0 rotates on without a hitch.
    wait_for(
        "n0 rotating after the reload",
        Duration::from_secs(10),
        || node_row(&n0).generation >= before.generation + 2,
    );
    assert_eq!(node_row(&n0).inits, 1, "n0 never re-initialised");
    assert_eq!(hub.status().peers[0].inits, 1);
    n1.stop().unwrap();
    n0.stop().unwrap();
    hub.stop().unwrap();
}

#[test]
fn a_node_refuses_to_rotate_another_node_and_names_itself() {
    let _g = serial();
    let net = Net::new(39);
    let (hub, node) = hub_and_node(&net, 2, 3);
    let rotate = |socket: &Path, node: Option<&str>, all: bool| {
        control::call(
            socket,
            &Request::Rotate {
                node: node.map(str::to_string),
                all,
            },
        )
    };
    let e = rotate(&node.socket, Some("n1"), false).expect_err("another node's name");
    let e = format!("{e:#}");
    assert!(
        e.contains("this is node \"n0\"") && e.contains("--node \"n0\""),
        "{e}"
    );
    for (name, all) in [(Some("n0"), false), (None, true)] {
        let v = rotate(&node.socket, name, all).expect("its own rotation");
        let r: control::RotateReply = serde_json::from_value(v).expect("rotate reply");
        assert_eq!((r.role.as_str(), r.rotating), ("node", 1));
    }
    let v = rotate(&hub.socket, None, true).expect("the hub rotates all");
    let r: control::RotateReply = serde_json::from_value(v).expect("rotate reply");
    assert_eq!((r.role.as_str(), r.rotating), ("hub", 2));
    let e = rotate(&hub.socket, Some("n9"), false).expect_err("no such node");
    assert!(format!("{e:#}").contains("no node named \"n9\""), "{e:#}");
    node.stop().unwrap();
    hub.stop().unwrap();
}

/// One HTTP GET of `path` on `at`: (status line, body).
fn http_get(at: SocketAddr, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(at).expect("connect to the metrics listener");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: rotor\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).expect("read the answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(len, body.len(), "Content-Length matches the body");
    (status, body.to_string())
}

/// The value of the sample `key` (name and labels) in an exposition.
fn sample(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(k, _)| *k == key))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn a_scrape_shows_the_fleet_in_prometheus_text() {
    let _g = serial();
    let net = Net::new(40);
    let cfg = hub_config(&net, 2, |i| net.node_ip(i));
    let socket = cfg.socket.clone();
    let (store, mut loaded) = Store::open(&cfg.state_dir, "hub").unwrap();
    let (role, peers, _) = daemon::hub_parts(cfg, Ownership::default(), Some(&mut loaded)).unwrap();
    drop(loaded);
    let listener = std::net::TcpListener::bind((net.hub_ip(), 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let at = listener.local_addr().unwrap();
    let hub_at = SocketAddr::new(net.hub_ip(), net.port);
    let hub = Daemon::start_with_metrics(
        role,
        peers,
        hub_at,
        socket,
        ModelKernel::new(Ownership::default()),
        Some(store),
        listener,
    );
    let (_, before) = http_get(at, "/metrics");
    assert_eq!(
        sample(&before, "rotor_peers{state=\"init\"}"),
        Some(2.0),
        "{before}"
    );
    assert_eq!(sample(&before, "rotor_rotations_total"), Some(0.0));
    let n0 = start_node(&net, node_config(&net, 0, hub_at));
    let n1 = start_node(&net, node_config(&net, 1, hub_at));
    wait_for("both nodes rotated", Duration::from_secs(10), || {
        node_row(&n0).generation >= 3 && node_row(&n1).generation >= 3
    });
    let (status, text) = http_get(at, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let rotations = sample(&text, "rotor_rotations_total").expect("rotations");
    let st = hub.status();
    let table: u64 = st.peers.iter().map(|p| p.rotations).sum();
    assert!(
        rotations >= 4.0 && rotations <= table as f64,
        "{rotations} vs {table}"
    );
    assert_eq!(sample(&text, "rotor_inits_total"), Some(2.0), "{text}");
    assert!(sample(&text, "rotor_control_datagrams_received_total").unwrap_or(0.0) > 0.0);
    assert!(sample(&text, "rotor_control_datagrams_sent_total").unwrap_or(0.0) > 0.0);
    let lag = sample(&text, "rotor_rotation_lag_seconds").expect("lag");
    assert!(lag < 5.0, "keys rotate every second here: lag {lag}");
    assert_eq!(sample(&text, "rotor_kernel_errors_total"), Some(0.0));
    let in_sync = sample(&text, "rotor_peers{state=\"in_sync\"}").unwrap_or(0.0)
        + sample(&text, "rotor_peers{state=\"awaiting_confirm\"}").unwrap_or(0.0);
    assert_eq!(in_sync, 2.0, "{text}");
    for n in ["n0", "n1"] {
        let key = format!("rotor_node_rotations_total{{node=\"{n}\"}}");
        assert!(sample(&text, &key).unwrap_or(0.0) >= 2.0, "{key} in {text}");
    }
    let (status, _) = http_get(at, "/");
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    n0.stop().unwrap();
    n1.stop().unwrap();
    hub.stop().unwrap();
}

/// The next notification on `manager` other than a watchdog ping (whose
/// arrival times go to `pings`), within `within`.
fn next_notification(
    manager: &UnixDatagram,
    pings: &mut Vec<Instant>,
    within: Duration,
) -> Option<String> {
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    while t0.elapsed() < within {
        let Ok(n) = manager.recv(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg == "WATCHDOG=1" {
            pings.push(Instant::now());
        } else {
            return Some(msg);
        }
    }
    None
}

#[test]
fn the_service_manager_hears_ready_reloads_watchdog_pings_and_stopping() {
    let _g = serial();
    let net = Net::new(41);
    let nodes = [("n0", net.node_ip(0), 0)];
    let path = write_hub_toml(&net, &nodes, net.port);
    let cfg = rotor::config::load_hub(&path).unwrap();
    let fixed = daemon::reload::HubFixed::of(&cfg);
    let own = Ownership::default();
    let (store, mut loaded) = Store::open(&cfg.state_dir, "hub").unwrap();
    let (mut role, peers, _) = daemon::hub_parts(cfg, own, Some(&mut loaded)).unwrap();
    role.set_source(daemon::reload::Source {
        path: path.clone(),
        own,
        fixed,
    });
    drop(loaded);
    let manager_at = net.dir.path().join("notify");
    let manager = UnixDatagram::bind(&manager_at).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    // A 400 ms watchdog: the loop pings every 200 ms.
    let notify = Notifier::new(
        Some(manager_at.as_os_str()),
        Some(std::ffi::OsStr::new("400000")),
    )
    .unwrap();
    let hub = Daemon::start_notifying(
        role,
        peers,
        SocketAddr::new(net.hub_ip(), net.port),
        net.sock("hub"),
        ModelKernel::new(own),
        Some(store),
        notify,
    );
    let mut pings = Vec::new();
    let wait = Duration::from_secs(5);
    assert_eq!(
        next_notification(&manager, &mut pings, wait).as_deref(),
        Some("READY=1")
    );
    // READY=1 came after the start-up reconcile: n0's policies are in.
    assert!(
        hub.kernel
            .outbound()
            .iter()
            .any(|(id, _)| id.selector.dst.addr == net.node_ip(0))
    );
    // An idle hub (its node never runs) still pings, within every period.
    assert_eq!(
        next_notification(&manager, &mut pings, Duration::from_secs(2)),
        None
    );
    assert!(pings.len() >= 5, "{} pings in 2 s", pings.len());
    let widest = pings.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        widest < Duration::from_millis(400),
        "{widest:?} between pings"
    );
    // A reload, taken or refused, is bracketed by RELOADING=1 (with the
    // monotonic clock) and READY=1.
    for (toml, taken) in [(None, true), (Some("[hub]\naddress = "), false)] {
        if let Some(t) = toml {
            std::fs::write(&path, t).unwrap();
        }
        assert_eq!(reload(&hub).is_ok(), taken);
        let msg = next_notification(&manager, &mut pings, wait).unwrap();
        let usec = msg
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|u| u.parse::<u64>().ok());
        assert!(usec.is_some_and(|u| u > 0), "{msg:?}");
        assert_eq!(
            next_notification(&manager, &mut pings, wait).as_deref(),
            Some("READY=1")
        );
    }
    hub.stop().unwrap();
    assert_eq!(
        next_notification(&manager, &mut pings, wait).as_deref(),
        Some("STOPPING=1")
    );
}

/// Bytes in the files of `dir`: what the file store has written.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// What a leader's kernel and store held when it took its service address.
#[derive(Debug)]
struct AtAddress {
    store_bytes: u64,
    sas: usize,
    outbound_blocked: bool,
    marker: bool,
}

fn rotate_node(hub: &Daemon, name: &str) {
    control::call(
        &hub.socket,
        &Request::Rotate {
            node: Some(name.into()),
            all: false,
        },
    )
    .expect("rotate");
}

/// A leader on a host whose kernel lacks its SAs (a standby taking over)
/// takes its address once the SAs are re-installed and before any record
/// of the repair is written; it then rotates the node and records it, and
/// removes its marker. A later start on that kernel that finds a marker
/// left behind rotates every node, though nothing is missing.
#[test]
fn a_takeover_serves_before_recording_its_repairs_and_settles_them_after() {
    let _g = serial();
    let net = Net::new(42);
    // Every rotation seen is the test's or the repair's.
    let cfg = slow_hub_config;
    let hub_at = SocketAddr::new(net.hub_ip(), net.port);
    let ips = [net.hub_ip(), net.node_ip(0)];
    let hub = start_hub(&net, cfg(&net));
    let node = start_node(&net, node_config(&net, 0, hub_at));
    wait_for("the node in sync", Duration::from_secs(10), || {
        hub.status().peers[0].state == "in_sync"
    });
    rotate_node(&hub, "n0");
    wait_for("the rotation confirmed", Duration::from_secs(10), || {
        let row = hub.status().peers[0].clone();
        row.generation == 2 && row.state == "in_sync"
    });
    let before = hub.status().peers[0].clone();
    let (prev, latest) = (before.rx_spis[0], before.rx_spis[1]);
    assert_eq!(before.tx_spi, Some(prev));
    hub.stop().unwrap();
    let written = dir_bytes(&net.state_dir());

    let fresh = ModelKernel::new(Ownership::default());
    let marker = net.dir.path().join("hub.repairing");
    let seen: Arc<Mutex<Option<AtAddress>>> = Arc::default();
    let hook: BeforeFirstSend = {
        let (seen, k, m, dir) = (
            Arc::clone(&seen),
            fresh.clone(),
            marker.clone(),
            net.state_dir(),
        );
        Box::new(move || {
            *seen.lock().unwrap() = Some(AtAddress {
                store_bytes: dir_bytes(&dir),
                sas: k.sa_count(),
                outbound_blocked: k.outbound().iter().all(|(_, p)| p.block),
                marker: m.exists(),
            });
            Ok(())
        })
    };
    let hub = start_hub_leading(&net, cfg(&net), fresh.clone(), hook, marker.clone());
    wait_for("the repair settled", Duration::from_secs(10), || {
        !marker.exists() && hub.status().peers[0].tx_spi == Some(latest)
    });
    let at = seen.lock().unwrap().take().expect("the hook ran");
    assert_eq!(
        at.store_bytes, written,
        "no record written before the address: {at:?}"
    );
    assert_eq!(
        at.sas, 3,
        "both inbound SAs and the unused outbound one re-installed: {at:?}"
    );
    assert!(
        at.outbound_blocked,
        "the SA sent on is not re-added: {at:?}"
    );
    assert!(at.marker, "the marker was durable before the re-installs");
    assert!(dir_bytes(&net.state_dir()) > written, "the settle recorded");
    wait_kernels_agree(&hub, &node, ips, Duration::from_secs(5)).unwrap();
    let after = hub.status().peers[0].clone();
    assert_eq!(after.generation, 3, "one rotation: the repair's");
    assert_eq!(after.inits, before.inits);
    assert_eq!(node_row(&node).inits, 1, "the node never re-initialised");
    hub.stop().unwrap();

    // A marker left on this kernel (a crash before the settle ended): the
    // next start rotates the node though its SAs are all there.
    std::fs::write(&marker, b"left behind\n").unwrap();
    let sas = fresh.sa_count();
    let hub = start_hub_leading(
        &net,
        cfg(&net),
        fresh.clone(),
        Box::new(|| Ok(())),
        marker.clone(),
    );
    wait_for("the forced rotation", Duration::from_secs(10), || {
        let row = hub.status().peers[0].clone();
        !marker.exists() && row.generation == 4 && row.state == "in_sync"
    });
    assert!(sas >= 4, "the kernel kept the SAs: {sas}");
    wait_kernels_agree(&hub, &node, ips, Duration::from_secs(5)).unwrap();
    assert_eq!(hub.status().peers[0].inits, before.inits);
    assert_eq!(node_row(&node).inits, 1);
    node.stop().unwrap();
    hub.stop().unwrap();
}
