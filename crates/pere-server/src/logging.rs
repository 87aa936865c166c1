//! The one `tracing` subscriber of the server, set up by `main`: the original PERE's lines with a
//! timestamp and colours (or JSON for log shippers), gathered in memory and written by a
//! background thread, so that a request never waits for the terminal or the disk.
//!
//! Why not `tracing-appender`'s non-blocking writer: it hands each line to its thread through a
//! channel and wakes the thread for it, and writes each line on its own; with a line per push,
//! that cost 11-18% of the pushes per second (`bench/logging.sh`). Here a line is copied into a
//! shared buffer under a short lock, and the thread writes the buffer out 20 ms after the first
//! line of a round came, or sooner once 64 KiB are waiting; with nothing to write it sleeps.

use std::fmt;
use std::io::{IsTerminal as _, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::MakeWriterExt as _;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::activity;
use crate::config::{Config, LogFormat};

/// Bytes of log lines that wake the writer thread before its next round.
const LOG_BUFFER: usize = 64 * 1024;
/// How long a line may wait before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Bytes of lines held at most while the output cannot keep up; past it lines are dropped (and
/// counted), so the log can never hold up a request or grow without bound.
const MAX_PENDING: usize = 16 * 1024 * 1024;

/// Keeps the log's writer threads alive; dropping it writes out what is still buffered.
#[derive(Debug)]
pub struct LogGuard {
    sinks: [Sink; 2],
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LogGuard {
    /// Lines dropped because the log could not keep up; a request never waits for the log.
    pub fn dropped_lines(&self) -> u64 {
        self.sinks
            .iter()
            .map(|s| s.0.dropped.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        for sink in &self.sinks {
            sink.0.closed.store(true, Ordering::Relaxed);
            sink.0.wake.notify_one();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Lines on their way to one output.
#[derive(Debug, Clone)]
struct Sink(Arc<SinkInner>);

#[derive(Debug, Default)]
struct SinkInner {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
}

impl Sink {
    /// A sink and the thread that writes it to `output`.
    fn spawn(
        name: &str,
        mut output: impl Write + Send + 'static,
    ) -> std::io::Result<(Sink, std::thread::JoinHandle<()>)> {
        let sink = Sink(Arc::default());
        let inner = sink.0.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut writing = Vec::with_capacity(LOG_BUFFER);
                loop {
                    {
                        let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
                        // A quiet server's thread sleeps until a line comes (it woke 50 times
                        // a second for nothing); then it gathers lines for one round.
                        while pending.is_empty() && !inner.closed.load(Ordering::Relaxed) {
                            pending = inner.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
                        }
                        if pending.len() < LOG_BUFFER && !inner.closed.load(Ordering::Relaxed) {
                            pending = inner
                                .wake
                                .wait_timeout(pending, FLUSH_EVERY)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                        std::mem::swap(&mut *pending, &mut writing);
                    }
                    if !writing.is_empty() {
                        // A log that cannot be written has nowhere to say so.
                        let _ = output.write_all(&writing).and_then(|()| output.flush());
                        writing.clear();
                        writing.shrink_to(LOG_BUFFER);
                    } else if inner.closed.load(Ordering::Relaxed) {
                        return;
                    }
                }
            })?;
        Ok((sink, thread))
    }
}

impl Write for &Sink {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.0.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() + line.len() > MAX_PENDING {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        let first = pending.is_empty();
        pending.extend_from_slice(line);
        // The first line wakes the thread from its sleep, a full buffer from its round.
        if first || pending.len() >= LOG_BUFFER {
            self.0.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = &'a Sink;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// What to log: `--log-level` (a level such as `debug`, or full `tracing` directives), else
/// `RUST_LOG`, else `info`; `--quiet` then turns the activity lines off.
pub fn filter(config: &Config) -> Result<EnvFilter, String> {
    let asked = config
        .log_level
        .clone()
        .or_else(|| {
            std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "info".to_owned());
    let mut directives = if asked.contains(['=', ',']) {
        asked
    } else {
        // A bare level is PERE's own; other crates (hyper, reqwest) stay at warnings, since their
        // debug output would drown PERE's lines.
        let level = asked.trim().to_ascii_lowercase();
        if level.parse::<Level>().is_err() && level != "off" {
            return Err(format!(
                "--log-level: `{asked}` is not a level (error, warn, info, debug, trace, off)"
            ));
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
    let (stdout, stdout_thread) =
        Sink::spawn("pere-log-out", std::io::stdout()).map_err(|e| e.to_string())?;
    let (stderr, stderr_thread) =
        Sink::spawn("pere-log-err", std::io::stderr()).map_err(|e| e.to_string())?;
    let writer = stderr
        .clone()
        .with_max_level(Level::WARN)
        .or_else(stdout.clone());
    let registry = tracing_subscriber::registry().with(filter);
    match config.log_format {
        LogFormat::Text => {
            let color = std::io::stdout().is_terminal();
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(color)
                .event_format(OriginalLines)
                .with_writer(writer);
            registry.with(layer).try_init()
        }
        LogFormat::Json => {
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(writer);
            registry.with(layer).try_init()
        }
    }
    .map_err(|err| format!("cannot set up the log: {err}"))?;
    Ok(LogGuard {
        sinks: [stdout, stderr],
        threads: vec![stdout_thread, stderr_thread],
    })
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
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
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
        let time = CachedTime;
        if writer.has_ansi_escapes() {
            write!(writer, "{time} \x1b[{color}m{tag}\x1b[0m ")?;
        } else {
            write!(writer, "{time} {tag} ")?;
        }
        let is_activity = event.metadata().target() == activity::TARGET;
        let mut rest = Rest {
            writer: &mut writer,
            activity: is_activity,
            result: Ok(()),
        };
        event.record(&mut rest);
        rest.result?;
        writeln!(writer)
    }
}

/// A time as ISO-8601 UTC with milliseconds, written without parsing a format string per line.
struct Timestamp(chrono::DateTime<chrono::Utc>);

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use chrono::{Datelike as _, Timelike as _};
        let t = &self.0;
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.timestamp_subsec_millis().min(999)
        )
    }
}

/// The current time as [`Timestamp`] writes it, formatted once per millisecond per thread: a busy
/// server writes many lines per millisecond.
struct CachedTime;

impl fmt::Display for CachedTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        thread_local! {
            static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
        }
        let now = chrono::Utc::now();
        let millis = now.timestamp_millis();
        LAST.with_borrow_mut(|(at, text)| {
            if *at != millis {
                text.clear();
                use fmt::Write as _;
                let _ = write!(text, "{}", Timestamp(now));
                *at = millis;
            }
            f.write_str(text)
        })
    }
}

fn tag_color(tag: &str) -> &'static str {
    match tag {
        "PUSH EVT>" => "32",
        "FEED REQ>" => "36",
        "FEED END>" | "REDELIVER>" => "33",
        "FEEDBACK>" => "35",
        "WEBHOOK>" | "ADMIN>" => "34",
        "REFUSED>" | "CORS>" => "31",
        _ => "90",
    }
}

/// Finds an activity line's tag.
struct TagOf(Option<&'static str>);

impl Visit for TagOf {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "tag" {
            // Tags are a closed set; anything else is shown as a plain line.
            self.0 = [
                "PUSH EVT>",
                "FEED REQ>",
                "FEED END>",
                "REDELIVER>",
                "FEEDBACK>",
                "WEBHOOK>",
                "ADMIN>",
                "REFUSED>",
                "CORS>",
                "REQUEST>",
            ]
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
            self.result = self
                .result
                .and_then(|()| write!(self.writer, " {}={value:?}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.result = self.result.and_then(|()| write!(self.writer, "{value:?}"));
        } else if !self.activity && field.name() != "tag" {
            self.result = self
                .result
                .and_then(|()| write!(self.writer, " {}={value:?}", field.name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Timestamp;
    use chrono::TimeZone as _;

    #[test]
    fn timestamps_are_iso_8601_utc_with_milliseconds() {
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::milliseconds(67);
        assert_eq!(Timestamp(t).to_string(), "2026-01-02T03:04:05.067Z");
        assert_eq!(Timestamp(t).to_string(), pere_proto::event::format_time(t));
    }
}
