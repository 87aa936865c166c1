//! Plain HTTP/1.1 connections other than feeds, served by hyper one request at a time, so that
//! a kept-alive connection holds nothing but its socket between requests.
//!
//! Why: a device that posts receipts keeps its connection open for the next one. Hyper keeps a
//! connection's read and write buffers (8 KiB each, more after a large request) for as long as it
//! serves the connection, so 4,000 such devices held ~80 MB between receipts, four times their
//! feeds. Here, once an answer is written and the client has sent nothing more, hyper's
//! connection is ended without closing the socket (`Parking` notices the moment), and the
//! socket waits alone for the next request; its first bytes choose again between the feed loop
//! and hyper, as a new connection's do. Requests that arrive back to back (pipelined, or sent
//! before hyper looked for more) are served by the same hyper connection.
//!
//! A head hyper would refuse with a bare status (first bytes that cannot open a request at all,
//! too many headers, a head over 16 KiB) is answered here in JSON (see `refused_start`): when it
//! is a connection's first, before hyper reads it; when it comes behind requests hyper serves,
//! once hyper has answered them, the head kept from it (see [`crate::framing`]).

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use pere_core::Store;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::activity;
use crate::config::Config;
use crate::error::ApiError;
use crate::feed_conn::{self, FirstRequest};
use crate::framing::{self, Declared, Watched};
use crate::http_conn::{self, Rewind};
use crate::limits::Arrival;
use crate::receipt_post;
use crate::request::RequestBody;
use crate::response::{raw_error_closing, ResponseBody};
use crate::sse_body::ConnectionCloser;
use crate::state::AppState;

/// How long a connection is quiet (every request answered, nothing more sent) before hyper's
/// buffers are given back, while few connections hold them.
const QUIET: Duration = Duration::from_millis(50);
/// Past this many connections holding hyper's buffers, a quiet one gives them back at once: a
/// burst of devices acknowledging together would otherwise leave the allocator holding the
/// burst's buffers, scattered among live allocations, after every device went quiet.
const HELD_AT_MOST: usize = 256;

/// How plain HTTP/1.1 connections are served: hyper's settings, and how many connections hold
/// hyper's buffers now. Made once, shared by every connection.
#[derive(Debug)]
pub struct Serving {
    builder: http1::Builder,
    held: AtomicUsize,
}

impl Serving {
    /// Hyper within the server's bounds (`config`).
    pub fn new(config: &Config) -> Self {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(keep_alive_limit(config))
            .max_buf_size(http_conn::MAX_READ_BUFFER);
        Serving {
            builder,
            held: AtomicUsize::new(0),
        }
    }
}

/// A connection counted among those holding hyper's buffers, while it does.
struct Holding<'s>(&'s AtomicUsize);

