//! Can this kernel do what rotor needs? The probe installs an ESP SA of
//! rotor's kind and checks that the kernel takes it. Where the process may
//! create a network namespace (CAP_SYS_ADMIN) the SA goes into a throwaway
//! one that exists only for the probing thread, so the host sees nothing.
//! Without that capability (a service confined to CAP_NET_ADMIN) it goes
//! into the current namespace and is deleted right after the kernel's
//! answer: an SA towards a documentation address (RFC 5737, RFC 3849), with
//! a reqid outside every rotor range, a 10 s hard lifetime in case the
//! deletion never comes, and no policy that could select it, so it carries
//! no traffic and no rotor daemon notices it. Only an SA the probe added is
//! deleted: one that was there already (EEXIST) stays.

use std::net::IpAddr;

use crate::client::{OpResult, Xfrm};
use crate::error::{KernelError, XfrmError};
use crate::ownership::Ownership;
use crate::spec::{AeadKey, Lifetimes, Mode, Op, SaId, SaSpec};

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// ESP SAs with `rfc4106(gcm(aes))` and ESN can be created.
    Ok,
    /// The process may not configure XFRM (no CAP_NET_ADMIN).
    NotPermitted(String),
    /// The kernel refused the probe SA; the error says why (no ESP, no GCM...).
    Refused(KernelError),
    /// The probe itself could not run.
    Failed(String),
}

/// The probe SA's SPI, the lowest one rotor's layer accepts; its
/// destination address keeps it apart from any SA in use.
pub const PROBE_SPI: u32 = 0x100;
/// The probe SA's reqid: just below rotor's ranges (the hub's starts at
/// [`crate::DEFAULT_REQID_BASE`]), so no daemon's reconcile pass or
/// notification filter takes it for one of its own.
pub const PROBE_REQID: u32 = crate::DEFAULT_REQID_BASE - 1;

/// The one reqid the probe's netlink handle may use.
fn probe_ownership() -> Option<Ownership> {
    Ownership::new(PROBE_REQID, 1)
}

/// The probe SA of one address family, and its identity.
fn probe_sa(addr_v6: bool) -> Result<(Op, SaId), XfrmError> {
    let (src, dst): (IpAddr, IpAddr) = if addr_v6 {
        let mut src = [0u8; 16];
        src[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff]);
        let mut dst = src;
        src[15] = 0xfe;
        dst[15] = 0xfd;
        (IpAddr::from(src), IpAddr::from(dst))
    } else {
        (
            IpAddr::from([203, 0, 113, 254]),
            IpAddr::from([203, 0, 113, 253]),
        )
    };
    // A fixed, public probe key: this SA never carries traffic (no policy
    // selects it) and lives only for the probe.
    let key = AeadKey::new(vec![0x5a; 20]).ok_or_else(|| XfrmError::Malformed {
        context: "probe".into(),
        detail: "probe key".into(),
    })?;
    let add = Op::AddSa(SaSpec {
        src,
        dst,
        spi: PROBE_SPI,
        reqid: PROBE_REQID,
        mode: Mode::Transport,
        key,
        replay_window: 128,
        esn: true,
        encap: None,
        lifetimes: Lifetimes {
            add_seconds: Some((5, 10)),
            ..Lifetimes::default()
        },
        selector: None,
    });
    Ok((
        add,
        SaId {
            dst,
            spi: PROBE_SPI,
        },
    ))
}

/// Applies one operation and returns the kernel's answer.
fn apply_one(x: &mut Xfrm, op: Op) -> Result<OpResult, Capability> {
    match x.apply(std::slice::from_ref(&op)) {
        Ok(mut r) => Ok(r.pop().unwrap_or(OpResult::Unknown)),
        Err(XfrmError::Socket { source, .. }) if source.raw_os_error() == Some(libc::EPERM) => {
            Err(Capability::NotPermitted(source.to_string()))
        }
        Err(e) => Err(Capability::Failed(e.to_string())),
    }
}

/// Probes both address families in the current namespace; in `shared` (the
/// host's) each probe SA is deleted again.
fn probe_here(shared: bool) -> Capability {
    let Some(own) = probe_ownership() else {
        return Capability::Failed("the probe's reqid".into());
    };
    let mut x = match Xfrm::open(own) {
        Ok(x) => x,
        Err(e) => return Capability::Failed(e.to_string()),
    };
    for v6 in [false, true] {
        let (add, id) = match probe_sa(v6) {
            Ok(sa) => sa,
            Err(e) => return Capability::Failed(e.to_string()),
        };
        let added = match apply_one(&mut x, add).map(|r| judge_add(&r)) {
            Ok(Ok(added)) => added,
            Ok(Err(c)) | Err(c) => return c,
        };
        if shared && added {
            let r = match apply_one(&mut x, Op::DeleteSa(id)) {
                Ok(r) => r,
                Err(c) => return c,
            };
            if let Some(c) = judge_delete(&r, id) {
                return c;
            }
        }
    }
    Capability::Ok
}

