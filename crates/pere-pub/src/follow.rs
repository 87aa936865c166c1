//! `--follow`: print the channel's return receipts as the server streams them
//! (`GET /receipts/:channel`: one `receipt` event per receipt, its data a JSON receipt).

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use pere_client::retry::is_transient;
use pere_proto::sse::GAP_EVENT_TYPE;
use pere_proto::wire::ReceiptJson;
use rand::Rng;
use reqwest::header::ACCEPT;
use reqwest::{Client, Url};
use tokio::sync::oneshot;

use crate::output::{describe_answer, describe_transport, say};

/// Consecutive failed attempts before following stops: publishing goes on without it.
const MAX_FAILURES: u32 = 10;
/// The wait before reconnecting; the original clients' 3 s (the receipts stream's own `retry:` is
/// not read: a stray second here costs nothing).
const RECONNECT: Duration = Duration::from_millis(3000);

/// Where and how to follow.
#[derive(Debug)]
pub struct Follow {
    /// The client.
    pub client: Client,
    /// `/receipts/:channel`.
    pub url: Url,
    /// Sent as the `device` header.
    pub device: String,
    /// Print `{"receipt": …}` lines instead of `RECEIPT>` lines.
    pub json: bool,
    /// No reconnection notices.
    pub quiet: bool,
    /// Receipts printed so far, for the summary.
    pub receipts: Arc<AtomicU64>,
}

impl Follow {
    /// Prints receipts until interrupted; `ready` fires once the stream is open, so the caller can
    /// start publishing without missing a receipt.
    ///
    /// # Errors
    /// The server refused the stream (4xx, e.g. a server without `/receipts`) or stayed out of
    /// reach for [`MAX_FAILURES`] attempts in a row.
    pub async fn run(self, ready: oneshot::Sender<()>) -> anyhow::Result<()> {
        let mut ready = Some(ready);
        let mut last_id: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let mut request = self
                .client
                .get(self.url.clone())
                .header("device", &self.device)
                .header(ACCEPT, "text/event-stream");
            if let Some(id) = &last_id {
                request = request.header("Last-Event-ID", id);
            }
            let why = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    failures = 0;
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                    let mut events = pin!(response.bytes_stream().eventsource());
                    loop {
                        match events.next().await {
                            Some(Ok(event)) => {
                                if !event.id.is_empty() {
                                    last_id = Some(event.id);
                                }
                                match event.event.as_str() {
                                    "receipt" | "message" => self.print(&event.data),
                                    GAP_EVENT_TYPE => eprintln!(
                                        "GAP> receipts are no longer retained: {}",
                                        event.data
                                    ),
                                    // Other notices (e.g. `complete`: every expected receipt is in)
                                    // are not receipts.
                                    _ => {}
                                }
                            }
                            Some(Err(EventStreamError::Transport(err))) => {
                                break describe_transport(err)
                            }
                            Some(Err(err)) => break format!("unreadable stream: {err}"),
                            None => break "the server closed the stream".to_owned(),
                        }
                    }
                }
                Ok(response) => {
                    let status = response.status();
                    let why = describe_answer(status, &response.text().await.unwrap_or_default());
                    if !is_transient(status) {
                        anyhow::bail!("{}: {why}", self.url);
                    }
                    why
                }
                Err(err) => describe_transport(err),
            };
            failures += 1;
            if failures >= MAX_FAILURES {
                anyhow::bail!("cannot reach {} after {failures} attempts: {why}", self.url);
            }
            let delay = RECONNECT + Duration::from_millis(rand::thread_rng().gen_range(0..300));
            if !self.quiet {
                eprintln!(
                    "pere-pub: receipts: {why}; reconnecting in {:.1} s",
                    delay.as_secs_f64()
                );
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn print(&self, data: &str) {
        match serde_json::from_str::<ReceiptJson>(data) {
            Ok(receipt) if self.json => {
                self.receipts.fetch_add(1, Ordering::Relaxed);
                say!("{}", serde_json::json!({ "receipt": receipt }));
            }
            Ok(r) => {
                self.receipts.fetch_add(1, Ordering::Relaxed);
                say!(
                    "RECEIPT> id: {}, device: {}, status: {}",
                    r.id,
                    r.device,
                    r.status
                );
            }
            Err(_) => eprintln!("pere-pub: unreadable receipt: {data}"),
        }
    }
}
