//! The hub's DNS name, as a node resolves it: once at start (an error stops
//! the start, naming the name) and again, in the background, whenever the
//! hub stops answering, so a hub that moved to another address is found
//! without a restart.
//!
//! Resolution is the C library's `getaddrinfo` (through the standard
//! library): it follows `/etc/hosts`, `nsswitch.conf` and the system's
//! resolver configuration like every other program on the host. It blocks,
//! so the daemon never calls it on its event loop: [`Lookup`] runs it on a
//! thread of its own.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

/// The address `host` resolves to, with `port`: the first address the
/// resolver returns (its order is the system's preference, RFC 6724) that
/// is unicast and, when `v4` is given, of that family (`Some(true)`: IPv4).
/// The error names the host and says what went wrong.
pub fn resolve(host: &str, port: u16, v4: Option<bool>) -> Result<SocketAddr, String> {
    let found = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
    let mut seen = 0usize;
    for sa in found {
        seen += 1;
        let ip = sa.ip().to_canonical();
        if v4.is_some_and(|v4| v4 != ip.is_ipv4()) || !usable(ip) {
            continue;
        }
        return Ok(SocketAddr::new(ip, port));
    }
    Err(match (seen, v4) {
        (0, _) => format!("{host:?} resolves to no address"),
        (_, Some(true)) => format!("{host:?} has no usable IPv4 address (node.address is IPv4)"),
        (_, Some(false)) => format!("{host:?} has no usable IPv6 address (node.address is IPv6)"),
        (_, None) => format!("{host:?} resolves only to unspecified or multicast addresses"),
    })
}

/// An address an SA can have as its far end.
fn usable(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && ip != IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

/// One resolution running on a thread of its own; [`Lookup::take`] polls
/// for its answer without blocking.
#[derive(Debug)]
pub struct Lookup {
    answer: Arc<Mutex<Option<Result<SocketAddr, String>>>>,
}

impl Lookup {
    /// Starts resolving `host` (see [`resolve`]). Fails only if no thread
    /// can be started.
    pub fn start(host: &str, port: u16, v4: Option<bool>) -> std::io::Result<Lookup> {
        let answer = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&answer);
        let host = host.to_string();
        std::thread::Builder::new()
            .name("rotor-resolve".into())
            .spawn(move || {
                let r = resolve(&host, port, v4);
                if let Ok(mut s) = slot.lock() {
                    *s = Some(r);
                }
            })?;
        Ok(Lookup { answer })
    }

    /// The answer, once the resolution is over (then `None` ever after).
    pub fn take(&self) -> Option<Result<SocketAddr, String>> {
        self.answer.lock().ok()?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn localhost_resolves_within_the_family_asked_for() {
        let a = resolve("localhost", 4820, Some(true)).unwrap();
        assert_eq!(a, "127.0.0.1:4820".parse().unwrap());
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it() {
        let e = resolve("no-such-host.invalid", 4820, None).unwrap_err();
        assert!(e.contains("\"no-such-host.invalid\""), "{e}");
    }

    #[test]
    fn a_background_lookup_answers_once() {
        let l = Lookup::start("localhost", 4821, Some(true)).unwrap();
        let t0 = Instant::now();
        let r = loop {
            if let Some(r) = l.take() {
                break r;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no answer");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(r.unwrap(), "127.0.0.1:4821".parse().unwrap());
        assert!(l.take().is_none());
    }
}
