//! `pere-sub`: a PERE subscriber, compatible with the original `subscriber.rb`.
//!
//! Layout:
//! - [`cli`]: the command line, server address and default device id;
//! - [`feed`]: the subscription loop (connect, read, acknowledge, reconnect);
//! - [`ledger`]: which events are new, duplicates, or still owed a receipt;
//! - [`ack`]: the receipt request, and its retry policy;
//! - [`retry`]: the server's `retry:` and the reconnection delay;
//! - [`output`]: line-at-a-time printing and one-line failure descriptions.

mod ack;
mod cli;
mod feed;
mod ledger;
mod output;
mod retry;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use reqwest::header::HeaderValue;

use crate::cli::Cli;
use crate::feed::{Options, Subscriber};
use crate::output::say;

pub use pere_client::Fatal;

/// How long to wait for a TCP connection before counting the attempt as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pere-sub: {err:#}");
            if err.is::<Fatal>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let base = cli::base_url(&cli.server).map_err(Fatal)?;
    let (device, source) = cli.device();
    if let cli::DeviceSource::ThisRun(Some(why)) = &source {
        eprintln!("pere-sub: {why}; using a new device id for this run");
    }
    if HeaderValue::from_str(&device).is_err() {
        return Err(Fatal(format!("invalid device id {device:?}")).into());
    }
    let idle_timeout = (cli.idle_timeout > 0).then(|| Duration::from_secs(cli.idle_timeout));
    let mut client = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
    if let Some(token) = &cli.token {
        client = client.default_headers(pere_client::token::bearer_headers(token)?);
    }
    if let Some(idle) = idle_timeout {
        // Applies to each read, so the server's keep-alive comments keep a quiet stream alive.
        client = client.read_timeout(idle);
    }
    let client = client.build()?;

    if !cli.quiet && !cli.json {
        say!(
            "LISTEN (device: {device}), channel: {}, server: {}",
            cli.channel,
            cli.server
        );
        if let cli::DeviceSource::Kept(file) = &source {
            say!(
                "device id kept in {} (a device argument or PERE_DEVICE overrides it)",
                file.display()
            );
        }
        say!("");
    }
    let opts = Options {
        status: cli.status,
        count: cli.count,
        no_ack: cli.no_ack,
        json: cli.json,
        quiet: cli.quiet,
        retries: cli.retries,
        idle_timeout,
    };
    Subscriber::new(client, &base, &cli.channel, device, cli.last_event_id, opts)
        .run()
        .await
}
