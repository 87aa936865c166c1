//! The error answer: every failure a request can meet becomes an [`ApiError`], a status and a
//! stable code, written as [`pere_proto::wire::ErrorBody`] in one place ([`crate::response`]).

use hyper::StatusCode;
use pere_core::{NameError, StoreError};
use pere_proto::wire::ErrorBody;

/// An error answer on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
    /// For 405: the methods the path answers (the `Allow` header).
    pub allow: Option<&'static str>,
    /// For 503 and 429: seconds after which to try again (the `Retry-After` header).
    pub retry_after: Option<u64>,
    /// For 401: the `WWW-Authenticate` challenge.
    pub challenge: Option<&'static str>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
            retry_after: None,
            challenge: None,
        }
    }

    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for a path that names nothing.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "This is nowhere to be found.",
        )
    }

    /// 405 for a path that answers only `allowed`.
    pub fn method_not_allowed(path: &str, allowed: &'static str) -> Self {
        ApiError {
            allow: Some(allowed),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} answers only {allowed}"),
            )
        }
    }

    /// 401 for a request without a token where one is needed.
    pub fn missing_token(message: impl Into<String>) -> Self {
        ApiError {
            challenge: Some("Bearer realm=\"pere\""),
            ..Self::new(StatusCode::UNAUTHORIZED, "missing_token", message)
        }
    }

    /// 401 for a token that is not valid; never says which check failed.
    pub fn invalid_token() -> Self {
        ApiError {
            challenge: Some("Bearer realm=\"pere\", error=\"invalid_token\""),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the token is not valid",
            )
        }
    }

    /// 401 for a token past its expiry.
    pub fn expired_token() -> Self {
        ApiError {
            challenge: Some(
                "Bearer realm=\"pere\", error=\"invalid_token\", error_description=\"expired\"",
            ),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "expired_token",
                "the token has expired",
            )
        }
    }

    /// 403 for what the caller may not do.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 403 for a change (a push, a receipt, a device's registration) that a page of another
    /// site sent with credentials the browser adds by itself (the token cookie, or its place on
    /// this machine or network): cross-site request forgery.
    pub fn cross_origin(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "cross_origin", message)
    }

    /// 403 for a device named in the request that is not the token's.
    pub fn device_mismatch(named: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "device_mismatch",
            format!("the token speaks for another device than {named}"),
        )
    }

    /// 421 for a request the protected mode does not answer: it is addressed (`Host`,
    /// `:authority`) to a name that is not this machine's.
    pub fn unknown_host() -> Self {
        Self::new(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            "PERE is in protected mode: it answers requests addressed to this machine (localhost, \
             127.0.0.1, [::1]) and to the names given with --allowed-host; if this name is the \
             machine's own, start the server with --allowed-host NAME",
        )
    }

    /// 413 for a body over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    }

    /// 400 for an invalid name, with a code per kind of name.
    pub fn name(err: NameError) -> Self {
        let code = match err.kind {
            pere_proto::error::NameKind::Channel => "bad_channel",
            pere_proto::error::NameKind::Device => "bad_device",
            pere_proto::error::NameKind::EventType => "bad_event_type",
        };
        Self::bad_request(code, err.to_string())
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, &self.message)
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
            StoreError::UnknownEvent { id } => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_event",
                format!("no event with id {id} on this channel"),
            ),
            StoreError::InvalidIdempotencyKey => {
                ApiError::bad_request("bad_idempotency_key", err.to_string())
            }
            StoreError::IdempotencyConflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                err.to_string(),
            ),
            // Recorded, but a failover may lose it: the same idempotency key makes a retry
            // safe, and finds it if it is still there.
            StoreError::Unreplicated { .. } => {
                tracing::warn!("storage: {err}");
                ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not_replicated",
                        "Recorded, but not confirmed by enough of the store's replicas in time: a failover may lose it. Retry with the same Idempotency-Key.",
                    )
                }
            }
            // The server's fault, and a lasting one: asking again does not help, an operator's
            // repair does. (Not 410: nothing removed the event on purpose.)
            StoreError::EventDamaged { id } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "event_damaged",
                format!("event {id} is damaged in the server's store and cannot be read"),
            ),
            // Nothing was written: the node adopts the store first, so a retry a moment later
            // is answered with an id never handed out before.
            StoreError::Changed { .. } => {
                tracing::warn!("storage: {err}");
                ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_changed",
                        "The event store changed under this server (it lost its data, or is another one); nothing was stored. Retry in a moment.",
                    )
                }
            }
            // Internals stay in the server log; the client learns only that storage failed.
            other => {
                tracing::error!("storage: {other}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "Sorry there was a nasty error - the event store is unavailable",
                )
            }
        }
    }
}
