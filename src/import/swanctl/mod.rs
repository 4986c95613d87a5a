//! swanctl.conf to rotor: reads a parsed swanctl.conf and decides, for each
//! connection, the rotor node it becomes, or why it cannot become one.
//!
//! A hub-and-spoke file has the hub on the same side of every connection:
//! the `local` side in the hub's own file (each connection's `remote_addrs`
//! is a node), or the `remote` side in a file written on the nodes' side
//! (each connection's `local_addrs` is a node). `--hub` names the hub when
//! the addresses do not (a hub listening on `%any`). Each connection
//! becomes the node named after it; its children give the mode and subnets
//! (`child`), its authentication rounds must be one PSK round a side
//! (`auth`). The translation either succeeds whole or returns every
//! refusal, so the operator sees all of them at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{NAME_MAX, NODES_MAX, ROTATE_INTERVAL_MAX_MS};
use crate::import::settings::{Document, Origin, Section};

mod auth;
mod child;
mod report;
mod rules;
mod secrets;
mod values;

pub use child::Mode;
use report::Findings;
pub use report::{Note, Refusal};
use values::{Addr, addr};

/// Choices the file cannot make.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The hub's address, when the connections leave it open.
    pub hub: Option<IpAddr>,
}

/// A translated configuration.
#[derive(Debug)]
pub struct Plan {
    /// The hub's outer address.
    pub hub: IpAddr,
    /// One node per connection, in file order.
    pub nodes: Vec<PlanNode>,
    /// What the operator should know: settings ignored and why.
    pub notes: Vec<Note>,
    /// Every file read, the named one first.
    pub files: Vec<Arc<Path>>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanNode {
    /// The connection's name, a valid rotor node name.
    pub name: String,
    /// The node's outer address.
    pub address: IpAddr,
    /// ESP mode and subnets.
    pub mode: Mode,
    /// The children's `rekey_time`, within rotor's bounds, if set.
    pub rotate_interval: Option<Duration>,
    /// Where the connection was written.
    pub origin: Origin,
}

/// Translates `doc`; on failure every refusal, in file order.
pub fn translate(doc: &Document, opts: &Options) -> Result<Plan, Vec<Refusal>> {
    let mut f = Findings::default();
    let root = &doc.root;
    top_level(root, &mut f);
    let Some(conns) = root.section("connections") else {
        f.refuse(
            &root.origin,
            "no `connections` section: nothing to translate",
        );
        return Err(f.refusals);
    };
    for s in conns.settings() {
        f.refuse(
            &s.origin,
            format!("unexpected setting `{}` in `connections`", s.key),
        );
    }
    let psks = secrets::read(root.section("secrets"), &mut f);
    let read: Vec<Sides> = conns.sections().map(|c| sides(c, &mut f)).collect();
    if read.is_empty() {
        f.refuse(&conns.origin, "`connections` holds no connection");
        return Err(f.refusals);
    }
    if read.len() > NODES_MAX {
        f.refuse(
            &conns.origin,
            format!(
                "{} connections; a rotor hub serves at most {NODES_MAX} nodes",
                read.len()
            ),
        );
        return Err(f.refusals);
    }
    let Some(hub) = find_hub(conns, &read, opts.hub, &mut f) else {
        return Err(f.refusals);
    };
    let mut nodes = Vec::with_capacity(read.len());
    let mut by_addr: HashMap<IpAddr, String> = HashMap::new();
    for s in &read {
        if let Some(n) = node(s, hub, &mut by_addr, &psks, &mut f) {
            nodes.push(n);
        }
    }
    if !f.refusals.is_empty() {
        return Err(f.refusals);
    }
    Ok(Plan {
        hub,
        nodes,
        notes: f.into_notes(),
        files: doc.files.clone(),
    })
}

/// Top-level settings and sections other than `connections` and `secrets`.
fn top_level(root: &Section, f: &mut Findings) {
    for s in root.settings() {
        f.note(&s.origin, format!("ignored top-level setting `{}`", s.key));
    }
    for sec in root.sections() {
        match sec.name.as_str() {
            "connections" | "secrets" => {}
            "pools" => f.note(
                &sec.origin,
                "ignored `pools`: rotor assigns no virtual IPs (a connection using them is refused)",
            ),
            "authorities" => f.note(
                &sec.origin,
                "ignored `authorities`: rotor uses no certificates",
            ),
            other => f.note(
                &sec.origin,
                format!("ignored top-level section `{other}` (swanctl ignores it too)"),
            ),
        }
    }
}

/// A connection's two addresses (`None`: refused, recorded).
struct Sides<'a> {
    conn: &'a Section,
    local: Option<Addr>,
    remote: Option<Addr>,
}

