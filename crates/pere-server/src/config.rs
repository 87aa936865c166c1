//! The server's settings: the command line (`pere-server --help`), the environment and the
//! configuration file, and what they turn into.
//!
//! Each setting is declared once, as a field of [`Config`] with its long flag and its `PERE_…`
//! variable; the file takes the same names (see [`Config::load`]), so a new flag needs nothing
//! more than its field.

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::ValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use pere_core::store::{RedisClientCert, RedisTls};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject as _};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth::{parse_host_name, KeySettings, Mode, Verifier, MIN_SECRET_LEN};

/// Where events, receipts and device records are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// Embedded SQLite in --data-dir: durable, no setup.
    Sqlite,
    /// In process memory: fast, gone on restart. For tests and demos.
    Memory,
    /// A Redis that several nodes share: one server (`redis://[:password@]host:port/db`, or
    /// `rediss://` over TLS), a Redis Cluster (`redis+cluster://host:port[,host:port…]`,
    /// `rediss+cluster://`) or the primary Sentinel names
    /// (`redis+sentinel://host:port[,host:port…]/PRIMARY[/db]`); the URL is kept as a
    /// [`Secret`], since it may hold the password.
    Redis(Secret),
}

impl StoreKind {
    /// Whether this is Redis over TLS (`rediss://`, `rediss+cluster://`).
    pub fn is_redis_tls(&self) -> bool {
        matches!(self, StoreKind::Redis(url) if url.0.starts_with("rediss"))
    }
}

fn parse_store(text: &str) -> Result<StoreKind, String> {
    match text {
        "sqlite" => Ok(StoreKind::Sqlite),
        "memory" => Ok(StoreKind::Memory),
        url if [
            "redis://",
            "rediss://",
            "redis+unix://",
            "redis+cluster://",
            "rediss+cluster://",
            "redis+sentinel://",
        ]
        .iter()
        .any(|scheme| url.starts_with(scheme)) =>
        {
            Ok(StoreKind::Redis(Secret(url.to_owned())))
        }
        other => {
            // A URL of another scheme may still carry a password: only its scheme is shown.
            let shown = match other.split_once("://") {
                Some((scheme, _)) => format!("{scheme}://…"),
                None => other.to_owned(),
            };
            Err(format!(
                "{shown:?} is not a store: the stores are sqlite (the default: durable, in \
                 --data-dir), memory (gone on restart), and redis://[:password@]host:port/db \
                 (several nodes on one Redis; rediss:// over TLS)"
            ))
        }
    }
}

/// What an acknowledged write survives (SQLite store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityLevel {
    /// Survives a crash of the server process (SQLite WAL, synchronous=NORMAL).
    Normal,
    /// Also survives power loss and OS crashes (synchronous=FULL: a disk sync per commit).
    Full,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// The original PERE's lines (`PUSH EVT> ...`) with a timestamp; coloured on a terminal.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// PERE: Push Events with Return-receipt Engine.
