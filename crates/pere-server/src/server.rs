//! The accept loop: each connection goes to a dedicated feed loop or to hyper, by its first
//! request; beside it, the recipient expiry and the webhook; at the end, a bounded drain.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use pere_core::Store;
use tokio::net::TcpListener;

use crate::http_conn::{self, Rewind};
use crate::state::AppState;
use crate::{feed_conn, webhook};

/// Ends recipients' memberships after `--recipient-expiry` of inactivity, checked every minute.
async fn expire_recipients<S: Store>(state: Arc<AppState<S>>) {
    // Every minute, or more often for short expiries, so an expiry is never late by much.
    let period = (state.config.recipient_expiry / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut every = tokio::time::interval(period);
    loop {
        every.tick().await;
        if let Err(err) = state.hub.expire_recipients(state.config.recipient_expiry).await {
            tracing::error!("recipient expiry: {err}");
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

/// Serves connections from `listener` until `state.shutdown` is cancelled, then stops accepting,
/// ends every stream, and waits up to the configured timeout for open requests to finish.
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
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning; connections that close will
                // free descriptors.
                tracing::error!("accept: {err}");
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
                Ok(feed_conn::FirstRequest::Feed(request)) => feed_conn::serve(state, stream, request, peer).await,
                Ok(feed_conn::FirstRequest::Other(prefix)) => {
                    http_conn::serve(state, Rewind::new(prefix, stream), watcher, peer).await;
                }
                // Nothing sensible arrived in time: nothing to answer.
                Err(_) => {}
            }
        });
    }
    drop(listener);
    let deadline = Duration::from_secs(state.config.shutdown_timeout_secs);
    if tokio::time::timeout(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!("shutdown: some connections were still open after {deadline:?}; closing them");
    }
    Ok(())
}
