//! The HTTP error answer: every failure becomes a status and a JSON body
//! `{"error": {"code", "message"}, "message"}` with a stable code. (`message` at the top level
//! is the original PERE's error shape, kept for its clients.)

use hyper::StatusCode;
use pere_core::{NameError, StoreError};

/// An error answer on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for a path that names nothing.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "This is nowhere to be found.")
    }

    /// 400 for an invalid name, with a code per kind of name.
    pub fn name(err: NameError) -> Self {
        let code = match err.kind {
            pere_core::error::NameKind::Channel => "bad_channel",
            pere_core::error::NameKind::Device => "bad_device",
            pere_core::error::NameKind::EventType => "bad_event_type",
        };
        Self::bad_request(code, err.to_string())
    }

    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "code": self.code, "message": self.message },
            "message": self.message,
        })
    }
}

impl From<NameError> for ApiError {
    fn from(err: NameError) -> Self {
        ApiError::name(err)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::UnknownEvent { id } => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_event", format!("no event with id {id} on this channel"))
            }
            // Internals stay in the server log; the client learns only that storage failed.
            other => {
                eprintln!("ERROR> storage: {other}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "Sorry there was a nasty error - the event store is unavailable",
                )
            }
        }
    }
}
