//! `rotor-loadgen`: load for the rotor hub from many real nodes in one
//! process, and the kernel floor a hub rotation is compared with.
//!
//! * [`fleet`]: 1,000 to 100,000+ `rotor_core::Node` state machines (the core
//!   `rotor node` runs, not a re-implementation) on one UDP socket, each with
//!   its own source address; optionally with their kernel SAs and policies.
//! * [`setup`]: keys and a hub configuration for such a fleet.
//! * [`floor`]: the SA operations of one hub rotation, for N nodes, in one
//!   batched netlink write and with `ip -batch`, timed in CPU seconds.
//! * [`addr`]: which address node `i` has (sequential or scattered).
//! * [`flood`]: junk for a hub's control port as fast as one process sends.
//! * [`silence`]: how long the nodes wait for their hub (a failover's
//!   outage as the nodes see it).
//! * [`udp`]: the wildcard socket with `IP_PKTINFO` and batched I/O.
//!
//! `scripts/bench.sh` puts them together inside User-Mode Linux;
//! `docs/performance.md` has the method and the results.

#![warn(missing_docs)]

pub mod addr;
pub mod fleet;
pub mod flood;
pub mod floor;
pub mod setup;
pub mod silence;
pub mod udp;
