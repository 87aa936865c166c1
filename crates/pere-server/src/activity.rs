//! The activity log: one `tracing` event per push, feed, receipt, refusal and admin change, in
//! the original PERE's wording (`PUSH EVT>`, `FEED REQ>`, `FEEDBACK>`).
//!
//! Each event carries its line's tag (`tag`), the original wording as its message, and the same
//! facts as structured fields for log shippers (`--log-format json`). They are emitted under the
//! target [`TARGET`] at INFO, so `--quiet` (or a level filter) turns them off before any
//! formatting is done; [`crate::logging`] writes them.

use std::fmt;

use pere_core::notice::{Heard, HubNotice, Observer};
use pere_core::Receipt;

/// The `tracing` target of every activity line.
pub const TARGET: &str = "pere::activity";

/// The longest excerpt of an event body or status shown in a line.
const EXCERPT_CHARS: usize = 200;

/// A published event.
pub fn push(channel: &str, device: Option<&str>, id: u64, body: &str) {
    let device = device.unwrap_or("-");
    tracing::info!(
        target: TARGET, tag = "PUSH EVT>", channel, device, id,
        "channel: {channel}, device: {device}, Event-Id: {id}, data: {}", Excerpt(body)
    );
}

/// The hub's observer that writes the `PUSH EVT>` line: the hub tells observers of an event
/// before any subscriber can have it, so the line comes before any line about what a device did
/// with the event (its `FEED`, its receipt).
#[derive(Debug)]
pub struct PushLog;

impl Observer for PushLog {
    fn notice(&self, notice: &HubNotice) -> Heard {
        if let HubNotice::Published { event, .. } = notice {
            push(
                event.channel.as_str(),
                event.publisher.as_ref().map(|d| d.as_str()),
                event.id,
                &event.body,
            );
        }
        Heard::Taken
    }
}

/// A feed opened (logged once subscribed: from this line on, the feed misses nothing).
pub fn feed(channel: &str, device: Option<&str>, last_event_id: Option<&str>) {
    let device = device.unwrap_or("-");
    let resume = Excerpt(last_event_id.unwrap_or("-"));
    tracing::info!(
        target: TARGET, tag = "FEED REQ>", channel, device,
        "device: {device}, channel: {channel}, Last-Event-Id: {resume}"
    );
}

/// A stream closed, and why.
pub fn feed_end(channel: &str, device: Option<&str>, reason: &str) {
    let device = device.unwrap_or("-");
    tracing::info!(
        target: TARGET, tag = "FEED END>", channel, device, reason,
        "device: {device}, channel: {channel}, reason: {reason}"
    );
}

/// An event sent again because its receipt is overdue.
pub fn redelivery(channel: &str, device: &str, id: u64, sends: u32) {
    tracing::info!(
        target: TARGET, tag = "REDELIVER>", channel, device, id, sends,
        "channel: {channel}, device: {device}, Event-Id: {id}, send: {sends}"
    );
}

/// A receipt recorded.
pub fn feedback(channel: &str, device: &str, id: u64, status: &str) {
    tracing::info!(
        target: TARGET, tag = "FEEDBACK>", channel, device, id,
        "channel: {channel}, device: {device}, Last-Event-Id: {id}, status: {}", Excerpt(status)
    );
}

/// A cumulative receipt that recorded `recorded`, all with one status (one line for the
/// request, not one per receipt: a device that comes back after a while acknowledges hundreds
/// at once); nothing when it recorded none.
pub fn feedback_upto(channel: &str, device: &str, upto: u64, recorded: &[Receipt]) {
    // The line's ids are gathered only for a log that shows it (`--quiet` does not): this is
    // the request coalescing devices send most.
    let Some(first) = recorded.first() else {
        return;
    };
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let ids: Vec<u64> = recorded.iter().map(|r| r.event_id).collect();
    let receipts = ids.len();
    tracing::info!(
        target: TARGET, tag = "FEEDBACK>", channel, device, upto, receipts,
        "channel: {channel}, device: {device}, Last-Event-Id: {}, upto: {upto}, receipts: {receipts}, status: {}",
        Ids(&ids), Excerpt(&first.status)
    );
}

/// The new receipts of a batch, in line order (one line for the request).
pub fn feedback_batch(channel: &str, device: &str, receipts: &[&Receipt]) {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let ids: Vec<u64> = receipts.iter().map(|r| r.event_id).collect();
    let mut statuses: Vec<&str> = Vec::new();
    for receipt in receipts {
        if !statuses.contains(&&*receipt.status) {
            statuses.push(&receipt.status);
        }
    }
    let count = receipts.len();
    tracing::info!(
        target: TARGET, tag = "FEEDBACK>", channel, device, receipts = count,
        "channel: {channel}, device: {device}, Last-Event-Id: {}, receipts: {count}, status: {}",
        Ids(&ids), Excerpt(&statuses.join(" | "))
    );
}

/// A webhook attempt.
pub fn webhook(channel: &str, id: u64, complete: bool, attempt: u32, outcome: &str) {
    tracing::info!(
        target: TARGET, tag = "WEBHOOK>", channel, id, complete, attempt, outcome,
        "channel: {channel}, Event-Id: {id}, complete: {complete}, attempt: {attempt}, {outcome}"
    );
}

/// A change of a channel's recipients made by an operator (`PUT`/`DELETE /devices/...`).
pub fn admin(method: &str, path: &str, status: u16, change: &str) {
    tracing::info!(
        target: TARGET, tag = "ADMIN>", method, path = %Excerpt(path), status, change,
        "{method} {}: {status} {change}", Excerpt(path)
    );
}

