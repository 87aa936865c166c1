//! Connections served whole by hyper: TLS ones, and plain ones that open with HTTP/2's preface
//! (plain HTTP/1.1 ones go to [`crate::feed_conn`] or [`crate::h1_conn`]), in HTTP/1.1 or
//! HTTP/2 (told apart by the connection's first bytes, or by ALPN). Each request passes the door, then its
//! handler, then the door's exit ([`door::exit`]), as on a feed connection.

use std::convert::Infallible;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use pere_core::Store;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::door::{self, Listener};
use crate::framing::{self, Declared, Watched};
use crate::limits::Arrival;
use crate::request::RequestBody;
use crate::response::ResponseBody;
use crate::sse_body::ConnectionCloser;
use crate::state::AppState;
use crate::{handlers, route};

/// The largest read buffer of a connection, and so the largest request head (the watch of a
/// connection's heads shares it, see [`crate::framing`]).
pub const MAX_READ_BUFFER: usize = framing::MAX_HEAD;

/// How hyper serves connections: HTTP/1.1 and HTTP/2 (by the client's first bytes), each within
/// the server's bounds. Made once, shared by every connection.
pub type Builder = auto::Builder<TokioExecutor>;

/// The builder the settings ask for.
pub fn builder(config: &Config) -> Builder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client that never finishes its headers must not hold a connection forever; this is
        // the bound for the requests after a connection's first (and for an idle kept-alive
        // connection), the first's is the connection's deadline (see `serve`).
        .header_read_timeout(config.header_timeout.max(Duration::from_secs(1)))
        // Request heads are small; a bigger read buffer would stay with the connection (a feed
        // holds its connection for hours). Larger heads are refused with 431.
        .max_buf_size(MAX_READ_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Every stream also takes its place in the server's counts; this bounds what one
        // connection may open, as one HTTP/1.1 connection holds one request.
        .max_concurrent_streams(config.max_streams_per_connection.max(1))
        .max_header_list_size(MAX_READ_BUFFER as u32)
        // What hyper holds for a stream beyond what the socket took. SSE frames are small; with
        // the default (400 KiB) a stream whose client reads slowly (and a window wide enough)
        // piles up that much before its feed notices it lags.
        .max_send_buf_size(H2_SEND_BUFFER)
        // A peer that stops answering pings is gone (or reads nothing): its streams would
        // otherwise wait for it until TCP gives up, minutes later.
        .keep_alive_interval(config.keep_alive_every())
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// The first bytes of an HTTP/2 connection with prior knowledge.
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection's first bytes may begin HTTP/2's preface.
pub fn may_be_http2(first: &[u8]) -> bool {
    let compared = first.len().min(HTTP2_PREFACE.len());
    first[..compared] == HTTP2_PREFACE[..compared]
}

/// What hyper buffers per HTTP/2 stream before it waits for the socket.
const H2_SEND_BUFFER: usize = 16 * 1024;

/// How long an HTTP/2 peer has to answer a ping before its connection is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves a connection with hyper until it closes, the server shuts down, a lagging HTTP/1.1
/// feed asks for it to be closed, or its first request's head has not arrived by the
/// `arrival`'s deadline (HTTP/2: its first stream's).
pub async fn serve<S, I>(
    state: Arc<AppState<S>>,
    io: I,
    builder: Arc<Builder>,
    watcher: Watcher,
    arrival: Arrival,
) where
    S: Store,
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let closer = ConnectionCloser::default();
    let on_close = closer.clone();
    let overdue = arrival.clone();
    let declared = Declared::default();
    let io = Watched::new(io, declared.clone());
    let service = service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        let arrival = arrival.clone();
        // Only streams (GETs) may need to close their connection, and only on HTTP/1.1: an
        // HTTP/2 connection carries other streams, and a lagging one ends alone.
        let h1 = request.version() < Version::HTTP_2;
        let closes = request.method() == Method::GET && h1;
        let closer = closes.then(|| closer.clone());
        // HTTP/1.1 requests come one after the other, numbered as the framing numbers heads.
        let declared = h1.then(|| (declared.clone(), declared.next_request()));
        async move {
            let (parts, body) = request.into_parts();
            let request = Request::from_parts(parts, RequestBody::new(body, declared));
            // Boxed, and so gone once answered: hyper runs each HTTP/2 stream as a task the size
            // of this future, and a feed's stream lives for hours after its answer.
            let answered = Box::pin(answer(&state, &arrival, request, closer));
            Ok::<_, Infallible>(answered.await)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let connection = watcher.watch(connection);
    // A client that vanishes mid-request is its own business, not an error of the server.
    tokio::select! {
        _ = connection => {}
        // Dropping the connection closes the socket at once, whatever is still unsent.
        () = on_close.closed() => {}
        () = overdue.overdue() => {}
    }
    // Lets whatever watches this connection (a feed's lag watcher) end with it.
    on_close.close();
}

/// Answers one request. Never fails: every error becomes a JSON answer.
pub(crate) async fn answer<S: Store>(
    state: &Arc<AppState<S>>,
    arrival: &Arrival,
    request: Request<RequestBody>,
    closer: Option<ConnectionCloser>,
) -> Response<ResponseBody> {
    let (mut parts, body) = request.into_parts();
    if let Some(uri) = route::unescape_names(&parts.uri) {
        parts.uri = uri;
    }
    let (outcome, route_name) =
        match door::admit(state, arrival, &parts.method, &parts.uri, &parts.headers) {
            Ok(admitted) => {
                let name = admitted.route.template().1;
                let outcome = handlers::dispatch(state, admitted, &parts, body, closer).await;
                (outcome, Some(name))
            }
            Err(err) => (Err(err), None),
        };
    door::exit(state, &parts, outcome, Listener::Main, route_name)
}

/// Scrapes served at once on the metrics listener; a scraper is one client, and more must wait.
const METRICS_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on the metrics listener (`--metrics-addr`) until the server shuts down.
/// Every request passes [`door::admit_metrics`], which lets only that one route in, without a
/// token.
pub async fn serve_metrics<S: Store>(listener: TcpListener, state: Arc<AppState<S>>) {
    let room = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let Ok(permit) = room.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = state.shutdown.cancelled() => return,
        };
        let Ok((stream, _peer)) = accepted else {
            // Out of descriptors, most likely: the main listener says so; wait a little here.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let (parts, _body) = request.into_parts();
                    let outcome = door::admit_metrics(&parts.method, &parts.uri)
                        .map(|_| handlers::metrics(&state, &parts.headers));
                    Ok::<_, Infallible>(door::exit(
                        &state,
                        &parts,
                        outcome,
                        Listener::Metrics,
                        None,
                    ))
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .max_buf_size(MAX_READ_BUFFER)
                .serve_connection(TokioIo::new(stream), service);
            let _ = connection.await;
        });
    }
}

/// A stream with bytes already read put back in front, for handing a connection to hyper.
pub struct Rewind<S = TcpStream> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// `prefix` is read first, then `inner`.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }

    /// The bytes put back and not yet read, and the stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S> std::fmt::Debug for Rewind<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewind")
            .field("prefix", &self.prefix.len())
            .finish()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
