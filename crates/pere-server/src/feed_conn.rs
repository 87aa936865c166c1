//! Dedicated stream connections: a plain HTTP/1.1 request for a feed (`GET /feed/...`), a receipt
//! stream (`GET /receipts/...`) or a presence stream (`GET /presence/...`) is served by a small
//! loop of its own instead of a hyper connection.
//!
//! Why: a stream holds its connection for hours and mostly idles. A hyper connection keeps 8 KiB
//! read and write buffers for its whole life; this loop keeps the stream's source and the socket
//! (a feed's keep-alives and its end at shutdown come through its source, from the hub), which
//! is what lets one node hold tens of thousands of devices (and dashboards following their
//! receipts) in little memory. It also writes frames without chunked encoding
//! (the response is delimited by closing the connection, which every SSE client accepts) and
//! gathers queued frames into one write. While a feed waits idle, the hub may write an event to
//! its socket itself (`direct_write`): a paced delivery then wakes nothing here.
//!
//! A request's first bytes decide: only one that opens with one of [`STREAM_PREFIXES`] is read on
//! and parsed here, with `httparse` (hyper's own parser); every other goes to hyper unparsed. The
//! request passes the same door as every other request ([`crate::door::admit`],
//! [`crate::door::exit`]) and is opened by the same code as a stream served through hyper
//! ([`crate::streams`]); anything this loop is not sure of goes to hyper with the bytes already
//! read put back in front.

use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::Request;
use pere_core::{DirectWrite, Store, Subscription};
use pere_proto::sse;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::door::{self, Listener};
use crate::error::ApiError;
use crate::limits::{Arrival, StreamSlot};
use crate::request;
use crate::response::{self, raw_answer, raw_head};
use crate::route::{self, Route};
use crate::sse_body::{next_frame, ready_frame, watched, EndReason, FeedFrame, FrameResult};
use crate::state::AppState;
use crate::{activity, streams};

/// How every request this loop serves begins; a request that begins otherwise is hyper's.
pub const STREAM_PREFIXES: [&str; 3] = ["GET /feed/", "GET /receipts/", "GET /presence/"];
/// The largest request head read here; larger ones (say, with many cookies) go to hyper.
const MAX_HEAD: usize = 8192;
/// Request headers parsed at most.
const MAX_HEADERS: usize = 64;
/// Queued frames gathered into one write.
const MAX_GATHER: usize = 64;

/// What the first bytes of a connection turned out to be.
#[derive(Debug)]
pub enum FirstRequest {
    /// A stream request (a feed, receipts or presence), handled here.
    Stream(Request<()>),
    /// Anything else: hyper serves the connection, starting with these bytes.
    Other(Bytes),
}

/// What a connection's first bytes say about it, before any parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// Too few bytes to tell, all of them the start of one of [`STREAM_PREFIXES`].
    Unknown,
    /// It opens with one of [`STREAM_PREFIXES`]: a stream, if its head turns out to be one this
    /// loop serves.
    Stream,
    /// Any other request, or HTTP/2's preface (`PRI * HTTP/2.0`).
    Other,
}

impl Opening {
    fn of(first: &[u8]) -> Opening {
        let mut opening = Opening::Other;
        for prefix in STREAM_PREFIXES.map(str::as_bytes) {
            let compared = first.len().min(prefix.len());
            if first[..compared] == prefix[..compared] {
                if compared == prefix.len() {
                    return Opening::Stream;
                }
                opening = Opening::Unknown;
            }
        }
        opening
    }
}

