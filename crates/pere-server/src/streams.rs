//! The three SSE streams a client can hold: a channel's event feed, its receipt stream and its
//! presence stream. Each is opened here from what the request asked and framed as SSE; the
//! handlers and the dedicated stream connections open them the same way.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use pere_core::{
    ChannelName, DeviceId, Receipt, ReceiptItem, Store, SubscribeRequest, Subscription,
};
use pere_proto::presence::PresenceChange;
use pere_proto::sse;
use pere_proto::wire::{to_json, CompletionJson, PresenceJson, ReceiptJsonRef};

use crate::activity;
use crate::error::ApiError;
use crate::limits::StreamSlot;
use crate::request::Resume;
use crate::sse_body::{ConnectionCloser, EndReason, FrameResult, SseBody, StreamContext};
use crate::state::AppState;

/// What a stream needs from the server around it; `closer` closes the connection it runs on,
/// `slot` is its place in the server's counts.
pub fn context<S: Store>(
    state: &AppState<S>,
    closer: Option<ConnectionCloser>,
    slot: Option<StreamSlot>,
) -> StreamContext {
    StreamContext {
        retry_ms: state.config.retry_ms,
        keep_alive_every: state.config.keep_alive_every(),
        shutdown: state.shutdown.clone(),
        closer,
        slot,
    }
}

/// Subscribes `device` (or an anonymous listener) to `channel` from `resume`, and logs the feed
/// once subscribed: from that line on, nothing published is missed by this feed.
///
/// # Errors
/// 503 `store_unavailable` when the device record or history cannot be read.
pub async fn open_feed<S: Store>(
    state: &AppState<S>,
    channel: &ChannelName,
    device: Option<DeviceId>,
    resume: Resume,
) -> Result<Subscription<S>, ApiError> {
    let request = SubscribeRequest {
        device,
        last_event_id: resume.after,
        last_event_id_raw: resume.raw,
    };
    let logged_device = request.device.clone();
    let logged_resume = request.last_event_id_raw.clone();
    let subscription = state.hub.subscribe(channel, request).await?;
    activity::feed(
        channel.as_str(),
        logged_device.as_ref().map(|d| d.as_str()),
        logged_resume.as_deref(),
    );
    Ok(subscription)
}

fn receipt_frame(receipt: &Receipt) -> Bytes {
    sse::encode_event(
        receipt.seq,
        Some("receipt"),
        &to_json(&ReceiptJsonRef::from(receipt)),
    )
}

/// A completion is no position in the receipt stream: it carries no `id:`, so one heard after
/// later receipts were sent does not move the client's last id back.
fn completion_frame(channel: &ChannelName, event_id: u64, expected: usize) -> Bytes {
    let data = CompletionJson {
        channel: channel.to_string(),
        id: event_id,
        expected,
    };
    sse::encode_notice("complete", &to_json(&data))
}

/// The receipt stream of `channel` from `after` (or live only), as an SSE body. The core keeps
/// the order and the resume position ([`pere_core::ReceiptFollow`]); this only frames what it
/// gives.
///
/// # Errors
/// 503 `store_unavailable` when the channel cannot be opened.
pub async fn receipts<S: Store>(
    state: &AppState<S>,
    channel: ChannelName,
    after: Option<u64>,
    context: StreamContext,
) -> Result<SseBody, ApiError> {
    let frames = receipt_frames(state, &channel, after).await?;
    Ok(SseBody::frames(
        frames,
        receipts_name(&channel),
        None,
        context,
    ))
}

/// The receipt stream's name in the log.
pub fn receipts_name(channel: &ChannelName) -> String {
    format!("{channel} receipts")
}

/// The frames of the receipt stream of `channel` from `after` (or live only): what
/// [`receipts`] sends, for the dedicated stream connections too.
///
/// # Errors
/// 503 `store_unavailable` when the channel cannot be opened.
pub async fn receipt_frames<S: Store>(
    state: &AppState<S>,
    channel: &ChannelName,
    after: Option<u64>,
) -> Result<BoxStream<'static, FrameResult>, ApiError> {
    let follow = state.hub.follow_receipts(channel, after).await?;
    Ok(
        futures_util::stream::unfold(follow, |mut follow| async move {
            let frame = match follow.next().await {
                Some(Ok(ReceiptItem::Receipt(receipt))) => Ok(receipt_frame(&receipt)),
                Some(Ok(ReceiptItem::Completed {
                    channel,
                    event_id,
                    expected,
                })) => Ok(completion_frame(&channel, event_id, expected)),
                Some(Err(err)) => {
                    tracing::error!("receipt stream of {}: {err}", follow.channel());
                    Err(EndReason::StoreFailed)
                }
                // The reader fell behind the live buffer: it resumes from its last id.
                None if follow.lagged() => Err(EndReason::Lagged),
                None => return None,
            };
            Some((frame, follow))
        })
        .boxed(),
    )
}

fn presence_frame(change: &PresenceChange) -> Bytes {
    sse::encode_event(
        change.seq,
        Some("presence"),
        &to_json(&PresenceJson::from(change)),
    )
}

/// The presence stream of `channel`: the changes kept after `after`, then live ones.
///
/// # Errors
/// 503 `store_unavailable` when the channel cannot be opened.
pub async fn presence<S: Store>(
    state: &AppState<S>,
    channel: ChannelName,
    after: Option<u64>,
    context: StreamContext,
) -> Result<SseBody, ApiError> {
    let frames = presence_frames(state, &channel, after).await?;
    Ok(SseBody::frames(
        frames,
        presence_name(&channel),
        None,
        context,
    ))
}

/// The presence stream's name in the log.
pub fn presence_name(channel: &ChannelName) -> String {
    format!("{channel} presence")
}

/// The frames of the presence stream of `channel` after `after`: what [`presence`] sends, for
/// the dedicated stream connections too.
///
/// # Errors
/// 503 `store_unavailable` when the channel cannot be opened.
pub async fn presence_frames<S: Store>(
    state: &AppState<S>,
    channel: &ChannelName,
    after: Option<u64>,
) -> Result<BoxStream<'static, FrameResult>, ApiError> {
    let follow = state
        .hub
        .follow_presence(channel, after.unwrap_or(0))
        .await?;
    Ok(
        futures_util::stream::unfold(follow, |mut follow| async move {
            match follow.next().await {
                Some(change) => Some((Ok(presence_frame(&change)), follow)),
                None if follow.lagged() => Some((Err(EndReason::Lagged), follow)),
                None => None,
            }
        })
        .boxed(),
    )
}
