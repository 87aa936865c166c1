//! The way to Redis: the URL and TLS settings ([`RedisOptions`], [`RedisTls`]), the deployment
//! the URL names (one server, a Redis Cluster, or the primary that Sentinel names), the shared
//! connection the store's commands go through ([`Conn`]), the connections the bus hears notices
//! on ([`Subscriber`]), and Redis errors as [`StoreError`]s (a TLS failure told from an outage).
//!
//! Every connection reconnects by itself: a push or receipt during an outage fails at once, and
//! the next one after it goes through. A cluster's client follows its slots as they move (MOVED,
//! ASK, TRYAGAIN); Sentinel's primary is asked for again whenever the connection to it fails or
//! it turns out to be a replica (after a failover).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo as _, Pipeline,
    ProtocolVersion, PushInfo, RedisError, RedisFuture, RedisResult, Value,
};
use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::store::Retention;

/// How long one connection attempt may take: an unreachable Redis fails a push at once (503)
/// instead of holding it.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take before it counts as failed. AOF with `appendfsync always`
/// adds a disk sync per write; a healthy server answers well within this. A cluster's client
/// follows redirections and waits out a slot's migration within it too.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between reconnection attempts: reconnecting never busy-loops, and a Redis that
/// comes back is found within this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// A cluster's client tries a command again (a node reconnecting, a slot migrating: TRYAGAIN)
/// after 10 ms, doubling, at most this long, within [`RESPONSE_TIMEOUT`] overall: the
/// client's own default starts at 1.28 s, longer than moving a channel's slot takes.
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 250;
/// How many times a cluster's client tries a command again before it fails.
const CLUSTER_RETRIES: u32 = 12;

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[:password@]host:port/db` (`rediss://` over TLS) for one server;
    /// `redis+cluster://[:password@]host:port[,host:port…]` (`rediss+cluster://` over TLS)
    /// for a Redis Cluster, from any of its nodes;
    /// `redis+sentinel://[:password@]host:port[,host:port…]/PRIMARY[/db]` for the primary
    /// that these sentinels name (the password is the primary's).
    pub url: String,
    /// What every key and the bus channel start with, so several deployments can share a Redis.
    pub prefix: String,
    /// How much history each channel keeps.
    pub retention: Retention,
    /// What a `rediss://` connection trusts and presents; empty for `redis://`.
    pub tls: RedisTls,
    /// How many replicas must confirm a push or receipt (Redis's `WAIT`) before it counts as
    /// recorded; 0 asks for none. Not for a Redis Cluster (see [`Deployment`]).
    pub wait_replicas: usize,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold the password.
        f.debug_struct("RedisOptions")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("tls", &self.tls)
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

/// What a `rediss://` connection trusts and presents, as PEM. The default trusts the system's
/// CAs and presents no certificate.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The certificates of the CAs that sign the Redis server's certificate, trusted instead of
    /// the system's (a private CA).
    pub ca: Option<Vec<u8>>,
    /// The certificate this client presents to a Redis that asks for one.
    pub client: Option<RedisClientCert>,
}

impl RedisTls {
    /// Whether anything is set beyond the defaults.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|c| redis::ClientTlsConfig {
                client_cert: c.chain.clone(),
                client_key: c.key.clone(),
            }),
            root_cert: self.ca.clone(),
        }
    }
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

/// A client certificate for Redis over TLS, as PEM.
#[derive(Clone)]
pub struct RedisClientCert {
    /// The certificate chain, the client's own certificate first.
    pub chain: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for RedisClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("RedisClientCert").finish_non_exhaustive()
    }
}

/// The kind of Redis deployment a store URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// One server (`redis://`, `rediss://`, `redis+unix://`), perhaps with replicas.
    Single,
    /// A Redis Cluster (`redis+cluster://`, `rediss+cluster://`). Replicas' confirmations
    /// (`WAIT`) are not asked for there: the cluster's client sends each command to the node
    /// of its slot on a connection of its choosing, so no `WAIT` can be tied to the write it
    /// should confirm.
    Cluster,
    /// The primary that Sentinel names (`redis+sentinel://`), followed across failovers.
    Sentinel,
}

