//! `rotor check`: validates a configuration (keys included) and whether this
//! kernel and process can run rotor, without changing anything the host can
//! see (the ESP probe runs in a throwaway network namespace).

use std::path::Path;

use anyhow::bail;
use rotor_xfrm::{Capability, KernelError, probe_esp};
use serde::Serialize;

use crate::config::{ConfigError, ConfigFile, PeerMode, Role};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: `config`, `node NAME`, `privileges`, `kernel`.
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found (why it failed, for a failed check).
    pub detail: String,
}

impl Check {
    fn pass(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// Everything `rotor check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether every check passed.
    pub ok: bool,
    /// `hub` or `node`; `None` when the configuration could not be read.
    pub role: Option<&'static str>,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// Checks that failed.
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.ok).count()
    }

    /// One line per check: `ok   what: detail` or `FAIL what: detail`.
    pub fn text(&self) -> String {
        self.checks
            .iter()
            .map(|c| {
                let mark = if c.ok { "ok  " } else { "FAIL" };
                format!("{mark} {}: {}\n", c.check, c.detail)
            })
            .collect()
    }
}

/// Runs every check, prints one line per check, fails if any failed. A bad
/// configuration fails first, with exactly the error `rotor hub` or
/// `rotor node` would print for the same file (the same loader produces it).
pub fn run(file: &Path) -> anyhow::Result<()> {
    let (report, config_error) = report(file);
    if let Some(e) = config_error {
        return Err(e.into());
    }
    print!("{}", report.text());
    match report.failed() {
        0 => Ok(()),
        n => bail!("{n} check(s) failed"),
    }
}

/// Runs every check. A bad configuration stops the run: the report says
/// so and the error comes with it.
pub fn report(file: &Path) -> (Report, Option<ConfigError>) {
    let mut report = Report {
        ok: true,
        role: None,
        checks: Vec::new(),
    };
    if let Err(e) = config(file, &mut report) {
        report.checks.push(Check::fail("config", e.to_string()));
        report.ok = false;
        return (report, Some(e));
    }
    report.checks.extend(kernel(probe_esp(), EspModules::read));
    report.ok = report.failed() == 0;
    (report, None)
}

fn config(file: &Path, report: &mut Report) -> Result<(), ConfigError> {
    let cfg = ConfigFile::read(file)?;
    match cfg.role()? {
        Role::Hub => {
            let c = cfg.into_hub()?;
            report.role = Some("hub");
            report.checks.push(Check::pass(
                "config",
                format!(
                    "hub {}:{} with {} node(s), rotate every {:?}, AES-{}",
                    c.address,
                    c.port,
                    c.nodes.len(),
                    c.rotate_interval,
                    c.key_bits
                ),
            ));
            for n in &c.nodes {
                let mode = match &n.mode {
                    PeerMode::Transport => "transport".to_string(),
                    PeerMode::Tunnel { local, remote } => format!(
                        "tunnel ({} local, {} remote subnets)",
                        local.len(),
                        remote.len()
                    ),
                };
                report.checks.push(Check::pass(
                    format!("node {}", n.name),
                    format!(
                        "{} {mode}, key file 0600",
                        n.address
                            .map_or_else(|| "address learned".to_string(), |a| a.to_string())
                    ),
                ));
            }
        }
        Role::Node => {
            let c = cfg.into_node()?;
            report.role = Some("node");
            report.checks.push(Check::pass(
                "config",
                format!(
                    "node {} at {}, hub {}, hello every {:?}, key file 0600",
                    c.name,
                    c.address.map_or_else(
                        || "the address its route to the hub gives (followed)".to_string(),
                        |a| a.to_string()
                    ),
                    c.hub_name
                        .as_ref()
                        .map_or_else(|| c.hub.to_string(), |n| format!("{n} ({})", c.hub)),
                    c.hello_interval
                ),
            ));
        }
    }
    Ok(())
}

/// What the kernel says about ESP outside XFRM, for when the probe cannot
/// tell: the kernel checks the AEAD algorithm before the ESP protocol, so
/// on a kernel with neither it blames the algorithm.
#[derive(Debug, Clone, Default)]
pub struct EspModules {
    /// `/proc/modules`; `None` on a kernel without loadable modules.
    pub loaded: Option<String>,
    /// `/proc/kallsyms`, if readable: ESP's functions are listed there when
    /// it is built in or loaded.
    pub symbols: Option<String>,
    /// `modules.builtin` of the running kernel, if readable.
    pub builtin: Option<String>,
    /// `modules.dep` of the running kernel, if readable.
    pub installed: Option<String>,
}

