//! [`Monitor`]: the kernel's XFRM notifications, filtered to rotor's objects,
//! so a daemon learns at once when an admin (`ip xfrm state flush`, `ip xfrm
//! policy flush`, a delete) or a lifetime removes what it installed.
//!
//! The socket joins the multicast groups `XFRMNLGRP_SA` (SA add, update,
//! delete, and SA flushes), `XFRMNLGRP_POLICY` (the same for policies) and
//! `XFRMNLGRP_EXPIRE` (soft and hard SA and policy expiry). Joining needs
//! CAP_NET_ADMIN (the kernel's xfrm netlink family does not allow
//! unprivileged listeners).
//!
//! What it guarantees:
//! * SA events are reported only for ESP SAs whose reqid lies in the
//!   [`Ownership`] range; policy events as described on [`KernelEvent`];
//!   flushes always;
//! * nothing the kernel (or anyone) sends can make it panic: every fixed-size
//!   part is length-checked before it is parsed, and attributes are walked by
//!   hand. A message of a type it reports on that it cannot parse, a datagram
//!   it cannot frame or that was truncated, and a receive-buffer overrun
//!   (ENOBUFS) all become [`KernelEvent::Overrun`]: "something may have been
//!   missed, reconcile with a dump";
//! * key bytes (SA add/update/delete notifications carry the SA's key) are
//!   never copied out of the receive buffer, and that buffer is overwritten
//!   after every datagram;
//! * datagrams that do not come from the kernel (sender port id not 0) are
//!   ignored.
//!
//! The daemon's own changes are notified too (the kernel tells every
//! listener): a [`KernelEvent`] says what happened, not who did it, so the
//! daemon compares it with its own state.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use netlink_packet_xfrm::{
    UserExpire, UserPolicyExpire, UserPolicyId, UserPolicyInfo, UserSaId, UserSaInfo, UserTemplate,
    XFRM_MSG_DELPOLICY, XFRM_MSG_DELSA, XFRM_MSG_EXPIRE, XFRM_MSG_FLUSHPOLICY, XFRM_MSG_FLUSHSA,
    XFRM_MSG_NEWPOLICY, XFRM_MSG_NEWSA, XFRM_MSG_POLEXPIRE, XFRM_MSG_UPDPOLICY, XFRM_MSG_UPDSA,
    XFRM_USER_EXPIRE_LEN, XFRM_USER_POLICY_EXPIRE_LEN, XFRM_USER_POLICY_ID_LEN,
    XFRM_USER_POLICY_INFO_LEN, XFRM_USER_SA_ID_LEN, XFRM_USER_SA_INFO_LEN, XFRM_USER_TEMPLATE_LEN,
    XFRMA_POLICY, XFRMA_SA, XFRMA_TMPL, XFRMNLGRP_EXPIRE, XFRMNLGRP_POLICY, XFRMNLGRP_SA,
    constants::IPPROTO_ESP,
};
use netlink_sys::{Socket, protocols::NETLINK_XFRM};
use zeroize::Zeroize;

use crate::dump::{ip, policy_selector};
use crate::error::XfrmError;
use crate::netlink::{HDR_LEN, NLMSG_OVERRUN};
use crate::ownership::Ownership;
use crate::spec::{PolicyDir, PolicyId, SaId};

