//! The tokens of strongSwan's settings syntax (strongswan.conf(5),
//! swanctl.conf(5)), with `include` expanded where it stands.
//!
//! The rules follow strongSwan's own scanner (`settings_lexer.l`): names are
//! runs of anything but `# { } : . , = "` and blanks; after `=` the rest of
//! the line up to `#` or `}` is the value, its parts (bare words or quoted
//! strings with `\n \r \t` and `\X` escapes) joined by one space; after `:`
//! come dotted section references; `include PATTERN` (not followed by `=`)
//! reads the files a glob(3) pattern matches, in name order, relative to the
//! including file's directory, and a pattern that matches nothing includes
//! nothing. Text of values never appears in an error: a value may be a
//! secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{Origin, SyntaxError};

/// Deepest chain of includes: strongSwan has no limit, so a file that
/// includes itself would never end; this makes it an error naming the line.
pub const INCLUDE_DEPTH_MAX: usize = 16;

/// One token and where it starts.
#[derive(Debug)]
pub(super) struct Token {
    pub kind: Tok,
    pub origin: Origin,
}

/// The kinds of token the parser sees.
pub(super) enum Tok {
    /// A section or key name.
    Name(String),
    /// `=` and the value after it (`None`: nothing before the end of line).
    Assign(Option<Zeroizing<String>>),
    /// A section reference after `:` (may contain dots).
    Reference(String),
    /// `{`
    Open,
    /// `}`
    Close,
    /// `:`
    Colon,
    /// `,`
    Comma,
    /// `.`
    Dot,
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Name(n) => write!(f, "Name({n:?})"),
            // A value may be a secret: never printed.
            Tok::Assign(v) => write!(f, "Assign({})", if v.is_some() { "..." } else { "" }),
            Tok::Reference(r) => write!(f, "Reference({r:?})"),
            Tok::Open => f.write_str("{"),
            Tok::Close => f.write_str("}"),
            Tok::Colon => f.write_str(":"),
            Tok::Comma => f.write_str(","),
            Tok::Dot => f.write_str("."),
        }
    }
}

/// Bytes that end a name (strongSwan's `NAME` class is everything else).
fn ends_name(b: u8) -> bool {
    matches!(
        b,
        b'#' | b'{' | b'}' | b':' | b'.' | b',' | b'=' | b'"' | b'\r' | b'\n' | b'\t' | b' '
    )
}

/// Reads files and turns them into one token stream.
pub(super) struct Lexer {
    pub tokens: Vec<Token>,
    /// Every file read, in order (the first is the one named by the caller).
    pub files: Vec<Arc<Path>>,
}