///
/// Publishers POST events to /push/CHANNEL; devices hold GET /feed/CHANNEL (Server-Sent Events)
/// and POST a return receipt per event to /feedback/CHANNEL; /admin/* shows who got what.
#[derive(Debug, Clone, Parser)]
#[command(name = "pere-server", version, about, long_about, after_help = SOURCES_HELP)]
pub struct Config {
    /// A TOML file of settings, named like the long flags (`max-connections = 5000`); the
    /// environment and the command line override it.
    #[arg(long = "config", value_name = "FILE", env = "PERE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on (use 0.0.0.0 to accept connections from other machines).
    #[arg(
        short = 'o',
        long = "host",
        default_value = "127.0.0.1",
        env = "PERE_HOST"
    )]
    pub host: IpAddr,

    /// Port to listen on; 0 picks a free port. The bound address is the first line printed.
    #[arg(short = 'p', long = "port", default_value_t = 4567, env = "PERE_PORT")]
    pub port: u16,

    /// Storage backend: sqlite (the default), memory, or a Redis that several nodes share (see
    /// --redis-prefix): `redis://[:password@]host:port/db` (`rediss://` over TLS), a Redis
    /// Cluster `redis+cluster://[:password@]host:port[,host:port…]` (`rediss+cluster://`), or
    /// the primary Sentinel names, `redis+sentinel://[:password@]host:port[,host:port…]/PRIMARY[/db]`.
    /// The environment's value is never shown, since the URL may hold a password.
    #[arg(long = "store", default_value = "sqlite", value_parser = parse_store, env = "PERE_STORE", hide_env_values = true)]
    pub store: StoreKind,

    /// Redis store: what every key starts with, so several deployments can share one Redis.
    #[arg(
        long = "redis-prefix",
        default_value = "pere",
        env = "PERE_REDIS_PREFIX"
    )]
    pub redis_prefix: String,

    /// Redis store: how long a node's registration of its open streams lives without a
    /// heartbeat (sent every third of it); a dead node's streams stop counting within it.
    #[arg(long = "redis-node-ttl", default_value = "15s", value_parser = parse_duration, env = "PERE_REDIS_NODE_TTL")]
    pub redis_node_ttl: Duration,

    /// Redis store: how many replicas must confirm a push or receipt (Redis's WAIT, at most 2 s)
    /// before it is answered 2xx; 0 waits for none. Without confirmation a failover may lose the
    /// last acknowledged writes. Not for a Redis Cluster.
    #[arg(
        long = "redis-wait-replicas",
        default_value_t = 0,
        env = "PERE_REDIS_WAIT_REPLICAS"
    )]
    pub redis_wait_replicas: usize,

    /// Redis over TLS (`rediss://`): the CA certificates (PEM) that sign the Redis server's
    /// certificate, trusted instead of the system's (a private CA).
    #[arg(long = "redis-ca", value_name = "FILE", value_parser = parse_certificates_file, env = "PERE_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,

    /// Redis over TLS: a client certificate chain (PEM) for a Redis that asks clients for one;
    /// needs --redis-key.
    #[arg(long = "redis-cert", value_name = "FILE", value_parser = parse_certificates_file, env = "PERE_REDIS_CERT")]
    pub redis_cert: Option<PathBuf>,

    /// Redis over TLS: the private key (PEM: PKCS#8, PKCS#1 or SEC1) of --redis-cert.
    #[arg(long = "redis-key", value_name = "FILE", value_parser = parse_private_key_file, env = "PERE_REDIS_KEY")]
    pub redis_key: Option<PathBuf>,

    /// Directory of the SQLite store (created if missing).
    #[arg(
        long = "data-dir",
        default_value = "./pere-data",
        env = "PERE_DATA_DIR"
    )]
    pub data_dir: PathBuf,

    /// What an acknowledged push or receipt survives (SQLite store).
    #[arg(
        long = "durability",
        value_enum,
        default_value = "normal",
        env = "PERE_DURABILITY"
    )]
    pub durability: DurabilityLevel,

    /// Largest accepted event body, in bytes (larger pushes get 413).
    #[arg(long = "max-body", default_value_t = 64 * 1024, env = "PERE_MAX_BODY")]
    pub max_body: usize,

    /// Most events one batch push (an NDJSON body) may carry, and most receipts one batch of
    /// receipts may carry (more get 413 batch_too_large) or one cumulative receipt records (the
    /// oldest, then "more": true); a batch's bytes are bounded by --max-body.
    #[arg(
        long = "max-batch-events",
        default_value_t = 1000,
        env = "PERE_MAX_BATCH_EVENTS"
    )]
    pub max_batch_events: usize,

    /// How long an Idempotency-Key of a push or receipt is remembered, e.g. 90s, 30m, 24h: a
    /// retry later than this is stored as new. Keys also go with their events when these are
    /// pruned; 0 keeps them exactly as long as their events.
    #[arg(long = "idempotency-window", default_value = "24h", value_parser = parse_duration, env = "PERE_IDEMPOTENCY_WINDOW")]
    pub idempotency_window: Duration,

    /// Events kept per channel for replay; older ones are pruned.
    #[arg(
        long = "retention-events",
        default_value_t = 10_000,
        env = "PERE_RETENTION_EVENTS"
    )]
    pub retention_events: usize,

    /// Longest time an event is kept for replay, e.g. 90s, 30m, 12h, 7d; 0 keeps events until
    /// --retention-events pushes them out.
    #[arg(long = "retention-age", default_value = "7d", value_parser = parse_duration, env = "PERE_RETENTION_AGE")]
    pub retention_age: Duration,

    /// Seconds between keep-alive comments on idle feeds.
    #[arg(long = "keep-alive", default_value_t = 15, env = "PERE_KEEP_ALIVE")]
    pub keep_alive_secs: u64,

    /// Reconnection delay suggested to clients (the SSE `retry:` field), in milliseconds.
    #[arg(long = "retry-ms", default_value_t = 3000, env = "PERE_RETRY_MS")]
    pub retry_ms: u64,

    /// Events queued for one subscriber before it counts as too slow and its stream is closed
    /// (it resumes with Last-Event-ID and loses nothing).
    #[arg(
        long = "subscriber-buffer",
        default_value_t = 1024,
        env = "PERE_SUBSCRIBER_BUFFER"
    )]
    pub subscriber_buffer: usize,

    /// Origins (such as `https://app.example`) whose web pages may use this server (CORS);
    /// repeat the flag or separate with commas. None by default: the subscriber page is served
    /// from the server itself. `*` lets any page read answers (answered as `*`, never as the
    /// page's origin, so without credentials).
    #[arg(
        long = "allow-origin",
        value_delimiter = ',',
        env = "PERE_ALLOW_ORIGIN"
    )]
    pub allow_origins: Vec<String>,

    /// Secret that signs tokens (HS256), at least 32 bytes; prefer the environment variable or
    /// --jwt-secret-file, which do not show in the process list.
    #[arg(long = "jwt-secret", env = "PERE_JWT_SECRET", hide_env_values = true, global = true, value_parser = parse_secret)]
    pub jwt_secret: Option<Secret>,

    /// File holding the token secret (HS256); trailing whitespace is ignored.
    #[arg(long = "jwt-secret-file", env = "PERE_JWT_SECRET_FILE", global = true, value_parser = parse_secret_file)]
    pub jwt_secret_file: Option<PathBuf>,

    /// Public key (PEM, RSA or EC P-256) that verifies tokens signed RS256 or ES256.
    #[arg(long = "jwt-public-key", env = "PERE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Tokens must carry this audience (`aud`).
    #[arg(long = "jwt-audience", env = "PERE_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Tokens must carry this issuer (`iss`).
    #[arg(long = "jwt-issuer", env = "PERE_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Without a token key, answer every client, not only this machine's (a trusted network:
    /// the original PERE's behaviour).
    #[arg(long = "open", env = "PERE_OPEN")]
    pub open: bool,

    /// With a token key, let clients without a token read feeds as anonymous listeners (no
    /// device: no receipts, no presence, no receipt or presence streams).
    #[arg(long = "anonymous-subscribe", env = "PERE_ANONYMOUS_SUBSCRIBE")]
    pub anonymous_subscribe: bool,

    /// Protected mode: another name by which this machine's own clients reach the server,
    /// besides localhost and the loopback addresses (a name in /etc/hosts, say); repeat the flag
    /// or separate with commas. A request addressed to any other name gets 421, since a page of
    /// another site can point its own name at this machine (DNS rebinding).
    #[arg(long = "allowed-host", value_name = "NAME", value_delimiter = ',', value_parser = parse_host_name, env = "PERE_ALLOWED_HOST")]
    pub allowed_hosts: Vec<String>,

    /// Do not log a line per push, feed and receipt (start, stop and errors are still logged).
    #[arg(short = 'q', long = "quiet", env = "PERE_QUIET")]
    pub quiet: bool,

    /// Log level (error, warn, info, debug, trace) or `tracing` directives such as
    /// `pere=debug,hyper=info`; without it, RUST_LOG, else info. Debug adds a line per request.
    #[arg(long = "log-level", env = "PERE_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// How log lines are written: the original's lines with a timestamp, or JSON.
    #[arg(
        long = "log-format",
        value_enum,
        default_value = "text",
        env = "PERE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    /// Redelivery: send an event again, with the same id, on the open stream of a recipient that
    /// has not acknowledged it within this time (e.g. 30s); 0 turns redelivery off.
    #[arg(long = "ack-timeout", default_value = "0", value_parser = parse_duration, env = "PERE_ACK_TIMEOUT")]
    pub ack_timeout: Duration,

    /// Redelivery: how many times one event is sent on one stream at most.
    #[arg(
        long = "max-deliveries",
        default_value_t = 5,
        env = "PERE_MAX_DELIVERIES"
    )]
    pub max_deliveries: u32,

    /// A recipient not seen for this long stops being expected to acknowledge new events.
    #[arg(long = "recipient-expiry", default_value = "7d", value_parser = parse_duration, env = "PERE_RECIPIENT_EXPIRY")]
    pub recipient_expiry: Duration,

    /// The longest a push with `?wait=` may hold its answer.
    #[arg(long = "max-wait", default_value = "60s", value_parser = parse_duration, env = "PERE_MAX_WAIT")]
    pub max_wait: Duration,

    /// POST each event's receipt summary to this URL (http://) once every expected recipient
    /// acknowledged it, or once --receipt-timeout passed; retried with backoff.
    #[arg(long = "receipt-webhook", env = "PERE_RECEIPT_WEBHOOK")]
    pub receipt_webhook: Option<String>,

    /// How long after publishing an event the webhook reports it as timed out if it is not fully
    /// acknowledged by then.
    #[arg(long = "receipt-timeout", default_value = "60s", value_parser = parse_duration, env = "PERE_RECEIPT_TIMEOUT")]
    pub receipt_timeout: Duration,

    /// On SIGTERM or Ctrl-C, keep serving this long with /readyz answering 503 (e.g. 5s), so a
    /// load balancer stops sending traffic before the listener closes; a second signal ends it.
    #[arg(long = "shutdown-grace", default_value = "0", value_parser = parse_duration, env = "PERE_SHUTDOWN_GRACE")]
    pub shutdown_grace: Duration,

    /// Also serve GET /metrics on this address (e.g. 127.0.0.1:9464), without a token, for a
    /// scraper on a private network; /metrics on the main port stays (admin token when tokens
    /// are on).
    #[arg(long = "metrics-addr", env = "PERE_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Seconds to wait for open requests to finish on shutdown before closing them.
    #[arg(
        long = "shutdown-timeout",
        default_value_t = 5,
        env = "PERE_SHUTDOWN_TIMEOUT"
    )]
    pub shutdown_timeout_secs: u64,

    /// Connections held at once; 0: the process's open-file limit less 64 for the store and
    /// the log. Past it, new connections wait in the kernel's queue until one closes.
    #[arg(
        long = "max-connections",
        default_value_t = 0,
        env = "PERE_MAX_CONNECTIONS"
    )]
    pub max_connections: usize,

    /// Connections kept for short requests (pushes, receipts, /health): streams (feeds,
    /// receipt and presence streams) may take all connections but these; one more gets 503.
    #[arg(
        long = "connection-reserve",
        default_value_t = 256,
        env = "PERE_CONNECTION_RESERVE"
    )]
    pub connection_reserve: usize,

    /// Connections from one address (an IPv6 /64) that may be slow at once: still without a whole
    /// first request a second after connecting. One more is closed then, and while the address
    /// holds that many, its new connections are closed at once, so one client cannot take the
    /// reserve kept for short requests. 0: no cap.
    #[arg(
        long = "max-slow-per-address",
        default_value_t = 64,
        env = "PERE_MAX_SLOW_PER_ADDRESS"
    )]
    pub max_slow_per_address: usize,

    /// Longest time a client may take to send a request's head (the first from the moment it
    /// connects, the next ones from the end of the answer before), e.g. 30s; past it, the
    /// connection is closed.
    #[arg(long = "header-timeout", default_value = "30s", value_parser = parse_duration, env = "PERE_HEADER_TIMEOUT")]
    pub header_timeout: Duration,

    /// The header timeout of a new connection while more than half of --connection-reserve are
    /// connections still waiting for their first request's head, e.g. 5s.
    #[arg(long = "busy-header-timeout", default_value = "5s", value_parser = parse_duration, env = "PERE_BUSY_HEADER_TIMEOUT")]
    pub busy_header_timeout: Duration,

    /// Streams one device may hold open at once (across channels); one more gets 429.
    #[arg(
        long = "max-streams-per-device",
        default_value_t = 16,
        env = "PERE_MAX_STREAMS_PER_DEVICE"
    )]
    pub max_streams_per_device: usize,

    /// How long a channel nobody uses (no feed, follower or held push) stays in memory; then it
    /// is unloaded, and the store forgets what it kept in memory for it.
    #[arg(long = "idle-channel", default_value = "60s", value_parser = parse_duration, env = "PERE_IDLE_CHANNEL")]
    pub idle_channel: Duration,

    /// Threads that serve connections and run the engine; 0, the default, starts one per core.
    /// Fewer cost less CPU per request on cores the server shares with other work (a second
    /// thread pays for its wake-ups); more serve more at once.
    #[arg(long = "workers", default_value_t = 0, value_parser = parse_workers, env = "PERE_WORKERS")]
    pub workers: usize,

    /// Bytes of recent events kept in memory across all channels (SQLite store), so feeds that
    /// resume from near the head read no disk; past it, the least recently used go.
    #[arg(long = "recent-cache-bytes", default_value_t = 64 * 1024 * 1024, env = "PERE_RECENT_CACHE_BYTES")]
    pub recent_cache_bytes: usize,

    /// Device records kept in memory (SQLite store); past it, the least recently changed ones
    /// already saved are dropped and read from disk when needed.
    #[arg(
        long = "device-records",
        default_value_t = 100_000,
        env = "PERE_DEVICE_RECORDS"
    )]
    pub device_records: usize,

    /// Longest time a client may take to send a request body (e.g. 30s); past it, 408.
    #[arg(long = "body-timeout", default_value = "30s", value_parser = parse_duration, env = "PERE_BODY_TIMEOUT")]
    pub body_timeout: Duration,

    /// Certificate chain (PEM) to serve HTTPS with; needs --tls-key. HTTP/2 and HTTP/1.1 are
    /// offered by ALPN; without it, plain HTTP/1.1 and HTTP/2 (prior knowledge) on the port.
    #[arg(long = "tls-cert", value_name = "FILE", env = "PERE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long = "tls-key", value_name = "FILE", env = "PERE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Requests and streams one HTTP/2 connection may have open at once (HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS); one more is refused by the protocol and retried by the
    /// client. Every stream also counts against the server's stream caps.
    #[arg(
        long = "max-streams-per-connection",
        default_value_t = 100,
        env = "PERE_MAX_STREAMS_PER_CONNECTION"
    )]
    pub max_streams_per_connection: u32,

    /// Something to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `pere-server` can do besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Mint a token with the configured secret (or --jwt-private-key) and print it.
    Token(TokenArgs),
    /// Check the SQLite store offline, with no server running on it: SQLite's full integrity
    /// check, then every event read and verified against its checksum. Prints the damaged
    /// events of each channel, one line per channel. Exit status: 0 sound (or repaired), 1
    /// damage found, 2 the check could not run (a server holds the data directory, no store).
    Check(CheckArgs),
}