fn sides<'a>(conn: &'a Section, f: &mut Findings) -> Sides<'a> {
    let mut side = |key: &str| match conn.setting(key) {
        None => Some(Addr::Any),
        Some(s) => match addr(key, s.text()) {
            Ok(a) => Some(a),
            Err(e) => {
                f.refuse(&s.origin, e);
                None
            }
        },
    };
    Sides {
        conn,
        local: side("local_addrs"),
        remote: side("remote_addrs"),
    }
}

/// The address every readable `pick`ed side names, if they all name the
/// same one.
fn common(read: &[Sides], pick: fn(&Sides) -> Option<Addr>) -> Option<IpAddr> {
    let mut found = None;
    for s in read {
        match pick(s) {
            None => {}
            Some(Addr::Any) => return None,
            Some(Addr::One(a)) => match found {
                None => found = Some(a),
                Some(b) if b == a => {}
                Some(_) => return None,
            },
        }
    }
    found
}

/// The hub's address; sets which side of each connection is the hub.
fn find_hub(
    conns: &Section,
    read: &[Sides],
    given: Option<IpAddr>,
    f: &mut Findings,
) -> Option<IpAddr> {
    if let Some(h) = given {
        return Some(h);
    }
    if let Some(h) = common(read, |s| s.local) {
        return Some(h);
    }
    // On the nodes' side every local_addrs is a node's own address.
    let locals_known = read.iter().all(|s| !matches!(s.local, Some(Addr::Any)));
    if let Some(h) = common(read, |s| s.remote).filter(|_| locals_known) {
        f.note(
            &conns.origin,
            format!("written on the nodes' side: every connection's remote_addrs is the hub, {h}"),
        );
        return Some(h);
    }
    if let Some(s) = read.iter().find(|s| s.local == Some(Addr::Any)) {
        f.refuse(
            &s.conn.origin,
            format!(
                "connection `{}` has no local_addrs (it accepts on any address), so the \
                 hub's address is unknown: pass --hub ADDR",
                s.conn.name
            ),
        );
    } else {
        f.refuse(
            &conns.origin,
            "not hub-and-spoke: no address is on the same side of every connection (the hub \
             must be every connection's local_addrs, or every connection's remote_addrs); \
             pass --hub ADDR if one of them is the hub",
        );
    }
    None
}

/// Why `a` cannot be a node's outer address, if it cannot (rotor's config
/// rules).
fn host_problem(a: IpAddr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("is the unspecified address")
    } else if a.is_multicast() {
        Some("is a multicast address")
    } else if a == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("is the broadcast address")
    } else {
        None
    }
}

/// rotor's node-name rule (`docs/configuration.md`).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_MAX
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Checks a node's address against rotor's rules and the other nodes'
/// (`None`: refused, recorded).
fn node_address(
    address: IpAddr,
    key: &str,
    at: &Origin,
    hub: IpAddr,
    conn: &str,
    by_addr: &mut HashMap<IpAddr, String>,
    f: &mut Findings,
) -> Option<IpAddr> {
    let problem = if let Some(p) = host_problem(address) {
        format!("{key} = {address} {p}: not a node's address")
    } else if address.is_ipv4() != hub.is_ipv4() {
        format!("{key} = {address} is not of the hub's ({hub}) address family")
    } else if address == hub {
        format!("{key} = {address} is the hub's own address")
    } else if let Some(other) = by_addr.get(&address) {
        format!(
            "{key} = {address} is also the node of connection `{other}`: rotor has one \
             entry per node (merge the connections' children into one connection)"
        )
    } else {
        by_addr.insert(address, conn.to_string());
        return Some(address);
    };
    f.refuse(at, problem);
    None
}

