//! What the user sees: stdout lines flushed one by one, and failures described in one line.

use std::error::Error as _;
use std::fmt;
use std::io::Write;

use pere_proto::wire::ErrorBody;
use reqwest::StatusCode;

/// Prints one line on stdout and flushes it at once: stdout is often a pipe read line by line (by
/// tests, by `grep`), and a line stuck in a buffer is a line that never happened.
///
/// When the reader has gone (a closed pipe) there is no one left to tell: the process ends quietly.
pub fn line(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if written.is_err() {
        std::process::exit(0);
    }
}

/// `println!` through [`line()`].
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// Describes an error answer: `HTTP 400 bad_channel: <message>` from the server's JSON error body,
/// or the status and the start of whatever else it sent.
pub fn describe_answer(status: StatusCode, body: &str) -> String {
    if let Ok(ErrorBody { error, .. }) = serde_json::from_str::<ErrorBody>(body) {
        return format!("HTTP {} {}: {}", status.as_u16(), error.code, error.message);
    }
    let body = body.trim();
    if body.is_empty() {
        return format!("HTTP {status}");
    }
    let short: String = body.chars().take(200).collect();
    format!("HTTP {status}: {short}")
}

/// Describes a transport failure in one line: what failed and its root cause
/// (`error sending request: Connection refused (os error 111)`), without the URL, which the
/// caller's message already names.
pub fn describe_transport(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut root: Option<&(dyn std::error::Error + 'static)> = None;
    let mut source = err.source();
    while let Some(cause) = source {
        root = Some(cause);
        source = cause.source();
    }
    match root {
        Some(root) => format!("{err}: {root}"),
        None => err.to_string(),
    }
}

/// A command-line usage error, which clap renders in several lines (the error, tips, the usage,
/// a pointer to `--help`), in one line: `TOOL: <error>; <tip> (see TOOL --help)`.
pub fn usage_line(tool: &str, rendered: &str) -> String {
    let mut text = String::new();
    let (mut in_usage, mut listing) = (false, false);
    for line in rendered.lines().map(str::trim) {
        in_usage = (in_usage || line.starts_with("Usage:")) && !line.is_empty();
        if in_usage || line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        // The lines after one ending in `:` are a list (`<SERVER>`, `<CHANNEL>`).
        let separator = match () {
            () if text.is_empty() => "",
            () if text.ends_with(':') => " ",
            () if listing && !line.starts_with("tip:") => ", ",
            () => "; ",
        };
        listing = text.ends_with(':') || (listing && separator == ", ");
        text.push_str(separator);
        text.push_str(line.strip_prefix("error: ").unwrap_or(line));
    }
    format!("{tool}: {text} (see {tool} --help)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_in_one_line() {
        let clap = "error: unexpected argument '--cuont' found\n\n  tip: a similar argument exists: '--count'\n\n\
                    Usage: pere-sub --count <N> <SERVER>\n       <CHANNEL>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line("pere-sub", clap),
            "pere-sub: unexpected argument '--cuont' found; tip: a similar argument exists: '--count' \
             (see pere-sub --help)"
        );
        let missing = "error: the following required arguments were not provided:\n  <SERVER>\n  <CHANNEL>\n\n\
                       Usage: pere-sub <SERVER> <CHANNEL>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line("pere-sub", missing),
            "pere-sub: the following required arguments were not provided: <SERVER>, <CHANNEL> (see pere-sub --help)"
        );
    }

    #[test]
    fn error_answers() {
        let body =
            r#"{"error":{"code":"bad_channel","message":"invalid channel name"},"message":"x"}"#;
        assert_eq!(
            describe_answer(StatusCode::BAD_REQUEST, body),
            "HTTP 400 bad_channel: invalid channel name"
        );
        assert_eq!(
            describe_answer(StatusCode::BAD_GATEWAY, ""),
            "HTTP 502 Bad Gateway"
        );
        assert_eq!(
            describe_answer(StatusCode::NOT_FOUND, "nope\n"),
            "HTTP 404 Not Found: nope"
        );
    }
}
