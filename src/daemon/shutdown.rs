//! What stops a daemon: SIGTERM or SIGINT, as one future the event loop
//! selects on (tests pass any other future instead).

use anyhow::Context;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// A future that completes on the first SIGTERM or SIGINT. The handlers are
/// installed here, before the future is first polled, so a signal that
/// arrives during start-up is not lost.
pub fn on_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// SIGHUP, which asks for a reload (its default action, ending the
/// process, is replaced).
pub fn hangup() -> anyhow::Result<Signal> {
    signal(SignalKind::hangup()).context("installing the SIGHUP handler")
}