/// `pere-server check`: which store, and whether to mend it.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The data directory to check (default: the server's --data-dir).
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Mend what was found. In a file that is sound as a file, each damaged event's row is moved
    /// into the table damaged_events (byte for byte) and readers pass over its id; a file whose
    /// structure is damaged is rebuilt from every row that can be read, the damaged file kept
    /// beside it as `pere.db.damaged-<time>`. No server can start on the directory meanwhile.
    #[arg(long = "repair")]
    pub repair: bool,
}

/// `pere-server token`: what the token grants.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The device id the token speaks for (`sub`).
    #[arg(long = "sub")]
    pub sub: String,

    /// Channels it may publish to: names, or patterns ending in `*`; repeat or separate with commas.
    #[arg(long = "publish", value_delimiter = ',')]
    pub publish: Vec<String>,

    /// Channels it may subscribe to (feed, receipts, presence, acknowledgements).
    #[arg(long = "subscribe", value_delimiter = ',')]
    pub subscribe: Vec<String>,

    /// Admin views and recipient management.
    #[arg(long = "admin")]
    pub admin: bool,

    /// How long the token is valid: 90s, 30m, 12h, 7d.
    #[arg(long = "ttl", default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,

    /// Private key (PEM: RSA, or EC P-256 in PKCS#8) to sign RS256 or ES256 instead of the secret.
    #[arg(long = "jwt-private-key", env = "PERE_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
}

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A token secret, checked for its length where it is given (a short one is refused naming its
/// flag, variable or file, as any wrong value is).
fn parse_secret(text: &str) -> Result<Secret, String> {
    check_secret_len(text.len())?;
    Ok(Secret(text.to_owned()))
}

/// A file holding a token secret, read and checked where the setting is given.
fn parse_secret_file(text: &str) -> Result<PathBuf, String> {
    let secret = std::fs::read(text).map_err(|e| format!("cannot read it: {e}"))?;
    // As `auth` reads it: a file written by `echo` ends with a newline that is not the secret's.
    let len = secret
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    check_secret_len(len).map_err(|e| format!("the secret it holds is too short: {e}"))?;
    Ok(PathBuf::from(text))
}

fn check_secret_len(len: usize) -> Result<(), String> {
    if len < MIN_SECRET_LEN {
        return Err(format!(
            "a token secret is at least {MIN_SECRET_LEN} bytes, and this one has {len} \
             (`openssl rand -base64 48` makes one)"
        ));
    }
    Ok(())
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Memory => "memory",
            StoreKind::Redis(url) => {
                return f.write_str(&pere_core::store::redis::redacted(&url.0))
            }
        })
    }
}

