//! The exit statuses docs/cli.md and `--help` promise: 2 for usage and
//! configuration errors, 3 when no daemon answers, 1 for failures at run
//! time; and `--json` output that is one JSON object. None of these runs
//! needs privileges.

use std::process::{Command, Output};

fn rotor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rotor"))
        .args(args)
        .env_remove("ROTOR_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("running the rotor binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn no_daemon_on_the_socket_exits_3_for_every_client_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("absent.sock");
    let s = sock.to_str().expect("utf-8 path");
    for args in [
        vec!["status", "--socket", s],
        vec!["status", "--socket", s, "--json"],
        vec!["rotate", "--socket", s, "--all"],
        vec!["rotate", "--socket", s, "--node", "mn1", "--json"],
        vec!["reload", "--socket", s],
        vec!["reload", "--socket", s, "--json"],
    ] {
        let o = rotor(&args);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(
            stderr(&o).contains("is the daemon running?"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn a_daemon_that_refuses_exits_1() {
    // A socket that answers a refusal, as a daemon does for an unknown node.
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("d.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let (mut s, _) = listener.accept().expect("accept");
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).expect("read");
        s.write_all(b"{\"ok\":false,\"error\":\"no node named \\\"mn9\\\"\"}\n")
            .expect("write");
        line
    });
    let s = sock.to_str().expect("utf-8 path");
    let o = rotor(&["rotate", "--socket", s, "--node", "mn9"]);
    let request = server.join().expect("server");
    assert_eq!(
        request,
        "{\"cmd\":\"rotate\",\"node\":\"mn9\",\"all\":false}\n"
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "rotor: the daemon refused: no node named \"mn9\"\n"
    );
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[hub]\nport = 4820\n").expect("write");
    let b = bad.to_str().expect("utf-8 path");
    for args in [
        vec!["rotate"],
        vec!["rotate", "--node", "a", "--all"],
        vec!["status", "--bogus"],
        vec!["check", "--config", b],
        vec!["check", "--config", b, "--json"],
        vec!["hub", "--config", b],
        vec!["purge", "--config", b],
    ] {
        let o = rotor(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    // check --json reports the bad config on stdout too, and the error on
    // stderr as without --json.
    let o = rotor(&["check", "--config", b, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ok"], false);
    assert_eq!(v["checks"][0]["check"], "config");
    assert_eq!(v["checks"][0]["ok"], false);
    assert!(
        stderr(&o).starts_with(&format!("rotor: {b}: ")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_documents_the_exit_statuses() {
    let o = rotor(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    for line in [
        "0  success",
        "1  failure at run time",
        "2  usage or configuration error",
        "3  no daemon answers",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
}
