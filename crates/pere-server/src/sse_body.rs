//! The body of every SSE response served by hyper (event feeds, receipt and presence streams): a
//! stream of frames and a log line when the stream closes; the keep-alive comments and the end on
//! shutdown of the streams that follow something else than a feed ([`watched`]); and the one
//! mapping of feed items to frames, shared with dedicated feed connections.
//!
//! A feed needs no timer or shutdown wait of its own: the hub hands it keep-alives
//! ([`pere_core::HubConfig::keep_alive`]) and ends it when the server stops
//! ([`pere_core::Hub::end_feeds`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use hyper::body::{Body, Frame, SizeHint};
use pere_core::{CutReason, Event, FeedItem, Store, Subscription};
use pere_proto::sse;
use pere_proto::wire::{GapNotice, ResetNotice};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::activity;
use crate::limits::StreamSlot;

/// Closes the HTTP/1.1 connection a request came on. A feed cut for being too slow closes its
/// connection rather than waiting for a peer that does not read to drain the frames already
/// written; the client resumes with Last-Event-ID and loses nothing. (An HTTP/2 connection
/// carries other streams: a stream cut there ends alone.)
#[derive(Debug, Clone, Default)]
pub struct ConnectionCloser(CancellationToken);

impl ConnectionCloser {
    /// Closes the connection now.
    pub fn close(&self) {
        self.0.cancel();
    }

    /// Resolves once the connection is closed (or asked to close).
    pub async fn closed(&self) {
        self.0.cancelled().await;
    }
}

/// Why a stream ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The source ended or the client went away.
    Closed,
    /// The client fell too far behind.
    Lagged,
    /// The server is shutting down.
    Shutdown,
    /// History could not be read.
    StoreFailed,
}

impl From<CutReason> for EndReason {
    fn from(reason: CutReason) -> Self {
        match reason {
            CutReason::Lagged => EndReason::Lagged,
            CutReason::Stopping => EndReason::Shutdown,
        }
    }
}

/// What an SSE source yields: a frame, or the reason it ends.
pub type FrameResult = Result<Bytes, EndReason>;

/// A feed's frame: an event's own, written from the event, or one made for this feed.
///
/// Why not the event's frame as `Bytes`: its count of holders is one line of memory shared by
/// every feed of the channel, and taking and giving back a count per delivery, on whichever core
/// each feed runs, moved that line between the cores twice per delivery (a fifth of the server's
/// own time in a paced fan-out on two workers). The event's count is taken once anyway, when
/// the hub queues it for the feed.
#[derive(Debug)]
pub enum FeedFrame {
    /// An event, delivered or sent again.
    Event(Arc<Event>),
    /// Anything else: a gap, a reset, a keep-alive.
    Made(Bytes),
}

impl FeedFrame {
    /// The frame as bytes of its own, for a writer that keeps it (hyper's body, a write that
    /// waits).
    pub fn into_bytes(self) -> Bytes {
        match self {
            FeedFrame::Event(event) => event.frame().clone(),
            FeedFrame::Made(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for FeedFrame {
    fn as_ref(&self) -> &[u8] {
        match self {
            FeedFrame::Event(event) => event.frame(),
            FeedFrame::Made(bytes) => bytes,
        }
    }
}

/// The next frame of a feed, or why it ends: the one mapping of feed items to frames, shared by
/// hyper feeds and dedicated feed connections.
pub async fn next_frame<S: Store>(
    subscription: &mut Subscription<S>,
) -> Result<FeedFrame, EndReason> {
    match subscription.next().await {
        Some(Ok(item)) => Ok(item_frame(subscription, item)),
        Some(Err(err)) => {
            tracing::error!("feed of {}: {err}", subscription.channel());
            Err(EndReason::StoreFailed)
        }
        None => Err(subscription
            .cut_reason()
            .map_or(EndReason::Closed, EndReason::from)),
    }
}

/// A frame of the feed ready now, without waiting (see [`Subscription::try_next`]): for writers
/// that send what is queued in one write.
pub fn ready_frame<S: Store>(subscription: &mut Subscription<S>) -> Option<FeedFrame> {
    let item = subscription.try_next()?;
    Some(item_frame(subscription, item))
}

fn item_frame<S: Store>(subscription: &Subscription<S>, item: FeedItem) -> FeedFrame {
    match item {
        FeedItem::Event(event) => FeedFrame::Event(event),
        FeedItem::Redelivery(event, sends) => {
            let device = subscription.device().map_or("-", |d| d.as_str());
            activity::redelivery(subscription.channel().as_str(), device, event.id, sends);
            FeedFrame::Event(event)
        }
        FeedItem::Gap { from, to } => FeedFrame::Made(GapNotice { from, to }.frame()),
        FeedItem::Reset { requested, head } => FeedFrame::Made(
            ResetNotice {
                last_event_id: requested,
                head,
            }
            .frame(),
        ),
        FeedItem::KeepAlive => FeedFrame::Made(Bytes::from_static(sse::KEEP_ALIVE_FRAME)),
        FeedItem::Rest { event, from } => FeedFrame::Made(event.frame().slice(from as usize..)),
    }
}

/// The frames of a stream that follows something else than a feed (receipts, presence, a
/// dashboard), with a keep-alive comment after `every` of silence and an end when `shutdown` is
/// cancelled. These streams are few, so each keeps a timer and a shutdown wait of its own, in
/// the box with its frames.
pub fn watched(
    items: BoxStream<'static, FrameResult>,
    every: Duration,
    shutdown: &CancellationToken,
) -> BoxStream<'static, FrameResult> {
    Watched {
        items,
        keep_alive: Box::pin(tokio::time::sleep(every)),
        every,
        shutdown: Box::pin(shutdown.clone().cancelled_owned()),
        ended: false,
    }
    .boxed()
}

/// See [`watched`].
struct Watched {
    items: BoxStream<'static, FrameResult>,
    keep_alive: Pin<Box<Sleep>>,
    every: Duration,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    // Once the stream said why it ends, or ended: nothing more, and the source is not polled
    // again.
    ended: bool,
}

impl Stream for Watched {
    type Item = FrameResult;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FrameResult>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.ended = true;
            return Poll::Ready(Some(Err(EndReason::Shutdown)));
        }
        match this.items.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + this.every;
                this.keep_alive.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => {
                this.ended = true;
                Poll::Ready(end)
            }
            Poll::Pending => {
                if this.keep_alive.as_mut().poll(cx).is_ready() {
                    let next = Instant::now() + this.every;
                    this.keep_alive.as_mut().reset(next);
                    return Poll::Ready(Some(Ok(Bytes::from_static(sse::KEEP_ALIVE_FRAME))));
                }
                Poll::Pending
            }
        }
    }
}