impl Config {
    /// How long a stream may stay silent before a keep-alive (`--keep-alive`, at least a
    /// second): for feeds (through the hub), receipt and presence streams, and HTTP/2 pings.
    pub fn keep_alive_every(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.max(1))
    }

    /// Whether `origin` is listed by `--allow-origin` by name (`*` aside).
    pub fn origin_listed(&self, origin: &str) -> bool {
        origin != "*" && self.allow_origins.iter().any(|o| o == origin)
    }

    /// Whether `--allow-origin` lists `*`.
    pub fn any_origin(&self) -> bool {
        self.allow_origins.iter().any(|o| o == "*")
    }

    /// The token key settings.
    pub fn key_settings(&self) -> KeySettings<'_> {
        KeySettings {
            secret: self.jwt_secret.as_ref().map(|s| s.0.as_str()),
            secret_file: self.jwt_secret_file.as_deref(),
            public_key: self.jwt_public_key.as_deref(),
            audience: self.jwt_audience.as_deref(),
            issuer: self.jwt_issuer.as_deref(),
        }
    }

    /// The security mode the settings ask for.
    ///
    /// # Errors
    /// A one-line description of what is wrong with the key settings.
    pub fn mode(&self) -> Result<Mode, String> {
        Ok(match Verifier::from_settings(&self.key_settings())? {
            Some(verifier) => Mode::Tokens {
                verifier: Box::new(verifier),
                anonymous_subscribe: self.anonymous_subscribe,
            },
            None if self.anonymous_subscribe => {
                return Err("--anonymous-subscribe needs a token key".to_owned())
            }
            None if self.open => Mode::Open,
            None => Mode::Protected,
        })
    }

    /// The default settings, as with no flags (for tests and embedding).
    pub fn defaults() -> Self {
        Config::parse_from(["pere-server"])
    }

    /// The settings from the command line `args` (the program name first), the environment and
    /// the file named by `--config` (or `PERE_CONFIG`): a flag beats its variable, which beats
    /// the file, which beats the default.
    ///
    /// The file is TOML, one key per setting, named as the long flag (`max-connections = 5000`,
    /// `open = true`, `allow-origin = ["https://a.example"]`). Each value is checked where it
    /// comes from, so a wrong one is named with its source.
    ///
    /// # Errors
    /// [`LoadError::Usage`] for what clap answers itself (help, version, an unknown flag);
    /// otherwise one line naming the setting and its source: an invalid value, an unknown key
    /// or an unreadable file; [`LoadError::Conflict`] for settings that do not go together
    /// (Redis TLS settings without a `rediss://` store, replicas' confirmations without a Redis that
    /// can give them, a token secret and a public key).
    pub fn load<I, T>(args: I) -> Result<Config, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        // `--max-connections -5` is a wrong value to name, not an unknown flag `-5`.
        let command = Config::command().mut_args(|arg| {
            if arg.get_action().takes_values() {
                arg.allow_negative_numbers(true)
            } else {
                arg
            }
        });
        // Which flags the command line gives, and which variables the environment sets, read
        // as text: clap keeps the precedence, checking is done below, naming the source.
        let raw_command = command.clone().mut_args(|arg| {
            if arg.get_action().takes_values() {
                arg.value_parser(ValueParser::os_string())
            } else {
                // A flag's variable is checked below like any other.
                arg.env(None)
            }
        });
        let raw = match raw_command.try_get_matches_from(&args) {
            Ok(raw) => raw,
            // Help, version, unknown flags: clap's own answer, from the real command.
            Err(err) => {
                return Err(LoadError::Usage(
                    command.try_get_matches_from(&args).err().unwrap_or(err),
                ))
            }
        };
        let file = match raw.get_raw("config").and_then(|mut values| values.next()) {
            Some(path) => Some(SettingsFile::read(Path::new(path), &command)?),
            None => None,
        };
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let id = arg.get_id().as_str();
            let from_line = raw.value_source(id) == Some(ValueSource::CommandLine);
            let (source, values): (String, Vec<OsString>) = if from_line {
                let values = raw
                    .get_raw(id)
                    .map(|v| v.map(OsStr::to_owned).collect())
                    .unwrap_or_default();
                (format!("--{long}"), values)
            } else if let Some((name, value)) = set_variable(arg, &raw) {
                (name, value)
            } else if let Some(values) = file.as_ref().and_then(|f| f.values.get(long)) {
                (
                    file.as_ref()
                        .map(|f| format!("the config file {}", f.path.display()))
                        .unwrap_or_default(),
                    values.iter().map(OsString::from).collect(),
                )
            } else {
                continue;
            };
            for value in &values {
                check_value(arg, value).map_err(|reason| LoadError::Invalid {
                    setting: long.to_owned(),
                    // A secret, or a URL that may hold a password, is never shown; its
                    // parser's reason shows what is safe to.
                    value: (!arg.is_hide_env_values_set())
                        .then(|| value.to_string_lossy().into_owned()),
                    source: source.clone(),
                    reason,
                })?;
            }
        }
        let command = match &file {
            Some(file) => command.mut_args(|arg| {
                match arg.get_long().and_then(|long| file.values.get(long)) {
                    Some(values) => arg.default_values(values.clone()),
                    None => arg,
                }
            }),
            None => command,
        };
        let matches = command
            .try_get_matches_from(&args)
            .map_err(LoadError::Usage)?;
        let config = Config::from_arg_matches(&matches).map_err(LoadError::Usage)?;
        config.check_redis_tls().map_err(LoadError::Conflict)?;
        config.check_redis_wait().map_err(LoadError::Conflict)?;
        // The token settings together (a secret and a public key, a key file that is not one,
        // --anonymous-subscribe without a key): a setting's mistake, told as one (exit status 2)
        // before anything starts.
        config.mode().map_err(LoadError::Conflict)?;
        Ok(config)
    }

    /// Refuses Redis TLS settings that would do nothing: a certificate for a store that is not
    /// `rediss://` (a URL missing its `s` would otherwise go in plain text), half a client
    /// certificate.
    fn check_redis_tls(&self) -> Result<(), String> {
        let given = [
            ("--redis-ca", self.redis_ca.is_some()),
            ("--redis-cert", self.redis_cert.is_some()),
            ("--redis-key", self.redis_key.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
            if !self.store.is_redis_tls() {
                return Err(format!(
                    "{flag} is for a rediss:// store (Redis over TLS), and the store is {}",
                    self.store
                ));
            }
        }
        match (&self.redis_cert, &self.redis_key) {
            (Some(_), None) => {
                Err("--redis-cert needs --redis-key (the certificate's private key, PEM)".into())
            }
            (None, Some(_)) => {
                Err("--redis-key needs --redis-cert (the client certificate chain, PEM)".into())
            }
            _ => Ok(()),
        }
    }

    /// Refuses replicas' confirmations where there is nothing to confirm them: a store that is
    /// not Redis, or a Redis Cluster, whose client cannot tie a `WAIT` to the write.
    fn check_redis_wait(&self) -> Result<(), String> {
        use pere_core::store::redis::Deployment;
        match &self.store {
            _ if self.redis_wait_replicas == 0 => Ok(()),
            StoreKind::Redis(url) if Deployment::of(&url.0) == Deployment::Cluster => Err(
                "--redis-wait-replicas is not supported on a Redis Cluster (redis+cluster://)"
                    .into(),
            ),
            StoreKind::Redis(_) => Ok(()),
            other => Err(format!(
                "--redis-wait-replicas is for a Redis store, and the store is {other}"
            )),
        }
    }

    /// The Redis TLS settings, the files read.
    ///
    /// # Errors
    /// One line naming the setting whose file cannot be read (they were readable when the
    /// settings were loaded).
    pub fn redis_tls(&self) -> Result<RedisTls, String> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
        };
        let ca = match &self.redis_ca {
            Some(path) => Some(read("--redis-ca", path)?),
            None => None,
        };
        let client = match (&self.redis_cert, &self.redis_key) {
            (Some(cert), Some(key)) => Some(RedisClientCert {
                chain: read("--redis-cert", cert)?,
                key: read("--redis-key", key)?,
            }),
            _ => None,
        };
        Ok(RedisTls { ca, client })
    }
}

