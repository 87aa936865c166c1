//! The server's activity log on stdout, in the original PERE's line format (`PUSH EVT>`,
//! `FEED REQ>`, `FEEDBACK>`), coloured only when stdout is a terminal.

use std::io::{IsTerminal, Write};

/// The longest excerpt of an event body shown in a log line.
const BODY_EXCERPT: usize = 200;

/// Writes the activity log.
#[derive(Debug, Clone, Copy)]
pub struct Log {
    color: bool,
    events: bool,
}

impl Log {
    /// A log on stdout; `events: false` keeps only start, stop and errors (for high loads, where a
    /// line per event would cost more than the event).
    pub fn stdout(events: bool) -> Self {
        Log { color: std::io::stdout().is_terminal(), events }
    }

    fn line(&self, color: &str, tag: &str, rest: std::fmt::Arguments<'_>) {
        let mut out = std::io::stdout().lock();
        let _ = if self.color {
            writeln!(out, "\x1b[{color}m{tag}\x1b[0m {rest}")
        } else {
            writeln!(out, "{tag} {rest}")
        };
    }

    /// A line that is always written (startup, shutdown).
    pub fn info(&self, text: std::fmt::Arguments<'_>) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    /// A published event.
    pub fn push(&self, channel: &str, device: Option<&str>, id: u64, body: &str) {
        if self.events {
            let data = excerpt(body);
            self.line(
                "32",
                "PUSH EVT>",
                format_args!("channel: {channel}, device: {}, Event-Id: {id}, data: {data}", device.unwrap_or("-")),
            );
        }
    }

    /// A feed opened.
    pub fn feed(&self, channel: &str, device: Option<&str>, last_event_id: Option<&str>) {
        if self.events {
            self.line(
                "36",
                "FEED REQ>",
                format_args!(
                    "device: {}, channel: {channel}, Last-Event-Id: {}",
                    device.unwrap_or("-"),
                    last_event_id.map_or_else(|| "-".to_owned(), excerpt)
                ),
            );
        }
    }

    /// A feed closed.
    pub fn feed_end(&self, channel: &str, device: Option<&str>, reason: &str) {
        if self.events {
            self.line(
                "33",
                "FEED END>",
                format_args!("device: {}, channel: {channel}, reason: {reason}", device.unwrap_or("-")),
            );
        }
    }

    /// An event sent again because its receipt is overdue.
    pub fn redelivery(&self, channel: &str, device: &str, id: u64, sends: u32) {
        if self.events {
            self.line(
                "33",
                "REDELIVER>",
                format_args!("channel: {channel}, device: {device}, Event-Id: {id}, send: {sends}"),
            );
        }
    }

    /// A webhook attempt.
    pub fn webhook(&self, channel: &str, id: u64, complete: bool, attempt: u32, outcome: &str) {
        if self.events {
            self.line(
                "34",
                "WEBHOOK>",
                format_args!("channel: {channel}, Event-Id: {id}, complete: {complete}, attempt: {attempt}, {outcome}"),
            );
        }
    }

    /// A receipt recorded.
    pub fn feedback(&self, channel: &str, device: &str, id: u64, status: &str) {
        if self.events {
            let status = excerpt(status);
            self.line(
                "35",
                "FEEDBACK>",
                format_args!("channel: {channel}, device: {device}, Last-Event-Id: {id}, status: {status}"),
            );
        }
    }
}

/// One line, at most [`BODY_EXCERPT`] characters, control characters escaped: a body must not be
/// able to forge log lines.
fn excerpt(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(BODY_EXCERPT + 8));
    for (i, c) in text.chars().enumerate() {
        if i == BODY_EXCERPT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn excerpts_are_one_safe_line() {
        assert_eq!(excerpt("a\nb\r\x1b[31m"), "a\\nb\\r\\u{1b}[31m");
        assert_eq!(excerpt(&"x".repeat(300)).chars().count(), 201);
    }
}
