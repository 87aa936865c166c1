//! The request handlers: each reads its request, calls one core operation and shapes the answer
//! from a typed view of [`pere_proto::wire`]. Requests reach them only through [`crate::door`].

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::header;
use hyper::header::HeaderMap;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use pere_core::{DeviceId, NewEvent, Store, StoreError};
use pere_proto::event::format_time;
use pere_proto::receipt::{Receipt, MAX_STATUS_LEN};
use pere_proto::wire::{
    Banner, BatchAnswer, ChannelJson, ChannelsPage, ConnectionsJson, CumulativeAnswer, DeviceJson,
    EventJson, EventList, EventReceipts, Health, MembershipJson, PendingEvents, PushAccepted,
    PushWaited, Readiness, ReceiptBatchAnswer, ReceiptBatchEntry, ReceiptJsonRef,
    ReceiptSummaryJson,
};

use crate::activity;
use crate::batch::{self, BATCH_HEADER};
use crate::dashboard;
use crate::door::{Admitted, Caller};
use crate::error::ApiError;
use crate::openapi;
use crate::request::{self, Query, RequestBody};
use crate::response::{self, etag, etag_text, Answer, Asset, ResponseBody};
use crate::route::Route;
use crate::sse_body::{ConnectionCloser, SseBody};
use crate::state::AppState;
use crate::{metrics, streams};

/// The subscriber web page, embedded so the server is one self-contained binary.
pub const SUBSCRIBER_PAGE: Asset = Asset {
    body: PAGE_SOURCE,
    content_type: "text/html; charset=utf-8",
    etag: etag_text(&PAGE_ETAG),
};
const PAGE_SOURCE: &str = include_str!("../assets/subscriber.html");
const PAGE_ETAG: [u8; 18] = etag(PAGE_SOURCE);

/// `pere.js`, the JavaScript client (an ES module) the page is built on, for any web application.
pub const PERE_JS: Asset = Asset {
    body: SCRIPT_SOURCE,
    content_type: "text/javascript; charset=utf-8",
    etag: etag_text(&SCRIPT_ETAG),
};
const SCRIPT_SOURCE: &str = include_str!("../assets/pere.js");
const SCRIPT_ETAG: [u8; 18] = etag(SCRIPT_SOURCE);

/// Events an event listing shows at most per page.
const MAX_EVENT_PAGE: usize = 1000;

