//! Reading requests: the query string (parsed once), names, the device (read one way), the resume
//! position, bodies under the size limit, and the parts of a receipt wherever a client put them.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::StatusCode;
use pere_core::{ChannelName, DeviceId, EventType, WaitFor};
use pere_proto::event::{valid_idempotency_key, MAX_IDEMPOTENCY_KEY_LEN};
use pere_proto::wire::FeedbackRequest;
use serde_json::Value;

use crate::config::parse_duration;
use crate::error::ApiError;
use crate::framing::Declared;

/// A request's query string, decoded once.
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes `?a=1&b=2` (without the `?`); no query is an empty one.
    pub fn parse(query: Option<&str>) -> Self {
        Query(
            query
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    /// The first value of any of `names`.
    pub fn get(&self, names: &[&str]) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.as_str())
    }
}

// Header names known up front: a lookup by `&str` parses the name again on every request.
const DEVICE: HeaderName = HeaderName::from_static("device");
const EVENT: HeaderName = HeaderName::from_static("event");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
const LAST_EVENT_ID_ORIGINAL: HeaderName = HeaderName::from_static("last_event_id");

/// The name of a header PERE reads that `http` does not know, from its bytes in any case:
/// known, it is not allocated anew for each request.
pub fn known_header(name: &[u8]) -> Option<HeaderName> {
    let known = match name.len() {
        5 => EVENT,
        6 => DEVICE,
        13 if name[4] == b'_' => LAST_EVENT_ID_ORIGINAL,
        13 => LAST_EVENT_ID,
        15 => IDEMPOTENCY_KEY,
        _ => return None,
    };
    name.eq_ignore_ascii_case(known.as_str().as_bytes())
        .then_some(known)
}

fn header_text<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Cow<'h, str>> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
}

/// The value of a header or, for clients that cannot set headers (a browser's EventSource), of a
/// query parameter.
fn header_or_query(
    headers: &HeaderMap,
    query: &Query,
    header: &HeaderName,
    names: &[&str],
) -> Option<String> {
    header_text(headers, header)
        .map(Cow::into_owned)
        .or_else(|| query.get(names).map(str::to_owned))
}

/// A channel name from a path segment.
///
/// # Errors
/// 400 `bad_channel`.
pub fn channel(raw: &str) -> Result<ChannelName, ApiError> {
    Ok(ChannelName::new(raw)?)
}

fn device_id(raw: Option<&str>) -> Result<Option<DeviceId>, ApiError> {
    raw.map(|d| DeviceId::new(d.trim()))
        .transpose()
        .map_err(ApiError::from)
}

/// Who the request says it comes from: the `device` header, else `?device=`. Both are checked
/// when both are given: a bad id is refused wherever it is, as the OpenAPI document says of each.
///
/// # Errors
/// 400 `bad_device` for an id that is not a valid device id.
pub fn device(headers: &HeaderMap, query: &Query) -> Result<Option<DeviceId>, ApiError> {
    let header = device_id(header_text(headers, &DEVICE).as_deref())?;
    let query = device_id(query.get(&["device"]))?;
    Ok(header.or(query))
}

/// The event type of a push: `?event=`, else the `event` header. Both are checked when both
/// are given: a bad type is refused wherever it is, as the OpenAPI document says of each.
///
/// # Errors
/// 400 `bad_event_type`.
pub fn event_type(headers: &HeaderMap, query: &Query) -> Result<Option<EventType>, ApiError> {
    let header = header_text(headers, &EVENT)
        .map(|t| EventType::new(t.as_ref()))
        .transpose()?;
    let query = query.get(&["event"]).map(EventType::new).transpose()?;
    Ok(query.or(header))
}

/// Where a stream resumes: the `Last-Event-ID` header or `?lastEventId=`, as a number, and as the
/// client sent it (for the device record).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// The position; a number too large for an id is beyond every id (`u64::MAX`: a feed gets
    /// `pere-reset`, as for any position beyond the head); anything that is not a number (an
    /// original PERE timestamp) counts as none.
    pub after: Option<u64>,
    /// The value as sent.
    pub raw: Option<String>,
}

