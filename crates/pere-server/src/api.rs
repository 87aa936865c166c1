//! The request handlers: each parses its request, calls one core operation and shapes the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use pere_core::event::format_time;
use pere_core::hub::{DeviceView, ReceiptSummary};
use pere_core::receipt::MAX_STATUS_LEN;
use pere_core::wire::{FeedbackRequest, PushAccepted, ReceiptJson};
use pere_core::{ChannelName, DeviceId, EventType, Hub, NewEvent, Store, SubscribeRequest};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ApiError;
use crate::log::Log;
use crate::route::{NoRoute, Route};
use crate::sse_body::SseBody;
use crate::{empty, full, json_response, ConnectionCloser, ResponseBody};

/// The subscriber web page, embedded so the server is one self-contained binary.
pub const SUBSCRIBER_PAGE: &str = include_str!("../assets/subscriber.html");

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState<S: Store> {
    /// The engine.
    pub hub: Arc<Hub<S>>,
    /// The settings.
    pub config: Config,
    /// The activity log.
    pub log: Log,
    /// Cancelled when the server shuts down; feeds watch it to end their streams.
    pub shutdown: CancellationToken,
}

type Answer = Result<Response<ResponseBody>, ApiError>;

/// Serves one request. Never fails: every error becomes a JSON answer.
pub async fn serve<S: Store>(state: Arc<AppState<S>>, request: Request<Incoming>) -> Response<ResponseBody> {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let is_head = request.method() == hyper::Method::HEAD;
    let mut response = match route(&state, request).await {
        Ok(response) => response,
        Err(err) => json_response(err.status, &err.body()),
    };
    if is_head {
        *response.body_mut() = empty();
    }
    add_cors(&state.config, origin, response.headers_mut());
    response
}

async fn route<S: Store>(state: &Arc<AppState<S>>, request: Request<Incoming>) -> Answer {
    let path = request.uri().path().to_owned();
    match Route::parse(request.method(), &path) {
        Ok(Route::Root) => Ok(root(&request)),
        Ok(Route::SubscriberPage) => Ok(page()),
        Ok(Route::Health) => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Ok(Route::Push(channel)) => push(state, channel, request).await,
        Ok(Route::Feed(channel)) => feed(state, channel, &request).await,
        Ok(Route::Feedback(channel)) => feedback(state, channel, request).await,
        Ok(Route::AdminConnections) => Ok(admin_connections(state)),
        Ok(Route::AdminEvents(channel)) => admin_events(state, channel, &request).await,
        Ok(Route::AdminDevices(channel)) => admin_devices(state, channel).await,
        Ok(Route::AdminReceipts(channel, id)) => admin_receipts(state, channel, id).await,
        Ok(Route::Preflight) => Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(empty())
            .expect("static response")),
        Err(NoRoute::NotFound) => Err(ApiError::not_found()),
        Err(NoRoute::MethodNotAllowed(allowed)) => {
            let err = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{path} answers only {allowed}"),
            );
            let mut response = json_response(err.status, &err.body());
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
            Ok(response)
        }
    }
}

fn add_cors(config: &Config, origin: Option<HeaderValue>, headers: &mut HeaderMap) {
    let Some(origin) = origin else { return };
    if !origin.to_str().is_ok_and(|o| config.origin_allowed(o)) {
        return;
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, device, event, last-event-id, last_event_id, authorization"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
}

fn root(request: &Request<Incoming>) -> Response<ResponseBody> {
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html {
        page()
    } else {
        json_response(StatusCode::OK, &json!({"message": "PERE server up and running"}))
    }
}

fn page() -> Response<ResponseBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(full(Bytes::from_static(SUBSCRIBER_PAGE.as_bytes())))
        .expect("static response")
}

/// The value of a header or, for clients that cannot set headers (a browser's EventSource),
/// of a query parameter.
fn header_or_query(request: &Request<Incoming>, header: &str, query: &[&str]) -> Option<String> {
    if let Some(value) = request.headers().get(header) {
        return Some(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    query_param(request, query)
}

fn query_param(request: &Request<Incoming>, names: &[&str]) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| names.contains(&k.as_ref()))
        .map(|(_, v)| v.into_owned())
}

fn channel_name(raw: &str) -> Result<ChannelName, ApiError> {
    Ok(ChannelName::new(raw)?)
}

fn device_id(raw: Option<String>) -> Result<Option<DeviceId>, ApiError> {
    raw.map(|d| DeviceId::new(d.trim())).transpose().map_err(ApiError::from)
}

async fn read_body(request: Request<Incoming>, limit: usize) -> Result<(HeaderMap, Bytes), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok((parts.headers, collected.to_bytes())),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(ApiError::bad_request("body_unreadable", "the request body could not be read")),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "application/json" || v.ends_with("+json"))
}

