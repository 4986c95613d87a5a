//! `rotor import`: other VPNs' configurations as rotor configurations.
//!
//! `rotor import swanctl FILE --out DIR` reads a strongSwan swanctl.conf
//! ([`settings`] parses the syntax, [`swanctl`] decides what each connection
//! becomes) and writes the hub's config, one config per node and one fresh
//! init key per node ([`write`]). What maps to what, what is refused and
//! why the keys are fresh rather than derived from the IKE PSKs:
//! docs/migrating-from-strongswan.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::cli::{ImportFrom, SwanctlArgs};
use crate::config::{ConfigError, load_hub, load_node};

pub mod settings;
pub mod swanctl;
pub mod write;

use settings::SyntaxError;
use swanctl::{Options, Plan, Refusal};
use write::{WriteError, Written};

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not valid settings syntax, or could not be read.
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    /// Connections rotor cannot take over; nothing was written.
    #[error("{}: {} thing{} cannot be translated to rotor, nothing was written:{}",
        file.display(), refusals.len(), if refusals.len() == 1 { "" } else { "s" },
        refusals.iter().fold(String::new(), |mut s, r| { let _ = write!(s, "\n  {r}"); s }))]
    Refused {
        /// The file named on the command line.
        file: PathBuf,
        /// Every refusal, each with its file and line.
        refusals: Vec<Refusal>,
    },
    /// The output could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A written file fails rotor's own loader: a bug of the importer.
    #[error("the written configuration fails rotor's own check (a bug in the importer): {0}")]
    Check(#[from] ConfigError),
}

/// What an import did.
#[derive(Debug)]
pub struct Imported {
    /// The translation, with its notes.
    pub plan: Plan,
    /// The files written.
    pub written: Written,
}

/// Translates `file` and writes the result into `out`; then reads every
/// written file back with rotor's own config loader, so a success means
/// `rotor hub` / `rotor node` accept them.
pub fn swanctl(
    file: &Path,
    out: &Path,
    force: bool,
    opts: &Options,
) -> Result<Imported, ImportError> {
    let doc = settings::parse_file(file)?;
    let plan = swanctl::translate(&doc, opts).map_err(|refusals| ImportError::Refused {
        file: file.to_path_buf(),
        refusals,
    })?;
    let written = write::write(&plan, out, force, file)?;
    load_hub(&written.hub)?;
    for (config, _) in &written.nodes {
        load_node(config)?;
    }
    Ok(Imported { plan, written })
}

/// The `rotor import` command: imports and prints what was written, the
/// notes and the next steps.
pub fn run(from: ImportFrom) -> anyhow::Result<()> {
    match from {
        ImportFrom::Swanctl(SwanctlArgs {
            file,
            out,
            force,
            hub,
        }) => {
            let r = swanctl(&file, &out, force, &Options { hub })?;
            print!("{}", summary(&r, &out));
            Ok(())
        }
    }
}

/// The report printed after a successful import.
fn summary(r: &Imported, out: &Path) -> String {
    let p = &r.plan;
    let tunnel = p
        .nodes
        .iter()
        .filter(|n| matches!(n.mode, swanctl::Mode::Tunnel { .. }))
        .count();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "imported {} ({} file{} read): hub {}, {} node{} ({} transport, {tunnel} tunnel)",
        p.files
            .first()
            .map_or_else(String::new, |f| f.display().to_string()),
        p.files.len(),
        if p.files.len() == 1 { "" } else { "s" },
        p.hub,
        p.nodes.len(),
        if p.nodes.len() == 1 { "" } else { "s" },
        p.nodes.len() - tunnel,
    );
    let _ = writeln!(s, "wrote {}", r.written.hub.display());
    for (config, key) in r.written.nodes.iter().take(5) {
        let _ = writeln!(s, "wrote {} and {} (0600)", config.display(), key.display());
    }
    if r.written.nodes.len() > 5 {
        let _ = writeln!(
            s,
            "wrote NAME.toml and NAME.key (0600) for {} more nodes",
            r.written.nodes.len() - 5
        );
    }
    for n in &p.notes {
        let _ = writeln!(s, "note: {n}");
    }
    let _ = writeln!(
        s,
        "next: `rotor check --config {}` on the hub; copy NAME.toml and NAME.key to node NAME \
         (key mode 0600) and check it there; then cut over node by node \
         (docs/migrating-from-strongswan.md)",
        out.join("hub.toml").display()
    );
    s
}
