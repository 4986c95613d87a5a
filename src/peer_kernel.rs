//! What one peer's keys mean in the kernel: the SAs and policies for a
//! (local, remote) pair in transport or tunnel mode, as `rotor-xfrm` operations.
//!
//! Conventions (also in docs/operations.md):
//! * every object carries the peer's reqid (rotor's range + peer index);
//! * inbound (and, in tunnel mode, forward) policies name no SPI, so both
//!   accepted generations match; they are installed once per peer;
//! * the outbound policy names exactly the SPI this side sends on, and is
//!   switched with one atomic policy update; with no usable SA it blocks
//!   (fails closed) instead of sending clear text;
//! * SAs are added, never updated: the kernel cannot change an SA's key in
//!   place, and every generation has a fresh SPI, so EEXIST on a retry after a
//!   lost reply means the same SA is already there; policies use "update"
//!   semantics, so re-sending one is harmless;
//! * an IPv6 transport-mode pair also gets clear-text bypass policies for
//!   neighbour solicitations and advertisements (ICMPv6 135/136) between the
//!   two addresses, one priority step ahead of ours: our policies select all
//!   traffic between the pair, and would otherwise block or encrypt the
//!   unicast NS/NA of neighbour discovery, so the peers could never resolve
//!   each other's link-layer address (strongSwan asks its users for the same
//!   bypass by hand).

use std::net::{IpAddr, SocketAddr};

use rotor_core::{Action, SaDir};
use rotor_xfrm::{
    AeadKey, IpNet, Lifetimes, Mode, Op, PolicyDir, PolicyId, PolicySelector, PolicySpec, SaId,
    SaMigrate, SaSpec, UdpEncap,
};

use crate::config::PeerMode;

const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_SOLICIT: u16 = 135;
const ND_NEIGHBOR_ADVERT: u16 = 136;

/// An ESP key whose length is not an rfc4106 key + salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ESP key of a length rfc4106(gcm(aes)) does not take")]
pub struct BadEspKey;

/// Kernel layout of one peer, seen from this host.
#[derive(Debug, Clone)]
pub struct PeerKernel {
    /// The peer's reqid (ownership mark and SA/policy link).
    pub reqid: u32,
    /// This host's outer address.
    pub local: IpAddr,
    /// The peer's outer address; unspecified while unknown (a hub learns
    /// a node's address from its first authenticated message): no SA or
    /// policy of the peer is in the kernel then.
    pub remote: IpAddr,
    /// This host's control port, the source port of its ESP-in-UDP.
    pub local_port: u16,
    /// The peer's control port as seen from here (behind a NAT, the port
    /// the NAT maps it to): the destination port of ESP-in-UDP.
    pub remote_port: u16,
    /// A NAT sits between: ESP travels in UDP (RFC 3948) between the two
    /// control ports.
    pub nat: bool,
    /// Transport, or tunnel with local/remote subnets.
    pub mode: PeerMode,
    /// Policy priority.
    pub priority: u32,
    /// Inbound anti-replay window.
    pub replay_window: u32,
    /// Soft and hard lifetime of every SA, in seconds since it was added
    /// (`None`: none). The hard one is a backstop that makes a dead
    /// daemon's keys expire; the soft one warns that a rotation is overdue.
    pub lifetime: Option<(u64, u64)>,
}

impl PeerKernel {
    /// Whether the peer's address is known (else it has nothing in the
    /// kernel and every operation for it is skipped).
    pub fn known(&self) -> bool {
        !self.remote.is_unspecified()
    }

    /// The ESP-in-UDP encapsulation of this peer's SA in direction `dir`,
    /// if any: its ports as the packets carry them, source first. The
    /// kernel sends on an outbound SA's; on an inbound SA it compares each
    /// decrypted packet's source with them and reports a difference to
    /// every listener (`XFRM_MSG_MAPPING`, a NAT changed), so they must be
    /// the peer's.
    pub fn encap(&self, dir: SaDir) -> Option<UdpEncap> {
        let (sport, dport) = match dir {
            SaDir::Out => (self.local_port, self.remote_port),
            SaDir::In => (self.remote_port, self.local_port),
        };
        self.nat.then_some(UdpEncap { sport, dport })
    }