/// The longest resume position taken, in bytes: ids are numbers, and the original PERE's
/// timestamps are about 20 characters. The value is kept in the device record.
pub const MAX_RESUME_LEN: usize = 64;

/// The `Idempotency-Key` header of a push: 1 to 255 visible ASCII characters, or none.
///
/// # Errors
/// 400 `bad_idempotency_key` for any other value.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if valid_idempotency_key(key) => Ok(Some(key.to_owned())),
        _ => Err(ApiError::bad_request(
            "bad_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ),
        )),
    }
}

/// The resume position of a stream request.
///
/// # Errors
/// 400 `bad_event_id` for a value longer than [`MAX_RESUME_LEN`].
pub fn resume(headers: &HeaderMap, query: &Query) -> Result<Resume, ApiError> {
    let raw = header_or_query(
        headers,
        query,
        &LAST_EVENT_ID,
        &["lastEventId", "last_event_id"],
    );
    if raw.as_ref().is_some_and(|r| r.len() > MAX_RESUME_LEN) {
        return Err(ApiError::bad_request(
            "bad_event_id",
            format!("Last-Event-ID is longer than {MAX_RESUME_LEN} bytes"),
        ));
    }
    Ok(Resume {
        after: raw.as_deref().and_then(position),
        raw,
    })
}

/// A resume position as a number: digits too many for an id are beyond every id the server
/// gives, never "no position" (which would replay the history as if the client were new).
fn position(raw: &str) -> Option<u64> {
    match raw.trim().parse::<u64>() {
        Ok(id) => Some(id),
        Err(err) if *err.kind() == std::num::IntErrorKind::PosOverflow => Some(u64::MAX),
        Err(_) => None,
    }
}

/// An event id from a path segment or a field.
///
/// # Errors
/// 400 `bad_event_id`.
pub fn event_id(raw: &str) -> Result<u64, ApiError> {
    raw.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "bad_event_id",
            format!("`{raw}` is not an event id of this server"),
        )
    })
}

/// `?limit=`: how many items a view shows, `default` without it, never more than `max` (a number
/// too large for this machine's integers is as good as `max`).
///
/// # Errors
/// 400 `bad_limit`.
pub fn limit(query: &Query, default: usize, max: usize) -> Result<usize, ApiError> {
    match query.get(&["limit"]) {
        Some(raw) if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(raw.parse::<usize>().map_or(max, |n| n.min(max)))
        }
        Some(_) => Err(ApiError::bad_request("bad_limit", "limit must be a number")),
        None => Ok(default),
    }
}

/// `?after=`: a position to list from (0 without it).
///
/// # Errors
/// 400 `bad_event_id`.
pub fn after(query: &Query) -> Result<u64, ApiError> {
    query.get(&["after"]).map_or(Ok(0), event_id)
}

/// Bytes of a too-large body read and thrown away before the 413 is sent: a client that is
/// still writing its body reads the answer instead of a reset. Past it, the connection closes.
const DRAIN_LIMIT: u64 = 8 * 1024 * 1024;
/// How long draining a too-large body may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// A request's body: as hyper hands it over, with what its connection saw it declare (the chunks
/// of an HTTP/1.1 chunked body, see [`crate::framing`]), or already read whole (a small request
/// served without hyper, see [`crate::receipt_post`]).
#[derive(Debug)]
pub struct RequestBody(Source);

#[derive(Debug)]
enum Source {
    Incoming {
        incoming: Incoming,
        /// The connection's declarations and this request's number among them.
        declared: Option<(Declared, u64)>,
    },
    Whole(Bytes),
    /// A body that did not arrive whole within its time, read before the request was handed on.
    Late,
}

