//! The one `tracing` subscriber of the server, set up by `main`: the original PERE's lines with a
//! timestamp and colours (or JSON for log shippers), written by background threads so that a
//! request never waits for the terminal or the disk.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt as _;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::activity;
use crate::config::{Config, LogFormat};

/// Keeps the log's writer threads alive; dropping it writes out what is still buffered.
#[derive(Debug)]
pub struct LogGuard {
    _stdout: WorkerGuard,
    _stderr: WorkerGuard,
    stdout: NonBlocking,
}

impl LogGuard {
    /// Lines dropped because the log could not keep up (its buffer was full); a push never
    /// waits for the log.
    pub fn dropped_lines(&self) -> usize {
        self.stdout.error_counter().dropped_lines()
    }
}

/// What to log: `--log-level` (a level such as `debug`, or full `tracing` directives), else
/// `RUST_LOG`, else `info`; `--quiet` then turns the activity lines off.
pub fn filter(config: &Config) -> Result<EnvFilter, String> {
    let asked = config
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "info".to_owned());
    let mut directives = if asked.contains(['=', ',']) {
        asked
    } else {
        // A bare level is PERE's own; other crates (hyper, reqwest) stay at warnings, since their
        // debug output would drown PERE's lines.
        let level = asked.trim().to_ascii_lowercase();
        if level.parse::<Level>().is_err() && level != "off" {
            return Err(format!("--log-level: `{asked}` is not a level (error, warn, info, debug, trace, off)"));
        }
        format!("warn,pere={level},pere_server={level},pere_core={level}")
    };
    if config.quiet {
        directives.push_str(&format!(",{}=warn", activity::TARGET));
    }
    EnvFilter::try_new(&directives).map_err(|err| format!("--log-level: {err}"))
}

/// Installs the subscriber: INFO and DEBUG lines on stdout, warnings and errors on stderr.
///
/// # Errors
/// A message for a log level that does not parse.
pub fn init(config: &Config) -> Result<LogGuard, String> {
    let filter = filter(config)?;
    let (stdout, stdout_guard) = tracing_appender::non_blocking(std::io::stdout());
    let (stderr, stderr_guard) = tracing_appender::non_blocking(std::io::stderr());
    let writer = stderr.with_max_level(Level::WARN).or_else(stdout.clone());
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Text => {
            let color = std::io::stdout().is_terminal();
            let layer = tracing_subscriber::fmt::layer().with_ansi(color).event_format(OriginalLines).with_writer(writer);
            registry.with(layer).try_init()
        }
        LogFormat::Json => {
            let layer = tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(writer);
            registry.with(layer).try_init()
        }
    }
    .map_err(|err| format!("cannot set up the log: {err}"))?;
    Ok(LogGuard { _stdout: stdout_guard, _stderr: stderr_guard, stdout })
}

/// The text format: `<time> <TAG> <message>`, with the original's colours on a terminal. An
/// activity line's tag is its own (`PUSH EVT>`); other lines are tagged by level (`ERROR>`).
#[derive(Debug, Clone, Copy)]
pub struct OriginalLines;

impl<S, N> FormatEvent<S, N> for OriginalLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut tag = TagOf(None);
        event.record(&mut tag);
        let level = *event.metadata().level();
        let (tag, color) = match tag.0 {
            Some(tag) => (tag, tag_color(tag)),
            None if level == Level::ERROR => ("ERROR>", "31"),
            None if level == Level::WARN => ("WARN>", "33"),
            None if level == Level::INFO => ("INFO>", "0"),
            None => ("DEBUG>", "90"),
        };
        let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        if writer.has_ansi_escapes() {
            write!(writer, "{time} \x1b[{color}m{tag}\x1b[0m ")?;
        } else {
            write!(writer, "{time} {tag} ")?;
        }
        let is_activity = event.metadata().target() == activity::TARGET;
        let mut rest = Rest { writer: &mut writer, activity: is_activity, result: Ok(()) };
        event.record(&mut rest);
        rest.result?;
        writeln!(writer)
    }
}

fn tag_color(tag: &str) -> &'static str {
    match tag {
        "PUSH EVT>" => "32",
        "FEED REQ>" => "36",
        "FEED END>" | "REDELIVER>" => "33",
        "FEEDBACK>" => "35",
        "WEBHOOK>" | "ADMIN>" => "34",
        "REFUSED>" => "31",
        _ => "90",
    }
}

/// Finds an activity line's tag.
struct TagOf(Option<&'static str>);

impl Visit for TagOf {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "tag" {
            // Tags are a closed set; anything else is shown as a plain line.
            self.0 = ["PUSH EVT>", "FEED REQ>", "FEED END>", "REDELIVER>", "FEEDBACK>", "WEBHOOK>", "ADMIN>", "REFUSED>", "REQUEST>"]
                .into_iter()
                .find(|t| *t == value);
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

/// Writes the message and, for lines other than activity lines (whose message says it all), the
/// other fields as `name=value`.
struct Rest<'w, 'a> {
    writer: &'w mut Writer<'a>,
    activity: bool,
    result: fmt::Result,
}

impl Visit for Rest<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.result = self.result.and_then(|()| self.writer.write_str(value));
        } else if !self.activity {
            self.result = self.result.and_then(|()| write!(self.writer, " {}={value:?}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.result = self.result.and_then(|()| write!(self.writer, "{value:?}"));
        } else if !self.activity && field.name() != "tag" {
            self.result = self.result.and_then(|()| write!(self.writer, " {}={value:?}", field.name()));
        }
    }
}
