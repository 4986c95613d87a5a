//! What stops a daemon: SIGTERM or SIGINT, as one future the event loop
//! selects on (tests pass any other future instead).

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tracing::warn;

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

/// Keeps SIGHUP, which operators send by habit to make a daemon reload,
/// from killing the daemon (its default action): it is logged and ignored.
/// Must run inside the runtime.
pub fn ignore_hangup() -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            warn!(
                "SIGHUP: live reload is not supported yet; restart the daemon (hitless) to apply a changed configuration"
            );
        }
    });
    Ok(())
}
