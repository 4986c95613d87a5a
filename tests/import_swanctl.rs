//! `rotor import swanctl` on real swanctl.conf files (tests/fixtures/swanctl:
//! the shapes bench/strongswan.sh writes, and set-ups in the shape of
//! strongSwan's own PSK examples). Imports are checked by loading what was
//! written with rotor's own config loader; refusals by the `# refused` marks
//! in the fixtures, which name every line that must be refused, in whichever
//! file. The parser and the translation are fuzzed with proptest.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use proptest::prelude::*;
use rotor::config::{HubConfig, PeerMode, load_hub, load_node};
use rotor::import::settings::parse_text;
use rotor::import::swanctl::{Options, translate};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/swanctl")
        .join(name)
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn rotor(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_rotor"))
        .args(args)
        .output()
        .expect("running the rotor binary");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn import(conf: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "import",
        "swanctl",
        conf.to_str().expect("UTF-8 path"),
        "--out",
        out.to_str().expect("UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    rotor(&args)
}

fn net(s: &str) -> rotor_xfrm::IpNet {
    rotor_xfrm::IpNet::parse(s).expect("test subnet")
}

/// What a node must become: name, address, mode seen from the hub
/// (subnets behind the hub, behind the node), rotation period.
struct Want {
    name: &'static str,
    address: &'static str,
    tunnel: Option<(&'static [&'static str], &'static [&'static str])>,
    rotate: Duration,
}

fn mode_of(t: Option<(&[&str], &[&str])>, hub_side: bool) -> PeerMode {
    match t {
        None => PeerMode::Transport,
        Some((hub, node)) => {
            let v = |l: &[&str]| l.iter().map(|s| net(s)).collect::<Vec<_>>();
            if hub_side {
                PeerMode::Tunnel {
                    local: v(hub),
                    remote: v(node),
                }
            } else {
                PeerMode::Tunnel {
                    local: v(node),
                    remote: v(hub),
                }
            }
        }
    }
}

