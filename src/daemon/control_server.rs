//! Serves the local control socket off the event loop: every connection is
//! its own task with read and write deadlines, and talks to the loop only
//! through a channel of [`Call`]s that the loop answers between bursts. A
//! client that connects and never reads, or a status of 100,000 peers, costs
//! the loop a few pages of rows per turn and never blocks it.
//!
//! A status response is streamed: the head, then the rows in pages of
//! [`PAGE`] taken from the loop ([`Pages`]: up to [`AHEAD`] asked at once,
//! so a turn made long by a burst of state writes still hands out several),
//! written as they come. The rows are each consistent, the table as a whole
//! is not a snapshot of one instant (a rotation may land between two
//! pages).

use std::collections::VecDeque;
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
/// Status pages one reader has asked the loop for and not yet taken: the
/// loop answers [`super::event_loop::CALLS_PER_TURN`] calls a turn, so a
/// reader asking one page at a time would get one per turn.
pub const AHEAD: usize = super::event_loop::CALLS_PER_TURN;
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

/// One status page: the head (first page only) and its rows.
pub type Page = (Option<StatusHead>, Vec<PeerStatus>);

/// Reads the status from the loop page by page, in order, keeping up to
/// [`AHEAD`] pages asked for; ends after the first page shorter than
/// [`PAGE`] (pages asked for past it come back empty and are dropped).
pub struct Pages<'a> {
    calls: &'a mpsc::Sender<Call>,
    asked: VecDeque<oneshot::Receiver<Page>>,
    next: usize,
    done: bool,
}

impl<'a> Pages<'a> {
    /// Pages from row 0, asked of the loop through `calls`.
    pub fn new(calls: &'a mpsc::Sender<Call>) -> Pages<'a> {
        Pages {
            calls,
            asked: VecDeque::with_capacity(AHEAD),
            next: 0,
            done: false,
        }
    }

    /// The next page; `None` after the last one, or once the loop has
    /// stopped.
    pub async fn next(&mut self) -> Option<Page> {
        if self.done {
            return None;
        }
        while self.asked.len() < AHEAD {
            let (reply, answer) = oneshot::channel();
            let from = self.next;
            if self.calls.send(Call::Status { from, reply }).await.is_err() {
                self.done = true;
                return None;
            }
            self.asked.push_back(answer);
            self.next = from.saturating_add(PAGE);
        }
        let page = self.asked.pop_front()?.await.ok();
        match &page {
            Some((_, rows)) if rows.len() == PAGE => {}
            _ => self.done = true,
        }
        page
    }
}

/// Writes the status page by page; gives up (closing the connection) when
/// the loop has stopped or the client does not read.
async fn stream_status(w: &mut OwnedWriteHalf, calls: &mpsc::Sender<Call>) {
    let mut from = 0;
    let mut out = String::new();
    let mut pages = Pages::new(calls);
    loop {
        let Some((head, rows)) = pages.next().await else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: usize) -> PeerStatus {
        PeerStatus {
            name: format!("n{i}"),
            generation: 1,
            tx_spi: None,
            rx_spis: Vec::new(),
            state: "in_sync".into(),
            rotations: 0,
            resends: 0,
            inits: 0,
            last_seen_ms: None,
            kernel_retrying: 0,
            key_age_ms: None,
            endpoint: None,
            nat: false,
        }
    }

    /// A loop of `peers` rows whose turns each take 1 s and answer what is
    /// queued, up to [`super::super::event_loop::CALLS_PER_TURN`] calls plus
    /// the one that woke it, as the event loop does. Returns the turns it
    /// took until the channel closed.
    async fn slow_loop(mut calls: mpsc::Receiver<Call>, peers: usize) -> usize {
        let mut turns = 0;
        while let Some(first) = calls.recv().await {
            tokio::time::sleep(Duration::from_secs(1)).await;
            turns += 1;
            let mut batch = vec![first];
            while batch.len() <= super::super::event_loop::CALLS_PER_TURN {
                match calls.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            for call in batch {
                if let Call::Status { from, reply } = call {
                    let head = (from == 0).then(|| StatusHead {
                        role: "hub".into(),
                        drops: Default::default(),
                        kernel_errors: 0,
                        kernel_retrying: 0,
                        control_received: 0,
                        control_sent: 0,
                    });
                    let end = peers.min(from.saturating_add(PAGE));
                    let _ = reply.send((head, (from..end).map(row).collect()));
                }
            }
        }
        turns
    }

    /// Every row once, in order, the head with the first page only; the
    /// loop hands out as many pages per turn as it answers calls, not one,
    /// and the reader stops after the short page.
    #[tokio::test(start_paused = true)]
    async fn pages_come_in_order_several_per_turn() {
        for peers in [0, 1, PAGE - 1, PAGE, 10 * PAGE + 3, 40 * PAGE] {
            let (tx, rx) = mpsc::channel(QUEUE);
            let looping = tokio::spawn(slow_loop(rx, peers));
            let mut pages = Pages::new(&tx);
            let mut rows = Vec::new();
            let mut heads = 0;
            let mut first = true;
            while let Some((head, page)) = pages.next().await {
                assert_eq!(head.is_some(), first, "{peers} peers");
                heads += usize::from(head.is_some());
                first = false;
                rows.extend(page.into_iter().map(|r| r.name));
            }
            assert!(pages.next().await.is_none());
            drop(pages);
            drop(tx);
            let turns = looping.await.unwrap();
            let want: Vec<String> = (0..peers).map(|i| format!("n{i}")).collect();
            assert_eq!(rows, want, "{peers} peers");
            assert_eq!(heads, 1);
            let pages = peers / PAGE + 1;
            assert!(
                turns <= pages.div_ceil(super::super::event_loop::CALLS_PER_TURN) + 1,
                "{peers} peers: {pages} pages took {turns} turns"
            );
        }
    }
}
