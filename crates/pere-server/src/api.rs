//! The request handlers: each parses its request, calls one core operation and shapes the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use pere_core::event::format_time;
use pere_core::hub::{DeviceView, ReceiptSummary};
use pere_core::receipt::MAX_STATUS_LEN;
use pere_core::wire::{FeedbackRequest, PushAccepted, ReceiptJson};
use pere_core::notice::PresenceChange;
use pere_core::{sse, ChannelName, DeviceId, EventType, Hub, NewEvent, ReceiptItem, Store, SubscribeRequest, WaitFor};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ApiError;
use crate::log::Log;
use crate::route::{NoRoute, Route};
use crate::sse_body::{EndReason, SseBody, StreamContext};
use crate::{compact_json_response, empty, full, json_response, ConnectionCloser, ResponseBody};

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
        Ok(Route::RegisterDevice(channel, device)) => register_device(state, channel, device).await,
        Ok(Route::RemoveDevice(channel, device)) => remove_device(state, channel, device).await,
        Ok(Route::DevicePending(channel, device)) => device_pending(state, channel, device).await,
        Ok(Route::Event(channel, id)) => event_view(state, channel, id).await,
        Ok(Route::Receipts(channel)) => receipts_stream(state, channel, &request).await,
        Ok(Route::Presence(channel)) => presence_stream(state, channel, &request).await,
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

