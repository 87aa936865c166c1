//! PERE's HTTP server: a thin hyper 1.x layer over `pere-core`.
//!
//! Layout:
//! - [`config`]: the command line and settings;
//! - [`route`]: method and path to a [`route::Route`];
//! - [`api`]: the handlers, one core operation each;
//! - [`sse_body`]: a subscription as an SSE response body;
//! - [`feed_conn`]: connections that open with a feed request, served without hyper's buffers;
//! - [`error`]: errors as JSON answers;
//! - [`log`]: the activity log in the original PERE's format;
//! - [`webhook`]: receipt summaries POSTed to the operator's URL.
//!
//! [`run`] serves a bound listener until the state's shutdown token is cancelled, then drains.
#![deny(missing_docs, missing_debug_implementations)]

pub mod api;
pub mod config;
pub mod error;
pub mod feed_conn;
pub mod log;
pub mod route;
pub mod sse_body;
pub mod webhook;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use pere_core::{Hub, HubConfig, Retention, Store};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::AppState;
pub use config::Config;

/// The one response body type: a full body or an SSE stream.
pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// A body of the given bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    Empty::new().boxed_unsync()
}

/// A JSON answer, pretty-printed as the original's admin views were.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response<ResponseBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    json_bytes(status, body)
}

/// A compact JSON answer, for the hot paths (push and feedback answers).
pub fn compact_json_response(status: StatusCode, value: &impl Serialize) -> Response<ResponseBody> {
    json_bytes(status, serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl<S: Store> AppState<S> {
    /// The state of a server over `store`, configured by `config`.
    pub fn new(store: S, config: Config) -> Arc<Self> {
        let hub = Hub::new(
            store,
            HubConfig {
                subscriber_buffer: config.subscriber_buffer.max(1),
                ack_timeout: (!config.ack_timeout.is_zero()).then_some(config.ack_timeout),
                max_deliveries: config.max_deliveries.max(1),
                ..HubConfig::default()
            },
        );
        let log = log::Log::stdout(!config.quiet);
        Arc::new(AppState { hub, config, log, shutdown: CancellationToken::new() })
    }
}

/// Serves a connection with hyper until it closes, the server shuts down, or a lagging feed asks
/// for it to be closed.
async fn serve_http<S: Store>(state: Arc<AppState<S>>, io: feed_conn::Rewind, watcher: hyper_util::server::graceful::Watcher) {
    let closer = ConnectionCloser(CancellationToken::new());
    let on_close = closer.0.clone();
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        let state = state.clone();
        // Only streams (GETs) need to close their connection; pushes and receipts skip the map.
        if request.method() == hyper::Method::GET {
            request.extensions_mut().insert(closer.clone());
        }
        async move { Ok::<_, Infallible>(api::serve(state, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // A client that never finishes its headers must not hold a connection forever.
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service);
    let connection = watcher.watch(connection);
    // A client that vanishes mid-request is its own business, not an error of the server.
    tokio::select! {
        _ = connection => {}
        // Dropping the connection closes the socket at once, whatever is still unsent.
        () = on_close.cancelled() => {}
    }
    // Lets whatever watches this connection (a feed's lag watcher) end with it.
    on_close.cancel();
}

/// Closes the connection a request came on. A feed cut for being too slow closes its connection
/// rather than waiting for a peer that does not read to drain the frames already written; the
/// client resumes with Last-Event-ID and loses nothing.
#[derive(Debug, Clone)]
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

/// Ends recipients' memberships after `--recipient-expiry` of inactivity, checked every minute.
async fn expire_recipients<S: Store>(state: Arc<AppState<S>>) {
    // Every minute, or more often for short expiries, so an expiry is never late by much.
    let period = (state.config.recipient_expiry / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut every = tokio::time::interval(period);
    loop {
        every.tick().await;
        if let Err(err) = state.hub.expire_recipients(state.config.recipient_expiry).await {
            eprintln!("ERROR> recipient expiry: {err}");
        }
    }
}

/// Stops the expiry task with the server.
struct ExpiryTask(tokio::task::JoinHandle<()>);

impl Drop for ExpiryTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The retention the settings ask for.
pub fn retention(config: &Config) -> Retention {
    Retention {
        max_events: config.retention_events.max(1),
        max_age: (!config.retention_age.is_zero()).then_some(config.retention_age),
    }
}

/// Serves connections from `listener` until `state.shutdown` is cancelled, then stops accepting,
/// ends every feed, and waits up to the configured timeout for open requests to finish.
///
/// # Errors
/// Never in practice: accept errors (such as running out of file descriptors) are logged and
/// retried after a short pause.
pub async fn run<S: Store>(listener: TcpListener, state: Arc<AppState<S>>) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let _expiry = ExpiryTask(tokio::spawn(expire_recipients(state.clone())));
    if let Some(url) = &state.config.receipt_webhook {
        webhook::spawn(state.clone(), url.clone(), state.config.receipt_timeout);
    }
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = state.shutdown.cancelled() => break,
        };
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning; connections that close will
                // free descriptors.
                eprintln!("ERROR> accept: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Events are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut stream = stream;
            match feed_conn::read_first_request(&mut stream).await {
                Ok(feed_conn::FirstRequest::Feed(request)) => feed_conn::serve(state, stream, request).await,
                Ok(feed_conn::FirstRequest::Other(prefix)) => {
                    serve_http(state, feed_conn::Rewind::new(prefix, stream), watcher).await;
                }
                // Nothing sensible arrived in time: nothing to answer.
                Err(_) => {}
            }
        });
    }
    drop(listener);
    let deadline = Duration::from_secs(state.config.shutdown_timeout_secs);
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        eprintln!("ERROR> shutdown: some connections were still open after {deadline:?}; closing them");
    }
    Ok(())
}