/// Answers an admitted request. `closer` closes the connection, for streams that must end it.
///
/// # Errors
/// The [`ApiError`] that answers a request that cannot be served.
pub async fn dispatch<S: Store>(
    state: &Arc<AppState<S>>,
    admitted: Admitted<'_>,
    parts: &Parts,
    body: RequestBody,
    closer: Option<ConnectionCloser>,
) -> Answer {
    let Admitted {
        route,
        caller,
        query,
        stream,
    } = admitted;
    let headers = &parts.headers;
    if parts.method == Method::HEAD {
        if let Route::Feed(channel) | Route::Receipts(channel) | Route::Presence(channel) = route {
            // The head of the stream, and nothing opened: no subscription, no recipient.
            request::channel(channel)?;
            return Ok(response::sse(response::empty()));
        }
        if route == Route::AdminStream {
            return Ok(response::sse(response::empty()));
        }
    }
    match route {
        Route::Root => Ok(root(headers)),
        Route::SubscriberPage => Ok(response::asset(&SUBSCRIBER_PAGE, headers)),
        Route::Script => Ok(response::asset(&PERE_JS, headers)),
        Route::Dashboard => Ok(response::asset(&dashboard::PAGE, headers)),
        Route::AdminStream => {
            let channel = query
                .get(&["channel"])
                .filter(|c| !c.is_empty())
                .map(request::channel)
                .transpose()?;
            Ok(sse(dashboard::stream(
                state,
                channel,
                streams::context(state, closer, stream),
            )
            .await?))
        }
        Route::Health | Route::Healthz => Ok(response::json(
            StatusCode::OK,
            &Health {
                status: "ok".to_owned(),
            },
        )),
        Route::Readyz => Ok(readiness(state).await),
        Route::OpenApi => Ok(openapi::document()),
        Route::Push(channel) => push(state, channel, caller.device, &query, headers, body).await,
        Route::Feed(channel) => {
            let channel = request::channel(channel)?;
            let subscription = streams::open_feed(
                state,
                &channel,
                caller.device,
                request::resume(headers, &query)?,
            )
            .await?;
            Ok(sse(SseBody::feed(
                subscription,
                streams::context(state, closer, stream),
            )))
        }
        Route::Feedback(channel) => feedback(state, channel, &caller, &query, headers, body).await,
        Route::AdminConnections => admin_connections(state).await,
        Route::AdminChannels => admin_channels(state, &query).await,
        Route::Metrics => Ok(metrics(state, headers)),
        Route::AdminEvents(channel) => admin_events(state, channel, &query).await,
        Route::AdminDevices(channel) => admin_devices(state, channel, &query).await,
        Route::AdminReceipts(channel, id) => {
            let channel = request::channel(channel)?;
            let summary = state
                .hub
                .receipt_summary(&channel, request::event_id(id)?)
                .await?;
            Ok(response::json(
                StatusCode::OK,
                &ReceiptSummaryJson::from(&summary),
            ))
        }
        Route::RegisterDevice(channel, device) => {
            register_device(state, parts, channel, device).await
        }
        Route::RemoveDevice(channel, device) => remove_device(state, parts, channel, device).await,
        Route::DevicePending(channel, device) => device_pending(state, channel, device).await,
        Route::Events(channel) => events(state, channel, &query).await,
        Route::Event(channel, id) => event_view(state, channel, id).await,
        Route::Receipts(channel) => {
            let channel = request::channel(channel)?;
            let after = request::resume(headers, &query)?.after;
            Ok(sse(streams::receipts(
                state,
                channel,
                after,
                streams::context(state, closer, stream),
            )
            .await?))
        }
        Route::Presence(channel) => {
            let channel = request::channel(channel)?;
            let after = request::resume(headers, &query)?.after;
            Ok(sse(streams::presence(
                state,
                channel,
                after,
                streams::context(state, closer, stream),
            )
            .await?))
        }
        Route::Favicon | Route::Preflight => {
            let mut response = Response::new(response::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
    }
}

/// Ready when not stopping and the store commits a write; a load balancer stops sending traffic
/// on 503. The cause of a store failure goes to the log, not to whoever asks.
///
/// Degraded (still 200) when the store holds damaged events: the server serves everything else,
/// and every node reading the same damaged store would be drained alike, so the damage is for an
/// operator to see (here, in the log and the metrics), not for a load balancer to act on.
async fn readiness<S: Store>(state: &AppState<S>) -> Response<ResponseBody> {
    let reason = if state.stopping.is_cancelled() {
        Some("shutting_down")
    } else if state.hub.adopting_store() {
        // Until every loaded channel continues above the ids handed out before the change.
        Some("store_changed")
    } else {
        match state.hub.store().probe().await {
            Ok(()) => None,
            Err(err) => {
                tracing::error!("readiness probe: {err}");
                Some("store_failed")
            }
        }
    };
    let damaged = state.hub.store().damage().events;
    let (status, word) = match (reason, damaged) {
        (Some(_), _) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        (None, 0) => (StatusCode::OK, "ready"),
        (None, _) => (StatusCode::OK, "degraded"),
    };
    let readiness = Readiness {
        status: word.to_owned(),
        reason: reason.map(str::to_owned),
        damaged_events: (damaged > 0).then_some(damaged),
    };
    response::json(status, &readiness)
}

fn sse(body: SseBody) -> Response<ResponseBody> {
    response::sse(http_body_util::combinators::UnsyncBoxBody::new(body))
}

fn root(headers: &HeaderMap) -> Response<ResponseBody> {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let mut response = if wants_html {
        response::asset(&SUBSCRIBER_PAGE, headers)
    } else {
        response::json(
            StatusCode::OK,
            &Banner {
                message: "PERE server up and running".to_owned(),
            },
        )
    };
    // The page and the banner share a URL: a cache must keep them apart.
    response
        .headers_mut()
        .append(header::VARY, header::HeaderValue::from_static("Accept"));
    response
}

async fn push<S: Store>(
    state: &Arc<AppState<S>>,
    channel: &str,
    device: Option<DeviceId>,
    query: &Query,
    headers: &HeaderMap,
    body: RequestBody,
) -> Answer {
    let channel = request::channel(channel)?;
    let event_type = request::event_type(headers, query)?;
    let envelope = batch::envelope_form(headers.get(BATCH_HEADER).map(|v| v.as_bytes()))?;
    let wait = request::push_wait(query, state.config.max_wait)?;
    let idempotency_key = request::idempotency_key(headers)?;
    let kind = request::body_kind(headers);
    if kind == request::BodyKind::Ndjson {
        if wait.is_some() {
            // A batch answer has no room for one receipt summary per event; a publisher that
            // waits pushes the events it waits for one by one.
            return Err(ApiError::bad_request(
                "wait_not_supported_on_batch",
                "?wait= is for single pushes; a batch answers as soon as its events are stored",
            ));
        }
        if let Some(key) = &idempotency_key {
            batch::check_batch_key(key)?;
        }
        let shared = batch::BatchParams {
            publisher: device,
            event_type,
            key: idempotency_key,
            envelope,
            max_events: state.config.max_batch_events,
        };
        let body = request::body(
            headers,
            body,
            state.config.max_body,
            state.config.body_timeout,
        )
        .await?;
        return push_batch(state, channel, batch::events(&body, &shared)?).await;
    }
    let body = request::body(
        headers,
        body,
        state.config.max_body,
        state.config.body_timeout,
    )
    .await?;
    if body.is_empty() {
        // Browsers' EventSource never dispatches an event whose data is empty: stored, it would
        // be an event no page ever sees.
        return Err(ApiError::bad_request(
            "empty_body",
            "an event body must not be empty",
        ));
    }
    let body = String::from_utf8(body.into())
        .map_err(|_| ApiError::bad_request("body_not_utf8", "the event body must be UTF-8 text"))?;
    if kind == request::BodyKind::Json {
        if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
            return Err(ApiError::bad_request(
                "invalid_json",
                format!("the body is not valid JSON: {err}"),
            ));
        }
    }
    // A keyed push may meet its own earlier copy (keys are per publisher: never another's): what
    // it sent is kept to compare with that one.
    let sent = idempotency_key
        .is_some()
        .then(|| (body.clone(), event_type.clone()));
    let appended = state
        .hub
        .publish(
            &channel,
            NewEvent {
                publisher: device,
                event_type,
                body,
                idempotency_key,
            },
        )
        .await?;
    let event = appended.event;
    let replayed = !appended.new;
    if replayed
        && sent
            .is_some_and(|(body, event_type)| body != event.body || event_type != event.event_type)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            format!(
                "Idempotency-Key already used for event {} with another body or type",
                event.id
            ),
        ));
    }
    let accepted = PushAccepted::from(&*event);
    let Some((wait, timeout)) = wait else {
        return Ok(replay_mark(
            response::compact_json(StatusCode::OK, &accepted),
            replayed,
        ));
    };
    // A server stopping answers with what is pending now (202) rather than dropping the wait.
    let satisfied = tokio::select! {
        satisfied = state.hub.wait_for_receipts(&channel, event.id, wait, timeout) => satisfied?,
        () = state.shutdown.cancelled() => false,
    };
    let summary = state.hub.receipt_summary(&channel, event.id).await?;
    let answer = PushWaited {
        channel: accepted.channel,
        id: accepted.id,
        time: accepted.time,
        satisfied,
        receipts: ReceiptSummaryJson::from(&summary),
    };
    // 202: the event is stored, but the receipts asked for did not all arrive in time.
    Ok(replay_mark(
        response::json(
            if satisfied {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            },
            &answer,
        ),
        replayed,
    ))
}

