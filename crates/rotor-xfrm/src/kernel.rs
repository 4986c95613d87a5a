//! The seam between a daemon and the kernel's XFRM state: [`Kernel`], with
//! the netlink implementation ([`crate::Xfrm`]) and an in-memory model
//! ([`crate::ModelKernel`]) behind it, and the errno rules that say when a
//! refusal means "already in the wanted state".

use crate::client::{OpResult, RemoveReport};
use crate::dump::OwnedObjects;
use crate::error::{KernelError, XfrmError};
use crate::spec::Op;

/// What a daemon needs from the kernel: batched operations with one result
/// each, a dump of everything it owns, and removal of it.
pub trait Kernel {
    /// Applies `ops` in order and returns one result per operation (same
    /// order). A failed operation does not stop the ones after it. `Err`
    /// only when the channel to the kernel itself fails (then nothing is
    /// known about any operation of the batch).
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<OpResult>, XfrmError>;

    /// Deletes every SA and policy this handle's ownership range covers, and
    /// nothing else (policies first).
    fn remove_owned(&mut self) -> Result<RemoveReport, XfrmError>;

    /// The SAs and policies in this handle's ownership range as they are now
    /// (see [`OwnedObjects`]): what a restarting daemon adopts.
    fn dump_owned(&mut self) -> Result<OwnedObjects, XfrmError>;

    /// A dump of the same objects that can run on another thread, so a
    /// daemon keeps serving while a large kernel is read (400,000 SAs take
    /// seconds). The default takes the dump now and hands it over; the
    /// netlink kernel opens a socket of its own and dumps when called.
    fn dumper(&mut self) -> Result<Dumper, XfrmError> {
        let d = self.dump_owned();
        Ok(Box::new(move || d))
    }

    /// Whether the kernel holds policy `id` of ours. The default looks in
    /// a dump; the netlink kernel asks for that one policy.
    fn has_policy(&mut self, id: &crate::PolicyId) -> Result<bool, XfrmError> {
        Ok(self
            .dump_owned()?
            .policies
            .iter()
            .any(|p| p.id.as_ref() == Some(id)))
    }
}

/// A dump of a kernel's owned objects, to run on another thread
/// ([`Kernel::dumper`]).
pub type Dumper = Box<dyn FnOnce() -> Result<OwnedObjects, XfrmError> + Send>;

impl Kernel for crate::Xfrm {
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<OpResult>, XfrmError> {
        crate::Xfrm::apply(self, ops)
    }

    fn remove_owned(&mut self) -> Result<RemoveReport, XfrmError> {
        crate::Xfrm::remove_owned(self)
    }

    fn dump_owned(&mut self) -> Result<OwnedObjects, XfrmError> {
        crate::Xfrm::dump_owned(self)
    }

    fn has_policy(&mut self, id: &crate::PolicyId) -> Result<bool, XfrmError> {
        crate::Xfrm::has_policy(self, id)
    }

    fn dumper(&mut self) -> Result<Dumper, XfrmError> {
        let mut other = crate::Xfrm::open(*self.ownership())?;
        Ok(Box::new(move || other.dump_owned()))
    }
}

/// Whether the kernel's refusal `e` of `op` means the object is already in
/// the state `op` asks for: a deletion of something that is gone (ESRCH for
/// SAs, ENOENT for policies), or an SA add that finds the SA in place when an
/// earlier attempt of the same add may have succeeded (`retried`: its reply
/// was lost, or it was refused after being applied). A first SA add that hits
/// EEXIST is a real conflict: every generation has a fresh SPI.
pub fn already_in_state(op: &Op, e: &KernelError, retried: bool) -> bool {
    match op {
        Op::DeleteSa(_) => e.errno == libc::ESRCH,
        Op::DeletePolicy(_) => e.errno == libc::ENOENT,
        Op::AddSa(_) => e.errno == libc::EEXIST && retried,
        _ => false,
    }
}

impl OpResult {
    /// Whether the kernel is now in the state `op` asks for: applied,
    /// refused by [`already_in_state`], or an SA deletion left undone
    /// because the SA there is not ours.
    pub fn is_settled(&self, op: &Op, retried: bool) -> bool {
        match self {
            OpResult::Done => true,
            OpResult::Failed(e) => already_in_state(op, e, retried),
            OpResult::Invalid(_) | OpResult::Unknown => false,
            // What was ours there is gone; what is there is not ours to touch.
            OpResult::Foreign { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IpNet;
    use crate::spec::{PolicyDir, PolicyId, PolicySelector, SaId};

    fn err(errno: i32) -> KernelError {
        KernelError {
            op: "test".into(),
            errno,
            message: None,
        }
    }

    #[test]
    fn gone_is_gone_and_a_retried_add_that_exists_is_done() {
        let sa = Op::DeleteSa(SaId {
            dst: "10.0.0.1".parse().unwrap(),
            spi: 0x1000,
        });
        let pol = Op::DeletePolicy(PolicyId {
            dir: PolicyDir::Out,
            selector: PolicySelector {
                src: IpNet::parse("10.0.0.1").unwrap(),
                dst: IpNet::parse("10.0.0.2").unwrap(),
                proto: None,
                sport: None,
            },
        });
        assert!(already_in_state(&sa, &err(libc::ESRCH), false));
        assert!(!already_in_state(&sa, &err(libc::ENOENT), false));
        assert!(already_in_state(&pol, &err(libc::ENOENT), false));
        assert!(!already_in_state(&pol, &err(libc::ENOMEM), true));
        assert!(OpResult::Done.is_settled(&sa, false));
        assert!(!OpResult::Unknown.is_settled(&sa, true));
    }
}
