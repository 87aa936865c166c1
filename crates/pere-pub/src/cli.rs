//! The command line: arguments, the server address and the default device id.

use clap::Parser;

use crate::interval::Interval;

/// Publish events on a PERE channel, like the original `publisher.rb`.
///
/// Each event is the original's JSON, `{"channel","device","pub_id","time","data"}` with `pub_id`
/// this publisher's own counter from 1 (not the server's id, which every line shows as
/// `Event-Id`) and `data` 15 to 32 random base-36 characters, POSTed to
/// `/push/:channel`. Prints `PUSH EVT> event: <json>, Event-Id: <id>` for each event the server
/// accepts, with the id the server gave it. A failed
/// push prints `PUSH FAILED. event: <json> reason: <reason>` on stderr, waits (`--retry-delay`) and
/// sends the same event again, with the same `Idempotency-Key`: a retry never stores it twice.
///
/// Ctrl-C stops it with a summary on stderr: `SUMMARY> sent: <n>`, plus `acknowledged: <n>` (events
/// whose `--wait` was satisfied) and `receipts: <n>` (with `--follow`).
///
/// Exit status: 0 after `--count` events (or at the end of stdin with `--data -`) or on Ctrl-C; 1 after
/// `--retries` failed attempts at one event, or when `--follow` failed; 2 when the server refuses
/// an event for good (a 4xx answer), when its TLS certificate is not trusted (see `--ca`), or on a
/// usage error.
#[derive(Debug, Parser)]
#[command(name = "pere-pub", version)]
pub struct Cli {
    /// The server: `host:port`, `http://host:port` or `https://host:port`.
    pub server: String,

    /// The channel to publish on, e.g. `CHANNEL_1`.
    pub channel: String,

    /// A token (from `pere-server token`) sent as `Authorization: Bearer` with every request; the
    /// device it speaks for is the default device id.
    #[arg(long, env = "PERE_TOKEN", hide_env_values = true, value_name = "JWT")]
    pub token: Option<String>,

    /// For an `https://` server whose certificate a private CA signed: that CA's certificate
    /// (PEM), trusted instead of the system's CAs.
    #[arg(long, env = "PERE_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,

    /// This publisher's device id [default: `P0039` followed by 9 random digits].
    pub device: Option<String>,

    /// Seconds between pushes: a number (`0.2`) or a range to pick from at random each time
    /// (`10-20`); 0 pushes as fast as the server answers [default: 10-20; 0 with `--data -`].
    #[arg(long, value_name = "SECS|MIN-MAX")]
    pub interval: Option<Interval>,

    /// Exit (status 0) once N events have been accepted by the server [default: never].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Publish this text instead of the random JSON events (sent as `application/json` when it is
    /// JSON, else as `text/plain`). `-` reads stdin: each line is one event, until end of input.
    #[arg(long, value_name = "TEXT")]
    pub data: Option<String>,

    /// The SSE event type of the events (sent in the `event` header).
    #[arg(long = "event", value_name = "TYPE")]
    pub event_type: Option<String>,

    /// Print one JSON line per accepted event instead of the text lines (no banner): the server's
    /// answer plus the body sent, `{"channel","id","time","body"}`.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,

    /// Print nothing but errors (and, with `--follow`, the receipts).
    #[arg(long, short)]
    pub quiet: bool,

    /// Give up (exit status 1) after N failed attempts at one event [default: never, like the
    /// original; 0 also means never].
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,

    /// Seconds to wait after a failed push before trying it again, as for `--interval`.
    #[arg(long, value_name = "SECS|MIN-MAX", default_value = "1-10")]
    pub retry_delay: Interval,

    /// Send N events per request (a batch: one NDJSON request, stored all or none with
    /// consecutive ids; needs a PERE server with batch publishing). With `--data -`, a batch
    /// holds the lines already written, up to N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "wait")]
    pub batch: Option<u64>,

    /// Have the server answer each push only once its receipts are in (`all` recipients, or at
    /// least N devices) or `--wait-timeout` passed; each line then says how many acknowledged.
    #[arg(long, value_name = "all|N", value_parser = parse_wait)]
    pub wait: Option<Wait>,

    /// Seconds `--wait` waits at most (the server caps it with its `--max-wait`).
    #[arg(long, value_name = "SECS", default_value_t = 5, requires = "wait")]
    pub wait_timeout: u64,