/// Receive buffer asked for (best effort: `SO_RCVBUFFORCE`, else `SO_RCVBUF`
/// capped by `net.core.rmem_max`). A hub rotating 10,000 peers causes tens of
/// thousands of notifications in a burst.
const RCVBUF: usize = 4 * 1024 * 1024;
/// Largest datagram read at once. XFRM notifications are one message each, a
/// few hundred bytes; a longer datagram is reported as an overrun.
const MAX_NOTIFICATION: usize = 64 * 1024;
/// Attribute type bits (`NLA_TYPE_MASK`: without NESTED / NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Something happened to the kernel's XFRM state that concerns rotor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelEvent {
    /// An owned SA was added or updated (`XFRM_MSG_NEWSA` / `XFRM_MSG_UPDSA`):
    /// it exists now.
    SaAdded {
        /// Destination and SPI.
        id: SaId,
        /// Its reqid (in the ownership range).
        reqid: u32,
    },
    /// An owned SA was deleted by a request (`XFRM_MSG_DELSA`).
    SaDeleted {
        /// Destination and SPI.
        id: SaId,
        /// Its reqid (in the ownership range).
        reqid: u32,
    },
    /// An owned SA reached a lifetime limit (`XFRM_MSG_EXPIRE`). On a hard
    /// expiry the kernel has already deleted it (no `SaDeleted` follows); a
    /// soft expiry only warns.
    SaExpired {
        /// Destination and SPI.
        id: SaId,
        /// Its reqid (in the ownership range).
        reqid: u32,
        /// Hard (deleted) rather than soft.
        hard: bool,
    },
    /// A policy with an owned template was added or replaced
    /// (`XFRM_MSG_NEWPOLICY` / `XFRM_MSG_UPDPOLICY`). Template-less (bypass)
    /// policies' additions are not reported.
    PolicyAdded {
        /// Direction and selector.
        id: PolicyId,
    },
    /// A policy was deleted (`XFRM_MSG_DELPOLICY`) that has an owned
    /// template, or whose message names no template at all (a template-less
    /// bypass policy such as rotor's neighbour-discovery bypass, or a message
    /// that carries only the id): the daemon checks the id against its state.
    PolicyDeleted {
        /// Direction and selector.
        id: PolicyId,
    },
    /// A policy expired (`XFRM_MSG_POLEXPIRE`); reported on the same terms
    /// as [`KernelEvent::PolicyDeleted`].
    PolicyExpired {
        /// Direction and selector.
        id: PolicyId,
        /// Hard (deleted) rather than soft.
        hard: bool,
    },
    /// The SAD was flushed (`XFRM_MSG_FLUSHSA`, any protocol): rotor's SAs
    /// may be gone. The kernel sends no per-SA deletions for a flush.
    SaFlushed,
    /// The SPD was flushed (`XFRM_MSG_FLUSHPOLICY`): rotor's policies may be
    /// gone. No per-policy deletions are sent for a flush.
    PolicyFlushed,
    /// Notifications may have been lost: the receive buffer overran
    /// (ENOBUFS), or a datagram or message could not be parsed. The daemon
    /// must reconcile with a full dump.
    Overrun,
}

/// A non-blocking NETLINK_XFRM socket joined to the SA, policy and expire
/// multicast groups of the network namespace it was opened in.
pub struct Monitor {
    sock: Socket,
    own: Ownership,
    buf: Vec<u8>,
    /// Changes requested by this port id are not reported.
    ignore: Option<u32>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("fd", &self.sock.as_raw_fd())
            .field("own", &self.own)
            .finish()
    }
}

fn sock_err(context: &'static str) -> impl FnOnce(io::Error) -> XfrmError {
    move |source| XfrmError::Socket { context, source }
}

impl Monitor {
    /// Opens the socket in the current network namespace, non-blocking, with
    /// a receive buffer of up to 4 MiB (best effort), joined to
    /// `XFRMNLGRP_SA`, `XFRMNLGRP_POLICY` and `XFRMNLGRP_EXPIRE`. Fails with
    /// EPERM without CAP_NET_ADMIN. Events are filtered against `own`.
    pub fn open(own: Ownership) -> Result<Monitor, XfrmError> {
        let mut sock = Socket::new(NETLINK_XFRM).map_err(sock_err("opening NETLINK_XFRM"))?;
        sock.bind_auto().map_err(sock_err("binding"))?;
        // Best effort: a smaller buffer only means an earlier Overrun.
        let _ = rotor_sys::sockopt::set_recv_buffer(&sock, RCVBUF);
        for group in [XFRMNLGRP_SA, XFRMNLGRP_POLICY, XFRMNLGRP_EXPIRE] {
            sock.add_membership(group).map_err(sock_err(
                "joining the XFRM multicast groups (needs CAP_NET_ADMIN)",
            ))?;
        }
        sock.set_non_blocking(true)
            .map_err(sock_err("making the socket non-blocking"))?;
        Ok(Monitor {
            sock,
            own,
            buf: Vec::with_capacity(MAX_NOTIFICATION),
            ignore: None,
        })
    }

    /// Stops reporting the changes requested through the netlink socket
    /// with port id `portid` (a daemon's own [`crate::Xfrm`] handle, see
    /// [`crate::Xfrm::portid`]): the kernel copies the requester's port id
    /// into each notification. Flushes are reported whoever asked.
    /// The kernel drops them before they are queued (a socket filter), so
    /// a busy daemon is not woken for its own changes; the same check runs
    /// here too in case the filter could not be attached.
    pub fn ignore_sender(&mut self, portid: u32) {
        self.ignore = (portid != 0).then_some(portid);
        if portid != 0 {
            // Without the filter the check below still holds: only slower.
            let _ = rotor_sys::sockopt::drop_netlink_sender(self.sock.as_fd(), portid);
        }
    }

    /// The ownership range events are filtered against.
    pub fn ownership(&self) -> &Ownership {
        &self.own
    }

