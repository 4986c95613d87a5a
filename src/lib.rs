//! The `rotor` daemon and tools, as a library so the binary stays thin and the
//! daemon can be driven from tests.
//!
//! Layout: [`config`] and [`keyfile`] read and validate what the operator
//! wrote; [`check`] answers `rotor check`; [`import`] translates other
//! VPNs' configurations (`rotor import`); [`cli`] is the command line;
//! [`logging`] sets up the daemons' log. The
//! protocol itself lives in `rotor-core` (sans-IO) and the kernel layer in
//! `rotor-xfrm`; [`peer_kernel`] maps a peer's keys onto kernel operations;
//! [`resolve`] finds the hub by
//! name; [`daemon`] is the event loop that drives either role; [`control`] is the
//! control socket's protocol; [`udp_batch`] moves control datagrams many per
//! system call.

#![warn(missing_docs)]

pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod guard;
pub mod import;
pub mod keyfile;
pub mod logging;
pub mod peer_kernel;
pub mod resolve;
pub mod sockets;
pub mod state;
pub mod store;
pub mod udp_batch;