/// The kernel's answer to the probe SA: whether the probe added it (it has
/// to delete it then), or what the refusal means.
fn judge_add(r: &OpResult) -> Result<bool, Capability> {
    match r {
        OpResult::Done => Ok(true),
        // The kernel builds an SA (ESP, the AEAD, ESN) before it looks for
        // a duplicate: the same SA held by someone else (a concurrent probe)
        // passed every check that matters, and is not the probe's to delete.
        OpResult::Failed(e) if e.errno == libc::EEXIST => Ok(false),
        OpResult::Failed(e) if e.errno == libc::EPERM => {
            Err(Capability::NotPermitted(e.to_string()))
        }
        OpResult::Failed(e) => Err(Capability::Refused(e.clone())),
        OpResult::Invalid(e) => Err(Capability::Failed(e.to_string())),
        OpResult::Unknown => Err(Capability::Failed(
            "the kernel's answer to the probe SA was lost".into(),
        )),
        // Only deletions are checked for their owner.
        OpResult::Foreign { reqid } => Err(Capability::Failed(format!(
            "the probe SA's add was taken for a deletion of reqid {reqid}'s SA"
        ))),
    }
}

/// The kernel's answer to the deletion of the probe SA `id`: `None` if
/// nothing is left behind.
fn judge_delete(r: &OpResult, id: SaId) -> Option<Capability> {
    match r {
        OpResult::Done => None,
        OpResult::Failed(e) if e.errno == libc::ESRCH => None,
        r => Some(Capability::Failed(format!(
            "the probe SA ({id}) could not be deleted ({r:?}); its 10 s lifetime removes it"
        ))),
    }
}

/// Probes ESP support (IPv4 and IPv6): in a private network namespace
/// where the process may create one, else in the current namespace with an
/// SA deleted at once (see the module's documentation). Needs CAP_NET_ADMIN
/// only.
pub fn probe_esp() -> Capability {
    let handle = std::thread::spawn(|| {
        // Only this thread moves; it ends right after the probe, taking the
        // namespace with it.
        match rotor_sys::process::unshare_network() {
            Ok(()) => probe_here(false),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => probe_here(true),
            Err(e) => Capability::Failed(format!("unshare(CLONE_NEWNET): {e}")),
        }
    });
    handle
        .join()
        .unwrap_or_else(|_| Capability::Failed("probe thread panicked".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(errno: i32) -> OpResult {
        OpResult::Failed(KernelError {
            op: "probe".into(),
            errno,
            message: None,
        })
    }

    #[test]
    fn the_probe_sa_is_valid_towards_documentation_addresses_outside_rotors_reqids() {
        for v6 in [false, true] {
            let (add, id) = probe_sa(v6).unwrap();
            // What the netlink handle would send, refusals included.
            crate::encode::encode(&probe_ownership().unwrap(), &add).unwrap();
            let Op::AddSa(sa) = add else {
                panic!("{add:?}")
            };
            assert_eq!((id.dst, id.spi), (sa.dst, sa.spi));
            assert_eq!(sa.dst.is_ipv6(), v6);
            let doc = match sa.dst {
                IpAddr::V4(a) => a.octets()[..3] == [203, 0, 113],
                IpAddr::V6(a) => a.segments()[0] == 0x2001 && a.segments()[1] == 0x0db8,
            };
            assert!(doc, "{}", sa.dst);
            assert!(!Ownership::default().owns(sa.reqid));
            assert!(sa.lifetimes.add_seconds.is_some());
        }
    }

    #[test]
    fn only_an_sa_the_probe_added_is_deleted_and_refusals_are_judged() {
        assert_eq!(judge_add(&OpResult::Done), Ok(true));
        // Someone else's SA (a concurrent probe): capable, and left alone.
        assert_eq!(judge_add(&failed(libc::EEXIST)), Ok(false));
        assert!(matches!(
            judge_add(&failed(libc::EPERM)),
            Err(Capability::NotPermitted(_))
        ));
        assert!(matches!(
            judge_add(&failed(libc::ENOSYS)),
            Err(Capability::Refused(e)) if e.errno == libc::ENOSYS
        ));
        assert!(matches!(
            judge_add(&OpResult::Unknown),
            Err(Capability::Failed(_))
        ));
        let (_, id) = probe_sa(false).unwrap();
        assert_eq!(judge_delete(&OpResult::Done, id), None);
        assert_eq!(judge_delete(&failed(libc::ESRCH), id), None);
        match judge_delete(&OpResult::Unknown, id) {
            Some(Capability::Failed(m)) => assert!(m.contains("spi=0x00000100"), "{m}"),
            c => panic!("{c:?}"),
        }
    }
}