    /// Reads every datagram queued now (until EAGAIN), appends the events
    /// that concern rotor to `out` in the kernel's order, and returns how
    /// many it appended. ENOBUFS is not an error: it appends
    /// [`KernelEvent::Overrun`] and goes on reading. `Err` only for another
    /// socket failure. Never blocks, so it suits an edge-triggered poller
    /// (`tokio::io::unix::AsyncFd`): after `Ok`, the socket has been drained.
    pub fn read_events(&mut self, out: &mut Vec<KernelEvent>) -> Result<usize, XfrmError> {
        let mut pushed = 0;
        loop {
            self.buf.clear();
            let r = self
                .sock
                .recv_from(&mut self.buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC);
            match r {
                Ok((n, from)) => {
                    let got = self.buf.len();
                    if from.port_number() == 0 {
                        if n > got {
                            out.push(KernelEvent::Overrun);
                            pushed += 1;
                        } else {
                            pushed += parse_datagram_except(
                                &self.own,
                                self.ignore,
                                &self.buf[..got],
                                out,
                            );
                        }
                    }
                    // SA notifications carry keys.
                    self.buf.as_mut_slice().zeroize();
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(pushed),
                    Some(libc::ENOBUFS) => {
                        out.push(KernelEvent::Overrun);
                        pushed += 1;
                    }
                    Some(libc::EINTR) => {}
                    _ => {
                        return Err(XfrmError::Io {
                            context: "reading XFRM notifications".to_string(),
                            source: e,
                        });
                    }
                },
            }
        }
    }
}

impl AsRawFd for Monitor {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl AsFd for Monitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// A message of a reported type that could not be parsed.
struct Garbled;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Netlink attributes of `buf`, walked with every length checked; stops at
/// the first malformed one.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        let len = usize::from(u16::from_ne_bytes([*b.first()?, *b.get(1)?]));
        let kind = u16::from_ne_bytes([*b.get(2)?, *b.get(3)?]) & NLA_TYPE_MASK;
        let Some(value) = b.get(4..len) else {
            self.0 = &[];
            return None;
        };
        self.0 = b.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    }
}