/// A request answered with an error: what was asked (never the query string, which may carry
/// credentials), the status and the stable code.
pub fn refused(method: &str, path: &str, status: u16, code: &str) {
    // A WARN line for the server's own failures, an INFO line for a client's mistakes.
    if status >= 500 {
        tracing::warn!(
            target: TARGET, tag = "REFUSED>", method, path = %Excerpt(path), status, code,
            "{method} {}: {status} {code}", Excerpt(path)
        );
    } else {
        tracing::info!(
            target: TARGET, tag = "REFUSED>", method, path = %Excerpt(path), status, code,
            "{method} {}: {status} {code}", Excerpt(path)
        );
    }
}

/// A cross-origin request whose answer the browser keeps from the page, since `--allow-origin`
/// does not allow its origin: the page sees only a CORS error, so the server says which origin
/// and how to let it in. At WARN, on stderr: a page that cannot work, whatever was answered.
pub fn cross_origin(method: &str, path: &str, origin: &str) {
    let shown = Excerpt(origin);
    if origin == "null" {
        tracing::warn!(
            target: TARGET, tag = "CORS>", method, path = %Excerpt(path), origin = %shown,
            "{method} {}: origin null (a page opened from a file:// or a sandboxed frame) is \
             not allowed: serve the page over http(s), from this server or from an origin \
             given to --allow-origin", Excerpt(path)
        );
    } else {
        tracing::warn!(
            target: TARGET, tag = "CORS>", method, path = %Excerpt(path), origin = %shown,
            "{method} {}: origin {shown} is not allowed: start the server with --allow-origin \
             {shown} to let its pages in (an origin is scheme, host and port, exactly: \
             localhost is not 127.0.0.1)", Excerpt(path)
        );
    }
}

/// A request let in, at DEBUG: the access log.
pub fn admitted(method: &str, path: &str, device: Option<&str>) {
    let device = device.unwrap_or("-");
    tracing::debug!(
        target: TARGET, tag = "REQUEST>", method, path = %Excerpt(path), device,
        "{method} {}, device: {device}", Excerpt(path)
    );
}

/// Event ids shown in a log line: runs of consecutive ids as `a-b`, separated by `, ` in the
/// order given, at most 200 characters (then `…`), as an [`Excerpt`].
#[derive(Debug, Clone, Copy)]
pub struct Ids<'a>(pub &'a [u64]);

impl fmt::Display for Ids<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = String::new();
        let mut rest = self.0;
        while let Some((&first, _)) = rest.split_first() {
            let run = rest
                .windows(2)
                .take_while(|pair| pair[1] == pair[0] + 1)
                .count();
            if !shown.is_empty() {
                shown.push_str(", ");
            }
            shown.push_str(&match run {
                0 => first.to_string(),
                _ => format!("{first}-{}", rest[run]),
            });
            if shown.len() > EXCERPT_CHARS {
                break;
            }
            rest = &rest[run + 1..];
        }
        Excerpt(&shown).fmt(f)
    }
}

/// Text shown in a log line: one line, at most 200 characters, control characters
/// escaped, so no body can forge a log line. Written straight into the line, never copied first.
#[derive(Debug, Clone, Copy)]
pub struct Excerpt<'a>(pub &'a str);

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        // Nearly always: a short line with no control character (C0, DEL, or C1, whose UTF-8
        // encodings start with 0xC2), written as it is.
        let bytes = self.0.as_bytes();
        if bytes.len() <= EXCERPT_CHARS
            && bytes.iter().all(|&b| b >= 0x20 && b != 0x7f && b != 0xc2)
        {
            return f.write_str(self.0);
        }
        // Plain runs are written whole; only control characters are written one by one.
        let mut run_start = 0;
        for (i, (at, c)) in self.0.char_indices().enumerate() {
            if i == EXCERPT_CHARS {
                f.write_str(&self.0[run_start..at])?;
                return f.write_char('…');
            }
            if c.is_control() {
                f.write_str(&self.0[run_start..at])?;
                write!(f, "{}", c.escape_default())?;
                run_start = at + c.len_utf8();
            }
        }
        f.write_str(&self.0[run_start..])
    }
}

#[cfg(test)]
mod tests {
    use super::{Excerpt, Ids};

    #[test]
    fn ids_are_shown_as_runs() {
        assert_eq!(Ids(&[1, 2, 3, 5, 9, 10, 4]).to_string(), "1-3, 5, 9-10, 4");
        assert_eq!(Ids(&[7]).to_string(), "7");
        assert_eq!(Ids(&[]).to_string(), "");
        let many: Vec<u64> = (1..1000).step_by(2).collect();
        let shown = Ids(&many).to_string();
        assert!(
            shown.ends_with('…') && shown.chars().count() == 201,
            "{shown}"
        );
    }

    #[test]
    fn excerpts_are_one_safe_line() {
        assert_eq!(Excerpt("a\nb\r\x1b[31m").to_string(), "a\\nb\\r\\u{1b}[31m");
        assert_eq!(Excerpt(&"x".repeat(300)).to_string().chars().count(), 201);
        assert_eq!(
            Excerpt(&"é".repeat(300)).to_string(),
            format!("{}…", "é".repeat(200))
        );
        assert_eq!(Excerpt("plain").to_string(), "plain");
        assert_eq!(Excerpt("c1 \u{85} and ¢").to_string(), "c1 \\u{85} and ¢");
    }
}