/// Adds the CORS headers an allowed origin gets.
pub fn add_cors(config: &Config, origin: Option<HeaderValue>, headers: &mut HeaderMap) {
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
fn header_or_query<B>(request: &Request<B>, header: &str, query: &[&str]) -> Option<String> {
    if let Some(value) = request.headers().get(header) {
        return Some(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    query_param(request, query)
}

fn query_param<B>(request: &Request<B>, names: &[&str]) -> Option<String> {
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

/// `?wait=all|N&timeout=5s`: what a publisher waits for, and how long (capped by `--max-wait`).
fn push_wait(query: &Option<String>, max_wait: Duration) -> Result<Option<(WaitFor, Duration)>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    };
    let Some(wait) = param("wait") else { return Ok(None) };
    let wait = match wait.as_str() {
        "all" => WaitFor::All,
        n => match n.parse::<usize>() {
            Ok(n) if n > 0 => WaitFor::AtLeast(n),
            _ => return Err(ApiError::bad_request("bad_wait", "wait must be `all` or a number of devices")),
        },
    };
    let timeout = match param("timeout") {
        Some(t) => crate::config::parse_duration(&t)
            .map_err(|m| ApiError::bad_request("bad_timeout", m))?,
        None => Duration::from_secs(5),
    };
    Ok(Some((wait, timeout.min(max_wait))))
}

async fn push<S: Store>(state: &Arc<AppState<S>>, channel: &str, request: Request<Incoming>) -> Answer {
    let channel = channel_name(channel)?;
    let query = request.uri().query().map(str::to_owned);
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
    let wait = push_wait(&query, state.config.max_wait)?;
    let new = NewEvent { publisher: device, event_type, body, idempotency_key: None };
    let event = state.hub.publish(&channel, new).await?.event;
    state.log.push(channel.as_str(), event.publisher.as_ref().map(|d| d.as_str()), event.id, &event.body);
    let Some((wait, timeout)) = wait else {
        return Ok(compact_json_response(StatusCode::OK, &PushAccepted::from(&*event)));
    };
    let satisfied = state.hub.wait_for_receipts(&channel, event.id, wait, timeout).await?;
    let summary = state.hub.receipt_summary(&channel, event.id).await?;
    let accepted = PushAccepted::from(&*event);
    let answer = json!({
        "channel": accepted.channel,
        "id": accepted.id,
        "time": accepted.time,
        "satisfied": satisfied,
        "receipts": summary_json(&summary),
    });
    // 202: the event is stored, but the receipts asked for did not all arrive in time.
    Ok(json_response(if satisfied { StatusCode::OK } else { StatusCode::ACCEPTED }, &answer))
}

async fn feed<S: Store>(state: &Arc<AppState<S>>, channel: &str, request: &Request<Incoming>) -> Answer {
    let subscription = open_feed(state, channel, request).await?;
    Ok(sse_response(SseBody::feed(subscription, stream_context(state, request))))
}

/// Parses a feed request (channel, device, resume position) and subscribes; shared by the hyper
/// service and the dedicated feed connections of [`crate::feed_conn`].
///
/// # Errors
/// An [`ApiError`] for a bad channel or device, or when the store cannot be read.
pub async fn open_feed<S: Store, B>(
    state: &Arc<AppState<S>>,
    channel: &str,
    request: &Request<B>,
) -> Result<pere_core::Subscription<S>, ApiError> {
    let channel = channel_name(channel)?;
    let device = device_id(header_or_query(request, "device", &["device"]))?;
    // An id this server never gave (e.g. an original PERE timestamp) is treated as no position.
    let (last_event_id, raw) = resume_position(request);
    let logged_device = device.as_ref().map(|d| d.to_string());
    let logged_raw = raw.clone();
    let subscription = state
        .hub
        .subscribe(&channel, SubscribeRequest { device, last_event_id, last_event_id_raw: raw })
        .await?;
    // Logged once subscribed: from this line on, nothing published is missed by this feed.
    state.log.feed(channel.as_str(), logged_device.as_deref(), logged_raw.as_deref());
    Ok(subscription)
}

fn stream_context<S: Store>(state: &AppState<S>, request: &Request<Incoming>) -> StreamContext {
    StreamContext {
        retry_ms: state.config.retry_ms,
        keep_alive_every: Duration::from_secs(state.config.keep_alive_secs.max(1)),
        shutdown: state.shutdown.clone().cancelled_owned(),
        log: state.log,
        closer: request.extensions().get::<ConnectionCloser>().cloned(),
    }
}

fn sse_response(body: SseBody) -> Response<ResponseBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(http_body_util::combinators::UnsyncBoxBody::new(body))
        .expect("static response")
}

/// The resume position of a stream: `Last-Event-ID` header or `?lastEventId=`; anything that is
/// not a number counts as none.
fn resume_position<B>(request: &Request<B>) -> (Option<u64>, Option<String>) {
    let raw = header_or_query(request, "last-event-id", &["lastEventId", "last_event_id"]);
    (raw.as_deref().and_then(|r| r.trim().parse::<u64>().ok()), raw)
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
    Ok(compact_json_response(StatusCode::OK, &ReceiptJson::from(&receipt)))
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

fn device_json(view: &DeviceView, recipient: bool) -> Value {
    let r = &view.record;
    json!({
        "recipient": recipient,
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
    let recipients: std::collections::HashSet<DeviceId> = state
        .hub
        .store()
        .memberships(&channel)
        .await?
        .into_iter()
        .filter(|m| m.is_current())
        .map(|m| m.device)
        .collect();
    let mut view = serde_json::Map::new();
    for device in state.hub.devices(&channel).await? {
        let recipient = recipients.contains(&device.record.device);
        view.insert(device.record.device.to_string(), device_json(&device, recipient));
    }
    Ok(json_response(StatusCode::OK, &Value::Object(view)))
}

/// The JSON form of a receipt summary, shared by the admin view, `?wait=` and the webhook.
pub fn summary_json(summary: &ReceiptSummary) -> Value {
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
        "expected": summary.expected,
        "complete": summary.complete(),
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

fn membership_json(m: &pere_core::Membership) -> Value {
    json!({
        "channel": m.channel,
        "device": m.device,
        "since": format_time(m.since),
        "expects_events_after": m.joined_after,
        "left_after": m.left_after,
    })
}

async fn register_device<S: Store>(state: &Arc<AppState<S>>, channel: &str, device: &str) -> Answer {
    let channel = channel_name(channel)?;
    let device = DeviceId::new(device)?;
    let membership = state.hub.register(&channel, &device).await?;
    Ok(json_response(StatusCode::OK, &membership_json(&membership)))
}

async fn remove_device<S: Store>(state: &Arc<AppState<S>>, channel: &str, device: &str) -> Answer {
    let channel = channel_name(channel)?;
    let device = DeviceId::new(device)?;
    match state.hub.unregister(&channel, &device).await? {
        Some(membership) => Ok(json_response(StatusCode::OK, &membership_json(&membership))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_recipient",
            format!("{device} is not a recipient of {channel}"),
        )),
    }
}

fn event_json(event: &pere_core::Event) -> Value {
    json!({
        "channel": event.channel,
        "id": event.id,
        "time": format_time(event.time),
        "device": event.publisher,
        "event": event.event_type,
        "data": event.body,
    })
}

async fn device_pending<S: Store>(state: &Arc<AppState<S>>, channel: &str, device: &str) -> Answer {
    let channel = channel_name(channel)?;
    let device = DeviceId::new(device)?;
    // Expected of the device: events published while it was a recipient (none if it never was).
    let mut memberships = state.hub.store().memberships(&channel).await?;
    memberships.retain(|m| m.device == device);
    let after = memberships.iter().map(|m| m.joined_after).min().unwrap_or(0);
    let events = state.hub.store().unacknowledged(&channel, &device, after, 1000).await?;
    let events: Vec<Value> =
        events.iter().filter(|e| memberships.iter().any(|m| m.expects(e.id))).map(|e| event_json(e)).collect();
    Ok(json_response(StatusCode::OK, &json!({"channel": channel, "device": device, "pending": events})))
}

async fn event_view<S: Store>(state: &Arc<AppState<S>>, channel: &str, id: &str) -> Answer {
    let channel = channel_name(channel)?;
    let id: u64 = id.parse().map_err(|_| ApiError::bad_request("bad_event_id", format!("`{id}` is not an event id")))?;
    let summary = state.hub.receipt_summary(&channel, id).await?;
    let event = state.hub.store().event(&channel, id).await?;
    let mut view = match &event {
        Some(event) => event_json(event),
        None => json!({"channel": channel, "id": id, "pruned": true}),
    };
    view["receipts"] = summary_json(&summary);
    Ok(json_response(StatusCode::OK, &view))
}

fn receipt_frame(receipt: &pere_core::Receipt) -> Bytes {
    let data = serde_json::to_string(&ReceiptJson::from(receipt)).unwrap_or_default();
    sse::encode_event(receipt.seq, Some("receipt"), &data)
}

/// A completion is no position in the receipt stream: it carries no `id:`, so one heard after
/// later receipts were sent does not move the client's last id back.
fn completion_frame(channel: &ChannelName, event_id: u64, expected: usize) -> Bytes {
    let data = json!({"channel": channel, "id": event_id, "expected": expected});
    sse::encode_notice("complete", &data.to_string())
}

async fn receipts_stream<S: Store>(state: &Arc<AppState<S>>, channel: &str, request: &Request<Incoming>) -> Answer {
    let channel = channel_name(channel)?;
    let (after, _) = resume_position(request);
    // The core keeps the order and the resume position; this only frames what it gives.
    let follow = state.hub.follow_receipts(&channel, after).await?;
    let frames = futures_util::stream::unfold(follow, |mut follow| async move {
        let frame = match follow.next().await {
            Some(Ok(ReceiptItem::Receipt(receipt))) => Ok(receipt_frame(&receipt)),
            Some(Ok(ReceiptItem::Completed { channel, event_id, expected })) => {
                Ok(completion_frame(&channel, event_id, expected))
            }
            Some(Err(err)) => {
                eprintln!("ERROR> receipt stream of {}: {err}", follow.channel());
                Err(EndReason::StoreFailed)
            }
            // The reader fell behind the live buffer: it resumes from its last id.
            None if follow.lagged() => Err(EndReason::Lagged),
            None => return None,
        };
        Some((frame, follow))
    })
    .boxed();
    let body = SseBody::frames(frames, format!("{channel} receipts"), None, stream_context(state, request));
    Ok(sse_response(body))
}

fn presence_frame(change: &PresenceChange) -> Bytes {
    let data = json!({"device": change.device, "online": change.online, "at": format_time(change.at)});
    sse::encode_event(change.seq, Some("presence"), &data.to_string())
}

async fn presence_stream<S: Store>(state: &Arc<AppState<S>>, channel: &str, request: &Request<Incoming>) -> Answer {
    let channel = channel_name(channel)?;
    let (after, _) = resume_position(request);
    let (replay, live) = state.hub.follow_presence(&channel, after.unwrap_or(0)).await?;
    let replay: Vec<_> = replay.iter().map(|c| Ok(presence_frame(c))).collect();
    let live = futures_util::stream::unfold(live, |mut live| async move {
        match live.recv().await {
            Ok(change) => Some((Ok(presence_frame(&change)), live)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some((Err(EndReason::Lagged), live)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    let frames = futures_util::stream::iter(replay).chain(live).boxed();
    let body = SseBody::frames(frames, format!("{channel} presence"), None, stream_context(state, request));
    Ok(sse_response(body))
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
