//! rotor's system-call room: every `unsafe` block of the workspace lives in
//! this crate, behind safe functions.
//!
//! The rest of the workspace denies `unsafe_code`. What a plain, well-kept
//! crate (`rustix`) covers safely is called through it directly, here or by
//! the callers; this crate holds what `rustix` lacks or only offers as
//! `unsafe`:
//!
//! * [`mmsg`]: many UDP datagrams per system call (`recvmmsg(2)`,
//!   `sendmmsg(2)`), optionally with each datagram's source address and the
//!   local address it was sent to (`IP_PKTINFO`), for the daemon and the load
//!   generator alike;
//! * [`sockopt`]: socket buffers forced past `rmem_max`/`wmem_max` when
//!   privileged, `IP_PKTINFO`, and the per-socket IPsec policy
//!   (`IP_XFRM_POLICY`/`IPV6_XFRM_POLICY`);
//! * [`process`]: `malloc_trim(3)`, keeping the process out of core dumps and
//!   its memory out of swap, CPU time from `getrusage(2)`, a private
//!   network namespace for the calling thread;
//! * [`signal`]: SIGPIPE back to its default, and SIGTERM/SIGINT as a flag;
//! * [`steer`]: a port's `SO_REUSEPORT` group and the classic BPF program
//!   that queues datagrams from chosen sources on its second socket.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment saying why the
//! pointers it hands to the kernel are valid for as long as the kernel uses
//! them. Errors are `std::io::Error`s that keep the kernel's errno.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod mmsg;
pub mod process;
pub mod signal;
pub mod sockopt;
pub mod steer;

pub use process::{MemoryLock, keep_out_of_core_dumps, lock_memory, malloc_trim};