impl<'s> Holding<'s> {
    /// Counts one more; returns how many hold buffers, this one included.
    fn begin(held: &'s AtomicUsize) -> (Self, usize) {
        let now = held.fetch_add(1, Ordering::Relaxed) + 1;
        (Holding(held), now)
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a kept-alive connection may wait for its next request's head (as hyper bounds a
/// head's arrival on the connections it serves whole).
fn keep_alive_limit(config: &Config) -> Duration {
    config.header_timeout.max(Duration::from_secs(1))
}

/// Serves a plain connection whose first bytes (`prefix`) are not a feed's nor HTTP/2's, until
/// it closes, the server shuts down, a lagging stream asks for it to be closed, or a request's
/// head is late. `watcher` keeps the server's drain waiting while the connection is open.
///
/// Not an `async fn`: its arguments would be moved into locals and kept twice in the future,
/// which every kept-alive connection holds while it waits for its next request (624 bytes a
/// connection's task in all, from 1,048).
#[allow(clippy::manual_async_fn)] // Deliberately not one: see above.
pub fn serve<S: Store>(
    state: Arc<AppState<S>>,
    mut stream: TcpStream,
    mut prefix: Bytes,
    serving: Arc<Serving>,
    watcher: Watcher,
    arrival: Arrival,
) -> impl Future<Output = ()> + Send {
    async move {
        // Held until the connection ends, for the drain.
        let _ = &watcher;
        let limit = keep_alive_limit(&state.config);
        // When the head being waited for must have arrived; set as a connection goes idle, kept
        // while bytes of a head trickle in across idle spells.
        let mut head_deadline = Instant::now() + limit;
        // The wait for the next request, one timer for the connection's life, moved on as each
        // answer goes out: moving a registered timer later costs a store, registering a new one
        // for each request took the timer wheel's lock twice (in and out).
        let idle = tokio::time::sleep_until(head_deadline);
        tokio::pin!(idle);
        // The bytes a spell left open with a head it kept from hyper (see `serve_spell`).
        let mut withheld_head = false;
        loop {
            // Only ever the very next request's: the one a spell just kept back.
            let kept_back = std::mem::take(&mut withheld_head);
            // The bytes of the next request read so far, once it is served.
            let served = if receipt_post::Opening::of(&prefix) == receipt_post::Opening::Other {
                None
            } else {
                // Boxed, as below: an idle connection's future keeps no room for a request.
                // The bytes read so far, not copied when nothing else holds them (the usual case).
                let start = std::mem::take(&mut prefix)
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
                // Read and answered in one future, and so one allocation.
                let exchange = Box::pin(async {
                    let read = receipt_post::read(
                        start,
                        &mut stream,
                        head_overdue(&arrival, head_deadline),
                        state.config.max_body,
                        state.config.body_timeout,
                    )
                    .await;
                    match read {
                        Ok(receipt_post::Read::Receipt(taken, rest)) => {
                            let kept =
                                receipt_post::answer(&state, &arrival, &mut stream, taken).await;
                            Exchange::Answered(matches!(kept, Ok(true)), rest)
                        }
                        Ok(receipt_post::Read::Other(bytes)) => Exchange::Other(bytes),
                        Err(_) => Exchange::Failed,
                    }
                });
                // A receipt begun is read to its end and answered even once the server stops, as
                // hyper finishes the request it is reading: its device would otherwise send it again
                // to a server that may have stored it. Its read has deadlines of its own; the drain
                // bounds it too.
                let exchange = tokio::select! {
                    biased;
                    exchange = exchange => exchange,
                    () = shutdown_then_never(&state) => return,
                };
                match exchange {
                    Exchange::Answered(true, rest) => {
                        head_deadline = Instant::now() + limit;
                        Some(rest)
                    }
                    Exchange::Answered(false, _) => {
                        let _ = stream.shutdown().await;
                        return;
                    }
                    Exchange::Other(bytes) => {
                        prefix = bytes.freeze();
                        None
                    }
                    Exchange::Failed => return,
                }
            };
            let mut unread = match served {
                Some(unread) => unread,
                None => {
                    // A head hyper kept back is always answered here, so that it never goes
                    // back to hyper; should the check below pass it, it is answered as
                    // malformed.
                    let refused = refused_start(&prefix).or_else(|| {
                        kept_back.then(|| malformed("a head hyper cannot read".to_owned()))
                    });
                    if let Some(refused) = refused {
                        // Boxed: a waiting connection's future keeps no room for it.
                        Box::pin(refuse(&state, &mut stream, &refused, &prefix)).await;
                        return;
                    }
                    // Boxed: hyper's connection is large, and an idle connection's future must
                    // not keep room for it.
                    let spell = Box::pin(serve_spell(
                        &state,
                        Rewind::new(prefix, stream),
                        &serving,
                        &arrival,
                    ));
                    let Some(spell) = spell.await else {
                        return;
                    };
                    stream = spell.stream;
                    withheld_head = spell.refused;
                    if spell.answered {
                        head_deadline = Instant::now() + limit;
                    }
                    spell.unread
                }
            };
            // Nothing held while the client thinks: no buffer until the socket has bytes. (A
            // request sent right behind the last one is read at once.) Here and above, the work is
            // polled before the waits (`biased`): when it is ready, as it mostly is, no timer or
            // shutdown waiter is registered only to be taken down again.
            if unread.is_empty() {
                // Emptied, but still the last request's buffer (its room after the bytes read):
                // let go before the wait, which may last as long as the connection.
                unread = BytesMut::new();
                if idle.deadline() != head_deadline {
                    idle.as_mut().reset(head_deadline);
                }
                // Readiness polled in place: `readable()` is a 152-byte future with a waiter of its
                // own, kept by every waiting connection; the connection's task is the socket's only
                // reader, so the socket's own slot for a waker is enough.
                let readable = tokio::select! {
                    biased;
                    readable = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => readable,
                    () = &mut idle => return,
                    () = state.shutdown.cancelled() => return,
                };
                if readable.is_err() {
                    return;
                }
            }
            // The request read is gone by the end of this block: a stream's head (~200 bytes) is
            // not kept beside the stream's own future, nor room for it by every waiting connection.
            let stream_served = {
                let next = Box::pin(feed_conn::read_request_start(
                    unread,
                    &mut stream,
                    tokio::time::sleep_until(head_deadline),
                ))
                .await;
                match next {
                    // Boxed: room for a stream would otherwise be kept by every idle connection.
                    Ok(FirstRequest::Stream(request)) => {
                        Box::pin(feed_conn::serve(state, stream, request, arrival))
                    }
                    Ok(FirstRequest::Other(bytes)) if bytes.is_empty() => return,
                    Ok(FirstRequest::Other(bytes)) => {
                        prefix = bytes;
                        continue;
                    }
                    Err(_) => return,
                }
            };
            return stream_served.await;
        }
    }
}

/// What is wrong with a request whose first bytes are `start`, when they already show that hyper
/// would refuse it with a bare status: bytes that are not a method, a path with a space, a
/// version other than HTTP/1.0 or 1.1, a header without a name or with a control byte in its
/// value, framing headers hyper does not read (`Content-Length`s that disagree, a
/// `Transfer-Encoding` not ending in `chunked`), a TLS handshake on the plain port (400); more
/// headers than hyper reads, or a head whose first 16 KiB hold no end (431). `None` when what
/// came is well formed so far, and hyper reads on. Checked with httparse, hyper's own parser, with hyper's limits, so both refuse the
/// same heads; a fault in bytes not read yet is found as hyper reads them (see
/// [`crate::framing`]).
fn refused_start(start: &[u8]) -> Option<ApiError> {
    match read_start(start) {
        Start::Refused(refused) => Some(refused),
        Start::Whole | Start::Partial => None,
    }
}

/// What the first bytes of a request show (see [`refused_start`]).
enum Start {
    /// A head hyper would refuse, and its answer.
    Refused(ApiError),
    /// A whole head hyper reads (and perhaps more).
    Whole,
    /// Well formed so far, not whole yet.
    Partial,
}

fn read_start(start: &[u8]) -> Start {
    // A TLS record of the handshake (22), version 3.x.
    if start.starts_with(&[0x16, 0x03]) {
        return Start::Refused(ApiError::bad_request(
            "tls_on_plain_port",
            "a TLS handshake came to a port that speaks plain HTTP: use http:// for this port, \
             or start the server with --tls-cert and --tls-key",
        ));
    }
    if framing::head_too_large(start) {
        return Start::Refused(head_too_large(format!(
            "the request head is longer than {} KiB (large cookies?): send fewer or shorter \
             headers",
            framing::MAX_HEAD / 1024
        )));
    }
    let mut headers = [httparse::EMPTY_HEADER; framing::MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(start) {
        Ok(httparse::Status::Complete(_)) => match framing::framing_fault(&request) {
            Some(why) => Start::Refused(malformed(why.to_owned())),
            None => Start::Whole,
        },
        Ok(httparse::Status::Partial) => Start::Partial,
        Err(httparse::Error::TooManyHeaders) => Start::Refused(head_too_large(format!(
            "the request has more than {} headers",
            framing::MAX_HEADERS
        ))),
        Err(err) => Start::Refused(malformed(format!("{err}"))),
    }
}

/// Answers a head hyper would refuse (`refused`, of a head that opens with `start`) in JSON,
/// then closes the connection once the client stops sending (see [`linger`]). Logged and counted
/// as the door's refusals are, with the head's first bytes for a path (a handshake's are binary,
/// and say no more than its code).
async fn refuse<S, IO>(state: &AppState<S>, stream: &mut IO, refused: &ApiError, start: &[u8])
where
    S: Store,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    state.metrics.refused(refused.code);
    let shown = if refused.code == "tls_on_plain_port" {
        "(a TLS handshake)".into()
    } else {
        String::from_utf8_lossy(&start[..start.len().min(64)])
    };
    activity::refused("-", &shown, refused.status.as_u16(), refused.code);
    let _ = stream.write_all(&raw_error_closing(refused)).await;
    let _ = stream.shutdown().await;
    linger(stream).await;
}

/// Bytes a refused client may still send, read and dropped after its answer, and for how long:
/// closing a socket with unread bytes resets the connection, and a client still writing (a head
/// of 100 KB) would meet the reset instead of reading its answer.
const LINGER_BYTES: usize = 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what the client sends after a refusal, until it closes its side or
/// [`LINGER_BYTES`] or [`LINGER_TIME`] pass.
async fn linger(stream: &mut (impl AsyncRead + Unpin)) {
    let drop_all = async {
        let mut scratch = vec![0u8; 4096];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drop_all).await;
}

/// Reads the first head of an HTTP/1.1 connection not served here (TLS's) whole, before hyper
/// serves the connection: a head hyper would refuse with a bare status is answered in JSON (see
/// [`refused_start`]). The bytes read, for hyper; `None` when the connection is done with
/// (refused, closed, or its head late). HTTP/2's preface (without ALPN) goes to hyper as it is.
pub(crate) async fn first_head<S, IO>(
    state: &AppState<S>,
    stream: &mut IO,
    arrival: &Arrival,
) -> Option<BytesMut>
where
    S: Store,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // Read in pieces (a TLS record brings up to 16 KiB), within the time the first request's
    // head may take.
    let mut start = BytesMut::new();
    loop {
        start.reserve(4096);
        let read = tokio::select! {
            read = stream.read_buf(&mut start) => read,
            () = arrival.overdue() => return None,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return None;
        }
        if http_conn::may_be_http2(&start) {
            if start.len() >= http_conn::HTTP2_PREFACE.len() {
                return Some(start);
            }
            continue;
        }
        match read_start(&start) {
            Start::Refused(refused) => {
                refuse(state, stream, &refused, &start).await;
                return None;
            }
            Start::Whole => return Some(start),
            Start::Partial => {}
        }
    }
}

/// A 400 for a head that cannot be a request, `why` from the parser.
fn malformed(why: String) -> ApiError {
    ApiError::bad_request(
        "malformed_request",
        format!(
            "malformed request head ({why}): a request opens with the line `METHOD /path \
             HTTP/1.1`, then `Name: value` headers"
        ),
    )
}

/// A 431 for a head larger than hyper reads.
fn head_too_large(message: String) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request_head_too_large",
        message,
    )
}

