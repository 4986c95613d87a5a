//! What an import found: refusals (the import stops, nothing is written) and
//! notes (settings ignored, things the operator should know), each with the
//! file and line it is about.

use std::collections::HashMap;
use std::fmt;

use crate::import::settings::{Origin, Setting};

use super::rules::Rule;

/// Something the importer cannot translate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Where it was written.
    pub origin: Origin,
    /// Why rotor cannot do it, and what to do instead.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.reason)
    }
}

/// One kind of remark, with the first place it applies to and how many
/// places it applies to in all (a 1,000-node file gets one line, not 1,000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The first place.
    pub origin: Origin,
    /// How many places.
    pub count: usize,
    /// The remark.
    pub text: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.text)?;
        if self.count > 1 {
            write!(f, " (and {} more)", self.count - 1)?;
        }
        Ok(())
    }
}

/// Refusals and notes collected while translating.
#[derive(Debug, Default)]
pub struct Findings {
    /// Every refusal, in the order found.
    pub refusals: Vec<Refusal>,
    notes: Vec<Note>,
    note_index: HashMap<String, usize>,
}

impl Findings {
    /// Records a refusal.
    pub fn refuse(&mut self, origin: &Origin, reason: impl Into<String>) {
        self.refusals.push(Refusal {
            origin: origin.clone(),
            reason: reason.into(),
        });
    }

    /// Records a note; the same text again only counts.
    pub fn note(&mut self, origin: &Origin, text: impl Into<String>) {
        let text = text.into();
        match self.note_index.get(&text) {
            Some(&i) => self.notes[i].count += 1,
            None => {
                self.note_index.insert(text.clone(), self.notes.len());
                self.notes.push(Note {
                    origin: origin.clone(),
                    count: 1,
                    text,
                });
            }
        }
    }

    /// Applies `rule` (from the tables of `rules`; `None`: not in them) to
    /// `s`, written in a `what` (e.g. "child").
    pub fn apply(&mut self, s: &Setting, rule: Option<Rule>, what: &str) {
        match rule {
            None => self.refuse(
                &s.origin,
                format!(
                    "unknown setting `{}` in a {what} (swanctl refuses it too)",
                    s.key
                ),
            ),
            Some(Rule::Used) => {}
            Some(Rule::Ignored(why)) => self.note(&s.origin, format!("ignored `{}`: {why}", s.key)),
            Some(Rule::Refused { ok, why }) => {
                if !ok(s.text()) {
                    self.refuse(&s.origin, format!("`{} = {}`: {why}", s.key, s.text()));
                }
            }
        }
    }

    /// The notes, in the order first found.
    pub fn into_notes(self) -> Vec<Note> {
        self.notes
    }
}
