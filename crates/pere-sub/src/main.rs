//! `pere-sub`: a PERE subscriber, compatible with the original `subscriber.rb`: a thin layer over
//! `pere_client::Subscriber` that prints what it yields.
//!
//! Layout:
//! - [`cli`]: the command line, server address and default device id;
//! - [`show`]: the lines printed for each item, and what `--count` and the summary count;
//! - [`output`]: line-at-a-time printing.
#![forbid(unsafe_code)]

mod cli;
mod output;
mod show;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use futures_util::StreamExt;
use pere_client::{Error, Fatal, Refusal, Subscriber};

use crate::cli::Cli;
use crate::output::say;
use crate::show::{Show, Tally};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error in one line, with exit status 2 as clap gives it; `--help` and
        // `--version` print as usual.
        Err(err) if err.use_stderr() => {
            eprintln!(
                "{}",
                pere_cli::usage_line("pere-sub", &err.render().to_string())
            );
            return ExitCode::from(2);
        }
        Err(err) => err.exit(),
    };
    let tally = Tally::default();
    let interrupted = pere_client::interrupt::interrupted();
    let outcome = tokio::select! {
        outcome = run(cli, &tally) => outcome,
        // Ctrl-C is how a listening subscriber is stopped: say what it did, and exit 0.
        () = interrupted => {
            eprintln!("{}", tally.summary());
            Ok(())
        }
    };
    match outcome {
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

async fn run(cli: Cli, tally: &Tally) -> anyhow::Result<()> {
    let base = cli::base_url(&cli.server).map_err(Fatal)?;
    let (device, source) = cli.device();
    if let cli::DeviceSource::ThisRun(Some(why)) = &source {
        eprintln!("pere-sub: {why}; using a new device id for this run");
    }
    let mut builder = Subscriber::builder(base.as_str(), &cli.channel)
        .device(&device)
        .idle_timeout((cli.idle_timeout > 0).then(|| Duration::from_secs(cli.idle_timeout)))
        .max_failures(Some(cli.retries));
    if let Some(token) = &cli.token {
        builder = builder.token(token);
    }
    if let Some(ca) = &cli.ca {
        builder = builder.ca_pem(pere_client::tls::read_ca(ca).map_err(Fatal)?);
    }
    if !cli.no_ack {
        builder = builder.auto_ack(&cli.status);
    }
    if cli.no_coalesce {
        builder = builder.coalesce(false);
    }
    builder = builder.receipt_spacing(Duration::from_millis(cli.receipt_spacing));
    if let Some(id) = &cli.last_event_id {
        builder = builder.last_event_id(id);
    }
    let mut feed = builder.build().map_err(|e| Fatal(e.to_string()))?;

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
    let url = feed.feed_url().clone();
    let mut show = Show::new(&cli, url.as_str(), tally);
    while let Some(item) = feed.next().await {
        match item {
            Ok(item) => {
                if show.item(item) {
                    return Ok(());
                }
                if show.has_enough() {
                    // `--count` is reached once these receipts are in: no more events meanwhile.
                    feed.finish_receipts();
                }
            }
            Err(Error::GaveUp { attempts, last }) => {
                anyhow::bail!("cannot reach {url} after {attempts} attempts: {last}")
            }
            Err(Error::Refused(tls @ Refusal::Tls(_))) => {
                let hint = pere_client::output::tls_hint(cli.ca.is_some());
                return Err(Fatal(format!("cannot connect to {url}: {tls} ({hint})")).into());
            }
            Err(err) => {
                return Err(Fatal(format!("the server refused {url}: {}", err.reason())).into())
            }
        }
    }
    Ok(())
}
