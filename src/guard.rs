//! The clear-text guard: netfilter rules that drop every outbound packet of
//! a flow rotor protects that leaves without an IPsec transform.
//!
//! XFRM alone cannot promise that nothing leaves in clear: `ip xfrm policy
//! flush` (or any deletion of rotor's policies) makes the protected flows
//! plain traffic until the daemon has put the policies back, a few
//! milliseconds later. The guard closes that gap outside XFRM. Per address
//! family one `filter` chain, jumped to first from OUTPUT (locally generated
//! packets) and FORWARD (tunnel-mode gateways), drops a packet whose
//! (source, destination) lies in one of this instance's selector pairs
//! (an `ipset` of type `hash:net,net`) unless it is
//! * bound for an IPsec transform (`-m policy --dir out --pol ipsec`: the
//!   route the kernel looked up for it carries an XFRM bundle); or
//! * already an ESP packet: after the transform the packet passes OUTPUT
//!   again with a plain route, and in transport mode its addresses are the
//!   selector's; or
//! * from the control port: the control channel is authenticated by itself
//!   and exempt from IPsec by its socket's bypass policy (ESP-in-UDP uses
//!   the same source port); or
//! * an IPv6 neighbour solicitation or advertisement, which rotor's own
//!   bypass policies let pass in clear (see [`crate::peer_kernel`]).
//!
//! Objects are named after the instance's reqid base (`ROTOR-GUARD-<hex>`,
//! `rotor-guard-<hex>-v4`, `-v6`), so a hub and nodes on one host, each with
//! its own reqid range, never touch each other's guard. The guard is put in
//! before the first policy, stays when the daemon stops (its SAs and
//! policies stay too) and is removed by `rotor purge`. A standby hub puts
//! it in while it waits, its sets empty ([`Guard::prepare`]): an empty set
//! drops nothing, and the takeover only fills the sets, one `ipset` run
//! instead of the iptables runs that cost seconds on a loaded host.
//!
//! Through `iptables`/`ip6tables` (or their `-legacy` variants) and `ipset`:
//! the legacy xtables kernel interface is a whole-table binary replace with
//! per-revision match structures and has no netlink API, and the restore
//! commands are the tools' stable, atomic interface (a chain and its jumps
//! change in one commit; a set's contents are swapped whole). Set entries
//! change incrementally, in one `ipset restore` per change.

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use rotor_xfrm::{IpNet, Ownership};

/// Most selector pairs one family's set holds (`maxelem`).
pub const MAX_ENTRIES: usize = 1 << 20;

/// Which tools install the guard (`guard` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardBackend {
    /// `iptables` and `ip6tables` as the host has them (nf_tables or
    /// legacy), and `ipset`.
    Iptables,
    /// `iptables-legacy` and `ip6tables-legacy`, and `ipset`.
    IptablesLegacy,
    /// No guard: between a deletion of rotor's policies and their repair,
    /// protected flows can leave in clear.
    Off,
}

impl GuardBackend {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GuardBackend::Iptables => "iptables",
            GuardBackend::IptablesLegacy => "iptables-legacy",
            GuardBackend::Off => "off",
        }
    }
}

