//! `pere-pub`: a PERE publisher, compatible with the original `publisher.rb`: a thin layer over
//! `pere_client::Publisher` that makes the events and prints what the server answers.
//!
//! Layout:
//! - [`cli`]: the command line, server address and default device id;
//! - [`interval`]: fixed or random waits (`0.2`, `10-20`);
//! - [`payload`]: the events: the original's random JSON, a fixed text or stdin lines;
//! - [`follow`]: `--follow`, the channel's receipts;
//! - [`output`]: line-at-a-time printing and one-line failure descriptions.
#![forbid(unsafe_code)]

mod cli;
mod follow;
mod interval;
mod output;
mod payload;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use pere_client::{BatchEvent, Error, Policy, Publisher, Pushed, Refusal};
use pere_proto::wire::{PushAccepted, ReceiptSummaryJson};
use pere_proto::{ChannelName, DeviceId, EventType};
use reqwest::{Client, Url};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::cli::Cli;
use crate::follow::Follow;
use crate::output::say;
use crate::payload::{Body, Source};

pub use pere_client::Fatal;

/// How long to wait for a TCP connection before counting the attempt as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long publishing waits for `--follow`'s stream to open, so the first receipts are not missed.
const FOLLOW_READY_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error in one line, with exit status 2 as clap gives it; `--help` and
        // `--version` print as usual.
        Err(err) if err.use_stderr() => {
            eprintln!(
                "{}",
                pere_cli::usage_line("pere-pub", &err.render().to_string())
            );
            return ExitCode::from(2);
        }
        Err(err) => err.exit(),
    };
    let tally = Arc::new(Tally {
        wait: cli.wait.is_some(),
        follow: cli.follow,
        ..Tally::default()
    });
    let interrupted = pere_client::interrupt::interrupted();
    let outcome = tokio::select! {
        outcome = run(cli, Arc::clone(&tally)) => outcome,
        // Ctrl-C is how a publisher without --count is stopped: say what it did, and exit 0.
        () = interrupted => {
            eprintln!("{}", tally.summary());
            Ok(ExitCode::SUCCESS)
        }
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pere-pub: {err:#}");
            if err.is::<Fatal>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// What happened so far, for the summary a Ctrl-C prints.
#[derive(Debug, Default)]
struct Tally {
    /// Events the server accepted.
    sent: AtomicU64,
    /// Events whose `--wait` was satisfied.
    acknowledged: AtomicU64,
    /// Receipts `--follow` printed.
    receipts: Arc<AtomicU64>,
    wait: bool,
    follow: bool,
}

impl Tally {
    /// `SUMMARY> sent: N`, plus what `--wait` and `--follow` counted.
    fn summary(&self) -> String {
        let mut line = format!("SUMMARY> sent: {}", self.sent.load(Ordering::Relaxed));
        if self.wait {
            line += &format!(
                ", acknowledged: {}",
                self.acknowledged.load(Ordering::Relaxed)
            );
        }
        if self.follow {
            line += &format!(", receipts: {}", self.receipts.load(Ordering::Relaxed));
        }
        line
    }
}

/// The publisher and how to show what it publishes.
#[derive(Debug)]
struct Tool {
    publisher: Publisher,
    channel: String,
    event_type: Option<String>,
    wait: Option<(pere_client::Wait, Duration)>,
    json: bool,
    quiet: bool,
    tally: Arc<Tally>,
    /// Whether `--ca` was given, for the hint after a failed TLS handshake.
    ca_given: bool,
}

/// One `--json` line: the server's answer plus the body sent (and, with `--wait`, the receipts).
#[derive(Serialize)]
struct JsonPush<'a> {
    channel: &'a str,
    id: Option<u64>,
    time: Option<&'a str>,
    body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    satisfied: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipts: Option<&'a ReceiptSummaryJson>,
}

async fn run(cli: Cli, tally: Arc<Tally>) -> anyhow::Result<ExitCode> {
    let base = cli::base_url(&cli.server).map_err(Fatal)?;
    // Names are checked before anything starts: the server would refuse each push for them.
    ChannelName::new(&cli.channel)
        .map_err(|e| Fatal(format!("invalid channel {:?}: {e}", cli.channel)))?;
    let device = cli.device();
    DeviceId::new(&device).map_err(|e| Fatal(format!("invalid device id {device:?}: {e}")))?;
    if let Some(event_type) = &cli.event_type {
        EventType::new(event_type)
            .map_err(|e| Fatal(format!("invalid event type {event_type:?}: {e}")))?;
    }
    let mut publisher = Publisher::builder(base.as_str())
        .device(&device)
        .retry(Policy {
            // `--retries` and `--retry-delay`: a random wait between failed attempts, as the original's.
            attempts: cli.attempts(),
            first_backoff: cli.retry_delay.shortest(),
            growth: 1,
            jitter: cli.retry_delay.spread(),
        });
    if let Some(token) = &cli.token {
        publisher = publisher.token(token);
    }
    let ca = match &cli.ca {
        Some(path) => Some(pere_client::tls::read_ca(path).map_err(Fatal)?),
        None => None,
    };
    if let Some(pem) = &ca {
        publisher = publisher.ca_pem(pem.clone());
    }
    let publisher = publisher.build().map_err(|e| Fatal(e.to_string()))?;

    if !cli.quiet && !cli.json {
        say!(
            "PUBLISH (device: {device}), channel: {}, server: {}",
            cli.channel,
            cli.server
        );
        say!("");
    }

    let follow = if cli.follow {
        Some(start_follow(&cli, &base, &device, ca.as_deref(), &tally).await?)
    } else {
        None
    };

    let interval = cli.interval();
    let mut source = match cli.data.as_deref() {
        None => Source::Random {
            channel: cli.channel.clone(),
            device: device.clone(),
            last_id: 0,
        },
        Some("-") => Source::stdin(cli.batch.unwrap_or(1) as usize),
        Some(text) => Source::Fixed(Body::detect(text.to_owned())),
    };
    let tool = Tool {
        publisher,
        channel: cli.channel.clone(),
        event_type: cli.event_type.clone(),
        wait: cli
            .wait
            .map(|wait| (wait, Duration::from_secs(cli.wait_timeout))),
        json: cli.json,
        quiet: cli.quiet,
        tally,
        ca_given: ca.is_some(),
    };

    let mut accepted = 0u64;
    loop {
        let left = cli.count.map_or(u64::MAX, |count| count - accepted);
        match cli.batch {
            Some(size) => {
                let bodies = source.next_batch(size.min(left)).await?;
                if bodies.is_empty() {
                    break;
                }
                tool.publish_batch(accepted + 1, bodies).await?;
            }
            None => {
                let Some(body) = source.next().await? else {
                    break;
                };
                tool.publish(accepted + 1, body).await?;
            }
        }
        accepted = tool.tally.sent.load(Ordering::Relaxed);
        if cli.count.is_some_and(|count| accepted >= count) {
            break;
        }
        if !interval.is_zero() {
            tokio::time::sleep(interval.sample(&mut rand::thread_rng())).await;
        }
    }

    match follow {
        // Following goes on until interrupted; it ends only by failing (already reported).
        Some(follow) => match follow.await {
            Ok(true) => Ok(ExitCode::SUCCESS),
            _ => Ok(ExitCode::FAILURE),
        },
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Starts `--follow` and waits (briefly) for its stream to open. The task reports its own failure
/// at once, on stderr, and yields false.
async fn start_follow(
    cli: &Cli,
    base: &Url,
    device: &str,
    ca: Option<&[u8]>,
    tally: &Tally,
) -> anyhow::Result<JoinHandle<bool>> {
    let mut client =
        pere_client::tls::trust(Client::builder().connect_timeout(CONNECT_TIMEOUT), ca)?;
    if let Some(token) = &cli.token {
        client = client.default_headers(pere_client::token::bearer_headers(token)?);
    }
    let follow = Follow {
        client: client.build()?,
        url: cli::endpoint(base, "receipts", &cli.channel),
        device: device.to_owned(),
        json: cli.json,
        quiet: cli.quiet,
        receipts: Arc::clone(&tally.receipts),
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        match follow.run(ready_tx).await {
            Ok(()) => true,
            Err(err) => {
                eprintln!("pere-pub: --follow: {err:#}");
                false
            }
        }
    });
    // Ready, failed (the sender is dropped) or too slow: publish either way.
    let _ = tokio::time::timeout(FOLLOW_READY_TIMEOUT, ready_rx).await;
    Ok(task)
}

impl Tool {
    /// Pushes event number `number` until the server accepts it, refuses it for good, or
    /// `--retries` attempts have failed. The library sends one idempotency key per event with
    /// every attempt: a retry of a push that did get through is never stored twice.
    async fn publish(&self, number: u64, body: Body) -> anyhow::Result<()> {
        let shown = output::abbreviate(body.as_str()).into_owned();
        let mut push = self
            .publisher
            .push(&self.channel, body.clone())
            .on_failure(move |_, why| eprintln!("PUSH FAILED. event: {shown} reason: {why}"));
        if let Some(event_type) = &self.event_type {
            push = push.event_type(event_type);
        }
        if let Some((wait, timeout)) = self.wait {
            push = push.wait(wait, timeout);
        }
        match push.await {
            Ok(pushed) => {
                self.tally.sent.fetch_add(1, Ordering::Relaxed);
                if pushed.satisfied() == Some(true) {
                    self.tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                self.report(&pushed, &body);
                Ok(())
            }
            Err(Error::GaveUp { attempts, last }) => {
                anyhow::bail!(
                    "giving up on event {number} after {attempts} failed attempts: {last}"
                )
            }
            Err(Error::Refused(tls @ Refusal::Tls(_))) => Err(self.untrusted(&tls)),
            Err(err) => Err(Fatal(format!(
                "the server refused event {number}: {}",
                err.reason()
            ))
            .into()),
        }
    }

    /// Pushes events `first..` in one request, as [`Tool::publish`] pushes one.
    async fn publish_batch(&self, first: u64, bodies: Vec<Body>) -> anyhow::Result<()> {
        let count = bodies.len();
        let last = first + count as u64 - 1;
        let shown = output::abbreviate(bodies[0].as_str()).into_owned();
        let events = bodies.iter().map(|body| {
            let event = BatchEvent::new(body.clone());
            match &self.event_type {
                Some(event_type) => event.event_type(event_type),
                None => event,
            }
        });
        let batch = self
            .publisher
            .push_batch(&self.channel, events)
            .on_failure(move |_, why| {
                eprintln!("PUSH FAILED. batch of {count} events, first: {shown} reason: {why}")
            });
        match batch.await {
            Ok(pushed) => {
                self.tally.sent.fetch_add(count as u64, Ordering::Relaxed);
                let answer = &pushed.answer;
                for (body, &id) in bodies.iter().zip(&answer.ids) {
                    let one = Pushed {
                        answer: Some(PushAccepted {
                            channel: answer.channel.clone(),
                            id,
                            time: answer.time.clone(),
                        }),
                        waited: None,
                        key: String::new(),
                        replayed: false,
                    };
                    self.report(&one, body);
                }
                Ok(())
            }
            Err(Error::GaveUp {
                attempts,
                last: why,
            }) => {
                anyhow::bail!(
                    "giving up on events {first} to {last} after {attempts} failed attempts: {why}"
                )
            }
            Err(Error::Refused(tls @ Refusal::Tls(_))) => Err(self.untrusted(&tls)),
            Err(err) => Err(Fatal(format!(
                "the server refused events {first} to {last}: {}",
                err.reason()
            ))
            .into()),
        }
    }

    /// A failed TLS handshake, which no retry mends: what failed, and which CAs were trusted.
    fn untrusted(&self, tls: &Refusal) -> anyhow::Error {
        let server = self.publisher.base();
        let hint = pere_client::output::tls_hint(self.ca_given);
        Fatal(format!("cannot connect to {server}: {tls} ({hint})")).into()
    }

    fn report(&self, pushed: &Pushed, body: &Body) {
        let answer = pushed.answer.as_ref();
        let receipts = pushed.waited.as_ref().map(|w| &w.receipts);
        if self.json {
            let line = JsonPush {
                channel: answer.map_or(&self.channel, |a| &a.channel),
                id: answer.map(|a| a.id),
                time: answer.map(|a| a.time.as_str()),
                body: body.as_str(),
                satisfied: pushed.satisfied(),
                receipts,
            };
            // Serializing strings and numbers cannot fail.
            say!("{}", serde_json::to_string(&line).unwrap_or_default());
        } else if !self.quiet {
            // The server's id for the event, as its own log names it; an answer without one
            // (an original PERE server's) leaves the original line.
            let acked = receipts
                .map(|r| format!(", acknowledged: {}/{}", r.counts.acknowledged, r.expected));
            match answer {
                Some(answer) => {
                    say!(
                        "PUSH EVT> event: {}, Event-Id: {}{}",
                        body.as_str(),
                        answer.id,
                        acked.unwrap_or_default()
                    )
                }
                None => say!("PUSH EVT> event: {}", body.as_str()),
            }
        }
    }
}