impl Deployment {
    /// The deployment `url` names, by its scheme.
    pub fn of(url: &str) -> Deployment {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        match scheme {
            "redis+cluster" | "rediss+cluster" => Deployment::Cluster,
            "redis+sentinel" | "rediss+sentinel" => Deployment::Sentinel,
            _ => Deployment::Single,
        }
    }
}

/// A Redis URL with its password replaced by `***`, for logs and messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The deployment a store talks to, and how to make its connections.
pub(super) enum Target {
    /// One server: the client for commands (RESP2) and the one for the bus (RESP3, whose
    /// connections carry Pub/Sub messages beside replies).
    Single {
        commands: redis::Client,
        bus: redis::Client,
    },
    /// A Redis Cluster: its seed nodes, and the TLS settings every node's connection takes.
    Cluster {
        seeds: Vec<ConnectionInfo>,
        tls: Option<RedisTls>,
    },
    /// The primary that sentinels name, asked for again after every failure.
    Sentinel(Arc<SentinelPrimary>),
}

impl Target {
    /// The deployment `url` names, with `tls` for a TLS URL.
    ///
    /// # Errors
    /// [`StoreError::Incompatible`] for a URL that cannot be used, or TLS settings with a URL
    /// that is not over TLS.
    pub(super) fn new(url: &str, tls: &RedisTls) -> Result<Target, StoreError> {
        let shown = redacted(url);
        let unusable = |e: RedisError| StoreError::Incompatible(format!("{shown}: {e}"));
        let refuse = |why: &str| Err(StoreError::Incompatible(format!("{shown}: {why}")));
        match Deployment::of(url) {
            Deployment::Single => {
                let info = url.into_connection_info().map_err(unusable)?;
                let over_tls = check_tls(&shown, info.addr(), tls)?;
                let bus = with_protocol(info.clone(), ProtocolVersion::RESP3);
                let open = |info: ConnectionInfo| match over_tls && tls.is_set() {
                    true => redis::Client::build_with_tls(info, tls.certificates()),
                    false => redis::Client::open(info),
                };
                Ok(Target::Single {
                    commands: open(info).map_err(unusable)?,
                    bus: open(bus).map_err(unusable)?,
                })
            }
            Deployment::Cluster => {
                let (scheme, user_info, hosts, path) = split_url(url)?;
                if !matches!(path, "" | "/" | "/0") {
                    return refuse("a Redis Cluster has database 0 only: no /db in the URL");
                }
                let plain = if scheme == "rediss+cluster" {
                    "rediss"
                } else {
                    "redis"
                };
                let mut seeds = Vec::new();
                for host in hosts {
                    let seed = format!("{plain}://{user_info}{host}");
                    let info = seed.as_str().into_connection_info().map_err(unusable)?;
                    check_tls(&shown, info.addr(), tls)?;
                    seeds.push(info);
                }
                let target = Target::Cluster {
                    tls: (plain == "rediss").then(|| tls.clone()),
                    seeds,
                };
                // Checked now, so that a URL the client refuses is refused at start.
                target.cluster_client(false).map_err(unusable)?;
                Ok(target)
            }
            Deployment::Sentinel => {
                let (scheme, user_info, hosts, path) = split_url(url)?;
                if scheme == "rediss+sentinel" || tls.is_set() {
                    return refuse("Sentinel over TLS is not supported: use redis+sentinel://");
                }
                let mut parts = path.trim_start_matches('/').split('/');
                let primary = parts.next().filter(|p| !p.is_empty());
                let db = parts.next().map(str::parse::<i64>);
                let (Some(primary), None) = (primary, parts.next()) else {
                    return refuse("name the primary: redis+sentinel://host:port/PRIMARY[/db]");
                };
                let db = match db {
                    None => 0,
                    Some(Ok(db)) => db,
                    Some(Err(_)) => {
                        return refuse("the database after the primary's name is a number")
                    }
                };
                // The URL's password is the primary's (and its replicas'), not the sentinels'.
                let data_info = format!("redis://{user_info}127.0.0.1/{db}")
                    .as_str()
                    .into_connection_info()
                    .map_err(unusable)?;
                let mut sentinels = Vec::new();
                for host in hosts {
                    let info = format!("redis://{host}").as_str().into_connection_info();
                    sentinels.push(info.map_err(unusable)?);
                }
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(data_info.redis_settings().clone());
                let client = SentinelClient::build(
                    sentinels,
                    primary,
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(unusable)?;
                Ok(Target::Sentinel(Arc::new(SentinelPrimary::new(client))))
            }
        }
    }

    /// The deployment.
    pub(super) fn deployment(&self) -> Deployment {
        match self {
            Target::Single { .. } => Deployment::Single,
            Target::Cluster { .. } => Deployment::Cluster,
            Target::Sentinel(_) => Deployment::Sentinel,
        }
    }

    /// A client for a cluster's nodes: RESP3 for the bus (`resp3`), RESP2 for commands.
    fn cluster_client(&self, resp3: bool) -> RedisResult<ClusterClient> {
        let Target::Cluster { seeds, tls } = self else {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "not a cluster",
            )));
        };
        let mut builder = ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .overall_response_timeout(Some(RESPONSE_TIMEOUT))
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(10)
            .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
            .retry_wait_formula(10, 2);
        if resp3 {
            builder = builder.use_protocol(ProtocolVersion::RESP3);
        }
        if let Some(tls) = tls.as_ref().filter(|tls| tls.is_set()) {
            builder = builder.certs(tls.certificates());
        }
        builder.build()
    }

    /// The connection the store's commands share. It connects lazily and reconnects by
    /// itself, so a Redis that is down makes commands fail at once until it is back.
    ///
    /// # Errors
    /// [`StoreError::Incompatible`] when the connection cannot be set up.
    pub(super) fn shared_connection(&self, shown: &str) -> Result<Conn, StoreError> {
        let unusable = |e: RedisError| StoreError::Incompatible(format!("{shown}: {e}"));
        Ok(match self {
            Target::Single { commands, .. } => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_max_delay(MAX_RECONNECT_DELAY)
                    .set_number_of_retries(2);
                Conn::Single(
                    ConnectionManager::new_lazy_with_config(commands.clone(), config)
                        .map_err(unusable)?,
                )
            }
            Target::Cluster { .. } => {
                let client = self.cluster_client(false).map_err(unusable)?;
                Conn::Cluster(
                    client.get_pending_async_connection_with_config(
                        ClusterConfig::new()
                            .set_connection_timeout(CONNECT_TIMEOUT)
                            .set_response_timeout(RESPONSE_TIMEOUT),
                    ),
                )
            }
            Target::Sentinel(primary) => Conn::Sentinel(primary.clone()),
        })
    }

    /// A new connection for the bus, which hears shard channels (`SSUBSCRIBE`): the messages
    /// and the end of the connection come on the receiver as pushes.
    ///
    /// # Errors
    /// The client's error when no connection can be made.
    pub(super) async fn subscriber(
        &self,
    ) -> RedisResult<(Subscriber, mpsc::UnboundedReceiver<PushInfo>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_push_sender(tx.clone());
        let subscriber = match self {
            Target::Single { bus, .. } => Subscriber::Single(
                bus.get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ),
            Target::Cluster { .. } => {
                let client = self.cluster_client(true)?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT)
                    .set_push_sender(tx);
                Subscriber::Cluster(client.get_async_connection_with_config(config).await?)
            }
            Target::Sentinel(primary) => {
                let client = primary.client().await?;
                let info =
                    with_protocol(client.get_connection_info().clone(), ProtocolVersion::RESP3);
                Subscriber::Single(
                    redis::Client::open(info)?
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
        };
        Ok((subscriber, rx))
    }
}

