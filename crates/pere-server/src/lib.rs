//! PERE's HTTP server: a thin hyper 1.x layer over `pere-core`.
//!
//! Layout, each module above the ones it uses:
//! - [`server`]: the accept loop; hands each connection to [`feed_conn`] or [`http_conn`];
//! - [`feed_conn`]: stream requests (feeds, receipts, presence), served without hyper's buffers;
//! - [`h1_conn`]: other plain HTTP/1.1 connections, one request at a time, nothing held between;
//! - [`receipt_post`]: receipts on those connections, read whole and answered without hyper;
//! - [`http_conn`]: every other connection (HTTP/1.1 or HTTP/2, plain or TLS), served by hyper;
//! - [`framing`]: what an HTTP/1.1 connection's chunked bodies declare, read as hyper reads;
//! - [`tls`]: the certificate and key, and the handshake offering HTTP/2 by ALPN;
//! - [`handlers`]: one handler per endpoint, one core operation each;
//! - [`dashboard`]: the dashboard page and its stream of admin events;
//! - [`door`]: the one admission point of every request, on either kind of connection;
//! - [`auth`]: the security mode, token claims and channel patterns, verifying and minting tokens;
//! - [`streams`]: the event feed, receipt stream and presence stream, opened and framed;
//! - [`sse_body`]: an SSE stream as a hyper response body;
//! - [`webhook`]: receipt summaries POSTed to the operator's URL;
//! - [`state`]: what every request shares;
//! - [`limits`]: caps on open connections and streams;
//! - [`batch`]: reading a batch push (NDJSON lines into events);
//! - [`metrics`]: the counters and histograms of `GET /metrics`;
//! - [`request`]: reading requests (query, names, device, resume position, bodies, receipts);
//! - [`response`]: the body type, JSON and error answers, the SSE head, CORS;
//! - [`route`]: method and path to a [`route::Route`];
//! - [`openapi`]: the API's contract, served at `/openapi.json`;
//! - [`error`]: errors as statuses and stable codes;
//! - [`activity`]: the activity log lines; [`logging`]: the subscriber that writes them;
//! - [`check`]: `pere-server check`, the offline check and repair of the SQLite store;
//! - [`config`]: the command line and settings.
//!
//! [`run`] serves a bound listener until the state's shutdown token is cancelled, then drains.
#![deny(missing_docs, missing_debug_implementations)]

pub mod activity;
pub mod auth;
pub mod batch;
pub mod check;
pub mod config;
pub mod dashboard;
pub mod door;
pub mod error;
pub mod feed_conn;
pub mod framing;
pub mod h1_conn;
pub mod handlers;
pub mod http_conn;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod receipt_post;
pub mod request;
pub mod response;
pub mod route;
pub mod server;
pub mod sse_body;
pub mod state;
pub mod streams;
pub mod tls;
pub mod webhook;

pub use config::Config;
pub use server::{run, run_with};
pub use state::{retention, AppState};
