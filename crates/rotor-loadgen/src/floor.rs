//! `rotor-loadgen floor`: the kernel floor of one hub rotation.
//!
//! A steady-state hub rotation of one node (transport mode) costs the kernel
//! five operations (`src/daemon.rs` executing `rotor_core::Hub`'s actions
//! through `src/peer_kernel.rs`):
//!
//! 1. add the inbound SA of N+1,
//! 2. add the outbound SA of N+1,
//! 3. update the outbound policy to name N (the hub sends on N-1 → N),
//! 4. delete the inbound SA of N-1 (after the grace period),
//! 5. delete the outbound SA of N-1.
//!
//! This tool prepares N nodes in that steady state (policies, generations
//! N-1 and N installed, outbound on N-1; not measured; in chunks with pauses
//! so the kernel's deferred hash-table growth keeps up), then does the five
//! operations for every node in one batched netlink write through
//! `rotor-xfrm` (the hub's own layer, nothing else around it) and measures
//! the CPU time (user + system, `getrusage`) and wall time. It then prepares
//! the same state again and lets `ip -batch` do the same operations from a
//! generated file, measuring the child's CPU time. Everything it installs is
//! removed at the end.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use rotor::config::PeerMode;
use rotor::peer_kernel::PeerKernel;
use rotor_sys::process::{Who, cpu_time};
use rotor_xfrm::{AeadKey, Op, OpResult, Ownership, Xfrm};
use serde_json::json;

use crate::addr::AddrMap;

/// Builds one node's operations of one kind.
type MakeOps<'a> = dyn Fn(&PeerKernel, u32) -> anyhow::Result<Vec<Op>> + 'a;

/// Kernel operations of one steady-state hub rotation (transport mode).
pub const OPS_PER_ROTATION: u64 = 5;

/// What to measure.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    /// Number of nodes (rotations).
    pub count: u32,
    /// The hub's address.
    pub local: Ipv4Addr,
    /// Address of node 0.
    pub first_remote: Ipv4Addr,
    /// How node indexes map to addresses.
    pub addr_map: AddrMap,
    /// Where to write the `ip -batch` file (default: a temporary file).
    pub batch_file: Option<PathBuf>,
    /// Skip the `ip -batch` measurement.
    pub no_ip: bool,
    /// Repeat each measurement this many times and sum (CPU time inside
    /// User-Mode Linux is counted in 10 ms ticks).
    pub repeat: u32,
    /// Also time each kind of operation in a batch of its own.
    pub by_kind: bool,
}

#[derive(Clone, Copy, Default)]
struct Cpu {
    user: f64,
    sys: f64,
}

fn rusage(who: Who) -> anyhow::Result<Cpu> {
    let t = cpu_time(who).context("getrusage")?;
    Ok(Cpu {
        user: t.user.as_secs_f64(),
        sys: t.system.as_secs_f64(),
    })
}

fn peer(own: &Ownership, c: &FloorConfig, i: u32) -> anyhow::Result<PeerKernel> {
    Ok(PeerKernel {
        reqid: own
            .reqid_for(i)
            .context("more nodes than rotor's reqid range")?,
        local: IpAddr::V4(c.local),
        remote: IpAddr::V4(c.addr_map.addr(c.first_remote, i)),
        local_port: 4820,
        remote_port: 4820,
        nat: false,
        mode: PeerMode::Transport,
        priority: 1000,
        replay_window: 1024,
        // The hub's SAs carry lifetimes (a kernel timer each): so do the
        // floor's, for a like-for-like baseline.
        lifetime: Some(rotor::daemon::hub_lifetime(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(5),
            None,
        )),
    })
}

/// SPI of generation `g` (1..=3) of node `i`.
fn spi(g: u32, i: u32) -> u32 {
    (g << 24) | (i & 0x00ff_ffff)
}

fn random_key(urandom: &mut std::fs::File) -> anyhow::Result<Vec<u8>> {
    let mut k = vec![0u8; 36];
    urandom.read_exact(&mut k).context("reading /dev/urandom")?;
    Ok(k)
}

fn aead(k: &[u8]) -> anyhow::Result<AeadKey> {
    AeadKey::new(k.to_vec()).context("key length")
}

fn check(what: &str, ops: &[Op], results: &[OpResult]) -> anyhow::Result<()> {
    let failed = results.iter().filter(|r| !r.is_done()).count();
    let bad: Vec<String> = ops
        .iter()
        .zip(results)
        .filter(|(_, r)| !r.is_done())
        .take(3)
        .map(|(op, r)| format!("{op}: {r:?}"))
        .collect();
    if !bad.is_empty() {
        bail!(
            "{what}: {} operations failed, e.g. {}",
            failed,
            bad.join("; ")
        );
    }
    Ok(())
}

