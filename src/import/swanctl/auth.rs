//! A connection's `local*` / `remote*` authentication rounds: rotor can take
//! over only a pre-shared-key connection with one round per side.

use crate::import::settings::Section;

use super::child::TEMPLATE;
use super::report::Findings;
use super::rules;

/// Checks the `side` ("local" or "remote") rounds of `conn`. Returns the
/// round's identity (`id`, unless unset or `%any`) when it is one `auth =
/// psk` round, `None` when refused (recorded in `f`).
pub fn round(conn: &Section, side: &str, f: &mut Findings) -> Option<Option<String>> {
    let rounds: Vec<&Section> = conn
        .sections()
        .filter(|s| s.name.starts_with(side))
        .collect();
    let Some((first, more)) = rounds.split_first() else {
        f.refuse(
            &conn.origin,
            format!(
                "connection `{}` has no `{side}` section: strongSwan then authenticates with \
                 public keys; rotor takes over pre-shared-key (auth = psk) connections only",
                conn.name
            ),
        );
        return None;
    };
    if let Some(second) = more.first() {
        f.refuse(
            &second.origin,
            format!(
                "a second `{side}` authentication round (`{}`): rotor authenticates each node \
                 once, with its init key",
                second.name
            ),
        );
        return None;
    }
    let before = f.refusals.len();
    if !first.references.is_empty() {
        f.refuse(&first.origin, TEMPLATE);
    }
    for s in first.settings() {
        f.apply(s, rules::auth_round(&s.key), "authentication round");
    }
    for sub in first.sections() {
        f.refuse(
            &sub.origin,
            format!(
                "section `{}`: certificates and public keys have no rotor equivalent: rotor \
                 authenticates each node with its own pre-shared init key",
                sub.name
            ),
        );
    }
    let auth = first.setting("auth");
    let method = auth.map_or("pubkey", |s| s.text().trim());
    if method != "psk" {
        let how = if auth.is_some() { "" } else { " (the default)" };
        f.refuse(
            auth.map_or(&first.origin, |s| &s.origin),
            format!(
                "`auth = {method}`{how}: certificate, public-key, EAP and XAuth authentication \
                 have no rotor equivalent; rotor takes over pre-shared-key (auth = psk) \
                 connections only"
            ),
        );
    }
    if f.refusals.len() > before {
        return None;
    }
    let id = first
        .setting("id")
        .map(|s| s.text().trim().to_string())
        .filter(|id| !id.is_empty() && id != "%any");
    Some(id)
}