/// `info` speaking `protocol`.
fn with_protocol(info: ConnectionInfo, protocol: ProtocolVersion) -> ConnectionInfo {
    let settings = info.redis_settings().clone().set_protocol(protocol);
    info.set_redis_settings(settings)
}

/// Refuses what TLS cannot be: no certificate check, or certificates for a plain connection.
/// Returns whether `addr` is over TLS.
fn check_tls(shown: &str, addr: &ConnectionAddr, tls: &RedisTls) -> Result<bool, StoreError> {
    match addr {
        // Checking no certificate would make TLS a show: the way to trust a private server is
        // its CA.
        ConnectionAddr::TcpTls { insecure: true, .. } => Err(StoreError::Incompatible(format!(
            "{shown}: #insecure (no certificate check) is not supported; trust the server's CA instead"
        ))),
        ConnectionAddr::TcpTls { .. } => Ok(true),
        _ if tls.is_set() => Err(StoreError::Incompatible(format!(
            "{shown}: TLS certificates are for a rediss:// URL (Redis over TLS)"
        ))),
        _ => Ok(false),
    }
}

/// A URL of several hosts, `SCHEME://[USERINFO@]HOST:PORT[,HOST:PORT…][/PATH]`, in parts:
/// the scheme, the user info with its `@` (or nothing), the hosts and the path.
fn split_url(url: &str) -> Result<(&str, &str, Vec<&str>, &str), StoreError> {
    let unusable = || StoreError::Incompatible(format!("{}: not a URL", redacted(url)));
    let (scheme, rest) = url.split_once("://").ok_or_else(unusable)?;
    let (user_info, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) => (
            &url[scheme.len() + 3..scheme.len() + 3 + user.len() + 1],
            rest,
        ),
        None => ("", rest),
    };
    let (hosts, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err(unusable());
    }
    Ok((scheme, user_info, hosts, path))
}

