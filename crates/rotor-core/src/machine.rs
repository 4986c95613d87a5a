//! The interface a hub and a node share, so one driver (the daemon, the
//! simulation, a load generator) runs either the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::action::{Action, DropReason, Now, Time};

/// How much a received datagram may cost, judged before any cryptography
/// from its header and where it came from ([`Machine::classify`]). A driver
/// under load serves [`Class::Priority`] first and spends only a bounded
/// budget on [`Class::Costly`]; the machine itself authenticates every
/// message whatever its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// Names a key of the peer it came from, as that peer is known to be
    /// reached: most likely genuine, served first.
    Priority,
    /// Dropped before any cryptography whatever it holds (framing, an
    /// unknown or retired SPI, a replayed counter): handling it costs
    /// nanoseconds.
    Cheap,
    /// Names a peer's key but comes from elsewhere (a peer that moved, or a
    /// forgery): checking it costs a key derivation or an AEAD.
    Costly,
}

/// A sans-IO state machine: time and datagrams go in, [`Action`]s come out.
///
/// The driver's loop: feed every received datagram to
/// [`handle_datagram`](Machine::handle_datagram), call
/// [`handle_timeout`](Machine::handle_timeout) once
/// [`poll_timeout`](Machine::poll_timeout) is reached, and after each call
/// execute every [`poll_action`](Machine::poll_action) result in order before
/// feeding the next input. Randomness is the machine's own (seeded when it is
/// built), so a run is reproducible from its seeds and inputs.
pub trait Machine {
    /// Handles one datagram from the peer(s), received from `from`.
    /// Anything that is not a valid, fresh message changes nothing but
    /// [`drops`](Machine::drops) (and queues a `Dropped` event).
    fn handle_datagram(&mut self, now: Now, from: SocketAddr, data: &[u8]);

    /// Fires the timers due at `now.mono`. Calling it early is harmless: it
    /// fires only what is due.
    fn handle_timeout(&mut self, now: Now);

    /// When [`handle_timeout`](Machine::handle_timeout) must next be called
    /// (`None`: no timer armed). A time in the past means "at once".
    fn poll_timeout(&self) -> Option<Time>;

    /// The next action to execute, in order; `None` when the queue is empty.
    fn poll_action(&mut self) -> Option<Action>;

    /// Datagrams dropped so far, by reason.
    fn drops(&self) -> &BTreeMap<DropReason, u64>;

    /// What handling `data` from `from` may cost (see [`Class`]): reads the
    /// header only and changes nothing. A machine that talks to one known
    /// peer (a node) serves everything alike.
    fn classify(&self, from: SocketAddr, data: &[u8]) -> Class {
        let _ = (from, data);
        Class::Priority
    }
}