async fn push<S: Store>(state: &Arc<AppState<S>>, channel: &str, request: Request<Incoming>) -> Answer {
    let channel = channel_name(channel)?;
    let device = device_id(header_or_query(&request, "device", &["device"]))?;
    let event_type = query_param(&request, &["event"])
        .or_else(|| request.headers().get("event").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .map(|t| EventType::new(&t))
        .transpose()?;
    let (headers, body) = read_body(request, state.config.max_body).await?;
    let body = String::from_utf8(body.into())
        .map_err(|_| ApiError::bad_request("body_not_utf8", "the event body must be UTF-8 text"))?;
    if is_json(&headers) {
        if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
            return Err(ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {err}")));
        }
    }
    let event = state.hub.publish(&channel, NewEvent { publisher: device, event_type, body }).await?;
    state.log.push(channel.as_str(), event.publisher.as_ref().map(|d| d.as_str()), event.id, &event.body);
    Ok(json_response(StatusCode::OK, &PushAccepted::from(&*event)))
}

async fn feed<S: Store>(state: &Arc<AppState<S>>, channel: &str, request: &Request<Incoming>) -> Answer {
    let channel = channel_name(channel)?;
    let device = device_id(header_or_query(request, "device", &["device"]))?;
    let raw = header_or_query(request, "last-event-id", &["lastEventId", "last_event_id"]);
    // An id this server never gave (e.g. an original PERE timestamp) is treated as no position.
    let last_event_id = raw.as_deref().and_then(|r| r.trim().parse::<u64>().ok());
    state.log.feed(channel.as_str(), device.as_ref().map(|d| d.as_str()), raw.as_deref());
    let subscription = state
        .hub
        .subscribe(&channel, SubscribeRequest { device, last_event_id, last_event_id_raw: raw })
        .await?;
    let body = SseBody::new(
        subscription,
        state.config.retry_ms,
        Duration::from_secs(state.config.keep_alive_secs.max(1)),
        state.shutdown.clone().cancelled_owned(),
        state.log,
        request.extensions().get::<ConnectionCloser>().cloned(),
    );
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(http_body_util::combinators::UnsyncBoxBody::new(body))
        .expect("static response"))
}

/// The parts of a receipt, from wherever the client put them.
#[derive(Debug, Default)]
struct ReceiptParts {
    device: Option<String>,
    id: Option<String>,
    status: Option<String>,
}

fn receipt_parts(request_headers: &HeaderMap, query: Option<&str>, body: &[u8]) -> Result<ReceiptParts, ApiError> {
    let mut parts = ReceiptParts::default();
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace());
    if is_json(request_headers) || (trimmed.is_some_and(|i| body[i] == b'{')) {
        let json: FeedbackRequest = serde_json::from_slice(body)
            .map_err(|err| ApiError::bad_request("invalid_json", format!("the receipt is not valid JSON: {err}")))?;
        parts.device = json.device;
        parts.status = json.status;
        parts.id = match json.id {
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::String(s)) => Some(s),
            Some(Value::Null) | None => None,
            Some(_) => return Err(ApiError::bad_request("bad_event_id", "id must be a number")),
        };
    } else {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("body_not_utf8", "the receipt body must be UTF-8 text"))?;
        for (key, value) in form_urlencoded::parse(text.as_bytes()) {
            match key.as_ref() {
                "status" => parts.status = Some(value.into_owned()),
                "device" => parts.device = Some(value.into_owned()),
                "id" | "last_event_id" | "lastEventId" => parts.id = Some(value.into_owned()),
                _ => {}
            }
        }
    }
    let header = |name: &str| request_headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let query_value = |names: &[&str]| {
        query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| names.contains(&k.as_ref())).map(|(_, v)| v.into_owned())
        })
    };
    parts.device = parts.device.or_else(|| header("device")).or_else(|| query_value(&["device"]));
    parts.id = parts
        .id
        .or_else(|| header("last_event_id"))
        .or_else(|| header("last-event-id"))
        .or_else(|| query_value(&["id", "lastEventId", "last_event_id"]));
    parts.status = parts.status.or_else(|| query_value(&["status"]));
    Ok(parts)
}

async fn feedback<S: Store>(state: &Arc<AppState<S>>, channel: &str, request: Request<Incoming>) -> Answer {
    let channel = channel_name(channel)?;
    let query = request.uri().query().map(str::to_owned);
    let (headers, body) = read_body(request, state.config.max_body).await?;
    let parts = receipt_parts(&headers, query.as_deref(), &body)?;
    let device = device_id(parts.device)?
        .ok_or_else(|| ApiError::bad_request("missing_device", "a receipt needs the device that sends it"))?;
    let raw_id = parts.id.ok_or_else(|| ApiError::bad_request("missing_event_id", "a receipt needs the event id it acknowledges"))?;
    let event_id: u64 = raw_id
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request("bad_event_id", format!("`{raw_id}` is not an event id of this server")))?;
    // A receipt with no status still says "received": that is what the original clients meant.
    let status = parts.status.unwrap_or_else(|| "ok".to_owned());
    if status.len() > MAX_STATUS_LEN {
        return Err(ApiError::bad_request("status_too_long", format!("status is longer than {MAX_STATUS_LEN} bytes")));
    }
    let (receipt, _) = state.hub.acknowledge(&channel, event_id, &device, status).await?;
    state.log.feedback(channel.as_str(), device.as_str(), event_id, &receipt.status);
    Ok(json_response(StatusCode::OK, &ReceiptJson::from(&receipt)))
}

