//! `pere-pub`: a PERE publisher, compatible with the original `publisher.rb`.
//!
//! Layout:
//! - [`cli`]: the command line, server address and default device id;
//! - [`interval`]: fixed or random waits (`0.2`, `10-20`);
//! - [`payload`]: the events: the original's random JSON, a fixed text or stdin lines;
//! - [`push`]: the push request (sent, and sent again, by `pere_client::retry`);
//! - [`follow`]: `--follow`, the channel's receipts;
//! - [`output`]: line-at-a-time printing and one-line failure descriptions.

mod cli;
mod follow;
mod interval;
mod output;
mod payload;
mod push;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pere_client::retry::{retry, send_once, Outcome, Policy};
use pere_core::wire::PushAccepted;
use pere_core::{ChannelName, DeviceId, EventType};
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
    let cli = Cli::parse();
    match run(cli).await {
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

/// Everything one push needs.
#[derive(Debug)]
struct Publisher {
    client: Client,
    url: Url,
    channel: String,
    device: String,
    event_type: Option<String>,
    json: bool,
    quiet: bool,
    /// `--retries` and `--retry-delay`: a random wait between failed attempts, as the original's.
    retry: Policy,
}

/// One `--json` line: the server's answer plus the body sent.
#[derive(Serialize)]
struct JsonPush<'a> {
    channel: &'a str,
    id: Option<u64>,
    time: Option<&'a str>,
    body: &'a str,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
    let mut client = Client::builder().connect_timeout(CONNECT_TIMEOUT);
    if let Some(token) = &cli.token {
        client = client.default_headers(pere_client::token::bearer_headers(token)?);
    }
    let client = client.build()?;

    if !cli.quiet && !cli.json {
        say!(
            "PUBLISH (device: {device}), channel: {}, server: {}",
            cli.channel,
            cli.server
        );
        say!("");
    }

    let follow = if cli.follow {
        Some(start_follow(&cli, &client, &base, &device).await)
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
        Some("-") => Source::stdin(),
        Some(text) => Source::Fixed(Body::text(text.to_owned())),
    };
    let publisher = Publisher {
        client,
        url: cli::endpoint(&base, "push", &cli.channel),
        channel: cli.channel.clone(),
        device,
        event_type: cli.event_type.clone(),
        json: cli.json,
        quiet: cli.quiet,
        retry: Policy {
            attempts: cli.attempts(),
            first_backoff: cli.retry_delay.shortest(),
            growth: 1,
            jitter: cli.retry_delay.spread(),
        },
    };

    let mut accepted = 0u64;
    while let Some(body) = source.next().await? {
        publisher.publish(accepted + 1, &body).await?;
        accepted += 1;
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
async fn start_follow(cli: &Cli, client: &Client, base: &Url, device: &str) -> JoinHandle<bool> {
    let follow = Follow {
        client: client.clone(),
        url: cli::endpoint(base, "receipts", &cli.channel),
        device: device.to_owned(),
        json: cli.json,
        quiet: cli.quiet,
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
    task
}

impl Publisher {
    /// Pushes event number `number` until the server accepts it, refuses it for good, or
    /// `--retries` attempts have failed.
    async fn publish(&self, number: u64, body: &Body) -> anyhow::Result<()> {
        let mut failed = 0u32;
        // One key per event, sent with every attempt: a retry of a push that did get through is
        // answered with the stored event, never stored twice.
        let key = pere_client::idempotency_key(&mut rand::thread_rng());
        let headers = push::PushHeaders {
            device: &self.device,
            event_type: self.event_type.as_deref(),
            key: &key,
        };
        let outcome = retry(
            &self.retry,
            || {
                send_once::<PushAccepted>(push::push_request(
                    &self.client,
                    &self.url,
                    headers,
                    body,
                ))
            },
            |attempt, why| {
                failed = attempt;
                eprintln!(
                    "PUSH FAILED. event: {} reason: {why}",
                    output::abbreviate(&body.text)
                );
            },
        )
        .await;
        match outcome {
            Outcome::Accepted(answer) => {
                self.report(answer, body);
                Ok(())
            }
            Outcome::Refused(why) => {
                Err(Fatal(format!("the server refused event {number}: {why}")).into())
            }
            Outcome::Retryable(why) => {
                anyhow::bail!("giving up on event {number} after {failed} failed attempts: {why}")
            }
        }
    }

    fn report(&self, answer: Option<PushAccepted>, body: &Body) {
        if self.json {
            let line = JsonPush {
                channel: answer.as_ref().map_or(&self.channel, |a| &a.channel),
                id: answer.as_ref().map(|a| a.id),
                time: answer.as_ref().map(|a| a.time.as_str()),
                body: &body.text,
            };
            // Serializing strings and numbers cannot fail.
            say!("{}", serde_json::to_string(&line).unwrap_or_default());
        } else if !self.quiet {
            // The server's id for the event, as its own log names it; an answer without one
            // (an original PERE server's) leaves the original line.
            match answer {
                Some(answer) => say!("PUSH EVT> event: {}, Event-Id: {}", body.text, answer.id),
                None => say!("PUSH EVT> event: {}", body.text),
            }
        }
    }
}