impl RequestBody {
    /// `incoming`, the `request`-th of a connection whose declarations are `declared` (none on
    /// HTTP/2, whose bodies declare their length in the head if at all).
    pub fn new(incoming: Incoming, declared: Option<(Declared, u64)>) -> Self {
        RequestBody(Source::Incoming { incoming, declared })
    }

    /// A body read whole before its request was handed on.
    pub fn whole(bytes: Bytes) -> Self {
        RequestBody(Source::Whole(bytes))
    }

    /// A body that did not arrive within the body timeout while its request was read: reading
    /// it answers 408 at once, the time being spent already.
    pub fn late() -> Self {
        RequestBody(Source::Late)
    }
}

/// Completes once the chunks of a body declare more than `limit` bytes, with their total.
async fn declares_beyond(declared: &Option<(Declared, u64)>, limit: u64) -> u64 {
    match declared {
        Some((declared, request)) => declared.beyond(*request, limit).await,
        None => std::future::pending().await,
    }
}

/// Reads a whole request body of at most `limit` bytes, within `timeout`.
///
/// # Errors
/// 413 `body_too_large` for a body longer than `limit`, at once when its `Content-Length` or its
/// chunks say so; 408 `body_timeout` for a body not sent in time; 400 `body_unreadable` when the
/// client stops midway.
pub async fn body(
    headers: &HeaderMap,
    body: RequestBody,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let (mut body, chunks) = match body.0 {
        Source::Incoming { incoming, declared } => (incoming, declared),
        Source::Whole(bytes) if bytes.len() > limit => return Err(ApiError::too_large(limit)),
        Source::Whole(bytes) => return Ok(bytes),
        Source::Late => return Err(body_late(timeout)),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|n| *n > limit as u64) {
        return too_large(&mut body, declared, limit).await;
    }
    let read = async {
        let mut bytes = BytesMut::new();
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                // Chunks that declare more than the limit: refused at once, as a Content-Length
                // is, rather than waited for until the body timeout.
                declared = declares_beyond(&chunks, limit as u64) => {
                    return Ok(Received::TooLarge(declared))
                }
            };
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|_| {
                ApiError::bad_request("body_unreadable", "the request body could not be read")
            })?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            if bytes.len() + data.len() > limit {
                return Ok(Received::TooLarge(0));
            }
            bytes.extend_from_slice(data);
        }
        Ok(Received::Whole(bytes.freeze()))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Received::Whole(bytes))) => Ok(bytes),
        // Read on within the drain's own bounds, not the body's, and refused.
        Ok(Ok(Received::TooLarge(declared))) => too_large(&mut body, declared, limit).await,
        Ok(Err(err)) => Err(err),
        Err(_) => Err(body_late(timeout)),
    }
}

/// The refusal of a body that did not arrive within `timeout`.
fn body_late(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {} s",
            timeout.as_secs()
        ),
    )
}

/// What reading a body came to, within its time.
enum Received {
    /// The whole body.
    Whole(Bytes),
    /// More than the limit, declared by its chunks (that many bytes), or sent (0).
    TooLarge(u64),
}

/// The refusal of a body over `limit` that declares `declared` bytes (0: unknown): what the
/// client still sends is read and dropped first when it may be sent at all (up to
/// [`DRAIN_LIMIT`]), so that it reads the answer rather than a reset.
async fn too_large(body: &mut Incoming, declared: u64, limit: usize) -> Result<Bytes, ApiError> {
    if declared <= DRAIN_LIMIT {
        drain(body).await;
    }
    Err(ApiError::too_large(limit))
}

/// Reads and drops what is left of a body, up to [`DRAIN_LIMIT`] bytes and [`DRAIN_TIME`].
async fn drain(body: &mut Incoming) {
    let discard = async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// What a request body is declared as, by its `Content-Type` (parameters ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json` or any `+json` type: the body must parse.
    Json,
    /// `application/x-ndjson`: a batch of events, one per line.
    Ndjson,
    /// Anything else, or nothing: text.
    Other,
}

