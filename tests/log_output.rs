//! The daemon's log as an operator sees it: on stderr, no escape codes when
//! stderr is no terminal, the level `ROTOR_LOG` (or `RUST_LOG`) asks for,
//! an unusable level refused before anything starts, and sd-daemon
//! priorities when stderr is the journal.
//!
//! The runs that log start a node that fails at its UDP bind (its address
//! is on no interface), after it has logged its state and a warning (the
//! ESP probe is skipped for that) and before anything touches the kernel.
//! They need root (the node locks its reqid in /run/rotor); without it they
//! say so and check nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use rotor::keyfile::write_key;

struct Node {
    _dir: tempfile::TempDir,
    config: PathBuf,
}

/// A node configuration whose start fails at the bind. The name is unique
/// per process and call: tests running at once lock different reqids.
fn node() -> Node {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_key(&d.join("n.key"), &[7; 32]).expect("key");
    let name = format!(
        "logtest{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let config = d.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"{name}\"\naddress = \"192.0.2.77\"\nhub = \"192.0.2.1:4820\"\n\
             psk_file = \"n.key\"\nsocket = \"{}\"\nstate_dir = \"{}\"\n",
            d.join("n.sock").display(),
            d.join("state").display()
        ),
    )
    .expect("config");
    Node { _dir: dir, config }
}

fn rotor(config: &Path, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rotor"));
    c.args(["node", "--config"]).arg(config);
    c.env_remove("ROTOR_LOG")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .env("ROTOR_TEST_SKIP_ESP_PROBE", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(config: &Path, env: &[(&str, &str)]) -> Output {
    rotor(config, env).output().expect("running rotor")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("not root: the node cannot lock its reqid, so nothing is logged; skipped");
    }
    root
}

#[test]
fn an_unusable_level_is_refused_naming_the_variable_before_anything_starts() {
    // The config does not even exist: the filter is refused first.
    let absent = Path::new("/nonexistent/rotor-node.toml");
    let o = run(absent, &[("ROTOR_LOG", "verbose")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("rotor: ROTOR_LOG=verbose: not a log level"),
        "{}",
        stderr(&o)
    );
    let o = run(absent, &[("RUST_LOG", "loud")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("rotor: RUST_LOG=loud: not a log level"),
        "{}",
        stderr(&o)
    );
    // A usable level gets past the filter to the config error.
    let o = run(absent, &[("ROTOR_LOG", "warning")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("rotor-node.toml"), "{}", stderr(&o));
}

#[test]
fn logs_go_to_stderr_without_escape_codes_when_it_is_no_terminal() {
    if !is_root() {
        return;
    }
    let n = node();
    let o = run(&n.config, &[]);
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a failed bind is a runtime error: {err}"
    );
    assert!(o.stdout.is_empty(), "the daemon logs nothing to stdout");
    assert!(
        err.lines()
            .any(|l| l.contains(" INFO ") && l.contains("state loaded")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains(" WARN ") && l.contains("ROTOR_TEST_SKIP_ESP_PROBE")),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "escape codes in a pipe: {err:?}");
    assert!(
        err.lines().last().is_some_and(|l| l.starts_with("rotor: ")),
        "{err}"
    );
}

#[test]
fn rotor_log_warn_keeps_warnings_and_drops_info() {
    if !is_root() {
        return;
    }
    let n = node();
    for env in [[("ROTOR_LOG", "warn")], [("RUST_LOG", "warn")]] {
        let err = stderr(&run(&n.config, &env));
        assert!(err.contains(" WARN "), "{env:?}: {err}");
        assert!(!err.contains(" INFO "), "{env:?}: {err}");
    }
    let err = stderr(&run(&n.config, &[("ROTOR_LOG", "error")]));
    assert!(!err.contains(" WARN ") && !err.contains(" INFO "), "{err}");
}

#[test]
fn on_the_journal_lines_carry_sd_daemon_priorities_and_no_timestamps() {
    if !is_root() {
        return;
    }
    let n = node();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal");
    let file = std::fs::File::create(&path).expect("create");
    let meta = file.metadata().expect("stat");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let status = rotor(&n.config, &[("JOURNAL_STREAM", &stream)])
        .stderr(file)
        .status()
        .expect("running rotor");
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&path).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for l in &lines {
        let p = l.get(..3).unwrap_or("");
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&p),
            "no priority: {l:?}"
        );
        // No timestamp: the level (or the error) follows at once.
        let rest = l[3..].trim_start();
        assert!(
            rest.starts_with("INFO")
                || rest.starts_with("WARN")
                || rest.starts_with("ERROR")
                || rest.starts_with("rotor: "),
            "{l:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("state loaded"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("WARN"))
    );
    assert!(
        lines.last().is_some_and(|l| l.starts_with("<3>rotor: ")),
        "{text}"
    );
    // A JOURNAL_STREAM naming another file is not the journal.
    let err = stderr(&run(&n.config, &[("JOURNAL_STREAM", &stream)]));
    assert!(!err.contains("<6>") && err.contains(" INFO "), "{err}");
}
