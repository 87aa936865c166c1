//! The bus: what links the nodes that share one Redis. It feeds the changes other nodes record
//! (events, receipts, memberships, published as notices by the Redis store's scripts) into this
//! node's hub through its `apply_*` seam, and keeps this node's open streams registered in Redis
//! under a time to live, so every node can add up the whole cluster's connections and a dead
//! node's streams stop counting once its registration expires.
//!
//! Notices go over Redis Pub/Sub, which delivers in publish order (so in id order per channel)
//! but only to connected listeners: after every (re)connection the bus catches up from the
//! store ([`Hub::catch_up`]), and a notice lost in between is a gap the hub's sequencer fills
//! from the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::error::StoreError;
use crate::event::{Event, NewEvent};
use crate::hub::Hub;
use crate::name::{ChannelName, DeviceId, EventType};
use crate::store::redis::{membership_from, receipt_from, RedisStore};

/// How long a node's registration lives without a heartbeat, by default: a dead node's streams
/// stop counting within this.
pub const NODE_TTL: Duration = Duration::from_secs(15);
/// The first pause before reconnecting the bus; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long connecting the bus may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A handle on this node's bus: the cluster-wide views and claims. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    store: RedisStore,
    ttl: Duration,
}

/// A notice as the store's scripts publish it.
#[derive(Deserialize)]
struct Notice {
    /// The node that recorded the change.
    n: String,
    /// What changed: `e` event, `r` receipt, `m` membership.
    k: String,
    /// The channel.
    c: String,
    // An event's id, time, body, publisher, type and key.
    #[serde(default)]
    i: u64,
    #[serde(default)]
    t: i64,
    #[serde(default)]
    b: String,
    #[serde(default)]
    p: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    x: Option<String>,
    // A receipt or membership, as stored (JSON).
    #[serde(default)]
    r: Option<String>,
    #[serde(default)]
    m: Option<String>,
}

impl Bus {
    /// Starts the bus of `hub`'s node: the listener that applies other nodes' changes, and the
    /// heartbeat that registers this node's open streams for `ttl`. Both tasks end when the hub
    /// is dropped.
    pub fn start(hub: &Arc<Hub<RedisStore>>, ttl: Duration) -> Bus {
        let bus = Bus {
            store: hub.store().clone(),
            ttl: ttl.max(Duration::from_secs(1)),
        };
        tokio::spawn(listen(Arc::downgrade(hub)));
        tokio::spawn(heartbeat(Arc::downgrade(hub), bus.clone()));
        bus
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        self.store.node()
    }

    /// Claims the webhook report of one event for this node: true for the first node to ask, so
    /// an event is reported once cluster-wide. The claim lasts `ttl`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub async fn claim_report(
        &self,
        channel: &ChannelName,
        event_id: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.store.claim(channel, event_id, "wh", ttl).await
    }

    /// Open streams per channel on the other live nodes.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub async fn other_connections(&self) -> Result<BTreeMap<ChannelName, usize>, StoreError> {
        let mut total = BTreeMap::new();
        for node in self.other_nodes().await? {
            let counts: HashMap<String, usize> = self
                .query(redis::cmd("HGETALL").arg(node_key(&self.store, &node, "conns")))
                .await?;
            for (channel, n) in counts {
                if let Ok(channel) = ChannelName::new(&channel) {
                    *total.entry(channel).or_default() += n;
                }
            }
        }
        Ok(total)
    }

    /// Open streams of each device of `channel` on the other live nodes.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub async fn other_streams(
        &self,
        channel: &ChannelName,
    ) -> Result<HashMap<DeviceId, usize>, StoreError> {
        let mut total = HashMap::new();
        let prefix = format!("{channel}\t");
        for node in self.other_nodes().await? {
            let streams: HashMap<String, usize> = self
                .query(redis::cmd("HGETALL").arg(node_key(&self.store, &node, "devs")))
                .await?;
            for (key, n) in streams {
                if let Some(device) = key
                    .strip_prefix(&prefix)
                    .and_then(|d| DeviceId::new(d).ok())
                {
                    *total.entry(device).or_default() += n;
                }
            }
        }
        Ok(total)
    }

    /// The ids of the nodes whose registration is alive, this one excepted.
    async fn other_nodes(&self) -> Result<Vec<String>, StoreError> {
        let now = unix_millis();
        let nodes: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(nodes_key(&self.store))
                    .arg(now)
                    .arg("+inf"),
            )
            .await?;
        Ok(nodes.into_iter().filter(|n| n != self.node()).collect())
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        cmd.query_async(&mut self.store.connection())
            .await
            .map_err(StoreError::backend)
    }
}

fn nodes_key(store: &RedisStore) -> String {
    format!("{}:nodes", store.prefix())
}

fn node_key(store: &RedisStore, node: &str, what: &str) -> String {
    format!("{{{}:node:{node}}}:{what}", store.prefix())
}

