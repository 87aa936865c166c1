//! The way to Redis: the URL and TLS settings ([`RedisOptions`], [`RedisTls`]), the one client
//! that makes every connection, the shared reconnecting connection, and Redis errors as
//! [`StoreError`]s (a TLS failure told from an outage).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{ConnectionAddr, IntoConnectionInfo as _};

use crate::error::StoreError;
use crate::store::Retention;

/// How long one connection attempt may take: an unreachable Redis fails a push at once (503)
/// instead of holding it.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take before it counts as failed. AOF with `appendfsync always`
/// adds a disk sync per write; a healthy server answers well within this.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between reconnection attempts: reconnecting never busy-loops, and a Redis that
/// comes back is found within this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[:password@]host:port/db`, or `rediss://` for Redis over TLS.
    pub url: String,
    /// What every key and the bus channel start with, so several deployments can share a Redis.
    pub prefix: String,
    /// How much history each channel keeps.
    pub retention: Retention,
    /// What a `rediss://` connection trusts and presents; empty for `redis://`.
    pub tls: RedisTls,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold the password.
        f.debug_struct("RedisOptions")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("tls", &self.tls)
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

/// A Redis URL with its password replaced by `***`, for logs and messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The connection the store's commands share, made by `client`: it connects lazily and
/// reconnects by itself with backoff, so a Redis that is down makes commands fail at once until
/// it is back.
///
/// # Errors
/// [`StoreError::Incompatible`] when the connection cannot be set up for `url`.
pub(super) fn shared_connection(
    client: &redis::Client,
    url: &str,
) -> Result<ConnectionManager, StoreError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_max_delay(MAX_RECONNECT_DELAY)
        .set_number_of_retries(2);
    ConnectionManager::new_lazy_with_config(client.clone(), config)
        .map_err(|e| StoreError::Incompatible(format!("{}: {e}", redacted(url))))
}

/// Runs `cmd` on the shared connection.
///
/// # Errors
/// [`StoreError::Backend`] when Redis cannot be reached or refuses the command.
pub(super) async fn query<T: redis::FromRedisValue>(
    conn: &ConnectionManager,
    cmd: &redis::Cmd,
) -> Result<T, StoreError> {
    cmd.query_async(&mut conn.clone())
        .await
        .map_err(StoreError::backend)
}

/// The client for `url`, over TLS with `tls` for a `rediss://` URL.
pub(super) fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, StoreError> {
    let shown = redacted(url);
    let unusable = |e: redis::RedisError| StoreError::Incompatible(format!("{shown}: {e}"));
    let info = url.into_connection_info().map_err(unusable)?;
    match info.addr() {
        // Checking no certificate would make TLS a show: the way to trust a private server is
        // its CA.
        ConnectionAddr::TcpTls { insecure: true, .. } => Err(StoreError::Incompatible(format!(
            "{shown}: #insecure (no certificate check) is not supported; trust the server's CA instead"
        ))),
        ConnectionAddr::TcpTls { .. } if tls.is_set() => {
            let certificates = redis::TlsCertificates {
                client_tls: tls.client.as_ref().map(|c| redis::ClientTlsConfig {
                    client_cert: c.chain.clone(),
                    client_key: c.key.clone(),
                }),
                root_cert: tls.ca.clone(),
            };
            redis::Client::build_with_tls(info, certificates).map_err(unusable)
        }
        ConnectionAddr::TcpTls { .. } => redis::Client::open(info).map_err(unusable),
        _ if tls.is_set() => Err(StoreError::Incompatible(format!(
            "{shown}: TLS certificates are for a rediss:// URL (Redis over TLS)"
        ))),
        _ => redis::Client::open(info).map_err(unusable),
    }
}

/// A Redis error as a store error, a TLS failure told apart: waiting does not mend it, so a
/// node refuses to start on one rather than wait for its Redis.
pub(super) fn failure(err: redis::RedisError) -> StoreError {
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
fn from_tls(err: &redis::RedisError) -> bool {
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
    }
}
