//! Errors of the XFRM layer. Each says what was attempted and, for kernel
//! failures, the errno and the kernel's own extended-ACK text. None ever
//! contains key bytes.

use std::fmt;
use std::io;

/// A value in an [`crate::SaSpec`] or [`crate::PolicySpec`] that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// SPIs 0-255 are reserved (RFC 4303 §2.1).
    #[error("spi {0:#x} is reserved (SPIs 0-255 are never used for SAs)")]
    ReservedSpi(u32),
    /// Source, destination and selectors must share one address family.
    #[error("mixed address families in {0}")]
    MixedFamilies(&'static str),
    /// An SA cannot be moved to the unspecified address.
    #[error("{0} is the unspecified address")]
    UnspecifiedAddress(&'static str),
    /// The kernel's largest replay window is 4096.
    #[error("replay_window {0} exceeds the kernel maximum of 4096")]
    ReplayWindowTooLarge(u32),
    /// ESN needs a non-zero replay window.
    #[error("ESN needs a replay_window of at least 1")]
    EsnWithoutWindow,
    /// The reqid is not in rotor's owned range, so the object would not be
    /// recognised as rotor's later.
    #[error("reqid {0:#x} is outside rotor's reqid range")]
    ForeignReqid(u32),
    /// A lifetime pair the kernel would take but that cannot be meant: a
    /// hard limit of 0 (the kernel reads 0 seconds as "no limit" and 0
    /// packets or bytes as "expire at once": say `None` instead), a soft
    /// limit above the hard one (never fires), or a soft limit of 0 packets
    /// or bytes (fires on the first packet).
    #[error(
        "{which} lifetime soft={soft} hard={hard}: needs hard >= 1 and soft <= hard \
         (soft >= 1 for packets and bytes); use None for no limit"
    )]
    BadLifetime {
        /// `seconds`, `packets` or `bytes`.
        which: &'static str,
        /// The soft limit given.
        soft: u64,
        /// The hard limit given.
        hard: u64,
    },
    /// Tunnel mode needs the outer endpoints in the template.
    #[error("tunnel-mode policy needs template endpoints")]
    TunnelWithoutEndpoints,
}

/// The kernel refused one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// What was attempted, e.g. `add SA spi=0x00001000 10.0.0.1 -> 10.0.0.2`.
    pub op: String,
    /// The positive errno the kernel returned.
    pub errno: i32,
    /// The kernel's extended-ACK message, when it gave one.
    pub message: Option<String>,
}

impl KernelError {
    /// A hint for the operator when the errno and message show a missing
    /// kernel feature or privilege, rather than a bad request.
    pub fn hint(&self) -> Option<&'static str> {
        let msg = self.message.as_deref().unwrap_or("");
        match self.errno {
            libc::EPERM => {
                Some("the process lacks CAP_NET_ADMIN: run rotor as root or grant the capability")
            }
            libc::EPROTONOSUPPORT if msg.contains("type not found") || msg.is_empty() => Some(
                "this kernel has no ESP support (CONFIG_INET_ESP / esp4 module, \
                 CONFIG_INET6_ESP / esp6 for IPv6): load the module or use a kernel with ESP",
            ),
            libc::ENOSYS | libc::ENOENT if msg.contains("algorithm not found") => Some(
                "this kernel lacks rfc4106(gcm(aes)) (CONFIG_CRYPTO_GCM, the gcm and \
                 ghash modules): load them or use a kernel with AES-GCM",
            ),
            _ => None,
        }
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let err = io::Error::from_raw_os_error(self.errno);
        write!(f, "{}: kernel said errno {} ({})", self.op, self.errno, err)?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if let Some(h) = self.hint() {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KernelError {}

/// Failure of the XFRM layer as a whole (as opposed to one operation).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XfrmError {
    /// Opening or configuring the netlink socket failed.
    #[error("netlink socket: {context}: {source}")]
    Socket {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Sending to or receiving from the kernel failed.
    #[error("netlink I/O while {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel dropped replies (ENOBUFS): the outcome of some operations is
    /// unknown, and the caller must reconcile by dumping the kernel's state.
    #[error(
        "netlink receive buffer overrun (ENOBUFS) while {0}: outcome unknown, reconcile with a dump"
    )]
    Overrun(String),
    /// The kernel sent something this layer cannot parse.
    #[error("malformed netlink reply while {context}: {detail}")]
    Malformed {
        /// What was being done.
        context: String,
        /// What was wrong.
        detail: String,
    },
    /// One operation was refused.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// An SA deletion was not sent: the SA belongs to another owner.
    #[error("{op}: not sent: the SA there has reqid {reqid}, which is not this instance's")]
    Foreign {
        /// The operation.
        op: String,
        /// The SA's reqid.
        reqid: u32,
    },
    /// A spec could not be encoded.
    #[error("{op}: {source}")]
    Spec {
        /// The operation.
        op: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// No reply arrived in time.
    #[error("netlink: no reply from the kernel within {0} ms while {1}")]
    Timeout(u64, String),
}
