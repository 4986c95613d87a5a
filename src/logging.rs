//! Where and how the daemons log: to stderr, at the level `ROTOR_LOG` (or,
//! unset, `RUST_LOG`) asks for, coloured only on a terminal. Under systemd
//! (`JOURNAL_STREAM` names our stderr) each line starts with its sd-daemon
//! priority (`<3>` error .. `<7>` debug), which journald turns into the
//! entry's priority (`journalctl -p warning`), and carries no timestamp
//! (the journal stamps every entry).

use std::fmt;
use std::io::IsTerminal;

use tracing::{Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log filter variable that was set to something unusable. The daemon
/// refuses to start on it: a filter that matches nothing would silently
/// log nothing, errors included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value}: {problem}")]
pub struct FilterError {
    /// `ROTOR_LOG` or `RUST_LOG`.
    pub var: &'static str,
    /// What it was set to.
    pub value: String,
    /// Why it is refused.
    pub problem: String,
}

/// The levels a bare word may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The filter asked for by `rotor_log`, else `rust_log` (the values of
/// `ROTOR_LOG` and `RUST_LOG`; an empty one counts as unset): a level
/// (`warning` is taken for `warn`, case is ignored) or a tracing directive
/// such as `rotor=debug,info`; neither set means `info`. A bare word that
/// is no level is refused, naming the variable: tracing would take it for a
/// target name and log nothing.
pub fn filter(rotor_log: Option<&str>, rust_log: Option<&str>) -> Result<EnvFilter, FilterError> {
    fn set(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let (var, v) = match (set(rotor_log), set(rust_log)) {
        (Some(v), _) => ("ROTOR_LOG", v),
        (None, Some(v)) => ("RUST_LOG", v),
        (None, None) => return Ok(EnvFilter::new("info")),
    };
    let refuse = |problem: String| FilterError {
        var,
        value: v.to_string(),
        problem,
    };
    let directive = if v.contains(['=', ',', ':', '[']) {
        v.to_string()
    } else {
        let w = v.to_ascii_lowercase();
        let w = if w == "warning" { "warn".into() } else { w };
        if !LEVELS.contains(&w.as_str()) {
            return Err(refuse(format!(
                "not a log level; use one of {} (or a directive such as rotor=debug)",
                LEVELS.join(", ")
            )));
        }
        w
    };
    EnvFilter::try_new(&directive).map_err(|e| refuse(e.to_string()))
}

/// Whether stderr is the journal: `JOURNAL_STREAM` (`DEV:INODE`, set by
/// systemd for a unit whose output goes to the journal) names the file
/// stderr is. Compared, not just tested for presence: a child of such a
/// unit with its stderr redirected inherits the variable.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// Whether this process's stderr is the journal (see the module
/// documentation): lines written to it outside the logger (the final error)
/// should then start with a priority too.
pub fn journal() -> bool {
    stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref())
}

/// The sd-daemon priority of `level` (sd-daemon(3)): err, warning, info,
/// debug.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Formats each event as `F` does, after its `<N>` priority prefix.
struct Prioritised<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the process's logger (see the module documentation); refuses
/// an unusable `ROTOR_LOG` / `RUST_LOG`.
pub fn init() -> Result<(), FilterError> {
    let rotor_log = std::env::var("ROTOR_LOG").ok();
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = filter(rotor_log.as_deref(), rust_log.as_deref())?;
    let journal = journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    if journal {
        let format = tracing_subscriber::fmt::format()
            .with_target(false)
            .without_time();
        builder
            .with_ansi(false)
            .event_format(Prioritised(format))
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_are_taken_and_other_words_refused_naming_the_variable() {
        for ok in [
            None,
            Some(""),
            Some("info"),
            Some("WARNING"),
            Some("warn"),
            Some("debug"),
            Some("rotor=debug,info"),
            Some("off"),
        ] {
            assert!(filter(ok, None).is_ok(), "{ok:?}");
        }
        for bad in ["verbose", "warnings", "loud"] {
            let e = filter(Some(bad), None).unwrap_err();
            assert_eq!((e.var, e.value.as_str()), ("ROTOR_LOG", bad));
            assert!(
                e.to_string()
                    .starts_with(&format!("ROTOR_LOG={bad}: not a log level")),
                "{e}"
            );
        }
        assert_eq!(filter(Some("warning"), None).unwrap().to_string(), "warn");
        let e = filter(Some("rotor=loud"), None).unwrap_err();
        assert_eq!(e.var, "ROTOR_LOG");
    }

    #[test]
    fn rust_log_is_the_fallback_and_rotor_log_wins() {
        assert_eq!(filter(None, Some("debug")).unwrap().to_string(), "debug");
        assert_eq!(
            filter(Some(""), Some("debug")).unwrap().to_string(),
            "debug"
        );
        assert_eq!(
            filter(Some("error"), Some("debug")).unwrap().to_string(),
            "error"
        );
        assert_eq!(filter(None, None).unwrap().to_string(), "info");
        let e = filter(None, Some("verbose")).unwrap_err();
        assert!(e.to_string().starts_with("RUST_LOG=verbose: "), "{e}");
        // A bad RUST_LOG does not matter when ROTOR_LOG decides.
        assert!(filter(Some("info"), Some("verbose")).is_ok());
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:x")));
        let st = rustix::fs::fstat(std::io::stderr()).expect("fstat stderr");
        let me = format!("{}:{}", st.st_dev, st.st_ino);
        assert!(stderr_is_journal(Some(&me)));
        let other = format!("{}:{}", st.st_dev, st.st_ino + 1);
        assert!(!stderr_is_journal(Some(&other)));
    }

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(
            [
                Level::ERROR,
                Level::WARN,
                Level::INFO,
                Level::DEBUG,
                Level::TRACE
            ]
            .map(priority),
            [3, 4, 6, 7, 7]
        );
    }
}
