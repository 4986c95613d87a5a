//! Writes a translated [`Plan`] as rotor files: `hub.toml`, `NAME.toml` and
//! `NAME.key` (a fresh random init key, mode 0600) per node, in one
//! directory. Nothing is written if any target exists, unless forced; the
//! key files are relative to the configs (`psk_file = "NAME.key"`), so the
//! directory can be copied to `/etc/rotor` as it is.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::keyfile::{KEY_LEN, write_key};

use super::swanctl::{Mode, Plan, PlanNode};

/// rotor's default rotation period (`hub.rotate_interval`).
const DEFAULT_ROTATE: Duration = Duration::from_secs(60);

/// Why the files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Targets exist and overwriting was not asked for.
    #[error(
        "{} already exist{} in {}: nothing written (pass --force to overwrite; the nodes' keys would be replaced)",
        names.join(", "), if names.len() == 1 { "s" } else { "" }, dir.display()
    )]
    Exists {
        /// The output directory.
        dir: PathBuf,
        /// The existing files' names (at most 10 shown, then a count).
        names: Vec<String>,
    },
    /// A file or the directory could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The OS random number generator failed.
    #[error("reading the OS random number generator: {0}")]
    Random(#[from] rand::Error),
    /// A config could not be rendered (a bug: every value is a string).
    #[error("rendering {file}: {source}")]
    Render {
        /// The file.
        file: String,
        /// The serializer's error.
        #[source]
        source: toml::ser::Error,
    },
}

/// The files written, hub first.
#[derive(Debug)]
pub struct Written {
    /// `DIR/hub.toml`.
    pub hub: PathBuf,
    /// `(DIR/NAME.toml, DIR/NAME.key)` per node, in plan order.
    pub nodes: Vec<(PathBuf, PathBuf)>,
}

#[derive(Serialize)]
struct HubFile {
    hub: HubTable,
    node: Vec<HubNode>,
}

#[derive(Serialize)]
struct HubTable {
    address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotate_interval: Option<String>,
}

#[derive(Serialize)]
struct HubNode {
    name: String,
    address: String,
    psk_file: String,
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_subnets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_subnets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotate_interval: Option<String>,
}

#[derive(Serialize)]
struct NodeFile {
    node: NodeTable,
}

#[derive(Serialize)]
struct NodeTable {
    name: String,
    address: String,
    hub: String,
    psk_file: String,
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_subnets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote_subnets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sa_lifetime: Option<String>,
}

/// A node's default hard SA lifetime, 24 h (`node.sa_lifetime`).
const NODE_SA_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The node's `sa_lifetime` when its default would expire SAs before the
/// hub rotates them: the hub's own default for that period, 3 x the period
/// + grace (5 s) + 30 s.
fn node_sa_lifetime(period: Duration) -> Option<Duration> {
    let need = period.saturating_mul(3) + Duration::from_secs(35);
    (need > NODE_SA_LIFETIME).then_some(need)
}

/// A duration in the largest unit that writes it exactly.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

/// `(mode, subnets on this side, subnets on the other)`.
fn mode(m: &Mode, hub_side: bool) -> (&'static str, Option<Vec<String>>, Option<Vec<String>>) {
    match m {
        Mode::Transport => ("transport", None, None),
        Mode::Tunnel { hub, node } => {
            let s = |v: &[rotor_xfrm::IpNet]| Some(v.iter().map(ToString::to_string).collect());
            if hub_side {
                ("tunnel", s(hub), s(node))
            } else {
                ("tunnel", s(node), s(hub))
            }
        }
    }
}

/// The rotation period shared by the most nodes (ties: rotor's default),
/// written once as `hub.rotate_interval`.
fn common_period(nodes: &[PlanNode]) -> Duration {
    let mut counts: Vec<(Duration, usize)> = Vec::new();
    for n in nodes {
        let d = n.rotate_interval.unwrap_or(DEFAULT_ROTATE);
        match counts.iter_mut().find(|(p, _)| *p == d) {
            Some((_, c)) => *c += 1,
            None => counts.push((d, 1)),
        }
    }
    let best = counts.iter().map(|&(_, c)| c).max().unwrap_or(0);
    if counts
        .iter()
        .any(|&(d, c)| d == DEFAULT_ROTATE && c == best)
    {
        return DEFAULT_ROTATE;
    }
    counts
        .iter()
        .find(|&&(_, c)| c == best)
        .map_or(DEFAULT_ROTATE, |&(d, _)| d)
}