impl EspModules {
    /// The running kernel's lists (missing ones stay `None`).
    pub fn read() -> EspModules {
        let read = |p: &Path| std::fs::read_to_string(p).ok();
        let release = read(Path::new("/proc/sys/kernel/osrelease")).unwrap_or_default();
        let dir = Path::new("/lib/modules").join(release.trim());
        EspModules {
            loaded: read(Path::new("/proc/modules")),
            symbols: read(Path::new("/proc/kallsyms")).filter(|s| !s.is_empty()),
            builtin: read(&dir.join("modules.builtin")),
            installed: read(&dir.join("modules.dep")),
        }
    }

    /// Whether module `name` (`esp4`, `esp6`) is built in, loaded or
    /// installed: `Some(false)` only when that is certain (the kernel's
    /// symbols lack it and it can load no modules, or both module lists of
    /// the running kernel lack it); `None` when it cannot be told.
    pub fn has(&self, name: &str) -> Option<bool> {
        // The xfrm_type init function of each, which no build inlines (it
        // is called through a pointer).
        let symbol = if name == "esp6" {
            "esp6_init_state"
        } else {
            "esp_init_state"
        };
        let in_symbols = self.symbols.as_deref().map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().nth(2) == Some(symbol))
        });
        let loaded = self
            .loaded
            .as_deref()
            .is_some_and(|m| m.lines().any(|l| l.split_whitespace().next() == Some(name)));
        if loaded || in_symbols == Some(true) {
            return Some(true);
        }
        if self.loaded.is_none() && in_symbols == Some(false) {
            // Not built in, and nothing can be loaded.
            return Some(false);
        }
        // Entries are paths such as kernel/net/ipv4/esp4.ko (or .ko.zst,
        // .ko.xz, ...); modules.dep adds ": deps".
        let listed = |list: &str| {
            list.lines().any(|l| {
                let path = l.split(':').next().unwrap_or("");
                let file = path.rsplit('/').next().unwrap_or("");
                file.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(".ko"))
            })
        };
        match (&self.builtin, &self.installed) {
            (Some(b), Some(d)) => Some(listed(b) || listed(d)),
            (Some(b), None) if listed(b) => Some(true),
            (None, Some(d)) if listed(d) => Some(true),
            _ => None,
        }
    }
}

/// Whether the probe's refusal is the kernel not finding the AEAD
/// algorithm (see [`KernelError::hint`]).
fn algorithm_missing(e: &KernelError) -> bool {
    (e.errno == libc::ENOSYS || e.errno == libc::ENOENT)
        && e.message
            .as_deref()
            .is_some_and(|m| m.contains("algorithm not found"))
}

