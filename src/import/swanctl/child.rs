//! A connection's children as one rotor node entry: its ESP mode, the
//! subnets on each side and its rotation period.
//!
//! rotor protects, for a node, every pair of (subnet behind the hub, subnet
//! behind the node). strongSwan installs the same cross product for each
//! child, so one child maps exactly; several children map only when the
//! union of their pairs is itself a full cross product (otherwise rotor
//! would protect pairs strongSwan did not, or miss some).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use rotor_xfrm::IpNet;

use crate::import::settings::Section;

use super::report::Findings;
use super::rules;
use super::values::{Ts, time, traffic_selectors};

/// A node's mode, the hub's side first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Host to host.
    Transport,
    /// Subnets behind the hub and behind the node.
    Tunnel {
        /// Behind the hub.
        hub: Vec<IpNet>,
        /// Behind the node.
        node: Vec<IpNet>,
    },
}

/// The two ends of a connection as the importer placed them.
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    /// The hub's outer address.
    pub hub: IpAddr,
    /// The node's outer address.
    pub node: IpAddr,
    /// Whether the file's `local` side is the hub (false: written on a node).
    pub hub_is_local: bool,
}

/// What the children of one connection translate to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Children {
    /// Mode and subnets.
    pub mode: Mode,
    /// The shortest `rekey_time` of the children, if any set one (0, "never
    /// rekey", counts as unset).
    pub rekey_time: Option<Duration>,
}

/// One child, read.
struct Child {
    transport: bool,
    hub: Vec<Ts>,
    node: Vec<Ts>,
}

/// Translates `conn`'s `children` section; `None` when something was
/// refused (recorded in `f`).
pub fn translate(conn: &Section, ends: Ends, f: &mut Findings) -> Option<Children> {
    let before = f.refusals.len();
    let Some(children) = conn.section("children") else {
        f.refuse(
            &conn.origin,
            format!(
                "connection `{}` has no children: it protects no traffic",
                conn.name
            ),
        );
        return None;
    };
    for s in children.settings() {
        f.refuse(
            &s.origin,
            format!("unexpected setting `{}` in `children`", s.key),
        );
    }
    let mut read = Vec::new();
    let mut rekey: Option<Duration> = None;
    for c in children.sections() {
        if !c.references.is_empty() {
            f.refuse(&c.origin, TEMPLATE);
        }
        for s in c.settings() {
            f.apply(s, rules::child(&s.key), "child");
        }
        for sub in c.sections() {
            f.refuse(
                &sub.origin,
                format!("unexpected section `{}` in child `{}`", sub.name, c.name),
            );
        }
        if let Some(s) = c.setting("rekey_time") {
            match time("rekey_time", s.text()) {
                Ok(d) if d.is_zero() => f.note(
                    &s.origin,
                    "`rekey_time = 0` (never rekey): rotor rotates at its default period",
                ),
                Ok(d) => rekey = Some(rekey.map_or(d, |r| r.min(d))),
                Err(e) => f.refuse(&s.origin, e),
            }
        }
        let ts = |key: &str| {
            let s = c.setting(key);
            traffic_selectors(key, s.and_then(|s| s.value.as_deref().map(String::as_str)))
                .map_err(|e| (s.map_or(&c.origin, |s| &s.origin).clone(), e))
        };
        match (ts("local_ts"), ts("remote_ts")) {
            (Ok(local), Ok(remote)) => {
                let transport = c
                    .setting("mode")
                    .is_some_and(|m| m.text().trim() == "transport");
                let (hub, node) = if ends.hub_is_local {
                    (local, remote)
                } else {
                    (remote, local)
                };
                read.push((
                    c,
                    Child {
                        transport,
                        hub,
                        node,
                    },
                ));
            }
            (Err((o, e)), _) | (_, Err((o, e))) => f.refuse(&o, e),
        }
    }
    if read.is_empty() && f.refusals.len() == before {
        f.refuse(
            &children.origin,
            format!(
                "connection `{}` has no children: it protects no traffic",
                conn.name
            ),
        );
    }
    if f.refusals.len() > before {
        return None;
    }
    let mode = combine(&read, ends, f)?;
    Some(Children {
        mode,
        rekey_time: rekey,
    })
}