    /// Also print the channel's return receipts as they arrive (from `GET /receipts/:channel`):
    /// `RECEIPT> id: <id>, device: <device>, status: <status>`. The receipts go on after
    /// publishing ends, until interrupted.
    #[arg(long)]
    pub follow: bool,
}

/// The interval when none is given: the original's 10 to 20 s between random events; none
/// between stdin lines, which come at their own pace.
const DEFAULT_INTERVAL: Interval = Interval::secs(10, 20);

impl Cli {
    /// The device id to use: the one given, or a new `P0039…` id.
    pub fn device(&self) -> String {
        self.device
            .clone()
            .or_else(|| self.token.as_deref().and_then(pere_client::token::subject))
            .unwrap_or_else(|| random_device("P0039", &mut rand::thread_rng()))
    }

    /// True when the events are read from stdin.
    pub fn reads_stdin(&self) -> bool {
        self.data.as_deref() == Some("-")
    }

    /// The wait between pushes.
    pub fn interval(&self) -> Interval {
        match self.interval {
            Some(interval) => interval,
            None if self.reads_stdin() => Interval::ZERO,
            None => DEFAULT_INTERVAL,
        }
    }

    /// The attempts allowed per event; `None` for no limit.
    pub fn attempts(&self) -> Option<u32> {
        self.retries.filter(|&n| n > 0)
    }
}

use pere_client::Wait;
pub use pere_client::{base_url, endpoint, random_device};

/// `all`, or a number of devices (at least 1).
fn parse_wait(s: &str) -> Result<Wait, String> {
    match s {
        "all" => Ok(Wait::All),
        n => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Wait::AtLeast(n)),
            _ => Err(format!("{s:?}: `all` or a number of devices")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["pere-pub"].iter().chain(args))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_original_publisher() {
        let cli = parse(&["localhost:4567", "CHANNEL_1"]).unwrap();
        assert_eq!(cli.interval(), Interval::secs(10, 20));
        assert_eq!(cli.retry_delay, Interval::secs(1, 10));
        assert_eq!(cli.attempts(), None);
        assert!(
            cli.count.is_none() && cli.data.is_none() && !cli.follow && !cli.json && !cli.quiet
        );
        let device = cli.device();
        assert_eq!(device.len(), 14);
        assert!(device.starts_with("P0039") && device[5..].bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn flags_parse() {
        let cli = parse(&[
            "h:1",
            "C",
            "P1",
            "--interval",
            "0.2",
            "--count",
            "5",
            "--data",
            "-",
            "--event",
            "tick",
            "--json",
            "--retries",
            "3",
            "--retry-delay",
            "0",
            "--follow",
        ])
        .unwrap();
        assert_eq!(cli.device(), "P1");
        assert_eq!(cli.interval(), "0.2".parse().unwrap());
        assert_eq!(cli.count, Some(5));
        assert!(cli.reads_stdin());
        assert_eq!(cli.event_type.as_deref(), Some("tick"));
        assert_eq!(cli.attempts(), Some(3));
        assert!(cli.retry_delay.is_zero());
        assert_eq!(
            parse(&["h:1", "C", "--data", "-"]).unwrap().interval(),
            Interval::ZERO
        );
        assert_eq!(
            parse(&["h:1", "C", "--retries", "0"]).unwrap().attempts(),
            None
        );
        assert!(parse(&["h:1", "C", "--count", "0"]).is_err());
        assert!(parse(&["h:1", "C", "--interval", "20-10"]).is_err());
        assert!(parse(&["h:1", "C", "--json", "--quiet"]).is_err());
        assert_eq!(
            parse(&["h:1", "C", "--batch", "100"]).unwrap().batch,
            Some(100)
        );
        assert!(parse(&["h:1", "C", "--batch", "0"]).is_err());
        assert_eq!(
            parse(&["h:1", "C", "--wait", "all"]).unwrap().wait,
            Some(Wait::All)
        );
        assert_eq!(
            parse(&["h:1", "C", "--wait", "2", "--wait-timeout", "9"])
                .unwrap()
                .wait,
            Some(Wait::AtLeast(2))
        );
        assert!(parse(&["h:1", "C", "--wait", "0"]).is_err());
        assert!(parse(&["h:1", "C", "--wait", "all", "--batch", "2"]).is_err());
    }
}
