//! The service manager's notification protocol (systemd's `sd_notify(3)`):
//! `READY=1` once the daemon serves, `RELOADING=1` / `READY=1` around a
//! reload, `STOPPING=1` when it stops, and `WATCHDOG=1` from the event loop
//! at half the watchdog period, so a loop that stops turning gets the
//! daemon restarted. Each message is one datagram to the Unix socket named
//! by `$NOTIFY_SOCKET`; without that variable every call does nothing.
//!
//! Hand-written rather than through a crate: the protocol is a stable text
//! datagram to a path the caller is given, and the crates of the field read
//! `$NOTIFY_SOCKET` from the environment at every call, which a test can
//! only point elsewhere by changing its process environment (`unsafe` in
//! this edition). Here the address is a value, so the daemon-loop tests
//! drive the same code the daemon runs.

use std::cell::Cell;
use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use rotor_core::Time;
use tracing::{debug, warn};

/// A bad notification setting in the environment.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither a path nor an abstract socket name.
    #[error(
        "NOTIFY_SOCKET={0}: not a Unix socket (a path starting with / or an abstract name starting with @)"
    )]
    Socket(String),
    /// `$WATCHDOG_USEC` is not a positive number of microseconds.
    #[error("WATCHDOG_USEC={0}: not a positive number of microseconds")]
    Watchdog(String),
    /// The notification socket's address is unusable (too long), or the
    /// sending socket could not be created.
    #[error("the notification socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the notifications go and how often the watchdog wants a ping.
/// The default sends nothing.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half the watchdog period, in milliseconds.
    ping_every_ms: Option<u64>,
    next_ping: Time,
    /// Whether a failed send was logged as a warning already: a manager
    /// that went away would otherwise draw one every ping.
    warned: Cell<bool>,
}

impl Notifier {
    /// The service manager's settings of this process: `$NOTIFY_SOCKET`,
    /// and `$WATCHDOG_USEC` unless `$WATCHDOG_PID` names another process.
    pub fn from_env() -> Result<Self, NotifyError> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var_os("WATCHDOG_USEC");
        let for_us = std::env::var("WATCHDOG_PID")
            .map_or(true, |p| p.trim() == std::process::id().to_string());
        Notifier::new(socket.as_deref(), usec.as_deref().filter(|_| for_us))
    }

    /// Notifications to `socket` (a path, or `@name` for an abstract
    /// socket; `None` or empty: none) with a watchdog of `watchdog_usec`
    /// microseconds (`None`: no watchdog). The first ping is due at once.
    pub fn new(socket: Option<&OsStr>, watchdog_usec: Option<&OsStr>) -> Result<Self, NotifyError> {
        let target = match socket.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => {
                let b = s.as_bytes();
                let addr = match b.first() {
                    Some(b'/') => SocketAddr::from_pathname(s)?,
                    Some(b'@') => SocketAddr::from_abstract_name(&b[1..])?,
                    _ => return Err(NotifyError::Socket(s.to_string_lossy().into_owned())),
                };
                Some((UnixDatagram::unbound()?, addr))
            }
        };
        let ping_every_ms = match watchdog_usec {
            // Pings that reach no one would only wake the loop.
            _ if target.is_none() => None,
            None => None,
            Some(v) => {
                let bad = || NotifyError::Watchdog(v.to_string_lossy().into_owned());
                let usec: u64 = v
                    .to_str()
                    .and_then(|s| s.trim().parse().ok())
                    .filter(|&u| u > 0)
                    .ok_or_else(bad)?;
                Some((usec / 2_000).max(1))
            }
        };
        Ok(Notifier {
            target,
            ping_every_ms,
            next_ping: Time(0),
            warned: Cell::new(false),
        })
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The daemon serves: start-up (or a reload) is complete.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A reload begins. The CLOCK_MONOTONIC reading goes with it, which
    /// `Type=notify-reload` requires to tell this reload from an earlier one.
    pub fn reloading(&self) {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    /// The daemon is stopping.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// When the next watchdog ping is due (`None`: no watchdog).
    pub fn next_ping(&self) -> Option<Time> {
        self.ping_every_ms.map(|_| self.next_ping)
    }

    /// Pings the watchdog if a ping is due at `now`. Called from the event
    /// loop only, so the pings stop when the loop does.
    pub fn ping_if_due(&mut self, now: Time) {
        if let Some(every) = self.ping_every_ms
            && now >= self.next_ping
        {
            self.send("WATCHDOG=1");
            self.next_ping = now.plus_ms(every);
        }
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target
            && let Err(e) = sock.send_to_addr(msg.as_bytes(), addr)
        {
            // The manager acts on a missing READY=1 or WATCHDOG=1 (a start
            // timeout, a restart); the daemon itself can only report it.
            if self.warned.replace(true) {
                debug!("notifying the service manager ({}): {e}", first_line(msg));
            } else {
                warn!(
                    "notifying the service manager ({}): {e} (further failures are logged at debug level)",
                    first_line(msg)
                );
            }
        }
    }
}

fn first_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn received(sock: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn messages_reach_a_path_socket_and_pings_wait_for_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut n = Notifier::new(Some(path.as_os_str()), Some(OsStr::new("3000000"))).unwrap();
        assert_eq!(n.next_ping(), Some(Time(0)));
        n.ready();
        n.ping_if_due(Time(10));
        // Half of 3 s: not yet at 1509 ms, due at 1510 ms.
        n.ping_if_due(Time(1509));
        n.ping_if_due(Time(1510));
        n.stopping();
        assert_eq!(
            received(&server),
            ["READY=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]
        );
        assert_eq!(n.next_ping(), Some(Time(3010)));
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let name = format!("rotor-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let n = Notifier::new(Some(OsStr::new(&format!("@{name}"))), None).unwrap();
        let before = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        n.reloading();
        let got = received(&server);
        assert_eq!(got.len(), 1, "{got:?}");
        let usec: u64 = got[0]
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("{:?}", got[0]));
        let before_usec = before.tv_sec as u64 * 1_000_000 + before.tv_nsec as u64 / 1_000;
        assert!(
            (before_usec..before_usec + 5_000_000).contains(&usec),
            "{usec} vs {before_usec}"
        );
        assert_eq!(n.next_ping(), None);
    }

    #[test]
    fn no_socket_sends_nothing_and_bad_settings_are_named() {
        let n = Notifier::new(None, None).unwrap();
        assert!(!n.enabled());
        n.ready();
        assert!(!Notifier::new(Some(OsStr::new("")), None).unwrap().enabled());
        let e = Notifier::new(Some(OsStr::new("vsock:2:1")), None).unwrap_err();
        assert!(
            e.to_string().starts_with("NOTIFY_SOCKET=vsock:2:1: "),
            "{e}"
        );
        let sock = Some(OsStr::new("/run/nowhere"));
        for bad in ["0", "-5", "soon", ""] {
            let e = Notifier::new(sock, Some(OsStr::new(bad))).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("WATCHDOG_USEC={bad}: ")),
                "{e}"
            );
        }
        // One microsecond still pings every millisecond, never in a loop.
        let mut n = Notifier::new(sock, Some(OsStr::new("1"))).unwrap();
        n.ping_if_due(Time(5));
        assert_eq!(n.next_ping(), Some(Time(6)));
        // Without a socket there is no one to ping.
        let n = Notifier::new(None, Some(OsStr::new("1000000"))).unwrap();
        assert_eq!(n.next_ping(), None);
    }
}
