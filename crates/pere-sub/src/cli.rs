//! The command line: arguments, the server address and the default device id.

use clap::Parser;

/// Listen to a PERE channel, print every event and send a return receipt for each one.
///
/// Reproduces the original `subscriber.rb`: for each event it prints `RX EVT> id: <id>, data: <data>`,
/// posts the receipt (form `status=rx+ok`, headers `device` and `last_event_id`) and prints
/// `TX ACK> id: <id>, status: <status>`. It keeps one receipt request in flight: receipts of
/// events that arrive meanwhile go together in the next request (one cumulative receipt, or a
/// batch), so a burst of events costs a few requests, not one each (`--no-coalesce`: one each);
/// coalesced requests start at least `--receipt-spacing` apart. After a dropped connection it reconnects with
/// `Last-Event-ID`, after the server's `retry:` delay (doubling, up to 30 s, while the server stays
/// out of reach), and never prints or acknowledges an event twice.
///
/// Ctrl-C stops it with a summary on stderr, `SUMMARY> received: <n>, acknowledged: <n>`.
///
/// Exit status: 0 after `--count` events or on Ctrl-C; 1 when the server cannot be reached
/// `--retries N` times in a row (by default it waits for the server as long as it takes); 2 when the server refuses the subscription (a 4xx answer), when
/// its TLS certificate is not trusted (see `--ca`), or on a usage error.
#[derive(Debug, Parser)]
#[command(name = "pere-sub", version)]
pub struct Cli {
    /// The server: `host:port`, `http://host:port` or `https://host:port`.
    pub server: String,

    /// The channel to listen on, e.g. `CHANNEL_1`.
    pub channel: String,

    /// A token (from `pere-server token`) sent as `Authorization: Bearer` with every request; the
    /// device it speaks for is the default device id.
    #[arg(long, env = "PERE_TOKEN", hide_env_values = true, value_name = "JWT")]
    pub token: Option<String>,

    /// For an `https://` server whose certificate a private CA signed: that CA's certificate
    /// (PEM), trusted instead of the system's CAs.
    #[arg(long, env = "PERE_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,

    /// This subscriber's device id [default: the token's, else the one kept in
    /// `$XDG_CONFIG_HOME/pere/device-id` (or `~/.config/pere/device-id`), made on first use:
    /// `H0039` followed by 9 random digits]. The same id on every run keeps this subscriber one
    /// recipient of the channel.
    #[arg(env = "PERE_DEVICE")]
    pub device: Option<String>,

    /// The status text sent in each receipt.
    #[arg(long, value_name = "TEXT", default_value = "rx ok")]
    pub status: String,

    /// Exit (status 0) once N new events have been received and acknowledged.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Start after this event id: sent as `Last-Event-ID` on the first connection; events up to it
    /// count as already seen.
    #[arg(long, value_name = "ID", value_parser = parse_event_id)]
    pub last_event_id: Option<String>,

    /// Receive only: send no receipts (and print no `TX ACK>` lines).
    #[arg(long)]
    pub no_ack: bool,

    /// Send each receipt in a request of its own, in the original form, as `subscriber.rb` did
    /// (by default the receipts of events that arrive while one request is in flight go
    /// together in the next one).
    #[arg(long)]
    pub no_coalesce: bool,

    /// The least time, in milliseconds, between the starts of two coalesced receipt requests:
    /// while events come faster, each request acknowledges what came since the last one; a
    /// receipt after a quiet spell leaves at once (0: send the next request as soon as the last
    /// one is answered; at most 60000).
    #[arg(long, value_name = "MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(..=60_000))]
    pub receipt_spacing: u64,

    /// Print one JSON line per event instead of the text lines (no banner):
    /// `{"id","event","data","receipt"}`, where `receipt` is the server's receipt or null.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,

    /// Print only the `RX EVT>` lines and errors: no banner, no `TX ACK>` lines, no reconnection
    /// notices.
    #[arg(long, short)]
    pub quiet: bool,

    /// Give up (exit status 1) after N failed connection attempts in a row [default: 0, never:
    /// wait for the server to come back, as the library's `Subscriber` and the page do].
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,

    /// Reconnect when nothing, not even a keep-alive comment, arrives for SECS seconds
    /// (the server sends one every 15 s; 0: wait forever).
    #[arg(long, value_name = "SECS", default_value_t = 45)]
    pub idle_timeout: u64,
}

/// Where the device id came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSource {
    /// The argument, `PERE_DEVICE`, or the token's `sub`.
    Given,
    /// The file that keeps this user's default id.
    Kept(std::path::PathBuf),
    /// A new id for this run only: the file could not be used (the message says why).
    ThisRun(Option<String>),
}

impl Cli {
    /// The device id to use: the one given (argument or `PERE_DEVICE`), the token's, or the one
    /// kept for this user (made on first use); a new `H0039…` id for this run when none can be kept.
    pub fn device(&self) -> (String, DeviceSource) {
        if let Some(given) = self
            .device
            .clone()
            .or_else(|| self.token.as_deref().and_then(pere_client::token::subject))
        {
            return (given, DeviceSource::Given);
        }
        let fresh = || random_device("H0039", &mut rand::thread_rng());
        let Some(file) = pere_client::device::default_file() else {
            return (fresh(), DeviceSource::ThisRun(None));
        };
        match pere_client::device::kept(&file, fresh) {
            Ok(id) => (id, DeviceSource::Kept(file)),
            Err(why) => (fresh(), DeviceSource::ThisRun(Some(why))),
        }
    }
}

pub use pere_client::{base_url, random_device};

/// Accepts an event id that can travel in an HTTP header.
fn parse_event_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_control()) {
        return Err("an event id is a non-empty text without control characters".into());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_original_subscriber() {
        let cli = Cli::try_parse_from(["pere-sub", "localhost:4567", "CHANNEL_1"]).unwrap();
        assert_eq!(cli.status, "rx ok");
        assert_eq!(
            cli.retries, 0,
            "a subscriber waits for the server, as the library's does"
        );
        // Without a device the id comes from the user's config directory: the end-to-end tests
        // check that (with a temporary one), never here in the real home.
        assert!(cli.count.is_none() && !cli.no_ack && !cli.json);
        assert_eq!(cli.receipt_spacing, 100);
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "pere-sub",
            "h:1",
            "C",
            "H1",
            "--status",
            "done",
            "--count",
            "3",
            "--last-event-id",
            "7",
            "--no-ack",
            "--no-coalesce",
            "--json",
            "--retries",
            "0",
            "--ca",
            "ca.pem",
            "--receipt-spacing",
            "250",
        ])
        .unwrap();
        assert_eq!(cli.receipt_spacing, 250);
        assert_eq!(cli.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(cli.device(), ("H1".to_owned(), DeviceSource::Given));
        assert_eq!(cli.count, Some(3));
        assert_eq!(cli.last_event_id.as_deref(), Some("7"));
        assert!(cli.no_coalesce);
        assert!(Cli::try_parse_from(["pere-sub", "h:1", "C", "--count", "0"]).is_err());
        let spacing = ["pere-sub", "h:1", "C", "--receipt-spacing", "60001"];
        assert!(Cli::try_parse_from(spacing).is_err());
        assert!(Cli::try_parse_from(["pere-sub", "h:1", "C", "--json", "--quiet"]).is_err());
        assert!(Cli::try_parse_from(["pere-sub", "h:1", "C", "--last-event-id", "1\n2"]).is_err());
    }
}
