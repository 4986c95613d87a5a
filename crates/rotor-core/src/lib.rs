//! rotor's rotation core, sans-IO: key material, the key schedule, the
//! key-SPI table, the control wire format, and the hub and node state machines.
//!
//! Nothing here opens a socket, talks to the kernel, reads a clock or draws
//! OS randomness: callers pass time in ([`Now`]), seed each state machine's
//! random number generator when they build it, feed datagrams and timeouts
//! through [`Machine`], and execute the [`Action`]s that come out
//! (`poll_action`) in order. That makes a seeded simulation of a hub and many
//! nodes over a lossy network exact and repeatable (`tests/`).
//!
//! The invariants the protocol rests on, and where each is kept:
//! * I1 two generations: [`hub`] sends on N-1, [`node`] on N, both accept both;
//! * I2 never two ahead: [`hub::Hub`] creates N+1 only in reply to a message
//!   authenticated under N;
//! * I3 make before break: action order inside every step;
//! * I4 resend, not regenerate: a hello under N-1 gets the same N again;
//! * I5 table-driven: [`key_spi_table`] maps the header SPI to node and slot;
//! * I6 no key reuse: [`key_schedule`]; the PSK never becomes an ESP key;
//! * I7 authenticated control: [`wire`] (AEAD) and [`replay`] (windows);
//! * I8 isolation and cost: per-node state is a fixed set of fields, and every
//!   message costs O(1) table lookups;
//! * I9 forward secrecy per rotation: [`ratchet`]; generation N+1's secret
//!   needs an X25519 private key of that rotation, which neither side keeps
//!   once N+1's keys are derived (every rotation by default; every k-th
//!   with `HubConfig::ratchet_every` = k).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod action;
pub mod config;
pub mod generation;
pub mod hub;
pub mod key_schedule;
pub mod key_spi_table;
pub mod machine;
pub mod names;
pub mod node;
pub mod persist;
pub mod ratchet;
pub mod replay;
pub mod secret;
pub mod status;
pub mod wire;
pub mod x25519;

pub use action::{Action, DropReason, Event, Now, PeerId, SaDir, Time};
pub use config::{ConfigError, HubConfig, NodeConfig, NodeSpec};
pub use hub::Hub;
pub use key_schedule::KeyBits;
pub use machine::{Class, Machine};
pub use names::NameTable;
pub use node::Node;
pub use persist::{KernelView, RecordError, RestoreReport};
pub use secret::{EspKey, Secret32};
pub use status::{PeerState, PeerStatus};