/// Publishes a batch's events, all or none, and answers their ids in line order.
async fn push_batch<S: Store>(
    state: &Arc<AppState<S>>,
    channel: pere_core::ChannelName,
    events: Vec<NewEvent>,
) -> Answer {
    // The keys, to name the line of a conflict.
    let keys: Vec<Option<String>> = events.iter().map(|e| e.idempotency_key.clone()).collect();
    let appended = match state.hub.publish_batch(&channel, events).await {
        Ok(appended) => appended,
        Err(StoreError::IdempotencyConflict { id, key }) => {
            let line = keys
                .iter()
                .position(|k| k.as_deref() == Some(key.as_str()))
                .map_or(0, |i| i + 1);
            let held = match id {
                Some(id) => format!("event {id}"),
                None => "an earlier line of this batch".to_owned(),
            };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!("line {line}: idempotency key {key} already used for {held} with another body or type; nothing was stored"),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    let replayed = appended.iter().filter(|a| !a.new).count();
    let time = appended
        .iter()
        .find(|a| a.new)
        .or(appended.first())
        .map(|a| format_time(a.event.time))
        .unwrap_or_default();
    let answer = BatchAnswer {
        channel: channel.to_string(),
        ids: appended.iter().map(|a| a.event.id).collect(),
        time,
        replayed,
    };
    Ok(replay_mark(
        response::compact_json(StatusCode::OK, &answer),
        replayed == appended.len(),
    ))
}

/// Marks the answer to a push that repeated an earlier one (same key, same event): nothing was
/// stored or delivered again, and the answer is the first one's.
fn replay_mark(mut response: Response<ResponseBody>, replayed: bool) -> Response<ResponseBody> {
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            header::HeaderValue::from_static("true"),
        );
    }
    response
}

