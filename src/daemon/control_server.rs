//! Serves the local control socket off the event loop: every connection is
//! its own task with read and write deadlines, and talks to the loop only
//! through a channel of [`Call`]s that the loop answers between bursts. A
//! client that connects and never reads, or a status of 100,000 peers, costs
//! the loop one page of rows per turn and never blocks it.
//!
//! A status response is streamed: the head, then the rows in pages of
//! [`PAGE`] taken from the loop one turn at a time, written as they come.
//! The rows are each consistent, the table as a whole is not a snapshot of
//! one instant (a rotation may land between two pages).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::control::{
    self, ErrorReply, PeerStatus, ReloadReply, Request, RotateReply, STATUS_TAIL, StatusHead,
};

/// Rows the loop hands out per status call.
pub const PAGE: usize = 256;
/// How long a client may take to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one write to a client may wait for it to read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Calls waiting for the loop.
pub const QUEUE: usize = 64;

/// What a connection asks of the event loop.
#[derive(Debug)]
pub enum Call {
    /// The status head (with the first page only) and rows
    /// `from..from + PAGE` (fewer at the end, none past it).
    Status {
        /// First row.
        from: usize,
        /// Where the answer goes.
        reply: oneshot::Sender<(Option<StatusHead>, Vec<PeerStatus>)>,
    },
    /// `rotor rotate`.
    Rotate {
        /// The node to rotate.
        node: Option<String>,
        /// Every node (hub), or this node's own keys (node).
        all: bool,
        /// Rotations started, or why the request was refused.
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// `rotor reload` (SIGHUP makes the same call, without a reply).
    Reload {
        /// What changed, or why nothing did.
        reply: Option<oneshot::Sender<Result<ReloadReply, String>>>,
    },
}

/// Accepts connections on `listener` until the task is aborted; each is
/// served by a task of its own, whose calls go to `calls`. `role` (`hub` or
/// `node`) goes into the answers that name it.
pub fn spawn(
    listener: UnixListener,
    calls: mpsc::Sender<Call>,
    role: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors, typically: back off instead
                    // of spinning on the error.
                    warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closed unanswered: the client sees EOF, not a hang.
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                serve(stream, &calls, role).await;
                drop(slot);
            });
        }
    })
}

/// Answers one connection: one request line, one response line.
async fn serve(stream: UnixStream, calls: &mpsc::Sender<Call>, role: &'static str) {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r.take(control::MAX_REQUEST as u64));
    let mut line = String::new();
    let req = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {
            serde_json::from_str::<Request>(&line).map_err(|e| format!("bad request: {e}"))
        }
        Ok(Ok(_)) => Err("no request received".to_string()),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Err(_) => Err(format!(
            "no request received within {} s",
            READ_TIMEOUT.as_secs()
        )),
    };
    match req {
        Err(e) => {
            write_json(&mut w, &ErrorReply::new(e)).await;
        }
        Ok(Request::Rotate { node, all }) => {
            let (reply, answer) = oneshot::channel();
            if calls.send(Call::Rotate { node, all, reply }).await.is_err() {
                return;
            }
            match answer.await {
                Ok(Ok(rotating)) => {
                    let reply = RotateReply {
                        ok: true,
                        role: role.to_string(),
                        rotating,
                    };
                    write_json(&mut w, &reply).await;
                }
                Ok(Err(e)) => {
                    write_json(&mut w, &ErrorReply::new(e)).await;
                }
                Err(_) => {}
            }
        }
        Ok(Request::Status) => stream_status(&mut w, calls).await,
        Ok(Request::Reload) => {
            let (reply, answer) = oneshot::channel();
            let call = Call::Reload { reply: Some(reply) };
            if calls.send(call).await.is_err() {
                return;
            }
            match answer.await {
                Ok(Ok(r)) => {
                    write_json(&mut w, &r).await;
                }
                Ok(Err(e)) => {
                    write_json(&mut w, &ErrorReply::new(e)).await;
                }
                Err(_) => {}
            }
        }
    }
}

/// Writes the status page by page; gives up (closing the connection) when
/// the loop has stopped or the client does not read.
async fn stream_status(w: &mut OwnedWriteHalf, calls: &mpsc::Sender<Call>) {
    let mut from = 0;
    let mut out = String::new();
    loop {
        let (reply, answer) = oneshot::channel();
        if calls.send(Call::Status { from, reply }).await.is_err() {
            return;
        }
        let Ok((head, rows)) = answer.await else {
            return;
        };
        out.clear();
        if let Some(head) = head {
            out.push_str(&head.open());
        }
        for row in &rows {
            if from > 0 {
                out.push(',');
            }
            match serde_json::to_string(row) {
                Ok(s) => out.push_str(&s),
                Err(_) => return,
            }
            from += 1;
        }
        let last = rows.len() < PAGE;
        if last {
            out.push_str(STATUS_TAIL);
        }
        if !write_all(w, out.as_bytes()).await || last {
            return;
        }
    }
}

async fn write_json(w: &mut OwnedWriteHalf, v: &impl serde::Serialize) -> bool {
    let Ok(mut s) = serde_json::to_string(v) else {
        return false;
    };
    s.push('\n');
    write_all(w, s.as_bytes()).await
}

/// Writes `buf` within [`WRITE_TIMEOUT`]; false if the client is gone or too
/// slow.
async fn write_all(w: &mut OwnedWriteHalf, buf: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, w.write_all(buf)).await,
        Ok(Ok(()))
    )
}
