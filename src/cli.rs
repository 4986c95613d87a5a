//! The command line: one binary, `rotor`, with the two roles (`hub`, `node`,
//! see docs/design.md) and the tools of docs/operations.md. `--help` on each
//! subcommand explains what it does and what it changes.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The exit statuses, shown by `--help` (docs/cli.md has the same table).
pub const EXIT_STATUS: &str = "Exit status:\n  \
0  success\n  \
1  failure at run time (the kernel or the daemon refused, a check failed, I/O)\n  \
2  usage or configuration error (bad arguments, config file, key file, ROTOR_LOG)\n  \
3  no daemon answers on the control socket (status, rotate, reload)\n\n\
Output: results on stdout (--json: one JSON object, documented in docs/cli.md), \
errors and logs on stderr.";

/// Rotates IPsec ESP keys in the Linux kernel for hub-and-spoke VPNs.
#[derive(Parser, Debug)]
#[command(
    name = "rotor",
    version,
    about = "Rotates IPsec ESP keys in the Linux kernel for one-to-many (hub-and-spoke) VPNs",
    long_about = "rotor replaces IKE in hub-and-spoke VPNs. The hub generates a fresh key for each \
node every rotation and sends it over a small authenticated UDP channel; both ends install real \
kernel ESP SAs through XFRM netlink. Each side keeps two key generations (the hub sends with N-1, \
a node with N, both accept both), so neither a rotation nor a lost key message interrupts traffic.\n\n\
Quick start:\n  (umask 077; rotor genkey > /etc/rotor/mn1.key)   (copy it to the node too, mode 0600)\n  \
rotor check --config /etc/rotor/hub.toml\n  rotor hub --config /etc/rotor/hub.toml        (on the hub)\n  \
rotor node --config /etc/rotor/mn1.toml       (on the node)\n  rotor status\n\n\
Durations are written like 500ms, 10s, 5m. See docs/configuration.md for every config key.",
    after_help = EXIT_STATUS
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub cmd: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the hub in the foreground. SIGTERM/SIGINT stop it and leave its SAs and policies in
    /// the kernel (traffic keeps flowing, nothing goes out in clear); the next start resumes from
    /// its state. SIGHUP (or `rotor reload`) applies an edited configuration. `rotor purge` uninstalls.
    #[command(visible_alias = "ha")]
    Hub {
        /// Hub configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a node in the foreground. SIGTERM/SIGINT stop it and leave its SAs and policies in the
    /// kernel; the next start resumes from its state. SIGHUP (or `rotor reload`) applies an edited
    /// configuration. `rotor purge` uninstalls.
    #[command(visible_alias = "mn")]
    Node {
        /// Node configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and this kernel (ESP, xfrm_user, privileges); changes nothing.
    Check {
        /// Hub or node configuration file (TOML); the role is read from its [hub] or [node] table.
        #[arg(long, short)]
        config: PathBuf,
        /// Print one JSON object (`ok`, `role`, `checks`) instead of a line per check.
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon re-read its configuration and apply the difference (same as
    /// SIGHUP): added nodes initialise, removed nodes' SAs, policies and state go, a changed node
    /// is re-keyed (re-initialised if its init key changed), untouched nodes notice nothing. A
    /// configuration with any error changes nothing (the error is printed); a change of the
    /// address, port, sockets, state_dir, key_bits, replay_window or priority needs a restart.
    Reload {
        /// The daemon's control socket [default: the one socket in /run/rotor].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print one JSON object (`added`, `removed`, `changed`, `unchanged`).
        #[arg(long)]
        json: bool,
    },
    /// Remove everything a stopped daemon left in the kernel (its SAs and policies) and its
    /// durable state: for uninstalling, or to start over. Refuses while the daemon runs.
    Purge {
        /// The configuration the daemon ran with (hub or node, read from its table).
        #[arg(long, short)]
        config: PathBuf,
        /// Print one JSON object (`sas`, `policies`, `state_dir`).
        #[arg(long)]
        json: bool,
    },
    /// Show the running daemon's key-SPI table, one row per peer.
    Status {
        /// The daemon's control socket [default: the one socket in /run/rotor].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print one JSON object (`role`, `peers`, `drops`, `kernel_errors`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rotate now (on the hub) or request a rotation (on a node).
    Rotate {
        /// The daemon's control socket [default: the one socket in /run/rotor].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The node to rotate. On a node's socket only its own name is accepted.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        node: Option<String>,
        /// Rotate every node (hub), or this node's own keys (node).
        #[arg(long)]
        all: bool,
        /// Print one JSON object (`role`, `rotating`).
        #[arg(long)]
        json: bool,
    },
    /// Print a fresh random 32-byte init key, base64 (like `wg genkey`); store it with mode 0600.
    Genkey,
    /// Translate another VPN's configuration into rotor configurations and key files.
    Import {
        /// Where the configuration comes from.
        #[command(subcommand)]
        from: ImportFrom,
    },
}

/// The configurations `rotor import` reads.
#[derive(Subcommand, Debug)]
pub enum ImportFrom {
    /// Translate a hub-and-spoke strongSwan swanctl.conf into rotor's hub config, one config per
    /// node and one fresh init key per node.
    #[command(
        long_about = "Translate a hub-and-spoke strongSwan configuration (swanctl.conf, \
with its `include`s) into rotor configurations. Each connection becomes one node, named after \
the connection: its address, ESP mode and subnets (children's local_ts/remote_ts) and \
rekey_time (as rotate_interval). The hub is the address every connection shares (its \
local_addrs, or its remote_addrs in a file written from the nodes' side; --hub names it when \
local_addrs is unset).\n\n\
Writes into --out DIR: hub.toml, NAME.toml for each node, and NAME.key (a fresh random init \
key, mode 0600, not derived from the IKE PSK). Copy NAME.toml and NAME.key to node NAME. \
Nothing else is changed: strongSwan keeps running until you cut over (see \
docs/migrating-from-strongswan.md).\n\n\
Refuses, naming the file, line and reason, what rotor cannot do: certificate or EAP \
authentication, virtual IPs, a peer given as a range, subnet or name, traffic selectors with \
protocols or ports, children whose subnet pairs rotor cannot express, updown scripts, marks, \
interface ids and the like; then nothing is written. Settings that only concern IKE \
(proposals, DPD, IKE rekeying, ...) are listed as ignored. Existing files are never \
overwritten without --force."
    )]
    Swanctl(SwanctlArgs),
}

/// Arguments of `rotor import swanctl`.
#[derive(Args, Debug)]
pub struct SwanctlArgs {
    /// The swanctl.conf to read (files it includes are read too, relative to it).
    pub file: PathBuf,
    /// Directory to write the configurations and key files into (created, mode 0700, if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Overwrite files that already exist in --out (their keys are replaced by new ones).
    #[arg(long)]
    pub force: bool,
    /// The hub's address, when the connections do not name it (local_addrs unset) or when one
    /// connection leaves it ambiguous.
    #[arg(long, value_name = "ADDR")]
    pub hub: Option<IpAddr>,
}