/// What every SSE stream needs from the server around it.
#[derive(Debug)]
pub struct StreamContext {
    /// The `retry:` hint, in milliseconds.
    pub retry_ms: u64,
    /// How long a stream other than a feed may stay silent before a keep-alive comment (a
    /// feed's come from the hub).
    pub keep_alive_every: Duration,
    /// Cancelled when the server shuts down: ends a stream other than a feed (the hub ends
    /// feeds).
    pub shutdown: CancellationToken,
    /// Closes the connection when the client lags.
    pub closer: Option<ConnectionCloser>,
    /// The stream's place in the server's counts, given back when the body is dropped.
    pub slot: Option<StreamSlot>,
}

/// An SSE response body.
pub struct SseBody {
    prelude: Option<Bytes>,
    items: BoxStream<'static, FrameResult>,
    ended: Option<EndReason>,
    slot: Option<StreamSlot>,
    closer: Option<ConnectionCloser>,
    channel: String,
    device: Option<String>,
}

impl std::fmt::Debug for SseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseBody")
            .field("channel", &self.channel)
            .field("device", &self.device)
            .finish()
    }
}

impl SseBody {
    /// Streams `subscription`, starting with the `retry:` hint.
    pub fn feed<S: Store>(subscription: Subscription<S>, context: StreamContext) -> Self {
        // hyper stops polling a body while the socket is full, so the cut of a client that does
        // not read is watched apart, and closes the connection.
        if let Some(closer) = context.closer.clone() {
            let cut = subscription.cut_notice();
            let shutdown = closer.clone();
            tokio::spawn(async move {
                tokio::select! {
                    // A feed ended because the server stops ends its body; hyper then closes
                    // the connection cleanly.
                    reason = cut => if reason == CutReason::Lagged { closer.close() },
                    () = shutdown.closed() => {}
                }
            });
        }
        let channel = subscription.channel().to_string();
        let device = subscription.device().map(|d| d.to_string());
        // The subscription is used where the state holds it, not moved into a local: the
        // waiting future would otherwise keep room for it twice, for as long as the feed is idle.
        let items = stream::unfold(Some(subscription), move |mut state| async move {
            let frame = next_frame(state.as_mut()?).await.map(FeedFrame::into_bytes);
            if frame.is_err() {
                state = None;
            }
            Some((frame, state))
        })
        .boxed();
        Self::new(items, channel, device, context)
    }

    /// Streams any other source of frames (receipts, presence, a dashboard), starting with the
    /// `retry:` hint, with keep-alive comments and an end on shutdown ([`watched`]).
    pub fn frames(
        items: BoxStream<'static, FrameResult>,
        channel: String,
        device: Option<String>,
        context: StreamContext,
    ) -> Self {
        let items = watched(items, context.keep_alive_every, &context.shutdown);
        Self::new(items, channel, device, context)
    }

    fn new(
        items: BoxStream<'static, FrameResult>,
        channel: String,
        device: Option<String>,
        context: StreamContext,
    ) -> Self {
        let StreamContext {
            retry_ms,
            closer,
            slot,
            ..
        } = context;
        SseBody {
            prelude: Some(sse::encode_opening(retry_ms)),
            items,
            ended: None,
            slot,
            closer,
            channel,
            device,
        }
    }

    fn end(&mut self, reason: EndReason) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.ended = Some(reason);
        if let (EndReason::Lagged, Some(closer)) = (reason, &self.closer) {
            closer.close();
        }
        Poll::Ready(None)
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.ended.is_some() {
            return Poll::Ready(None);
        }
        if let Some(prelude) = this.prelude.take() {
            return Poll::Ready(Some(Ok(Frame::data(prelude))));
        }
        match this.items.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(Frame::data(frame)))),
            Poll::Ready(Some(Err(reason))) => this.end(reason),
            Poll::Ready(None) => this.end(EndReason::Closed),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl EndReason {
    /// The reason as the log says it.
    pub fn describe(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Lagged => "too slow, resume with Last-Event-ID",
            EndReason::Shutdown => "server shutting down",
            EndReason::StoreFailed => "store failure",
        }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        // Given back before the line is written: whoever reads it may open another stream at once.
        drop(self.slot.take());
        let reason = self.ended.unwrap_or(EndReason::Closed).describe();
        activity::feed_end(&self.channel, self.device.as_deref(), reason);
    }
}
