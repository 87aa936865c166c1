//! Connections served by hyper: every connection except those that open with a feed request
//! (see [`crate::feed_conn`]). Each request passes the door, then its handler; the answer gets
//! its CORS headers, and a refusal its log line, here.

use std::convert::Infallible;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use pere_core::Store;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::response::{self, add_cors, ResponseBody};
use crate::sse_body::ConnectionCloser;
use crate::state::AppState;
use crate::{door, handlers};

/// The largest read buffer of a connection, and so the largest request head.
const MAX_READ_BUFFER: usize = 16 * 1024;

/// Serves a connection with hyper until it closes, the server shuts down, or a lagging feed asks
/// for it to be closed.
pub async fn serve<S: Store>(
    state: Arc<AppState<S>>,
    io: Rewind,
    watcher: Watcher,
    peer: SocketAddr,
) {
    let closer = ConnectionCloser::default();
    let on_close = closer.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        // Only streams (GETs) may need to close their connection.
        let closer = (request.method() == Method::GET).then(|| closer.clone());
        async move { Ok::<_, Infallible>(answer(&state, peer, request, closer).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // A client that never finishes its headers must not hold a connection forever.
        .header_read_timeout(Duration::from_secs(30))
        // Request heads are small; a bigger read buffer would stay with the connection (a feed
        // holds its connection for hours). Larger heads are refused with 431.
        .max_buf_size(MAX_READ_BUFFER)
        .serve_connection(TokioIo::new(io), service);
    let connection = watcher.watch(connection);
    // A client that vanishes mid-request is its own business, not an error of the server.
    tokio::select! {
        _ = connection => {}
        // Dropping the connection closes the socket at once, whatever is still unsent.
        () = on_close.closed() => {}
    }
    // Lets whatever watches this connection (a feed's lag watcher) end with it.
    on_close.close();
}

/// Answers one request. Never fails: every error becomes a JSON answer.
async fn answer<S: Store>(
    state: &Arc<AppState<S>>,
    peer: SocketAddr,
    request: Request<Incoming>,
    closer: Option<ConnectionCloser>,
) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let answered = match door::admit(state, peer, &parts.method, &parts.uri, &parts.headers) {
        Ok(admitted) => handlers::dispatch(state, admitted, &parts, body, closer).await,
        Err(err) => Err(err),
    };
    let mut response = answered.unwrap_or_else(|err| {
        door::refused(&parts.method, &parts.uri, &err);
        response::error(&err)
    });
    if parts.method == Method::HEAD {
        *response.body_mut() = response::empty();
    }
    let preflight = parts.method == Method::OPTIONS;
    add_cors(
        &state.config,
        parts.headers.get(header::ORIGIN),
        preflight,
        response.headers_mut(),
    );
    response
}

/// A stream with bytes already read put back in front, for handing a connection to hyper.
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    /// `prefix` is read first, then `inner`.
    pub fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Rewind { prefix, inner }
    }
}

impl std::fmt::Debug for Rewind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewind")
            .field("prefix", &self.prefix.len())
            .finish()
    }
}

impl AsyncRead for Rewind {
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

impl AsyncWrite for Rewind {
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
