//! Signal dispositions the tools need, without a signal-handling runtime.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGTERM/SIGINT once [`catch_stop_signals`] ran.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: `handler` is SIG_DFL or `on_stop`, which only stores to an
    // atomic (async-signal-safe) and so may run at any point of any thread.
    if unsafe { libc::signal(sig, handler) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// From now on SIGTERM and SIGINT end nothing by themselves: they set a flag
/// that [`stop_requested`] reads, so a loop can finish its round and report.
pub fn catch_stop_signals() -> io::Result<()> {
    let h = on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
    set_handler(libc::SIGTERM, h)?;
    set_handler(libc::SIGINT, h)
}

/// Whether SIGTERM or SIGINT arrived since [`catch_stop_signals`].
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Puts SIGPIPE back to its default (end the process), which Rust's runtime
/// ignores: a command-line tool whose reader went away (`... | head`) then
/// ends quietly instead of failing on EPIPE.
pub fn default_sigpipe() -> io::Result<()> {
    set_handler(libc::SIGPIPE, libc::SIG_DFL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigterm_sets_the_flag() {
        catch_stop_signals().unwrap();
        assert!(!stop_requested());
        // SAFETY: raise only delivers the signal to this thread; the handler
        // just installed stores to an atomic.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        assert!(stop_requested());
    }
}