/// What came of a request that opened as a receipt taken without hyper.
enum Exchange {
    /// Read and answered: whether the connection stays open, and the bytes read after it.
    Answered(bool, BytesMut),
    /// Not one to take here: every byte read, for hyper.
    Other(BytesMut),
    /// The socket failed or the head was late.
    Failed,
}

/// Completes when the head being waited for is late: past `deadline`, or the connection's
/// first head past its own (see [`Arrival::overdue`]).
async fn head_overdue(arrival: &Arrival, deadline: Instant) {
    tokio::select! {
        () = arrival.overdue() => {}
        () = tokio::time::sleep_until(deadline) => {}
    }
}

/// What a spell of hyper's service left: the socket, the bytes read and not yet served, and
/// whether a request was answered (rather than hyper only reading part of a head).
struct Spell {
    stream: TcpStream,
    unread: BytesMut,
    answered: bool,
    /// `unread` opens with a head hyper would refuse.
    refused: bool,
}

/// Serves requests with one hyper connection until the client has nothing more to send after
/// an answer. `None` when the connection is done with (closed, failed, late, shut down).
async fn serve_spell<S: Store>(
    state: &Arc<AppState<S>>,
    io: Rewind,
    serving: &Serving,
    arrival: &Arrival,
) -> Option<Spell> {
    let (_holding, held) = Holding::begin(&serving.held);
    let quiet_for = if held > HELD_AT_MOST {
        Duration::ZERO
    } else {
        QUIET
    };
    let pause = Arc::new(Pause {
        flushed: AtomicBool::new(true),
        ..Pause::default()
    });
    let closer = ConnectionCloser::default();
    let declared = Declared::default();
    let io = Parking {
        inner: Watched::keeping_refused(io, declared.clone()),
        pause: pause.clone(),
    };
    let service = {
        let state = state.clone();
        let arrival = arrival.clone();
        let pause = pause.clone();
        let closer = closer.clone();
        service_fn(move |request: Request<Incoming>| {
            let state = state.clone();
            let arrival = arrival.clone();
            let busy = pause.begin();
            // A stream that lags asks for its connection to be closed (see `ConnectionCloser`).
            let closer = (request.method() == Method::GET).then(|| closer.clone());
            let declared = Some((declared.clone(), declared.next_request()));
            Box::pin(async move {
                let (parts, body) = request.into_parts();
                let request = Request::from_parts(parts, RequestBody::new(body, declared));
                let response = http_conn::answer(&state, &arrival, request, closer).await;
                Ok::<_, Infallible>(response.map(|body| Answering { body, _busy: busy }))
            })
        })
    };
    let mut connection = serving.builder.serve_connection(TokioIo::new(io), service);
    let mut shutting_down = false;
    // The spell ended because the connection was quiet, not by hyper's own choice (a client's
    // `Connection: close`, a body left unread that hyper gave up on): only then is the socket
    // handed back.
    let mut parked = false;
    // The spell ended on a head kept from hyper, to be answered here.
    let mut refused = false;
    // Armed when the connection goes quiet, for the requests begun until then: hyper keeps
    // the connection through short pauses (a device acknowledging events as they come), since
    // a new spell per request would cost more than the buffers it saves.
    let mut quiet = std::pin::pin!(tokio::time::sleep(quiet_for));
    let mut armed_after: Option<usize> = None;
    let served = std::future::poll_fn(|cx| loop {
        let polled = connection.poll_without_shutdown(cx);
        if polled.is_ready() || shutting_down {
            return polled;
        }
        if pause.refused() {
            // Every answer is out and hyper waits for bytes it will never get: its connection
            // is taken apart as it is (a graceful end would wait for the rest of a first head).
            refused = true;
            return Poll::Ready(Ok(()));
        }
        let begun = pause.begun.load(Ordering::Relaxed);
        let ends = if state.shutdown.is_cancelled() {
            // Mid-request: the answer says `Connection: close`, or the connection ends after it.
            true
        } else if pause.idle.load(Ordering::Relaxed) && quiet_for.is_zero() {
            true
        } else if pause.idle.load(Ordering::Relaxed) {
            if armed_after != Some(begun) {
                // Only ever later: a cheap update of the timer already set.
                quiet.as_mut().reset(Instant::now() + quiet_for);
                armed_after = Some(begun);
            }
            // Quiet all along: hyper stops here and hands the socket back.
            quiet.as_mut().poll(cx).is_ready()
        } else {
            false
        };
        if !ends {
            return Poll::Pending;
        }
        parked = !state.shutdown.is_cancelled();
        shutting_down = true;
        Pin::new(&mut connection).graceful_shutdown();
    });
    let served = tokio::select! {
        served = served => served,
        () = closer.closed() => return None,
        () = arrival.overdue() => return None,
        // At shutdown the spell above ends by itself once its answer is out.
        () = shutdown_then_never(state) => return None,
    };
    if served.is_err() || state.shutdown.is_cancelled() || !(parked || refused) {
        return None;
    }
    let answered = pause.begun.load(Ordering::Relaxed) > 0;
    let parts = connection.into_parts();
    let (rewound, withheld) = parts.io.into_inner().inner.into_parts();
    let (rest, stream) = rewound.into_parts();
    // What hyper read and left (the start of the next head) comes before what was kept from it,
    // and that before what it never read.
    let mut unread = BytesMut::from(&parts.read_buf[..]);
    unread.extend_from_slice(&withheld);
    unread.extend_from_slice(&rest);
    Some(Spell {
        stream,
        unread,
        answered,
        refused,
    })
}

