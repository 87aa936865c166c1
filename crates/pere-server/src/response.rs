//! Everything the server answers with: the one body type, JSON answers, error answers, the SSE
//! response head (written here once, for hyper responses and dedicated feed connections alike)
//! and the CORS headers.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::config::Config;
use crate::error::ApiError;

/// The one response body type: a full body or an SSE stream.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// An answer, or the error that takes its place.
pub type Answer = Result<Response<ResponseBody>, ApiError>;

/// A body of the given bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    Empty::new().boxed_unsync()
}

/// A JSON answer, pretty-printed as the original's admin views were.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response<ResponseBody> {
    json_bytes(status, serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec()))
}

/// A compact JSON answer, for the hot paths (push and feedback answers).
pub fn compact_json(status: StatusCode, value: &impl Serialize) -> Response<ResponseBody> {
    json_bytes(status, serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The bytes of an error's JSON body.
pub fn error_body(err: &ApiError) -> Vec<u8> {
    serde_json::to_vec_pretty(&err.body()).unwrap_or_default()
}

/// The answer for an error: its status, its JSON body, and its headers.
pub fn error(err: &ApiError) -> Response<ResponseBody> {
    let mut response = json_bytes(err.status, error_body(err));
    error_headers(err, response.headers_mut());
    response
}

/// The headers an error answer carries: `Allow` for a 405, `Retry-After` when the client may
/// try again later, and `Connection: close` after a body too large to read.
pub fn error_headers(err: &ApiError, headers: &mut HeaderMap) {
    if let Some(allowed) = err.allow {
        headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    if let Some(seconds) = err.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if err.status == StatusCode::PAYLOAD_TOO_LARGE {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// A static page.
pub fn html(page: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::from_static(page.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The head of every SSE answer: the type, no caching, and no buffering by proxies (nginx obeys
/// `X-Accel-Buffering`).
pub const SSE_HEADERS: [(HeaderName, &str); 3] = [
    (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
    (header::CACHE_CONTROL, "no-cache"),
    (HeaderName::from_static("x-accel-buffering"), "no"),
];

/// An SSE answer with `body` as its stream.
pub fn sse(body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    for (name, value) in SSE_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A response head as HTTP/1.1 bytes, for connections served without hyper: the status line,
/// `headers`, `extra` and the blank line.
pub fn raw_head(status: StatusCode, headers: &[(HeaderName, &str)], extra: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let pairs = headers.iter().map(|(n, v)| (n, v.as_bytes())).chain(extra.iter().map(|(n, v)| (n, v.as_bytes())));
    for (name, value) in pairs {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Adds the CORS headers an allowed origin gets.
pub fn add_cors(config: &Config, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let Some(origin) = origin else { return };
    if !origin.to_str().is_ok_and(|o| config.origin_allowed(o)) {
        return;
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, device, event, last-event-id, last_event_id, authorization"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_heads_are_http_1_1() {
        let mut extra = HeaderMap::new();
        extra.insert(header::VARY, HeaderValue::from_static("Origin"));
        let head = raw_head(StatusCode::OK, &SSE_HEADERS, &extra);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n\
             x-accel-buffering: no\r\nvary: Origin\r\n\r\n"
        );
    }
}