/// The connection the store's commands go through, whatever the deployment. Cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server's reconnecting, multiplexed connection.
    Single(ConnectionManager),
    /// A cluster's client: a connection to each node, commands routed by slot.
    Cluster(ClusterConnection),
    /// The primary Sentinel names.
    Sentinel(Arc<SentinelPrimary>),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
            Conn::Sentinel(primary) => {
                let primary = primary.clone();
                async move {
                    let mut conn = primary.connection().await?;
                    let answer = conn.req_packed_command(cmd).await;
                    primary.check(&answer);
                    answer
                }
                .boxed()
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(primary) => {
                let primary = primary.clone();
                async move {
                    let mut conn = primary.connection().await?;
                    let answer = conn.req_packed_commands(pipeline, offset, count).await;
                    primary.check(&answer);
                    answer
                }
                .boxed()
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

/// Whether `err` says the connection no longer reaches the primary: it is made again.
pub(super) fn gone(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// The primary that sentinels name, and the connection to it: made when first needed, and made
/// again (the primary asked for again) after any failure of the connection, or an answer
/// saying it is a replica now (`READONLY`: a failover happened).
pub(super) struct SentinelPrimary {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
}

impl SentinelPrimary {
    fn new(client: SentinelClient) -> Self {
        SentinelPrimary {
            sentinels: tokio::sync::Mutex::new(client),
            current: Mutex::default(),
        }
    }

    /// A client for the primary, as the sentinels name it now (checked with `ROLE`).
    pub(super) async fn client(&self) -> RedisResult<redis::Client> {
        let mut sentinels = self.sentinels.lock().await;
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, sentinels.async_get_client()).await {
            Ok(client) => client,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the sentinels did not name the primary in time",
            ))),
        }
    }

    /// The connection to the primary, made first if there is none.
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(conn);
        }
        let client = self.client().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        // Another caller may have connected meanwhile: both connections work; keep one.
        Ok(current.get_or_insert(conn).clone())
    }

    /// Forgets the connection when `answer` says it no longer reaches the primary (one made
    /// since by another caller may go too: it is made again).
    fn check<T>(&self, answer: &RedisResult<T>) {
        if answer.as_ref().err().is_some_and(gone) {
            self.current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
    }
}

/// A connection the bus hears shard channels on; its messages come as pushes on the receiver
/// it was made with ([`Target::subscriber`]). Cheap to clone: the clones share it.
#[derive(Clone)]
pub(super) enum Subscriber {
    /// One server's (or Sentinel's primary's) connection.
    Single(MultiplexedConnection),
    /// A cluster's client, which sends each subscription to the node of its slot and subscribes
    /// again when a node reconnects.
    Cluster(ClusterConnection),
}

impl Subscriber {
    /// Subscribes to the shard channels `names`, returning once Redis confirmed them.
    ///
    /// # Errors
    /// The client's error when a subscription fails.
    pub(super) async fn subscribe(&self, names: &[String]) -> RedisResult<()> {
        self.change("SSUBSCRIBE", names).await
    }

    /// Unsubscribes from the shard channels `names`.
    ///
    /// # Errors
    /// The client's error when Redis cannot be told.
    pub(super) async fn unsubscribe(&self, names: &[String]) -> RedisResult<()> {
        self.change("SUNSUBSCRIBE", names).await
    }

