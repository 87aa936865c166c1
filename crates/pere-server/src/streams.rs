//! The three SSE streams a client can hold: a channel's event feed, its receipt stream and its
//! presence stream. Each is opened here from what the request asked (the handlers and the
//! dedicated feed connections both open feeds through [`open_feed`]) and framed as SSE.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pere_core::hub::{PresenceChange, ReceiptNotice};
use pere_core::ledger::Completion;
use pere_core::wire::{to_json, CompletionJson, PresenceJson, ReceiptJson};
use pere_core::{sse, ChannelName, DeviceId, Receipt, Store, StoreError, SubscribeRequest, Subscription};
use tokio::sync::broadcast::error::RecvError;

use crate::activity;
use crate::error::ApiError;
use crate::request::Resume;
use crate::sse_body::{ConnectionCloser, EndReason, SseBody, StreamContext};
use crate::state::AppState;

/// What a stream needs from the server around it; `closer` closes the connection it runs on.
pub fn context<S: Store>(state: &AppState<S>, closer: Option<ConnectionCloser>) -> StreamContext {
    StreamContext {
        retry_ms: state.config.retry_ms,
        keep_alive_every: Duration::from_secs(state.config.keep_alive_secs.max(1)),
        shutdown: state.shutdown.clone().cancelled_owned(),
        closer,
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
    let request = SubscribeRequest { device, last_event_id: resume.after, last_event_id_raw: resume.raw };
    let logged_device = request.device.clone();
    let logged_resume = request.last_event_id_raw.clone();
    let subscription = state.hub.subscribe(channel, request).await?;
    activity::feed(channel.as_str(), logged_device.as_ref().map(|d| d.as_str()), logged_resume.as_deref());
    Ok(subscription)
}

fn receipt_frame(notice: &ReceiptNotice) -> Bytes {
    let data = to_json(&ReceiptJson::from(&notice.receipt));
    let mut frame = sse::encode_event(notice.receipt.seq, Some("receipt"), &data).to_vec();
    if let Some(done) = notice.completed {
        frame.extend_from_slice(&completion_frame(&notice.receipt, done));
    }
    Bytes::from(frame)
}

/// A completion is no position in the receipt stream: it carries no `id:`, so one heard after
/// later receipts were sent does not move the client's last id back.
fn completion_frame(receipt: &Receipt, done: Completion) -> Bytes {
    let data = CompletionJson { channel: receipt.channel.to_string(), id: done.event_id, expected: done.expected };
    sse::encode_notice("complete", &to_json(&data))
}

/// The frames of every receipt after `through` up to the one `notice` announces, read from the
/// store, and the seq now sent through. Notices can overtake each other (two receipts recorded
/// together wake their handlers in any order), but the store shows receipts in seq order, so
/// reading it keeps the stream in order and a client resuming from its last id misses nothing.
async fn receipts_up_to<S: Store>(
    store: &S,
    channel: &ChannelName,
    mut through: u64,
    notice: &ReceiptNotice,
) -> Result<(Bytes, u64), StoreError> {
    let mut frames = Vec::new();
    while through < notice.receipt.seq {
        let page = store.receipts_after(channel, through, RECEIPT_PAGE).await?;
        if page.is_empty() {
            break;
        }
        for receipt in page {
            through = receipt.seq;
            let completed = if receipt.seq == notice.receipt.seq { notice.completed } else { None };
            frames.extend_from_slice(&receipt_frame(&ReceiptNotice { receipt, completed }));
        }
    }
    if through < notice.receipt.seq {
        // Pruned already (a late receipt for an event retention removed): send it as announced.
        frames.extend_from_slice(&receipt_frame(notice));
        through = notice.receipt.seq;
    }
    Ok((Bytes::from(frames), through))
}

/// Receipts read from the store per replay step of the receipt stream.
const RECEIPT_PAGE: usize = 256;

/// The receipt stream of `channel` from `after` (or live only), as an SSE body.
///
/// # Errors
/// 503 `store_unavailable` when the channel cannot be opened.
pub async fn receipts<S: Store>(
    state: &Arc<AppState<S>>,
    channel: ChannelName,
    after: Option<u64>,
    context: StreamContext,
) -> Result<SseBody, ApiError> {
    // Live first, then history: nothing falls between the two. History is read a page at a time
    // as the client takes it, however long it is; live receipts already replayed are skipped.
    let (live, head) = state.hub.follow_receipts(&channel).await?;
    let replay = after.map(|after| (after, VecDeque::<Receipt>::new()));
    let label = format!("{channel} receipts");
    let start = (state.hub.store().clone(), channel, live, replay, after.unwrap_or(head));
    let frames = futures_util::stream::unfold(start, |(store, channel, mut live, mut replay, mut through)| async move {
        while let Some((next, page)) = replay.as_mut() {
            if let Some(receipt) = page.pop_front() {
                through = receipt.seq;
                let frame = receipt_frame(&ReceiptNotice { receipt, completed: None });
                return Some((Ok(frame), (store, channel, live, replay, through)));
            }
            match store.receipts_after(&channel, *next, RECEIPT_PAGE).await {
                Ok(more) if more.is_empty() => replay = None,
                Ok(more) => {
                    *next = more.last().map_or(*next, |r| r.seq);
                    page.extend(more);
                }
                Err(err) => {
                    tracing::error!("receipt stream of {channel}: {err}");
                    return Some((Err(EndReason::StoreFailed), (store, channel, live, None, through)));
                }
            }
        }
        loop {
            match live.recv().await {
                // Sent already, read from the store ahead of its notice: only a completion is news.
                Ok(notice) if notice.receipt.seq <= through => {
                    if let Some(done) = notice.completed {
                        let frame = completion_frame(&notice.receipt, done);
                        return Some((Ok(frame), (store, channel, live, None, through)));
                    }
                }
                Ok(notice) => match receipts_up_to(&store, &channel, through, &notice).await {
                    Ok((frames, sent)) => return Some((Ok(frames), (store, channel, live, None, sent))),
                    Err(err) => {
                        tracing::error!("receipt stream of {channel}: {err}");
                        return Some((Err(EndReason::StoreFailed), (store, channel, live, None, through)));
                    }
                },
                // The reader fell behind the live buffer: it resumes from its last id.
                Err(RecvError::Lagged(_)) => return Some((Err(EndReason::Lagged), (store, channel, live, None, through))),
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .boxed();
    Ok(SseBody::frames(frames, label, None, context))
}

fn presence_frame(change: &PresenceChange) -> Bytes {
    sse::encode_event(change.seq, Some("presence"), &to_json(&PresenceJson::from(change)))
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
    let (replay, live) = state.hub.follow_presence(&channel, after.unwrap_or(0)).await?;
    let replay: Vec<_> = replay.iter().map(|c| Ok(presence_frame(c))).collect();
    let live = futures_util::stream::unfold(live, |mut live| async move {
        match live.recv().await {
            Ok(change) => Some((Ok(presence_frame(&change)), live)),
            Err(RecvError::Lagged(_)) => Some((Err(EndReason::Lagged), live)),
            Err(RecvError::Closed) => None,
        }
    });
    let frames = futures_util::stream::iter(replay).chain(live).boxed();
    Ok(SseBody::frames(frames, format!("{channel} presence"), None, context))
}
