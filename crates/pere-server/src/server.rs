//! The accept loop: each connection goes to a dedicated stream loop (feeds, receipts, presence),
//! to hyper a spell of requests at a time (HTTP/1.1) or to hyper for its whole life (HTTP/2,
//! TLS), by how its first request begins; beside it, the recipient expiry, giving the memory of
//! idle channels and closed streams back, and the webhook; at the end, a bounded drain.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use hyper_util::server::graceful::GracefulShutdown;
use pere_core::Store;
use tokio::net::TcpListener;

use crate::http_conn::{self, Rewind};
use crate::state::AppState;
use crate::tls::{self, TlsAcceptor};
use crate::{feed_conn, h1_conn, webhook};

/// The first pause after a failed accept, and the longest.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Ends recipients' memberships after `--recipient-expiry` of inactivity, checked every minute.
async fn expire_recipients<S: Store>(state: Arc<AppState<S>>) {
    // Every minute, or more often for short expiries, so an expiry is never late by much.
    let period = (state.config.recipient_expiry / 2)
        .clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut every = tokio::time::interval(period);
    loop {
        every.tick().await;
        if let Err(err) = state
            .hub
            .expire_recipients(state.config.recipient_expiry)
            .await
        {
            tracing::error!("recipient expiry: {err}");
        }
    }
}

/// Channels unloaded, or streams closed, since the last time memory was given back that make it
/// worth giving back again: a flood of fresh names, or of streams that replayed a long history,
/// leaves that many channels' or streams' freed memory behind.
const GIVE_BACK_AFTER: usize = 1_000;

/// How often the counts are looked at: a lock and an atomic read, but a wake-up of a quiet
/// server each time (checked every 250 ms, these were nearly all of its 8 wake-ups a second;
/// now about 1). Memory is given back at most this long after a flood ends.
const GIVE_BACK_CHECK: Duration = Duration::from_secs(2);

