//! rotor's XFRM netlink layer: installs, updates, deletes and reads back ESP
//! SAs and policies in the Linux kernel, in batches.
//!
//! What it guarantees:
//! * every object it installs carries a reqid from one [`Ownership`] range, and
//!   [`Xfrm::remove_owned`] deletes exactly those objects, never another
//!   program's;
//! * many operations go to the kernel in one netlink write, and every
//!   operation gets its own result ([`OpResult`]) with the errno and the
//!   kernel's extended-ACK text on failure;
//! * [`Monitor`] reports, as [`KernelEvent`]s, every kernel notification that
//!   concerns rotor's objects (deletions, flushes, expiry), and says so
//!   ([`KernelEvent::Overrun`]) when notifications may have been lost;
//! * key bytes are held in zeroizing types, wiped from message buffers once
//!   written, wiped from dump buffers once parsed, and never printed.
//!
//! It knows nothing about rotation: that is `rotor-core`'s job.

#![warn(missing_docs)]

mod bypass;
mod client;
mod dump;
pub mod encode;
mod error;
mod kernel;
mod model;
mod monitor;
mod netlink;
mod ownership;
mod probe;
mod spec;

pub use bypass::{Family, bypass_ipsec};
pub use client::{OpResult, RemoveReport, Xfrm};
pub use dump::{OwnedObjects, PolicyInfo, SaInfo};
pub use error::{KernelError, SpecError, XfrmError};
pub use kernel::{Dumper, Kernel, already_in_state};
pub use model::{ModelEvents, ModelKernel, ModelPolicy, Refuser};
pub use monitor::{KernelEvent, Monitor};
pub use ownership::{DEFAULT_REQID_BASE, DEFAULT_REQID_LEN, Ownership};
pub use probe::{Capability, probe_esp};
pub use spec::{
    AeadKey, GCM_SALT_LEN, IpNet, Lifetimes, MAX_REPLAY_WINDOW, Mode, Op, PolicyDir, PolicyId,
    PolicySelector, PolicySpec, SaId, SaMigrate, SaSpec, UdpEncap,
};
