//! `pere-bench`: a load generator for PERE and any server with its URL shape
//! (`POST /push/<ch>`, `GET /feed/<ch>` as Server-Sent Events, `POST /feedback/<ch>`).
//!
//! It measures the server, not itself: subscribers are raw HTTP/1.1 over tokio sockets with a
//! hand parser of the SSE byte stream; latency is read from the send time in each event body.
//! See `bench/README.md` for the scenarios and `bench/compare.sh` for a PERE/Nchan comparison.
//!
//! Layout:
//! - `http`: request bytes, response heads and body framing (length, chunked);
//! - `sse`: the event stream parser and the body scanner;
//! - `client`: sockets and a keep-alive request client;
//! - `h2`: idle HTTP/2 subscribers, many streams per connection;
//! - `load`: the scenarios' tasks and phases, and the JSON report;
//! - `procfs`: the server's memory and CPU from `/proc`;
//! - `receipt`: receipt styles and the bytes of each receipt request;
//! - `stats`: seen sets, percentiles, medians;
//! - `report`: the report for people;
//! - `summarize`: Markdown tables over many reports;
//! - `wake`: how long a sleeping thread takes to run once woken, on this machine.

mod client;
mod h2;
mod http;
mod load;
mod procfs;
mod receipt;
mod report;
mod sse;
mod stats;
mod summarize;
mod wake;
mod witness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use crate::load::{Plan, Scenario};
use crate::procfs::Probe;
use crate::receipt::ReceiptStyle;

