//! `rotor-xfrmctl`: drives rotor's XFRM layer by hand, for the real-kernel
//! tests in `netns-tests/` and for operators debugging a host.
//!
//! It takes keys on the command line (`--key HEX`), which other local users can
//! read from /proc: use it with test keys only. The daemon never does this.

use std::io::Read;
use std::net::{IpAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rotor_xfrm::{
    AeadKey, Capability, Family, IpNet, Lifetimes, Mode, Op, OpResult, Ownership, PolicyDir,
    PolicyId, PolicySelector, PolicySpec, SaId, SaSpec, UdpEncap, Xfrm, bypass_ipsec, probe_esp,
};

#[derive(Parser)]
#[command(
    name = "rotor-xfrmctl",
    about = "Install, switch, read back and remove rotor-owned ESP SAs and policies (test and debug tool)",
    long_about = "Drives rotor's batched XFRM netlink layer directly. Every object it installs \
                  carries a reqid from rotor's range (the one `rotor` gives peer number --peer), so `remove-owned` finds it \
                  again and leaves other software's SAs and policies alone. Keys given with --key \
                  are visible to other local users: use test keys only."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Add, update or delete one SA.
    Sa {
        #[command(subcommand)]
        op: SaCmd,
    },
    /// Add, update or delete one policy.
    Policy {
        #[command(subcommand)]
        op: PolicyCmd,
    },
    /// Apply every line of FILE (or stdin with "-") as one batch; each line is
    /// an `sa ...` or `policy ...` command as on this command line.
    Batch {
        /// File with one command per line; `#` starts a comment.
        file: String,
    },
    /// Print the kernel's SAs (`sa`) or policies (`policy`), one per line.
    Dump {
        /// What to dump.
        what: DumpWhat,
        /// Only rotor-owned objects.
        #[arg(long)]
        owned: bool,
    },
    /// Delete every rotor-owned SA and policy in this namespace, nothing else.
    RemoveOwned,
    /// Check that this kernel can create rotor's ESP SAs (leaves nothing behind).
    Probe,
    /// Send COUNT small UDP datagrams to ADDR:PORT, optionally from a socket
    /// exempted from IPsec (the control channel's bypass).
    UdpSend {
        /// Destination.
        #[arg(long)]
        to: std::net::SocketAddr,
        /// Datagrams to send.
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// Exempt the socket from IPsec policies.
        #[arg(long)]
        bypass: bool,
    },
    /// Receive UDP datagrams on ADDR:PORT until COUNT arrive or TIMEOUT_MS
    /// passes; print how many arrived.
    UdpRecv {
        /// Address and port to bind.
        #[arg(long)]
        bind: std::net::SocketAddr,
        /// Stop after this many datagrams.
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Exempt the socket from IPsec policies.
        #[arg(long)]
        bypass: bool,
    },
    /// Install COUNT SAs in batched writes, dump them back, delete them; print
    /// SAs/second for each step.
    Bench {
        /// Number of SAs.
        #[arg(long, default_value_t = 10_000)]
        count: u32,
        /// Outer source address.
        #[arg(long)]
        src: IpAddr,
        /// Outer destination address of the first SA; each further SA goes to
        /// the next address, as a hub's SAs go to many nodes.
        #[arg(long)]
        dst: IpAddr,
        /// First SPI.
        #[arg(long, default_value = "0x10000", value_parser = parse_u32)]
        first_spi: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DumpWhat {
    Sa,
    Policy,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Transport,
    Tunnel,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Transport => Mode::Transport,
            ModeArg::Tunnel => Mode::Tunnel,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum DirArg {
    In,
    Out,
    Fwd,
}

impl From<DirArg> for PolicyDir {
    fn from(d: DirArg) -> PolicyDir {
        match d {
            DirArg::In => PolicyDir::In,
            DirArg::Out => PolicyDir::Out,
            DirArg::Fwd => PolicyDir::Fwd,
        }
    }
}

#[derive(Subcommand)]
enum SaCmd {
    /// Add an SA (fails if dst+spi exists).
    Add(SaArgs),
    /// Update an existing SA's lifetimes/encapsulation (the kernel never changes a key in place).
    Update(SaArgs),
    /// Delete an SA.
    Del {
        /// Outer destination address.
        #[arg(long)]
        dst: IpAddr,
        /// SPI (decimal or 0x-hex).
        #[arg(long, value_parser = parse_u32)]
        spi: u32,
    },
}

#[derive(Args)]
struct SaArgs {
    /// Outer source address.
    #[arg(long)]
    src: IpAddr,
    /// Outer destination address.
    #[arg(long)]
    dst: IpAddr,
    /// SPI (decimal or 0x-hex), > 255.
    #[arg(long, value_parser = parse_u32)]
    spi: u32,
    /// Peer number: the reqid is rotor's base + PEER.
    #[arg(long, default_value_t = 0)]
    peer: u32,
    /// AES key + 4-byte salt in hex (40 or 72 hex digits). Test keys only.
    #[arg(long)]
    key: String,
    /// Transport or tunnel.
    #[arg(long, value_enum, default_value = "transport")]
    mode: ModeArg,
    /// Anti-replay window (packets, <= 4096).
    #[arg(long, default_value_t = 1024)]
    replay_window: u32,
    /// Disable extended sequence numbers.
    #[arg(long)]
    no_esn: bool,
    /// ESP-in-UDP encapsulation as SPORT:DPORT.
    #[arg(long)]
    encap: Option<String>,
    /// Hard lifetime in seconds (soft = 90 % of it).
    #[arg(long)]
    lifetime: Option<u64>,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Add a policy (fails if it exists).
    Add(PolicyArgs),
    /// Add or atomically replace a policy (e.g. to switch the outbound SPI).
    Update(PolicyArgs),
    /// Delete a policy.
    Del {
        /// Direction.
        #[arg(long, value_enum)]
        dir: DirArg,
        /// Source prefix.
        #[arg(long, value_parser = parse_net)]
        src: IpNet,
        /// Destination prefix.
        #[arg(long, value_parser = parse_net)]
        dst: IpNet,
        /// IP protocol number.
        #[arg(long)]
        proto: Option<u8>,
    },
}

#[derive(Args)]
struct PolicyArgs {
    /// Direction.
    #[arg(long, value_enum)]
    dir: DirArg,
    /// Source prefix of the traffic.
    #[arg(long, value_parser = parse_net)]
    src: IpNet,
    /// Destination prefix of the traffic.
    #[arg(long, value_parser = parse_net)]
    dst: IpNet,
    /// IP protocol number (default: any).
    #[arg(long)]
    proto: Option<u8>,
    /// SPI the template pins (0 = any SA with the reqid).
    #[arg(long, default_value = "0", value_parser = parse_u32)]
    spi: u32,
    /// Peer number: the reqid is rotor's base + PEER.
    #[arg(long, default_value_t = 0)]
    peer: u32,
    /// Transport or tunnel.
    #[arg(long, value_enum, default_value = "transport")]
    mode: ModeArg,
    /// Tunnel outer source address.
    #[arg(long)]
    tmpl_src: Option<IpAddr>,
    /// Tunnel outer destination address.
    #[arg(long)]
    tmpl_dst: Option<IpAddr>,
    /// Priority (lower wins).
    #[arg(long, default_value_t = 1000)]
    priority: u32,
    /// Drop matching traffic instead of protecting it (fail closed).
    #[arg(long)]
    block: bool,
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a 32-bit number: {e}"))
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    IpNet::parse(s).ok_or_else(|| format!("{s:?} is not ADDRESS[/PREFIX]"))
}

fn hex_key(s: &str) -> Result<AeadKey, String> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("--key must be hex digits".into());
    }
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
        .collect();
    let n = bytes.len();
    AeadKey::new(bytes)
        .ok_or_else(|| format!("--key must be 20 or 36 bytes (AES key + 4-byte salt), got {n}"))
}

fn reqid(own: &Ownership, peer: u32) -> Result<u32, String> {
    own.reqid_for(peer).ok_or_else(|| {
        format!(
            "--peer {peer} is outside rotor's reqid range ({} peers)",
            own.len()
        )
    })
}

fn sa_spec(own: &Ownership, a: &SaArgs) -> Result<SaSpec, String> {
    let encap = match &a.encap {
        None => None,
        Some(s) => {
            let (sp, dp) = s.split_once(':').ok_or("--encap must be SPORT:DPORT")?;
            Some(UdpEncap {
                sport: sp.parse().map_err(|_| "bad --encap source port")?,
                dport: dp.parse().map_err(|_| "bad --encap destination port")?,
            })
        }
    };
    Ok(SaSpec {
        src: a.src,
        dst: a.dst,
        spi: a.spi,
        reqid: reqid(own, a.peer)?,
        mode: a.mode.into(),
        key: hex_key(&a.key)?,
        replay_window: a.replay_window,
        esn: !a.no_esn,
        encap,
        lifetimes: Lifetimes {
            add_seconds: a.lifetime.map(|h| (h * 9 / 10, h)),
            ..Lifetimes::default()
        },
        selector: None,
    })
}

fn policy_spec(own: &Ownership, a: &PolicyArgs) -> Result<PolicySpec, String> {
    let tmpl_endpoints = match (a.tmpl_src, a.tmpl_dst) {
        (Some(s), Some(d)) => Some((s, d)),
        (None, None) => None,
        _ => return Err("--tmpl-src and --tmpl-dst go together".into()),
    };
    Ok(PolicySpec {
        id: PolicyId {
            dir: a.dir.into(),
            selector: PolicySelector {
                src: a.src,
                dst: a.dst,
                proto: a.proto,
                sport: None,
            },
        },
        priority: a.priority,
        tmpl_endpoints,
        spi: a.spi,
        reqid: reqid(own, a.peer)?,
        mode: a.mode.into(),
        block: a.block,
    })
}

/// Turns an `sa`/`policy` command into an operation.
fn to_op(own: &Ownership, cmd: &Cmd) -> Result<Op, String> {
    Ok(match cmd {
        Cmd::Sa { op: SaCmd::Add(a) } => Op::AddSa(sa_spec(own, a)?),
        Cmd::Sa {
            op: SaCmd::Update(a),
        } => Op::UpdateSa(sa_spec(own, a)?),
        Cmd::Sa {
            op: SaCmd::Del { dst, spi },
        } => Op::DeleteSa(SaId {
            dst: *dst,
            spi: *spi,
        }),
        Cmd::Policy {
            op: PolicyCmd::Add(a),
        } => Op::AddPolicy(policy_spec(own, a)?),
        Cmd::Policy {
            op: PolicyCmd::Update(a),
        } => Op::UpdatePolicy(policy_spec(own, a)?),
        Cmd::Policy {
            op:
                PolicyCmd::Del {
                    dir,
                    src,
                    dst,
                    proto,
                },
        } => Op::DeletePolicy(PolicyId {
            dir: (*dir).into(),
            selector: PolicySelector {
                src: *src,
                dst: *dst,
                proto: *proto,
                sport: None,
            },
        }),
        _ => return Err("only `sa` and `policy` commands can be batched".into()),
    })
}

fn report(ops: &[Op], results: &[OpResult]) -> bool {
    let mut ok = true;
    for (op, r) in ops.iter().zip(results) {
        match r {
            OpResult::Done => {}
            OpResult::Failed(e) => {
                eprintln!("rotor-xfrmctl: {e}");
                ok = false;
            }
            OpResult::Invalid(e) => {
                eprintln!("rotor-xfrmctl: {op}: {e}");
                ok = false;
            }
            OpResult::Unknown => {
                eprintln!("rotor-xfrmctl: {op}: outcome unknown (reply lost)");
                ok = false;
            }
            OpResult::Foreign { reqid } => {
                eprintln!(
                    "rotor-xfrmctl: {op}: not sent: the SA there has reqid {reqid}, not ours"
                );
                ok = false;
            }
        }
    }
    ok
}

fn random_key() -> std::io::Result<AeadKey> {
    let mut b = vec![0u8; 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    AeadKey::new(b).ok_or_else(|| std::io::Error::other("key length"))
}

/// The address `i` places after `base`.
fn nth_addr(base: IpAddr, i: u32) -> IpAddr {
    match base {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(i).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(u128::from(i)).into()),
    }
}

fn bench(x: &mut Xfrm, count: u32, src: IpAddr, dst: IpAddr, first_spi: u32) -> Result<(), String> {
    let own = *x.ownership();
    let reqid = own.base();
    let mut ops = Vec::with_capacity(count as usize);
    for i in 0..count {
        ops.push(Op::AddSa(SaSpec {
            src,
            dst: nth_addr(dst, i),
            spi: first_spi + i,
            reqid,
            mode: Mode::Transport,
            key: random_key().map_err(|e| format!("reading /dev/urandom: {e}"))?,
            replay_window: 1024,
            esn: true,
            encap: None,
            lifetimes: Lifetimes::default(),
            selector: None,
        }));
    }
    let t = Instant::now();
    let results = x.apply(&ops).map_err(|e| e.to_string())?;
    let add_s = t.elapsed().as_secs_f64();
    if !report(&ops, &results) {
        return Err("some SAs were not installed".into());
    }
    let t = Instant::now();
    let dumped = x.dump_sas().map_err(|e| e.to_string())?;
    let dump_s = t.elapsed().as_secs_f64();
    let ours = dumped
        .iter()
        .filter(|s| {
            s.reqid == reqid
                && s.id.spi >= first_spi
                && s.id.spi < first_spi + count
                && s.id.dst == nth_addr(dst, s.id.spi - first_spi)
        })
        .count();
    let dels: Vec<Op> = (0..count)
        .map(|i| {
            Op::DeleteSa(SaId {
                dst: nth_addr(dst, i),
                spi: first_spi + i,
            })
        })
        .collect();
    let t = Instant::now();
    let results = x.apply(&dels).map_err(|e| e.to_string())?;
    let del_s = t.elapsed().as_secs_f64();
    if !report(&dels, &results) {
        return Err("some SAs were not deleted".into());
    }
    println!(
        "bench add count={count} seconds={add_s:.4} rate={:.0}",
        f64::from(count) / add_s
    );
    println!(
        "bench dump count={ours} seconds={dump_s:.4} rate={:.0}",
        ours as f64 / dump_s
    );
    println!(
        "bench delete count={count} seconds={del_s:.4} rate={:.0}",
        f64::from(count) / del_s
    );
    if ours != count as usize {
        return Err(format!("dumped back {ours} of {count} SAs"));
    }
    Ok(())
}

fn family_of(addr: &std::net::SocketAddr) -> Family {
    if addr.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

fn udp_send(to: std::net::SocketAddr, count: u32, bypass: bool) -> Result<(), String> {
    let any: std::net::SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .map_err(|e| format!("{e}"))?;
    let sock = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    if bypass {
        bypass_ipsec(&sock, family_of(&to)).map_err(|e| format!("IPsec bypass: {e}"))?;
    }
    let mut sent = 0;
    for i in 0..count {
        // Errors (EPERM/EAGAIN from a blocking policy) are counted, not fatal:
        // the test compares what arrived.
        if sock.send_to(format!("probe {i}").as_bytes(), to).is_ok() {
            sent += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    println!("udp sent={sent} of={count}");
    Ok(())
}

fn udp_recv(
    bind: std::net::SocketAddr,
    count: u32,
    timeout_ms: u64,
    bypass: bool,
) -> Result<(), String> {
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    if bypass {
        bypass_ipsec(&sock, family_of(&bind)).map_err(|e| format!("IPsec bypass: {e}"))?;
    }
    let deadline = Instant::now() + std::time::Duration::from_millis(timeout_ms);
    let mut got = 0;
    let mut buf = [0u8; 2048];
    while got < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| format!("{e}"))?;
        if sock.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    println!("udp received={got} of={count}");
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    if let Cmd::Probe = cli.cmd {
        return match probe_esp() {
            Capability::Ok => {
                println!("probe ok: ESP with rfc4106(gcm(aes)) and ESN, IPv4 and IPv6");
                Ok(())
            }
            Capability::NotPermitted(m) => Err(format!("not permitted: {m}")),
            Capability::Refused(e) => Err(format!("kernel refused the probe SA: {e}")),
            Capability::Failed(m) => Err(format!("probe failed: {m}")),
        };
    }
    match &cli.cmd {
        Cmd::UdpSend { to, count, bypass } => return udp_send(*to, *count, *bypass),
        Cmd::UdpRecv {
            bind,
            count,
            timeout_ms,
            bypass,
        } => {
            return udp_recv(*bind, *count, *timeout_ms, *bypass);
        }
        _ => {}
    }
    let own = Ownership::default();
    let mut x = Xfrm::open(own).map_err(|e| e.to_string())?;
    match &cli.cmd {
        Cmd::Sa { .. } | Cmd::Policy { .. } => {
            let ops = vec![to_op(&own, &cli.cmd)?];
            let results = x.apply(&ops).map_err(|e| e.to_string())?;
            if !report(&ops, &results) {
                return Err("operation failed".into());
            }
        }
        Cmd::Batch { file } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                s
            } else {
                std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?
            };
            let mut ops = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let args = std::iter::once("rotor-xfrmctl").chain(line.split_whitespace());
                let sub =
                    Cli::try_parse_from(args).map_err(|e| format!("{file}:{}: {e}", n + 1))?;
                ops.push(to_op(&own, &sub.cmd).map_err(|e| format!("{file}:{}: {e}", n + 1))?);
            }
            let t = Instant::now();
            let results = x.apply(&ops).map_err(|e| e.to_string())?;
            let ok = report(&ops, &results);
            println!(
                "batch ops={} ok={} seconds={:.4}",
                ops.len(),
                results.iter().filter(|r| r.is_done()).count(),
                t.elapsed().as_secs_f64()
            );
            if !ok {
                return Err("batch had failures".into());
            }
        }
        Cmd::Dump {
            what: DumpWhat::Sa,
            owned,
        } => {
            for s in x.dump_sas().map_err(|e| e.to_string())? {
                if *owned && !own.owns(s.reqid) {
                    continue;
                }
                println!(
                    "sa spi={:#010x} src={} dst={} reqid={:#x} owned={} mode={} packets={} bytes={} replay_window={} esn={} rfc4106={} key_bits={} integrity_failed={} replay_drops={}",
                    s.id.spi,
                    s.src,
                    s.id.dst,
                    s.reqid,
                    if own.owns(s.reqid) { "yes" } else { "no" },
                    s.mode
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "other".into()),
                    s.packets,
                    s.bytes,
                    s.replay_window,
                    s.esn,
                    s.rfc4106,
                    s.aead_key_bits,
                    s.integrity_failed,
                    s.replay_drops,
                );
            }
        }
        Cmd::Dump {
            what: DumpWhat::Policy,
            owned,
        } => {
            for p in x.dump_policies().map_err(|e| e.to_string())? {
                if *owned && !p.owned_by(&own) {
                    continue;
                }
                let (dir, sel) = match &p.id {
                    Some(id) => (id.dir.to_string(), id.selector.to_string()),
                    None => ("socket".into(), "-".into()),
                };
                let tmpls: Vec<String> = p
                    .templates
                    .iter()
                    .map(|(spi, reqid, _)| format!("{spi:#010x}/{reqid:#x}"))
                    .collect();
                println!(
                    "policy dir={dir} sel=\"{sel}\" priority={} action={} owned={} tmpl={}",
                    p.priority,
                    if p.block { "block" } else { "allow" },
                    if p.owned_by(&own) { "yes" } else { "no" },
                    tmpls.join(",")
                );
            }
        }
        Cmd::RemoveOwned => {
            let r = x.remove_owned().map_err(|e| e.to_string())?;
            println!(
                "removed sas={} policies={} failures={}",
                r.sas,
                r.policies,
                r.failures.len()
            );
            for f in &r.failures {
                eprintln!("rotor-xfrmctl: {f}");
            }
            if !r.failures.is_empty() {
                return Err("some objects could not be removed".into());
            }
        }
        Cmd::Bench {
            count,
            src,
            dst,
            first_spi,
        } => bench(&mut x, *count, *src, *dst, *first_spi)?,
        Cmd::Probe | Cmd::UdpSend { .. } | Cmd::UdpRecv { .. } => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    // Behave like a normal Unix tool when the reader of stdout goes away
    // (`... | grep -q`): end quietly instead of panicking on EPIPE.
    // Nothing else in this process handles SIGPIPE; if this fails, EPIPE
    // still ends the tool, only with an error message.
    let _ = rotor_sys::signal::default_sigpipe();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rotor-xfrmctl: {e}");
            ExitCode::FAILURE
        }
    }
}