impl Lexer {
    pub fn new() -> Self {
        Lexer {
            tokens: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Reads `path` (an error names `from`, the include line, if any) and
    /// appends its tokens.
    pub fn file(
        &mut self,
        path: &Path,
        from: Option<&Origin>,
        depth: usize,
    ) -> Result<(), SyntaxError> {
        let fail = |problem: String| match from {
            Some(o) => SyntaxError::at(o, problem),
            None => SyntaxError::file(path, problem),
        };
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?,
        );
        let file: Arc<Path> = Arc::from(path);
        let text = match std::str::from_utf8(&bytes) {
            Ok(t) => t,
            Err(e) => {
                let line = line_of(&bytes, e.valid_up_to());
                return Err(SyntaxError::at(
                    &Origin { file, line },
                    "not UTF-8 text".to_string(),
                ));
            }
        };
        self.files.push(file.clone());
        self.text(text, &file, depth)
    }

    /// Appends the tokens of `text`, read from `file`.
    pub fn text(&mut self, text: &str, file: &Arc<Path>, depth: usize) -> Result<(), SyntaxError> {
        let b = text.as_bytes();
        let mut i = 0;
        let mut line: u32 = 1;
        while i < b.len() {
            let origin = Origin {
                file: file.clone(),
                line,
            };
            let single = match b[i] {
                b'#' => {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                    continue;
                }
                b' ' | b'\t' | b'\r' => {
                    i += 1;
                    continue;
                }
                b'\n' => {
                    line = line.saturating_add(1);
                    i += 1;
                    continue;
                }
                b'{' => Some(Tok::Open),
                b'}' => Some(Tok::Close),
                b'.' => Some(Tok::Dot),
                b',' => Some(Tok::Comma),
                b'"' => {
                    return Err(SyntaxError::at(
                        &origin,
                        "a quoted string where a name was expected".to_string(),
                    ));
                }
                _ => None,
            };
            if let Some(kind) = single {
                self.tokens.push(Token { kind, origin });
                i += 1;
                continue;
            }
            match b[i] {
                b':' => {
                    self.tokens.push(Token {
                        kind: Tok::Colon,
                        origin,
                    });
                    i = self.references(text, i + 1, file, &mut line);
                }
                b'=' => {
                    let (value, next) = value(text, i + 1, &mut line, &origin)?;
                    self.tokens.push(Token {
                        kind: Tok::Assign(value),
                        origin,
                    });
                    i = next;
                }
                _ => {
                    let start = i;
                    while i < b.len() && !ends_name(b[i]) {
                        i += 1;
                    }
                    let name = &text[start..i];
                    if name == "include" {
                        let mut k = i;
                        while k < b.len() && (b[k] == b' ' || b[k] == b'\t') {
                            k += 1;
                        }
                        if k > i && b.get(k) != Some(&b'=') {
                            let (pattern, next) = pattern(text, k, &mut line, &origin)?;
                            i = next;
                            self.include(&pattern, &origin, depth)?;
                            continue;
                        }
                    }
                    self.tokens.push(Token {
                        kind: Tok::Name(name.to_string()),
                        origin,
                    });
                }
            }
        }
        Ok(())
    }

    /// The references after `:`: dotted names separated by commas, across
    /// blanks, comments and line ends; stops before anything else.
    fn references(&mut self, text: &str, mut i: usize, file: &Arc<Path>, line: &mut u32) -> usize {
        let b = text.as_bytes();
        while i < b.len() {
            match b[i] {
                b'#' => {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
                b' ' | b'\t' | b'\r' => i += 1,
                b'\n' => {
                    *line = line.saturating_add(1);
                    i += 1;
                }
                b',' => {
                    self.tokens.push(Token {
                        kind: Tok::Comma,
                        origin: Origin {
                            file: file.clone(),
                            line: *line,
                        },
                    });
                    i += 1;
                }
                c if !ends_name(c) => {
                    let start = i;
                    // NAME+ ( . NAME+ )*: a dot only between name runs.
                    loop {
                        while i < b.len() && !ends_name(b[i]) {
                            i += 1;
                        }
                        if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|&c| !ends_name(c)) {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    self.tokens.push(Token {
                        kind: Tok::Reference(text[start..i].to_string()),
                        origin: Origin {
                            file: file.clone(),
                            line: *line,
                        },
                    });
                }
                _ => break,
            }
        }
        i
    }

    /// Reads every regular file `pattern` matches (relative to the including
    /// file's directory), in name order.
    fn include(&mut self, pattern: &str, at: &Origin, depth: usize) -> Result<(), SyntaxError> {
        if pattern.is_empty() {
            // strongSwan ignores an empty pattern too.
            return Ok(());
        }
        if depth >= INCLUDE_DEPTH_MAX {
            return Err(SyntaxError::at(
                at,
                format!(
                    "includes nested deeper than {INCLUDE_DEPTH_MAX} files (does a file include itself?)"
                ),
            ));
        }
        let full: PathBuf = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            at.file
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(pattern)
        };
        let Some(full_str) = full.to_str() else {
            return Err(SyntaxError::at(at, "include path is not UTF-8".to_string()));
        };
        // glob(3) as strongSwan calls it: `*` and `?` never match `/` or a
        // leading dot, no braces.
        let options = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: true,
        };
        let paths = glob::glob_with(full_str, options).map_err(|e| {
            SyntaxError::at(
                at,
                format!("include pattern {pattern:?} is not a glob: {e}"),
            )
        })?;
        for entry in paths {
            let path = entry.map_err(|e| {
                SyntaxError::at(at, format!("include {pattern:?}: cannot read: {e}"))
            })?;
            // strongSwan skips what it cannot open as a regular file.
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                self.file(&path, Some(at), depth + 1)?;
            }
        }
        Ok(())
    }
}