/// The kernel checks, from the probe's outcome and the module lists: the
/// first missing piece first (ESP before the AEAD algorithm).
pub fn kernel(probe: Capability, modules: impl FnOnce() -> EspModules) -> Vec<Check> {
    match probe {
        Capability::Ok => vec![Check::pass(
            "kernel",
            "ESP SAs with rfc4106(gcm(aes)) and ESN can be created (IPv4 and IPv6)",
        )],
        Capability::NotPermitted(m) => vec![Check::fail(
            "privileges",
            format!("{m} (rotor needs root, or CAP_NET_ADMIN and CAP_SYS_ADMIN)"),
        )],
        Capability::Refused(e) => {
            let mut out = Vec::new();
            if algorithm_missing(&e) {
                let modules = modules();
                let missing: Vec<&str> = ["esp4", "esp6"]
                    .into_iter()
                    .filter(|m| modules.has(m) == Some(false))
                    .collect();
                if !missing.is_empty() {
                    out.push(Check::fail(
                        "kernel",
                        format!(
                            "no ESP in this kernel ({}: not built in, not loaded, no module \
                             installed; CONFIG_INET_ESP, CONFIG_INET6_ESP): use a kernel with \
                             ESP. It also needs rfc4106(gcm(aes)), which the kernel checks first:",
                            missing.join(" and ")
                        ),
                    ));
                }
            }
            out.push(Check::fail("kernel", e.to_string()));
            out
        }
        Capability::Failed(m) => vec![Check::fail("kernel probe", m)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcm_refused() -> Capability {
        Capability::Refused(KernelError {
            op: "add SA spi=0x00001000 192.0.2.1 -> 192.0.2.2".into(),
            errno: libc::ENOSYS,
            message: Some("Requested AEAD algorithm not found".into()),
        })
    }

    fn modules(loaded: &str, builtin: Option<&str>, dep: Option<&str>) -> EspModules {
        EspModules {
            loaded: Some(loaded.into()),
            symbols: None,
            builtin: builtin.map(Into::into),
            installed: dep.map(Into::into),
        }
    }

    const SYMBOLS: &str = "ffffffff820beb20 T xfrm_aead_get_byname\n\
                           ffffffff820bf000 t esp_init_state\n";

    #[test]
    fn built_in_esp_shows_in_the_kernels_symbols() {
        // A kernel without module support: the symbols decide.
        let builtin = EspModules {
            symbols: Some(SYMBOLS.into()),
            ..Default::default()
        };
        assert_eq!(builtin.has("esp4"), Some(true));
        assert_eq!(builtin.has("esp6"), Some(false));
        // With modules, esp6 could still be installed: only the lists tell.
        let modular = EspModules {
            loaded: Some(String::new()),
            symbols: Some(SYMBOLS.into()),
            ..Default::default()
        };
        assert_eq!(modular.has("esp6"), None);
        // A loaded module's symbols carry its name after them.
        let loaded = EspModules {
            loaded: Some(String::new()),
            symbols: Some("ffffffffc0a01000 t esp6_init_state\t[esp6]\n".into()),
            ..Default::default()
        };
        assert_eq!(loaded.has("esp6"), Some(true));
    }

    #[test]
    fn esp_modules_are_found_loaded_built_in_or_installed() {
        let none = modules("", Some("kernel/net/ipv4/ah4.ko\n"), Some(""));
        assert_eq!(none.has("esp4"), Some(false));
        let loaded = modules("esp4 24576 0 - Live 0x0\n", None, None);
        assert_eq!(loaded.has("esp4"), Some(true));
        assert_eq!(loaded.has("esp6"), None, "no lists: cannot tell");
        let builtin = modules("", Some("kernel/net/ipv4/esp4.ko\n"), Some(""));
        assert_eq!(builtin.has("esp4"), Some(true));
        let installed = modules(
            "",
            Some(""),
            Some("kernel/net/ipv6/esp6.ko.zst: kernel/net/ipv6/ip6_tunnel.ko.zst\n"),
        );
        assert_eq!(installed.has("esp6"), Some(true));
        assert_eq!(installed.has("esp4"), Some(false));
        // esp4_offload is not esp4.
        let offload = modules("", Some("kernel/net/ipv4/esp4_offload.ko\n"), Some(""));
        assert_eq!(offload.has("esp4"), Some(false));
    }

    #[test]
    fn a_kernel_without_esp_is_blamed_for_esp_before_gcm() {
        let c = kernel(gcm_refused(), || modules("", Some(""), Some("")));
        assert_eq!(c.len(), 2);
        assert!(
            !c[0].ok
                && c[0]
                    .detail
                    .starts_with("no ESP in this kernel (esp4 and esp6: "),
            "{}",
            c[0].detail
        );
        assert!(
            c[1].detail.contains("lacks rfc4106(gcm(aes))"),
            "{}",
            c[1].detail
        );
    }

    #[test]
    fn a_kernel_with_esp_but_no_gcm_is_blamed_for_gcm_only() {
        let with_esp = modules(
            "",
            Some("kernel/net/ipv4/esp4.ko\nkernel/net/ipv6/esp6.ko\n"),
            Some(""),
        );
        let c = kernel(gcm_refused(), || with_esp);
        assert_eq!(c.len(), 1);
        assert!(c[0].detail.contains("lacks rfc4106(gcm(aes))"));
        // Without module lists nothing is claimed about ESP.
        assert_eq!(kernel(gcm_refused(), EspModules::default).len(), 1);
        // Nor is anything read when the probe passes.
        let c = kernel(Capability::Ok, || unreachable!("no module lists needed"));
        assert!(c[0].ok);
    }

    #[test]
    fn a_report_prints_one_line_per_check_and_counts_failures() {
        let r = Report {
            ok: false,
            role: Some("hub"),
            checks: vec![
                Check::pass("config", "hub 10.0.0.1:4820"),
                Check::fail("kernel", "no ESP"),
            ],
        };
        assert_eq!(r.failed(), 1);
        assert_eq!(
            r.text(),
            "ok   config: hub 10.0.0.1:4820\nFAIL kernel: no ESP\n"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["checks"][1]["ok"], false);
        assert_eq!(v["role"], "hub");
    }
}