/// One connection as a node (`None`: refused, recorded).
fn node(
    s: &Sides,
    hub: IpAddr,
    by_addr: &mut HashMap<IpAddr, String>,
    psks: &secrets::IkeSecrets,
    f: &mut Findings,
) -> Option<PlanNode> {
    let conn = s.conn;
    let before = f.refusals.len();
    let hub_is_local = match (s.local, s.remote) {
        (Some(Addr::One(a)), _) if a == hub => true,
        (_, Some(Addr::One(a))) if a == hub => false,
        (Some(Addr::Any), _) => true,
        (None, _) | (_, None) => return None,
        _ => {
            f.refuse(
                &conn.origin,
                format!(
                    "connection `{}` has the hub, {hub}, on neither side: not hub-and-spoke",
                    conn.name
                ),
            );
            return None;
        }
    };
    let (key, side) = if hub_is_local {
        ("remote_addrs", s.remote)
    } else {
        ("local_addrs", s.local)
    };
    let at = conn.setting(key).map_or(&conn.origin, |s| &s.origin);
    // Every check runs even after one failed, so the operator sees every
    // problem of the connection at once.
    let address = match side {
        Some(Addr::One(a)) => node_address(a, key, at, hub, &conn.name, by_addr, f),
        Some(Addr::Any) => {
            f.refuse(
                at,
                format!(
                    "connection `{}` has no {key}: it accepts any peer (a roadwarrior set-up); \
                     rotor needs each node's address: write one connection per node with its {key}",
                    conn.name
                ),
            );
            None
        }
        None => None,
    };
    if !valid_name(&conn.name) {
        f.refuse(
            &conn.origin,
            format!(
                "connection name `{}` is not a rotor node name (1-{NAME_MAX} characters of \
                 A-Z a-z 0-9 - _ . starting with a letter or digit): rename the connection",
                conn.name
            ),
        );
    } else if conn.name == "hub" {
        f.refuse(
            &conn.origin,
            "a node named `hub` would write hub.toml, the hub's file: rename the connection",
        );
    }
    if !conn.references.is_empty() {
        f.refuse(&conn.origin, child::TEMPLATE);
    }
    for st in conn.settings() {
        f.apply(st, rules::connection(&st.key), "connection");
    }
    for sub in conn.sections() {
        let n = sub.name.as_str();
        if n != "children" && !n.starts_with("local") && !n.starts_with("remote") {
            f.refuse(
                &sub.origin,
                format!("unexpected section `{n}` in connection `{}`", conn.name),
            );
        }
    }
    let local_id = auth::round(conn, "local", f);
    let remote_id = auth::round(conn, "remote", f);
    let children = address.and_then(|node| {
        let ends = child::Ends {
            hub,
            node,
            hub_is_local,
        };
        child::translate(conn, ends, f)
    });
    if f.refusals.len() > before {
        return None;
    }
    let (Some(address), Some(local_id), Some(remote_id), Some(children)) =
        (address, local_id, remote_id, children)
    else {
        return None;
    };
    let (local_addr, remote_addr) = if hub_is_local {
        (hub, address)
    } else {
        (address, hub)
    };
    let local_id = local_id.unwrap_or_else(|| local_addr.to_string());
    let remote_id = remote_id.unwrap_or_else(|| remote_addr.to_string());
    if !psks.any_for(&local_id, &remote_id) {
        f.note(
            &conn.origin,
            "no `ike` secret in the file belongs to this connection's identities: rotor does \
             not need it (its init keys are new), but check that strongSwan finds its PSK \
             elsewhere until the cut-over",
        );
    }
    let max = Duration::from_millis(ROTATE_INTERVAL_MAX_MS);
    let rotate_interval = children.rekey_time.map(|d| {
        if d > max {
            f.note(
                &conn.origin,
                "rekey_time is longer than rotor's longest rotation period, 7d: rotates every 7d",
            );
            max
        } else {
            d
        }
    });
    Some(PlanNode {
        name: conn.name.clone(),
        address,
        mode: children.mode,
        rotate_interval,
        origin: conn.origin.clone(),
    })
}
