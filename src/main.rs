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

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ROTOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
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
            init_logging();
            runtime()?.block_on(rotor::daemon::run_hub(cfg))
        }
        Command::Node { config } => {
            let cfg = rotor::config::load_node(&config)?;
            init_logging();
            runtime()?.block_on(rotor::daemon::run_node(cfg))
        }
        Command::Status { socket, json } => {
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
        Command::Rotate { socket, node, all } => {
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