/// The declared kind of the request's body, read once, without allocating.
pub fn body_kind(headers: &HeaderMap) -> BodyKind {
    let Some(essence) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
    else {
        return BodyKind::Other;
    };
    let ends_with = |suffix: &str| {
        essence.len() >= suffix.len()
            && essence.is_char_boundary(essence.len() - suffix.len())
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    if essence.eq_ignore_ascii_case("application/json") || ends_with("+json") {
        BodyKind::Json
    } else if essence.eq_ignore_ascii_case("application/x-ndjson") {
        BodyKind::Ndjson
    } else {
        BodyKind::Other
    }
}

/// Whether the body is declared as JSON (`application/json` or any `+json` type).
pub fn is_json(headers: &HeaderMap) -> bool {
    body_kind(headers) == BodyKind::Json
}

/// Whether header `name` says `value` (ASCII case and surrounding spaces ignored).
pub fn header_is(headers: &HeaderMap, name: &str, value: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// `?wait=all|N&timeout=5s`: what a publisher waits for, and how long (capped by `max_wait`).
///
/// # Errors
/// 400 `bad_wait` or `bad_timeout` (a bad timeout even without `wait`: a mistyped one is told,
/// never ignored, as the OpenAPI document says).
pub fn push_wait(
    query: &Query,
    max_wait: Duration,
) -> Result<Option<(WaitFor, Duration)>, ApiError> {
    let timeout = match query.get(&["timeout"]) {
        Some(t) => parse_duration(t).map_err(|m| ApiError::bad_request("bad_timeout", m))?,
        None => Duration::from_secs(5),
    };
    let Some(wait) = query.get(&["wait"]) else {
        return Ok(None);
    };
    let wait = match wait {
        "all" => WaitFor::All,
        // More devices than this machine can count are more than will ever acknowledge.
        n if !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && n.bytes().any(|b| b != b'0') =>
        {
            WaitFor::AtLeast(n.parse::<usize>().unwrap_or(usize::MAX))
        }
        _ => {
            return Err(ApiError::bad_request(
                "bad_wait",
                "wait must be `all` or a number of devices",
            ))
        }
    };
    Ok(Some((wait, timeout.min(max_wait))))
}

/// The parts of a receipt, from wherever the client put them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReceiptParts {
    /// The acknowledging device, when the body names it.
    pub device: Option<String>,
    /// The event id, as sent.
    pub id: Option<String>,
    /// A cumulative receipt's last id, as sent (JSON only).
    pub upto: Option<String>,
    /// The status.
    pub status: Option<String>,
}

/// Finds a receipt's parts in the body (JSON, or a form as the original clients send), then in
/// the headers (`last_event_id`, `Last-Event-ID`), then in the query.
///
/// # Errors
/// 400 `invalid_json`, `bad_event_id` or `body_not_utf8`.
pub fn receipt_parts(
    headers: &HeaderMap,
    query: &Query,
    body: &[u8],
) -> Result<ReceiptParts, ApiError> {
    let mut parts = ReceiptParts::default();
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    if is_json(headers) || first.is_some_and(|i| body[i] == b'{') {
        let json: FeedbackRequest = serde_json::from_slice(body).map_err(|err| {
            ApiError::bad_request(
                "invalid_json",
                format!("the receipt is not valid JSON: {err}"),
            )
        })?;
        parts.device = json.device;
        parts.status = json.status;
        let id_text = |value: Option<Value>, name: &str| match value {
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Null) | None => Ok(None),
            Some(_) => Err(ApiError::bad_request(
                "bad_event_id",
                format!("{name} must be a number"),
            )),
        };
        parts.id = id_text(json.id, "id")?;
        parts.upto = id_text(json.upto, "upto")?;
        if parts.id.is_some() && parts.upto.is_some() {
            return Err(ApiError::bad_request(
                "bad_event_id",
                "a receipt names one event (`id`) or every event owed up to one (`upto`), not both",
            ));
        }
    } else {
        let text = std::str::from_utf8(body).map_err(|_| {
            ApiError::bad_request("body_not_utf8", "the receipt body must be UTF-8 text")
        })?;
        for (key, value) in form_urlencoded::parse(text.as_bytes()) {
            match key.as_ref() {
                "status" => parts.status = Some(value.into_owned()),
                "device" => parts.device = Some(value.into_owned()),
                "id" | "last_event_id" | "lastEventId" => parts.id = Some(value.into_owned()),
                _ => {}
            }
        }
    }
    parts.id = parts
        .id
        .or_else(|| header_text(headers, &LAST_EVENT_ID_ORIGINAL).map(Cow::into_owned))
        .or_else(|| header_text(headers, &LAST_EVENT_ID).map(Cow::into_owned))
        .or_else(|| {
            query
                .get(&["id", "lastEventId", "last_event_id"])
                .map(str::to_owned)
        });
    parts.status = parts
        .status
        .or_else(|| query.get(&["status"]).map(str::to_owned));
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn known_header_names_are_found_in_any_case_and_others_are_not() {
        for name in [
            "device",
            "Device",
            "EVENT",
            "Last-Event-ID",
            "last_event_id",
            "Idempotency-Key",
        ] {
            let known = known_header(name.as_bytes());
            assert_eq!(
                known,
                Some(HeaderName::from_bytes(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
        for name in [
            "host",
            "devices",
            "last-event_id",
            "last_event-id",
            "idempotency_key",
            "",
        ] {
            assert_eq!(known_header(name.as_bytes()), None, "{name}");
        }
    }

    fn parts(device: Option<&str>, id: Option<&str>, status: Option<&str>) -> ReceiptParts {
        ReceiptParts {
            device: device.map(Into::into),
            id: id.map(Into::into),
            upto: None,
            status: status.map(Into::into),
        }
    }

    #[test]
    fn every_old_client_receipt_form_is_understood() {
        let none = Query::default();
        let ruby = receipt_parts(
            &headers(&[("device", "H1"), ("last_event_id", "7")]),
            &none,
            b"status=rx+ok",
        )
        .unwrap();
        assert_eq!(
            ruby,
            parts(None, Some("7"), Some("rx ok")),
            "the device comes from the header, read apart"
        );
        let page = receipt_parts(&headers(&[("Last-Event-ID", "8")]), &none, b"status=ok").unwrap();
        assert_eq!(page, parts(None, Some("8"), Some("ok")));
        let json = receipt_parts(
            &headers(&[("content-type", "application/json")]),
            &none,
            br#"{"device":"H2","id":9,"status":"done"}"#,
        )
        .unwrap();
        assert_eq!(json, parts(Some("H2"), Some("9"), Some("done")));
        let query = receipt_parts(
            &HeaderMap::new(),
            &Query::parse(Some("device=H3&id=4")),
            b"",
        )
        .unwrap();
        assert_eq!(query, parts(None, Some("4"), None));
        assert!(receipt_parts(
            &headers(&[("content-type", "application/json")]),
            &none,
            b"{nope"
        )
        .is_err());
    }

    #[test]
    fn a_cumulative_receipt_is_told_by_upto() {
        let json = headers(&[("content-type", "application/json")]);
        let none = Query::default();
        let upto = receipt_parts(
            &json,
            &none,
            br#"{"device":"H2","upto":9,"status":"rx ok"}"#,
        )
        .unwrap();
        assert_eq!(
            upto,
            ReceiptParts {
                upto: Some("9".into()),
                ..parts(Some("H2"), None, Some("rx ok"))
            }
        );
        let both = receipt_parts(&json, &none, br#"{"id":3,"upto":9}"#).unwrap_err();
        assert_eq!(both.code, "bad_event_id");
        let bad = receipt_parts(&json, &none, br#"{"upto":[9]}"#).unwrap_err();
        assert_eq!(bad.code, "bad_event_id");
    }

    #[test]
    fn the_device_is_the_header_else_the_query() {
        let query = Query::parse(Some("device=Q1"));
        assert_eq!(
            device(&headers(&[("device", "H1")]), &query)
                .unwrap()
                .unwrap()
                .as_str(),
            "H1"
        );
        assert_eq!(
            device(&HeaderMap::new(), &query).unwrap().unwrap().as_str(),
            "Q1"
        );
        assert!(device(&HeaderMap::new(), &Query::default())
            .unwrap()
            .is_none());
        assert!(device(&headers(&[("device", "a/b")]), &query).is_err());
    }

    #[test]
    fn limits_are_capped_however_large() {
        let limit_of = |q: &str| limit(&Query::parse(Some(q)), 10, 100);
        assert_eq!(limit_of("limit=5").unwrap(), 5);
        assert_eq!(limit_of("limit=500").unwrap(), 100);
        assert_eq!(
            limit_of("limit=185398064171743221016166400").unwrap(),
            100,
            "past usize is still a number"
        );
        assert_eq!(limit_of("x=1").unwrap(), 10);
        for bad in ["limit=", "limit=-1", "limit=1e3", "limit=+5", "limit= 5"] {
            assert_eq!(limit_of(bad).unwrap_err().code, "bad_limit", "{bad}");
        }
    }

    #[test]
    fn body_kinds_come_from_the_content_type() {
        for (value, kind) in [
            ("application/json", BodyKind::Json),
            ("Application/JSON; charset=utf-8", BodyKind::Json),
            ("application/merge-patch+json", BodyKind::Json),
            ("application/x-ndjson", BodyKind::Ndjson),
            (" application/X-NDJSON ; charset=utf-8", BodyKind::Ndjson),
            ("text/plain", BodyKind::Other),
            ("json", BodyKind::Other),
        ] {
            assert_eq!(
                body_kind(&headers(&[("content-type", value)])),
                kind,
                "{value}"
            );
        }
        assert_eq!(body_kind(&HeaderMap::new()), BodyKind::Other);
    }

    #[test]
    fn resume_positions() {
        let r = resume(&headers(&[("last-event-id", " 12 ")]), &Query::default()).unwrap();
        assert_eq!(
            r,
            Resume {
                after: Some(12),
                raw: Some(" 12 ".into())
            }
        );
        assert!(resume(
            &headers(&[("last-event-id", &"9".repeat(65))]),
            &Query::default()
        )
        .is_err());
        let r = resume(
            &HeaderMap::new(),
            &Query::parse(Some("lastEventId=1700000000.5")),
        )
        .unwrap();
        assert_eq!(r.after, None, "an original PERE timestamp is no position");
        assert_eq!(r.raw.as_deref(), Some("1700000000.5"));
        let huge = "9".repeat(60);
        let r = resume(&headers(&[("last-event-id", &huge)]), &Query::default()).unwrap();
        assert_eq!(r.after, Some(u64::MAX), "beyond every id, not none");
        for none in ["", " ", "-1", "1e3", "0x10"] {
            let r = resume(&headers(&[("last-event-id", none)]), &Query::default()).unwrap();
            assert_eq!(r.after, None, "{none:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_anywhere_get_an_answer_never_a_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            query in ".{0,200}",
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let query = Query::parse(Some(&query));
            let mut headers = HeaderMap::new();
            // Bytes no header can carry never reach the server as a header.
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                for name in ["device", "last-event-id", "last_event_id", "event", "content-type"] {
                    headers.insert(name, value.clone());
                }
            }
            let _ = receipt_parts(&headers, &query, &body);
            let _ = device(&headers, &query);
            let _ = resume(&headers, &query);
            let _ = event_type(&headers, &query);
            let _ = limit(&query, 10, 100);
            let _ = after(&query);
            let _ = push_wait(&query, Duration::from_secs(60));
            let text = String::from_utf8_lossy(&value);
            let _ = channel(&text);
            let _ = event_id(&text);
        }
    }
}
