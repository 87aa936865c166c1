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
    transport_line(&err.without_url())
}

/// [`describe_transport`] for an error the caller keeps: it names the URL if `err` still has one
/// (the library's errors are kept without, by `Failure::transport` and `Refusal::request`).
pub(crate) fn transport_line(err: &reqwest::Error) -> String {
    match root(err) {
        Some(root) => format!("{err}: {root}"),
        None => err.to_string(),
    }
}

/// The innermost cause of `err`, as text (`invalid peer certificate: UnknownIssuer`), or `err`
/// itself when it has none.
pub(crate) fn root_cause(err: &reqwest::Error) -> String {
    root(err).map_or_else(|| err.to_string(), ToString::to_string)
}

fn root(err: &reqwest::Error) -> Option<&(dyn std::error::Error + 'static)> {
    let mut root: Option<&(dyn std::error::Error + 'static)> = None;
    let mut source = err.source();
    while let Some(cause) = source {
        root = Some(cause);
        source = cause.source();
    }
    root
}

/// What the tools add to a failed TLS handshake: which CAs were trusted, and what to give.
pub fn tls_hint(ca_given: bool) -> &'static str {
    if ca_given {
        "the CAs trusted are --ca's: is it the CA that signed the server's certificate, for this host name?"
    } else {
        "the CAs trusted are the system's: give the CA that signed the server's certificate with --ca FILE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
