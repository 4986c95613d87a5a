//! What `rotor status` shows about a peer: a read-only snapshot, no keys.

use std::fmt;

/// Where a peer's chain stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// No chain yet, or (node) waiting for the init reply.
    Init,
    /// Both sides hold the latest generation.
    InSync,
    /// (Hub) the latest generation was sent but the node has not used it yet.
    AwaitingConfirm,
}

impl PeerState {
    /// `init`, `in_sync` or `awaiting_confirm`: the stable names `rotor status`
    /// prints and its JSON output carries.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Init => "init",
            PeerState::InSync => "in_sync",
            PeerState::AwaitingConfirm => "awaiting_confirm",
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the key-SPI table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Peer name.
    pub name: String,
    /// Latest generation N (0 = none).
    pub generation: u64,
    /// SPI this side sends on.
    pub tx_spi: Option<u32>,
    /// SPIs this side accepts (previous, latest).
    pub rx_spis: Vec<u32>,
    /// Chain state.
    pub state: PeerState,
    /// Rotations done.
    pub rotations: u64,
    /// Keys resent (hub).
    pub resends: u64,
    /// (Re)initialisations.
    pub inits: u64,
    /// Milliseconds since the last authenticated message from the peer.
    pub last_seen_ms: Option<u64>,
    /// Milliseconds since the latest key was made (hub: first sent, or
    /// restored); `None` where the side does not track it (a node) or
    /// before the first key.
    pub key_age_ms: Option<u64>,
}
