use super::*;

fn parse(text: &str) -> Result<Section, SyntaxError> {
    parse_text(text, Path::new("/nonexistent/swanctl.conf")).map(|d| d.root)
}

fn value<'a>(s: &'a Section, path: &[&str], key: &str) -> Option<&'a str> {
    let mut cur = s;
    for p in path {
        cur = cur.section(p)?;
    }
    cur.setting(key).map(Setting::text)
}

#[test]
fn sections_settings_and_lines() {
    let root = parse("a = b\n# comment\nconnections {\n  gw {\n    local_addrs  = 192.168.0.1 # trailing\n  }\n}\n").unwrap();
    assert_eq!(value(&root, &[], "a"), Some("b"));
    assert_eq!(
        value(&root, &["connections", "gw"], "local_addrs"),
        Some("192.168.0.1")
    );
    let gw = root.section("connections").unwrap().section("gw").unwrap();
    assert_eq!(gw.origin.line, 4);
    assert_eq!(gw.setting("local_addrs").unwrap().origin.line, 5);
}

#[test]
fn values_join_parts_with_one_space_and_unquote_strings() {
    // strongSwan's own net2net-psk example has these shapes.
    let root = parse(concat!(
        "s {\n",
        "  id-3b =sun.strongswan.org\n",
        "  q = \"This is a strong password\"\n",
        "  m = 'My \"home\" is my \"castle\"!'\n",
        "  e = \"tab\\there\\\\ \\\"q\\\" line\\\n",
        "cont\"\n",
        "  w = a   b\tc\n",
        "  empty =\n",
        "  close = x}\n",
    ))
    .unwrap();
    assert_eq!(value(&root, &["s"], "id-3b"), Some("sun.strongswan.org"));
    assert_eq!(value(&root, &["s"], "q"), Some("This is a strong password"));
    assert_eq!(value(&root, &["s"], "m"), Some("'My home is my castle !'"));
    assert_eq!(
        value(&root, &["s"], "e"),
        Some("tab\there\\ \"q\" linecont")
    );
    assert_eq!(value(&root, &["s"], "w"), Some("a b c"));
    assert!(
        root.section("s")
            .unwrap()
            .setting("empty")
            .unwrap()
            .value
            .is_none()
    );
    // `}` ends the value and closes the section.
    assert_eq!(value(&root, &[], "close"), None);
    assert_eq!(value(&root, &["s"], "close"), Some("x"));
    // Lines still count across a multi-line string.
    let s = root.section("s").unwrap();
    assert_eq!(s.setting("w").unwrap().origin.line, 7);
}

#[test]
fn repeated_sections_merge_and_later_values_win() {
    let root = parse("c { a = 1\n b = 2 }\nc { a = 3\n d { x = y } }\n").unwrap();
    let c = root.section("c").unwrap();
    assert_eq!(c.setting("a").unwrap().text(), "3");
    assert_eq!(c.setting("a").unwrap().origin.line, 3);
    assert_eq!(c.setting("b").unwrap().text(), "2");
    assert_eq!(value(&root, &["c", "d"], "x"), Some("y"));
    assert_eq!(c.origin.line, 1);
}

#[test]
fn references_are_kept() {
    let root = parse("conn : tmpl.base, other {\n a = b\n}\n").unwrap();
    let c = root.section("conn").unwrap();
    let refs: Vec<&str> = c.references.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(refs, ["tmpl.base", "other"]);
}

#[test]
fn syntax_errors_name_the_line_and_never_the_value() {
    let cases = [
        ("a {\n b = c\n", 1, "never closed"),
        ("a = b\n}\n", 2, "closes no section"),
        ("a\n", 1, "ends after a name"),
        ("a b\n", 1, "expected `=` or `{`"),
        ("\"s\" = 1\n", 1, "quoted string"),
        (
            "x {\n secret = \"hunter2-unterminated\n}\n",
            2,
            "unterminated",
        ),
        ("a.b = c\n", 1, "dots"),
        (
            "x {\n secret = abc}hunter2 more\n",
            2,
            "expected `=` or `{`",
        ),
        ("= 1\n", 1, "unexpected `=`"),
        ("a : {\n}\n", 1, "after `:`"),
    ];
    for (text, line, what) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, Some(line), "{text:?}: {e}");
        let shown = e.to_string();
        assert!(shown.contains(what), "{text:?}: {shown}");
        assert!(
            shown.starts_with(&format!("/nonexistent/swanctl.conf:{line}: ")),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let text = "a {".repeat(100_000);
    let e = parse(&text).unwrap_err();
    assert!(e.problem.contains("nested deeper"), "{e}");
    let ok = format!(
        "{}{}",
        "a {".repeat(NESTING_MAX - 1),
        "}".repeat(NESTING_MAX - 1)
    );
    parse(&ok).unwrap();
}

#[test]
fn debug_never_shows_values() {
    let root = parse("secrets { ike { secret = hunter2 } }\n").unwrap();
    let shown = format!("{root:?}");
    assert!(shown.contains("secret"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn includes_relative_globbed_sorted_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("conf.d")).unwrap();
    std::fs::write(d.join("main.conf"), "connections {\n  include conf.d/*.conf\n}\ninclude missing/*.conf\ninclude \"sp ace.conf\"\n").unwrap();
    std::fs::write(d.join("conf.d/b.conf"), "b { x = 2 }\n").unwrap();
    std::fs::write(d.join("conf.d/a.conf"), "a { x = 1 }\n\n\nbad = \n").unwrap();
    std::fs::write(d.join("conf.d/.hidden.conf"), "hidden { }\n").unwrap();
    std::fs::create_dir(d.join("conf.d/dir.conf")).unwrap();
    std::fs::write(d.join("sp ace.conf"), "top = 1\n").unwrap();
    let doc = parse_file(&d.join("main.conf")).unwrap();
    let conns = doc.root.section("connections").unwrap();
    let names: Vec<&str> = conns.sections().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let bad = conns.setting("bad").unwrap();
    assert_eq!(&*bad.origin.file, d.join("conf.d/a.conf").as_path());
    assert_eq!(bad.origin.line, 4);
    assert_eq!(doc.root.setting("top").unwrap().text(), "1");
    assert_eq!(doc.files.len(), 4);

    std::fs::write(d.join("loop.conf"), "x = 1\ninclude loop.conf\n").unwrap();
    let e = parse_file(&d.join("loop.conf")).unwrap_err();
    assert!(e.problem.contains("nested deeper"), "{e}");
    assert_eq!(e.line, Some(2));
}

#[test]
fn include_as_a_key_is_a_setting() {
    let root = parse("include = x\ninclude=y\n").unwrap();
    assert_eq!(root.setting("include").unwrap().text(), "y");
}

#[test]
fn unreadable_or_non_utf8_files_are_errors() {
    let e = parse_file(Path::new("/nonexistent/swanctl.conf")).unwrap_err();
    assert!(e.problem.contains("cannot read"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bin.conf");
    std::fs::write(&p, b"a = b\n\xff\n").unwrap();
    let e = parse_file(&p).unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.problem.contains("UTF-8"), "{e}");
}
