//! `rotor`: the binary. Parses the command line and hands over to the role or
//! tool; errors reach the user here, with context, as one readable report.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rand::RngCore;
use zeroize::Zeroizing;

use rotor::cli::{Cli, Command};
use rotor::{check, keyfile};

fn genkey() -> anyhow::Result<()> {
    let mut key = Zeroizing::new([0u8; keyfile::KEY_LEN]);
    rand::rngs::OsRng
        .try_fill_bytes(key.as_mut())
        .context("reading the OS random number generator")?;
    println!("{}", keyfile::encode_key(&key).as_str());
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Command::Genkey => genkey(),
        Command::Check { config } => check::run(&config),
        Command::Hub { .. }
        | Command::Node { .. }
        | Command::Status { .. }
        | Command::Rotate { .. } => {
            anyhow::bail!("the daemons are not part of this build yet")
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
