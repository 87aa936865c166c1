//! The library's error: what went wrong with a push, a receipt or a subscription, by kind, so a
//! program can tell "fix the request" from "the server said no" from "try again later".

use std::fmt;

use pere_proto::wire::ErrorBody;
use reqwest::StatusCode;

use crate::output::describe_answer;

/// Why a request failed for good.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The request could not be made as asked: a name the server would refuse, a server address
    /// that is not `http://`, a value that cannot travel in a header, a receipt without a device.
    /// Nothing was sent.
    Invalid(String),
    /// The server refused the request for good (a 4xx answer other than 408 and 429), or answered
    /// in a way that is not PERE's protocol: sending it again cannot help.
    Refused(Refusal),
    /// Every attempt failed in a way that might have passed (no answer, 5xx, 408, 429).
    GaveUp {
        /// How many attempts failed.
        attempts: u32,
        /// Why the last one failed, in one line.
        last: String,
    },
}

impl Error {
    /// The server's error code (`bad_channel`, `idempotency_conflict`, …) when it refused the
    /// request with PERE's JSON error body.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Refused(refusal) => refusal.code.as_deref(),
            _ => None,
        }
    }

    /// What went wrong in one line, without the kind: the server's answer for a refusal, the last
    /// failure for attempts that ran out.
    pub fn reason(&self) -> &str {
        match self {
            Error::Invalid(why) => why,
            Error::Refused(refusal) => &refusal.message,
            Error::GaveUp { last, .. } => last,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(why) => f.write_str(why),
            Error::Refused(refusal) => write!(f, "refused: {}", refusal.message),
            Error::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} failed attempts: {last}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// A refusal: the server's status and error code when it gave them, and one line saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status; `None` when the request never reached the server (it could not be built).
    pub status: Option<u16>,
    /// The error code of PERE's JSON error body (`bad_channel`, `body_too_large`, …).
    pub code: Option<String>,
    /// One line: `HTTP 400 bad_channel: <message>`, or what else went wrong.
    pub message: String,
}

impl Refusal {
    /// The refusal an error answer makes.
    pub fn answer(status: StatusCode, body: &str) -> Self {
        let code = serde_json::from_str::<ErrorBody>(body)
            .ok()
            .map(|b| b.error.code);
        Refusal {
            status: Some(status.as_u16()),
            code,
            message: describe_answer(status, body),
        }
    }

    /// A refusal with only a message (a request that cannot be built, an answer that is not
    /// PERE's).
    pub fn other(status: Option<StatusCode>, message: impl Into<String>) -> Self {
        Refusal {
            status: status.map(|s| s.as_u16()),
            code: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_code() {
        let body =
            r#"{"error":{"code":"idempotency_conflict","message":"key reused"},"message":"x"}"#;
        let err = Error::Refused(Refusal::answer(StatusCode::CONFLICT, body));
        assert_eq!(err.code(), Some("idempotency_conflict"));
        assert_eq!(err.reason(), "HTTP 409 idempotency_conflict: key reused");
        let other = Refusal::answer(StatusCode::NOT_FOUND, "nope");
        assert_eq!((other.status, other.code.as_deref()), (Some(404), None));
        let gave_up = Error::GaveUp {
            attempts: 3,
            last: "HTTP 503".into(),
        };
        assert_eq!(
            gave_up.to_string(),
            "gave up after 3 failed attempts: HTTP 503"
        );
    }
}