async fn feedback<S: Store>(
    state: &Arc<AppState<S>>,
    channel: &str,
    caller: &Caller,
    query: &Query,
    headers: &HeaderMap,
    body: RequestBody,
) -> Answer {
    let channel = request::channel(channel)?;
    let batch = request::body_kind(headers) == request::BodyKind::Ndjson;
    let body = request::body(
        headers,
        body,
        state.config.max_body,
        state.config.body_timeout,
    )
    .await?;
    if batch {
        return feedback_batch(state, channel, caller, headers, &body).await;
    }
    let parts = request::receipt_parts(headers, query, &body)?;
    // With a token, a device posts receipts only as itself.
    let named = parts
        .device
        .map(|named| DeviceId::new(named.trim()))
        .transpose()?;
    let device = caller.speaks_as(named)?.ok_or_else(missing_device)?;
    if let Some(upto) = parts.upto {
        let upto = request::event_id(&upto)?;
        let status = receipt_status(parts.status)?;
        // A cumulative receipt is idempotent by itself (sent again, it finds nothing more
        // owed): a key it carries is checked as any, and needs no remembering.
        request::idempotency_key(headers)?;
        return feedback_upto(state, channel, device, upto, status).await;
    }
    let raw_id = parts.id.ok_or_else(|| {
        ApiError::bad_request(
            "missing_event_id",
            "a receipt needs the event id it acknowledges",
        )
    })?;
    let event_id = request::event_id(&raw_id)?;
    let status = receipt_status(parts.status)?;
    let Some(key) = request::idempotency_key(headers)? else {
        let (receipt, _) = state
            .hub
            .acknowledge(&channel, event_id, &device, status)
            .await?;
        activity::feedback(channel.as_str(), device.as_str(), event_id, &receipt.status);
        return Ok(receipt_answer(&receipt));
    };
    let recorded = state
        .hub
        .acknowledge_keyed(&channel, event_id, &device, status.clone(), key)
        .await?;
    let receipt = recorded.receipt;
    if recorded.new {
        activity::feedback(channel.as_str(), device.as_str(), event_id, &receipt.status);
    } else if (receipt.event_id, &*receipt.status) != (event_id, status.as_str()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            format!(
                "Idempotency-Key already used for the receipt of event {} by {} with status {:?}",
                receipt.event_id, receipt.device, receipt.status
            ),
        ));
    }
    Ok(replay_mark(receipt_answer(&receipt), !recorded.new))
}

/// The answer to a single receipt: the receipt as recorded.
fn receipt_answer(receipt: &Receipt) -> Response<ResponseBody> {
    response::json_written(StatusCode::OK, |out| {
        ReceiptJsonRef::from(receipt).write_json(out);
    })
}

