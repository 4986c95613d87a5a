//! An in-memory model of the kernel's XFRM state, for tests of the code that
//! drives [`crate::Kernel`]: the same operations, the same errnos as the
//! kernel for the cases rotor meets (EEXIST on a duplicate SA add, ESRCH on a
//! missing SA, ENOENT on a missing policy), the same validation as the
//! netlink encoder, and refusals injected on demand.
//!
//! It models state, not packets: which SAs exist and which SPI each outbound
//! policy names. Handles are cheap clones of one shared state, so a test can
//! keep one while a daemon owns another.
//!
//! It also stands in for [`crate::Monitor`]: what an admin does to the model
//! ([`ModelKernel::flush_sas`], [`ModelKernel::delete_sa`], ...) queues the
//! [`KernelEvent`]s the real monitor would report for it, read with
//! [`ModelKernel::take_events`] or through a [`ModelEvents`] handle that,
//! like the monitor, has a file descriptor that turns readable.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::client::{OpResult, RemoveReport};
use crate::dump::{OwnedObjects, PolicyInfo, SaInfo};
use crate::encode::encode;
use crate::error::{KernelError, XfrmError};
use crate::kernel::Kernel;
use crate::monitor::KernelEvent;
use crate::ownership::Ownership;
use crate::spec::{Mode, Op, PolicyDir, PolicyId, SaId, SaSpec};

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

/// A policy as stored: what tests see, and what a dump reports besides.
#[derive(Clone, Debug)]
struct Stored {
    policy: ModelPolicy,
    priority: u32,
    mode: Mode,
}

#[derive(Default)]
struct State {
    sas: HashMap<SaId, SaSpec>,
    policies: HashMap<PolicyId, Stored>,
    refuse: Option<Refuser>,
    applied: u64,
    refused: u64,
    /// Events not yet taken, oldest first.
    events: Vec<KernelEvent>,
    /// Whether the model's own operations queue events too.
    echo: bool,
    /// Write end of the [`ModelEvents`] wake-up socket, once one exists.
    wake: Option<UnixStream>,
}

impl State {
    fn emit(&mut self, e: KernelEvent) {
        self.events.push(e);
        if let Some(w) = &self.wake {
            // Non-blocking: a full socket is already readable.
            let _ = (&*w).write(&[1]);
        }
    }
}

