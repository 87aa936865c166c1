//! The body of a feed response: a subscription turned into SSE frames, with keep-alive comments,
//! an end on shutdown, and a log line when the stream closes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use hyper::body::{Body, Frame, SizeHint};
use pere_core::{sse, FeedItem, Store, StoreError, Subscription};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::log::Log;
use crate::ConnectionCloser;

/// Why a feed ended, for the log.
#[derive(Debug, Clone, Copy)]
enum EndReason {
    Closed,
    Lagged,
    Shutdown,
    StoreFailed,
}

/// An SSE response body over a [`Subscription`].
pub struct SseBody {
    prelude: Option<Bytes>,
    items: BoxStream<'static, (Option<Result<FeedItem, StoreError>>, bool)>,
    keep_alive: Pin<Box<Sleep>>,
    keep_alive_every: Duration,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: Option<EndReason>,
    log: Log,
    closer: Option<ConnectionCloser>,
    channel: String,
    device: Option<String>,
}

impl std::fmt::Debug for SseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseBody").field("channel", &self.channel).field("device", &self.device).finish()
    }
}

impl SseBody {
    /// Streams `subscription`, starting with the `retry:` hint.
    pub fn new<S: Store>(
        subscription: Subscription<S>,
        retry_ms: u64,
        keep_alive_every: Duration,
        shutdown: WaitForCancellationFutureOwned,
        log: Log,
        closer: Option<ConnectionCloser>,
    ) -> Self {
        let channel = subscription.channel().to_string();
        let device = subscription.device().map(|d| d.to_string());
        // Each item carries whether the subscription was cut for lagging, read when it ends.
        let items = stream::unfold(Some(subscription), |state| async move {
            let mut subscription = state?;
            let item = subscription.next().await;
            let lagged = item.is_none() && subscription.lagged();
            let done = item.is_none();
            Some(((item, lagged), if done { None } else { Some(subscription) }))
        })
        .boxed();
        SseBody {
            prelude: Some(sse::encode_retry(retry_ms)),
            items,
            keep_alive: Box::pin(tokio::time::sleep(keep_alive_every)),
            keep_alive_every,
            shutdown: Box::pin(shutdown),
            ended: None,
            log,
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

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.ended.is_some() {
            return Poll::Ready(None);
        }
        if let Some(prelude) = this.prelude.take() {
            return Poll::Ready(Some(Ok(Frame::data(prelude))));
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            return this.end(EndReason::Shutdown);
        }
        match this.items.poll_next_unpin(cx) {
            Poll::Ready(Some((Some(Ok(item)), _))) => {
                let frame = match item {
                    FeedItem::Event(event) => event.frame().clone(),
                    FeedItem::Gap { from, to } => sse::encode_gap(from, to),
                };
                let next = Instant::now() + this.keep_alive_every;
                this.keep_alive.as_mut().reset(next);
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
            Poll::Ready(Some((Some(Err(err)), _))) => {
                eprintln!("ERROR> feed of {}: {err}", this.channel);
                this.end(EndReason::StoreFailed)
            }
            Poll::Ready(Some((None, lagged))) => this.end(if lagged { EndReason::Lagged } else { EndReason::Closed }),
            Poll::Ready(None) => this.end(EndReason::Closed),
            Poll::Pending => {
                if this.keep_alive.as_mut().poll(cx).is_ready() {
                    let next = Instant::now() + this.keep_alive_every;
                    this.keep_alive.as_mut().reset(next);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(sse::KEEP_ALIVE_FRAME)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        let reason = match self.ended {
            None | Some(EndReason::Closed) => "closed",
            Some(EndReason::Lagged) => "too slow, resume with Last-Event-ID",
            Some(EndReason::Shutdown) => "server shutting down",
            Some(EndReason::StoreFailed) => "store failure",
        };
        self.log.feed_end(&self.channel, self.device.as_deref(), reason);
    }
}
