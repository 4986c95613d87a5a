//! What the core asks its caller to do, and the time it is given.
//!
//! The core never touches a socket, the kernel or a clock: each call returns
//! [`Action`]s for the daemon (or the simulation) to execute **in order**.
//! Within one step the order follows I3, make before break: inbound SAs are
//! installed first, then the outbound SPI is switched, then old SAs are
//! deleted (after their grace period, through [`Action::DeleteSa`] emitted by a
//! later timeout).

use std::fmt;
use std::net::SocketAddr;

use crate::secret::EspKey;
use crate::wire::WireError;

/// Monotonic time in milliseconds since an arbitrary origin chosen by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

/// The moment a step happens, read once by the caller and passed whole: the
/// monotonic clock drives every timer and deadline; the wall clock is read
/// only for init timestamps (a node stamps its init with it, the hub checks
/// the stamp against its own within the configured skew).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Now {
    /// Monotonic time.
    pub mono: Time,
    /// Wall clock: milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl Now {
    /// The moment `mono` on the monotonic clock, `unix_ms` on the wall clock.
    pub const fn new(mono: Time, unix_ms: u64) -> Now {
        Now { mono, unix_ms }
    }
}

impl Time {
    /// `self + ms`, saturating.
    pub fn plus_ms(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A peer: on the hub, the index of a node in its configuration; on a node,
/// always `PeerId(0)` (the hub).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// Direction of an SA, seen from the side that installs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SaDir {
    /// The peer sends on it to us.
    In,
    /// We send on it to the peer.
    Out,
}

/// Something the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Install an ESP SA (fresh SPI, fresh key).
    InstallSa {
        /// The peer.
        peer: PeerId,
        /// In or out.
        dir: SaDir,
        /// Its SPI.
        spi: u32,
        /// Its rfc4106 key + salt.
        key: EspKey,
    },
    /// Give an installed SA the current path's encapsulation in place,
    /// keeping its sequence numbers and replay window (the kernel's
    /// `XFRM_MSG_UPDSA`, whose message carries a whole SA: `key` is the
    /// one the SA has). Follows an [`Action::PeerPath`] that changed only
    /// the peer's NAT port. A caller that cannot update the SA removes it
    /// and reports it lost (`kernel_lost`).
    UpdateSa {
        /// The peer.
        peer: PeerId,
        /// In or out.
        dir: SaDir,
        /// Its SPI.
        spi: u32,
        /// Its rfc4106 key + salt.
        key: EspKey,
    },
    /// Point the peer's outbound traffic at `spi` (a policy update); `None`
    /// blocks outbound traffic to the peer (fail closed).
    SetOutbound {
        /// The peer.
        peer: PeerId,
        /// The SA to send on.
        spi: Option<u32>,
    },
    /// Delete an SA installed earlier.
    DeleteSa {
        /// The peer.
        peer: PeerId,
        /// In or out.
        dir: SaDir,
        /// Its SPI.
        spi: u32,
    },
    /// The path to the peer changed: an authenticated, fresh message came
    /// from another address or port, the NAT verdict changed, or this
    /// host's own address did. From this action on, control datagrams to
    /// the peer go to `remote` and its SAs and policies live between
    /// `local` and `remote` (`None`: unchanged), carried in UDP if `nat`.
    /// `old_sas` were installed on the old path. Unless `in_place`, the
    /// caller removes them there, and the core re-installs what it still
    /// needs on the new path in the actions that follow (inbound SAs and
    /// never-used outbound ones; an outbound SA that was sent on is
    /// re-keyed instead, since the kernel would restart its sequence
    /// numbers under the same key).
    PeerPath {
        /// The peer.
        peer: PeerId,
        /// Where the peer is now.
        remote: Option<SocketAddr>,
        /// This host's address towards the peer now.
        local: Option<SocketAddr>,
        /// ESP in UDP (RFC 3948) between the two.
        nat: bool,
        /// SAs installed on the old path.
        old_sas: Vec<(SaDir, u32)>,
        /// The caller moves `old_sas` to the new path keeping each SA's
        /// SPI, key, sequence numbers and replay window (the kernel's
        /// `XFRM_MSG_MIGRATE`), and the core re-installs and re-keys
        /// nothing: only the outbound policy is pointed again at the SA it
        /// named (a [`Action::SetOutbound`] follows). An SA the caller
        /// cannot move it removes and reports lost (`kernel_lost`), which
        /// repairs it as `in_place: false` would have.
        in_place: bool,
    },
    /// Send a control datagram to the peer.
    Send {
        /// The peer.
        peer: PeerId,
        /// The datagram.
        datagram: Vec<u8>,
    },
    /// Send a control datagram to `to`, where a datagram came from, which
    /// need not be where any peer is known to be (a hub's cookie message).
    Reply {
        /// The address the answered datagram came from.
        to: SocketAddr,
        /// The datagram.
        datagram: Vec<u8>,
    },
    /// Something worth a log line or a metric.
    Event(Event),
}