/// 1-based line of byte offset `at`.
fn line_of(bytes: &[u8], at: usize) -> u32 {
    let n = bytes[..at.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count();
    u32::try_from(n).unwrap_or(u32::MAX).saturating_add(1)
}

/// The value after `=` from byte `i`: parts joined by one space, up to (not
/// including) the end of line, `#` or `}`. Returns the value and where the
/// scan stopped.
fn value(
    text: &str,
    mut i: usize,
    line: &mut u32,
    at: &Origin,
) -> Result<(Option<Zeroizing<String>>, usize), SyntaxError> {
    let b = text.as_bytes();
    let mut out = Zeroizing::new(String::new());
    let mut parts = 0usize;
    while i < b.len() {
        match b[i] {
            b'\r' | b' ' | b'\t' => i += 1,
            b'#' | b'}' | b'\n' => break,
            b'"' => {
                if parts > 0 {
                    out.push(' ');
                }
                i = string(text, i + 1, line, at, &mut out)?;
                parts += 1;
            }
            _ => {
                let start = i;
                while i < b.len()
                    && !matches!(b[i], b'#' | b'}' | b'"' | b'\r' | b'\n' | b'\t' | b' ')
                {
                    i += 1;
                }
                if parts > 0 {
                    out.push(' ');
                }
                out.push_str(&text[start..i]);
                parts += 1;
            }
        }
    }
    Ok(((parts > 0).then_some(out), i))
}

/// A quoted string's content from just after its opening quote; appends it
/// to `out` and returns the index after the closing quote.
fn string(
    text: &str,
    mut i: usize,
    line: &mut u32,
    at: &Origin,
    out: &mut String,
) -> Result<usize, SyntaxError> {
    let b = text.as_bytes();
    let unterminated = || {
        SyntaxError::at(
            at,
            "unterminated quoted string (a `\"` is missing)".to_string(),
        )
    };
    while i < b.len() {
        match b[i] {
            b'"' => return Ok(i + 1),
            b'\r' => i += 1,
            b'\\' => {
                let Some(c) = text[i + 1..].chars().next() else {
                    return Err(unterminated());
                };
                match c {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    '\n' => *line = line.saturating_add(1),
                    '\r' if b.get(i + 2) == Some(&b'\n') => {
                        *line = line.saturating_add(1);
                        i += 1;
                    }
                    c => out.push(c),
                }
                i += 1 + c.len_utf8();
            }
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b'"' | b'\r' | b'\\') {
                    if b[i] == b'\n' {
                        *line = line.saturating_add(1);
                    }
                    i += 1;
                }
                out.push_str(&text[start..i]);
            }
        }
    }
    Err(unterminated())
}

/// An include pattern from byte `i`: up to a blank, `#`, `}` or the end of
/// line (`\"`, `\#`, `\}` and `\ ` escape those), or one quoted string.
fn pattern(
    text: &str,
    mut i: usize,
    line: &mut u32,
    at: &Origin,
) -> Result<(String, usize), SyntaxError> {
    let b = text.as_bytes();
    let mut out = String::new();
    while i < b.len() {
        match b[i] {
            b'\r' => i += 1,
            b'#' | b'}' | b'\n' => break,
            b'\t' | b' ' => {
                i += 1;
                break;
            }
            b'"' => {
                let mut s = Zeroizing::new(String::new());
                i = string(text, i + 1, line, at, &mut s)?;
                out.push_str(&s);
                break;
            }
            b'\\' => match b.get(i + 1) {
                Some(&c @ (b'"' | b'#' | b'}' | b' ')) => {
                    out.push(char::from(c));
                    i += 2;
                }
                _ => {
                    out.push('\\');
                    i += 1;
                }
            },
            _ => {
                let start = i;
                while i < b.len()
                    && !matches!(
                        b[i],
                        b'"' | b'\\' | b'#' | b'}' | b'\r' | b'\n' | b'\t' | b' '
                    )
                {
                    i += 1;
                }
                out.push_str(&text[start..i]);
            }
        }
    }
    Ok((out, i))
}
