//! The subscription: connect to `GET /feed/:channel`, read events, acknowledge them, reconnect.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::StreamExt;
use pere_client::retry::{is_transient, Outcome};
use pere_client::Fatal;
use pere_core::sse::{GAP_EVENT_TYPE, RESET_EVENT_TYPE};
use pere_core::wire::{GapNotice, ReceiptJson};
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use reqwest::{Client, Response, Url};
use serde::Serialize;

use crate::ack;
use crate::ledger::{Ledger, Verdict};
use crate::output::{describe_answer, describe_transport, say};
use crate::retry::{reconnect_delay, RetryScanner, DEFAULT_RETRY};

/// What the subscriber was asked to do, beyond where to connect.
#[derive(Debug)]
pub struct Options {
    /// The receipt status text.
    pub status: String,
    /// Stop after this many settled events.
    pub count: Option<u64>,
    /// Send no receipts.
    pub no_ack: bool,
    /// JSON lines instead of text.
    pub json: bool,
    /// Only `RX EVT>` lines.
    pub quiet: bool,
    /// Consecutive failed connection attempts allowed (0: no limit).
    pub retries: u32,
    /// The idle timeout the client was built with, for messages.
    pub idle_timeout: Option<Duration>,
}

/// A subscriber: its connection settings and what it has seen so far.
#[derive(Debug)]
pub struct Subscriber {
    client: Client,
    feed_url: Url,
    feedback_url: Url,
    device: String,
    opts: Options,
    ledger: Ledger,
    // The `Last-Event-ID` for the next connection: the last new id, verbatim.
    resume: Option<String>,
    // The server's `retry:` in milliseconds; shared with the byte scanner of the current stream.
    retry_ms: Arc<AtomicU64>,
    // Events received whose receipt is settled (or that need none): what `--count` counts.
    settled: u64,
}

/// How one connection ended.
enum Ended {
    /// `--count` events are done.
    Counted,
    /// The stream broke or closed; the reason.
    Dropped(String),
}

/// The outcome of a connection attempt.
enum Connect {
    Open(Response),
    Retry(String),
    Refused(String),
}

/// One `--json` line.
#[derive(Serialize)]
struct JsonEvent<'a> {
    id: serde_json::Value,
    event: &'a str,
    data: &'a str,
    receipt: Option<&'a ReceiptJson>,
}

impl Subscriber {
    /// A subscriber to `channel` on the server at `base`, resuming after `start` if given.
    pub fn new(
        client: Client,
        base: &Url,
        channel: &str,
        device: String,
        start: Option<String>,
        opts: Options,
    ) -> Self {
        let ledger = Ledger::new(start.as_deref().and_then(|s| s.parse().ok()));
        Subscriber {
            client,
            feed_url: crate::cli::endpoint(base, "feed", channel),
            feedback_url: crate::cli::endpoint(base, "feedback", channel),
            device,
            opts,
            ledger,
            resume: start,
            retry_ms: Arc::new(AtomicU64::new(DEFAULT_RETRY.as_millis() as u64)),
            settled: 0,
        }
    }

    /// Listens until `--count` events are done (`Ok`), the server refuses the subscription
    /// ([`Fatal`]) or cannot be reached `--retries` times in a row.
    ///
    /// # Errors
    /// [`Fatal`] for a refusal; another error when the server stays out of reach.
    pub async fn run(&mut self) -> anyhow::Result<()> {
        let mut failures = 0u32;
        loop {
            let notice = match self.connect().await {
                Connect::Open(response) => {
                    failures = 0;
                    match self.listen(response).await {
                        Ended::Counted => return Ok(()),
                        Ended::Dropped(why) => why,
                    }
                }
                Connect::Refused(why) => {
                    return Err(
                        Fatal(format!("the server refused {}: {why}", self.feed_url)).into(),
                    )
                }
                Connect::Retry(why) => {
                    failures += 1;
                    if self.opts.retries != 0 && failures >= self.opts.retries {
                        anyhow::bail!(
                            "cannot reach {} after {failures} attempts: {why}",
                            self.feed_url
                        );
                    }
                    let of = if self.opts.retries == 0 {
                        String::new()
                    } else {
                        format!(" of {}", self.opts.retries)
                    };
                    format!(
                        "cannot reach {} (attempt {failures}{of}): {why}",
                        self.feed_url
                    )
                }
            };
            let retry = Duration::from_millis(self.retry_ms.load(Ordering::Relaxed));
            let delay = reconnect_delay(retry, &mut rand::thread_rng());
            if !self.opts.quiet {
                let from = self
                    .resume
                    .as_deref()
                    .map(|id| format!(" with Last-Event-ID: {id}"))
                    .unwrap_or_default();
                eprintln!(
                    "pere-sub: {notice}; reconnecting in {:.1} s{from}",
                    delay.as_secs_f64()
                );
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn connect(&self) -> Connect {
        let mut request = self
            .client
            .get(self.feed_url.clone())
            .header("device", &self.device)
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(id) = &self.resume {
            request = request.header("Last-Event-ID", id);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) if err.is_builder() => return Connect::Refused(describe_transport(err)),
            Err(err) => return Connect::Retry(describe_transport(err)),
        };
        let status = response.status();
        if status.is_success() {
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !content_type.starts_with("text/event-stream") {
                return Connect::Refused(format!(
                    "HTTP {status} with {content_type:?}, not an event stream"
                ));
            }
            return Connect::Open(response);
        }
        let body = response.text().await.unwrap_or_default();
        let why = describe_answer(status, &body);
        if is_transient(status) || status.is_redirection() {
            Connect::Retry(why)
        } else {
            Connect::Refused(why)
        }
    }

    async fn listen(&mut self, response: Response) -> Ended {
        let retry_ms = Arc::clone(&self.retry_ms);
        let mut scanner = RetryScanner::default();
        let bytes = response.bytes_stream().map(move |chunk| {
            if let Ok(bytes) = &chunk {
                if let Some(ms) = scanner.feed(bytes) {
                    retry_ms.store(ms, Ordering::Relaxed);
                }
            }
            chunk
        });
        let mut events = pin!(bytes.eventsource());
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => {
                    if self.on_event(event).await {
                        return Ended::Counted;
                    }
                }
                Err(err) => return Ended::Dropped(self.describe_stream_error(err)),
            }
        }
        Ended::Dropped("the server closed the stream".into())
    }