/// Whether the monitor would report the removal of policy `p` (an owned
/// template, or none).
fn removal_reported(own: &Ownership, p: &ModelPolicy) -> bool {
    p.bypass || own.owns(p.reqid)
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

    /// Another owner's handle on the same namespace (another instance, or
    /// another IPsec daemon).
    pub fn as_owner(&self, own: Ownership) -> ModelKernel {
        ModelKernel {
            own,
            state: Arc::clone(&self.state),
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
        self.lock().policies.get(id).map(|s| s.policy.clone())
    }

    /// The outbound policies: (id, policy).
    pub fn outbound(&self) -> Vec<(PolicyId, ModelPolicy)> {
        self.lock()
            .policies
            .iter()
            .filter(|(id, _)| id.dir == PolicyDir::Out)
            .map(|(id, s)| (*id, s.policy.clone()))
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
        // As the real client: an SA deletion is checked for its owner first.
        if let Op::DeleteSa(id) = op
            && let Some(sa) = s.sas.get(id)
            && !own.owns(sa.reqid)
        {
            return OpResult::Foreign { reqid: sa.reqid };
        }
        let injected = s.refuse.as_mut().and_then(|f| f(op));
        let outcome = match injected {
            Some(errno) => Err(errno),
            None => Self::change(s, own, op),
        };
        match outcome {
            Ok(event) => {
                s.applied += 1;
                if let Some(e) = event.filter(|_| s.echo) {
                    s.emit(e);
                }
                OpResult::Done
            }
            Err(errno) => {
                s.refused += 1;
                OpResult::Failed(KernelError {
                    op: op.to_string(),
                    errno,
                    message: None,
                })
            }
        }
    }

    /// Applies `op` to the state and returns the event the monitor would
    /// report for it, or returns the errno the kernel would.
    fn change(s: &mut State, own: &Ownership, op: &Op) -> Result<Option<KernelEvent>, i32> {
        Ok(match op {
            Op::AddSa(spec) => {
                let id = SaId {
                    dst: spec.dst,
                    spi: spec.spi,
                };
                if s.sas.contains_key(&id) {
                    return Err(libc::EEXIST);
                }
                s.sas.insert(id, spec.clone());
                Some(KernelEvent::SaAdded {
                    id,
                    reqid: spec.reqid,
                })
            }
            Op::UpdateSa(spec) => {
                let id = SaId {
                    dst: spec.dst,
                    spi: spec.spi,
                };
                let Some(sa) = s.sas.get_mut(&id) else {
                    return Err(libc::ESRCH);
                };
                sa.lifetimes = spec.lifetimes;
                sa.encap = spec.encap;
                sa.selector = spec.selector;
                Some(KernelEvent::SaAdded {
                    id,
                    reqid: sa.reqid,
                })
            }
            Op::MigrateSa(m) => {
                // As the kernel: the policy must exist with a template of
                // the SA's reqid, and a missing SA moves nothing.
                let Some(p) = s.policies.get(&m.policy) else {
                    return Err(libc::ENOENT);
                };
                if p.policy.reqid != m.reqid || p.mode != m.mode {
                    return Err(libc::ENODATA);
                }
                let old = SaId {
                    dst: m.old.1,
                    spi: m.spi,
                };
                let Some(mut sa) = s
                    .sas
                    .remove(&old)
                    .filter(|sa| sa.src == m.old.0 && sa.reqid == m.reqid)
                else {
                    return Ok(None);
                };
                let new = SaId {
                    dst: m.new.1,
                    spi: m.spi,
                };
                if s.sas.contains_key(&new) {
                    s.sas.insert(old, sa);
                    return Err(libc::ENODATA);
                }
                (sa.src, sa.dst) = m.new;
                if m.encap.is_some() {
                    sa.encap = m.encap;
                }
                s.sas.insert(new, sa);
                // The kernel reports migrations only to XFRMNLGRP_MIGRATE,
                // which the monitor does not join.
                None
            }
            Op::DeleteSa(id) => {
                let Some(sa) = s.sas.remove(id) else {
                    return Err(libc::ESRCH);
                };
                Some(KernelEvent::SaDeleted {
                    id: *id,
                    reqid: sa.reqid,
                })
            }
            Op::AddPolicy(p) | Op::UpdatePolicy(p) => {
                if matches!(op, Op::AddPolicy(_)) && s.policies.contains_key(&p.id) {
                    return Err(libc::EEXIST);
                }
                s.policies.insert(
                    p.id,
                    Stored {
                        policy: ModelPolicy {
                            reqid: p.reqid,
                            spi: p.spi,
                            block: p.block,
                            bypass: false,
                        },
                        priority: p.priority,
                        mode: p.mode,
                    },
                );
                Some(KernelEvent::PolicyAdded { id: p.id })
            }
            Op::UpdateBypassPolicy { id, priority } => {
                s.policies.insert(
                    *id,
                    Stored {
                        policy: ModelPolicy {
                            reqid: 0,
                            spi: 0,
                            block: false,
                            bypass: true,
                        },
                        priority: *priority,
                        mode: Mode::Transport,
                    },
                );
                // Template-less additions are not reported.
                None
            }
            Op::DeletePolicy(id) => {
                let Some(gone) = s.policies.remove(id) else {
                    return Err(libc::ENOENT);
                };
                removal_reported(own, &gone.policy)
                    .then_some(KernelEvent::PolicyDeleted { id: *id })
            }
        })
    }

    /// From now on (`true`), the model's own operations ([`Kernel::apply`],
    /// [`Kernel::remove_owned`]) queue the events the real monitor would
    /// report for them, as the kernel notifies a daemon of its own changes;
    /// off by default.
    pub fn echo_ops(&self, on: bool) {
        self.lock().echo = on;
    }

    /// Queues `e` as if the monitor had read it (e.g. an
    /// [`KernelEvent::Overrun`]).
    pub fn push_event(&self, e: KernelEvent) {
        self.lock().emit(e);
    }

    /// Takes every queued event, oldest first.
    pub fn take_events(&self) -> Vec<KernelEvent> {
        std::mem::take(&mut self.lock().events)
    }

    /// A reader of the queued events with a file descriptor that is readable
    /// whenever events are queued, to drive a daemon's event loop as a
    /// [`crate::Monitor`] does. The queue is shared: one consumer at a time;
    /// a new handle takes over the wake-ups from the previous one.
    pub fn events(&self) -> io::Result<ModelEvents> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let mut s = self.lock();
        if !s.events.is_empty() {
            let _ = (&writer).write(&[1]);
        }
        s.wake = Some(writer);
        Ok(ModelEvents {
            state: Arc::clone(&self.state),
            reader,
        })
    }

    /// An admin's `ip xfrm state flush`: every SA goes. Queues
    /// [`KernelEvent::SaFlushed`] if there was one (the kernel says nothing
    /// when the table was empty).
    pub fn flush_sas(&self) {
        let mut s = self.lock();
        if !s.sas.is_empty() {
            s.sas.clear();
            s.emit(KernelEvent::SaFlushed);
        }
    }

    /// An admin's `ip xfrm policy flush`: every policy goes, bypass ones
    /// too. Queues [`KernelEvent::PolicyFlushed`] if there was one.
    pub fn flush_policies(&self) {
        let mut s = self.lock();
        if !s.policies.is_empty() {
            s.policies.clear();
            s.emit(KernelEvent::PolicyFlushed);
        }
    }

    /// An admin's `ip xfrm state delete`: whether the SA existed. Queues
    /// [`KernelEvent::SaDeleted`] for an owned SA.
    pub fn delete_sa(&self, id: SaId) -> bool {
        let own = self.own;
        let mut s = self.lock();
        let Some(sa) = s.sas.remove(&id) else {
            return false;
        };
        if own.owns(sa.reqid) {
            s.emit(KernelEvent::SaDeleted {
                id,
                reqid: sa.reqid,
            });
        }
        true
    }

    /// An admin's `ip xfrm policy delete`: whether the policy existed. Queues
    /// [`KernelEvent::PolicyDeleted`] as the monitor would (owned template,
    /// or a bypass policy).
    pub fn delete_policy(&self, id: &PolicyId) -> bool {
        let own = self.own;
        let mut s = self.lock();
        let Some(gone) = s.policies.remove(id) else {
            return false;
        };
        if removal_reported(&own, &gone.policy) {
            s.emit(KernelEvent::PolicyDeleted { id: *id });
        }
        true
    }

    /// A lifetime limit reached: a hard expiry deletes the SA, a soft one
    /// only warns; queues [`KernelEvent::SaExpired`]. Whether the SA existed.
    /// (The model does not count time or traffic itself.)
    pub fn expire_sa(&self, id: SaId, hard: bool) -> bool {
        let own = self.own;
        let mut s = self.lock();
        let Some(reqid) = s.sas.get(&id).map(|sa| sa.reqid) else {
            return false;
        };
        if hard {
            s.sas.remove(&id);
        }
        if own.owns(reqid) {
            s.emit(KernelEvent::SaExpired { id, reqid, hard });
        }
        true
    }
}

