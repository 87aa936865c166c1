//! The receipt webhook: POSTs an event's receipt summary to the operator's URL once the event is
//! fully acknowledged, or once its receipt timeout passes without that. It runs beside the
//! server and is fed by the hub's notices, which are dropped rather than waited for, so it
//! never slows a push or a receipt.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pere_core::{ChannelName, HubNotice, Store};
use pere_proto::wire::{ReceiptSummaryJson, WebhookSummary};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::activity;
use crate::state::AppState;

/// Hub notices buffered for the webhook before new ones are dropped.
const NOTICE_QUEUE: usize = 65_536;
/// Events waiting for their receipts at once; past it the oldest is reported early.
const MAX_OPEN: usize = 100_000;
/// POSTs in flight at once, so a slow endpoint cannot pile up tasks.
const CONCURRENT_POSTS: usize = 16;
/// Attempts per summary before it is given up (with a log line).
const ATTEMPTS: u32 = 6;

/// Why a summary is sent.
#[derive(Debug, Clone, Copy)]
enum Reason {
    Complete,
    Timeout,
}

/// Starts the webhook for `state`'s hub; it ends when the server's shutdown token is cancelled.
pub fn spawn<S: Store>(state: Arc<AppState<S>>, url: String, receipt_timeout: Duration) {
    let mut incoming = state.hub.observe(NOTICE_QUEUE);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let posts = Arc::new(Semaphore::new(CONCURRENT_POSTS));
    tokio::spawn(async move {
        let mut open: HashMap<(ChannelName, u64), Instant> = HashMap::new();
        let mut deadlines: BTreeSet<(Instant, ChannelName, u64)> = BTreeSet::new();
        loop {
            let next_deadline = deadlines.first().map(|(at, _, _)| *at);
            let due = async {
                match next_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let report = tokio::select! {
                () = state.shutdown.cancelled() => return,
                () = due => deadlines.pop_first().map(|(_, channel, id)| {
                    open.remove(&(channel.clone(), id));
                    (channel, id, Reason::Timeout)
                }),
                notice = incoming.recv() => match notice {
                    None => return,
                    Some(HubNotice::Published { event, expected }) if expected > 0 => {
                        let (channel, event_id) = (event.channel.clone(), event.id);
                        let at = Instant::now() + receipt_timeout;
                        open.insert((channel.clone(), event_id), at);
                        deadlines.insert((at, channel, event_id));
                        if open.len() > MAX_OPEN {
                            deadlines.pop_first().map(|(_, channel, id)| {
                                open.remove(&(channel.clone(), id));
                                (channel, id, Reason::Timeout)
                            })
                        } else {
                            None
                        }
                    }
                    Some(HubNotice::Completed { channel, event_id, .. }) => {
                        open.remove(&(channel.clone(), event_id)).map(|at| {
                            deadlines.remove(&(at, channel.clone(), event_id));
                            (channel, event_id, Reason::Complete)
                        })
                    }
                    // The webhook reports publications and completions only.
                    Some(_) => None,
                },
            };
            if let Some((channel, event_id, reason)) = report {
                let Ok(permit) = posts.clone().acquire_owned().await else {
                    return;
                };
                let (state, client, url) = (state.clone(), client.clone(), url.clone());
                tokio::spawn(async move {
                    post(&state, &client, &url, &channel, event_id, reason).await;
                    drop(permit);
                });
            }
        }
    });
}

async fn post<S: Store>(
    state: &AppState<S>,
    client: &reqwest::Client,
    url: &str,
    channel: &ChannelName,
    event_id: u64,
    reason: Reason,
) {
    if let Some(bus) = state.bus.get() {
        // Every node follows the event; the first to claim it reports it. The claim outlives the
        // last moment another node could report it (its receipt timeout, with room for skew).
        let ttl = state.config.receipt_timeout * 2 + Duration::from_secs(60);
        match bus.claim_report(channel, event_id, ttl).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::error!("webhook: claiming {channel}/{event_id}: {err}");
                return;
            }
        }
    }
    let summary = match state.hub.receipt_summary(channel, event_id).await {
        Ok(summary) => summary,
        Err(err) => {
            tracing::error!("webhook: summary of {channel}/{event_id}: {err}");
            return;
        }
    };
    let reason = match reason {
        Reason::Complete => "complete",
        Reason::Timeout => "timeout",
    };
    let body = WebhookSummary {
        receipts: ReceiptSummaryJson::from(&summary),
        reason: reason.to_owned(),
    };
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let outcome = client.post(url).json(&body).send().await;
        let status = match &outcome {
            Ok(response) if response.status().is_success() => {
                state.metrics.webhook_attempt(true);
                activity::webhook(
                    channel.as_str(),
                    event_id,
                    summary.complete(),
                    attempt,
                    "delivered",
                );
                return;
            }
            Ok(response) => response.status().to_string(),
            Err(err) => err.to_string(),
        };
        state.metrics.webhook_attempt(false);
        activity::webhook(
            channel.as_str(),
            event_id,
            summary.complete(),
            attempt,
            &status,
        );
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    state.metrics.webhook_dropped();
    tracing::error!("webhook: gave up on {channel}/{event_id} after {ATTEMPTS} attempts");
}
