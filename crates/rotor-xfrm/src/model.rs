//! An in-memory model of the kernel's XFRM state, for tests of the code that
//! drives [`crate::Kernel`]: the same operations, the same errnos as the
//! kernel for the cases rotor meets (EEXIST on a duplicate SA add, ESRCH on a
//! missing SA, ENOENT on a missing policy), the same validation as the
//! netlink encoder, and refusals injected on demand.
//!
//! It models state, not packets: which SAs exist and which SPI each outbound
//! policy names. Handles are cheap clones of one shared state, so a test can
//! keep one while a daemon owns another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::client::{OpResult, RemoveReport};
use crate::encode::encode;
use crate::error::{KernelError, XfrmError};
use crate::kernel::Kernel;
use crate::ownership::Ownership;
use crate::spec::{Op, PolicyDir, PolicyId, SaId, SaSpec};

/// One policy as the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPolicy {
    /// Its reqid (0 for a bypass policy, which has no template).
    pub reqid: u32,
    /// The SPI its template names (0: any).
    pub spi: u32,
    /// Drops matching traffic.
    pub block: bool,
    /// A template-less allow (bypass) policy.
    pub bypass: bool,
}

/// Decides whether to refuse an operation: `Some(errno)` refuses it.
pub type Refuser = Box<dyn FnMut(&Op) -> Option<i32> + Send>;

#[derive(Default)]
struct State {
    sas: HashMap<SaId, SaSpec>,
    policies: HashMap<PolicyId, ModelPolicy>,
    refuse: Option<Refuser>,
    applied: u64,
    refused: u64,
}

/// A shared handle on one modelled namespace.
#[derive(Clone)]
pub struct ModelKernel {
    own: Ownership,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for ModelKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("ModelKernel")
            .field("sas", &s.sas.len())
            .field("policies", &s.policies.len())
            .finish()
    }
}

impl ModelKernel {
    /// An empty namespace; objects are validated (and removed) against `own`.
    pub fn new(own: Ownership) -> Self {
        ModelKernel {
            own,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock poisons it; the state
        // itself is still consistent (every change is one map operation).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, every operation `f` returns `Some(errno)` for is refused
    /// with that errno (and changes nothing); `None` ends the injection.
    pub fn refuse(&self, f: Option<Refuser>) {
        self.lock().refuse = f;
    }

    /// The SPIs of the SAs to `dst`, sorted.
    pub fn sa_spis_to(&self, dst: std::net::IpAddr) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .lock()
            .sas
            .keys()
            .filter(|id| id.dst == dst)
            .map(|id| id.spi)
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether the SA (dst, spi) exists.
    pub fn has_sa(&self, id: SaId) -> bool {
        self.lock().sas.contains_key(&id)
    }

    /// Number of SAs.
    pub fn sa_count(&self) -> usize {
        self.lock().sas.len()
    }

    /// Number of policies.
    pub fn policy_count(&self) -> usize {
        self.lock().policies.len()
    }

    /// The policy `id`, if installed.
    pub fn policy(&self, id: &PolicyId) -> Option<ModelPolicy> {
        self.lock().policies.get(id).cloned()
    }

    /// The outbound policies: (id, policy).
    pub fn outbound(&self) -> Vec<(PolicyId, ModelPolicy)> {
        self.lock()
            .policies
            .iter()
            .filter(|(id, _)| id.dir == PolicyDir::Out)
            .map(|(id, p)| (*id, p.clone()))
            .collect()
    }

    /// Operations applied, and refused (by injection or by the rules).
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.applied, s.refused)
    }

    fn one(s: &mut State, own: &Ownership, op: &Op) -> OpResult {
        if let Err(e) = encode(own, op) {
            return OpResult::Invalid(e);
        }
        let injected = s.refuse.as_mut().and_then(|f| f(op));
        let errno = match injected {
            Some(errno) => Some(errno),
            None => Self::change(s, op),
        };
        match errno {
            None => {
                s.applied += 1;
                OpResult::Done
            }
            Some(errno) => {
                s.refused += 1;
                OpResult::Failed(KernelError {
                    op: op.to_string(),
                    errno,
                    message: None,
                })
            }
        }
    }

    /// Applies `op` to the state, or returns the errno the kernel would.
    fn change(s: &mut State, op: &Op) -> Option<i32> {
        match op {
            Op::AddSa(spec) => {
                let id = SaId {
                    dst: spec.dst,
                    spi: spec.spi,
                };
                if s.sas.contains_key(&id) {
                    return Some(libc::EEXIST);
                }
                s.sas.insert(id, spec.clone());
            }
            Op::UpdateSa(spec) => {
                let id = SaId {
                    dst: spec.dst,
                    spi: spec.spi,
                };
                let Some(sa) = s.sas.get_mut(&id) else {
                    return Some(libc::ESRCH);
                };
                sa.lifetimes = spec.lifetimes;
                sa.encap = spec.encap;
                sa.selector = spec.selector;
            }
            Op::DeleteSa(id) => {
                if s.sas.remove(id).is_none() {
                    return Some(libc::ESRCH);
                }
            }
            Op::AddPolicy(p) | Op::UpdatePolicy(p) => {
                if matches!(op, Op::AddPolicy(_)) && s.policies.contains_key(&p.id) {
                    return Some(libc::EEXIST);
                }
                s.policies.insert(
                    p.id,
                    ModelPolicy {
                        reqid: p.reqid,
                        spi: p.spi,
                        block: p.block,
                        bypass: false,
                    },
                );
            }
            Op::UpdateBypassPolicy { id, .. } => {
                s.policies.insert(
                    *id,
                    ModelPolicy {
                        reqid: 0,
                        spi: 0,
                        block: false,
                        bypass: true,
                    },
                );
            }
            Op::DeletePolicy(id) => {
                if s.policies.remove(id).is_none() {
                    return Some(libc::ENOENT);
                }
            }
        }
        None
    }
}

impl Kernel for ModelKernel {
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<OpResult>, XfrmError> {
        let own = self.own;
        let mut s = self.lock();
        Ok(ops.iter().map(|op| Self::one(&mut s, &own, op)).collect())
    }

    fn remove_owned(&mut self) -> Result<RemoveReport, XfrmError> {
        let own = self.own;
        let mut s = self.lock();
        let before = (s.policies.len(), s.sas.len());
        s.policies.retain(|_, p| p.bypass || !own.owns(p.reqid));
        s.sas.retain(|_, sa| !own.owns(sa.reqid));
        Ok(RemoveReport {
            policies: before.0 - s.policies.len(),
            sas: before.1 - s.sas.len(),
            failures: Vec::new(),
        })
    }
}