/// Imports `name` and checks every written file through rotor's loader.
fn check_import(name: &str, extra: &[&str], hub: &str, want: &[Want]) -> (HubConfig, Run) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let run = import(&fixture(name).join("swanctl.conf"), &out, extra);
    assert!(run.ok, "{name}: {}{}", run.stdout, run.stderr);
    let hub_cfg = load_hub(&out.join("hub.toml")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let hub_addr: IpAddr = hub.parse().expect("test address");
    assert_eq!(hub_cfg.address, hub_addr, "{name}");
    assert_eq!(hub_cfg.nodes.len(), want.len(), "{name}");
    for (got, w) in hub_cfg.nodes.iter().zip(want) {
        assert_eq!(got.name, w.name, "{name}");
        assert_eq!(
            got.address.map(|a| a.to_string()).unwrap_or_default(),
            w.address,
            "{name}"
        );
        assert_eq!(got.mode, mode_of(w.tunnel, true), "{name}: {}", w.name);
        assert_eq!(got.rotate_interval, w.rotate, "{name}: {}", w.name);

        let node = load_node(&out.join(format!("{}.toml", w.name)))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(node.name, w.name);
        assert_eq!(node.address, got.address);
        assert_eq!(
            node.hub,
            SocketAddr::new(hub_addr, rotor::config::DEFAULT_PORT)
        );
        assert_eq!(node.mode, mode_of(w.tunnel, false), "{name}: {}", w.name);
        assert_eq!(
            node.psk[..],
            got.psk[..],
            "{name}: hub and node keys differ"
        );
        // The node's SAs must outlive the hub's rotation period.
        if let Some(l) = node.sa_lifetime {
            assert!(l > w.rotate * 3, "{name}: {l:?}");
        } else {
            assert!(w.rotate * 3 < Duration::from_secs(24 * 3600), "{name}");
        }
        let key = out.join(format!("{}.key", w.name));
        let mode = std::fs::metadata(&key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    let keys: BTreeSet<Vec<u8>> = hub_cfg.nodes.iter().map(|n| n.psk.to_vec()).collect();
    assert_eq!(keys.len(), hub_cfg.nodes.len(), "{name}: init keys repeat");
    let dir_mode = std::fs::metadata(&out).expect("out").permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    (hub_cfg, run)
}

const HOUR_AND_HALF: Duration = Duration::from_secs(5400);
const DEFAULT: Duration = Duration::from_secs(60);

#[test]
fn bench_nodes_file_imports_with_the_hub_on_the_remote_side() {
    let want = [
        Want {
            name: "n0",
            address: "10.77.1.1",
            tunnel: None,
            rotate: DEFAULT,
        },
        Want {
            name: "n1",
            address: "10.77.1.2",
            tunnel: None,
            rotate: DEFAULT,
        },
        Want {
            name: "n2",
            address: "10.77.1.3",
            tunnel: None,
            rotate: DEFAULT,
        },
    ];
    let (_, run) = check_import("bench-nodes", &[], "10.77.0.1", &want);
    assert!(
        run.stdout.contains("written on the nodes' side"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("ignored `esp_proposals`"),
        "{}",
        run.stdout
    );
}

#[test]
fn site_to_site_imports_subnets_and_rekey_time() {
    let want = [
        Want {
            name: "branch1",
            address: "198.51.100.10",
            tunnel: Some((&["10.1.0.0/16"], &["10.11.0.0/16"])),
            rotate: HOUR_AND_HALF,
        },
        Want {
            name: "branch2",
            address: "203.0.113.20",
            tunnel: Some((&["10.1.0.0/16", "10.5.0.0/24"], &["10.12.0.0/16"])),
            rotate: HOUR_AND_HALF,
        },
    ];
    let (hub, run) = check_import("site-to-site", &[], "192.0.2.1", &want);
    assert_eq!(hub.rotate_interval, HOUR_AND_HALF);
    for ignored in ["rekey_bytes", "mobike", "dpd_delay", "start_action"] {
        assert!(
            run.stdout.contains(&format!("ignored `{ignored}`")),
            "{ignored}: {}",
            run.stdout
        );
    }
}

#[test]
fn hub_and_spoke_with_includes_imports_each_node_file() {
    let want = [
        Want {
            name: "carol",
            address: "192.0.2.100",
            tunnel: Some((&["10.1.0.0/16"], &["192.0.2.100/32"])),
            rotate: DEFAULT,
        },
        Want {
            name: "dave",
            address: "192.0.2.200",
            tunnel: None,
            rotate: Duration::from_secs(600),
        },
    ];
    let (hub, run) = check_import("hub-and-spoke", &[], "192.0.2.1", &want);
    assert_eq!(hub.rotate_interval, DEFAULT);
    // swanctl.conf, two connection files and two secrets files; not the
    // hidden .old.conf nor README.
    assert!(run.stdout.contains("(5 files read)"), "{}", run.stdout);
}

#[test]
fn ipv6_hub_imports() {
    let want = [
        Want {
            name: "mn1",
            address: "2001:db8::11",
            tunnel: None,
            rotate: DEFAULT,
        },
        Want {
            name: "mn2",
            address: "2001:db8::12",
            tunnel: None,
            rotate: DEFAULT,
        },
    ];
    check_import("ipv6", &[], "2001:db8::1", &want);
}

#[test]
fn hub_flag_names_a_hub_that_listens_on_any_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("swanctl.conf");
    std::fs::write(
        &conf,
        "connections {\n mn1 {\n  remote_addrs = 192.0.2.2\n  local { auth = psk }\n  remote { auth = psk }\n  children { c { mode = transport } }\n }\n}\n",
    )
    .expect("write");
    let out = dir.path().join("out");
    let run = import(&conf, &out, &[]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains(&format!(
            "{}:2: connection `mn1` has no local_addrs",
            conf.display()
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--hub ADDR"), "{}", run.stderr);
    let run = import(&conf, &out, &["--hub", "192.0.2.1"]);
    assert!(run.ok, "{}", run.stderr);
    let hub = load_hub(&out.join("hub.toml")).expect("hub.toml");
    assert_eq!(hub.address.to_string(), "192.0.2.1");
}

/// Every `(file, line)` of a fixture directory that carries `# refused`.
fn marked(dir: &Path) -> BTreeSet<(PathBuf, u32)> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("fixture dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                for (i, l) in text.lines().enumerate() {
                    if l.contains("# refused") {
                        out.insert((p.clone(), u32::try_from(i + 1).expect("line")));
                    }
                }
            }
        }
    }
    out
}

/// The `(file, line)` of each refusal line `  FILE:LINE: reason` (or the
/// one line of a syntax error, `rotor: FILE:LINE: reason`).
fn reported(stderr: &str) -> BTreeSet<(PathBuf, u32)> {
    let mut out = BTreeSet::new();
    for l in stderr.lines() {
        let l = l.trim_start().trim_start_matches("rotor: ");
        let mut parts = l.splitn(3, ':');
        if let (Some(f), Some(Ok(n)), Some(_)) = (
            parts.next(),
            parts.next().map(str::parse::<u32>),
            parts.next(),
        ) {
            out.insert((PathBuf::from(f), n));
        }
    }
    out
}

#[test]
fn refusals_name_every_marked_file_and_line_and_nothing_is_written() {
    for name in [
        "refused",
        "bench-hub",
        "roadwarrior",
        "site-to-site-updown",
        "mesh",
        "syntax",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let run = import(&fixture(name).join("swanctl.conf"), &out, &[]);
        assert!(!run.ok, "{name} was accepted: {}", run.stdout);
        let want = marked(&fixture(name));
        assert!(!want.is_empty(), "{name} has no # refused marks");
        assert_eq!(reported(&run.stderr), want, "{name}:\n{}", run.stderr);
        assert!(!out.exists(), "{name}: {} was created", out.display());
        assert!(run.stdout.is_empty(), "{name}: {}", run.stdout);
    }
}

#[test]
fn refusal_reasons_say_what_rotor_cannot_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = import(
        &fixture("refused").join("swanctl.conf"),
        &dir.path().join("o"),
        &[],
    );
    for reason in [
        "`auth = pubkey`: certificate",
        "`certs = hubCert.pem`: certificates",
        "`auth = pubkey` (the default)",
        "`pools = rw-pool`: virtual IPs",
        "selects by protocol or port",
        "(10.1.0.0/16 <-> 10.4.0.0/16 is not one of them)",
        "unknown setting `remote_adrs`",
        "`encap = yes`",
        "`mark_in = 42`",
        "`bad+name` is not a rotor node name",
        "also the node of connection `bad+name`",
        "`mode = beet`",
        "transport mode with traffic selectors",
        "a second `remote` authentication round (`remote-2`)",
        "`ah_proposals = sha256`",
        "`policies = no`",
    ] {
        assert!(run.stderr.contains(reason), "{reason}:\n{}", run.stderr);
    }
    let more = fixture("refused").join("more/ah.conf");
    assert!(
        run.stderr.contains(&format!("{}:", more.display())),
        "refusals in an included file name it:\n{}",
        run.stderr
    );
}