fn attr(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    Attrs(attrs).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// The reqids of the templates in `attrs`, or `None` without an
/// `XFRMA_TMPL` attribute.
fn template_reqids(attrs: &[u8]) -> Option<Vec<u32>> {
    let v = attr(attrs, XFRMA_TMPL)?;
    Some(
        v.chunks_exact(XFRM_USER_TEMPLATE_LEN)
            .filter_map(|t| UserTemplate::parse(t).ok())
            .map(|t| t.reqid)
            .collect(),
    )
}

fn sa_info(b: &[u8]) -> Result<UserSaInfo, Garbled> {
    b.get(..XFRM_USER_SA_INFO_LEN)
        .and_then(|b| UserSaInfo::parse(b).ok())
        .ok_or(Garbled)
}

fn policy_info(b: &[u8]) -> Result<UserPolicyInfo, Garbled> {
    b.get(..XFRM_USER_POLICY_INFO_LEN)
        .and_then(|b| UserPolicyInfo::parse(b).ok())
        .ok_or(Garbled)
}

/// The SA of `info` if it is an owned ESP SA.
fn owned_sa(own: &Ownership, info: &UserSaInfo) -> Option<(SaId, u32)> {
    (info.id.proto == IPPROTO_ESP && own.owns(info.reqid)).then(|| {
        (
            SaId {
                dst: ip(&info.id.daddr, info.family),
                spi: info.id.spi,
            },
            info.reqid,
        )
    })
}

fn policy_id(info: &UserPolicyInfo) -> Option<PolicyId> {
    PolicyDir::from_kernel(info.direction).map(|dir| PolicyId {
        dir,
        selector: policy_selector(&info.selector),
    })
}

/// Whether a deletion or expiry with these templates is reported: an owned
/// template, or none at all.
fn removal_reported(own: &Ownership, reqids: Option<Vec<u32>>) -> bool {
    match reqids {
        Some(r) if !r.is_empty() => r.iter().any(|r| own.owns(*r)),
        _ => true,
    }
}

/// Parses one notification (the payload after the netlink header).
/// `Ok(None)`: not rotor's, or a type not reported.
fn parse_event(own: &Ownership, kind: u16, p: &[u8]) -> Result<Option<KernelEvent>, Garbled> {
    Ok(match kind {
        XFRM_MSG_NEWSA | XFRM_MSG_UPDSA => {
            owned_sa(own, &sa_info(p)?).map(|(id, reqid)| KernelEvent::SaAdded { id, reqid })
        }
        XFRM_MSG_DELSA => {
            // xfrm_usersa_id, then the whole SA in XFRMA_SA (and its key in
            // other attributes, never read here).
            let sid = p
                .get(..XFRM_USER_SA_ID_LEN)
                .and_then(|b| UserSaId::parse(b).ok())
                .ok_or(Garbled)?;
            let attrs = p.get(align4(XFRM_USER_SA_ID_LEN)..).unwrap_or(&[]);
            let info = sa_info(attr(attrs, XFRMA_SA).ok_or(Garbled)?)?;
            (sid.proto == IPPROTO_ESP && own.owns(info.reqid)).then(|| KernelEvent::SaDeleted {
                id: SaId {
                    dst: ip(&sid.daddr, sid.family),
                    spi: sid.spi,
                },
                reqid: info.reqid,
            })
        }
        XFRM_MSG_EXPIRE => {
            let e = p
                .get(..XFRM_USER_EXPIRE_LEN)
                .and_then(|b| UserExpire::parse(b).ok())
                .ok_or(Garbled)?;
            owned_sa(own, &e.state).map(|(id, reqid)| KernelEvent::SaExpired {
                id,
                reqid,
                hard: e.hard != 0,
            })
        }
        XFRM_MSG_NEWPOLICY | XFRM_MSG_UPDPOLICY => {
            let info = policy_info(p)?;
            let attrs = p.get(align4(XFRM_USER_POLICY_INFO_LEN)..).unwrap_or(&[]);
            let owned = template_reqids(attrs).is_some_and(|r| r.iter().any(|r| own.owns(*r)));
            policy_id(&info)
                .filter(|_| owned)
                .map(|id| KernelEvent::PolicyAdded { id })
        }
        XFRM_MSG_DELPOLICY => {
            // xfrm_userpolicy_id (its selector is zero when the policy was
            // deleted by index), then the whole policy in XFRMA_POLICY and
            // its templates.
            let pid = p
                .get(..XFRM_USER_POLICY_ID_LEN)
                .and_then(|b| UserPolicyId::parse(b).ok())
                .ok_or(Garbled)?;
            let attrs = p.get(align4(XFRM_USER_POLICY_ID_LEN)..).unwrap_or(&[]);
            if !removal_reported(own, template_reqids(attrs)) {
                return Ok(None);
            }
            let id = match attr(attrs, XFRMA_POLICY) {
                Some(b) => policy_id(&policy_info(b)?),
                // Deleted by index and no policy attached: no selector to
                // name it by.
                None if pid.index != 0 => return Err(Garbled),
                None => PolicyDir::from_kernel(pid.direction).map(|dir| PolicyId {
                    dir,
                    selector: policy_selector(&pid.selector),
                }),
            };
            id.map(|id| KernelEvent::PolicyDeleted { id })
        }
        XFRM_MSG_POLEXPIRE => {
            let e = p
                .get(..XFRM_USER_POLICY_EXPIRE_LEN)
                .and_then(|b| UserPolicyExpire::parse(b).ok())
                .ok_or(Garbled)?;
            let attrs = p.get(align4(XFRM_USER_POLICY_EXPIRE_LEN)..).unwrap_or(&[]);
            if !removal_reported(own, template_reqids(attrs)) {
                return Ok(None);
            }
            policy_id(&e.pol).map(|id| KernelEvent::PolicyExpired {
                id,
                hard: e.hard != 0,
            })
        }
        XFRM_MSG_FLUSHSA => Some(KernelEvent::SaFlushed),
        XFRM_MSG_FLUSHPOLICY => Some(KernelEvent::PolicyFlushed),
        _ => None,
    })
}

/// Parses every message of one datagram into `out`; returns how many events
/// it appended. A framing error ends the datagram with an `Overrun`.
#[cfg(test)]
fn parse_datagram(own: &Ownership, data: &[u8], out: &mut Vec<KernelEvent>) -> usize {
    parse_datagram_except(own, None, data, out)
}

/// [`parse_datagram`], skipping the changes requested by port id `ignore`.
fn parse_datagram_except(
    own: &Ownership,
    ignore: Option<u32>,
    data: &[u8],
    out: &mut Vec<KernelEvent>,
) -> usize {
    let before = out.len();
    let mut off = 0;
    while off + HDR_LEN <= data.len() {
        let len =
            u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]) as usize;
        let Some(payload) = (len >= HDR_LEN)
            .then(|| data.get(off + HDR_LEN..off + len))
            .flatten()
        else {
            out.push(KernelEvent::Overrun);
            break;
        };
        let kind = u16::from_ne_bytes([data[off + 4], data[off + 5]]);
        let pid = u32::from_ne_bytes([
            data[off + 12],
            data[off + 13],
            data[off + 14],
            data[off + 15],
        ]);
        let flush = kind == XFRM_MSG_FLUSHSA || kind == XFRM_MSG_FLUSHPOLICY;
        if ignore.is_some_and(|p| p == pid) && !flush {
            off += align4(len);
            continue;
        }
        if kind == NLMSG_OVERRUN {
            out.push(KernelEvent::Overrun);
        } else {
            match parse_event(own, kind, payload) {
                Ok(Some(e)) => out.push(e),
                Ok(None) => {}
                Err(Garbled) => out.push(KernelEvent::Overrun),
            }
        }
        off += align4(len);
    }
    out.len() - before
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{encode, policy_id as encode_policy_id, sa_id_message};
    use crate::spec::{AeadKey, IpNet, Lifetimes, Mode, Op, PolicySelector, PolicySpec, SaSpec};
    use netlink_packet_core::{Emitable, NetlinkSerializable};
    use netlink_packet_xfrm::{
        XfrmAttrs, XfrmMessage,
        monitor::{ExpireMessage, PolicyExpireMessage},
        policy::DelGetMessage as PolicyDelGet,
    };

    fn emit(msg: &XfrmMessage) -> Vec<u8> {
        let mut v = vec![0; NetlinkSerializable::buffer_len(msg)];
        msg.serialize(&mut v);
        v
    }

    /// One netlink message: header + payload, padded.
    fn framed(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((HDR_LEN + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend_from_slice(payload);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn sa_spec(reqid: u32) -> SaSpec {
        SaSpec {
            src: "10.9.0.1".parse().unwrap(),
            dst: "10.9.0.2".parse().unwrap(),
            spi: 0x2001,
            reqid,
            mode: Mode::Transport,
            key: AeadKey::new(vec![0xab; 36]).unwrap(),
            replay_window: 1024,
            esn: true,
            encap: None,
            lifetimes: Lifetimes::default(),
            selector: None,
        }
    }

    fn sa_id() -> SaId {
        SaId {
            dst: "10.9.0.2".parse().unwrap(),
            spi: 0x2001,
        }
    }

    /// An SA message as the kernel notifies it (info + key attributes).
    fn sa_msg(own: &Ownership, reqid: u32) -> XfrmMessage {
        encode(own, &Op::AddSa(sa_spec(reqid))).unwrap()
    }

    fn sa_info_of(msg: &XfrmMessage) -> UserSaInfo {
        match msg {
            XfrmMessage::AddSa(m) => m.user_sa_info,
            _ => unreachable!(),
        }
    }

    /// DELSA notification: xfrm_usersa_id, XFRMA_SA, then the key.
    fn delsa(own: &Ownership, reqid: u32) -> Vec<u8> {
        let add = sa_msg(own, reqid);
        let mut nlas = vec![XfrmAttrs::SaInfo(sa_info_of(&add))];
        if let XfrmMessage::AddSa(m) = &add {
            nlas.extend(m.nlas.iter().cloned());
        }
        let mut m = sa_id_message(&sa_id());
        m.nlas = nlas;
        emit(&XfrmMessage::DeleteSa(m))
    }

    fn expire(own: &Ownership, reqid: u32, hard: u8) -> Vec<u8> {
        let state = sa_info_of(&sa_msg(own, reqid));
        emit(&XfrmMessage::Expire(ExpireMessage {
            expire: UserExpire { state, hard },
        }))
    }

    fn pol_id(dst: &str) -> PolicyId {
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

    fn pol_spec(own: &Ownership, id: PolicyId, reqid: u32) -> PolicySpec {
        let _ = own;
        PolicySpec {
            id,
            priority: 1000,
            tmpl_endpoints: None,
            spi: 0x1001,
            reqid,
            mode: Mode::Transport,
            block: false,
        }
    }

    /// The (info, templates) of an encoded policy add.
    fn pol_parts(own: &Ownership, id: PolicyId, reqid: u32) -> (UserPolicyInfo, Vec<XfrmAttrs>) {
        match encode(own, &Op::AddPolicy(pol_spec(own, id, reqid))).unwrap() {
            XfrmMessage::AddPolicy(m) => (m.user_policy_info, m.nlas),
            _ => unreachable!(),
        }
    }

    fn parse(own: &Ownership, kind: u16, p: &[u8]) -> Vec<KernelEvent> {
        let mut out = Vec::new();
        parse_datagram(own, &framed(kind, p), &mut out);
        out
    }

    #[test]
    fn sa_added_deleted_expired_for_owned_only() {
        let own = Ownership::default();
        let reqid = own.reqid_for(5).unwrap();
        let add = emit(&sa_msg(&own, reqid));
        assert_eq!(
            parse(&own, XFRM_MSG_NEWSA, &add),
            [KernelEvent::SaAdded { id: sa_id(), reqid }]
        );
        assert_eq!(
            parse(&own, XFRM_MSG_UPDSA, &add),
            [KernelEvent::SaAdded { id: sa_id(), reqid }]
        );
        assert_eq!(
            parse(&own, XFRM_MSG_DELSA, &delsa(&own, reqid)),
            [KernelEvent::SaDeleted { id: sa_id(), reqid }]
        );
        for (hard, want) in [(0, false), (1, true)] {
            assert_eq!(
                parse(&own, XFRM_MSG_EXPIRE, &expire(&own, reqid, hard)),
                [KernelEvent::SaExpired {
                    id: sa_id(),
                    reqid,
                    hard: want
                }]
            );
        }
        // The same messages seen by a daemon with another range: nothing.
        let other = Ownership::new(1, 1000).unwrap();
        assert!(parse(&other, XFRM_MSG_NEWSA, &add).is_empty());
        assert!(parse(&other, XFRM_MSG_DELSA, &delsa(&own, reqid)).is_empty());
        assert!(parse(&other, XFRM_MSG_EXPIRE, &expire(&own, reqid, 1)).is_empty());
    }

    #[test]
    fn flushes_always_unknown_types_never() {
        let own = Ownership::default();
        assert_eq!(
            parse(&own, XFRM_MSG_FLUSHSA, &[255, 0, 0, 0]),
            [KernelEvent::SaFlushed]
        );
        assert_eq!(
            parse(&own, XFRM_MSG_FLUSHPOLICY, &[]),
            [KernelEvent::PolicyFlushed]
        );
        for kind in [0x16 /* ACQUIRE */, 0x1e /* NEWAE */, 0x22, 0x7fff] {
            assert!(parse(&own, kind, &[0; 300]).is_empty(), "type {kind:#x}");
        }
    }

    #[test]
    fn truncated_messages_never_panic_and_deletions_become_overrun() {
        let own = Ownership::default();
        let reqid = own.base();
        let id = pol_id("10.9.0.2");
        let (info, tmpl) = pol_parts(&own, id, reqid);
        let delpol = emit(&XfrmMessage::DeletePolicy(PolicyDelGet {
            user_policy_id: encode_policy_id(&id),
            nlas: [vec![XfrmAttrs::PolicyInfo(info)], tmpl.clone()].concat(),
        }));
        let polexp = emit(&XfrmMessage::PolicyExpire(PolicyExpireMessage {
            expire: UserPolicyExpire { pol: info, hard: 1 },
            nlas: tmpl,
        }));
        let addpol = emit(&encode(&own, &Op::AddPolicy(pol_spec(&own, id, reqid))).unwrap());
        let cases = [
            (XFRM_MSG_NEWSA, emit(&sa_msg(&own, reqid))),
            (XFRM_MSG_DELSA, delsa(&own, reqid)),
            (XFRM_MSG_EXPIRE, expire(&own, reqid, 1)),
            (XFRM_MSG_NEWPOLICY, addpol),
            (XFRM_MSG_DELPOLICY, delpol),
            (XFRM_MSG_POLEXPIRE, polexp),
        ];
        for (kind, bytes) in &cases {
            let full = parse(&own, *kind, bytes);
            assert_eq!(full.len(), 1, "type {kind:#x}");
            assert_ne!(full[0], KernelEvent::Overrun, "type {kind:#x}");
            for cut in 0..bytes.len() {
                // Every prefix parses to at most one event: never a panic.
                let got = parse(&own, *kind, &bytes[..cut]);
                assert!(got.len() <= 1, "type {kind:#x} cut {cut}");
            }
            // Short of the fixed part: something was there, we cannot say
            // what, so reconcile.
            assert_eq!(
                parse(&own, *kind, &bytes[..10]),
                [KernelEvent::Overrun],
                "type {kind:#x}"
            );
        }
        // Framing: a length past the end, a length under the header size.
        let mut out = Vec::new();
        let mut d = framed(XFRM_MSG_FLUSHSA, &[255, 0, 0, 0]);
        d[0] = 200;
        assert_eq!(parse_datagram(&own, &d, &mut out), 1);
        assert_eq!(out, [KernelEvent::Overrun]);
        out.clear();
        d[0] = 3;
        parse_datagram(&own, &d, &mut out);
        assert_eq!(out, [KernelEvent::Overrun]);
        out.clear();
        assert_eq!(parse_datagram(&own, &[1, 2, 3], &mut out), 0);
        // Two messages in one datagram, both reported, in order.
        let two = [
            framed(XFRM_MSG_FLUSHSA, &[255, 0, 0, 0]),
            framed(XFRM_MSG_FLUSHPOLICY, &[]),
        ]
        .concat();
        assert_eq!(parse_datagram(&own, &two, &mut out), 2);
        assert_eq!(out, [KernelEvent::SaFlushed, KernelEvent::PolicyFlushed]);
        // Odd attributes: zero length, length past the end.
        assert_eq!(Attrs(&[0, 0, 1, 0, 9, 9]).count(), 0);
        assert_eq!(Attrs(&[8, 0, 1, 0, 9]).count(), 0);
        assert_eq!(Attrs(&[5, 0, 1, 0, 9]).count(), 1);
    }

    #[test]
    fn policy_removals_reported_by_template_or_without_one() {
        let own = Ownership::default();
        let id = pol_id("10.9.0.2");
        let (info, tmpl) = pol_parts(&own, id, own.base());
        let del = |pid: UserPolicyId, nlas: Vec<XfrmAttrs>| {
            emit(&XfrmMessage::DeletePolicy(PolicyDelGet {
                user_policy_id: pid,
                nlas,
            }))
        };
        let by_sel = encode_policy_id(&id);
        let by_index = UserPolicyId {
            index: 42,
            direction: by_sel.direction,
            ..Default::default()
        };
        let deleted = [KernelEvent::PolicyDeleted { id }];
        // Whole policy attached, selected by index: the attached selector names it.
        let full = [vec![XfrmAttrs::PolicyInfo(info)], tmpl.clone()].concat();
        assert_eq!(
            parse(&own, XFRM_MSG_DELPOLICY, &del(by_index, full.clone())),
            deleted
        );
        assert_eq!(parse(&own, XFRM_MSG_DELPOLICY, &del(by_sel, full)), deleted);
        // Only the id: reported (the daemon reconciles).
        assert_eq!(
            parse(&own, XFRM_MSG_DELPOLICY, &del(by_sel, vec![])),
            deleted
        );
        // Only an index: nothing to name it by.
        assert_eq!(
            parse(&own, XFRM_MSG_DELPOLICY, &del(by_index, vec![])),
            [KernelEvent::Overrun]
        );
        // No template (a bypass policy): reported.
        let bypass = vec![XfrmAttrs::PolicyInfo(info)];
        assert_eq!(
            parse(&own, XFRM_MSG_DELPOLICY, &del(by_sel, bypass)),
            deleted
        );
        // Another program's policy: not reported, deleted or expired.
        let other = Ownership::new(1, 1000).unwrap();
        let (finfo, ftmpl) = pol_parts(&other, id, 7);
        let foreign = [vec![XfrmAttrs::PolicyInfo(finfo)], ftmpl.clone()].concat();
        assert!(parse(&own, XFRM_MSG_DELPOLICY, &del(by_sel, foreign)).is_empty());
        let fexp = emit(&XfrmMessage::PolicyExpire(PolicyExpireMessage {
            expire: UserPolicyExpire {
                pol: finfo,
                hard: 1,
            },
            nlas: ftmpl,
        }));
        assert!(parse(&own, XFRM_MSG_POLEXPIRE, &fexp).is_empty());
        for hard in [0, 1] {
            let exp = emit(&XfrmMessage::PolicyExpire(PolicyExpireMessage {
                expire: UserPolicyExpire { pol: info, hard },
                nlas: tmpl.clone(),
            }));
            assert_eq!(
                parse(&own, XFRM_MSG_POLEXPIRE, &exp),
                [KernelEvent::PolicyExpired {
                    id,
                    hard: hard == 1
                }]
            );
        }
        // Additions: only with an owned template.
        let add = emit(&encode(&own, &Op::AddPolicy(pol_spec(&own, id, own.base()))).unwrap());
        assert_eq!(
            parse(&own, XFRM_MSG_UPDPOLICY, &add),
            [KernelEvent::PolicyAdded { id }]
        );
        assert!(parse(&other, XFRM_MSG_NEWPOLICY, &add).is_empty());
        let bypass_add =
            emit(&encode(&own, &Op::UpdateBypassPolicy { id, priority: 999 }).unwrap());
        assert!(parse(&own, XFRM_MSG_UPDPOLICY, &bypass_add).is_empty());
        assert_eq!(info.buffer_len(), XFRM_USER_POLICY_INFO_LEN);
    }

    /// Sends one request on a fresh socket and waits for its ACK.
    fn request(msg: &XfrmMessage) -> i32 {
        use crate::netlink::{Reply, XfrmSocket};
        let mut s = XfrmSocket::open(std::time::Duration::from_secs(5)).unwrap();
        let mut d = Vec::new();
        let seq = s.next_seq();
        XfrmSocket::frame(&mut d, msg, seq, true, false);
        s.send(&d, "test request").unwrap();
        let mut errno = None;
        while errno.is_none() {
            s.recv_each("test request", |r| {
                if let Reply::Ack {
                    seq: q, errno: e, ..
                } = r
                    && q == seq
                {
                    errno = Some(e);
                }
            })
            .unwrap();
        }
        errno.unwrap_or(-1)
    }

    /// Reads until `want` events have arrived or 2 s have passed.
    fn collect(m: &mut Monitor, want: usize) -> Vec<KernelEvent> {
        let mut out = Vec::new();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while out.len() < want && std::time::Instant::now() < end {
            m.read_events(&mut out).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Anything extra that is already queued.
        m.read_events(&mut out).unwrap();
        out
    }

    /// On the host kernel, in a network namespace of the test's own thread:
    /// rotor's policy added, deleted (by selector and by index), flushed;
    /// another program's policy added and deleted unseen.
    #[test]
    fn policy_events_from_the_kernel_in_a_private_netns() {
        let r = std::thread::spawn(|| {
            if let Err(e) = rotor_sys::process::unshare_network() {
                eprintln!("skipped: cannot create a network namespace: {e}");
                return;
            }
            let own = Ownership::default();
            let other = Ownership::new(1, 1000).unwrap();
            let mut m = match Monitor::open(own) {
                Err(XfrmError::Socket { source, .. })
                    if source.raw_os_error() == Some(libc::EPERM) =>
                {
                    eprintln!("skipped: no CAP_NET_ADMIN");
                    return;
                }
                r => r.unwrap(),
            };
            let mut ours = crate::Xfrm::open(own).unwrap();
            let mut theirs = crate::Xfrm::open(other).unwrap();
            let p = pol_id("10.9.0.2");
            let f = pol_id("10.8.0.2");
            let add_p = Op::AddPolicy(pol_spec(&own, p, own.base()));
            let add_f = Op::AddPolicy(pol_spec(&other, f, 7));
            ours.apply_all(std::slice::from_ref(&add_p)).unwrap();
            theirs.apply_all(std::slice::from_ref(&add_f)).unwrap();
            theirs.apply_all(&[Op::DeletePolicy(f)]).unwrap();
            ours.apply_all(&[Op::DeletePolicy(p)]).unwrap();
            assert_eq!(
                collect(&mut m, 2),
                [
                    KernelEvent::PolicyAdded { id: p },
                    KernelEvent::PolicyDeleted { id: p }
                ]
            );
            // Deleted by index: the id in the notification has no selector.
            ours.apply_all(std::slice::from_ref(&add_p)).unwrap();
            let index = ours
                .dump_policies()
                .unwrap()
                .into_iter()
                .find(|i| i.id == Some(p))
                .unwrap()
                .index;
            let by_index = UserPolicyId {
                index,
                direction: PolicyDir::Out.to_kernel(),
                ..Default::default()
            };
            let errno = request(&XfrmMessage::DeletePolicy(PolicyDelGet {
                user_policy_id: by_index,
                nlas: vec![],
            }));
            assert_eq!(errno, 0);
            assert_eq!(
                collect(&mut m, 2),
                [
                    KernelEvent::PolicyAdded { id: p },
                    KernelEvent::PolicyDeleted { id: p }
                ]
            );
            // A flush (the kernel notifies it only when something went).
            ours.apply_all(std::slice::from_ref(&add_p)).unwrap();
            theirs.apply_all(std::slice::from_ref(&add_f)).unwrap();
            // Adoption sees ours only.
            let owned = ours.dump_owned().unwrap();
            assert!(owned.sas.is_empty());
            let ids: Vec<_> = owned.policies.iter().map(|i| i.id).collect();
            assert_eq!(ids, [Some(p)]);
            let flush = XfrmMessage::FlushPolicy(Default::default());
            assert_eq!(request(&flush), 0);
            assert_eq!(
                collect(&mut m, 2),
                [
                    KernelEvent::PolicyAdded { id: p },
                    KernelEvent::PolicyFlushed
                ]
            );
            assert!(ours.dump_policies().unwrap().is_empty());
            // The receive buffer is wiped after each datagram.
            assert!(m.buf.iter().all(|b| *b == 0));
            // Nothing queued: read_events returns at once with nothing.
            let mut out = Vec::new();
            assert_eq!(m.read_events(&mut out).unwrap(), 0);
            // Our own handle's changes are dropped by the kernel (the socket
            // filter; the userspace check is switched off to show it), a
            // second handle's are still reported.
            m.ignore_sender(ours.portid());
            m.ignore = None;
            ours.apply_all(std::slice::from_ref(&add_p)).unwrap();
            ours.apply_all(&[Op::DeletePolicy(p)]).unwrap();
            let mut second = crate::Xfrm::open(own).unwrap();
            second.apply_all(std::slice::from_ref(&add_p)).unwrap();
            assert_eq!(collect(&mut m, 1), [KernelEvent::PolicyAdded { id: p }]);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(m.read_events(&mut out).unwrap(), 0, "{out:?}");
        })
        .join();
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }
}
