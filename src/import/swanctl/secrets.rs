//! The `secrets` section, read only far enough to tell the operator which
//! connections have an IKE pre-shared key in the file. rotor does not use
//! the PSKs (its init keys are fresh random keys, see
//! docs/migrating-from-strongswan.md), so no secret value is kept or shown:
//! only the identities (`id*` keys) each `ike*` secret belongs to.

use std::net::IpAddr;

use crate::import::settings::Section;

use super::report::Findings;

/// The identities of every `ike*` secret; an empty list belongs to anyone.
#[derive(Debug, Default)]
pub struct IkeSecrets {
    owners: Vec<Vec<String>>,
}

/// Reads `secrets`: `ike*` sections are kept (their ids), other kinds
/// noted as unused.
pub fn read(secrets: Option<&Section>, f: &mut Findings) -> IkeSecrets {
    let mut out = IkeSecrets::default();
    let Some(secrets) = secrets else {
        return out;
    };
    for s in secrets.settings() {
        f.note(
            &s.origin,
            format!(
                "ignored `{}` directly in `secrets` (swanctl ignores it too)",
                s.key
            ),
        );
    }
    for sec in secrets.sections() {
        if sec.name.starts_with("ike") {
            if sec.setting("secret").is_none() {
                f.note(
                    &sec.origin,
                    format!(
                        "secret `{}` has no `secret` value (swanctl refuses it)",
                        sec.name
                    ),
                );
                continue;
            }
            let ids = sec
                .settings()
                .filter(|s| s.key.starts_with("id"))
                .map(|s| s.text().trim().to_string())
                .collect();
            out.owners.push(ids);
        } else {
            let kind = [
                "eap", "xauth", "ntlm", "ppk", "private", "rsa", "ecdsa", "pkcs8", "pkcs12",
                "token",
            ]
            .into_iter()
            .find(|k| sec.name.starts_with(k));
            f.note(
                &sec.origin,
                match kind {
                    Some(k) => format!(
                        "ignored `{k}` secrets: rotor authenticates nodes with init keys only"
                    ),
                    None => format!("ignored secret `{}` of an unknown kind", sec.name),
                },
            );
        }
    }
    out
}

impl IkeSecrets {
    /// Whether some PSK belongs to either identity, as strongSwan matches
    /// them: equal (addresses by value, names without case and a leading
    /// `@`), a `*` wildcard, or `%any` / no id at all.
    pub fn any_for(&self, a: &str, b: &str) -> bool {
        self.owners.iter().any(|ids| {
            ids.is_empty() || ids.iter().any(|id| id_matches(id, a) || id_matches(id, b))
        })
    }
}

/// Whether a secret's `id` (which may hold `*` wildcards) matches an
/// identity.
fn id_matches(pattern: &str, id: &str) -> bool {
    if pattern.is_empty() || pattern == "%any" {
        return true;
    }
    if let (Ok(p), Ok(i)) = (pattern.parse::<IpAddr>(), id.parse::<IpAddr>()) {
        return p == i;
    }
    let norm = |s: &str| {
        s.strip_prefix('@')
            .filter(|r| !r.starts_with('#'))
            .unwrap_or(s)
            .to_ascii_lowercase()
    };
    wildcard(&norm(pattern), &norm(id))
}

/// `*` matches any run of characters; linear in the lengths (greedy with one
/// backtrack point), so no input makes it slow.
fn wildcard(p: &str, s: &str) -> bool {
    let (p, s) = (p.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_like_strongswan() {
        assert!(id_matches("moon.strongswan.org", "Moon.StrongSwan.org"));
        assert!(id_matches("@moon.strongswan.org", "moon.strongswan.org"));
        assert!(id_matches("192.168.0.1", "192.168.0.1"));
        assert!(id_matches("fd00::1", "fd00:0::1"));
        assert!(!id_matches("192.168.0.1", "192.168.0.2"));
        assert!(id_matches("*@strongswan.org", "carol@strongswan.org"));
        assert!(!id_matches("*@strongswan.org", "carol@example.org"));
        assert!(id_matches("%any", "anything"));
        assert!(!id_matches("sun.strongswan.org", "moon.strongswan.org"));
    }

    #[test]
    fn secrets_without_ids_belong_to_anyone() {
        let s = IkeSecrets {
            owners: vec![vec!["a.example".into()]],
        };
        assert!(s.any_for("x", "a.example"));
        assert!(!s.any_for("x", "y"));
        let s = IkeSecrets {
            owners: vec![vec![]],
        };
        assert!(s.any_for("x", "y"));
    }

    #[test]
    fn wildcard_is_linear_and_correct() {
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxbyy"));
        assert!(wildcard("*", ""));
        // Exponential for a naive backtracking matcher; instant here.
        let long = "a".repeat(10_000) + "b";
        assert!(!wildcard(&"*a".repeat(50), &long));
        assert!(wildcard(&"*a".repeat(50), &"a".repeat(60)));
    }
}