/// Installs policies and generations 1 and 2 of every node, outbound on 1.
fn prepare(x: &mut Xfrm, c: &FloorConfig, keys: &[[Vec<u8>; 4]]) -> anyhow::Result<()> {
    let own = *x.ownership();
    x.remove_owned()
        .context("cleaning up before the floor run")?;
    let mut ops = Vec::with_capacity(c.count as usize * 6);
    for i in 0..c.count {
        let p = peer(&own, c, i)?;
        let k = &keys[i as usize];
        ops.extend(p.inbound_policies());
        ops.extend(p.set_outbound(Some(spi(1, i))));
        ops.push(p.add_inbound_sa(spi(1, i), aead(&k[0])?));
        ops.push(p.add_outbound_sa(spi(1, i), aead(&k[1])?));
        ops.push(p.add_inbound_sa(spi(2, i), aead(&k[2])?));
        ops.push(p.add_outbound_sa(spi(2, i), aead(&k[3])?));
    }
    // In chunks, with pauses: the kernel grows its SA hash tables from a
    // work item, which a process writing batch after batch never lets run
    // inside UML (one CPU); a running hub sleeps between steps, so its tables
    // have grown. Measure that steady state, not an undersized table.
    for chunk in ops.chunks(1000) {
        let r = x.apply(chunk).context("preparing the steady state")?;
        check("preparing the steady state", chunk, &r)?;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the measurement; returns the JSON result.
pub fn run(c: &FloorConfig) -> anyhow::Result<serde_json::Value> {
    let own = Ownership::default();
    let mut x = Xfrm::open(own).context("opening the XFRM netlink socket")?;
    let mut urandom = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    let mut keys = Vec::with_capacity(c.count as usize);
    let mut new_keys = Vec::with_capacity(c.count as usize);
    for _ in 0..c.count {
        keys.push([
            random_key(&mut urandom)?,
            random_key(&mut urandom)?,
            random_key(&mut urandom)?,
            random_key(&mut urandom)?,
        ]);
        new_keys.push([random_key(&mut urandom)?, random_key(&mut urandom)?]);
    }

    // 1. rotor-xfrm, one batched write.
    let repeat = c.repeat.max(1);
    let (mut user, mut sys, mut wall, mut nops) = (0.0, 0.0, 0.0, 0usize);
    for _ in 0..repeat {
        prepare(&mut x, c, &keys)?;
        let mut ops = Vec::with_capacity(c.count as usize * OPS_PER_ROTATION as usize);
        for i in 0..c.count {
            let p = peer(&own, c, i)?;
            let k = &new_keys[i as usize];
            ops.push(p.add_inbound_sa(spi(3, i), aead(&k[0])?));
            ops.push(p.add_outbound_sa(spi(3, i), aead(&k[1])?));
            ops.extend(p.set_outbound(Some(spi(2, i))));
            ops.push(p.delete_inbound_sa(spi(1, i)));
            ops.push(p.delete_outbound_sa(spi(1, i)));
        }
        let c0 = rusage(Who::Process)?;
        let t0 = Instant::now();
        let results = x.apply(&ops).context("the measured batch")?;
        wall += t0.elapsed().as_secs_f64();
        let c1 = rusage(Who::Process)?;
        check("the measured batch", &ops, &results)?;
        user += c1.user - c0.user;
        sys += c1.sys - c0.sys;
        nops += ops.len();
        x.remove_owned()
            .context("cleaning up after the netlink floor")?;
    }
    let netlink = cost(nops as u64, repeat, c.count, user, sys, wall);

    // 1b. The same operations by kind, one batch per kind (which one costs).
    let by_kind = if c.by_kind {
        prepare(&mut x, c, &keys)?;
        let mut kinds = serde_json::Map::new();
        let steps: [(&str, &MakeOps); 4] = [
            ("add_inbound_sa", &|p, i| {
                Ok(vec![p.add_inbound_sa(
                    spi(3, i),
                    aead(&new_keys[i as usize][0])?,
                )])
            }),
            ("add_outbound_sa", &|p, i| {
                Ok(vec![p.add_outbound_sa(
                    spi(3, i),
                    aead(&new_keys[i as usize][1])?,
                )])
            }),
            ("update_outbound_policy", &|p, i| {
                Ok(p.set_outbound(Some(spi(2, i))))
            }),
            ("delete_sas", &|p, i| {
                Ok(vec![
                    p.delete_inbound_sa(spi(1, i)),
                    p.delete_outbound_sa(spi(1, i)),
                ])
            }),
        ];
        for (name, make) in steps {
            let mut ops = Vec::new();
            for i in 0..c.count {
                ops.extend(make(&peer(&own, c, i)?, i)?);
            }
            let c0 = rusage(Who::Process)?;
            let t0 = Instant::now();
            let results = x.apply(&ops).context("a by-kind batch")?;
            let wall = t0.elapsed().as_secs_f64();
            let c1 = rusage(Who::Process)?;
            check(name, &ops, &results)?;
            let cpu = c1.user - c0.user + c1.sys - c0.sys;
            kinds.insert(
                name.to_string(),
                json!({"ops": ops.len(), "cpu_s": cpu, "wall_s": wall,
                       "us_per_op": cpu * 1e6 / ops.len().max(1) as f64}),
            );
        }
        x.remove_owned()
            .context("cleaning up after the by-kind floor")?;
        serde_json::Value::Object(kinds)
    } else {
        serde_json::Value::Null
    };

    // 2. ip -batch, the same operations from a file.
    let ip = if c.no_ip {
        serde_json::Value::Null
    } else {
        let path = c.batch_file.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("rotor-floor-{}.batch", std::process::id()))
        });
        {
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = std::io::BufWriter::new(f);
            for i in 0..c.count {
                let p = peer(&own, c, i)?;
                let (l, r) = (c.local, c.addr_map.addr(c.first_remote, i));
                let k = &new_keys[i as usize];
                let sa = |src: Ipv4Addr, dst: Ipv4Addr, s: u32, key: &[u8]| {
                    format!(
                        "xfrm state add src {src} dst {dst} proto esp spi {s:#x} reqid {:#x} mode transport flag esn replay-window 1024 aead rfc4106(gcm(aes)) 0x{} 128\n",
                        p.reqid,
                        hex(key)
                    )
                };
                w.write_all(sa(r, l, spi(3, i), &k[0]).as_bytes())?;
                w.write_all(sa(l, r, spi(3, i), &k[1]).as_bytes())?;
                writeln!(
                    w,
                    "xfrm policy update src {l}/32 dst {r}/32 dir out priority 1000 tmpl proto esp spi {:#x} reqid {:#x} mode transport",
                    spi(2, i),
                    p.reqid
                )?;
                writeln!(
                    w,
                    "xfrm state delete src {r} dst {l} proto esp spi {:#x}",
                    spi(1, i)
                )?;
                writeln!(
                    w,
                    "xfrm state delete src {l} dst {r} proto esp spi {:#x}",
                    spi(1, i)
                )?;
            }
            w.flush()?;
        }
        // One run is enough: ip -batch costs milliseconds per rotation.
        let ip_repeat = 1u32;
        let (mut user, mut sys, mut wall) = (0.0, 0.0, 0.0);
        for _ in 0..ip_repeat {
            prepare(&mut x, c, &keys)?;
            let c0 = rusage(Who::Children)?;
            let t0 = Instant::now();
            let st = Command::new("ip")
                .arg("-batch")
                .arg(&path)
                .status()
                .context("running ip -batch")?;
            wall += t0.elapsed().as_secs_f64();
            let c1 = rusage(Who::Children)?;
            if !st.success() {
                let _ = std::fs::remove_file(&path);
                bail!("ip -batch failed ({st})");
            }
            user += c1.user - c0.user;
            sys += c1.sys - c0.sys;
            x.remove_owned().context("cleaning up after ip -batch")?;
        }
        let _ = std::fs::remove_file(&path);
        let ops = u64::from(c.count) * OPS_PER_ROTATION * u64::from(ip_repeat);
        cost(ops, ip_repeat, c.count, user, sys, wall)
    };
    x.remove_owned().context("cleaning up after the floor")?;
    Ok(json!({
        "n": c.count,
        "ops_per_rotation": OPS_PER_ROTATION,
        "netlink_batch": netlink,
        "ip_batch": ip,
        "by_kind": by_kind,
    }))
}

/// The figures of one way of doing `repeat` x `count` rotations' operations
/// (`ops` in all) in `user` + `sys` CPU seconds and `wall` seconds.
fn cost(ops: u64, repeat: u32, count: u32, user: f64, sys: f64, wall: f64) -> serde_json::Value {
    let rotations = f64::from(count) * f64::from(repeat);
    json!({
        "ops": ops,
        "repeat": repeat,
        "cpu_s": user + sys,
        "user_s": user,
        "sys_s": sys,
        "wall_s": wall,
        "us_per_rotation": (user + sys) * 1e6 / rotations,
        "ops_per_cpu_s": ops as f64 / (user + sys).max(1e-9),
    })
}
