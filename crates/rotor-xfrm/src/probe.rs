//! Can this kernel do what rotor needs? Checked without changing anything the
//! host can see: the probe SA is installed in a throwaway network namespace
//! that exists only for the probing thread.

use std::net::IpAddr;

use crate::client::Xfrm;
use crate::error::{KernelError, XfrmError};
use crate::ownership::Ownership;
use crate::spec::{AeadKey, Lifetimes, Mode, Op, SaSpec};

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// ESP SAs with `rfc4106(gcm(aes))` and ESN can be created.
    Ok,
    /// The process may not configure XFRM (no CAP_NET_ADMIN), or may not
    /// create the probe namespace (no CAP_SYS_ADMIN).
    NotPermitted(String),
    /// The kernel refused the probe SA; the error says why (no ESP, no GCM...).
    Refused(KernelError),
    /// The probe itself could not run.
    Failed(String),
}

fn probe_here(addr_v6: bool) -> Result<(), XfrmError> {
    let mut x = Xfrm::open(Ownership::default())?;
    let (src, dst): (IpAddr, IpAddr) = if addr_v6 {
        (
            "2001:db8::1".parse().unwrap_or(IpAddr::from([0u8; 16])),
            "2001:db8::2".parse().unwrap_or(IpAddr::from([0u8; 16])),
        )
    } else {
        (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]))
    };
    // A fixed, public probe key: this SA never carries traffic and lives only
    // in the private namespace that disappears with the probing thread.
    let key = AeadKey::new(vec![0x5a; 20]).ok_or_else(|| XfrmError::Malformed {
        context: "probe".into(),
        detail: "probe key".into(),
    })?;
    let op = Op::AddSa(SaSpec {
        src,
        dst,
        spi: 0x100,
        reqid: Ownership::default().base(),
        mode: Mode::Transport,
        key,
        replay_window: 128,
        esn: true,
        encap: None,
        lifetimes: Lifetimes::default(),
        selector: None,
    });
    x.apply_all(&[op])
}

/// Probes ESP support (IPv4 and IPv6) in a private network namespace.
pub fn probe_esp() -> Capability {
    let handle = std::thread::spawn(|| {
        // Only this thread moves; it ends right after the probe, taking the
        // namespace with it.
        if let Err(e) = rotor_sys::process::unshare_network() {
            return if e.raw_os_error() == Some(libc::EPERM) {
                Capability::NotPermitted(format!("cannot create a probe network namespace: {e}"))
            } else {
                Capability::Failed(format!("unshare(CLONE_NEWNET): {e}"))
            };
        }
        for v6 in [false, true] {
            match probe_here(v6) {
                Ok(()) => {}
                Err(XfrmError::Kernel(e)) if e.errno == libc::EPERM => {
                    return Capability::NotPermitted(e.to_string());
                }
                Err(XfrmError::Kernel(e)) => return Capability::Refused(e),
                Err(e) => return Capability::Failed(e.to_string()),
            }
        }
        Capability::Ok
    });
    handle
        .join()
        .unwrap_or_else(|_| Capability::Failed("probe thread panicked".into()))
}