fn unix_millis() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Listens to the bus until the hub is gone, reconnecting with backoff.
async fn listen(hub: Weak<Hub<RedisStore>>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(store) = hub.upgrade().map(|h| h.store().clone()) else {
            return;
        };
        match listen_once(&hub, &store, &mut backoff).await {
            Ok(()) => return,
            // Once per outage, not once per attempt.
            Err(err) if backoff == MIN_BACKOFF => {
                tracing::warn!("bus: {err}; reconnecting with backoff")
            }
            Err(_) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection of the bus: subscribe, catch up, apply notices until the connection ends.
/// `Ok` when the hub is gone.
async fn listen_once(
    hub: &Weak<Hub<RedisStore>>,
    store: &RedisStore,
    backoff: &mut Duration,
) -> Result<(), String> {
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, store.client().get_async_pubsub())
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    pubsub
        .subscribe(store.bus_channel())
        .await
        .map_err(|e| e.to_string())?;
    // Subscribed first: whatever is recorded from now on is heard; what came before is read.
    {
        let Some(hub) = hub.upgrade() else {
            return Ok(());
        };
        hub.catch_up().await.map_err(|e| e.to_string())?;
    }
    if *backoff != MIN_BACKOFF {
        tracing::info!("bus: connected again");
    }
    *backoff = MIN_BACKOFF;
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let Some(hub) = hub.upgrade() else {
            return Ok(());
        };
        let Ok(payload) = message.get_payload::<String>() else {
            continue;
        };
        let Ok(notice) = serde_json::from_str::<Notice>(&payload) else {
            continue;
        };
        if notice.n == store.node() {
            // Applied already by the hub that recorded it.
            continue;
        }
        if let Err(err) = apply(&hub, notice).await {
            // The store failed under the hub (loading a channel): the sequencer fills the gap
            // once the store answers again.
            tracing::warn!("bus: applying a notice: {err}");
        }
    }
    Err("connection closed".to_owned())
}

async fn apply(hub: &Hub<RedisStore>, notice: Notice) -> Result<(), StoreError> {
    let Ok(channel) = ChannelName::new(&notice.c) else {
        return Ok(());
    };
    match notice.k.as_str() {
        "e" => {
            let new = NewEvent {
                publisher: notice.p.and_then(|p| DeviceId::new(&p).ok()),
                event_type: notice.y.and_then(|y| EventType::new(&y).ok()),
                body: notice.b,
                idempotency_key: notice.x,
            };
            let time = chrono::DateTime::from_timestamp_millis(notice.t).unwrap_or_default();
            let event = Arc::new(Event::new(channel.clone(), notice.i, time, new));
            hub.apply_published(&channel, event).await
        }
        "r" => {
            let Some(json) = notice.r else { return Ok(()) };
            hub.apply_receipt(&receipt_from(&channel, &json)?)
                .await
                .map(|_| ())
        }
        "m" => {
            let Some(json) = notice.m else { return Ok(()) };
            hub.apply_membership(&membership_from(&channel, &json)?)
                .await
        }
        _ => Ok(()),
    }
}

/// Registers this node's open streams every third of the time to live, until the hub is gone.
async fn heartbeat(hub: Weak<Hub<RedisStore>>, bus: Bus) {
    let period = bus.ttl / 3;
    let mut written: Option<Snapshot> = None;
    loop {
        let Some(snapshot) = hub.upgrade().map(|hub| {
            let conns: Vec<(String, usize)> = hub
                .connections()
                .into_iter()
                .map(|(c, n)| (c.to_string(), n))
                .collect();
            let mut devs: Vec<(String, usize)> = hub
                .live_streams()
                .into_iter()
                .map(|(c, d, n)| (format!("{c}\t{d}"), n))
                .collect();
            devs.sort();
            (conns, devs)
        }) else {
            return;
        };
        let changed = written.as_ref() != Some(&snapshot);
        if register(&bus, &snapshot, changed).await.is_ok() {
            written = Some(snapshot);
        } else {
            // Written again in full once Redis answers.
            written = None;
        }
        tokio::time::sleep(period).await;
    }
}

type Snapshot = (Vec<(String, usize)>, Vec<(String, usize)>);

/// Writes the registration: in full when it changed, else only its expiry.
async fn register(bus: &Bus, (conns, devs): &Snapshot, changed: bool) -> Result<(), StoreError> {
    let store = &bus.store;
    let ttl = u64::try_from(bus.ttl.as_millis()).unwrap_or(u64::MAX);
    let (conns_key, devs_key) = (
        node_key(store, bus.node(), "conns"),
        node_key(store, bus.node(), "devs"),
    );
    let mut pipe = redis::pipe();
    pipe.atomic();
    if changed {
        pipe.cmd("DEL").arg(&conns_key).arg(&devs_key).ignore();
        if !conns.is_empty() {
            pipe.cmd("HSET").arg(&conns_key).arg(conns).ignore();
        }
        if !devs.is_empty() {
            pipe.cmd("HSET").arg(&devs_key).arg(devs).ignore();
        }
    }
    pipe.cmd("PEXPIRE").arg(&conns_key).arg(ttl).ignore();
    pipe.cmd("PEXPIRE").arg(&devs_key).arg(ttl).ignore();
    let () = pipe
        .query_async(&mut store.connection())
        .await
        .map_err(StoreError::backend)?;
    let now = unix_millis();
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(nodes_key(store))
        .arg(now + ttl)
        .arg(bus.node())
        .ignore()
        // Nodes gone for a while leave the set.
        .cmd("ZREMRANGEBYSCORE")
        .arg(nodes_key(store))
        .arg("-inf")
        .arg(now.saturating_sub(ttl))
        .ignore()
        .query_async(&mut store.connection())
        .await
        .map_err(StoreError::backend)?;
    Ok(())
}
