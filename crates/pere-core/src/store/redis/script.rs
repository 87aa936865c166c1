//! Running the store's scripts: `EVALSHA`, the script loaded when the server lacks it, and the
//! writes whose replicas must confirm them (`WAIT`), each on a connection of its own
//! ([`Confirming`]).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisResult, Script, Value};

use super::connection::{
    failure, gone, Conn, SentinelPrimary, Target, CONNECT_TIMEOUT, RESPONSE_TIMEOUT,
};
use crate::error::StoreError;

/// How long the replicas have to confirm a write when confirmations are asked for
/// ([`RedisOptions::wait_replicas`](super::RedisOptions::wait_replicas)): longer than a healthy
/// replica takes, short enough that a publisher whose push cannot be confirmed learns it well
/// before a command times out (5 s).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many replicas confirmed a write, when confirmations were asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Confirmation {
    /// As many as wanted, or none were asked for.
    Enough,
    /// Fewer than wanted within [`WAIT_TIMEOUT`]: the write is on the primary only.
    Short {
        /// How many confirmed.
        confirmed: usize,
        /// How many were wanted.
        wanted: usize,
    },
}

/// Runs `script` on `conn` with `keys` (a channel's hash tag first) and `args` (see
/// [`run_script`]).
///
/// # Errors
/// [`StoreError::Backend`] when Redis cannot be reached or refuses the script.
pub(super) async fn eval(
    conn: &Conn,
    script: &Script,
    keys: &[String],
    args: &[Vec<u8>],
) -> Result<Value, StoreError> {
    let (answer, _) = run_script(&mut conn.clone(), script, keys, args, None)
        .await
        .map_err(failure)?;
    Ok(answer)
}

/// Runs `script` with `keys` and `args` on `conn`: `EVALSHA`, the script loaded first if the
/// server lacks it (a new primary after a failover). With `confirm` (the replicas wanted, and
/// the key to write before waiting for them: see `Keys::confirmed`), the script, that write and
/// `WAIT` go in one pipeline on one connection, so that nothing can reconnect in between and
/// make `WAIT` count another connection's writes. Returns the script's answer and how many
/// replicas confirmed it.
async fn run_script(
    conn: &mut impl ConnectionLike,
    script: &Script,
    keys: &[String],
    args: &[Vec<u8>],
    confirm: Option<(usize, &str)>,
) -> RedisResult<(Value, Confirmation)> {
    let mut call = redis::cmd("EVALSHA");
    call.arg(script.get_hash())
        .arg(keys.len())
        .arg(keys)
        .arg(args);
    let mut loaded = false;
    loop {
        let answer = match confirm {
            None => call
                .query_async::<Value>(conn)
                .await
                .map(|answer| (answer, Confirmation::Enough)),
            Some((wanted, marker)) => {
                let mut pipe = redis::pipe();
                pipe.add_command(call.clone())
                    .cmd("SET")
                    .arg(marker)
                    .arg(1)
                    .arg("PX")
                    .arg(60_000)
                    .ignore()
                    .cmd("WAIT")
                    .arg(wanted)
                    .arg(u64::try_from(WAIT_TIMEOUT.as_millis()).unwrap_or(u64::MAX));
                pipe.query_async::<(Value, usize)>(conn)
                    .await
                    .map(|(answer, confirmed)| match confirmed >= wanted {
                        true => (answer, Confirmation::Enough),
                        false => (answer, Confirmation::Short { confirmed, wanted }),
                    })
            }
        };
        match answer {
            Err(err)
                if !loaded
                    && err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                script.load_async(conn).await?;
                loaded = true;
            }
            answer => return answer,
        }
    }
}

/// Connections of their own for the writes whose replicas must confirm them. `WAIT` holds its
/// connection until the replicas answer (up to [`WAIT_TIMEOUT`] when one is down), so each such
/// write has one to itself for that long, and no other command waits behind it. A connection
/// that fails is made again for the next write (asking the sentinels again for Sentinel's
/// primary).
pub(super) struct Confirming {
    way: ConfirmingWay,
    slots: Vec<tokio::sync::Mutex<Option<ConfirmingConnection>>>,
    free: tokio::sync::Semaphore,
}

/// One confirming connection, and the scripts loaded on its server: each is loaded before its
/// first run there, since a `NOSCRIPT` answer would cost a second `WAIT`.
struct ConfirmingConnection {
    conn: MultiplexedConnection,
    loaded: std::collections::HashSet<String>,
}

/// How a confirming connection is made.
enum ConfirmingWay {
    Single(redis::Client),
    Sentinel(Arc<SentinelPrimary>),
}

/// Writes confirmed at once, each on a connection of its own; more wait for one to be free.
const CONFIRMING_CONNECTIONS: usize = 16;

impl Confirming {
    /// The confirming connections of `target`, none made yet; `None` for a cluster.
    pub(super) fn new(target: &Target) -> Option<Confirming> {
        let way = match target {
            Target::Single { commands, .. } => ConfirmingWay::Single(commands.clone()),
            Target::Sentinel(primary) => ConfirmingWay::Sentinel(primary.clone()),
            Target::Cluster { .. } => return None,
        };
        Some(Confirming {
            way,
            slots: (0..CONFIRMING_CONNECTIONS)
                .map(|_| tokio::sync::Mutex::default())
                .collect(),
            free: tokio::sync::Semaphore::new(CONFIRMING_CONNECTIONS),
        })
    }

    /// Runs `script` (see [`run_script`]) and waits for `wanted` replicas to confirm it, writing
    /// `marker` last; on a connection of its own.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached, refuses the script, or no
    /// connection is free within [`WAIT_TIMEOUT`] (nothing was written then).
    pub(super) async fn eval(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
        wanted: usize,
        marker: &str,
    ) -> Result<(Value, Confirmation), StoreError> {
        let busy = || {
            StoreError::backend(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "every connection for confirmed writes is waiting for the replicas",
            ))
        };
        let _permit = tokio::time::timeout(WAIT_TIMEOUT, self.free.acquire())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        // A permit means a slot is free; one taken meanwhile by another permit holder is
        // skipped.
        let mut slot = None;
        for candidate in &self.slots {
            if let Ok(guard) = candidate.try_lock() {
                slot = Some(guard);
                break;
            }
        }
        let mut slot = slot.ok_or_else(busy)?;
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => ConfirmingConnection {
                conn: self.connect().await.map_err(failure)?,
                loaded: Default::default(),
            },
        };
        if !conn.loaded.contains(script.get_hash()) {
            script.load_async(&mut conn.conn).await.map_err(failure)?;
            conn.loaded.insert(script.get_hash().to_owned());
        }
        let answer = run_script(&mut conn.conn, script, keys, args, Some((wanted, marker))).await;
        match &answer {
            Err(err) if gone(err) => {}
            _ => *slot = Some(conn),
        }
        answer.map_err(failure)
    }

    async fn connect(&self) -> RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let client = match &self.way {
            ConfirmingWay::Single(client) => client.clone(),
            ConfirmingWay::Sentinel(primary) => primary.client().await?,
        };
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}