/// Load generator for PERE-shaped push servers: SSE fan-out latency and loss, receipts,
/// pushes/s, and the server's memory per connection and CPU per delivery.
#[derive(Debug, Parser)]
#[command(name = "pere-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open N subscribers and hold them: the server's memory per idle connection.
    Idle(LoadArgs),
    /// Open N HTTP/2 feed streams over a few connections and hold them: memory per idle stream.
    IdleH2(h2::IdleH2Args),
    /// Paced publishing (--rate events/s per channel) to N subscribers: latency, loss.
    Fanout(LoadArgs),
    /// Unpaced publishing to N subscribers: deliveries/s and server CPU per delivery.
    Saturate(LoadArgs),
    /// Paced publishing; every subscriber posts a receipt per event: receipts/s and latency.
    Receipts(LoadArgs),
    /// Unpaced publishing, no subscribers, K keep-alive connections: pushes/s.
    Push(LoadArgs),
    /// Paced fan-out measured with other clients (reqwest and eventsource-stream), none of
    /// pere-bench's own: a second witness of `fanout`'s latency.
    Witness(witness::WitnessArgs),
    /// Print the memory (KiB) and CPU time (s) of processes and their descendants, as JSON.
    Probe {
        /// A server process (repeatable); its child processes are included.
        #[arg(long = "server-pid", required = true)]
        server_pids: Vec<u32>,
    },
    /// How long a thread asleep for --quiet-us takes to run once woken (this machine's cost of
    /// a hand-off between threads after a pause), as JSON; no server involved. Bounded like
    /// every run: at most 10,000 wake-ups of at most 0.1 s of quiet each.
    Wake {
        /// Wake-ups measured (1 to 10,000).
        #[arg(short = 'n', long, default_value_t = 400,
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        wakes: u32,
        /// Quiet before each wake-up, µs (0 to 100,000).
        #[arg(long, default_value_t = 10_000,
              value_parser = clap::value_parser!(u64).range(0..=100_000))]
        quiet_us: u64,
    },
    /// Markdown tables of medians, spreads and ratios from DIR/SCENARIO/SERVER/REP.json.
    Summarize {
        /// The directory of reports.
        dir: PathBuf,
        /// Servers whose name starts with this are the baselines of the ratio columns.
        #[arg(long, default_value = "nchan")]
        baseline: String,
    },
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// The server, http://HOST:PORT; it must be on this machine (127.0.0.0/8 or ::1).
    #[arg(short = 'u', long, default_value = "http://127.0.0.1:4567")]
    url: String,
    /// Where to publish, http://HOST:PORT [--url]: another node of the same cluster, so that
    /// every delivery crosses the cluster's bus.
    #[arg(long)]
    publish_url: Option<String>,
    /// Subscribers to open [idle, fanout, saturate, receipts: 1000; push: 0].
    #[arg(short = 'n', long)]
    subscribers: Option<usize>,
    /// Channels; subscribers and events are spread over them in turn.
    #[arg(short = 'c', long, default_value_t = 1)]
    channels: usize,
    /// Events to publish per channel [paced: rate × duration; unpaced: until --duration ends].
    #[arg(short = 'm', long)]
    events: Option<u64>,
    /// Events per second per channel; 0 is unpaced [fanout: 100; receipts: 10; others: 0].
    #[arg(short = 'r', long)]
    rate: Option<f64>,
    /// Seconds to publish, or to hold the subscribers open (idle) [idle: 5; others: 10].
    #[arg(short = 'd', long)]
    duration: Option<f64>,
    /// Keep-alive publishing connections [push: 50; others: 4].
    #[arg(short = 'k', long)]
    publishers: Option<usize>,
    /// Keep-alive connections carrying receipts (receipts scenario, `--receipt-style shared`).
    #[arg(long, default_value_t = 32)]
    receipt_conns: usize,
    /// How subscribers acknowledge (receipts scenario). shared: JSON `{"device","id","status"}`
    /// per event over --receipt-conns shared connections; per-event: each device its own
    /// keep-alive connection, one seed-form request (`status=rx+ok`, headers `device` and
    /// `last_event_id`) per delivery; coalesced: each device its own connection, one request in
    /// flight, the deliveries that arrive meanwhile acknowledged by the next one as a
    /// cumulative `{"device","upto","status"}`.
    #[arg(long, value_enum, default_value_t = ReceiptStyle::Shared)]
    receipt_style: ReceiptStyle,
    /// `coalesced`: the least milliseconds between the starts of a device's two receipt
    /// requests, as the clients keep by default (pere.js, the Rust `Subscriber`, pere-sub); 0
    /// sends the next request as soon as the last one is answered; at most 60000, as theirs.
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(..=60_000))]
    receipt_spacing: u64,
    /// Unpaced runs: pause publishing while more than this many events per subscriber are
    /// published but not yet delivered (receipts: not yet acknowledged); 0 never pauses
    /// [unpaced saturate: 256; unpaced receipts: 8].
    #[arg(long)]
    max_ahead: Option<u64>,
    /// Spread subscribers over this many source addresses 127.0.0.1, .2, … (about 28,000
    /// connections fit on one).
    #[arg(long, default_value_t = 1)]
    source_addrs: usize,
    /// Subscribers connecting at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Seconds to wait for every subscriber to be answered.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// Seconds between the last subscriber answered and the memory reading.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Seconds to wait for deliveries and receipts after publishing ends.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Stop after this many seconds whatever happens [connect + settle + publishing + 2 ×
    /// drain + 30].
    #[arg(long)]
    timeout: Option<f64>,
    /// A server process to measure (repeatable; child processes are included, so nginx's
    /// master PID covers its workers): memory per connection and CPU per delivery.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// A label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Channel and device names start with this (default: b, the process id, x).
    #[arg(long)]
    prefix: Option<String>,
    /// Extra bytes of padding in each event body.
    #[arg(long, default_value_t = 0)]
    pad: usize,
    /// Events per push request: more than 1 publishes NDJSON batches (`Content-Type:
    /// application/x-ndjson`, one event per line) of a publisher's next events of one channel.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Generator threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Reconnections allowed per subscriber (servers may close slow feeds).
    #[arg(long, default_value_t = 50)]
    max_reconnects: u32,
    /// A token (from `pere-server token`) sent as `Authorization: Bearer` with every request;
    /// no request then names a device, so every connection speaks as the token's device.
    #[arg(long, env = "PERE_TOKEN", hide_env_values = true, value_name = "JWT")]
    token: Option<String>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(short, long)]
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line, never a backtrace (anyhow's `Debug` adds one under `RUST_BACKTRACE`).
            eprintln!("pere-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A usage error in one line, with exit status 2 as clap gives it; `--help` and
        // `--version` print as usual.
        Err(err) if err.use_stderr() => {
            eprintln!(
                "{}",
                pere_cli::usage_line("pere-bench", &err.render().to_string())
            );
            std::process::exit(2);
        }
        Err(err) => err.exit(),
    };
    let (scenario, args) = match cli.command {
        Command::Idle(a) => (Scenario::Idle, a),
        Command::Fanout(a) => (Scenario::Fanout, a),
        Command::Saturate(a) => (Scenario::Saturate, a),
        Command::Receipts(a) => (Scenario::Receipts, a),
        Command::Push(a) => (Scenario::Push, a),
        Command::IdleH2(a) => {
            let target = parse_target(&a.url)?;
            return print_bounded(a.timeout, h2::idle(target, &a));
        }
        Command::Witness(a) => {
            let target = parse_target(&a.url)?;
            return print_bounded(a.timeout, witness::run(target, &a));
        }
        Command::Probe { server_pids } => {
            let sample = Probe::new(server_pids)
                .sample()
                .context("no process to measure")?;
            if sample.processes == 0 {
                bail!("none of the given processes is alive");
            }
            println!("{}", sample.json());
            return Ok(());
        }
        Command::Wake { wakes, quiet_us } => {
            println!("{}", wake::measure(wakes, Duration::from_micros(quiet_us)));
            return Ok(());
        }
        Command::Summarize { dir, baseline } => {
            print!("{}", summarize::summarize(&dir, &baseline)?);
            return Ok(());
        }
    };
    let (json, threads) = (args.json, args.threads.max(1));
    let (plan, timeout) = plan(scenario, args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async { tokio::time::timeout(timeout, load::run(plan)).await });
    // Tasks still holding sockets are not worth waiting for.
    runtime.shutdown_background();
    let report = match outcome {
        Ok(report) => report?,
        Err(_) => {
            eprintln!(
                "pere-bench: stopped by the overall timeout ({} s)",
                timeout.as_secs_f64()
            );
            std::process::exit(2);
        }
    };
    if json {
        println!("{report}");
    } else {
        print!("{}", report::human(&report));
    }
    Ok(())
}