    /// This layout after a path change ([`Action::PeerPath`]): the peer at
    /// `remote`, this host at `local` (`None`: unchanged), ESP in UDP if
    /// `nat`.
    pub fn moved(
        &self,
        remote: Option<SocketAddr>,
        local: Option<SocketAddr>,
        nat: bool,
    ) -> PeerKernel {
        let mut to = self.clone();
        if let Some(r) = remote {
            to.remote = r.ip().to_canonical();
            to.remote_port = r.port();
        }
        if let Some(l) = local {
            to.local = l.ip().to_canonical();
            to.local_port = l.port();
        }
        to.nat = nat;
        to
    }

    /// What moving from this layout to `to` takes in the kernel, before
    /// the core re-installs its SAs there: outbound traffic blocked on the
    /// new path (fail closed until the core names an SA), the inbound
    /// policies and neighbour-discovery bypass of the new path in, those
    /// of the old path that the new one does not have out, and the SAs
    /// `old_sas` deleted where they were.
    pub fn move_ops(&self, to: &PeerKernel, old_sas: &[(SaDir, u32)]) -> Vec<Op> {
        let mut ops = Vec::new();
        let new_ids: Vec<PolicyId> = to
            .set_outbound(None)
            .iter()
            .chain(to.inbound_policies().iter())
            .filter_map(|op| match op {
                Op::UpdatePolicy(p) => Some(p.id),
                _ => None,
            })
            .chain(to.nd_bypass_ids())
            .collect();
        ops.extend(to.set_outbound(None));
        ops.extend(to.inbound_policies());
        ops.extend(to.nd_bypass());
        let old_ids = self
            .set_outbound(None)
            .into_iter()
            .chain(self.inbound_policies())
            .filter_map(|op| match op {
                Op::UpdatePolicy(p) => Some(p.id),
                _ => None,
            })
            .chain(self.nd_bypass_ids());
        ops.extend(
            old_ids
                .filter(|id| !new_ids.contains(id))
                .map(Op::DeletePolicy),
        );
        if self.known() {
            ops.extend(
                old_sas
                    .iter()
                    .map(|&(dir, spi)| Op::DeleteSa(self.sa_id(dir, spi))),
            );
        }
        ops
    }

    /// What moving from this layout to `to` takes when the SAs move in
    /// place ([`rotor_core::Action::PeerPath`] with `in_place`), keeping
    /// SPI, key, sequence numbers and replay window: the old path's
    /// outbound blocked (no packet may leave on an SA while the kernel
    /// copies its sequence number), one `XFRM_MSG_MIGRATE` per SA, then the
    /// new path's policies as [`Self::move_ops`] puts them, without its SA
    /// deletions. The kernel picks the SA a migration moves by addresses
    /// and reqid, one per message, and moves the template of the policy
    /// the message names along in tunnel mode: that policy is put back as
    /// it was before each migration, so the next one still matches it.
    pub fn migrate_ops(&self, to: &PeerKernel, old_sas: &[(SaDir, u32)]) -> Vec<Op> {
        let mut ops = Vec::new();
        let out = self.set_outbound(None);
        let inbound: Vec<Op> = self
            .inbound_policies()
            .into_iter()
            .filter(|op| matches!(op, Op::UpdatePolicy(p) if p.id.dir == PolicyDir::In))
            .collect();
        ops.extend(out.iter().cloned());
        for &(dir, spi) in old_sas {
            let named = match dir {
                SaDir::In => inbound.first(),
                SaDir::Out => out.first(),
            };
            let Some(Op::UpdatePolicy(p)) = named else {
                continue;
            };
            ops.push(Op::UpdatePolicy(p.clone()));
            ops.push(Op::MigrateSa(SaMigrate {
                policy: p.id,
                old: (self.sa_src(dir), self.sa_dst(dir)),
                new: (to.sa_src(dir), to.sa_dst(dir)),
                reqid: self.reqid,
                mode: self.xfrm_mode(),
                encap: to.encap(dir),
                spi,
            }));
        }
        ops.extend(self.move_ops(to, &[]));
        ops
    }