    fn describe_stream_error(&self, err: EventStreamError<reqwest::Error>) -> String {
        match err {
            EventStreamError::Transport(err) if err.is_timeout() => match self.opts.idle_timeout {
                Some(idle) => format!(
                    "nothing received for {} s, not even a keep-alive",
                    idle.as_secs()
                ),
                None => describe_transport(err),
            },
            EventStreamError::Transport(err) => {
                format!("the stream broke: {}", describe_transport(err))
            }
            other => format!("unreadable stream: {other}"),
        }
    }

    /// Handles one event; true once `--count` is reached.
    async fn on_event(&mut self, event: Event) -> bool {
        if event.event == GAP_EVENT_TYPE {
            report_gap(&event.data);
            return false;
        }
        if event.event == RESET_EVENT_TYPE {
            // The server lost the history our ids came from: what it sends now is all new.
            self.ledger = Ledger::new(None);
            match serde_json::from_str::<pere_core::wire::ResetNotice>(&event.data) {
                Ok(reset) => eprintln!(
                    "RESET> the server does not know event {}: its history ends at {}, ids start over",
                    reset.last_event_id, reset.head
                ),
                Err(_) => eprintln!("RESET> {}", event.data),
            }
            return false;
        }
        let id = event.id;
        // An id that is no PERE sequence number (the original server's timestamps) cannot be
        // ordered: such events are all new. (An event without `id:` keeps the previous id, as in
        // a browser, and so reads as a duplicate.)
        let number = id.parse::<u64>().ok();
        let verdict = number.map_or(Verdict::New, |n| self.ledger.classify(n));
        match verdict {
            Verdict::Skip => return false,
            Verdict::New if !id.is_empty() => self.resume = Some(id.clone()),
            Verdict::New | Verdict::Reack => {}
        }
        let new = verdict == Verdict::New;
        if new && !self.opts.json {
            say!("RX EVT> id: {id}, data: {}", event.data);
        }

        let mut receipt = None;
        let settled = if self.opts.no_ack || id.is_empty() {
            new
        } else {
            let status = &self.opts.status;
            match ack::acknowledge(&self.client, &self.feedback_url, &self.device, &id, status)
                .await
            {
                Outcome::Accepted(answer) => {
                    if let Some(n) = number {
                        self.ledger.settled(n);
                    }
                    if !self.opts.json && !self.opts.quiet {
                        let status = answer
                            .as_ref()
                            .map_or(status.as_str(), |r| r.status.as_str());
                        say!("TX ACK> id: {id}, status: {status}");
                    }
                    receipt = answer;
                    true
                }
                Outcome::Retryable(why) => {
                    if let Some(n) = number {
                        self.ledger.unsettled(n);
                    }
                    eprintln!("TX ACK FAILED> id: {id}, reason: {why}");
                    false
                }
                Outcome::Refused(why) => {
                    if let Some(n) = number {
                        self.ledger.settled(n);
                    }
                    eprintln!("TX ACK FAILED> id: {id}, reason: {why}");
                    true
                }
            }
        };

        if new && self.opts.json {
            let id_json = match number {
                Some(n) => n.into(),
                None if id.is_empty() => serde_json::Value::Null,
                None => id.clone().into(),
            };
            let line = JsonEvent {
                id: id_json,
                event: &event.event,
                data: &event.data,
                receipt: receipt.as_ref(),
            };
            // Serializing strings and numbers cannot fail.
            say!("{}", serde_json::to_string(&line).unwrap_or_default());
        }

        if settled {
            self.settled += 1;
        }
        self.opts.count.is_some_and(|count| self.settled >= count)
    }
}

fn report_gap(data: &str) {
    match serde_json::from_str::<GapNotice>(data) {
        Ok(gap) => eprintln!(
            "GAP> events {}..{} are no longer retained on the server",
            gap.from, gap.to
        ),
        Err(_) => eprintln!("GAP> {data}"),
    }
}