/// Why a datagram was dropped without any state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Framing error.
    Wire(WireError),
    /// The header names an SPI no key of ours has.
    UnknownSpi,
    /// Message type not expected from this side or in this state.
    UnexpectedType,
    /// Counter already seen or older than the window.
    Replay,
    /// Init timestamp not newer than the last accepted one.
    InitReplay,
    /// Init timestamp too far from the hub's clock.
    InitClockSkew,
    /// An X25519 share gave an all-zero shared secret (a low-order point),
    /// or no key pair could be made (never seen: see `x25519::Ephemeral`).
    BadEphemeral,
    /// Authenticated, but refers to a generation we cannot use.
    StaleGeneration,
    /// Authenticated, but answers nothing this side sent (an ack echoing
    /// no hello of ours).
    Unsolicited,
    /// Authenticated, but the node's budget for what it asks (an init, a
    /// resend) is spent (see `hub::INITS`, `hub::RESENDS`): not answered.
    RateLimited,
    /// A hello's requested rotation was not made, for the node's budget
    /// (`hub::REQUESTED_ROTATIONS`) or the cap on SAs awaiting deletion:
    /// answered with an ack, granted at a later hello.
    RotationDeferred,
    /// An init from an address where its node is not known to be, while
    /// the hub is under load, without a valid cookie: answered with a
    /// cookie (within the reply budget), not authenticated.
    CookieRequired,
}

impl DropReason {
    /// Short name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Wire(WireError::TooShort) => "too_short",
            DropReason::Wire(WireError::BadVersion) => "bad_version",
            DropReason::Wire(WireError::UnknownType) => "unknown_type",
            DropReason::Wire(WireError::BadFlags) => "bad_flags",
            DropReason::Wire(WireError::BadLength) => "bad_length",
            DropReason::Wire(WireError::AuthFailed) => "auth_failed",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::UnexpectedType => "unexpected_type",
            DropReason::Replay => "replay",
            DropReason::InitReplay => "init_replay",
            DropReason::InitClockSkew => "init_clock_skew",
            DropReason::BadEphemeral => "bad_ephemeral",
            DropReason::StaleGeneration => "stale_generation",
            DropReason::Unsolicited => "unsolicited",
            DropReason::RateLimited => "rate_limited",
            DropReason::RotationDeferred => "rotation_deferred",
            DropReason::CookieRequired => "cookie_required",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Events for logs and metrics. None carries key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new generation was created and its key sent (hub), or installed (node).
    Rotated {
        /// The peer.
        peer: PeerId,
        /// New generation.
        generation: u64,
        /// Its SPI.
        spi: u32,
        /// SPI now used for sending.
        tx_spi: u32,
    },
    /// The hub sent the latest key again because the node still used the previous one.
    Resent {
        /// The node.
        peer: PeerId,
        /// Generation resent.
        generation: u64,
        /// Its SPI.
        spi: u32,
    },
    /// A chain was (re)initialised.
    Initialised {
        /// The peer.
        peer: PeerId,
        /// Generation-1 SPI.
        spi: u32,
    },
    /// A peer's path changed (see [`Action::PeerPath`]): on the hub, the
    /// node is now reached at `to`; on a node, it now sends from `to`.
    Moved {
        /// The peer.
        peer: PeerId,
        /// The new endpoint.
        to: SocketAddr,
        /// ESP in UDP.
        nat: bool,
        /// The first path known for the peer (learned, not moved).
        first: bool,
    },
    /// The hub saw the node use its latest generation for the first time.
    Confirmed {
        /// The node.
        peer: PeerId,
        /// Generation confirmed.
        generation: u64,
    },
    /// A node gave up on the hub and started init.
    FallbackToInit {
        /// Unanswered hellos.
        unanswered: u32,
    },
    /// A datagram was dropped without any state change.
    Dropped {
        /// Why.
        reason: DropReason,
        /// The peer one of whose SPIs the datagram's header carries (the
        /// peer whose key it was checked against); `None` when the SPI is
        /// no peer's, is shared by several peers' init keys, or the
        /// datagram could not be parsed. An unauthenticated datagram may
        /// carry any SPI: this names whose key failed, not who sent it.
        peer: Option<PeerId>,
    },
    /// SAs the kernel lost were repaired (`kernel_lost`): `reinstalled` SAs
    /// were installed again; `blocked`: the outbound SA in use was lost and
    /// outbound traffic to the peer is blocked until the next rotation.
    KernelRepaired {
        /// The peer.
        peer: PeerId,
        /// SAs installed again.
        reinstalled: u32,
        /// Outbound traffic is blocked until a rotation.
        blocked: bool,
    },
}
