//! The library's error: what went wrong with a push, a receipt or a subscription, by kind, so a
//! program can tell "fix the request" from "the server said no" from "try again later", with the
//! cause kept as it came (reqwest's error, the server's answer) rather than flattened into text.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use pere_proto::wire::ErrorBody;
use reqwest::StatusCode;

use crate::output::{describe_answer, root_cause, transport_line};

/// Why a request failed for good.
///
/// `Display` gives the whole story in one line, cause included (the tools print it as it is);
/// [`source()`](StdError::source) gives the cause itself, to match on or downcast: a
/// [`reqwest::Error`] when no answer came, an [`ErrorAnswer`] when the server answered with an
/// error.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The request could not be made as asked: a name the server would refuse, a server address
    /// that is neither `http://` nor `https://`, a CA without a certificate, a value that cannot
    /// travel in a header, a receipt without a device.
    /// Nothing was sent.
    Invalid(String),
    /// The server refused the request for good (a 4xx answer other than 408 and 429), or answered
    /// in a way that is not PERE's protocol: sending it again cannot help.
    Refused(Refusal),
    /// Every attempt failed in a way that might have passed (no answer, 5xx, 408, 429).
    GaveUp {
        /// How many attempts failed.
        attempts: u32,
        /// Why the last one failed.
        last: Failure,
    },
}

impl Error {
    /// The server's error code (`bad_channel`, `idempotency_conflict`, `store_unavailable`, …)
    /// when its answer carried PERE's JSON error body: a refusal's, or the last answer of attempts
    /// that ran out.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Invalid(_) => None,
            Error::Refused(refusal) => refusal.code(),
            Error::GaveUp { last, .. } => last.code(),
        }
    }

    /// What went wrong in one line, without the kind: the server's answer for a refusal, the last
    /// failure for attempts that ran out.
    pub fn reason(&self) -> Cow<'_, str> {
        match self {
            Error::Invalid(why) => Cow::Borrowed(why),
            Error::Refused(refusal) => refusal.line(),
            Error::GaveUp { last, .. } => last.line(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(why) => f.write_str(why),
            Error::Refused(refusal) => write!(f, "refused: {refusal}"),
            Error::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} failed attempts: {last}")
            }
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Invalid(_) => None,
            Error::Refused(refusal) => refusal.cause(),
            Error::GaveUp { last, .. } => Some(last.cause()),
        }
    }
}

/// Why an attempt failed in a way that may pass: sending the same request again may work.
///
/// Cheap to clone: when one request carried several receipts, each of them fails with it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Failure {
    /// No answer: the request did not reach the server, or its answer could not be read
    /// (connection refused or reset, a timeout). reqwest's error, without the URL, which the
    /// caller already knows.
    Transport(Arc<reqwest::Error>),
    /// The server answered "not now": a 5xx, 408 or 429 (for a feed, also a redirection, which
    /// the subscriber does not follow).
    Answer(ErrorAnswer),
}

impl Failure {
    /// A transport failure, its URL left out.
    pub fn transport(err: reqwest::Error) -> Self {
        Failure::Transport(Arc::new(err.without_url()))
    }

    /// The error code of the server's answer, if it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Failure::Transport(_) => None,
            Failure::Answer(answer) => answer.code(),
        }
    }

    /// The cause itself: reqwest's error or the server's answer.
    pub fn cause(&self) -> &(dyn StdError + 'static) {
        match self {
            Failure::Transport(err) => &**err,
            Failure::Answer(answer) => answer,
        }
    }

    fn line(&self) -> Cow<'_, str> {
        match self {
            Failure::Transport(err) => Cow::Owned(transport_line(err)),
            Failure::Answer(answer) => Cow::Borrowed(&answer.line),
        }
    }
}

impl fmt::Display for Failure {
    /// One line: `error sending request: Connection refused (os error 111)`,
    /// `HTTP 503 store_unavailable: <message>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

/// A refusal: why sending the request again cannot help.
#[derive(Debug)]
#[non_exhaustive]
pub enum Refusal {
    /// The server said no: a 4xx answer other than 408 and 429.
    Answer(ErrorAnswer),
    /// The request could not be built (e.g. a header value that cannot travel): nothing was
    /// sent. reqwest's error, without the URL.
    Request(reqwest::Error),
    /// The TLS handshake with an `https://` server failed: its certificate is not signed by a
    /// CA this client trusts (a private CA is given with `ca_pem` on the builders), does not
    /// name the host, or the port does not speak TLS. Nothing was sent; trying again fails the
    /// same way. reqwest's error, without the URL; rustls's error is among its causes.
    Tls(reqwest::Error),
    /// A success answer that is not PERE's protocol: a feed that is not an event stream, a batch
    /// push answered as a single one (a server without batches).
    Unexpected {
        /// The answer's status.
        status: StatusCode,
        /// What was wrong with it, in one line (`HTTP 200 …`).
        message: String,
    },
}

impl Refusal {
    /// A request that could not be built, its URL left out.
    pub fn request(err: reqwest::Error) -> Self {
        Refusal::Request(err.without_url())
    }

    /// A TLS handshake that failed, its URL left out.
    pub fn tls(err: reqwest::Error) -> Self {
        Refusal::Tls(err.without_url())
    }