/// Reads the start of a connection, and tells whether it is a stream request for this loop.
///
/// Only a connection that opens with one of [`STREAM_PREFIXES`] is read up to the end of its head
/// and parsed here; any other is handed to hyper as soon as its first bytes differ from those,
/// most often after one read, and hyper alone parses it. A stream request that this loop does
/// not serve (not
/// HTTP/1.1, with a body or an upgrade, a longer path, requests pipelined after it, a head too
/// large or invalid) goes to hyper as well, and is then parsed a second time, by hyper, which
/// takes no request parsed elsewhere. Such requests are rare.
///
/// # Errors
/// The socket's error, or a time-out when the client sends no complete stream head (nor anything
/// that shows it is not one) before `overdue` completes (the connection's
/// [`Arrival::overdue`]).
pub async fn read_first_request<R>(
    stream: &mut R,
    overdue: impl std::future::Future<Output = ()>,
) -> io::Result<FirstRequest>
where
    R: AsyncRead + Unpin,
{
    read_request_start(BytesMut::new(), stream, overdue).await
}

/// As [`read_first_request`], for a request whose first bytes (`start`, possibly none) were
/// read already: the next request of a kept-alive connection.
///
/// # Errors
/// As [`read_first_request`].
pub async fn read_request_start<R>(
    start: BytesMut,
    stream: &mut R,
    overdue: impl std::future::Future<Output = ()>,
) -> io::Result<FirstRequest>
where
    R: AsyncRead + Unpin,
{
    let mut buf = start;
    buf.reserve(1024);
    let read = async {
        // The prefix may come in pieces: read until it is whole or ruled out.
        loop {
            if Opening::of(&buf) == Opening::Unknown && stream.read_buf(&mut buf).await? == 0 {
                return Ok(FirstRequest::Other(buf.split().freeze()));
            }
            match Opening::of(&buf) {
                Opening::Unknown => {}
                Opening::Stream => break,
                Opening::Other => return Ok(FirstRequest::Other(buf.split().freeze())),
            }
        }
        loop {
            match read_head(&buf) {
                Head::Stream(request) => return Ok(FirstRequest::Stream(request)),
                Head::Other => return Ok(FirstRequest::Other(buf.split().freeze())),
                Head::Partial => {}
            }
            buf.reserve(1024);
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(FirstRequest::Other(buf.split().freeze()));
            }
        }
    };
    // Read first: a request already here registers no timer.
    tokio::select! {
        biased;
        first = read => first,
        () = overdue => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// What the bytes read so far of a request that opens with one of [`STREAM_PREFIXES`] hold.
enum Head {
    /// The head is not whole yet.
    Partial,
    /// A stream request this loop serves.
    Stream(Request<()>),
    /// Anything else, for hyper.
    Other,
}

/// Parses what a connection sent so far. Not async, and so apart from the reads: the parser's
/// room for headers (2 KiB) would otherwise be kept in the future across each read.
fn read_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        // Bytes after the head would be pipelined requests, which this loop never reads.
        Ok(httparse::Status::Complete(head_len)) if head_len == buf.len() => {
            as_stream_request(&parsed).map_or(Head::Other, Head::Stream)
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Head::Partial,
        _ => Head::Other,
    }
}

/// Parses `head` (a whole request head) as this loop does: a `GET` of a feed, receipt or
/// presence stream with no body, or `None` for anything this loop leaves to hyper (an incomplete
/// or invalid head, or one followed by more bytes, too). For fuzzing and tests.
pub fn parse_stream_head(head: &[u8]) -> Option<Request<()>> {
    match read_head(head) {
        Head::Stream(request) => Some(request),
        Head::Partial | Head::Other => None,
    }
}