/// Resolves a scenario's defaults into a plan and the overall timeout.
fn plan(scenario: Scenario, a: LoadArgs) -> anyhow::Result<(Plan, Duration)> {
    let target = parse_target(&a.url)?;
    let publish_target = a.publish_url.as_deref().map_or(Ok(target), parse_target)?;
    let subscribers = a
        .subscribers
        .unwrap_or(if scenario == Scenario::Push { 0 } else { 1000 });
    let rate = a.rate.unwrap_or(match scenario {
        Scenario::Fanout => 100.0,
        Scenario::Receipts => 10.0,
        _ => 0.0,
    });
    if !rate.is_finite() || rate < 0.0 {
        bail!("--rate must be a number of events per second, 0 for unpaced");
    }
    let rate = (rate > 0.0).then_some(rate);
    let events = a.events;
    let duration = match (a.duration, events, rate) {
        (Some(d), _, _) => d,
        (None, Some(m), Some(r)) => m as f64 / r,
        (None, _, _) if scenario == Scenario::Idle => 5.0,
        _ => 10.0,
    };
    if !duration.is_finite() || duration < 0.0 {
        bail!("--duration must be a number of seconds");
    }
    let events = match (events, rate) {
        (Some(m), _) => Some(m),
        (None, Some(r)) => Some((r * duration).round() as u64),
        (None, None) => None,
    };
    let publishers = a
        .publishers
        .unwrap_or(if scenario == Scenario::Push { 50 } else { 4 });
    let max_ahead = match a.max_ahead {
        Some(0) => None,
        Some(n) => Some(n),
        None if scenario == Scenario::Saturate && rate.is_none() => Some(256),
        None if scenario == Scenario::Receipts && rate.is_none() => Some(8),
        None => None,
    };
    let sources = if a.source_addrs > 1 {
        if !target.ip().is_ipv4() {
            bail!("--source-addrs needs an IPv4 target");
        }
        if a.source_addrs > 254 {
            bail!("--source-addrs is at most 254");
        }
        (1..=a.source_addrs as u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect()
    } else {
        Vec::new()
    };
    let secs = |s: f64, what: &str| {
        if s.is_finite() && s >= 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(anyhow::anyhow!("--{what} must be a number of seconds"))
        }
    };
    let plan = Plan {
        scenario,
        label: a.label,
        target,
        publish_target,
        subscribers,
        channels: a.channels.max(1),
        events_per_channel: events,
        rate,
        duration: secs(duration, "duration")?,
        publishers,
        receipts: scenario == Scenario::Receipts,
        receipt_conns: a.receipt_conns,
        receipt_style: a.receipt_style,
        receipt_spacing: Duration::from_millis(a.receipt_spacing),
        max_ahead,
        sources,
        connect_concurrency: a.connect_concurrency,
        connect_timeout: secs(a.connect_timeout, "connect-timeout")?,
        settle: secs(a.settle, "settle")?,
        drain: secs(a.drain, "drain")?,
        prefix: a
            .prefix
            .unwrap_or_else(|| format!("b{}x", std::process::id())),
        pad: a.pad,
        batch: a.batch.max(1),
        progress: !a.quiet,
        probe: Probe::new(a.server_pids),
        max_reconnects: a.max_reconnects,
        authorization: match a.token.as_deref().map(str::trim) {
            Some(token) if token.is_empty() || token.contains(['\r', '\n']) => {
                bail!("--token: not a token")
            }
            Some(token) => Some(format!("Bearer {token}")),
            None => None,
        },
    };
    if !plan
        .prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    {
        bail!("--prefix may hold only A-Za-z0-9_.:-");
    }
    let publishing = match (events, rate) {
        (Some(m), Some(r)) => (m as f64 / r).max(duration),
        _ => duration,
    };
    let auto = a.connect_timeout + a.settle + publishing + 2.0 * a.drain + 30.0;
    let timeout = secs(a.timeout.unwrap_or(auto), "timeout")?;
    Ok((plan, timeout))
}

