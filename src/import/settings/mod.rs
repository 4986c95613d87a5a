//! strongSwan's settings syntax (the format of strongswan.conf and
//! swanctl.conf): nested `name { ... }` sections of `key = value` settings,
//! with `include`. No maintained Rust crate reads it, so this is a small
//! parser of our own that follows strongSwan's grammar (`settings_parser.y`)
//! and never panics on any input (`tests` below, and the property test in
//! `tests/import_swanctl.rs`).
//!
//! As in strongSwan, a section written twice is one section, and a key set
//! twice keeps the later value. Every section and setting remembers the file
//! and line it came from, for errors. Values are held in zeroizing strings
//! and never shown by `Debug` or in errors: some of them are secrets.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

mod lexer;

use lexer::{Lexer, Tok, Token};

pub use lexer::INCLUDE_DEPTH_MAX;

/// Deepest nesting of sections accepted (swanctl.conf needs 5: connections,
/// a connection, children, a child and nothing deeper).
pub const NESTING_MAX: usize = 64;

/// A file and 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file, as it was named (an included file: the including file's
    /// directory joined with the pattern's match).
    pub file: Arc<Path>,
    /// The line.
    pub line: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A file that is not valid settings syntax, or could not be read: where,
/// and why. Never contains a value's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {problem}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct SyntaxError {
    /// The file.
    pub file: PathBuf,
    /// The line, when the error has one.
    pub line: Option<u32>,
    /// What is wrong.
    pub problem: String,
}

impl SyntaxError {
    pub(crate) fn at(o: &Origin, problem: String) -> Self {
        SyntaxError {
            file: o.file.to_path_buf(),
            line: Some(o.line),
            problem,
        }
    }

    fn file(path: &Path, problem: String) -> Self {
        SyntaxError {
            file: path.to_path_buf(),
            line: None,
            problem,
        }
    }
}

/// One `key = value`.
pub struct Setting {
    /// The key.
    pub key: String,
    /// The value; `None` for `key =` with nothing after it.
    pub value: Option<Zeroizing<String>>,
    /// Where the value in force was written.
    pub origin: Origin,
}

impl Setting {
    /// The value, or "" for an empty one.
    pub fn text(&self) -> &str {
        self.value.as_deref().map_or("", String::as_str)
    }
}

impl fmt::Debug for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The value may be a secret.
        write!(f, "Setting({} = ... at {})", self.key, self.origin)
    }
}

/// A section: its settings and subsections, each name once.
#[derive(Debug)]
pub struct Section {
    /// The name (empty for the file's root).
    pub name: String,
    /// Where the section was first opened.
    pub origin: Origin,
    /// Sections named after `:` (templates), and where.
    pub references: Vec<(String, Origin)>,
    settings: Vec<Setting>,
    setting_index: HashMap<String, usize>,
    sections: Vec<Section>,
    section_index: HashMap<String, usize>,
}

impl Section {
    fn new(name: String, origin: Origin) -> Self {
        Section {
            name,
            origin,
            references: Vec::new(),
            settings: Vec::new(),
            setting_index: HashMap::new(),
            sections: Vec::new(),
            section_index: HashMap::new(),
        }
    }

    /// The setting `key`, if written.
    pub fn setting(&self, key: &str) -> Option<&Setting> {
        self.setting_index.get(key).map(|&i| &self.settings[i])
    }

    /// The subsection `name`, if written.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.section_index.get(name).map(|&i| &self.sections[i])
    }

    /// Settings in the order their keys first appeared.
    pub fn settings(&self) -> impl Iterator<Item = &Setting> {
        self.settings.iter()
    }

    /// Subsections in the order they were first opened.
    pub fn sections(&self) -> impl Iterator<Item = &Section> {
        self.sections.iter()
    }

    fn set(&mut self, s: Setting) {
        match self.setting_index.get(&s.key) {
            Some(&i) => self.settings[i] = s,
            None => {
                self.setting_index
                    .insert(s.key.clone(), self.settings.len());
                self.settings.push(s);
            }
        }
    }

    /// Adds `child`, merging it into a subsection of the same name.
    fn add(&mut self, child: Section) {
        match self.section_index.get(&child.name) {
            Some(&i) => self.sections[i].merge(child),
            None => {
                self.section_index
                    .insert(child.name.clone(), self.sections.len());
                self.sections.push(child);
            }
        }
    }

    /// Recursion depth is bounded by [`NESTING_MAX`].
    fn merge(&mut self, other: Section) {
        self.references.extend(other.references);
        for s in other.settings {
            self.set(s);
        }
        for c in other.sections {
            self.add(c);
        }
    }
}

/// A parsed file and every file it included.
#[derive(Debug)]
pub struct Document {
    /// The top level.
    pub root: Section,
    /// The files read, the named one first.
    pub files: Vec<Arc<Path>>,
}