/// A receipt's status: `ok` when none is given, since a receipt with no status still says
/// "received" (what the original clients meant).
///
/// # Errors
/// 400 `status_too_long`.
fn receipt_status(status: Option<String>) -> Result<String, ApiError> {
    let status = status.unwrap_or_else(|| "ok".to_owned());
    if status.len() > MAX_STATUS_LEN {
        return Err(ApiError::bad_request(
            "status_too_long",
            format!("status is longer than {MAX_STATUS_LEN} bytes"),
        ));
    }
    Ok(status)
}

fn missing_device() -> ApiError {
    ApiError::bad_request("missing_device", "a receipt needs the device that sends it")
}

/// A cumulative receipt: every event up to `upto` that `device` owes, at most
/// `--max-batch-events` of them (the oldest; `"more": true` says some are left).
async fn feedback_upto<S: Store>(
    state: &Arc<AppState<S>>,
    channel: pere_core::ChannelName,
    device: DeviceId,
    upto: u64,
    status: String,
) -> Answer {
    let done = state
        .hub
        .acknowledge_upto(
            &channel,
            &device,
            upto,
            status,
            state.config.max_batch_events,
        )
        .await?;
    activity::feedback_upto(channel.as_str(), device.as_str(), upto, &done.receipts);
    Ok(response::json_written(StatusCode::OK, |out| {
        CumulativeAnswer::write_json(
            out,
            channel.as_str(),
            device.as_str(),
            upto,
            done.receipts.iter().map(|r| r.event_id),
            done.more,
        );
    }))
}

/// A batch of receipts (an NDJSON body, one `{"id", "status", "key"}` per line) of the device
/// the request speaks for: recorded all or none, answered in line order.
async fn feedback_batch<S: Store>(
    state: &Arc<AppState<S>>,
    channel: pere_core::ChannelName,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let device = caller.speaks_as(None)?.ok_or_else(missing_device)?;
    let batch_key = request::idempotency_key(headers)?;
    if let Some(key) = &batch_key {
        batch::check_batch_key(key)?;
    }
    let lines = batch::receipts(body, state.config.max_batch_events, batch_key.as_deref())?;
    // What names the line (from 1) of a refusal.
    let ids: Vec<u64> = lines.iter().map(|line| line.event_id).collect();
    let keys: Vec<Option<String>> = lines.iter().map(|line| line.key.clone()).collect();
    let number = |at: Option<usize>| at.map_or(0, |i| i + 1);
    let recorded = match state.hub.acknowledge_batch(&channel, &device, lines).await {
        Ok(recorded) => recorded,
        Err(StoreError::UnknownEvent { id }) => {
            let line = number(ids.iter().position(|&event| event == id));
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_event",
                format!("line {line}: no event with id {id} on this channel; nothing was recorded"),
            ));
        }
        Err(StoreError::IdempotencyConflict { id, key }) => {
            let line = number(keys.iter().position(|k| k.as_deref() == Some(key.as_str())));
            let held = match id {
                Some(id) => format!("the receipt of event {id}"),
                None => "an earlier line of this batch".to_owned(),
            };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!("line {line}: key {key} already used for {held} with another event, device or status; nothing was recorded"),
            ));
        }
        Err(err) => return Err(err.into()),
    };
    let new: Vec<&Receipt> = recorded
        .iter()
        .filter(|line| line.new)
        .map(|line| &line.receipt)
        .collect();
    if !new.is_empty() {
        activity::feedback_batch(channel.as_str(), device.as_str(), &new);
    }
    let replayed = new.is_empty();
    let answer = ReceiptBatchAnswer {
        channel: channel.to_string(),
        device: device.to_string(),
        receipts: recorded
            .iter()
            .map(|line| ReceiptBatchEntry {
                id: line.receipt.event_id,
                seq: line.receipt.seq,
                status: line.receipt.status.to_string(),
                replayed: !line.new,
            })
            .collect(),
    };
    Ok(replay_mark(
        response::compact_json(StatusCode::OK, &answer),
        replayed,
    ))
}

