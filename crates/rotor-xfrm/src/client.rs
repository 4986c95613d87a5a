//! [`Xfrm`]: batched SA and policy operations, dumps, and removal of
//! everything rotor owns.
//!
//! Batching: operations are packed into datagrams of up to 192 KiB. Only the
//! last message of each datagram asks for an ACK; the kernel still answers
//! every failed message on its own, and processes a whole datagram inside
//! `sendmsg` in order, so once the last message's ACK (or error) arrives, every
//! earlier message without an error reply has succeeded. If the kernel reports
//! ENOBUFS, replies were lost and the operations without a known result are
//! reported as [`OpResult::Unknown`]: reconcile with [`Xfrm::dump_sas`].
//!
//! SA deletions are checked first: the kernel deletes an SA by (destination,
//! SPI) whoever installed it, so before the batch an `XFRM_MSG_GETSA` per
//! deletion (batched the same way) reads the SA's reqid, and an SA outside
//! this handle's ownership is left alone ([`OpResult::Foreign`]).

use std::collections::HashMap;
use std::time::Duration;

use netlink_packet_xfrm::{
    XfrmMessage, policy::DelGetMessage as PolicyDelGet, state::GetDumpMessage,
};
use zeroize::Zeroize;

use crate::dump::{OwnedObjects, PolicyInfo, SaInfo, parse_policy, parse_sa};
use crate::encode::{encode, sa_id_message, scrub};
use crate::error::{KernelError, SpecError, XfrmError};
use crate::netlink::{MAX_DATAGRAM, Reply, XfrmSocket};
use crate::ownership::Ownership;
use crate::spec::{Op, SaId};

/// How long to wait for the kernel's reply to one datagram.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Outcome of one operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// The kernel applied it.
    Done,
    /// The kernel refused it.
    Failed(KernelError),
    /// It was never sent: a value in it is invalid.
    Invalid(SpecError),
    /// Its reply was lost (receive-buffer overrun or timeout): the kernel may or
    /// may not have applied it. Reconcile with a dump.
    Unknown,
    /// An SA deletion that was not sent: the SA at that destination and SPI
    /// carries `reqid`, outside this handle's ownership (another instance's
    /// or another IPsec daemon's SA, installed after ours went).
    Foreign {
        /// The SA's reqid.
        reqid: u32,
    },
}

impl OpResult {
    /// Whether the operation is known to have been applied.
    pub fn is_done(&self) -> bool {
        matches!(self, OpResult::Done)
    }
}

/// What [`Xfrm::remove_owned`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoveReport {
    /// SAs deleted.
    pub sas: usize,
    /// Policies deleted.
    pub policies: usize,
    /// Deletions the kernel refused (other than "already gone").
    pub failures: Vec<KernelError>,
}

/// A handle on the kernel's XFRM state for one network namespace (the one the
/// process was in when it was opened).
pub struct Xfrm {
    sock: XfrmSocket,
    own: Ownership,
    timeout: Duration,
}