/// Secret values of a fixture: the text after `secret =`.
fn secrets_of(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("fixture dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                for l in text.lines() {
                    if let Some((_, v)) = l.split_once("secret =") {
                        let v = v.split('#').next().unwrap_or("");
                        for w in v.split_whitespace() {
                            let w = w.trim_matches(['"', '\'', '!']);
                            if w.len() >= 8 {
                                out.push(w.to_string());
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn psks_appear_in_no_output_error_or_written_file() {
    for name in [
        "bench-nodes",
        "site-to-site",
        "hub-and-spoke",
        "ipv6",
        "refused",
        "roadwarrior",
        "syntax",
    ] {
        let secrets = secrets_of(&fixture(name));
        assert!(!secrets.is_empty(), "{name}");
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let run = import(&fixture(name).join("swanctl.conf"), &out, &[]);
        let mut seen = run.stdout + &run.stderr;
        if let Ok(entries) = std::fs::read_dir(&out) {
            for e in entries {
                seen += &std::fs::read_to_string(e.expect("entry").path()).unwrap_or_default();
            }
        }
        for s in secrets {
            assert!(!seen.contains(&s), "{name}: a PSK shows");
        }
    }
}

#[test]
fn existing_files_are_kept_unless_forced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let conf = fixture("ipv6").join("swanctl.conf");
    assert!(import(&conf, &out, &[]).ok);
    let key = out.join("mn1.key");
    let before = std::fs::read(&key).expect("key");
    let run = import(&conf, &out, &[]);
    assert!(!run.ok);
    assert!(
        run.stderr
            .contains("hub.toml, mn1.toml, mn1.key, mn2.toml, mn2.key already exist"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    assert_eq!(std::fs::read(&key).expect("key"), before);

    let run = import(&conf, &out, &["--force"]);
    assert!(run.ok, "{}", run.stderr);
    assert_ne!(
        std::fs::read(&key).expect("key"),
        before,
        "--force keeps the old key"
    );
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    load_hub(&out.join("hub.toml")).expect("hub.toml after --force");
}

#[test]
fn help_explains_the_command() {
    let run = rotor(&["import", "swanctl", "--help"]);
    assert!(run.ok, "{}", run.stderr);
    for words in [
        "hub-and-spoke",
        "include",
        "--out",
        "--force",
        "--hub",
        "0600",
        "not derived from the IKE PSK",
        "Refuses",
        "docs/migrating-from-strongswan.md",
    ] {
        assert!(run.stdout.contains(words), "{words}:\n{}", run.stdout);
    }
    let run = rotor(&["import", "--help"]);
    assert!(run.ok && run.stdout.contains("swanctl"), "{}", run.stdout);
}

/// Pieces of swanctl.conf and of its syntax, so random files reach deep
/// into the translation, not only the lexer.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("connections".to_string()),
        Just("children".to_string()),
        Just("secrets".to_string()),
        Just("local".to_string()),
        Just("remote".to_string()),
        Just("local_addrs".to_string()),
        Just("remote_addrs".to_string()),
        Just("local_ts".to_string()),
        Just("remote_ts".to_string()),
        Just("auth".to_string()),
        Just("psk".to_string()),
        Just("mode".to_string()),
        Just("transport".to_string()),
        Just("rekey_time".to_string()),
        Just("192.0.2.1".to_string()),
        Just("192.0.2.2".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("dynamic".to_string()),
        Just("%any".to_string()),
        Just("include".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("=".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just(".".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("#".to_string()),
        Just("\n".to_string()),
        Just(" ".to_string()),
        "[a-z0-9_*?\\[\\]-]{1,6}",
        any::<char>().prop_map(String::from),
    ]
}

fn one_of(v: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(v).prop_map(str::to_string)
}

/// A well-formed connection, mostly of values rotor takes and sometimes of
/// ones it refuses, so both successful translations and every refusal
/// rule are reached.
fn connection() -> impl Strategy<Value = String> {
    const ADDRS: &[&str] = &[
        "192.0.2.1",
        "192.0.2.2",
        "2001:db8::2",
        "%any",
        "10.0.0.0/8",
        "host.example",
        "192.0.2.2, 192.0.2.3",
        "224.0.0.1",
        "0.0.0.0",
        "",
    ];
    const TS: &[&str] = &[
        "dynamic",
        "10.1.0.0/16",
        "10.1.0.0/16, 10.3.0.0/24",
        "192.0.2.2/32",
        "fd00::/64",
        "10.0.0.1-10.0.0.9",
        "10.1.0.0/16[tcp/80]",
        "0.0.0.0/0",
        "bogus",
    ];
    const AUTH: &[&str] = &["pubkey", "eap-md5", ""];
    const MODE: &[&str] = &["transport", "tunnel", "beet", "pass"];
    const TIME: &[&str] = &["0", "1", "90m", "30d", "1w", "99999999999999999999d"];
    const EXTRA: &[&str] = &[
        "updown = /bin/true",
        "esp_proposals = aes256gcm16",
        "mark_in = 7",
        "priority = 5",
        "policies = no",
        "hw_offload = auto",
        "start_action = trap",
        "unknown_key = 1",
    ];
    const CONN_EXTRA: &[&str] = &[
        "version = 2",
        "vips = 0.0.0.0",
        "encap = no",
        "if_id_in = 0",
        "dpd_delay = 30s",
        "bogus = 1",
    ];
    let or_bad = |good: &'static str, bad: &'static [&'static str]| prop_oneof![8 => Just(good.to_string()), 1 => one_of(bad)];
    let child = prop_oneof![
        6 => "[a-z]{1,4}".prop_map(|n| format!("{n} {{ mode = transport }}\n")),
        6 => ("[a-z]{1,4}", one_of(&["10.1.0.0/16", "dynamic", "10.1.0.0/16, 10.5.0.0/24"]),
              one_of(&["10.2.0.0/16", "dynamic"]), one_of(&["10m", "1h", "3600"]))
            .prop_map(|(n, l, r, t)| format!(
                "{n} {{\nlocal_ts = {l}\nremote_ts = {r}\nrekey_time = {t}\n}}\n")),
        2 => ("[a-z]{1,4}", one_of(MODE), one_of(TS), one_of(TS), one_of(TIME), one_of(EXTRA))
            .prop_map(|(n, m, l, r, t, e)| format!(
                "{n} {{\nmode = {m}\nlocal_ts = {l}\nremote_ts = {r}\nrekey_time = {t}\n{e}\n}}\n")),
    ];
    let node_addr = prop_oneof![
        8 => (2u8..250).prop_map(|n| format!("192.0.2.{n}")),
        1 => one_of(ADDRS),
    ];
    let extra = prop_oneof![4 => Just(String::new()), 1 => one_of(CONN_EXTRA)];
    (
        prop_oneof![8 => "[a-z][a-z0-9]{0,5}", 1 => "[a-z][a-z0-9+]{0,5}"],
        or_bad("192.0.2.1", ADDRS),
        node_addr,
        or_bad("psk", AUTH),
        or_bad("psk", AUTH),
        proptest::collection::vec(child, 0..3),
        extra,
    )
        .prop_map(|(name, la, ra, a1, a2, children, extra)| {
            format!(
                "{name} {{\nlocal_addrs = {la}\nremote_addrs = {ra}\nlocal {{ auth = {a1} }}\nremote {{ auth = {a2} }}\nchildren {{\n{}}}\n{extra}\n}}\n",
                children.concat()
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Well-formed files of random connections translate or are refused,
    /// never panic; a translation has one node per connection.
    #[test]
    fn random_connections_translate_or_are_refused_without_panic(
        conns in proptest::collection::vec(connection(), 1..4),
        hub in proptest::option::of(one_of(&["192.0.2.1", "2001:db8::1"])),
    ) {
        let text = format!("connections {{\n{}}}\nsecrets {{ ike {{ secret = x }} }}\n", conns.concat());
        let doc = parse_text(&text, Path::new("/nonexistent/swanctl.conf")).expect("well-formed");
        let n = doc.root.section("connections").expect("connections").sections().count();
        let opts = Options { hub: hub.map(|h| h.parse().expect("addr")) };
        match translate(&doc, &opts) {
            Ok(plan) => prop_assert_eq!(plan.nodes.len(), n),
            Err(refusals) => prop_assert!(!refusals.is_empty()),
        }
    }

    /// Neither the parser nor the translation panics on any input.
    #[test]
    fn any_text_is_parsed_or_refused_without_panic(
        pieces in proptest::collection::vec(piece(), 0..120),
        raw in "\\PC{0,80}",
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("swanctl.conf");
        for text in [pieces.concat(), raw] {
            if let Ok(doc) = parse_text(&text, &path) {
                let _ = translate(&doc, &Options::default());
                let _ = translate(&doc, &Options { hub: Some("192.0.2.1".parse().expect("addr")) });
            }
        }
    }

    /// Quoted values come back exactly, whatever they hold.
    #[test]
    fn quoted_values_round_trip(
        entries in proptest::collection::vec(("[a-z_]{1,8}", "\\PC{0,40}"), 1..8),
    ) {
        let mut text = String::from("s {\n");
        for (k, v) in &entries {
            let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace('\r', "\\r").replace('\t', "\\t");
            text.push_str(&format!("  {k} = \"{escaped}\"\n"));
        }
        text.push_str("}\n");
        let doc = parse_text(&text, Path::new("/nonexistent/x.conf")).expect("parses");
        let s = doc.root.section("s").expect("section");
        let mut last = std::collections::HashMap::new();
        for (k, v) in &entries {
            last.insert(k.clone(), v.clone());
        }
        for (k, v) in last {
            prop_assert_eq!(s.setting(&k).expect("key").text(), v.as_str());
        }
    }
}