fn render<T: Serialize>(file: &str, header: &str, v: &T) -> Result<String, WriteError> {
    let body = toml::to_string(v).map_err(|source| WriteError::Render {
        file: file.to_string(),
        source,
    })?;
    Ok(format!("{header}{body}"))
}

/// Writes `plan` into `dir` (created 0700 if missing). `source` is named in
/// the files' header comment.
pub fn write(plan: &Plan, dir: &Path, force: bool, source: &Path) -> Result<Written, WriteError> {
    let hub_name = "hub.toml".to_string();
    let mut names = vec![hub_name.clone()];
    for n in &plan.nodes {
        names.push(format!("{}.toml", n.name));
        names.push(format!("{}.key", n.name));
    }
    if !force {
        let existing: Vec<String> = names
            .iter()
            .filter(|n| fs::symlink_metadata(dir.join(n)).is_ok())
            .cloned()
            .collect();
        if !existing.is_empty() {
            let mut shown: Vec<String> = existing.iter().take(10).cloned().collect();
            if existing.len() > 10 {
                shown.push(format!("and {} more", existing.len() - 10));
            }
            return Err(WriteError::Exists {
                dir: dir.to_path_buf(),
                names: shown,
            });
        }
    }
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Io { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;

    let period = common_period(&plan.nodes);
    let header = format!(
        "# Written by `rotor import swanctl` from {}.\n# See docs/configuration.md for every key.\n\n",
        source.display()
    );
    let hub_file = HubFile {
        hub: HubTable {
            address: plan.hub.to_string(),
            rotate_interval: (period != DEFAULT_ROTATE).then(|| duration(period)),
        },
        node: plan
            .nodes
            .iter()
            .map(|n| {
                let (mode, local, remote) = mode(&n.mode, true);
                let own = n.rotate_interval.unwrap_or(DEFAULT_ROTATE);
                HubNode {
                    name: n.name.clone(),
                    address: n.address.to_string(),
                    psk_file: format!("{}.key", n.name),
                    mode,
                    local_subnets: local,
                    remote_subnets: remote,
                    rotate_interval: (own != period).then(|| duration(own)),
                }
            })
            .collect(),
    };
    let hub_text = render(&hub_name, &header, &hub_file)?;

    let mut written = Written {
        hub: dir.join(&hub_name),
        nodes: Vec::with_capacity(plan.nodes.len()),
    };
    for n in &plan.nodes {
        let key_path = dir.join(format!("{}.key", n.name));
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.try_fill_bytes(key.as_mut())?;
        if force {
            match fs::remove_file(&key_path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err(&key_path)(e));
                }
                _ => {}
            }
        }
        write_key(&key_path, &key).map_err(io_err(&key_path))?;

        let (mode, local, remote) = mode(&n.mode, false);
        let node_name = format!("{}.toml", n.name);
        let text = render(
            &node_name,
            &header,
            &NodeFile {
                node: NodeTable {
                    name: n.name.clone(),
                    address: n.address.to_string(),
                    hub: plan.hub.to_string(),
                    psk_file: format!("{}.key", n.name),
                    mode,
                    local_subnets: local,
                    remote_subnets: remote,
                    sa_lifetime: node_sa_lifetime(n.rotate_interval.unwrap_or(DEFAULT_ROTATE))
                        .map(duration),
                },
            },
        )?;
        let node_path = dir.join(node_name);
        fs::write(&node_path, text).map_err(io_err(&node_path))?;
        written.nodes.push((node_path, key_path));
    }
    fs::write(&written.hub, hub_text).map_err(io_err(&written.hub))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_largest_exact_unit() {
        assert_eq!(duration(Duration::from_secs(5400)), "90m");
        assert_eq!(duration(Duration::from_secs(3600)), "1h");
        assert_eq!(duration(Duration::from_secs(172_800)), "2d");
        assert_eq!(duration(Duration::from_secs(61)), "61s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
    }
}