/// Why the guard could not be installed, checked or removed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// A program the guard runs is not installed.
    #[error(
        "the clear-text guard needs `{program}` (Debian package {package}), which was not found in PATH: install it, or set `guard = \"off\"` to run without the guard (docs/operations.md)"
    )]
    Missing {
        /// The program.
        program: String,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    Failed {
        /// The command line (a restore's input is not included).
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
        /// What the failure usually means.
        hint: &'static str,
    },
    /// A program could not be run for another reason than its absence.
    #[error("running `{command}`: {source}")]
    Io {
        /// The command line.
        command: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// More selector pairs than a set holds.
    #[error("{count} IPv{family} selector pairs: more than the guard's set holds ({MAX_ENTRIES})")]
    TooMany {
        /// 4 or 6.
        family: u8,
        /// How many there are.
        count: usize,
    },
}

const KERNEL_HINT: &str = " (the guard needs the kernel's xt_policy, xt_set, ip_set and ip_set_hash_netnet modules, and CAP_NET_ADMIN; iptables-legacy also CAP_NET_RAW)";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

impl Family {
    fn of(a: IpAddr) -> Family {
        if a.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    fn index(self) -> usize {
        self as usize
    }
    fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
    fn ipset_family(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }
}

/// One instance's guard.
#[derive(Debug)]
pub struct Guard {
    backend: GuardBackend,
    base: u32,
    port: u16,
    /// Families whose objects this process installed or adopted.
    installed: [bool; 2],
    /// Families whose objects this process created (not adopted from a
    /// previous run): a failed start removes them again.
    fresh: [bool; 2],
    /// Families a standby put in whole ([`Guard::prepare`]), with the
    /// set's entries as last read: the install at takeover only adds the
    /// pairs missing from them (one `ipset` run, no iptables run).
    prepared: [Option<HashSet<String>>; 2],
    /// How many pairs a set created by [`Guard::prepare`] is sized for.
    size_hint: usize,
}

/// The set entries ("src/len,dst/len") of `selectors` in `fam`, sorted and
/// without duplicates. A /0 becomes its two /1 halves: `hash:net,net`
/// refuses prefix length 0.
fn entries(selectors: &[(IpNet, IpNet)], fam: Family) -> Vec<String> {
    fn halves(n: IpNet) -> Vec<IpNet> {
        if n.prefix != 0 {
            return vec![n];
        }
        let (lo, hi): (IpAddr, IpAddr) = match n.addr {
            IpAddr::V4(_) => (
                Ipv4Addr::UNSPECIFIED.into(),
                Ipv4Addr::new(128, 0, 0, 0).into(),
            ),
            IpAddr::V6(_) => (
                Ipv6Addr::UNSPECIFIED.into(),
                Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0).into(),
            ),
        };
        vec![
            IpNet {
                addr: lo,
                prefix: 1,
            },
            IpNet {
                addr: hi,
                prefix: 1,
            },
        ]
    }
    let mut v: Vec<String> = selectors
        .iter()
        .filter(|(s, _)| Family::of(s.addr) == fam)
        .flat_map(|(s, d)| {
            let ds = halves(*d);
            halves(*s)
                .into_iter()
                .flat_map(move |s| ds.clone().into_iter().map(move |d| format!("{s},{d}")))
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One entry of an `ipset save` line (after `add NAME `), spelt as
/// [`entries`] spells it (`ipset` leaves out a host prefix's length);
/// `None` for an entry with options or that does not parse.
fn saved_entry(s: &str) -> Option<String> {
    let mut words = s.split_ascii_whitespace();
    let (src, dst) = words.next()?.split_once(',')?;
    if words.next().is_some() {
        return None;
    }
    Some(format!("{},{}", IpNet::parse(src)?, IpNet::parse(dst)?))
}

/// The families `selectors` use.
fn families(selectors: &[(IpNet, IpNet)]) -> [bool; 2] {
    let mut f = [false; 2];
    for (s, _) in selectors {
        f[Family::of(s.addr).index()] = true;
    }
    f
}

/// Runs `program args`, feeding `stdin`; Ok(stdout) on exit status 0.
fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    hint: &'static str,
) -> Result<String, GuardError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let started = std::time::Instant::now();
    let mut child = match Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GuardError::Missing {
                program: program.to_string(),
                package: if program == "ipset" {
                    "ipset"
                } else {
                    "iptables"
                },
            });
        }
        Err(source) => return Err(GuardError::Io { command, source }),
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early (bad input) closes its end: its exit
        // status and stderr say why, not this write's EPIPE.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| GuardError::Io {
        command: command.clone(),
        source,
    })?;
    // Each run is a process start (tens of ms, far more on a loaded host):
    // what a start or a takeover spends here shows at debug level.
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        status = %out.status,
        "guard: ran `{command}`"
    );
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr)
        .trim()
        .lines()
        .take(4)
        .collect::<Vec<_>>()
        .join("; ");
    Err(GuardError::Failed {
        command,
        status: out.status.to_string(),
        stderr,
        hint,
    })
}