/// A `GET` of a stream (`/feed/:channel`, `/receipts/:channel`, `/presence/:channel`) with no
/// body, as an `http` request; `None` for anything else.
fn as_stream_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<()>> {
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let path = parsed.path?;
    let channel = STREAM_PREFIXES
        .iter()
        .find_map(|prefix| path.strip_prefix(&prefix["GET ".len()..]))?;
    if channel.split('?').next()?.contains('/') {
        return None;
    }
    // Built in place rather than with `Request::builder`, which moves the whole request at each
    // header.
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body, or an upgrade, is beyond this loop: hyper handles those.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
        {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    // A new request is a GET, HTTP/1.1.
    let mut request = Request::new(());
    *request.uri_mut() = path.parse().ok()?;
    *request.headers_mut() = headers;
    Some(request)
}

/// Serves a stream (a feed, receipts or presence) on its own connection until the client goes
/// away, the stream ends, or the server shuts down. The connection is closed at the end.
///
/// Not an `async fn`: its arguments would be kept in the future for the stream's whole life (the
/// request alone is 224 bytes). They go into the opening, boxed and dropped once the stream is
/// open; what streams holds only what it uses.
pub fn serve<S: Store>(
    state: Arc<AppState<S>>,
    stream: TcpStream,
    request: Request<()>,
    arrival: Arrival,
) -> impl std::future::Future<Output = ()> + Send {
    // Boxed: a future is as large as its largest state, and opening (the door, the store's
    // reads, the subscription) would otherwise be paid for by every idle feed for its whole life.
    let opening = Box::pin(start(state, stream, request, arrival));
    async move {
        // Not `if let`: the scrutinee's storage would stay in the future for the stream's life
        // (336 bytes more per feed).
        let Some(started) = opening.await else {
            return;
        };
        started.stream().await;
    }
}

/// Lets `request` in and opens its stream, then writes the answer's head; `None` when it was
/// refused (the refusal written) or the client went away.
async fn start<S: Store>(
    state: Arc<AppState<S>>,
    mut stream: TcpStream,
    request: Request<()>,
    arrival: Arrival,
) -> Option<Started<S>> {
    let (mut parts, ()) = request.into_parts();
    if let Some(uri) = route::unescape_names(&parts.uri) {
        parts.uri = uri;
    }
    // The arrival goes with the opening: its head is here, and nothing of it is kept for the
    // feed's life.
    let opened = open(&state, arrival, &parts).await;
    match answer(&state, parts, opened) {
        Ok(Opened { source, slot, head }) => {
            if stream.write_all(&head).await.is_err() {
                let (name, device) = source.names();
                drop(source);
                drop(slot);
                activity::feed_end(&name, device.as_deref(), EndReason::Closed.describe());
                return None;
            }
            if let (Source::Feed(subscription), Some(direct)) = (&source, direct_write(&stream)) {
                // Written to by the hub itself while the feed waits idle: a paced delivery is
                // then one write, with no wake-up of this task. Taken back when `Started` is
                // dropped, before the socket closes.
                subscription.write_directly(direct);
            }
            Some(Started {
                stream,
                source,
                _slot: slot,
            })
        }
        Err(refusal) => {
            if stream.write_all(&refusal).await.is_ok() {
                let _ = stream.shutdown().await;
            }
            None
        }
    }
}

/// A feed's socket as the hub writes to it itself while the feed waits idle
/// ([`pere_core::Subscription::write_directly`]): by its descriptor, which stays open until
/// `Started` is dropped, and `Started`'s drop takes it back from the hub first. (Linux only:
/// elsewhere, the feed's task writes every frame.)
#[cfg(target_os = "linux")]
fn direct_write(stream: &TcpStream) -> Option<DirectWrite> {
    use std::os::fd::AsRawFd;
    Some(DirectWrite {
        write: send_now,
        handle: stream.as_raw_fd() as u64,
    })
}

#[cfg(not(target_os = "linux"))]
fn direct_write(_: &TcpStream) -> Option<DirectWrite> {
    None
}

/// Writes what socket `descriptor` takes of `frame` now, without waiting.
#[cfg(target_os = "linux")]
fn send_now(descriptor: u64, frame: &[u8]) -> io::Result<usize> {
    // Safety: `frame` is valid for its length. The descriptor is a feed's socket, open for as
    // long as the hub holds it (see `direct_write`).
    #[allow(unsafe_code)]
    let sent = unsafe {
        libc::send(
            descriptor as libc::c_int,
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// A stream answered: what it holds for its life.
struct Started<S: Store> {
    stream: TcpStream,
    source: Source<S>,
    /// The stream's place in the server's counts, held until the stream ends.
    _slot: Option<StreamSlot>,
}

impl<S: Store> Drop for Started<S> {
    fn drop(&mut self) {
        // Before the socket closes (its descriptor could be another connection's at once).
        if let Source::Feed(subscription) = &self.source {
            subscription.stop_direct_writes();
        }
    }
}

impl<S: Store> Started<S> {
    /// Streams until the client goes away, the stream ends, or the server shuts down.
    ///
    /// Taken apart only by reference: moved into locals, the stream's state would be held
    /// twice, once as the future's argument and once as its locals.
    fn stream(self) -> impl std::future::Future<Output = ()> + Send {
        let mut started = self;
        async move {
            let reason = started.run().await;
            // The names are made for the line only now: an idle feed does not carry them.
            let (name, device) = started.source.names();
            // Given back before the line is written: whoever reads it may open another at once.
            drop(started);
            activity::feed_end(&name, device.as_deref(), reason);
        }
    }

    /// Writes what the source gives (keep-alives among it); returns why the stream ended.
    ///
    /// An idle feed waits on two things only, its source and its socket: the hub asks its
    /// source for keep-alives and ends it when the server stops, so it holds no timer or
    /// shutdown wait of its own (their room in every feed's task, and a timer per feed in the
    /// runtime's wheel).
    async fn run(&mut self) -> &'static str {
        let Started { stream, source, .. } = self;
        // Made once, not at every turn of the loop (every delivery).
        let cut = source.cut_notice();
        tokio::pin!(cut);
        loop {
            // In this order, and only until one is ready: a feed woken for an event (or a
            // keep-alive, or its end) polls nothing else. A source that never stops giving (a
            // long replay) still ends when the client goes: its writes fail.
            let first = tokio::select! {
                biased;
                frame = source.next() => match frame {
                    Ok(frame) => frame,
                    Err(reason) => return reason.describe(),
                },
                // A feed client sends nothing more: readable means it closed (or misbehaves).
                // (The socket's own read waker: no waiter to add and remove at every turn.)
                _ = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => {
                    let mut probe = [0u8; 64];
                    match stream.try_read(&mut probe) {
                        Ok(_) => return EndReason::Closed.describe(),
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return EndReason::Closed.describe(),
                    }
                }
            };
            // Whatever else is already queued goes out in the same write. Made after the wait
            // and gone after the write, so an idle feed holds no buffer; a single frame (a paced
            // feed's usual write) allocates nothing.
            let mut more: Vec<FeedFrame> = Vec::new();
            while more.len() < MAX_GATHER - 1 {
                match source.try_next() {
                    Some(frame) => more.push(frame),
                    None => break,
                }
            }
            // Written at once, as most writes are, with nothing polled but the socket. Only
            // what the socket did not take waits, watching the cut.
            let Ok(stopped) = write_now(stream, &first, &more) else {
                return EndReason::Closed.describe();
            };
            if let Some(stopped) = stopped {
                let mut rest: Vec<Bytes> = std::iter::once(first)
                    .chain(more)
                    .map(FeedFrame::into_bytes)
                    .collect();
                drop_written(&mut rest, stopped);
                // Boxed, and only the rest kept: a write that waits is rare, and its state would
                // otherwise be room in every feed's task.
                let written = tokio::select! {
                    biased;
                    written = Box::pin(write_rest(stream, rest)) => written,
                    // Blocked on a client that does not read, and cut (or the server stops)
                    // meanwhile: close now.
                    reason = &mut cut => return reason.describe(),
                };
                if written.is_err() {
                    return EndReason::Closed.describe();
                }
            }
        }
    }
}

/// What a connection streams: a feed's subscription, or the frames of a receipt or presence
/// stream (as [`crate::streams`] makes them for hyper too).
enum Source<S: Store> {
    Feed(Subscription<S>),
    Frames {
        /// With their keep-alives and their end at shutdown ([`watched`]).
        frames: BoxStream<'static, FrameResult>,
        /// The stream's name in the log.
        name: String,
        /// Why the stream ends, when that was learnt while gathering frames for a write.
        end: Option<EndReason>,
        /// Ends a write blocked on a client that does not read, when the server stops.
        shutdown: CancellationToken,
    },
}

impl<S: Store> Source<S> {
    fn frames(state: &AppState<S>, frames: BoxStream<'static, FrameResult>, name: String) -> Self {
        Source::Frames {
            frames: watched(frames, state.config.keep_alive_every(), &state.shutdown),
            name,
            end: None,
            shutdown: state.shutdown.clone(),
        }
    }

    /// The stream's name and device, for the log line when it ends.
    fn names(&self) -> (String, Option<String>) {
        match self {
            Source::Feed(subscription) => (
                subscription.channel().to_string(),
                subscription.device().map(|d| d.to_string()),
            ),
            Source::Frames { name, .. } => (name.clone(), None),
        }
    }

    /// Resolves, with why, when a feed is cut (for lagging, or because the server stops) or the
    /// server stops; receipt and presence streams learn that they lag from their source, as
    /// through hyper.
    fn cut_notice(&self) -> impl std::future::Future<Output = EndReason> + 'static {
        match self {
            Source::Feed(subscription) => {
                Either::Left(subscription.cut_notice().map(EndReason::from))
            }
            // Boxed: room for the wait in every feed's task otherwise.
            Source::Frames { shutdown, .. } => Either::Right(
                Box::pin(shutdown.clone().cancelled_owned()).map(|()| EndReason::Shutdown),
            ),
        }
    }

    /// The next frame, or why the stream ends.
    async fn next(&mut self) -> Result<FeedFrame, EndReason> {
        match self {
            Source::Feed(subscription) => next_frame(subscription).await,
            Source::Frames { frames, end, .. } => match end.take() {
                Some(reason) => Err(reason),
                None => frames
                    .next()
                    .await
                    .unwrap_or(Err(EndReason::Closed))
                    .map(FeedFrame::Made),
            },
        }
    }

    /// A frame ready now, to go out in the same write as the one before.
    fn try_next(&mut self) -> Option<FeedFrame> {
        match self {
            Source::Feed(subscription) => ready_frame(subscription),
            Source::Frames { frames, end, .. } => {
                if end.is_some() {
                    return None;
                }
                // Polled once without waiting; the next `next` polls it again, and waits.
                match frames.next().now_or_never()? {
                    Some(Ok(frame)) => Some(FeedFrame::Made(frame)),
                    Some(Err(reason)) => {
                        *end = Some(reason);
                        None
                    }
                    None => {
                        *end = Some(EndReason::Closed);
                        None
                    }
                }
            }
        }
    }
}

/// A stream let in and opened.
struct Opened<S: Store> {
    source: Source<S>,
    /// The stream's place in the server's counts, held as long as the stream.
    slot: Option<StreamSlot>,
    /// The answer's head, and the stream's opening, to write first.
    head: Vec<u8>,
}

/// Lets the request in through the door and opens its stream; the slot is the stream's place
/// in the server's counts, held as long as the stream.
async fn open<S: Store>(
    state: &AppState<S>,
    arrival: Arrival,
    parts: &Parts,
) -> Result<(Source<S>, Option<StreamSlot>), ApiError> {
    let admitted = door::admit(state, &arrival, &parts.method, &parts.uri, &parts.headers)?;
    drop(arrival);
    let headers = &parts.headers;
    // Only stream requests are handed to this loop (see `as_stream_request`).
    let source = match admitted.route {
        Route::Feed(channel) => {
            let channel = request::channel(channel)?;
            let resume = request::resume(headers, &admitted.query)?;
            let device = admitted.caller.device;
            Source::Feed(streams::open_feed(state, &channel, device, resume).await?)
        }
        Route::Receipts(channel) => {
            let channel = request::channel(channel)?;
            let after = request::resume(headers, &admitted.query)?.after;
            let frames = streams::receipt_frames(state, &channel, after).await?;
            Source::frames(state, frames, streams::receipts_name(&channel))
        }
        Route::Presence(channel) => {
            let channel = request::channel(channel)?;
            let after = request::resume(headers, &admitted.query)?.after;
            let frames = streams::presence_frames(state, &channel, after).await?;
            Source::frames(state, frames, streams::presence_name(&channel))
        }
        _ => return Err(ApiError::not_found()),
    };
    Ok((source, admitted.stream))
}

/// Passes what became of `request` through the door's exit, as a hyper connection does: the
/// stream with the bytes that open it, or the bytes of the refusal. Not async: nothing here
/// takes room in the stream's future.
fn answer<S: Store>(
    state: &AppState<S>,
    request: Parts,
    opened: Result<(Source<S>, Option<StreamSlot>), ApiError>,
) -> Result<Opened<S>, Vec<u8>> {
    let (outcome, opened) = match opened {
        Ok(opened) => (Ok(response::sse(response::empty())), Some(opened)),
        Err(err) => (Err(err), None),
    };
    let (mut head, body) = door::exit(state, &request, outcome, Listener::Main, None).into_parts();
    // The answer ends with the connection: a stream has no length, and no other request follows.
    let close = HeaderValue::from_static("close");
    match opened {
        Some((source, slot)) => {
            head.headers.insert(header::CONNECTION, close);
            let mut out = raw_head(head.status, &head.headers);
            out.extend_from_slice(&sse::encode_opening(state.config.retry_ms));
            Ok(Opened {
                source,
                slot,
                head: out,
            })
        }
        None => {
            // A refusal's body is whole from the start: nothing to wait for.
            let body = match body.collect().now_or_never() {
                Some(Ok(collected)) => collected.to_bytes(),
                Some(Err(never)) => match never {},
                None => Bytes::new(),
            };
            head.headers.insert(header::CONNECTION, close);
            Err(raw_answer(head.status, &head.headers, &body))
        }
    }
}

/// Writes as much of `first`, then `more`, as the socket takes now, gathered into as few system
/// calls as it allows. Returns where it stopped (the frame, and how much of it was written)
/// when the socket would block, or `None` once everything is written.
fn write_now<F: AsRef<[u8]>>(
    stream: &TcpStream,
    first: &F,
    more: &[F],
) -> io::Result<Option<(usize, usize)>> {
    let frame = |index: usize| {
        if index == 0 {
            first.as_ref()
        } else {
            more[index - 1].as_ref()
        }
    };
    let count = 1 + more.len();
    let mut index = 0;
    let mut offset = 0;
    while index < count {
        let attempt = if index + 1 == count {
            // One piece left (a paced feed's one frame): a plain write, no slices to set up.
            stream.try_write(&frame(index)[offset..])
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_GATHER];
            let pieces =
                std::iter::once(&frame(index)[offset..]).chain((index + 1..count).map(frame));
            let mut filled = 0;
            for (slot, piece) in slices.iter_mut().zip(pieces) {
                *slot = IoSlice::new(piece);
                filled += 1;
            }
            stream.try_write_vectored(&slices[..filled])
        };
        let mut written = match attempt {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => written,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                return Ok(Some((index, offset)))
            }
            Err(err) => return Err(err),
        };
        while index < count && written >= frame(index).len() - offset {
            written -= frame(index).len() - offset;
            index += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(None)
}

/// Writes what a socket did not take at once, `rest` in order, as the socket takes it.
async fn write_rest(stream: &TcpStream, mut rest: Vec<Bytes>) -> io::Result<()> {
    loop {
        // The socket's own write waker, as for reads: `writable()` would be a waiter of 200
        // bytes in the future.
        std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await?;
        let Some(stopped) = write_now(stream, &rest[0], &rest[1..])? else {
            return Ok(());
        };
        drop_written(&mut rest, stopped);
    }
}

/// Leaves in `frames` what [`write_now`] did not write: from the frame it stopped in, less what
/// of that one was written.
fn drop_written(frames: &mut Vec<Bytes>, (index, offset): (usize, usize)) {
    frames.drain(..index);
    frames[0] = frames[0].slice(offset..);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Option<Request<()>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(head.as_bytes()).unwrap().is_complete());
        as_stream_request(&parsed)
    }

    #[test]
    fn only_plain_feed_gets_are_taken() {
        let feed = parse(
            "GET /feed/C1?device=W1 HTTP/1.1\r\nHost: x\r\ndevice: H1\r\nLast-Event-ID: 4\r\n\r\n",
        )
        .unwrap();
        assert_eq!(feed.uri().path(), "/feed/C1");
        assert_eq!(feed.headers()["last-event-id"], "4");
        assert!(parse("POST /feed/C1 HTTP/1.1\r\nHost: x\r\n\r\n").is_none());
        assert!(parse("GET /push/C1 HTTP/1.1\r\nHost: x\r\n\r\n").is_none());
        assert!(parse("GET /feed/C1/x HTTP/1.1\r\nHost: x\r\n\r\n").is_none());
        assert!(parse("GET /feed/C1 HTTP/1.0\r\nHost: x\r\n\r\n").is_none());
        assert!(parse("GET /feed/C1 HTTP/1.1\r\nContent-Length: 3\r\n\r\n").is_none());
        let receipts = parse("GET /receipts/C1 HTTP/1.1\r\nLast-Event-ID: 4\r\n\r\n").unwrap();
        assert_eq!(receipts.uri().path(), "/receipts/C1");
        assert!(parse("GET /presence/C1?after=2 HTTP/1.1\r\n\r\n").is_some());
        assert!(parse("GET /admin/receipts/C1/4 HTTP/1.1\r\n\r\n").is_none());
        assert!(parse("GET /receipts/C1/4 HTTP/1.1\r\n\r\n").is_none());
        assert!(parse("HEAD /receipts/C1 HTTP/1.1\r\n\r\n").is_none());
    }

    #[test]
    fn the_first_bytes_decide_without_parsing() {
        assert_eq!(Opening::of(b""), Opening::Unknown);
        assert_eq!(Opening::of(b"GE"), Opening::Unknown);
        assert_eq!(Opening::of(b"GET /fee"), Opening::Unknown);
        assert_eq!(Opening::of(b"GET /feed/"), Opening::Stream);
        assert_eq!(Opening::of(b"GET /feed/C1 HTTP/1.1\r\n"), Opening::Stream);
        assert_eq!(Opening::of(b"GET /re"), Opening::Unknown);
        assert_eq!(Opening::of(b"GET /receipts/C1"), Opening::Stream);
        assert_eq!(Opening::of(b"GET /presence/"), Opening::Stream);
        assert_eq!(Opening::of(b"GET /presences"), Opening::Other);
        assert_eq!(Opening::of(b"GET /readyz"), Opening::Other);
        assert_eq!(Opening::of(b"GET /feedback/C1"), Opening::Other);
        assert_eq!(Opening::of(b"GET /h"), Opening::Other);
        assert_eq!(Opening::of(b"POST /feed/C1"), Opening::Other);
        assert_eq!(Opening::of(b"get /feed/C1"), Opening::Other);
        assert_eq!(Opening::of(b"PRI * HTTP/2.0\r\n"), Opening::Other);
    }

    /// A connection that yields `pieces` one read at a time, then its end.
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some(piece) = self.0.pop_front() {
                buf.put_slice(&piece);
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn first_request(pieces: &[&[u8]]) -> (FirstRequest, usize) {
        let mut conn = Pieces(pieces.iter().map(|p| p.to_vec()).collect());
        let first = read_first_request(&mut conn, std::future::pending())
            .await
            .unwrap();
        (first, conn.0.len())
    }

    const FEED: &[u8] = b"GET /feed/C1?device=W1 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 4\r\n\r\n";

    #[tokio::test]
    async fn a_feed_head_in_pieces_is_a_feed_wherever_it_is_cut() {
        for cut in 1..FEED.len() {
            for pieces in [
                vec![&FEED[..cut], &FEED[cut..]],
                FEED.chunks(cut).collect::<Vec<_>>(),
            ] {
                match first_request(&pieces).await {
                    (FirstRequest::Stream(request), 0) => {
                        assert_eq!(request.uri(), "/feed/C1?device=W1");
                        assert_eq!(request.headers()["last-event-id"], "4");
                    }
                    other => panic!("cut at {cut}: {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn other_connections_go_to_hyper_at_their_first_different_byte() {
        let other = |first: FirstRequest| match first {
            FirstRequest::Other(bytes) => bytes,
            FirstRequest::Stream(request) => panic!("taken as a stream: {request:?}"),
        };
        // Not read on: the rest of the head is left for hyper to read.
        let (first, unread) = first_request(&[b"GET /hea", b"lth HTTP/1.1\r\n\r\n"]).await;
        assert_eq!((&other(first)[..], unread), (&b"GET /hea"[..], 1));
        let (first, unread) = first_request(&[b"G", b"ET /feedback/C1 HTTP/1.1\r\n"]).await;
        assert_eq!(
            (&other(first)[..], unread),
            (&b"GET /feedback/C1 HTTP/1.1\r\n"[..], 0)
        );
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let (first, unread) = first_request(&[preface, b"\0\0\x12\x04"]).await;
        assert_eq!((&other(first)[..], unread), (&preface[..], 1));
        // Closed before anything decides.
        let (first, _) = first_request(&[b"GE"]).await;
        assert_eq!(&other(first)[..], b"GE");
        // A `GET /feed/` this loop does not serve: every byte read is handed on.
        let pipelined = [FEED, b"GET /health HTTP/1.1\r\n\r\n"].concat();
        let (first, _) = first_request(&[&pipelined]).await;
        assert_eq!(&other(first)[..], &pipelined[..]);
        let (first, _) = first_request(&[b"GET /feed/C1 HTTP/1.0\r\n", b"\r\n"]).await;
        assert_eq!(&other(first)[..], b"GET /feed/C1 HTTP/1.0\r\n\r\n");
        let (first, _) = first_request(&[b"GET /feed/C1 HTTP/1.1\r\nHost"]).await;
        assert_eq!(&other(first)[..], b"GET /feed/C1 HTTP/1.1\r\nHost");
    }

    proptest::proptest! {
        /// The first bytes never turn away a head the feed loop would serve.
        #[test]
        fn a_head_the_feed_loop_serves_opens_with_its_prefix(
            line in "(GET|POST|get|PRI) (/feed/|/feedback/|/receipts/|/presence/|/health|/|\\*)[a-zA-Z0-9/]{0,8} HTTP/(1\\.1|1\\.0|2\\.0)\r\n",
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            for head in [[line.as_bytes(), b"\r\n"].concat(), [line.as_bytes(), &rest].concat()] {
                if parse_stream_head(&head).is_some() {
                    proptest::prop_assert_eq!(Opening::of(&head), Opening::Stream);
                }
            }
        }

        #[test]
        fn any_request_head_is_a_feed_or_goes_to_hyper(head in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(_)) = parsed.parse(&head) {
                let _ = as_stream_request(&parsed);
            }
        }

        #[test]
        fn any_feed_request_line_and_headers_parse_or_are_refused(
            path in "/feed/[ -~]{0,60}",
            value in "[ -~]{0,80}",
        ) {
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\ndevice: {value}\r\nLast-Event-ID: {value}\r\n\r\n");
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(_)) = parsed.parse(head.as_bytes()) {
                let _ = as_stream_request(&parsed);
            }
        }
    }
}
