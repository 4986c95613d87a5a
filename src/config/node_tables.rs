//! A hub file's `[[node]]` tables, parsed one at a time.
//!
//! A TOML parser that builds the whole document first (the `toml` crate
//! keeps every key's and value's formatting and position) needs about
//! 1.5 KB of heap per two-key `[[node]]` table: some 160 MB for 100,000
//! nodes, each page of it a fault, which under User-Mode Linux or a busy
//! host costs seconds of a hub's (re)start. Cut at its `[[node]]` headers,
//! the same file parses as a small head (the `[hub]` table) plus one small
//! document per node, each deserialized and dropped before the next: the
//! peak is the typed entries themselves.
//!
//! The cut is taken only where it cannot change the meaning: no multi-line
//! strings anywhere (one could hold a line that looks like a header), and
//! after the first `[[node]]` no line starting with `[` but `[[node]]`
//! headers (no other table can follow, and no array value may begin a
//! line). Anything else, and any error in any piece, is [`None`]: the
//! caller parses the whole document as before, so errors and their
//! positions are exactly those of the whole-document parse.

use serde::Deserialize;

use super::NodeEntry;

/// The file's head (everything before its first `[[node]]` header) as a
/// table holding `hub` and no `node`, and its `[[node]]` tables in file
/// order; [`None`] when the file does not have that plain shape or any
/// piece fails to parse or type-check.
pub(super) fn parse(text: &str) -> Option<(toml::Table, Vec<NodeEntry>)> {
    let (head, bodies) = split(text)?;
    let head: toml::Table = head.parse().ok()?;
    if !head.contains_key("hub") || head.contains_key("node") {
        return None;
    }
    let nodes = bodies
        .into_iter()
        .map(|b| NodeEntry::deserialize(toml::Deserializer::new(b)).ok())
        .collect::<Option<Vec<_>>>()?;
    Some((head, nodes))
}

/// The text before the first `[[node]]` header and the body of every
/// `[[node]]` table (its lines after the header), or [`None`] (see the
/// module docs).
fn split(text: &str) -> Option<(&str, Vec<&str>)> {
    if text.contains("\"\"\"") || text.contains("'''") {
        return None;
    }
    let mut head_end = None;
    let mut bodies = Vec::new();
    let mut body_start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if is_node_header(t) {
            if head_end.is_none() {
                head_end = Some(pos);
            } else {
                bodies.push(&text[body_start..pos]);
            }
            body_start = pos + line.len();
        } else if head_end.is_some() && t.starts_with('[') {
            return None;
        }
        pos += line.len();
    }
    let head_end = head_end?;
    bodies.push(&text[body_start..]);
    Some((&text[..head_end], bodies))
}

/// `[[node]]`, alone on its (trimmed) line or followed by a comment.
fn is_node_header(trimmed: &str) -> bool {
    trimmed.strip_prefix("[[node]]").is_some_and(|rest| {
        let rest = rest.trim_start();
        rest.is_empty() || rest.starts_with('#')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_hub_file_is_cut_at_each_node_header() {
        let text = "# c\n[hub]\naddress = \"10.0.0.1\"\n\n[[node]]\nname = \"a\"\n\n  [[node]]  # second\r\nname = \"b\"\nlocal_subnets = [\n  \"10.1.0.0/16\",\n]\n";
        let (head, bodies) = split(text).unwrap();
        assert_eq!(head, "# c\n[hub]\naddress = \"10.0.0.1\"\n\n");
        assert_eq!(
            bodies,
            [
                "name = \"a\"\n\n",
                "name = \"b\"\nlocal_subnets = [\n  \"10.1.0.0/16\",\n]\n"
            ]
        );
    }

    #[test]
    fn shapes_a_cut_could_misread_are_left_to_the_whole_parse() {
        for text in [
            // A table after the nodes.
            "[hub]\na = 1\n[[node]]\nname = \"a\"\n[hub.x]\n",
            // A multi-line string that could hold a header.
            "[hub]\na = \"\"\"\n[[node]]\n\"\"\"\n[[node]]\nname = \"a\"\n",
            "[hub]\na = '''\nx'''\n[[node]]\nname = \"a\"\n",
            // An array value starting a line.
            "[hub]\n[[node]]\nname = \"a\"\nlocal_subnets = [\n[\"x\"]]\n",
            // No node table at all.
            "[hub]\naddress = \"10.0.0.1\"\n",
        ] {
            assert!(split(text).is_none(), "{text}");
        }
        assert!(is_node_header("[[node]]"));
        assert!(is_node_header("[[node]] # x"));
        assert!(!is_node_header("[[node]]x"));
        assert!(!is_node_header("[[nodes]]"));
        assert!(!is_node_header("[[ node ]]"));
    }

    #[test]
    fn a_piece_that_does_not_parse_or_type_check_falls_back() {
        // Each would be an error of the whole parse, reported there.
        for text in [
            "[hub]\naddress = \"10.0.0.1\"\n[[node]]\nname = \"a\"\nnmae = \"b\"\n",
            "[hub]\naddress = \"10.0.0.1\"\n[[node]]\nname = \"a\n",
            "node = []\n[hub]\naddress = \"10.0.0.1\"\n[[node]]\nname = \"a\"\n",
            "[node]\nname = \"a\"\n[[node]]\nname = \"a\"\n",
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
    }
}
