//! Renders the man pages (`rotor.1` and one per subcommand, `rotor-hub.1`
//! ...) and the bash, zsh and fish completions from the command line's own
//! definition, `src/cli.rs`, into `$OUT_DIR/man` and
//! `$OUT_DIR/completions`, where `scripts/deb.sh` collects them for the
//! package.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

// The same file the binary compiles: the pages describe exactly its flags
// and texts. It may use only clap and std (a build script cannot see the
// crate it builds); the variants and fields are read by the binary alone.
#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

fn main() {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        fail("OUT_DIR is not set (build.rs runs under cargo only)");
    };
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            fail(&format!("creating {}: {e}", dir.display()));
        }
    }
    let cmd = cli::Cli::command();
    if let Err(e) = clap_mangen::generate_to(cmd.clone(), &man) {
        fail(&format!("writing the man pages to {}: {e}", man.display()));
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        if let Err(e) = clap_complete::generate_to(shell, &mut cmd, "rotor", &completions) {
            fail(&format!(
                "writing the {shell} completion to {}: {e}",
                completions.display()
            ));
        }
    }
    check_written(&man.join("rotor.1"));
}

/// A page the packaging relies on must exist.
fn check_written(path: &Path) {
    if !path.is_file() {
        fail(&format!("{} was not written", path.display()));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("build.rs: {msg}");
    std::process::exit(1);
}