    async fn change(&self, command: &'static str, names: &[String]) -> RedisResult<()> {
        /// Subscriptions sent at once: enough to subscribe thousands of channels quickly after
        /// a reconnection, few enough not to flood Redis.
        const AT_ONCE: usize = 64;
        match self {
            // One channel per command: each is answered with one confirmation, which the
            // connection takes for the command's reply.
            Subscriber::Single(conn) => {
                for chunk in names.chunks(AT_ONCE) {
                    let mut pipe = redis::pipe();
                    for name in chunk {
                        pipe.cmd(command).arg(name);
                    }
                    let _: Vec<Value> = pipe.query_async(&mut conn.clone()).await?;
                }
                Ok(())
            }
            // One channel per call: each goes to the node of its own slot.
            Subscriber::Cluster(conn) => {
                let subscribe = command == "SSUBSCRIBE";
                for chunk in names.chunks(AT_ONCE) {
                    let calls: Vec<BoxFuture<'static, RedisResult<()>>> = chunk
                        .iter()
                        .map(|name| {
                            let (mut conn, name) = (conn.clone(), name.clone());
                            async move {
                                match subscribe {
                                    true => conn.ssubscribe(name).await,
                                    false => conn.sunsubscribe(name).await,
                                }
                            }
                            .boxed()
                        })
                        .collect();
                    for outcome in futures_util::future::join_all(calls).await {
                        outcome?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Runs `cmd` on the shared connection.
///
/// # Errors
/// [`StoreError::Backend`] when Redis cannot be reached or refuses the command.
pub(super) async fn query<T: redis::FromRedisValue>(
    conn: &Conn,
    cmd: &Cmd,
) -> Result<T, StoreError> {
    cmd.query_async(&mut conn.clone())
        .await
        .map_err(StoreError::backend)
}

/// A Redis error as a store error, a TLS failure told apart: waiting does not mend it, so a
/// node refuses to start on one rather than wait for its Redis.
pub(super) fn failure(err: RedisError) -> StoreError {
    if from_tls(&err) {
        StoreError::Tls(Box::new(err))
    } else {
        StoreError::backend(err)
    }
}

/// Whether rustls caused `err`. The Redis client keeps the cause behind an `Arc<dyn Error>`,
/// often an I/O error wrapping the rustls one, and `source()` steps over the wrapped error; so
/// each link of the chain is opened by hand. A test on a real TLS server holds this to the
/// client's version (`an_untrusted_server_certificate_is_a_tls_failure_found_fast`).
fn from_tls(err: &RedisError) -> bool {
    fn is_rustls(err: &(dyn std::error::Error + 'static)) -> bool {
        err.is::<rustls::Error>()
            || err
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>())
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = cause {
        let shared = err
            .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
            .map(|shared| &**shared as &(dyn std::error::Error + 'static));
        if is_rustls(err) || shared.is_some_and(is_rustls) {
            return true;
        }
        cause = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("redis://:secret@h:6379/2"),
            "redis://:***@h:6379/2"
        );
        assert_eq!(redacted("redis://user:secret@h/0"), "redis://user:***@h/0");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redacted("rediss://:secret@h:6380/0"),
            "rediss://:***@h:6380/0"
        );
        assert_eq!(
            redacted("redis+cluster://:s3cret@h1:7000,h2:7001"),
            "redis+cluster://:***@h1:7000,h2:7001"
        );
    }

    #[test]
    fn urls_name_their_deployment_and_its_hosts() {
        assert_eq!(Deployment::of("redis://h:6379/0"), Deployment::Single);
        assert_eq!(Deployment::of("rediss+cluster://h:1"), Deployment::Cluster);
        assert_eq!(
            Deployment::of("redis+sentinel://h:1/m"),
            Deployment::Sentinel
        );
        let (scheme, user, hosts, path) =
            split_url("redis+sentinel://:pw@a:1,b:2/primary/3").unwrap();
        assert_eq!(
            (scheme, user, hosts, path),
            ("redis+sentinel", ":pw@", vec!["a:1", "b:2"], "/primary/3")
        );
        let (_, user, hosts, path) = split_url("redis+cluster://a:1").unwrap();
        assert_eq!((user, hosts, path), ("", vec!["a:1"], ""));
        assert!(split_url("redis+cluster://").is_err());
    }
}