/// Reads the events a [`ModelKernel`] queues, like [`crate::Monitor`] reads
/// the kernel's: the same `read_events`, and a descriptor that is readable
/// while events are queued (for `tokio::io::unix::AsyncFd`).
pub struct ModelEvents {
    state: Arc<Mutex<State>>,
    reader: UnixStream,
}

impl std::fmt::Debug for ModelEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEvents")
            .field("fd", &self.reader.as_raw_fd())
            .finish()
    }
}

impl ModelEvents {
    /// Appends every queued event to `out`, oldest first, and returns how
    /// many. Never blocks; afterwards the descriptor is not readable until
    /// another event is queued.
    pub fn read_events(&mut self, out: &mut Vec<KernelEvent>) -> Result<usize, XfrmError> {
        // Drain the wake-ups first: an event queued after this is signalled
        // again.
        let mut sink = [0u8; 256];
        loop {
            match self.reader.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(XfrmError::Io {
                        context: "reading model events".to_string(),
                        source,
                    });
                }
            }
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = s.events.len();
        out.append(&mut s.events);
        Ok(n)
    }
}

impl AsRawFd for ModelEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }
}

impl AsFd for ModelEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.reader.as_fd()
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
        let policies: Vec<PolicyId> = s
            .policies
            .iter()
            .filter(|(_, p)| !p.policy.bypass && own.owns(p.policy.reqid))
            .map(|(id, _)| *id)
            .collect();
        let sas: Vec<SaId> = s
            .sas
            .iter()
            .filter(|(_, sa)| own.owns(sa.reqid))
            .map(|(id, _)| *id)
            .collect();
        for id in &policies {
            s.policies.remove(id);
            if s.echo {
                s.emit(KernelEvent::PolicyDeleted { id: *id });
            }
        }
        for id in &sas {
            if let Some(sa) = s.sas.remove(id)
                && s.echo
            {
                s.emit(KernelEvent::SaDeleted {
                    id: *id,
                    reqid: sa.reqid,
                });
            }
        }
        Ok(RemoveReport {
            policies: policies.len(),
            sas: sas.len(),
            failures: Vec::new(),
        })
    }

    fn dump_owned(&mut self) -> Result<OwnedObjects, XfrmError> {
        let own = self.own;
        let s = self.lock();
        let sas = s
            .sas
            .iter()
            .filter(|(_, sa)| own.owns(sa.reqid))
            .map(|(id, sa)| SaInfo {
                id: *id,
                src: sa.src,
                reqid: sa.reqid,
                mode: Some(sa.mode),
                proto: libc::IPPROTO_ESP as u8,
                rfc4106: true,
                aead_key_bits: (sa.key.as_bytes().len() * 8) as u32,
                packets: 0,
                bytes: 0,
                replay_drops: 0,
                integrity_failed: 0,
                replay_window: sa.replay_window,
                esn: sa.esn,
                encap: sa.encap.is_some(),
                add_time: 0,
            })
            .collect();
        let policies = s
            .policies
            .iter()
            .filter(|(_, p)| !p.policy.bypass && own.owns(p.policy.reqid))
            .map(|(id, p)| PolicyInfo {
                id: Some(*id),
                priority: p.priority,
                index: 0,
                templates: vec![(p.policy.spi, p.policy.reqid, Some(p.mode))],
                block: p.policy.block,
                has_mark_or_ifid: false,
            })
            .collect();
        Ok(OwnedObjects { sas, policies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AeadKey, IpNet, Lifetimes, PolicySelector, PolicySpec};

    fn sa(own: &Ownership, spi: u32) -> SaSpec {
        SaSpec {
            src: "10.9.0.1".parse().unwrap(),
            dst: "10.9.0.2".parse().unwrap(),
            spi,
            reqid: own.base(),
            mode: Mode::Transport,
            key: AeadKey::new(vec![3; 36]).unwrap(),
            replay_window: 1024,
            esn: true,
            encap: None,
            lifetimes: Lifetimes::default(),
            selector: None,
        }
    }

    fn pid(dst: &str) -> PolicyId {
        PolicyId {
            dir: PolicyDir::Out,
            selector: PolicySelector {
                src: IpNet::parse("10.9.0.1").unwrap(),
                dst: IpNet::parse(dst).unwrap(),
                proto: None,
                sport: None,
            },
        }
    }

    fn pol(own: &Ownership, id: PolicyId, spi: u32) -> PolicySpec {
        PolicySpec {
            id,
            priority: 1000,
            tmpl_endpoints: None,
            spi,
            reqid: own.base(),
            mode: Mode::Transport,
            block: false,
        }
    }

    fn id(spi: u32) -> SaId {
        SaId {
            dst: "10.9.0.2".parse().unwrap(),
            spi,
        }
    }

    #[test]
    fn an_sa_of_another_owner_is_never_deleted() {
        let own = Ownership::default();
        let other = Ownership::new(own.base() + own.len(), 16).unwrap();
        let mut ours = ModelKernel::new(own);
        let mut theirs = ours.as_owner(other);
        assert!(theirs.apply(&[Op::AddSa(sa(&other, 0x2001))]).unwrap()[0].is_done());
        let r = ours.apply(&[Op::DeleteSa(id(0x2001))]).unwrap();
        assert_eq!(
            r,
            vec![OpResult::Foreign {
                reqid: other.base()
            }]
        );
        assert!(ours.has_sa(id(0x2001)));
        assert!(theirs.apply(&[Op::DeleteSa(id(0x2001))]).unwrap()[0].is_done());
        assert!(!ours.has_sa(id(0x2001)));
    }

    #[test]
    fn admin_actions_queue_what_the_monitor_would_report() {
        let own = Ownership::default();
        let mut k = ModelKernel::new(own);
        let p = pid("10.9.0.2");
        let b = pid("10.9.0.3");
        let ops = [
            Op::AddSa(sa(&own, 0x1001)),
            Op::AddSa(sa(&own, 0x1002)),
            Op::AddSa(sa(&own, 0x1003)),
            Op::AddPolicy(pol(&own, p, 0x1001)),
            Op::UpdateBypassPolicy { id: b, priority: 5 },
        ];
        assert!(k.apply(&ops).unwrap().iter().all(OpResult::is_done));
        // Own operations are silent unless echoed.
        assert!(k.take_events().is_empty());
        let r = own.base();
        assert!(k.delete_sa(id(0x1001)));
        assert!(!k.delete_sa(id(0x1001)));
        assert!(k.expire_sa(id(0x1002), false));
        assert!(k.has_sa(id(0x1002)));
        assert!(k.expire_sa(id(0x1002), true));
        assert!(!k.has_sa(id(0x1002)));
        assert!(k.delete_policy(&b));
        k.flush_sas();
        k.flush_sas(); // empty: nothing to say
        k.flush_policies();
        k.flush_policies();
        k.push_event(KernelEvent::Overrun);
        assert_eq!(
            k.take_events(),
            [
                KernelEvent::SaDeleted {
                    id: id(0x1001),
                    reqid: r
                },
                KernelEvent::SaExpired {
                    id: id(0x1002),
                    reqid: r,
                    hard: false
                },
                KernelEvent::SaExpired {
                    id: id(0x1002),
                    reqid: r,
                    hard: true
                },
                KernelEvent::PolicyDeleted { id: b },
                KernelEvent::SaFlushed,
                KernelEvent::PolicyFlushed,
                KernelEvent::Overrun,
            ]
        );
        assert_eq!((k.sa_count(), k.policy_count()), (0, 0));
        assert!(k.take_events().is_empty());
    }

    #[test]
    fn echoed_ops_and_the_readable_descriptor() {
        let own = Ownership::default();
        let mut k = ModelKernel::new(own);
        let mut ev = k.events().unwrap();
        let mut out = Vec::new();
        assert_eq!(ev.read_events(&mut out).unwrap(), 0);
        let readable = |ev: &ModelEvents| {
            use rustix::event::{PollFd, PollFlags, poll};
            let mut fds = [PollFd::new(ev, PollFlags::IN)];
            poll(&mut fds, Some(&rustix::event::Timespec::default())).unwrap() == 1
        };
        assert!(!readable(&ev));
        k.echo_ops(true);
        let p = pid("10.9.0.2");
        k.apply(&[
            Op::AddSa(sa(&own, 0x1001)),
            Op::AddPolicy(pol(&own, p, 0x1001)),
            Op::DeletePolicy(p),
        ])
        .unwrap();
        assert!(readable(&ev));
        assert_eq!(ev.read_events(&mut out).unwrap(), 3);
        assert!(!readable(&ev));
        k.remove_owned().unwrap();
        assert!(readable(&ev));
        ev.read_events(&mut out).unwrap();
        assert_eq!(
            out,
            [
                KernelEvent::SaAdded {
                    id: id(0x1001),
                    reqid: own.base()
                },
                KernelEvent::PolicyAdded { id: p },
                KernelEvent::PolicyDeleted { id: p },
                KernelEvent::SaDeleted {
                    id: id(0x1001),
                    reqid: own.base()
                },
            ]
        );
    }

    #[test]
    fn dump_owned_reports_owned_sas_and_templated_policies() {
        let own = Ownership::default();
        let mut k = ModelKernel::new(own);
        let p = pid("10.9.0.2");
        let mut blocked = pol(&own, p, 0x1001);
        blocked.block = true;
        blocked.priority = 77;
        k.apply(&[
            Op::AddSa(sa(&own, 0x1001)),
            Op::AddPolicy(blocked),
            Op::UpdateBypassPolicy {
                id: pid("10.9.0.3"),
                priority: 5,
            },
        ])
        .unwrap();
        let d = k.dump_owned().unwrap();
        assert_eq!(d.sas.len(), 1);
        let s = &d.sas[0];
        assert_eq!(
            (s.id, s.reqid, s.aead_key_bits, s.replay_window),
            (id(0x1001), own.base(), 288, 1024)
        );
        assert!(s.esn && s.rfc4106 && !s.encap);
        assert_eq!(
            d.policies,
            [PolicyInfo {
                id: Some(p),
                priority: 77,
                index: 0,
                templates: vec![(0x1001, own.base(), Some(Mode::Transport))],
                block: true,
                has_mark_or_ifid: false,
            }]
        );
        assert!(d.policies[0].owned_by(&own));
        // The public view of the policy is as before.
        let m = k.policy(&p).unwrap();
        assert_eq!((m.spi, m.block, m.bypass), (0x1001, true, false));
    }
}