    /// The HTTP status; `None` when the request never reached the server.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Refusal::Answer(answer) => Some(answer.status),
            Refusal::Request(_) | Refusal::Tls(_) => None,
            Refusal::Unexpected { status, .. } => Some(*status),
        }
    }

    /// The error code of PERE's JSON error body (`bad_channel`, `body_too_large`, …), when the
    /// server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Refusal::Answer(answer) => answer.code(),
            Refusal::Request(_) | Refusal::Tls(_) | Refusal::Unexpected { .. } => None,
        }
    }

    /// The cause, where there is one: the server's answer or reqwest's error. An unexpected
    /// answer has none: the refusal itself says what was wrong.
    pub fn cause(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Refusal::Answer(answer) => Some(answer),
            Refusal::Request(err) | Refusal::Tls(err) => Some(err),
            Refusal::Unexpected { .. } => None,
        }
    }

    fn line(&self) -> Cow<'_, str> {
        match self {
            Refusal::Answer(answer) => Cow::Borrowed(&answer.line),
            Refusal::Request(err) => Cow::Owned(transport_line(err)),
            Refusal::Tls(err) => Cow::Owned(format!("TLS handshake failed: {}", root_cause(err))),
            Refusal::Unexpected { message, .. } => Cow::Borrowed(message),
        }
    }
}

impl fmt::Display for Refusal {
    /// One line: `HTTP 400 bad_channel: <message>`, or what else went wrong.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

/// An error answer from the server: its status, the code of PERE's JSON error body when it had
/// one, and one line describing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    status: StatusCode,
    code: Option<String>,
    // Made once, when the answer comes: `reason()` and every print borrow it.
    line: String,
}

impl ErrorAnswer {
    /// The answer `status` with `body`, as it came.
    pub fn new(status: StatusCode, body: &str) -> Self {
        let code = serde_json::from_str::<ErrorBody>(body)
            .ok()
            .map(|b| b.error.code);
        ErrorAnswer {
            status,
            code,
            line: describe_answer(status, body),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code of PERE's JSON error body (`bad_channel`, `store_unavailable`, …), if the
    /// body was one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

impl fmt::Display for ErrorAnswer {
    /// One line: `HTTP 400 bad_channel: <message>` from PERE's JSON error body, or the status and
    /// the start of whatever else the body held.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line)
    }
}

impl StdError for ErrorAnswer {}

#[cfg(test)]
mod tests {
    use super::*;

    const UNAVAILABLE: &str = r#"{"error":{"code":"store_unavailable","message":"down"}}"#;

    #[test]
    fn refusals_keep_the_code() {
        let body =
            r#"{"error":{"code":"idempotency_conflict","message":"key reused"},"message":"x"}"#;
        let err = Error::Refused(Refusal::Answer(ErrorAnswer::new(
            StatusCode::CONFLICT,
            body,
        )));
        assert_eq!(err.code(), Some("idempotency_conflict"));
        assert_eq!(err.reason(), "HTTP 409 idempotency_conflict: key reused");
        assert_eq!(
            err.to_string(),
            "refused: HTTP 409 idempotency_conflict: key reused"
        );
        let other = Refusal::Answer(ErrorAnswer::new(StatusCode::NOT_FOUND, "nope"));
        assert_eq!(
            (other.status(), other.code()),
            (Some(StatusCode::NOT_FOUND), None)
        );
        let gave_up = Error::GaveUp {
            attempts: 3,
            last: Failure::Answer(ErrorAnswer::new(StatusCode::SERVICE_UNAVAILABLE, "")),
        };
        assert_eq!(
            gave_up.to_string(),
            "gave up after 3 failed attempts: HTTP 503 Service Unavailable"
        );
    }

    #[test]
    fn the_source_of_a_gave_up_answer_is_the_answer() {
        let err = Error::GaveUp {
            attempts: 2,
            last: Failure::Answer(ErrorAnswer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE,
            )),
        };
        let answer = err
            .source()
            .and_then(|cause| cause.downcast_ref::<ErrorAnswer>())
            .expect("the answer is the source");
        assert_eq!(
            (answer.status(), answer.code()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable"))
        );
        assert_eq!(err.code(), Some("store_unavailable"));
        assert_eq!(err.reason(), "HTTP 503 store_unavailable: down");
        assert_eq!(
            err.to_string(),
            "gave up after 2 failed attempts: HTTP 503 store_unavailable: down"
        );
    }

    #[tokio::test]
    async fn the_source_of_a_gave_up_transport_failure_is_reqwests_error() {
        // A port that was just free: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/push/C");
        let sent = reqwest::Client::new().post(&url).send().await;
        let err = Error::GaveUp {
            attempts: 1,
            last: Failure::transport(sent.expect_err("nothing listens")),
        };
        let transport = err
            .source()
            .and_then(|cause| cause.downcast_ref::<reqwest::Error>())
            .expect("reqwest's error is the source");
        assert!(transport.is_connect(), "{transport:?}");
        assert_eq!(err.code(), None);
        let text = err.to_string();
        assert!(
            text.starts_with("gave up after 1 failed attempts: error sending request")
                && !text.contains(&url),
            "one line, without the URL: {text}"
        );
    }

    #[test]
    fn a_refusal_has_a_source_where_there_is_a_cause() {
        let bad_header = reqwest::Client::new()
            .get("http://127.0.0.1:1/feed/C")
            .header("device", "a\nb")
            .build()
            .expect_err("a header value cannot hold a line break");
        let unbuildable = Error::Refused(Refusal::request(bad_header));
        let cause = unbuildable.source().expect("reqwest's error");
        assert!(cause
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_builder));
        let answered = Error::Refused(Refusal::Answer(ErrorAnswer::new(
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":"bad_channel","message":"no"}}"#,
        )));
        assert!(answered
            .source()
            .and_then(|cause| cause.downcast_ref::<ErrorAnswer>())
            .is_some());
        let unexpected = Error::Refused(Refusal::Unexpected {
            status: StatusCode::OK,
            message: "HTTP 200 OK with \"text/html\", not an event stream".into(),
        });
        assert!(unexpected.source().is_none());
        assert_eq!(
            unexpected.to_string(),
            "refused: HTTP 200 OK with \"text/html\", not an event stream"
        );
    }
}
