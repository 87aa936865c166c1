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
    json_bytes(
        status,
        serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// A compact JSON answer, for the hot paths (push and feedback answers).
pub fn compact_json(status: StatusCode, value: &impl Serialize) -> Response<ResponseBody> {
    // Room for a receipt's answer at once (`to_vec` starts at 128 bytes and grows).
    let mut body = Vec::with_capacity(256);
    if serde_json::to_writer(&mut body, value).is_err() {
        body = b"{}".to_vec();
    }
    json_bytes(status, body)
}

/// A compact JSON answer whose text `write` appends: for a value with a writer of its own, on
/// the hottest path (a receipt's answer, `ReceiptJsonRef::write_json`).
pub fn json_written(
    status: StatusCode,
    write: impl FnOnce(&mut Vec<u8>),
) -> Response<ResponseBody> {
    let mut body = Vec::with_capacity(256);
    write(&mut body);
    json_bytes(status, body)
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The bytes of an error's JSON body.
fn error_body(err: &ApiError) -> Vec<u8> {
    serde_json::to_vec_pretty(&err.body()).unwrap_or_default()
}

/// The answer for an error: its status, its JSON body, and its headers.
pub fn error(err: &ApiError) -> Response<ResponseBody> {
    let mut response = json_bytes(err.status, error_body(err));
    error_headers(err, response.headers_mut());
    response
}

/// The headers an error answer carries: `Allow` for a 405, `WWW-Authenticate` for a 401,
/// `Retry-After` when the client may try again later, and `Connection: close` after a body too
/// large to read.
fn error_headers(err: &ApiError, headers: &mut HeaderMap) {
    if let Some(allowed) = err.allow {
        headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    if let Some(challenge) = err.challenge {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    if let Some(seconds) = err.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if err.status == StatusCode::PAYLOAD_TOO_LARGE {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// A file built into the binary (the subscriber page, `pere.js`).
#[derive(Debug)]
pub struct Asset {
    /// The file.
    pub body: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its strong `ETag`, quotes included: see [`etag`].
    pub etag: &'static str,
}

/// A file built into the binary, with its ETag. Browsers keep it and ask again with
/// `If-None-Match` each time (`no-cache`), so a page and its script never come from two versions
/// of the server, and an unchanged file costs a 304.
pub fn asset(asset: &Asset, request: &HeaderMap) -> Response<ResponseBody> {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == asset.etag);
    let mut response = if fresh {
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        Response::new(full(Bytes::from_static(asset.body.as_bytes())))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    response
}

/// A strong ETag for a file built into the binary: its 64-bit FNV-1a hash, in hex and quotes,
/// computed when the server is compiled.
pub const fn etag(body: &str) -> [u8; 18] {
    let bytes = body.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    let mut out = [b'"'; 18];
    let mut digit = 0;
    while digit < 16 {
        let nibble = ((hash >> (60 - 4 * digit)) & 0xf) as u8;
        out[1 + digit] = if nibble < 10 {
            b'0' + nibble
        } else {
            b'a' + nibble - 10
        };
        digit += 1;
    }
    out
}

/// [`etag`]'s bytes as text, for a constant.
pub const fn etag_text(tag: &'static [u8; 18]) -> &'static str {
    match std::str::from_utf8(tag) {
        Ok(text) => text,
        Err(_) => panic!("an ETag is ASCII"),
    }
}

/// A text answer of the given media type.
pub fn text(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The head of every SSE answer: the type, no caching, and no buffering by proxies (nginx obeys
/// `X-Accel-Buffering`).
const SSE_HEADERS: [(HeaderName, &str); 3] = [
    (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
    (header::CACHE_CONTROL, "no-cache"),
    (HeaderName::from_static("x-accel-buffering"), "no"),
];

/// An SSE answer with `body` as its stream.
pub fn sse(body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    for (name, value) in SSE_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A response head as HTTP/1.1 bytes, for connections served without hyper: the status line,
/// `headers` and the blank line.
pub fn raw_head(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_head(&mut out, status, headers, false);
    out.extend_from_slice(b"\r\n");
    out
}

/// A whole answer with a body as HTTP/1.1 bytes: [`raw_head`], its `content-length`, then the
/// body itself.
pub fn raw_answer(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + body.len());
    write_head(&mut out, status, headers, true);
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// An error's whole answer as HTTP/1.1 bytes, for a connection that ends with it (`connection:
/// close`): what is written when a request cannot be read far enough to be answered otherwise.
pub fn raw_error_closing(err: &ApiError) -> Vec<u8> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    error_headers(err, &mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    raw_answer(err.status, &headers, &error_body(err))
}

/// The status line and `headers` (with a `date` unless they have one; without their
/// `content-length` when `own_length`, the caller writing its own), without the blank line.
fn write_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, own_length: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date(|date| out.extend_from_slice(date));
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if own_length && name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Calls `with` with the `Date` of an answer made now (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted
/// once a second per thread, as hyper does for the answers it writes.
fn http_date(with: impl FnOnce(&[u8])) {
    thread_local! {
        static NOW: std::cell::RefCell<(i64, Vec<u8>)> = const { std::cell::RefCell::new((i64::MIN, Vec::new())) };
    }
    NOW.with(|now| {
        let mut now = now.borrow_mut();
        let time = chrono::Utc::now();
        if now.0 != time.timestamp() {
            now.1.clear();
            let formatted = time.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            now.1.extend_from_slice(formatted.as_bytes());
            now.0 = time.timestamp();
        }
        with(&now.1);
    });
}

/// Adds the CORS headers a page of `origin` gets: an origin listed by name gets itself back (and
/// may send credentials: the `pere_token` cookie); with `*` listed, any other origin gets `*`
/// literally (never its own origin reflected, so never credentials); an unlisted origin, or a
/// request without `Origin`, gets nothing. `preflight` adds what an `OPTIONS` answer needs.
pub fn add_cors(
    config: &Config,
    origin: Option<&HeaderValue>,
    preflight: bool,
    headers: &mut HeaderMap,
) {
    if !config.allow_origins.is_empty() && !config.allow_origins.iter().all(|o| o == "*") {
        // The answer depends on the origin: caches must keep them apart.
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    let Some(origin) = origin.and_then(|o| o.to_str().ok()) else {
        return;
    };
    if config.origin_listed(origin) {
        let Ok(value) = HeaderValue::from_str(origin) else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    } else if config.any_origin() {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else {
        return;
    }
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, device, event, last-event-id, last_event_id, authorization, idempotency-key, pere-batch"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
}

/// The origin of a cross-origin request that [`add_cors`] answered without CORS headers (its
/// origin is not listed and `*` is not): the browser keeps the answer from the page, which sees
/// a CORS error while the server, which answered, would have nothing to say. `None` for a
/// request without `Origin`, an allowed one, and a page of the server's own origin (browsers
/// send `Origin` with a same-origin `POST` too): its host and port are the request's `Host`
/// (HTTP/1.1), its authority (HTTP/2), or the `X-Forwarded-Host` a proxy in front set.
pub fn refused_origin<'h>(
    config: &Config,
    headers: &'h HeaderMap,
    authority: Option<&str>,
) -> Option<&'h str> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    if config.any_origin() || config.origin_listed(origin) {
        return None;
    }
    let host = origin.split_once("://").map(|(_, host)| host);
    let own = [
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
        authority,
        headers
            .get("x-forwarded-host")
            .and_then(|h| h.to_str().ok()),
    ];
    if host.is_some_and(|host| {
        own.iter()
            .flatten()
            .any(|own| own.eq_ignore_ascii_case(host))
    }) {
        return None;
    }
    Some(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_origin_is_one_not_allowed_and_not_the_servers_own() {
        let config = |allow: &[&str]| {
            let mut config = Config::defaults();
            config.allow_origins = allow.iter().map(|o| (*o).to_owned()).collect();
            config
        };
        let request = |origin: &str, host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            headers
        };
        let none = config(&[]);
        let page = request("http://localhost:4567", "127.0.0.1:4567");
        assert_eq!(
            refused_origin(&none, &page, None),
            Some("http://localhost:4567"),
            "localhost is not 127.0.0.1"
        );
        let file = request("null", "127.0.0.1:4567");
        assert_eq!(refused_origin(&none, &file, None), Some("null"));
        let own = request("http://127.0.0.1:4567", "127.0.0.1:4567");
        assert_eq!(
            refused_origin(&none, &own, None),
            None,
            "the server's own page"
        );
        let mut h2 = request("https://push.example", "ignored");
        h2.remove(header::HOST);
        assert_eq!(refused_origin(&none, &h2, Some("push.example")), None);
        assert_eq!(
            refused_origin(&config(&["http://localhost:4567"]), &page, None),
            None,
            "a listed origin"
        );
        assert_eq!(refused_origin(&config(&["*"]), &file, None), None);
        assert_eq!(refused_origin(&none, &HeaderMap::new(), None), None);
    }

    fn cors(allow: &[&str], origin: &str, preflight: bool) -> HeaderMap {
        let mut config = Config::defaults();
        config.allow_origins = allow.iter().map(|o| (*o).to_owned()).collect();
        let mut headers = HeaderMap::new();
        add_cors(
            &config,
            Some(&HeaderValue::from_str(origin).unwrap()),
            preflight,
            &mut headers,
        );
        headers
    }

    #[test]
    fn cors_answers_listed_origins_only_and_never_reflects_others() {
        assert!(
            cors(&[], "https://evil.example", true).is_empty(),
            "no cross-origin use by default"
        );
        let listed = cors(&["https://app.example"], "https://app.example", true);
        assert_eq!(listed["access-control-allow-origin"], "https://app.example");
        assert_eq!(listed["access-control-allow-credentials"], "true");
        assert!(listed["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization"));
        let other = cors(&["https://app.example"], "https://evil.example", true);
        assert!(
            other.get("access-control-allow-origin").is_none()
                && other.get("access-control-allow-methods").is_none()
        );
        let any = cors(&["*"], "https://evil.example", false);
        assert_eq!(any["access-control-allow-origin"], "*");
        assert!(
            any.get("access-control-allow-credentials").is_none()
                && any.get("access-control-allow-methods").is_none()
        );
    }

    #[test]
    fn assets_answer_304_to_their_own_etag_only() {
        const BYTES: [u8; 18] = etag("body");
        const TAG: &str = etag_text(&BYTES);
        let tag = TAG;
        let file = Asset {
            body: "body",
            content_type: "text/plain",
            etag: tag,
        };
        let mut request = HeaderMap::new();
        assert_eq!(asset(&file, &request).status(), StatusCode::OK);
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"0\", W/\"x\""),
        );
        assert_eq!(asset(&file, &request).status(), StatusCode::OK);
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"0\", W/{tag}")).unwrap(),
        );
        let cached = asset(&file, &request);
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()["etag"], tag);
        assert_ne!(etag("body"), etag("bodY"));
    }

    #[test]
    fn raw_heads_are_http_1_1() {
        let mut answer = sse(empty());
        answer
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
        let head = String::from_utf8(raw_head(StatusCode::OK, answer.headers())).unwrap();
        let (date, rest) = head
            .strip_prefix("HTTP/1.1 200 OK\r\ndate: ")
            .and_then(|rest| rest.split_once("\r\n"))
            .unwrap_or_else(|| panic!("{head}"));
        assert!(
            chrono::DateTime::parse_from_rfc2822(date).is_ok() && date.ends_with(" GMT"),
            "{date}"
        );
        assert_eq!(
            rest,
            "content-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\n\
             x-accel-buffering: no\r\nvary: Origin\r\n\r\n"
        );
    }

    #[test]
    fn raw_answers_carry_their_own_length_once() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(header::DATE, HeaderValue::from_static("then"));
        let whole = raw_answer(StatusCode::CREATED, &headers, b"{\"ok\":1}");
        assert_eq!(
            String::from_utf8(whole).unwrap(),
            "HTTP/1.1 201 Created\r\ndate: then\r\ncontent-length: 8\r\n\r\n{\"ok\":1}"
        );
    }
}
