//! `rotor`: the binary. Parses the command line and hands over to the role or
//! tool; results go to stdout (as text, or as JSON with `--json`, see
//! docs/cli.md), errors reach the user on stderr, with context, as one
//! readable report, and the exit status says what kind of failure it was
//! ([`rotor::cli::EXIT_STATUS`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rand::RngCore;
use serde::Serialize;
use zeroize::Zeroizing;

use rotor::cli::{Cli, Command};
use rotor::config::ConfigError;
use rotor::control::{self, Ambiguous, NotRunning};
use rotor::logging::FilterError;
use rotor::{check, keyfile};

/// Exit status of a failure at run time.
const FAILED: u8 = 1;
/// Exit status of a usage or configuration error (clap's own for usage).
const USAGE: u8 = 2;
/// Exit status when no daemon answers on the control socket.
const NOT_RUNNING: u8 = 3;
/// A hub that lost the lead of its etcd prefix
/// ([`rotor::daemon::lead::EXIT_STEPPED_DOWN`]).
const STEPPED_DOWN: u8 = 75;

fn genkey() -> anyhow::Result<()> {
    let mut key = Zeroizing::new([0u8; keyfile::KEY_LEN]);
    rand::rngs::OsRng
        .try_fill_bytes(key.as_mut())
        .context("reading the OS random number generator")?;
    println!("{}", keyfile::encode_key(&key).as_str());
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")
}

fn print_json(v: &impl Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string(v).context("encoding the JSON output")?
    );
    Ok(())
}

/// `rotor status`: the table, or the daemon's status without its `ok`.
fn status(socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let socket = control::find_socket(socket)?;
    let v = control::call(&socket, &control::Request::Status)?;
    let st: control::Status = serde_json::from_value(v).context("the daemon's status reply")?;
    if json {
        print_json(&st)
    } else {
        print!("{}", control::table(&st));
        Ok(())
    }
}

fn rotate(
    socket: Option<PathBuf>,
    node: Option<String>,
    all: bool,
    json: bool,
) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Out<'a> {
        role: &'a str,
        rotating: usize,
    }
    let socket = control::find_socket(socket)?;
    let v = control::call(
        &socket,
        &control::Request::Rotate {
            node: node.clone(),
            all,
        },
    )?;
    let r: control::RotateReply = serde_json::from_value(v).context("the daemon's rotate reply")?;
    if json {
        return print_json(&Out {
            role: &r.role,
            rotating: r.rotating,
        });
    }
    match (r.role.as_str(), node) {
        ("node", _) => println!("asked the hub for a rotation"),
        (_, Some(n)) if !all => println!("rotating {n} now"),
        _ => println!(
            "rotating {} node(s), 256 per step of the hub's loop (`rotor status` shows progress)",
            r.rotating
        ),
    }
    Ok(())
}

fn reload(socket: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Out<'a> {
        added: &'a [String],
        removed: &'a [String],
        changed: &'a [String],
        unchanged: usize,
    }
    let socket = control::find_socket(socket)?;
    let v = control::call(&socket, &control::Request::Reload)?;
    let r: control::ReloadReply = serde_json::from_value(v).context("the daemon's reload reply")?;
    if json {
        return print_json(&Out {
            added: &r.added,
            removed: &r.removed,
            changed: &r.changed,
            unchanged: r.unchanged,
        });
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    println!(
        "reloaded: added {}, removed {}, changed {}, {} unchanged",
        list(&r.added),
        list(&r.removed),
        list(&r.changed),
        r.unchanged
    );
    Ok(())
}

fn check(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    if !json {
        return check::run(config);
    }
    let (report, config_error) = check::report(config);
    print_json(&report)?;
    // A bad configuration goes to stderr as in every other mode.
    if let Some(e) = config_error {
        return Err(e.into());
    }
    match report.failed() {
        0 => Ok(()),
        n => anyhow::bail!("{n} check(s) failed"),
    }
}

fn purge(config: &std::path::Path, json: bool) -> anyhow::Result<()> {
    rotor::logging::init()?;
    let p = rotor::daemon::purge(config)?;
    if json {
        return print_json(&p);
    }
    let state = match &p.etcd_kept {
        None => format!("state in {} deleted", p.state_dir.display()),
        Some(etcd) => format!("records in {etcd} kept (other hubs may share them)"),
    };
    println!(
        "purged: {} SA(s) and {} policy(ies) removed from the kernel{}, {state}",
        p.sas,
        p.policies,
        if p.guard {
            " with the clear-text guard"
        } else {
            ""
        },
    );
    Ok(())
}

/// Keeps the daemon's memory, key material included, out of swap where the
/// process may lock it (docs/operations.md, "Secrets in memory"); says so
/// either way. Called once the configuration is valid (its keys, already in
/// memory, are locked with the rest: `MCL_CURRENT`).
fn lock_memory() {
    match rotor_sys::lock_memory() {
        Ok(rotor_sys::MemoryLock::Locked) => {
            tracing::info!("memory locked: key material stays out of swap")
        }
        Ok(rotor_sys::MemoryLock::LimitTooLow { limit }) => tracing::warn!(
            limit_bytes = limit,
            "memory not locked (no CAP_IPC_LOCK, and RLIMIT_MEMLOCK is finite): key material may be \
             written to swap; give the daemon CAP_IPC_LOCK, or use encrypted or no swap"
        ),
        Err(e) => {
            tracing::warn!("memory not locked: mlockall: {e}; key material may be written to swap")
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Command::Genkey => genkey(),
        Command::Check { config, json } => check(&config, json),
        Command::Hub { config } => {
            rotor::logging::init()?;
            let cfg = rotor::config::load_hub(&config)?;
            lock_memory();
            runtime()?.block_on(rotor::daemon::run_hub(cfg, &config))
        }
        Command::Node { config } => {
            rotor::logging::init()?;
            let cfg = rotor::config::load_node(&config)?;
            lock_memory();
            runtime()?.block_on(rotor::daemon::run_node(cfg, &config))
        }
        Command::Import { from } => rotor::import::run(from),
        Command::Reload { socket, json } => reload(socket, json),
        Command::Purge { config, json } => purge(&config, json),
        Command::Status { socket, json } => status(socket, json),
        Command::Rotate {
            socket,
            node,
            all,
            json,
        } => rotate(socket, node, all, json),
    }
}

/// The exit status for `e` (see [`rotor::cli::EXIT_STATUS`]).
fn exit_status(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<NotRunning>() {
            return NOT_RUNNING;
        }
        if cause.is::<ConfigError>() || cause.is::<FilterError>() || cause.is::<Ambiguous>() {
            return USAGE;
        }
        // A hub whose write was refused because another leads stepped
        // down: the same status as its watchdog's (start again, as a
        // standby).
        let fenced = matches!(
            cause.downcast_ref::<rotor::state::StateError>(),
            Some(rotor::state::StateError::Etcd(
                rotor::state::etcd::EtcdError::Fenced { .. }
            ))
        ) || matches!(
            cause.downcast_ref::<rotor::state::etcd::EtcdError>(),
            Some(rotor::state::etcd::EtcdError::Fenced { .. })
        );
        if fenced {
            return STEPPED_DOWN;
        }
    }
    FAILED
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Under systemd the journal takes the error at its priority.
            let prefix = if rotor::logging::journal() { "<3>" } else { "" };
            eprintln!("{prefix}rotor: {e:#}");
            ExitCode::from(exit_status(&e))
        }
    }
}