impl Xfrm {
    /// Opens a NETLINK_XFRM socket in the current network namespace. Works
    /// without privilege; each operation then needs CAP_NET_ADMIN.
    pub fn open(own: Ownership) -> Result<Self, XfrmError> {
        Ok(Xfrm {
            sock: XfrmSocket::open(DEFAULT_TIMEOUT)?,
            own,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// This handle's netlink port id. The kernel's notifications of the
    /// changes made through this handle carry it ([`crate::Monitor::ignore_sender`]).
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// The ownership range this handle marks objects with and removes.
    pub fn ownership(&self) -> &Ownership {
        &self.own
    }

    /// Applies `ops` in order, in as few netlink writes as fit, and returns one
    /// result per operation (same order). A failed operation does not stop the
    /// ones after it: the caller decides what a failure means. Returns `Err`
    /// only when the socket itself fails.
    pub fn apply(&mut self, ops: &[Op]) -> Result<Vec<OpResult>, XfrmError> {
        let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
        self.check_deletions(ops, &mut results)?;
        let mut i = 0;
        let mut datagram: Vec<u8> = Vec::with_capacity(MAX_DATAGRAM + 4096);
        while i < ops.len() {
            datagram.clear();
            // seq -> index into ops, for this datagram only.
            let mut in_flight: HashMap<u32, usize> = HashMap::new();
            let mut last: Option<(u32, usize)> = None; // (seq, header offset)
            while i < ops.len() {
                if results[i].is_some() {
                    i += 1;
                    continue;
                }
                let mut msg = match encode(&self.own, &ops[i]) {
                    Ok(m) => m,
                    Err(e) => {
                        results[i] = Some(OpResult::Invalid(e));
                        i += 1;
                        continue;
                    }
                };
                let before = datagram.len();
                let seq = self.sock.next_seq();
                let at = XfrmSocket::frame(&mut datagram, &msg, seq, false, false);
                XfrmSocket::set_pid(&mut datagram, at, self.sock.portid());
                scrub(&mut msg);
                if datagram.len() > MAX_DATAGRAM && !in_flight.is_empty() {
                    // Does not fit: send what we have, this op starts the next.
                    datagram[before..].zeroize();
                    datagram.truncate(before);
                    break;
                }
                in_flight.insert(seq, i);
                last = Some((seq, at));
                i += 1;
            }
            let Some((last_seq, last_at)) = last else {
                continue;
            };
            XfrmSocket::set_ack(&mut datagram, last_at);
            let context = format!("applying a batch of {} XFRM operations", in_flight.len());
            let sent = self.sock.send(&datagram, &context);
            datagram.zeroize();
            // EPERM/EMSGSIZE etc. on the whole datagram: nothing was applied.
            sent?;
            let mut done = false;
            let mut lost = false;
            while !done {
                let r = self.sock.recv_each(&context, |reply| {
                    if let Reply::Ack {
                        seq,
                        errno,
                        message,
                    } = reply
                    {
                        if let Some(&idx) = in_flight.get(&seq) {
                            results[idx] = Some(if errno == 0 {
                                OpResult::Done
                            } else {
                                OpResult::Failed(KernelError {
                                    op: ops[idx].to_string(),
                                    errno,
                                    message,
                                })
                            });
                        }
                        if seq == last_seq {
                            done = true;
                        }
                    }
                });
                match r {
                    Ok(()) => {}
                    Err(XfrmError::Overrun(_)) => lost = true,
                    Err(XfrmError::Timeout(..)) => {
                        lost = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            for idx in in_flight.into_values() {
                if results[idx].is_none() {
                    results[idx] = Some(if lost {
                        OpResult::Unknown
                    } else {
                        OpResult::Done
                    });
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(OpResult::Unknown))
            .collect())
    }

    /// Settles every SA deletion of `ops` whose SA is not ours before it is
    /// sent: [`OpResult::Foreign`] where the SA carries a reqid outside
    /// this handle's ownership, [`OpResult::Unknown`] where the kernel's
    /// answer was lost (the next reconcile's dump finds an SA of ours that
    /// is left). A deletion whose SA is absent goes ahead (the kernel then
    /// says ESRCH: already gone), as does one of an SA an earlier operation
    /// of the same batch adds.
    fn check_deletions(
        &mut self,
        ops: &[Op],
        results: &mut [Option<OpResult>],
    ) -> Result<(), XfrmError> {
        let deletions: Vec<(usize, &SaId)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op {
                Op::DeleteSa(id) => Some((i, id)),
                _ => None,
            })
            .collect();
        if deletions.is_empty() {
            return Ok(());
        }
        let r = self.read_owners(&deletions, results);
        // The kernel's answers carry the SAs' keys: wiped on every path.
        self.sock.wipe_rx();
        r
    }

    /// Asks the kernel for the SAs of `deletions` ((index into the batch,
    /// id)) and settles `results` as [`Xfrm::check_deletions`] says. Leaves
    /// the answers in the receive buffers for the caller to wipe.
    fn read_owners(
        &mut self,
        deletions: &[(usize, &SaId)],
        results: &mut [Option<OpResult>],
    ) -> Result<(), XfrmError> {
        let context = format!("reading the owners of {} SAs to delete", deletions.len());
        let mut datagram: Vec<u8> = Vec::new();
        let mut k = 0;
        while k < deletions.len() {
            datagram.clear();
            // seq -> index into ops; each request is answered by the SA or
            // by an error, never both.
            let mut waiting: HashMap<u32, usize> = HashMap::new();
            while k < deletions.len() && datagram.len() < MAX_DATAGRAM {
                let (i, id) = deletions[k];
                let seq = self.sock.next_seq();
                let msg = XfrmMessage::GetSa(sa_id_message(id));
                let at = XfrmSocket::frame(&mut datagram, &msg, seq, false, false);
                XfrmSocket::set_pid(&mut datagram, at, self.sock.portid());
                waiting.insert(seq, i);
                k += 1;
            }
            self.sock.send(&datagram, &context)?;
            let own = self.own;
            let on_reply = |reply: Reply<'_>,
                            waiting: &mut HashMap<u32, usize>,
                            results: &mut [Option<OpResult>]| match reply
            {
                Reply::Data { seq, kind, payload } => {
                    if let Some(i) = waiting.remove(&seq)
                        && let Some(sa) = parse_sa(kind, payload)
                        && !own.owns(sa.reqid)
                    {
                        results[i] = Some(OpResult::Foreign { reqid: sa.reqid });
                    }
                }
                Reply::Ack { seq, .. } => {
                    waiting.remove(&seq);
                }
                Reply::Done { .. } => {}
            };
            // The kernel answered every request while `send` ran: take the
            // answers many per system call. An answer too long to read
            // that way leaves its SA unknown, so it is not deleted.
            let mut cut = Vec::new();
            let queued = self.sock.recv_queued(
                &context,
                |reply| on_reply(reply, &mut waiting, results),
                |seq| cut.push(seq),
            );
            match queued {
                Ok(_) => {}
                // Answers were lost: the SAs they were about stay unknown.
                Err(XfrmError::Overrun(_)) => cut.extend(waiting.keys().copied()),
                Err(e) => return Err(e),
            }
            for seq in cut {
                if let Some(i) = waiting.remove(&seq) {
                    results[i] = Some(OpResult::Unknown);
                }
            }
            while !waiting.is_empty() {
                let r = self
                    .sock
                    .recv_each(&context, |reply| on_reply(reply, &mut waiting, results));
                match r {
                    Ok(()) => {}
                    Err(XfrmError::Overrun(_) | XfrmError::Timeout(..)) => {
                        for i in waiting.drain().map(|(_, i)| i) {
                            results[i] = Some(OpResult::Unknown);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Whether the kernel holds policy `id` (whoever installed it): one
    /// request, answered by the policy or by ENOENT.
    pub fn has_policy(&mut self, id: &crate::PolicyId) -> Result<bool, XfrmError> {
        let context = "looking up one policy";
        let mut datagram: Vec<u8> = Vec::new();
        let seq = self.sock.next_seq();
        let msg = XfrmMessage::GetPolicy(crate::encode::policy_id_message(id));
        let at = XfrmSocket::frame(&mut datagram, &msg, seq, false, false);
        XfrmSocket::set_pid(&mut datagram, at, self.sock.portid());
        self.sock.send(&datagram, context)?;
        let mut found: Option<Result<bool, i32>> = None;
        while found.is_none() {
            self.sock.recv_each(context, |reply| match reply {
                Reply::Data { seq: s, .. } if s == seq => found = Some(Ok(true)),
                Reply::Ack { seq: s, errno, .. } if s == seq => {
                    found = Some(if errno == libc::ENOENT {
                        Ok(false)
                    } else {
                        Err(errno)
                    });
                }
                _ => {}
            })?;
        }
        match found {
            Some(Ok(b)) => Ok(b),
            Some(Err(errno)) => Err(XfrmError::Io {
                context: context.into(),
                source: std::io::Error::from_raw_os_error(errno.abs()),
            }),
            None => Ok(false),
        }
    }

    /// Applies `ops` and fails on the first operation that did not succeed,
    /// naming it. Earlier operations stay applied.
    pub fn apply_all(&mut self, ops: &[Op]) -> Result<(), XfrmError> {
        for (op, r) in ops.iter().zip(self.apply(ops)?) {
            match r {
                OpResult::Done => {}
                OpResult::Failed(e) => return Err(XfrmError::Kernel(e)),
                OpResult::Invalid(source) => {
                    return Err(XfrmError::Spec {
                        op: op.to_string(),
                        source,
                    });
                }
                OpResult::Unknown => return Err(XfrmError::Overrun(op.to_string())),
                OpResult::Foreign { reqid } => {
                    return Err(XfrmError::Foreign {
                        op: op.to_string(),
                        reqid,
                    });
                }
            }
        }
        Ok(())
    }

    fn dump<T>(
        &mut self,
        msg: XfrmMessage,
        what: &str,
        parse: impl Fn(u16, &[u8]) -> Option<T>,
    ) -> Result<Vec<T>, XfrmError> {
        let context = format!("dumping {what}");
        let seq = self.sock.next_seq();
        let mut req = Vec::new();
        XfrmSocket::frame(&mut req, &msg, seq, false, true);
        self.sock.send(&req, &context)?;
        let mut out = Vec::new();
        let mut done = false;
        let mut error = None;
        while !done {
            let r = self.sock.recv_each(&context, |reply| match reply {
                Reply::Data {
                    seq: s,
                    kind,
                    payload,
                } if s == seq => {
                    if let Some(v) = parse(kind, payload) {
                        out.push(v);
                    }
                }
                Reply::Done { seq: s } if s == seq => done = true,
                Reply::Ack {
                    seq: s,
                    errno,
                    message,
                } if s == seq => {
                    done = true;
                    if errno != 0 {
                        error = Some(KernelError {
                            op: context.clone(),
                            errno,
                            message,
                        });
                    }
                }
                _ => {}
            });
            if let Err(e) = r {
                self.sock.wipe_rx();
                return Err(match e {
                    XfrmError::Timeout(_, c) => {
                        XfrmError::Timeout(self.timeout.as_millis() as u64, c)
                    }
                    e => e,
                });
            }
        }
        self.sock.wipe_rx();
        match error {
            Some(e) => Err(XfrmError::Kernel(e)),
            None => Ok(out),
        }
    }

    /// Every ESP/AH SA in this namespace (rotor's and others'), with counters.
    pub fn dump_sas(&mut self) -> Result<Vec<SaInfo>, XfrmError> {
        self.dump(
            XfrmMessage::GetDumpSa(GetDumpMessage { nlas: vec![] }),
            "SAs",
            parse_sa,
        )
    }

    /// Every policy in this namespace (rotor's and others').
    pub fn dump_policies(&mut self) -> Result<Vec<PolicyInfo>, XfrmError> {
        self.dump(
            XfrmMessage::GetPolicy(PolicyDelGet::default()),
            "policies",
            parse_policy,
        )
    }

    /// The SAs and policies in this handle's ownership range (two dumps: SAs,
    /// then policies; not one atomic snapshot, so a change in between can
    /// show in one and not the other). See [`OwnedObjects`].
    pub fn dump_owned(&mut self) -> Result<OwnedObjects, XfrmError> {
        let own = self.own;
        let mut sas = self.dump_sas()?;
        sas.retain(|s| own.owns(s.reqid));
        let mut policies = self.dump_policies()?;
        policies.retain(|p| p.owned_by(&own));
        Ok(OwnedObjects { sas, policies })
    }

    /// Deletes every SA and policy rotor owns in this namespace (by reqid, see
    /// [`Ownership`]) and nothing else. Policies go first, so no packet is sent
    /// on a policy whose SA has just gone. Idempotent: objects that vanish in
    /// between (ESRCH/ENOENT) are not failures.
    pub fn remove_owned(&mut self) -> Result<RemoveReport, XfrmError> {
        let own = self.own;
        let policies: Vec<Op> = self
            .dump_policies()?
            .into_iter()
            .filter(|p| p.owned_by(&own) && !p.has_mark_or_ifid)
            .filter_map(|p| p.id.map(Op::DeletePolicy))
            .collect();
        let sas: Vec<Op> = self
            .dump_sas()?
            .into_iter()
            .filter(|s| own.owns(s.reqid))
            .map(|s| {
                Op::DeleteSa(SaId {
                    dst: s.id.dst,
                    spi: s.id.spi,
                })
            })
            .collect();
        let mut report = RemoveReport::default();
        for (ops, count) in [(policies, &mut report.policies), (sas, &mut report.sas)] {
            let results = self.apply(&ops)?;
            for (op, r) in ops.iter().zip(results) {
                match r {
                    OpResult::Done => *count += 1,
                    OpResult::Failed(e) if crate::kernel::already_in_state(op, &e, false) => {}
                    OpResult::Failed(e) => report.failures.push(e),
                    OpResult::Invalid(_) | OpResult::Unknown | OpResult::Foreign { .. } => {}
                }
            }
        }
        Ok(report)
    }
}