impl Guard {
    /// The guard of the instance owning `own`, whose control channel uses
    /// UDP source port `port`; `None` when `backend` is
    /// [`GuardBackend::Off`]. Nothing is installed yet.
    pub fn new(backend: GuardBackend, own: Ownership, port: u16) -> Option<Guard> {
        (backend != GuardBackend::Off).then_some(Guard {
            backend,
            base: own.base(),
            port,
            installed: [false; 2],
            fresh: [false; 2],
            prepared: [None, None],
            size_hint: 0,
        })
    }

    /// The chain's name (the same in both families).
    pub fn chain(&self) -> String {
        format!("ROTOR-GUARD-{:08x}", self.base)
    }

    fn set(&self, fam: Family) -> String {
        format!("rotor-guard-{:08x}-v{}", self.base, fam.number())
    }

    fn tmp_set(&self, fam: Family) -> String {
        format!("{}n", self.set(fam))
    }

    fn iptables(&self, fam: Family) -> &'static str {
        match (self.backend, fam) {
            (GuardBackend::IptablesLegacy, Family::V4) => "iptables-legacy",
            (GuardBackend::IptablesLegacy, Family::V6) => "ip6tables-legacy",
            (_, Family::V4) => "iptables",
            (_, Family::V6) => "ip6tables",
        }
    }

    fn restore(&self, fam: Family) -> &'static str {
        match (self.backend, fam) {
            (GuardBackend::IptablesLegacy, Family::V4) => "iptables-legacy-restore",
            (GuardBackend::IptablesLegacy, Family::V6) => "ip6tables-legacy-restore",
            (_, Family::V4) => "iptables-restore",
            (_, Family::V6) => "ip6tables-restore",
        }
    }

    fn save(&self, fam: Family) -> &'static str {
        match (self.backend, fam) {
            (GuardBackend::IptablesLegacy, Family::V4) => "iptables-legacy-save",
            (GuardBackend::IptablesLegacy, Family::V6) => "ip6tables-legacy-save",
            (_, Family::V4) => "iptables-save",
            (_, Family::V6) => "ip6tables-save",
        }
    }

    /// The guard's part of the `filter` table, from one `iptables-save`
    /// (each iptables run costs tens of ms, hundreds in UML): which hooks
    /// jump to the chain, and how many rules the chain has (`None`: no
    /// chain).
    fn saved(&self, fam: Family) -> Result<([bool; 2], Option<usize>), GuardError> {
        let out = run(self.save(fam), &["-t", "filter"], None, KERNEL_HINT)?;
        let chain = self.chain();
        let (decl, rule) = (format!(":{chain} "), format!("-A {chain} "));
        let mut jumps = [false; 2];
        let mut rules = None;
        for l in out.lines() {
            if l.starts_with(&decl) {
                rules.get_or_insert(0);
            } else if l.starts_with(&rule) {
                *rules.get_or_insert(0) += 1;
            } else if let Some(hook) = l.strip_suffix(&format!(" -j {chain}")) {
                match hook {
                    "-A OUTPUT" => jumps[0] = true,
                    "-A FORWARD" => jumps[1] = true,
                    _ => {}
                }
            }
        }
        Ok((jumps, rules))
    }

    /// The chain's rules, in `iptables-restore` syntax.
    fn rules(&self, fam: Family) -> Vec<String> {
        let c = self.chain();
        let mut r = vec![
            format!("-A {c} -m policy --dir out --pol ipsec -j RETURN"),
            format!("-A {c} -p esp -j RETURN"),
            format!("-A {c} -p udp --sport {} -j RETURN", self.port),
        ];
        if fam == Family::V6 {
            for t in ["neighbour-solicitation", "neighbour-advertisement"] {
                r.push(format!("-A {c} -p ipv6-icmp --icmpv6-type {t} -j RETURN"));
            }
        }
        r.push(format!(
            "-A {c} -m set --match-set {} src,dst -j DROP",
            self.set(fam)
        ));
        r
    }

    /// The number of entries in set `name`; `None` if there is no such set.
    fn set_len(&self, name: &str) -> Result<Option<usize>, GuardError> {
        match run("ipset", &["-terse", "list", name], None, "") {
            Ok(out) => Ok(Some(
                out.lines()
                    .find_map(|l| l.strip_prefix("Number of entries:"))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0),
            )),
            Err(GuardError::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The entries of set `name`, from one `ipset save`, spelt as
    /// [`entries`] spells them; `None` if there is no such set. An entry
    /// with options (`nomatch`, a timeout) is left out: it may not drop
    /// what its pair selects, so it counts as missing.
    fn set_entries(&self, name: &str) -> Result<Option<HashSet<String>>, GuardError> {
        let out = match run("ipset", &["save", name], None, KERNEL_HINT) {
            Ok(out) => out,
            Err(GuardError::Failed { ref stderr, .. }) if stderr.contains("does not exist") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let head = format!("add {name} ");
        Ok(Some(
            out.lines()
                .filter_map(|l| l.strip_prefix(&head))
                .filter_map(saved_entry)
                .collect(),
        ))
    }

    /// The chain's rules as `iptables -S` lists them; `None` without the
    /// chain.
    fn chain_rules(&self, fam: Family) -> Result<Option<usize>, GuardError> {
        let chain = self.chain();
        match run(self.iptables(fam), &["-w", "5", "-S", &chain], None, "") {
            Ok(out) => Ok(Some(out.lines().filter(|l| l.starts_with("-A ")).count())),
            Err(GuardError::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create_line(&self, name: &str, fam: Family, n: usize) -> String {
        let hashsize = n.next_power_of_two().clamp(1024, MAX_ENTRIES);
        format!(
            "create {name} hash:net,net family {} hashsize {hashsize} maxelem {MAX_ENTRIES}\n",
            fam.ipset_family()
        )
    }

    /// `ipset restore` lines adding to `set` the entries of `e` that `have`
    /// lacks (all of them without `have`).
    fn adds(set: &str, e: &[String], have: Option<&HashSet<String>>) -> String {
        e.iter()
            .filter(|x| have.is_none_or(|h| !h.contains(x.as_str())))
            .map(|x| format!("add {set} {x}\n"))
            .collect()
    }

    fn check_len(fam: Family, e: &[String]) -> Result<(), GuardError> {
        if e.len() > MAX_ENTRIES {
            return Err(GuardError::TooMany {
                family: fam.number(),
                count: e.len(),
            });
        }
        Ok(())
    }

    /// Installs (or adopts and completes) one family: the set holds at
    /// least `e` afterwards, the chain exactly its rules, and both hooks
    /// jump to it. Either all of it is in place or what this call created
    /// is removed again. Returns the set's entries before the call.
    fn install_family(&mut self, fam: Family, e: &[String]) -> Result<HashSet<String>, GuardError> {
        Self::check_len(fam, e)?;
        let set = self.set(fam);
        let (jumps, rules) = self.saved(fam)?;
        // A set a previous run left is read whole and only the pairs it
        // lacks are added: one dump is cheap, while `ipset restore` sends
        // one request per pair (100,000 pairs took 10 s of a restart in
        // UML). A missing set is created with them.
        let have = self.set_entries(&set)?;
        let existed = have.is_some();
        let adds = Self::adds(&set, e, have.as_ref());
        if !existed {
            let input = self.create_line(&set, fam, e.len().max(self.size_hint)) + &adds;
            run("ipset", &["-exist", "restore"], Some(&input), KERNEL_HINT)?;
        } else if !adds.is_empty() {
            run("ipset", &["-exist", "restore"], Some(&adds), KERNEL_HINT)?;
        }
        let chain = self.chain();
        if jumps == [true, true] && rules == Some(self.rules(fam).len()) {
            // A previous run's chain, whole: a restart adopts it as it is
            // (one iptables run less while the nodes wait; the periodic
            // check compares it in full).
            self.installed[fam.index()] = true;
            return Ok(have.unwrap_or_default());
        }
        let mut script = format!("*filter\n:{chain} - [0:0]\n");
        for r in self.rules(fam) {
            script.push_str(&r);
            script.push('\n');
        }
        for (hook, there) in ["OUTPUT", "FORWARD"].into_iter().zip(jumps) {
            if !there {
                script.push_str(&format!("-I {hook} 1 -j {chain}\n"));
            }
        }
        script.push_str("COMMIT\n");
        // One commit: the chain, its rules and the jumps are in together
        // or not at all.
        if let Err(err) = run(
            self.restore(fam),
            &["-w", "5", "--noflush"],
            Some(&script),
            KERNEL_HINT,
        ) {
            if !existed {
                let _ = run("ipset", &["destroy", &set], None, "");
            }
            return Err(err);
        }
        self.installed[fam.index()] = true;
        self.fresh[fam.index()] |= !existed && rules.is_none();
        Ok(have.unwrap_or_default())
    }

    /// Adds to a family [`Guard::prepare`] put in the pairs of `e` its set
    /// lacked when last read.
    fn fill(&self, fam: Family, e: &[String], have: &HashSet<String>) -> Result<(), GuardError> {
        Self::check_len(fam, e)?;
        let adds = Self::adds(&self.set(fam), e, Some(have));
        if !adds.is_empty() {
            run("ipset", &["-exist", "restore"], Some(&adds), KERNEL_HINT)?;
        }
        Ok(())
    }

    /// Puts the guard in ahead of time for a standby hub, for the
    /// families of `sources` (the local sides its pairs will have): the
    /// chain, its rules and both jumps, with a set that starts empty and
    /// so drops nothing (a guard a previous lead on this host left is
    /// adopted as it is, pairs included). The install at takeover then
    /// only fills the sets. `expected` sizes a new set. On error nothing
    /// this call created is left.
    pub fn prepare(
        &mut self,
        sources: impl IntoIterator<Item = IpAddr>,
        expected: usize,
    ) -> Result<usize, GuardError> {
        let mut want = [false; 2];
        for a in sources {
            want[Family::of(a).index()] = true;
        }
        self.size_hint = expected.min(MAX_ENTRIES);
        let mut adopted = 0;
        for fam in FAMILIES {
            if !want[fam.index()] {
                continue;
            }
            match self.install_family(fam, &[]) {
                Ok(have) => {
                    adopted += have.len();
                    self.prepared[fam.index()] = Some(have);
                }
                Err(err) => {
                    self.undo_fresh();
                    return Err(err);
                }
            }
        }
        Ok(adopted)
    }

    /// A standby's periodic check of what [`Guard::prepare`] put in:
    /// a missing jump, chain, rule or set is put back (the set empty).
    /// Returns what was wrong (empty: nothing was done).
    pub fn keep_prepared(&mut self) -> Result<Vec<String>, GuardError> {
        let mut bad = Vec::new();
        for fam in FAMILIES {
            if self.prepared[fam.index()].is_none() {
                continue;
            }
            let mut wrong = self.chain_faults(fam)?;
            if self.set_len(&self.set(fam))?.is_none() {
                wrong.push(format!("set {} is gone", self.set(fam)));
            }
            if !wrong.is_empty() {
                let fresh = self.fresh;
                let have = self.install_family(fam, &[])?;
                self.fresh = fresh;
                self.prepared[fam.index()] = Some(have);
                bad.extend(wrong);
            }
        }
        Ok(bad)
    }

    /// Puts the guard in for `selectors` ((local, remote) pairs) before any
    /// policy is: creates what is missing, adopts what a previous run left
    /// (adding the pairs it lacks, keeping the others until [`Guard::sync`])
    /// and rewrites the chains. On error nothing this call created is left.
    pub fn install(&mut self, selectors: &[(IpNet, IpNet)]) -> Result<usize, GuardError> {
        let want = families(selectors);
        let mut n = 0;
        for fam in FAMILIES {
            if !want[fam.index()] {
                continue;
            }
            let e = entries(selectors, fam);
            n += e.len();
            let r = match self.prepared[fam.index()].take() {
                Some(have) => self.fill(fam, &e, &have),
                None => self.install_family(fam, &e).map(drop),
            };
            if let Err(err) = r {
                self.undo_fresh();
                return Err(err);
            }
        }
        Ok(n)
    }

    /// Makes each installed family's set hold exactly the pairs of
    /// `selectors`: a new set is filled and swapped in whole, so no pair
    /// still in `selectors` is unguarded at any moment.
    pub fn sync(&mut self, selectors: &[(IpNet, IpNet)]) -> Result<(), GuardError> {
        for fam in FAMILIES {
            if !self.installed[fam.index()] {
                continue;
            }
            let e = entries(selectors, fam);
            Self::check_len(fam, &e)?;
            let (set, tmp) = (self.set(fam), self.tmp_set(fam));
            let mut input = self.create_line(&tmp, fam, e.len());
            for x in &e {
                input.push_str(&format!("add {tmp} {x}\n"));
            }
            input.push_str(&format!("swap {tmp} {set}\ndestroy {tmp}\n"));
            if let Err(err) = run("ipset", &["restore"], Some(&input), KERNEL_HINT) {
                // A new set left by a sync that died half-way: once.
                if self.set_len(&tmp)?.is_none() {
                    return Err(err);
                }
                run("ipset", &["destroy", &tmp], None, "")?;
                run("ipset", &["restore"], Some(&input), KERNEL_HINT)?;
            }
        }
        Ok(())
    }

    /// Adds the pairs of `add` and removes those of `del` (a reload),
    /// installing a family that was not needed before.
    pub fn change(
        &mut self,
        add: &[(IpNet, IpNet)],
        del: &[(IpNet, IpNet)],
    ) -> Result<(), GuardError> {
        let want = families(add);
        for fam in FAMILIES {
            let (a, d) = (entries(add, fam), entries(del, fam));
            if want[fam.index()] && !self.installed[fam.index()] {
                self.install_family(fam, &a)?;
                continue;
            }
            if !self.installed[fam.index()] || (a.is_empty() && d.is_empty()) {
                continue;
            }
            let set = self.set(fam);
            let mut input = String::new();
            for x in &a {
                input.push_str(&format!("add {set} {x}\n"));
            }
            for x in &d {
                input.push_str(&format!("del {set} {x}\n"));
            }
            run("ipset", &["-exist", "restore"], Some(&input), KERNEL_HINT)?;
        }
        Ok(())
    }

    /// What is missing or wrong in one family's jumps and chain (one
    /// `iptables-save`); empty when they are whole.
    fn chain_faults(&self, fam: Family) -> Result<Vec<String>, GuardError> {
        let v = fam.number();
        let (jumps, rules) = self.saved(fam)?;
        let mut bad = Vec::new();
        for (hook, there) in ["OUTPUT", "FORWARD"].into_iter().zip(jumps) {
            if !there {
                bad.push(format!("IPv{v} {hook} has no jump to {}", self.chain()));
            }
        }
        let want_rules = self.rules(fam).len();
        match rules {
            Some(n) if n == want_rules => {}
            Some(n) => bad.push(format!(
                "IPv{v} chain {} has {n} rules, not {want_rules}",
                self.chain()
            )),
            None => bad.push(format!("IPv{v} chain {} is gone", self.chain())),
        }
        Ok(bad)
    }

    /// What is missing or wrong in the installed guard compared with
    /// `selectors` (a jump, the chain's rules, the set or its size); empty
    /// when it is whole.
    pub fn check(&self, selectors: &[(IpNet, IpNet)]) -> Result<Vec<String>, GuardError> {
        let mut bad = Vec::new();
        for fam in FAMILIES {
            if !self.installed[fam.index()] {
                continue;
            }
            bad.extend(self.chain_faults(fam)?);
            let want = entries(selectors, fam).len();
            match self.set_len(&self.set(fam))? {
                Some(n) if n == want => {}
                Some(n) => bad.push(format!("set {} holds {n} pairs, not {want}", self.set(fam))),
                None => bad.push(format!("set {} is gone", self.set(fam))),
            }
        }
        Ok(bad)
    }

    /// Checks the guard and, where something is missing or wrong, puts it
    /// back whole. Returns what was wrong (empty: nothing was done).
    pub fn repair(&mut self, selectors: &[(IpNet, IpNet)]) -> Result<Vec<String>, GuardError> {
        let bad = self.check(selectors)?;
        if bad.is_empty() {
            return Ok(bad);
        }
        for fam in FAMILIES {
            if self.installed[fam.index()] {
                let e = entries(selectors, fam);
                let fresh = self.fresh;
                self.install_family(fam, &e)?;
                self.fresh = fresh;
            }
        }
        self.sync(selectors)?;
        Ok(bad)
    }

    /// Removes what this process created (a start that failed after the
    /// guard was in); an adopted guard stays with the objects it guards.
    pub fn undo_fresh(&mut self) {
        for fam in FAMILIES {
            if self.fresh[fam.index()] {
                if let Err(e) = self.remove_family(fam) {
                    tracing::warn!("removing the clear-text guard again: {e}");
                }
                self.fresh[fam.index()] = false;
                self.installed[fam.index()] = false;
            }
        }
    }

    /// Removes one family's jumps, chain and sets; Ok(whether anything
    /// was there). A family whose tools or kernel support are missing has
    /// nothing to remove.
    fn remove_family(&self, fam: Family) -> Result<bool, GuardError> {
        let chain = self.chain();
        let ipt = self.iptables(fam);
        let mut found = false;
        for hook in ["OUTPUT", "FORWARD"] {
            // Bounded: a jump inserted twice by hand goes too.
            for _ in 0..16 {
                match run(ipt, &["-w", "5", "-D", hook, "-j", &chain], None, "") {
                    Ok(_) => found = true,
                    Err(GuardError::Failed { .. }) => break,
                    Err(e) => return Err(e),
                }
            }
        }
        if self.chain_rules(fam)?.is_some() {
            found = true;
            run(ipt, &["-w", "5", "-F", &chain], None, "")?;
            run(ipt, &["-w", "5", "-X", &chain], None, "")?;
        }
        for set in [self.set(fam), self.tmp_set(fam)] {
            if self.set_len(&set)?.is_some() {
                found = true;
                run("ipset", &["destroy", &set], None, "")?;
            }
        }
        Ok(found)
    }

    /// Removes the guard of both families, whatever this process installed
    /// (`rotor purge`). Ok(whether anything was there).
    pub fn remove(&mut self) -> Result<bool, GuardError> {
        let mut found = false;
        for fam in FAMILIES {
            found |= self.remove_family(fam)?;
            self.installed[fam.index()] = false;
            self.fresh[fam.index()] = false;
        }
        Ok(found)
    }

    /// One line naming the objects, for logs.
    pub fn describe(&self) -> String {
        let sets: Vec<String> = FAMILIES
            .iter()
            .filter(|f| self.installed[f.index()])
            .map(|f| self.set(*f))
            .collect();
        format!(
            "chain {} (filter OUTPUT and FORWARD, via {}), set(s) {}",
            self.chain(),
            self.iptables(Family::V4),
            sets.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        IpNet::parse(s).unwrap()
    }

    #[test]
    fn entries_per_family_sorted_unique_and_zero_prefix_split() {
        let sel = vec![
            (net("10.9.0.1/32"), net("10.9.0.3/32")),
            (net("10.9.0.1/32"), net("10.9.0.2/32")),
            (net("10.9.0.1/32"), net("10.9.0.2/32")),
            (net("fd00::1/128"), net("fd00::2/128")),
            (net("10.1.0.0/24"), net("0.0.0.0/0")),
        ];
        assert_eq!(
            entries(&sel, Family::V4),
            vec![
                "10.1.0.0/24,0.0.0.0/1",
                "10.1.0.0/24,128.0.0.0/1",
                "10.9.0.1/32,10.9.0.2/32",
                "10.9.0.1/32,10.9.0.3/32",
            ]
        );
        assert_eq!(entries(&sel, Family::V6), vec!["fd00::1/128,fd00::2/128"]);
        assert_eq!(
            entries(&[(net("::/0"), net("fd01::/64"))], Family::V6),
            vec!["8000::/1,fd01::/64", "::/1,fd01::/64"]
        );
        assert_eq!(families(&sel), [true, true]);
        assert_eq!(families(&sel[..2]), [true, false]);
    }

    #[test]
    fn saved_entries_are_spelt_as_ours_and_options_count_as_missing() {
        let sel = vec![
            (net("10.9.0.1/32"), net("10.9.0.2/32")),
            (net("10.1.0.0/24"), net("10.2.0.0/16")),
            (net("fd00::1/128"), net("fd00::2/128")),
        ];
        let ours: Vec<String> = [Family::V4, Family::V6]
            .into_iter()
            .flat_map(|f| entries(&sel, f))
            .collect();
        let saved: Vec<String> = [
            "10.1.0.0/24,10.2.0.0/16",
            "10.9.0.1,10.9.0.2",
            "fd00::1,fd00::2",
        ]
        .into_iter()
        .filter_map(saved_entry)
        .collect();
        assert_eq!(saved, ours);
        assert_eq!(saved_entry("10.9.0.1,10.9.0.2 nomatch"), None);
        assert_eq!(saved_entry("10.9.0.1,10.9.0.2 timeout 5"), None);
        assert_eq!(saved_entry("junk"), None);
    }

    #[test]
    fn names_follow_the_instance_and_fit_the_kernel_limits() {
        let hub = Guard::new(GuardBackend::IptablesLegacy, Ownership::default(), 4820).unwrap();
        let node = Guard::new(
            GuardBackend::Iptables,
            Ownership::new(0x5258_1234, 1).unwrap(),
            4820,
        )
        .unwrap();
        assert_ne!(hub.chain(), node.chain());
        assert_ne!(hub.set(Family::V4), node.set(Family::V4));
        // xtables chain names: at most 28 characters; ipset names: 31.
        assert!(hub.chain().len() <= 28);
        assert!(hub.tmp_set(Family::V6).len() <= 31);
        assert!(Guard::new(GuardBackend::Off, Ownership::default(), 4820).is_none());
    }

    #[test]
    fn rules_return_for_ipsec_esp_control_and_nd_before_the_drop() {
        let g = Guard::new(GuardBackend::Iptables, Ownership::default(), 4820).unwrap();
        let v4 = g.rules(Family::V4);
        assert!(v4[0].contains("--pol ipsec -j RETURN"));
        assert!(v4.iter().any(|r| r.contains("-p esp -j RETURN")));
        assert!(v4.iter().any(|r| r.contains("--sport 4820 -j RETURN")));
        assert!(v4.last().unwrap().ends_with("src,dst -j DROP"));
        assert!(!v4.iter().any(|r| r.contains("icmpv6")));
        let v6 = g.rules(Family::V6);
        assert_eq!(v6.iter().filter(|r| r.contains("icmpv6-type")).count(), 2);
        assert!(v6.last().unwrap().contains("-v6 src,dst -j DROP"));
    }
}
