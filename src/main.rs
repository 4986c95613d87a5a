//! `rotor`: the binary. Parses the command line and hands over to the role or
//! tool; errors reach the user here, with context, as one readable report.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rand::RngCore;
use zeroize::Zeroizing;

use rotor::cli::{Cli, Command};
use rotor::{check, control, keyfile};

fn genkey() -> anyhow::Result<()> {
    let mut key = Zeroizing::new([0u8; keyfile::KEY_LEN]);
    rand::rngs::OsRng
        .try_fill_bytes(key.as_mut())
        .context("reading the OS random number generator")?;
    println!("{}", keyfile::encode_key(&key).as_str());
    Ok(())
}

/// The log filter `ROTOR_LOG` asks for: a level (`warning` is taken for
/// `warn`), or a tracing directive such as `rotor=debug,info`; unset or
/// empty means `info`. A bare word that is no level is refused: tracing
/// would take it for a target name and silently log nothing, errors
/// included.
fn log_filter(value: Option<&str>) -> Result<tracing_subscriber::EnvFilter, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let v = value.map(str::trim).unwrap_or("");
    let directive = if v.is_empty() {
        "info".to_string()
    } else if v.contains(['=', ',', ':', '[']) {
        v.to_string()
    } else {
        let w = v.to_ascii_lowercase();
        let w = if w == "warning" {
            "warn".to_string()
        } else {
            w
        };
        if !LEVELS.contains(&w.as_str()) {
            return Err(format!(
                "ROTOR_LOG={v}: not a log level; use one of {} (or a directive such as rotor=debug)",
                LEVELS.join(", ")
            ));
        }
        w
    };
    tracing_subscriber::EnvFilter::try_new(&directive).map_err(|e| format!("ROTOR_LOG={v}: {e}"))
}

/// Logs to stderr, with colours only when stderr is a terminal (a log file
/// or the journal gets plain text).
fn init_logging() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let value = std::env::var("ROTOR_LOG").ok();
    let filter = log_filter(value.as_deref()).map_err(anyhow::Error::msg)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Command::Genkey => genkey(),
        Command::Check { config } => check::run(&config),
        Command::Hub { config } => {
            let cfg = rotor::config::load_hub(&config)?;
            init_logging()?;
            runtime()?.block_on(rotor::daemon::run_hub(cfg, &config))
        }
        Command::Node { config } => {
            let cfg = rotor::config::load_node(&config)?;
            init_logging()?;
            runtime()?.block_on(rotor::daemon::run_node(cfg, &config))
        }
        Command::Reload { socket } => {
            let socket = control::find_socket(socket)?;
            let v = control::call(&socket, &control::Request::Reload)?;
            let r: control::ReloadReply =
                serde_json::from_value(v).context("the daemon's reload reply")?;
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
        Command::Purge { config } => {
            init_logging()?;
            rotor::daemon::purge(&config)
        }
        Command::Status { socket, json } => {
            let socket = control::find_socket(socket)?;
            let mut v = control::call(&socket, &control::Request::Status)?;
            if json {
                if let Some(o) = v.as_object_mut() {
                    o.remove("ok");
                }
                println!("{v}");
            } else {
                let st: control::Status =
                    serde_json::from_value(v).context("the daemon's status reply")?;
                print!("{}", control::table(&st));
            }
            Ok(())
        }
        Command::Import { from } => rotor::import::run(from),
        Command::Rotate { socket, node, all } => {
            let socket = control::find_socket(socket)?;
            let v = control::call(&socket, &control::Request::Rotate { node, all })?;
            println!("{v}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rotor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn rotor_log_takes_levels_and_directives_and_refuses_other_words() {
        for ok in [
            None,
            Some(""),
            Some("info"),
            Some("WARNING"),
            Some("warn"),
            Some("debug"),
            Some("rotor=debug,info"),
            Some("off"),
        ] {
            assert!(log_filter(ok).is_ok(), "{ok:?}");
        }
        for bad in ["verbose", "warnings", "loud"] {
            let e = log_filter(Some(bad)).unwrap_err();
            assert!(
                e.starts_with(&format!("ROTOR_LOG={bad}: not a log level")),
                "{e}"
            );
        }
        assert_eq!(log_filter(Some("warning")).unwrap().to_string(), "warn");
    }
}