/// Completes never: the shutdown is seen by the spell itself, which finishes the answer it is
/// writing; this only bounds a spell that ignores it, for as long as the server's drain allows.
async fn shutdown_then_never<S: Store>(state: &AppState<S>) {
    state.shutdown.cancelled().await;
    tokio::time::sleep(Duration::from_secs(
        state.config.shutdown_timeout_secs.max(1),
    ))
    .await;
}

/// What a spell's requests and its socket tell each other: whether an answer is being made or
/// written, and whether hyper, done with every answer, found nothing more to read.
#[derive(Debug, Default)]
struct Pause {
    /// Requests whose answers are not yet wholly handed to hyper.
    busy: AtomicUsize,
    /// Requests begun in this spell.
    begun: AtomicUsize,
    /// Hyper looked for more and the client had sent nothing since: the spell can end.
    idle: AtomicBool,
    /// A head hyper would refuse was kept from it (see [`Watched::withholding`]): once every
    /// answer before it is written and flushed, the spell ends, and the head is answered here.
    withholding: AtomicBool,
    /// Nothing was written since hyper last flushed.
    flushed: AtomicBool,
}

impl Pause {
    /// A head was kept from hyper and hyper has nothing left to write: hyper waits for bytes
    /// it will never get.
    fn refused(&self) -> bool {
        self.withholding.load(Ordering::Relaxed)
            && self.flushed.load(Ordering::Relaxed)
            && self.busy.load(Ordering::Relaxed) == 0
    }
}