/// A PEM file holding at least one certificate, checked where the setting is given.
fn parse_certificates_file(text: &str) -> Result<PathBuf, String> {
    let pem = std::fs::read(text).map_err(|e| format!("cannot read it: {e}"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    Ok(PathBuf::from(text))
}

/// A PEM file holding a private key, checked where the setting is given.
fn parse_private_key_file(text: &str) -> Result<PathBuf, String> {
    let pem = std::fs::read(text).map_err(|e| format!("cannot read it: {e}"))?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(PathBuf::from(text)),
        Err(pem::Error::NoItemsFound) => Err("holds no PEM private key".to_owned()),
        Err(e) => Err(format!("not a PEM private key: {e}")),
    }
}

/// Says, after the flags in `--help`, where else settings come from and which source wins.
const SOURCES_HELP: &str = "Every setting can also come from its environment variable (shown as [env: …]) or from a \
TOML file given with --config, under its long flag's name: `max-connections = 5000`, `open = true`, \
`allow-origin = [\"https://a.example\"]`. A flag beats its variable, a variable beats the file, the file \
beats the default.";

/// Why the settings could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// Clap's own answer: help, version, an unknown flag, a missing argument. `exit()` prints it.
    Usage(clap::Error),
    /// A setting's value is not one it takes.
    Invalid {
        /// The setting, as its long flag without dashes.
        setting: String,
        /// The value given; `None` for a setting whose value is never shown (a secret, a URL
        /// that may hold a password).
        value: Option<String>,
        /// Where it came from: `--flag`, the variable's name, or the file's path and key.
        source: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration file cannot be read, is not TOML, or names a setting there is not.
    File(String),
    /// Settings that do not go together.
    Conflict(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Usage(err) => write!(f, "{}", err.to_string().trim_end()),
            LoadError::Invalid {
                setting,
                value: Some(value),
                source,
                reason,
            } => {
                write!(
                    f,
                    "invalid value \"{value}\" for {setting} in {source}: {reason}"
                )
            }
            LoadError::Invalid {
                setting,
                value: None,
                source,
                reason,
            } => write!(f, "invalid {setting} in {source}: {reason}"),
            LoadError::File(message) | LoadError::Conflict(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for LoadError {}

/// The variable that sets `arg`, with its value, when the environment has it and the command
/// line does not override it.
fn set_variable(arg: &Arg, raw: &clap::ArgMatches) -> Option<(String, Vec<OsString>)> {
    let name = arg.get_env()?;
    if arg.get_action().takes_values() {
        // clap read it (and split it at the delimiter) in the raw pass.
        if raw.value_source(arg.get_id().as_str()) != Some(ValueSource::EnvVariable) {
            return None;
        }
        let values = raw
            .get_raw(arg.get_id().as_str())?
            .map(OsStr::to_owned)
            .collect();
        return Some((name.to_string_lossy().into_owned(), values));
    }
    let value = std::env::var_os(name)?;
    Some((name.to_string_lossy().into_owned(), vec![value]))
}

/// Checks one value with the parser the setting's flag uses; the reason it is refused, if it is.
fn check_value(arg: &Arg, value: &OsStr) -> Result<(), String> {
    let parser = match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => ValueParser::bool(),
        _ => arg.get_value_parser().clone(),
    };
    let probe = clap::Command::new("check").arg(
        Arg::new("value")
            .long("value")
            .action(ArgAction::Set)
            .allow_hyphen_values(true)
            .value_parser(parser),
    );
    let mut flag = OsString::from("--value=");
    flag.push(value);
    match probe.try_get_matches_from([OsString::from("check"), flag]) {
        Ok(_) => Ok(()),
        Err(err) => Err(reason(&err)),
    }
}

/// What a value parser found wrong, without clap's usage text, saying what is expected where
/// the parser's own words do not (`invalid digit found in string`).
fn reason(err: &clap::Error) -> String {
    if let Some(source) = std::error::Error::source(err) {
        if let Some(number) = source.downcast_ref::<std::num::ParseIntError>() {
            return match number.kind() {
                std::num::IntErrorKind::PosOverflow => "too large a number".to_owned(),
                _ => "expected a whole number, 0 or more (such as 5000)".to_owned(),
            };
        }
        if source.is::<std::net::AddrParseError>() {
            return format!(
                "{source}: expected an IP address (127.0.0.1, 0.0.0.0, ::1), with a port for \
                 --metrics-addr (127.0.0.1:9464)"
            );
        }
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
        return format!("expected one of {}", valid.join(", "));
    }
    match err.kind() {
        ErrorKind::InvalidUtf8 => "not UTF-8".to_owned(),
        kind => kind.to_string(),
    }
}

/// A configuration file: each setting's values, as text for the flag's parser.
#[derive(Debug)]
struct SettingsFile {
    path: PathBuf,
    values: std::collections::HashMap<String, Vec<String>>,
}

impl SettingsFile {
    /// Reads `path`, refusing keys that name no setting of `command`.
    fn read(path: &Path, command: &clap::Command) -> Result<SettingsFile, LoadError> {
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError::File(format!("cannot read the config file {shown}: {e}")))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map_or(1, |span| {
                text[..span.start.min(text.len())].matches('\n').count() + 1
            });
            LoadError::File(format!(
                "{shown} is not valid TOML (line {line}): {}",
                e.message().trim_end()
            ))
        })?;
        let mut values = std::collections::HashMap::new();
        for (key, value) in table {
            let arg = command.get_arguments().find(|a| {
                a.get_long() == Some(key.as_str())
                    && !matches!(key.as_str(), "config" | "help" | "version")
            });
            let Some(arg) = arg else {
                let hint = command
                    .get_arguments()
                    .filter_map(Arg::get_long)
                    .find(|long| *long == key.replace('_', "-"))
                    .map(|long| format!(" (did you mean {long}?)"))
                    .unwrap_or_default();
                return Err(LoadError::File(format!(
                    "unknown setting \"{key}\" in {shown}{hint}: settings are named as the long flags of pere-server --help"
                )));
            };
            let many = matches!(arg.get_action(), ArgAction::Append);
            let texts = match value {
                toml::Value::Array(items) if many => items
                    .into_iter()
                    .map(|v| scalar(&key, v, &shown))
                    .collect::<Result<_, _>>()?,
                toml::Value::Array(_) => {
                    return Err(LoadError::File(format!(
                        "{key} in {shown} takes one value, not a list"
                    )));
                }
                other => vec![scalar(&key, other, &shown)?],
            };
            values.insert(key, texts);
        }
        Ok(SettingsFile {
            path: path.to_owned(),
            values,
        })
    }
}