/// `http://127.0.0.1:4567/` → its address; only addresses of this machine are accepted, since
/// this is a load generator.
/// Runs a scenario of its own on two worker threads, stopped after `timeout` seconds (exit
/// status 2), and prints its report.
fn print_bounded<T: std::fmt::Display>(
    timeout: f64,
    scenario: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs_f64(timeout), scenario).await });
    runtime.shutdown_background();
    let Ok(report) = report else {
        eprintln!("pere-bench: stopped by the overall timeout ({timeout} s)");
        std::process::exit(2);
    };
    println!("{}", report?);
    Ok(())
}

fn parse_target(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.starts_with("https://") || url.starts_with("https://") {
        bail!("https is not supported: give http://HOST:PORT");
    }
    let authority = rest.split('/').next().unwrap_or(rest);
    let addresses: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .with_context(|| format!("`{url}` is not http://HOST:PORT"))?
        .collect();
    let Some(address) = addresses
        .iter()
        .find(|a| a.ip().is_ipv4())
        .or(addresses.first())
        .copied()
    else {
        bail!("`{url}` resolves to no address");
    };
    if !address.ip().is_loopback() {
        bail!("{address} is not a loopback address: pere-bench only loads servers on this machine");
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> LoadArgs {
        #[derive(Debug, Parser)]
        struct Wrap {
            #[command(flatten)]
            args: LoadArgs,
        }
        let mut argv = vec!["pere-bench"];
        argv.extend_from_slice(extra);
        Wrap::parse_from(argv).args
    }

    #[test]
    fn targets_must_be_local() {
        assert_eq!(
            parse_target("http://127.0.0.1:4567/").unwrap(),
            "127.0.0.1:4567".parse().unwrap()
        );
        assert_eq!(
            parse_target("127.0.0.9:80").unwrap(),
            "127.0.0.9:80".parse().unwrap()
        );
        assert!(parse_target("http://[::1]:80").unwrap().ip().is_loopback());
        assert!(parse_target("http://10.0.0.1:80").is_err());
        assert!(parse_target("https://127.0.0.1:443").is_err());
        assert!(parse_target("nonsense").is_err());
    }

    #[test]
    fn scenarios_fill_their_defaults() {
        let (fanout, _) = plan(Scenario::Fanout, args(&[])).unwrap();
        assert_eq!(
            (fanout.subscribers, fanout.rate, fanout.events_per_channel),
            (1000, Some(100.0), Some(1000))
        );
        let (paced, timeout) = plan(Scenario::Fanout, args(&["-r", "10", "-m", "100"])).unwrap();
        assert_eq!(paced.duration, Duration::from_secs(10));
        assert_eq!(timeout, Duration::from_secs(60 + 1 + 10 + 20 + 30));
        let (saturate, _) = plan(Scenario::Saturate, args(&[])).unwrap();
        assert_eq!(
            (
                saturate.rate,
                saturate.events_per_channel,
                saturate.max_ahead
            ),
            (None, None, Some(256))
        );
        let (push, _) = plan(Scenario::Push, args(&["--source-addrs", "3"])).unwrap();
        assert_eq!(
            (push.subscribers, push.publishers, push.sources.len()),
            (0, 50, 3)
        );
        assert_eq!(push.sources[2], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        let (receipts, _) = plan(Scenario::Receipts, args(&[])).unwrap();
        assert!(receipts.receipts && receipts.max_ahead.is_none());
        assert_eq!(receipts.receipt_style, ReceiptStyle::Shared);
        let (devices, _) = plan(
            Scenario::Receipts,
            args(&["--receipt-style", "coalesced", "-r", "100"]),
        )
        .unwrap();
        assert!(devices.receipt_style.per_device());
        let (receipts, _) = plan(Scenario::Receipts, args(&["-r", "0"])).unwrap();
        assert_eq!((receipts.rate, receipts.max_ahead), (None, Some(8)));
        let (receipts, _) =
            plan(Scenario::Receipts, args(&["-r", "0", "--max-ahead", "0"])).unwrap();
        assert!(receipts.max_ahead.is_none());
        assert!(plan(Scenario::Idle, args(&["--prefix", "a b"])).is_err());
        assert!(plan(Scenario::Idle, args(&["--rate=-1"])).is_err());
    }
}