/// Gives the memory of unloaded channels and closed streams back to the system. Both are freed
/// as they go, but glibc's allocator keeps freed memory that is not at the top of its heaps:
/// when it served every allocation, after 100,000 one-event channels went idle the process held
/// 0.57 KiB each, 0.28 KiB once trimmed (bench/idle-channels.sh); after 900 receipt followers
/// that replayed 20,000 receipts closed, 17 KiB each, under 1 KiB once trimmed
/// (bench/followers.sh). The `pere-server` binary allocates with jemalloc, which gives back by
/// itself; the trim is then for what SQLite allocated through the C library (trimmed too when
/// the store released its caches, [`Store::memory_released`]), and for embedders that keep
/// glibc's allocator. A trim is a walk of the free lists, a few milliseconds, made on a
/// blocking thread: the store's releases can call for one every few seconds while devices come
/// and go.
async fn give_back_memory<S: Store>(state: Arc<AppState<S>>) {
    let mut every = tokio::time::interval(GIVE_BACK_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut most_loaded, mut most_streams) = (0, 0);
    let mut released = state.hub.store().memory_released();
    loop {
        every.tick().await;
        let loaded = state.hub.loaded_channels();
        let streams = state.limits.streams();
        most_loaded = most_loaded.max(loaded);
        most_streams = most_streams.max(streams);
        let store_released = state.hub.store().memory_released();
        if most_loaded - loaded >= GIVE_BACK_AFTER
            || most_streams - streams >= GIVE_BACK_AFTER
            || store_released != released
        {
            // Off the async workers: a walk of the free lists stalls whatever waits there.
            let _ = tokio::task::spawn_blocking(trim_heap).await;
            (most_loaded, most_streams, released) = (loaded, streams, store_released);
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // Safety: malloc_trim only releases free memory; it takes the allocator's own locks.
    #[allow(unsafe_code)]
    let _ = unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Stops a task beside the accept loop (the expiry, giving memory back) with the server.
struct ExpiryTask(tokio::task::JoinHandle<()>);

impl Drop for ExpiryTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge) from `listener` until
/// `state.shutdown` is cancelled, then stops accepting, ends every stream, and waits up to the
/// configured timeout for open requests to finish.
///
/// At most `--max-connections` connections are open at once; streams leave
/// `--connection-reserve` of them to short requests (see [`crate::limits`]).
///
/// # Errors
/// Never in practice: accept errors (such as running out of file descriptors) are logged once
/// and retried after a growing pause.
pub async fn run<S: Store>(listener: TcpListener, state: Arc<AppState<S>>) -> std::io::Result<()> {
    run_with(listener, state, None).await
}

/// As [`run`], over TLS when `tls` is given: every connection's handshake first, then hyper
/// (HTTP/2 or HTTP/1.1, as ALPN agreed); the dedicated feed loop serves plain connections only.
///
/// # Errors
/// As [`run`].
pub async fn run_with<S: Store>(
    listener: TcpListener,
    state: Arc<AppState<S>>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(http_conn::builder(&state.config));
    let http1 = Arc::new(h1_conn::Serving::new(&state.config));
    let _expiry = ExpiryTask(tokio::spawn(expire_recipients(state.clone())));
    let _give_back = ExpiryTask(tokio::spawn(give_back_memory(state.clone())));
    state.metrics.observe(&state.hub);
    if let Some(url) = &state.config.receipt_webhook {
        webhook::spawn(state.clone(), url.clone(), state.config.receipt_timeout);
    }
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        // Past the connection cap, new connections wait in the kernel's queue until one closes.
        let slot = tokio::select! {
            slot = state.limits.connection() => slot,
            () = state.shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = state.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => {
                backoff = ACCEPT_BACKOFF_MIN;
                conn
            }
            Err(err) => {
                // Out of descriptors (EMFILE and friends): pause instead of spinning, longer each
                // time, and say so once per episode; connections that close free descriptors.
                if backoff == ACCEPT_BACKOFF_MIN {
                    tracing::error!(
                        "accept: {err}; pausing new connections ({} open, cap {})",
                        state.limits.connections(),
                        state.limits.max_connections()
                    );
                }
                drop(slot);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        // An address that holds its share of connections slow to send a request: closed at once
        // (dropped), before anything is read.
        let Ok(arrival) = state.limits.arrival(peer) else {
            continue;
        };
        // Events are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let http1 = http1.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let held_slot = slot;
            let mut stream = stream;
            // The hyper paths are boxed: a task's future is as large as its largest state, and
            // a dedicated feed, which lives for hours, must not carry room for a TLS session or
            // an HTTP/2 connection (3.6 KiB more per feed when inline).
            if let Some(tls) = tls {
                // rustls keeps buffers of its own for the connection's life, so the feed loop
                // would save nothing here: hyper serves every TLS connection.
                Box::pin(async move {
                    // The handshake is part of the time the first request's head may take.
                    let handshake =
                        tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, tls.accept(stream));
                    let shaken = tokio::select! {
                        shaken = handshake => shaken,
                        () = arrival.overdue() => return,
                    };
                    let Ok(Ok(mut stream)) = shaken else {
                        return;
                    };
                    // HTTP/1.1 (by ALPN, or none): a first head hyper would refuse with a bare
                    // status is answered in JSON, as on the plain port.
                    let prefix = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        BytesMut::new()
                    } else {
                        match h1_conn::first_head(&state, &mut stream, &arrival).await {
                            Some(prefix) => prefix,
                            None => return,
                        }
                    };
                    let stream = Rewind::new(prefix.freeze(), stream);
                    http_conn::serve(state, stream, builder, watcher, arrival).await;
                })
                .await;
                return;
            }
            let first = Box::pin(feed_conn::read_first_request(
                &mut stream,
                arrival.overdue(),
            ))
            .await;
            match first {
                // A task of its own, as small as a feed: this one holds room for every kind of
                // connection and what they need (hyper's builders), for as long as it lives.
                // The drain at shutdown waits for it as for this one. `map`, not an `async`
                // block awaiting the feed: that would hold the feed's future twice.
                Ok(feed_conn::FirstRequest::Stream(request)) => {
                    let feed = feed_conn::serve(state, stream, request, arrival);
                    tokio::spawn(feed.map(move |()| drop((held_slot, watcher))));
                }
                // Any other HTTP/1.1 request: hyper, a request at a time.
                // A task of its own, as small as what it holds between requests: this one
                // has room for a feed.
                Ok(feed_conn::FirstRequest::Other(prefix)) if !http_conn::may_be_http2(&prefix) => {
                    tokio::spawn(async move {
                        let _slot = held_slot;
                        h1_conn::serve(state, stream, prefix, http1, watcher, arrival).await;
                    });
                }
                // HTTP/2's preface (or too few bytes to tell): hyper, the whole connection.
                Ok(feed_conn::FirstRequest::Other(prefix)) => {
                    Box::pin(http_conn::serve(
                        state,
                        Rewind::new(prefix, stream),
                        builder,
                        watcher,
                        arrival,
                    ))
                    .await;
                }
                // Nothing sensible arrived in time: nothing to answer.
                Err(_) => {}
            }
        });
    }
    drop(listener);
    // Feeds watch no shutdown signal of their own: the hub ends them, and those opening now.
    state.hub.end_feeds();
    let deadline = Duration::from_secs(state.config.shutdown_timeout_secs);
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown: some connections were still open after {deadline:?}; closing them"
        );
    }
    Ok(())
}