    /// The XFRM mode of this peer's SAs and policy templates.
    pub fn xfrm_mode(&self) -> Mode {
        match self.mode {
            PeerMode::Transport => Mode::Transport,
            PeerMode::Tunnel { .. } => Mode::Tunnel,
        }
    }

    /// (src, dst) selector pairs of traffic from this side to the peer:
    /// what the outbound policies select, and the clear-text guard drops
    /// when it leaves untransformed. A transport peer whose address is not known yet has none; a tunnel
    /// peer's are its subnets wherever it is (the clear-text guard drops
    /// their traffic until the peer's policies are in).
    pub fn outbound_selectors(&self) -> Vec<(IpNet, IpNet)> {
        match &self.mode {
            PeerMode::Transport if !self.known() => Vec::new(),
            PeerMode::Transport => vec![(IpNet::host(self.local), IpNet::host(self.remote))],
            PeerMode::Tunnel { local, remote } => local
                .iter()
                .flat_map(|l| remote.iter().map(move |r| (*l, *r)))
                .collect(),
        }
    }

    fn sa(&self, dir: SaDir, spi: u32, key: AeadKey) -> SaSpec {
        SaSpec {
            src: self.sa_src(dir),
            dst: self.sa_dst(dir),
            spi,
            reqid: self.reqid,
            mode: self.xfrm_mode(),
            key,
            replay_window: self.replay_window,
            esn: true,
            encap: self.encap(dir),
            lifetimes: Lifetimes {
                add_seconds: self.lifetime,
                ..Lifetimes::default()
            },
            selector: None,
        }
    }

    /// The kernel operations `action` needs for this peer, pushed in order
    /// (none for sends and events): the one mapping from the core's actions
    /// to the kernel, shared by the daemon and the load generator. Fails
    /// only on an ESP key of a length rfc4106 does not have, which the core
    /// never makes; nothing is pushed then.
    pub fn ops_for(&self, action: &Action, mut push: impl FnMut(Op)) -> Result<(), BadEspKey> {
        if !self.known() {
            // Nothing of an unknown peer is in the kernel; its path change
            // comes with the re-installs.
            return Ok(());
        }
        match action {
            Action::InstallSa { dir, spi, key, .. } => {
                let k = AeadKey::new(key.expose().to_vec()).ok_or(BadEspKey)?;
                push(match dir {
                    SaDir::In => self.add_inbound_sa(*spi, k),
                    SaDir::Out => self.add_outbound_sa(*spi, k),
                });
            }
            Action::UpdateSa { dir, spi, key, .. } => {
                let k = AeadKey::new(key.expose().to_vec()).ok_or(BadEspKey)?;
                push(Op::UpdateSa(self.sa(*dir, *spi, k)));
            }
            Action::SetOutbound { spi, .. } => self.set_outbound(*spi).into_iter().for_each(push),
            Action::DeleteSa { dir, spi, .. } => push(match dir {
                SaDir::In => self.delete_inbound_sa(*spi),
                SaDir::Out => self.delete_outbound_sa(*spi),
            }),
            // The executor moves the layout itself (it replaces this one).
            Action::PeerPath { .. }
            | Action::Send { .. }
            | Action::Reply { .. }
            | Action::Event(_) => {}
        }
        Ok(())
    }

    /// Installs the SA on which the peer sends to us.
    pub fn add_inbound_sa(&self, spi: u32, key: AeadKey) -> Op {
        Op::AddSa(self.sa(SaDir::In, spi, key))
    }