impl Pause {
    /// A request begins; its answer's body holds the returned mark until hyper drops it.
    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.begun.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// A request being answered (see [`Pause::begin`]).
#[derive(Debug)]
struct Busy(Arc<Pause>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body, marking its request busy until hyper has taken all of it.
struct Answering {
    body: ResponseBody,
    _busy: Busy,
}

impl Body for Answering {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket as hyper sees it in a spell: when hyper, with every answer written out and
/// flushed and every request read to its end, asks for more and none has come, the spell is
/// marked idle. (Hyper also reads after an answer to skip a body the handler left unread: that
/// is not idle, and the framing tells the two apart.)
struct Parking {
    inner: Watched<Rewind>,
    pause: Arc<Pause>,
}

impl AsyncRead for Parking {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let pause = &self.pause;
        if let Poll::Ready(Ok(())) = polled {
            if buf.filled().len() > before {
                pause.idle.store(false, Ordering::Relaxed);
            }
        } else if polled.is_pending()
            && pause.flushed.load(Ordering::Relaxed)
            && self.inner.between_requests()
            && pause.begun.load(Ordering::Relaxed) > 0
            && pause.busy.load(Ordering::Relaxed) == 0
        {
            pause.idle.store(true, Ordering::Relaxed);
        } else if polled.is_pending() && self.inner.withholding() {
            pause.withholding.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl Parking {
    fn wrote(&self) {
        self.pause.flushed.store(false, Ordering::Relaxed);
    }
}

impl AsyncWrite for Parking {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.wrote();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.pause.flushed.store(true, Ordering::Relaxed);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::refused_start;

    /// What is well formed or not whole yet goes to hyper; what cannot be a request is refused,
    /// with its code.
    #[test]
    fn starts_are_refused_only_when_they_cannot_be_a_request() {
        let cases: [(&[u8], Option<&str>); 16] = [
            (
                b"POST /push/news HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                None,
            ),
            (b"GET /health HTTP/1.0\r\n\r\n", None),
            (b"\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n", None),
            (b"OPTIONS * HTTP/1.1\r\n", None),
            (b"DELETE /admin/channels/x HTT", None),
            (b"G", None),
            (b"", None),
            (b"garbage\r\n\r\n", Some("malformed_request")),
            (b"GET /he alth HTTP/1.1\r\n\r\n", Some("malformed_request")),
            (b"GET /health HTTP/9.9\r\n\r\n", Some("malformed_request")),
            (
                b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n",
                Some("malformed_request"),
            ),
            (
                b"POST /push/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Bad\x01: y\r\n\r\n{}",
                Some("malformed_request"),
            ),
            (b"\x00\x01\x02", Some("malformed_request")),
            (
                b"POST /push/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{}",
                Some("malformed_request"),
            ),
            (
                b"POST /push/x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                Some("malformed_request"),
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                Some("tls_on_plain_port"),
            ),
        ];
        for (start, expected) in cases {
            assert_eq!(
                refused_start(start).map(|err| err.code),
                expected,
                "{}",
                String::from_utf8_lossy(start)
            );
        }
    }

    /// Heads larger than hyper reads: by their headers' number, or by 16 KiB without an end.
    #[test]
    fn heads_hyper_has_no_room_for_are_refused_with_431() {
        let head = |headers: usize, cookie: usize, end: &str| {
            let mut head = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
            for n in 0..headers {
                head.push_str(&format!("X-{n}: v\r\n"));
            }
            head.push_str(&format!("Cookie: {}\r\n{end}", "c".repeat(cookie)));
            head.into_bytes()
        };
        let code = |start: &[u8]| refused_start(start).map(|err| (err.status.as_u16(), err.code));
        let too_large = Some((431, "request_head_too_large"));
        assert_eq!(code(&head(98, 10, "\r\n")), None, "100 headers");
        assert_eq!(code(&head(99, 10, "\r\n")), too_large, "101 headers");
        assert_eq!(code(&head(99, 10, "")), too_large, "101 headers, not whole");
        assert_eq!(code(&head(0, 16_000, "")), None, "under 16 KiB, not whole");
        assert_eq!(
            code(&head(0, 17_000, "")),
            too_large,
            "16 KiB without an end"
        );
    }
}