fn admin_connections<S: Store>(state: &Arc<AppState<S>>) -> Response<ResponseBody> {
    let mut view = serde_json::Map::new();
    let mut total = 0;
    for (channel, count) in state.hub.connections() {
        total += count;
        view.insert(channel.to_string(), json!(count));
    }
    view.insert("total number".to_owned(), json!(total));
    json_response(StatusCode::OK, &Value::Object(view))
}

async fn admin_events<S: Store>(state: &Arc<AppState<S>>, channel: &str, request: &Request<Incoming>) -> Answer {
    let channel = channel_name(channel)?;
    let limit = match query_param(request, &["limit"]) {
        Some(raw) => raw.parse::<usize>().map_err(|_| ApiError::bad_request("bad_limit", "limit must be a number"))?,
        None => 1000,
    };
    let events = state.hub.store().recent(&channel, limit).await?;
    // The original's shape: the bodies, parsed as JSON where they are JSON.
    let bodies: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(&e.body).unwrap_or_else(|_| Value::String(e.body.clone())))
        .collect();
    Ok(json_response(StatusCode::OK, &bodies))
}

fn device_json(view: &DeviceView) -> Value {
    let r = &view.record;
    json!({
        "op": r.last_op.as_str(),
        "at": format_time(r.last_seen),
        "Last-Event-Id": r.last_event_id,
        "online": view.open_streams > 0,
        "open_streams": view.open_streams,
        "first_seen": format_time(r.first_seen),
        "last_seen": format_time(r.last_seen),
        "last_delivered": r.last_delivered,
        "last_acked": r.last_acked,
        "receipts": r.receipts,
    })
}

async fn admin_devices<S: Store>(state: &Arc<AppState<S>>, channel: &str) -> Answer {
    let channel = channel_name(channel)?;
    let mut view = serde_json::Map::new();
    for device in state.hub.devices(&channel).await? {
        view.insert(device.record.device.to_string(), device_json(&device));
    }
    Ok(json_response(StatusCode::OK, &Value::Object(view)))
}

fn summary_json(summary: &ReceiptSummary) -> Value {
    let acknowledged: Vec<Value> = summary
        .acknowledged
        .iter()
        .map(|r| json!({"device": r.device, "status": r.status, "time": format_time(r.time)}))
        .collect();
    json!({
        "channel": summary.channel,
        "id": summary.event_id,
        "acknowledged": acknowledged,
        "delivered": summary.delivered,
        "pending": summary.pending,
        "counts": {
            "acknowledged": summary.acknowledged.len(),
            "delivered": summary.delivered.len(),
            "pending": summary.pending.len(),
        },
    })
}

async fn admin_receipts<S: Store>(state: &Arc<AppState<S>>, channel: &str, id: &str) -> Answer {
    let channel = channel_name(channel)?;
    let id: u64 = id.parse().map_err(|_| ApiError::bad_request("bad_event_id", format!("`{id}` is not an event id")))?;
    let summary = state.hub.receipt_summary(&channel, id).await?;
    Ok(json_response(StatusCode::OK, &summary_json(&summary)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn every_old_client_receipt_form_is_understood() {
        let ruby = receipt_parts(&headers(&[("device", "H1"), ("last_event_id", "7")]), None, b"status=rx+ok").unwrap();
        assert_eq!((ruby.device.as_deref(), ruby.id.as_deref(), ruby.status.as_deref()), (Some("H1"), Some("7"), Some("rx ok")));
        let page = receipt_parts(&headers(&[("device", "W1"), ("Last-Event-ID", "8")]), None, b"status=ok").unwrap();
        assert_eq!((page.device.as_deref(), page.id.as_deref(), page.status.as_deref()), (Some("W1"), Some("8"), Some("ok")));
        let json = receipt_parts(
            &headers(&[("content-type", "application/json")]),
            None,
            br#"{"device":"H2","id":9,"status":"done"}"#,
        )
        .unwrap();
        assert_eq!((json.device.as_deref(), json.id.as_deref(), json.status.as_deref()), (Some("H2"), Some("9"), Some("done")));
        let query = receipt_parts(&HeaderMap::new(), Some("device=H3&id=4"), b"").unwrap();
        assert_eq!((query.device.as_deref(), query.id.as_deref(), query.status), (Some("H3"), Some("4"), None));
        assert!(receipt_parts(&headers(&[("content-type", "application/json")]), None, b"{nope").is_err());
    }
}