    /// Installs the SA on which we send to the peer (used once the outbound
    /// policy names its SPI).
    pub fn add_outbound_sa(&self, spi: u32, key: AeadKey) -> Op {
        Op::AddSa(self.sa(SaDir::Out, spi, key))
    }

    /// The outer source address of this peer's SA in direction `dir`.
    pub fn sa_src(&self, dir: SaDir) -> IpAddr {
        match dir {
            SaDir::In => self.remote,
            SaDir::Out => self.local,
        }
    }

    /// The outer destination address of this peer's SA in direction `dir`.
    fn sa_dst(&self, dir: SaDir) -> IpAddr {
        match dir {
            SaDir::In => self.local,
            SaDir::Out => self.remote,
        }
    }

    /// The kernel's id of this peer's SA `spi` in direction `dir`.
    pub fn sa_id(&self, dir: SaDir, spi: u32) -> SaId {
        SaId {
            dst: self.sa_dst(dir),
            spi,
        }
    }

    /// Deletes an inbound SA.
    pub fn delete_inbound_sa(&self, spi: u32) -> Op {
        Op::DeleteSa(SaId {
            dst: self.local,
            spi,
        })
    }

    /// Deletes an outbound SA.
    pub fn delete_outbound_sa(&self, spi: u32) -> Op {
        Op::DeleteSa(SaId {
            dst: self.remote,
            spi,
        })
    }

    fn policy(&self, dir: PolicyDir, src: IpNet, dst: IpNet, spi: u32, block: bool) -> PolicySpec {
        let tmpl_endpoints = match (&self.mode, dir) {
            (PeerMode::Transport, _) => None,
            (PeerMode::Tunnel { .. }, PolicyDir::Out) => Some((self.local, self.remote)),
            (PeerMode::Tunnel { .. }, _) => Some((self.remote, self.local)),
        };
        PolicySpec {
            id: PolicyId {
                dir,
                selector: PolicySelector {
                    src,
                    dst,
                    proto: None,
                    sport: None,
                },
            },
            priority: self.priority,
            tmpl_endpoints,
            spi,
            reqid: self.reqid,
            mode: self.xfrm_mode(),
            block,
        }
    }

    /// The neighbour-discovery bypass policies this pair needs: none for
    /// IPv4 or tunnel mode; for IPv6 transport mode, NS and NA in both
    /// directions.
    pub fn nd_bypass_ids(&self) -> Vec<PolicyId> {
        if !matches!(self.mode, PeerMode::Transport) || self.local.is_ipv4() || !self.known() {
            return Vec::new();
        }
        let (l, r) = (IpNet::host(self.local), IpNet::host(self.remote));
        let mut ids = Vec::new();
        for icmp_type in [ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT] {
            for (dir, src, dst) in [(PolicyDir::Out, l, r), (PolicyDir::In, r, l)] {
                ids.push(PolicyId {
                    dir,
                    selector: PolicySelector {
                        src,
                        dst,
                        proto: Some(IPPROTO_ICMPV6),
                        sport: Some(icmp_type),
                    },
                });
            }
        }
        ids
    }

    /// Installs (or re-installs) the neighbour-discovery bypass, ahead of
    /// this peer's own policies.
    pub fn nd_bypass(&self) -> Vec<Op> {
        self.nd_bypass_ids()
            .into_iter()
            .map(|id| Op::UpdateBypassPolicy {
                id,
                priority: self.priority.saturating_sub(1),
            })
            .collect()
    }

    /// The inbound (and forward, in tunnel mode) policies: installed once,
    /// they accept any SA with this peer's reqid.
    pub fn inbound_policies(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        if !self.known() {
            return ops;
        }
        for (l, r) in self.outbound_selectors() {
            ops.push(Op::UpdatePolicy(self.policy(PolicyDir::In, r, l, 0, false)));
            if matches!(self.mode, PeerMode::Tunnel { .. }) {
                ops.push(Op::UpdatePolicy(self.policy(
                    PolicyDir::Fwd,
                    r,
                    l,
                    0,
                    false,
                )));
            }
        }
        ops
    }