pub(super) const TEMPLATE: &str = "section templates (`name : template { }`) are not supported by the \
     importer; write the settings out in the section";

/// The node's mode from every child, or `None` (refused).
fn combine(read: &[(&Section, Child)], ends: Ends, f: &mut Findings) -> Option<Mode> {
    let (first, rest) = read.split_first()?;
    for (c, child) in rest {
        if child.transport != first.1.transport {
            f.refuse(
                &c.origin,
                format!(
                    "child `{}` is in {} mode but child `{}` is not: rotor gives a node one mode",
                    c.name,
                    if child.transport {
                        "transport"
                    } else {
                        "tunnel"
                    },
                    first.0.name
                ),
            );
            return None;
        }
    }
    if first.1.transport {
        for (c, child) in read {
            let hosts = child.hub.iter().all(|t| is_host(t, ends.hub))
                && child.node.iter().all(|t| is_host(t, ends.node));
            if !hosts {
                f.refuse(
                    &c.origin,
                    format!(
                        "child `{}`: transport mode with traffic selectors other than the two \
                         hosts; rotor's transport mode protects all traffic between the hub \
                         and the node",
                        c.name
                    ),
                );
                return None;
            }
        }
        return Some(Mode::Transport);
    }
    let mut hub_nets: Vec<IpNet> = Vec::new();
    let mut node_nets: Vec<IpNet> = Vec::new();
    let mut pairs: HashSet<(IpNet, IpNet)> = HashSet::new();
    for (c, child) in read {
        let hub = nets(&child.hub, ends.hub);
        let node = nets(&child.node, ends.node);
        for n in hub.iter().chain(&node) {
            if n.addr.is_ipv4() != ends.hub.is_ipv4() {
                f.refuse(
                    &c.origin,
                    format!(
                        "child `{}`: subnet {n} is not of the outer addresses' family; rotor \
                         does not tunnel one family in the other",
                        c.name
                    ),
                );
                return None;
            }
        }
        for h in &hub {
            for n in &node {
                pairs.insert((*h, *n));
            }
        }
        push_new(&mut hub_nets, &hub);
        push_new(&mut node_nets, &node);
    }
    if pairs.len() != hub_nets.len() * node_nets.len() {
        let missing = hub_nets
            .iter()
            .flat_map(|h| node_nets.iter().map(move |n| (*h, *n)))
            .find(|p| !pairs.contains(p));
        let (c, _) = &read[read.len() - 1];
        let example = missing.map_or(String::new(), |(h, n)| {
            format!(" ({h} <-> {n} is not one of them)")
        });
        f.refuse(
            &c.origin,
            format!(
                "the children of this connection protect some pairs of subnets but not all{example}: \
                 rotor protects every pair of a node's subnets; write one connection per \
                 node whose children cover every pair, or one child with all the subnets"
            ),
        );
        return None;
    }
    Some(Mode::Tunnel {
        hub: hub_nets,
        node: node_nets,
    })
}

fn is_host(t: &Ts, addr: IpAddr) -> bool {
    match t {
        Ts::Dynamic => true,
        Ts::Net(n) => *n == IpNet::host(addr),
    }
}

fn nets(ts: &[Ts], outer: IpAddr) -> Vec<IpNet> {
    let mut out = Vec::new();
    for t in ts {
        let n = match t {
            Ts::Dynamic => IpNet::host(outer),
            Ts::Net(n) => *n,
        };
        push_new(&mut out, &[n]);
    }
    out
}

fn push_new(into: &mut Vec<IpNet>, from: &[IpNet]) {
    for n in from {
        if !into.contains(n) {
            into.push(*n);
        }
    }
}
