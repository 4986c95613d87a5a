//! The `rotor` binary prints one error, in one format, for a bad config file,
//! whichever command reads it: `rotor hub`/`rotor node` (the file's role) and
//! `rotor check` give the same stderr and the same failing exit status. None
//! of these runs gets past the config, so nothing here needs privileges.

use std::path::Path;
use std::process::Command;

use rotor::keyfile::write_key;

fn rotor(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rotor"))
        .args(args)
        .output()
        .expect("running the rotor binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn same_error(role: &str, file: &Path) -> String {
    let f = file.to_str().expect("temporary paths are UTF-8");
    let (ok_daemon, daemon) = rotor(&[role, "--config", f]);
    let (ok_check, check) = rotor(&["check", "--config", f]);
    assert!(
        !ok_daemon && !ok_check,
        "a bad file was accepted: {daemon}{check}"
    );
    assert_eq!(daemon, check, "rotor {role} and rotor check differ");
    daemon
}

#[test]
fn every_command_prints_the_same_error_for_the_same_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_key(&dir.path().join("mn1.key"), &[1; 32]).expect("key");
    let cases = [
        (
            "hub",
            "[hub]\naddress = \"10.9.0.1\"\nrotate_interval = \"99999999999999h\"\n\n[[node]]\nname = \"mn1\"\naddress = \"10.9.0.2\"\npsk_file = \"mn1.key\"\n",
            ": hub.rotate_interval: \"99999999999999h\" is more than the maximum, 7d\n",
        ),
        (
            "hub",
            "[hub]\naddress = \"10.9.0.1\nport = 1\n",
            ": line 2, column 20: invalid basic string\n",
        ),
        (
            "node",
            "[node]\nname = \"mn1\"\naddress = \"10.9.0.2\"\nhub = \"10.9.0.1:0\"\npsk_file = \"mn1.key\"\n",
            ": node.hub: \"10.9.0.1:0\" has port 0; use a port in 1..=65535\n",
        ),
        (
            "node",
            "[node]\nname = \"mn1\"\naddress = \"10.9.0.2\"\nhub = \"10.9.0.1\"\npsk_file = \"mn1.key\"\nhello_interval = \"1ms\"\n",
            ": node.hello_interval: \"1ms\" is less than the minimum, 100ms\n",
        ),
    ];
    for (i, (role, text, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&file, text).expect("write");
        let err = same_error(role, &file);
        let first = err.lines().next().unwrap_or("").to_string() + "\n";
        assert_eq!(
            first,
            format!("rotor: {}{expected}", file.display()),
            "full stderr:\n{err}"
        );
    }
}