/// `GET /metrics`: the Prometheus text format, or OpenMetrics when `headers` accept it by name.
pub fn metrics<S: Store>(state: &AppState<S>, headers: &HeaderMap) -> Response<ResponseBody> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    let text = state
        .metrics
        .render_in(&state.hub, state.limits.connections(), format);
    let mut answer = response::text(StatusCode::OK, format.content_type(), text);
    // The answer depends on the Accept header: a cache must keep the two formats apart.
    answer
        .headers_mut()
        .append(header::VARY, header::HeaderValue::from_static("Accept"));
    answer
}

/// Channels an admin view shows per page by default, and at most.
const CHANNEL_PAGE: usize = 1000;
const MAX_CHANNEL_PAGE: usize = 10_000;

/// `GET /admin/channels`: the channels in name order, a page at a time (`?limit=`,
/// `?after=<channel>`); a full page links to the next with `Link: <…>; rel="next"`.
async fn admin_channels<S: Store>(state: &AppState<S>, query: &Query) -> Answer {
    let limit = request::limit(query, CHANNEL_PAGE, MAX_CHANNEL_PAGE)?.max(1);
    let after = query.get(&["after"]).map(request::channel).transpose()?;
    let page = state.hub.channels_page(after.as_ref(), limit).await?;
    // Streams held on the other nodes of a cluster count too, as in `/admin/connections`.
    let elsewhere = match state.bus.get() {
        Some(bus) => bus.other_connections().await?,
        None => BTreeMap::new(),
    };
    let view = ChannelsPage {
        channels: page
            .iter()
            .map(|channel| {
                let mut json = ChannelJson::from(channel);
                json.open_streams += elsewhere.get(&channel.channel).copied().unwrap_or(0);
                json
            })
            .collect(),
    };
    let mut response = response::json(StatusCode::OK, &view);
    if let (true, Some(last)) = (page.len() == limit, page.last()) {
        // Names need no escaping in a URL (see `pere_proto::name`).
        let next = format!(
            "</admin/channels?after={}&limit={limit}>; rel=\"next\"",
            last.channel
        );
        if let Ok(link) = header::HeaderValue::from_str(&next) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

/// `GET /admin/connections`: open streams per channel, on every node of the cluster.
async fn admin_connections<S: Store>(state: &AppState<S>) -> Answer {
    let mut channels: BTreeMap<String, usize> = state
        .hub
        .connections()
        .into_iter()
        .map(|(c, n)| (c.to_string(), n))
        .collect();
    if let Some(bus) = state.bus.get() {
        for (channel, n) in bus.other_connections().await? {
            *channels.entry(channel.to_string()).or_default() += n;
        }
    }
    let total = channels.values().sum();
    Ok(response::json(
        StatusCode::OK,
        &ConnectionsJson { channels, total },
    ))
}

async fn admin_events<S: Store>(state: &AppState<S>, channel: &str, query: &Query) -> Answer {
    let channel = request::channel(channel)?;
    let limit = request::limit(query, MAX_EVENT_PAGE, MAX_EVENT_PAGE)?;
    // Damaged events are left out (the original's shape has no place to name them; the log,
    // `/readyz` and `GET /events/:channel` do).
    let events = state.hub.store().recent(&channel, limit).await?;
    // The original's shape: the bodies alone, as JSON where they are JSON.
    let bodies: Vec<_> = events
        .iter()
        .map(|e| pere_proto::wire::body_value(&e.body))
        .collect();
    Ok(response::json(StatusCode::OK, &bodies))
}

async fn events<S: Store>(state: &AppState<S>, channel: &str, query: &Query) -> Answer {
    let channel = request::channel(channel)?;
    let after = request::after(query)?;
    let limit = request::limit(query, 100, MAX_EVENT_PAGE)?;
    let page = state.hub.store().read(&channel, after, limit).await?;
    let events = page.events.iter().map(|e| EventJson::from(&**e)).collect();
    Ok(response::json(
        StatusCode::OK,
        &EventList {
            channel: channel.to_string(),
            head: page.head,
            events,
            unreadable: page.unreadable,
        },
    ))
}

/// Devices an admin view shows per page by default, and at most.
const DEVICE_PAGE: usize = 1000;
const MAX_DEVICE_PAGE: usize = 10_000;

/// `GET /admin/devices/:channel`: the original's map of devices by id, a page at a time
/// (`?limit=`, `?after=<device>`); a full page links to the next with `Link: <…>; rel="next"`.
async fn admin_devices<S: Store>(state: &AppState<S>, channel: &str, query: &Query) -> Answer {
    let channel = request::channel(channel)?;
    let limit = request::limit(query, DEVICE_PAGE, MAX_DEVICE_PAGE)?.max(1);
    let after = query.get(&["after"]).map(DeviceId::new).transpose()?;
    // The hub counts the streams on every node (with several nodes).
    let page = state
        .hub
        .devices_page(&channel, after.as_ref(), limit)
        .await?;
    let recipients = state
        .hub
        .current_recipients(&channel, page.iter().map(|d| &d.record.device))
        .await?;
    let view: BTreeMap<String, DeviceJson> = page
        .iter()
        .map(|d| {
            (
                d.record.device.to_string(),
                DeviceJson::new(d, recipients.contains(&d.record.device)),
            )
        })
        .collect();
    let mut response = response::json(StatusCode::OK, &view);
    if let (true, Some(last)) = (page.len() == limit, page.last()) {
        // Names and ids need no escaping in a URL (see `pere_proto::name`).
        let next = format!(
            "</admin/devices/{channel}?after={}&limit={limit}>; rel=\"next\"",
            last.record.device
        );
        if let Ok(link) = header::HeaderValue::from_str(&next) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

async fn register_device<S: Store>(
    state: &AppState<S>,
    parts: &Parts,
    channel: &str,
    device: &str,
) -> Answer {
    let channel = request::channel(channel)?;
    let device = DeviceId::new(device)?;
    let membership = state.hub.register(&channel, &device).await?;
    activity::admin(
        parts.method.as_str(),
        parts.uri.path(),
        200,
        "recipient registered",
    );
    Ok(response::json(
        StatusCode::OK,
        &MembershipJson::from(&membership),
    ))
}

async fn remove_device<S: Store>(
    state: &AppState<S>,
    parts: &Parts,
    channel: &str,
    device: &str,
) -> Answer {
    let channel = request::channel(channel)?;
    let device = DeviceId::new(device)?;
    match state.hub.unregister(&channel, &device).await? {
        Some(membership) => {
            activity::admin(
                parts.method.as_str(),
                parts.uri.path(),
                200,
                "recipient removed",
            );
            Ok(response::json(
                StatusCode::OK,
                &MembershipJson::from(&membership),
            ))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_recipient",
            format!("{device} is not a recipient of {channel}"),
        )),
    }
}

async fn device_pending<S: Store>(state: &AppState<S>, channel: &str, device: &str) -> Answer {
    let channel = request::channel(channel)?;
    let device = DeviceId::new(device)?;
    // Expected of the device: events published while it was a recipient (none if it never was).
    let mut memberships = state.hub.store().memberships(&channel).await?;
    memberships.retain(|m| m.device == device);
    let after = memberships
        .iter()
        .map(|m| m.joined_after)
        .min()
        .unwrap_or(0);
    let events = state
        .hub
        .store()
        .unacknowledged(&channel, &device, after, 1000)
        .await?;
    let pending = events
        .iter()
        .filter(|e| memberships.iter().any(|m| m.expects(e.id)))
        .map(|e| EventJson::from(&**e))
        .collect();
    Ok(response::json(
        StatusCode::OK,
        &PendingEvents {
            channel: channel.to_string(),
            device: device.to_string(),
            pending,
        },
    ))
}

/// `GET /events/:channel/:id`: the event and its receipts; a damaged event is 500
/// `event_damaged` (see `ApiError`'s `From<StoreError>`).
async fn event_view<S: Store>(state: &AppState<S>, channel: &str, id: &str) -> Answer {
    let channel = request::channel(channel)?;
    let id = request::event_id(id)?;
    let summary = state.hub.receipt_summary(&channel, id).await?;
    let event = state.hub.store().event(&channel, id).await?;
    let receipts = ReceiptSummaryJson::from(&summary);
    let view = match event.as_deref() {
        Some(event) => EventReceipts::retained(EventJson::from(event), receipts),
        None => EventReceipts::pruned(channel.as_str(), id, receipts),
    };
    Ok(response::json(StatusCode::OK, &view))
}