/// Reads and parses `path` and the files it includes.
pub fn parse_file(path: &Path) -> Result<Document, SyntaxError> {
    let mut lx = Lexer::new();
    lx.file(path, None, 0)?;
    let root = parse(lx.tokens, path)?;
    Ok(Document {
        root,
        files: lx.files,
    })
}

/// Parses `text` as if read from `path` (includes are relative to its
/// directory).
pub fn parse_text(text: &str, path: &Path) -> Result<Document, SyntaxError> {
    let mut lx = Lexer::new();
    let file: Arc<Path> = Arc::from(path);
    lx.files.push(file.clone());
    lx.text(text, &file, 0)?;
    let root = parse(lx.tokens, path)?;
    Ok(Document {
        root,
        files: lx.files,
    })
}

/// The grammar: `statements := (NAME '=' value | NAME [':' refs] '{'
/// statements '}')*`, with an explicit stack so no input can exhaust the
/// call stack.
fn parse(tokens: Vec<Token>, path: &Path) -> Result<Section, SyntaxError> {
    let top = Origin {
        file: Arc::from(path),
        line: 1,
    };
    let mut stack = vec![Section::new(String::new(), top)];
    let mut it = tokens.into_iter();
    while let Some(Token { kind, origin }) = it.next() {
        let unexpected = |what: &str| {
            SyntaxError::at(
                &origin,
                format!("unexpected {what} (expected a key or a section name)"),
            )
        };
        match kind {
            Tok::Name(name) => match it.next() {
                Some(Token {
                    kind: Tok::Assign(value),
                    ..
                }) => {
                    let Some(section) = stack.last_mut() else {
                        break;
                    };
                    section.set(Setting {
                        key: name,
                        value,
                        origin,
                    });
                }
                Some(Token {
                    kind: Tok::Open, ..
                }) => {
                    if stack.len() > NESTING_MAX {
                        return Err(SyntaxError::at(
                            &origin,
                            format!("sections nested deeper than {NESTING_MAX}"),
                        ));
                    }
                    stack.push(Section::new(name, origin));
                }
                Some(Token {
                    kind: Tok::Colon, ..
                }) => {
                    let mut refs = Vec::new();
                    loop {
                        match it.next() {
                            Some(Token {
                                kind: Tok::Reference(r),
                                origin,
                            }) => refs.push((r, origin)),
                            _ => {
                                return Err(SyntaxError::at(
                                    &origin,
                                    "expected a section name after `:` or `,`".to_string(),
                                ));
                            }
                        }
                        match it.next() {
                            Some(Token {
                                kind: Tok::Comma, ..
                            }) => {}
                            Some(Token {
                                kind: Tok::Open, ..
                            }) => break,
                            _ => {
                                return Err(SyntaxError::at(
                                    &origin,
                                    "expected `,` or `{` after a section reference".to_string(),
                                ));
                            }
                        }
                    }
                    if stack.len() > NESTING_MAX {
                        return Err(SyntaxError::at(
                            &origin,
                            format!("sections nested deeper than {NESTING_MAX}"),
                        ));
                    }
                    let mut s = Section::new(name, origin);
                    s.references = refs;
                    stack.push(s);
                }
                Some(Token {
                    kind: Tok::Dot,
                    origin,
                }) => {
                    return Err(SyntaxError::at(
                        &origin,
                        "unexpected `.` (names cannot contain dots)".to_string(),
                    ));
                }
                Some(Token { origin, .. }) => {
                    return Err(SyntaxError::at(
                        &origin,
                        "expected `=` or `{` after a name".to_string(),
                    ));
                }
                None => {
                    return Err(SyntaxError::at(
                        &origin,
                        "the file ends after a name (expected `=` or `{`)".to_string(),
                    ));
                }
            },
            Tok::Close => {
                if stack.len() < 2 {
                    return Err(SyntaxError::at(
                        &origin,
                        "`}` closes no section".to_string(),
                    ));
                }
                if let (Some(done), Some(parent)) = (stack.pop(), stack.last_mut()) {
                    parent.add(done);
                }
            }
            Tok::Assign(_) => return Err(unexpected("`=`")),
            Tok::Open => return Err(unexpected("`{`")),
            Tok::Colon => return Err(unexpected("`:`")),
            Tok::Comma => return Err(unexpected("`,`")),
            Tok::Dot => {
                return Err(SyntaxError::at(
                    &origin,
                    "unexpected `.` (names cannot contain dots)".to_string(),
                ));
            }
            Tok::Reference(_) => return Err(unexpected("section reference")),
        }
    }
    if stack.len() > 1 {
        let open = stack.last().map(|s| (s.name.clone(), s.origin.clone()));
        if let Some((name, origin)) = open {
            return Err(SyntaxError::at(
                &origin,
                format!("section `{name}` is never closed (a `}}` is missing)"),
            ));
        }
    }
    stack
        .pop()
        .ok_or_else(|| SyntaxError::file(path, "empty parse".to_string()))
}

#[cfg(test)]
mod tests;