/// A TOML value as the text a flag would be given.
fn scalar(
    key: &str,
    value: toml::Value,
    file: &std::path::Display<'_>,
) -> Result<String, LoadError> {
    Ok(match value {
        toml::Value::String(text) => text,
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            return Err(LoadError::File(format!(
                "{key} in {file} takes a value, not a list or a table"
            )));
        }
    })
}

/// Most worker threads `--workers` may ask for: far more than cores, and a bound, so a typo
/// does not start a million threads.
pub const MAX_WORKERS: usize = 1024;

fn parse_workers(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(workers) if workers <= MAX_WORKERS => Ok(workers),
        _ => Err(format!(
            "{text:?} is not a number of worker threads: 0 (one per core) to {MAX_WORKERS}"
        )),
    }
}

/// Parses `90s`, `30m`, `12h`, `7d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 30m, 12h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in `{text}`: use s, m, h or d")),
    };
    // A number of days past u64 seconds is a mistake, never a wish to wait that long.
    let secs = n
        .checked_mul(secs)
        .ok_or_else(|| format!("`{text}` is longer than any duration this server keeps"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_of_another_scheme_is_refused_without_showing_its_password() {
        let refused = parse_store("postgres://app:s3cret@db/pere").unwrap_err();
        assert!(
            refused.starts_with("\"postgres://…\" is not a store"),
            "{refused}"
        );
        assert!(!refused.contains("s3cret"), "{refused}");
        let typo = parse_store("sqlit").unwrap_err();
        assert!(typo.starts_with("\"sqlit\" is not a store"), "{typo}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert!(
            parse_duration("99999999999999999d").is_err(),
            "an overflow is refused, never a panic"
        );
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn every_setting_has_its_variable() {
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long().filter(|l| !matches!(*l, "help" | "version")) else {
                continue;
            };
            let expected = format!("PERE_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(OsStr::to_str),
                Some(expected.as_str()),
                "--{long} needs env = \"{expected}\""
            );
        }
    }

    #[test]
    fn defaults_match_the_original() {
        let config = Config::defaults();
        assert_eq!(config.port, 4567);
        assert_eq!(config.max_body, 65_536);
        assert!(
            !config.origin_listed("https://example.org") && !config.any_origin(),
            "no cross-origin use by default"
        );
        assert!(!config.open && !config.anonymous_subscribe && config.jwt_secret.is_none());
    }
}