    /// Points outbound traffic at `spi`, atomically per selector; `None`
    /// blocks it (fail closed).
    pub fn set_outbound(&self, spi: Option<u32>) -> Vec<Op> {
        if !self.known() {
            return Vec::new();
        }
        self.outbound_selectors()
            .into_iter()
            .map(|(l, r)| {
                Op::UpdatePolicy(self.policy(PolicyDir::Out, l, r, spi.unwrap_or(0), spi.is_none()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(mode: PeerMode) -> PeerKernel {
        PeerKernel {
            reqid: rotor_xfrm::DEFAULT_REQID_BASE + 1,
            local: "10.9.0.1".parse().unwrap(),
            remote: "10.9.0.2".parse().unwrap(),
            mode,
            priority: 1000,
            replay_window: 1024,
            lifetime: None,
            local_port: 4820,
            remote_port: 4820,
            nat: false,
        }
    }

    #[test]
    fn transport_directions_and_fail_closed() {
        let p = peer(PeerMode::Transport);
        let key = AeadKey::new(vec![1; 36]).unwrap();
        match p.add_inbound_sa(0x1001, key.clone()) {
            Op::AddSa(s) => {
                assert_eq!(s.src, p.remote);
                assert_eq!(s.dst, p.local);
                assert!(s.esn);
            }
            o => panic!("{o:?}"),
        }
        match p.add_outbound_sa(0x1002, key) {
            Op::AddSa(s) => assert_eq!((s.src, s.dst), (p.local, p.remote)),
            o => panic!("{o:?}"),
        }
        match &p.set_outbound(None)[..] {
            [Op::UpdatePolicy(pol)] => {
                assert!(pol.block);
                assert_eq!(pol.id.dir, PolicyDir::Out);
            }
            o => panic!("{o:?}"),
        }
        match &p.set_outbound(Some(0x1002))[..] {
            [Op::UpdatePolicy(pol)] => assert!(!pol.block && pol.spi == 0x1002),
            o => panic!("{o:?}"),
        }
        assert_eq!(p.inbound_policies().len(), 1);
        assert!(p.nd_bypass().is_empty(), "IPv4 needs no ND bypass");
    }

    #[test]
    fn ipv6_transport_lets_neighbour_discovery_pass_ahead_of_our_policies() {
        let mut p = peer(PeerMode::Transport);
        p.local = "fd00:9::1".parse().unwrap();
        p.remote = "fd00:9::2".parse().unwrap();
        let ops = p.nd_bypass();
        assert_eq!(ops.len(), 4);
        let mut seen = Vec::new();
        for op in &ops {
            match op {
                Op::UpdateBypassPolicy { id, priority } => {
                    assert_eq!(*priority, p.priority - 1);
                    assert_eq!(id.selector.proto, Some(58));
                    let (from, to) = match id.dir {
                        PolicyDir::Out => (p.local, p.remote),
                        _ => (p.remote, p.local),
                    };
                    assert_eq!((id.selector.src.addr, id.selector.dst.addr), (from, to));
                    assert_eq!(id.selector.src.prefix, 128);
                    seen.push((id.dir, id.selector.sport));
                }
                o => panic!("{o:?}"),
            }
        }
        for t in [135, 136] {
            for d in [PolicyDir::In, PolicyDir::Out] {
                assert!(seen.contains(&(d, Some(t))), "{d} type {t}");
            }
        }
        let tunnel = PeerKernel {
            mode: PeerMode::Tunnel {
                local: vec![IpNet::parse("fd01::/64").unwrap()],
                remote: vec![IpNet::parse("fd02::/64").unwrap()],
            },
            ..p
        };
        assert!(
            tunnel.nd_bypass().is_empty(),
            "tunnel selectors do not cover ND"
        );
    }

    /// A transport peer that moves leaves its old selectors and SAs behind
    /// and starts blocked on its new address, ESP in UDP behind a NAT; a
    /// tunnel peer keeps its selectors (updated in place with the new
    /// outer endpoints) and an unknown peer has nothing to delete.
    #[test]
    fn a_move_blocks_the_new_path_and_clears_the_old() {
        let p = peer(PeerMode::Transport);
        let to = p.moved(Some("198.51.100.7:61000".parse().unwrap()), None, true);
        assert_eq!((to.remote_port, to.nat), (61000, true));
        assert_eq!(
            to.encap(SaDir::Out),
            Some(UdpEncap {
                sport: 4820,
                dport: 61000
            })
        );
        // Inbound, the peer's port is the source the kernel expects.
        assert_eq!(
            to.encap(SaDir::In),
            Some(UdpEncap {
                sport: 61000,
                dport: 4820
            })
        );
        let ops = p.move_ops(&to, &[(SaDir::In, 0x1001), (SaDir::Out, 0x1001)]);
        let blocked = ops.iter().any(|o| {
            matches!(o, Op::UpdatePolicy(s) if s.block && s.id.dir == PolicyDir::Out
                && s.id.selector.dst == IpNet::host(to.remote))
        });
        assert!(blocked, "{ops:?}");
        let gone: Vec<&Op> = ops
            .iter()
            .filter(|o| matches!(o, Op::DeletePolicy(_)))
            .collect();
        assert_eq!(gone.len(), 2, "the old in and out policies: {ops:?}");
        assert!(ops.contains(&Op::DeleteSa(p.sa_id(SaDir::In, 0x1001))));
        assert!(ops.contains(&Op::DeleteSa(p.sa_id(SaDir::Out, 0x1001))));
        match to.add_outbound_sa(0x2002, AeadKey::new(vec![1; 36]).unwrap()) {
            Op::AddSa(s) => assert_eq!(s.encap, to.encap(SaDir::Out)),
            o => panic!("{o:?}"),
        }
        match to.add_inbound_sa(0x2002, AeadKey::new(vec![1; 36]).unwrap()) {
            Op::AddSa(s) => assert_eq!(s.encap, to.encap(SaDir::In)),
            o => panic!("{o:?}"),
        }

        let t = peer(PeerMode::Tunnel {
            local: vec![IpNet::parse("10.1.0.0/24").unwrap()],
            remote: vec![IpNet::parse("10.2.0.0/24").unwrap()],
        });
        let moved = t.moved(Some("10.9.0.14:4820".parse().unwrap()), None, false);
        let ops = t.move_ops(&moved, &[]);
        assert!(
            !ops.iter().any(|o| matches!(o, Op::DeletePolicy(_))),
            "{ops:?}"
        );
        assert!(ops.iter().any(|o| matches!(o, Op::UpdatePolicy(s)
            if s.tmpl_endpoints == Some((moved.local, moved.remote)) && s.block)));

        let mut unknown = peer(PeerMode::Transport);
        unknown.remote = "0.0.0.0".parse().unwrap();
        assert!(unknown.inbound_policies().is_empty() && unknown.outbound_selectors().is_empty());
        let learned = unknown.moved(Some("10.9.0.2:4820".parse().unwrap()), None, false);
        let ops = unknown.move_ops(&learned, &[(SaDir::In, 0x1001)]);
        assert!(
            !ops.iter()
                .any(|o| matches!(o, Op::DeletePolicy(_) | Op::DeleteSa(_))),
            "{ops:?}"
        );
    }

    /// An in-place move blocks the old outbound first, then moves each SA
    /// with one migration naming the policy that covers it (put back as
    /// it was before each one, so a tunnel template still names the old
    /// endpoints), with the new path's encapsulation for its direction,
    /// then puts the new path's policies; it deletes no SA.
    #[test]
    fn an_in_place_move_migrates_each_sa_and_deletes_none() {
        let p = peer(PeerMode::Transport);
        let to = p.moved(Some("10.9.0.12:61000".parse().unwrap()), None, true);
        let sas = [
            (SaDir::In, 0x1001),
            (SaDir::Out, 0x1001),
            (SaDir::In, 0x2002),
        ];
        let ops = p.migrate_ops(&to, &sas);
        assert!(!ops.iter().any(|o| matches!(o, Op::DeleteSa(_))), "{ops:?}");
        assert!(
            matches!(&ops[0], Op::UpdatePolicy(s) if s.block && s.id.dir == PolicyDir::Out
                && s.id.selector.dst == IpNet::host(p.remote)),
            "{ops:?}"
        );
        let moves: Vec<(usize, &SaMigrate)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Op::MigrateSa(m) => Some((i, m)),
                _ => None,
            })
            .collect();
        assert_eq!(moves.len(), 3);
        for ((i, m), (dir, spi)) in moves.iter().zip(sas) {
            assert_eq!(m.spi, spi);
            assert_eq!(m.old, (p.sa_src(dir), p.sa_dst(dir)));
            assert_eq!(m.new, (to.sa_src(dir), to.sa_dst(dir)));
            assert_eq!(m.encap, to.encap(dir));
            assert_eq!((m.reqid, m.mode), (p.reqid, Mode::Transport));
            let want = if dir == SaDir::In {
                PolicyDir::In
            } else {
                PolicyDir::Out
            };
            assert_eq!(m.policy.dir, want);
            assert!(
                matches!(&ops[i - 1], Op::UpdatePolicy(s) if s.id == m.policy),
                "the named policy is put back right before: {ops:?}"
            );
        }
        let last = moves.last().unwrap().0;
        let after: Vec<&Op> = ops[last + 1..].iter().collect();
        assert!(
            after
                .iter()
                .any(|o| matches!(o, Op::UpdatePolicy(s) if s.block
                && s.id.dir == PolicyDir::Out && s.id.selector.dst == IpNet::host(to.remote))),
            "the new path's outbound, blocked until the core names the SA: {ops:?}"
        );
        assert!(
            after.iter().any(
                |o| matches!(o, Op::DeletePolicy(id) if id.selector.dst == IpNet::host(p.remote))
            ),
            "the old path's policies go: {ops:?}"
        );

        let t = peer(PeerMode::Tunnel {
            local: vec![IpNet::parse("10.1.0.0/24").unwrap()],
            remote: vec![IpNet::parse("10.2.0.0/24").unwrap()],
        });
        let moved = t.moved(Some("10.9.0.14:4820".parse().unwrap()), None, false);
        let ops = t.migrate_ops(&moved, &[(SaDir::Out, 0x1001), (SaDir::Out, 0x2002)]);
        let puts: Vec<&PolicySpec> = ops
            .windows(2)
            .filter_map(|w| match w {
                [Op::UpdatePolicy(s), Op::MigrateSa(_)] => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(puts.len(), 2, "{ops:?}");
        assert!(
            puts.iter()
                .all(|s| s.tmpl_endpoints == Some((t.local, t.remote)))
        );
    }

    #[test]
    fn tunnel_covers_every_subnet_pair_with_fwd() {
        let p = peer(PeerMode::Tunnel {
            local: vec![IpNet::parse("10.1.0.0/24").unwrap()],
            remote: vec![
                IpNet::parse("10.2.0.0/24").unwrap(),
                IpNet::parse("10.3.0.0/24").unwrap(),
            ],
        });
        assert_eq!(p.set_outbound(Some(0x1000)).len(), 2);
        let inb = p.inbound_policies();
        assert_eq!(inb.len(), 4);
        for op in inb {
            match op {
                Op::UpdatePolicy(pol) => {
                    assert_eq!(pol.tmpl_endpoints, Some((p.remote, p.local)));
                    assert_eq!(pol.spi, 0);
                }
                o => panic!("{o:?}"),
            }
        }
    }
}
