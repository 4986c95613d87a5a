//! Junk for a hub's control port, as fast as one process sends it
//! (`sendmmsg`): the flood of netns-tests/80-daemon-flood.sh and of the
//! flood benchmark. In equal shares: inits forged under the nodes' real
//! init SPIs (static, and visible on the wire in every init: here computed
//! from the key files), hello-sized datagrams under random SPIs, and
//! replays of captured genuine control datagrams.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, RngCore, SeedableRng};
use rotor_core::Secret32;
use rotor_core::key_schedule::init_spi;
use rotor_core::wire::{HEADER_LEN, NON_ESP_MARKER, TAG_LEN, VERSION};
use rotor_sys::mmsg;

/// What to send, where, for how long.
pub struct FloodConfig {
    /// The hub's control address.
    pub to: SocketAddr,
    /// The init keys of the nodes whose init SPIs the forged inits carry.
    pub keys: Vec<Secret32>,
    /// Genuine control datagrams (as on the wire, marker included) to
    /// replay.
    pub replays: Vec<Vec<u8>>,
    /// How long to send.
    pub duration: Duration,
    /// Seed of the random parts.
    pub seed: u64,
}

/// Distinct datagrams sent round robin.
const POOL: usize = 3 * 1024;

/// The datagrams, in equal shares of the three kinds.
fn pool(cfg: &FloodConfig) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let spis: Vec<u32> = cfg.keys.iter().map(init_spi).collect();
    let header = |kind: u8, spi: u32, counter: u64| {
        let mut d = NON_ESP_MARKER.to_vec();
        d.extend_from_slice(&[VERSION, kind, 0, 0]);
        d.extend_from_slice(&spi.to_be_bytes());
        d.extend_from_slice(&counter.to_be_bytes());
        d
    };
    let random = |rng: &mut rand::rngs::StdRng, d: &mut Vec<u8>, n: usize| {
        let at = d.len();
        d.resize(at + n, 0);
        rng.fill_bytes(&mut d[at..]);
    };
    (0..POOL)
        .map(|k| match k % 3 {
            // An init: node nonce (32), body (40), tag.
            0 if !spis.is_empty() => {
                let mut d = header(2, spis[k % spis.len()], 0);
                random(&mut rng, &mut d, 32 + 40 + TAG_LEN);
                d
            }
            // A replayed genuine datagram.
            2 if !cfg.replays.is_empty() => cfg.replays[k % cfg.replays.len()].clone(),
            // A hello under a random SPI.
            _ => {
                let mut d = header(1, rng.gen_range(0x100..=u32::MAX), k as u64);
                random(&mut rng, &mut d, 91 - HEADER_LEN);
                d
            }
        })
        .collect()
}

/// Sends until the duration is over; returns (datagrams sent, seconds).
pub fn run(cfg: &FloodConfig) -> anyhow::Result<(u64, f64)> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding the flood's socket")?;
    let pool = pool(cfg);
    let msgs: Vec<(SocketAddr, &[u8])> = pool.iter().map(|d| (cfg.to, &d[..])).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut at = 0;
    while start.elapsed() < cfg.duration {
        let end = (at + mmsg::BATCH).min(msgs.len());
        // An error (a full queue on the way, an ICMP error) sent nothing:
        // on with the next batch.
        if let Ok(n) = mmsg::send(&sock, &msgs[at..end]) {
            sent += n as u64;
        }
        at = if end == msgs.len() { 0 } else { end };
    }
    Ok((sent, start.elapsed().as_secs_f64()))
}
