//! The bus: what links the nodes that share one Redis. It feeds the changes other nodes record
//! (events, receipts, memberships, published as notices by the Redis store's scripts) into this
//! node's hub through its `apply_*` seam, and keeps this node registered in Redis under a time
//! to live: its open streams, so every node can add up the whole cluster's connections, and its
//! share of presence.
//!
//! Notices go over Redis Pub/Sub, which delivers in publish order (so in id order per channel)
//! but only to connected listeners: after every (re)connection the bus catches up from the
//! store ([`Hub::catch_up`]), and a notice lost in between is a gap the hub's sequencer fills
//! from the store.
//!
//! Presence is the cluster's: the bus writes how many streams each device has on this node
//! ([`Hub::presence_updates`]); the store's script decides when a device goes online (its first
//! stream on any node) or offline (its last), numbers the change for the channel and publishes
//! it, and every node, this one included, applies it from the bus ([`Hub::apply_presence`]),
//! so all show the same changes in the same order. A node whose registration expired (killed,
//! or cut off from Redis for longer than the time to live) is swept by the first live node to
//! notice: its share of every channel is cleared, each device it alone held going offline once.
//! A node that finds its own registration lapsed comes back under a new name and writes its
//! share again, so a sweep still under way never clears what it writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use pere_proto::event::{Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId, EventType};
use pere_proto::presence::PresenceChange;
use serde::Deserialize;

use crate::error::StoreError;
use crate::follow::PRESENCE_HISTORY;
use crate::hub::Hub;
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
/// How soon a registration that Redis refused is tried again: presence written during an
/// outage shows about this long after Redis is back.
const RETRY: Duration = Duration::from_secs(1);

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
    /// What changed: `e` event, `r` receipt, `m` membership, `p` presence.
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
    // A presence change: its seq, device and state ('1' online).
    #[serde(default)]
    q: u64,
    #[serde(default)]
    d: String,
    #[serde(default)]
    o: String,
}

impl Bus {
    /// Starts the bus of `hub`'s node, which from now on shares presence through the store
    /// ([`Hub::share_presence`]): the listener that applies other nodes' changes (and every
    /// presence change), and the heartbeat that registers this node's open streams for `ttl`
    /// and sweeps expired nodes. Both tasks end when the hub is dropped. Call it before any
    /// stream opens.
    pub fn start(hub: &Arc<Hub<RedisStore>>, ttl: Duration) -> Bus {
        let bus = Bus {
            store: hub.store().clone(),
            ttl: ttl.max(Duration::from_secs(1)),
        };
        hub.share_presence();
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
        for node in self.store.other_members().await? {
            let counts: HashMap<String, usize> = self
                .query(redis::cmd("HGETALL").arg(member_key(&self.store, &node, "conns")))
                .await?;
            for (channel, n) in counts {
                if let Ok(channel) = ChannelName::new(&channel) {
                    *total.entry(channel).or_default() += n;
                }
            }
        }
        Ok(total)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        cmd.query_async(&mut self.store.connection())
            .await
            .map_err(StoreError::backend)
    }
}

/// A key of one registration (`member`: a node's name in the set of nodes).
fn member_key(store: &RedisStore, member: &str, what: &str) -> String {
    format!("{{{}:node:{member}}}:{what}", store.prefix())
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
        if notice.n == store.node() && notice.k != "p" {
            // Applied already by the hub that recorded it. Presence changes are applied from
            // here only, so every node numbers and orders them alike.
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
        "p" => {
            let Ok(device) = DeviceId::new(&notice.d) else {
                return Ok(());
            };
            let change = PresenceChange {
                seq: notice.q,
                device,
                online: notice.o == "1",
                at: chrono::DateTime::from_timestamp_millis(notice.t).unwrap_or_default(),
            };
            hub.apply_presence(&channel, change).await.map(|_| ())
        }
        _ => Ok(()),
    }
}

/// This node's registration as the heartbeat keeps it.
#[derive(Debug, Default)]
struct Registration {
    /// How many times the registration lapsed: the node registers as `NODE.lapses`
    /// ([`RedisStore::member`]).
    lapses: u64,
    /// Whether the current name was registered (a beat under it succeeded).
    known: bool,
    /// The open streams per channel as last written; `None`: to be written in full.
    conns: Option<Vec<(String, usize)>>,
    /// Whether the next presence write replaces this node's whole share (at start, after an
    /// error, after a lapse) rather than the devices that changed.
    whole: bool,
}

impl Registration {
    fn member(&self, bus: &Bus) -> String {
        bus.store.member(self.lapses)
    }

    /// Redis did not answer: what was written may be stale, so everything is written again.
    fn lost(&mut self) {
        self.conns = None;
        self.whole = true;
    }
}

/// Registers this node every third of the time to live (sooner when another node's
/// registration expires before that, to sweep it in time) and writes its presence as it changes,
/// until the hub is gone.
async fn heartbeat(hub: Weak<Hub<RedisStore>>, bus: Bus) {
    let Some(wake) = hub.upgrade().map(|hub| hub.presence_wake()) else {
        return;
    };
    let mut me = Registration {
        whole: true,
        ..Registration::default()
    };
    let mut next_beat = tokio::time::Instant::now();
    let mut failing = false;
    loop {
        let Some(strong) = hub.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut outcome = Ok(());
        if now >= next_beat {
            match beat(&strong, &bus, &mut me).await {
                Ok(wait) => next_beat = now + wait,
                Err(err) => {
                    next_beat = now + RETRY;
                    outcome = Err(err);
                }
            }
        }
        if outcome.is_ok() && me.known {
            outcome = write_presence(&strong, &bus, &mut me).await;
            if outcome.is_err() {
                next_beat = next_beat.min(now + RETRY);
            }
        }
        drop(strong);
        match outcome {
            // Once per outage, not once per attempt.
            Err(err) if !failing => {
                tracing::warn!("bus: registering this node: {err}; trying again");
                failing = true;
                me.lost();
            }
            Err(_) => me.lost(),
            Ok(()) if failing => {
                tracing::info!("bus: this node is registered again");
                failing = false;
            }
            Ok(()) => {}
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_beat) => {}
            () = wake.notified() => {}
        }
    }
}

/// One heartbeat: registers this node (under a new name if its registration lapsed), writes its
/// open streams per channel, and sweeps the nodes whose registration expired. Returns how long
/// until the next one.
async fn beat(
    hub: &Hub<RedisStore>,
    bus: &Bus,
    me: &mut Registration,
) -> Result<Duration, StoreError> {
    let store = &bus.store;
    let ttl = u64::try_from(bus.ttl.as_millis()).unwrap_or(u64::MAX);
    let now = unix_millis();
    if store
        .beat(&me.member(bus), now, now + ttl, me.known)
        .await?
    {
        tracing::warn!(
            "bus: this node's registration lapsed (no heartbeat for {:?}); registering again",
            bus.ttl
        );
        // Listed as expired, so that a sweep clears whatever it wrote under the old name, even
        // after another node's sweep removed it.
        let _: () = bus
            .query(
                redis::cmd("ZADD")
                    .arg(store.nodes_key())
                    .arg(0)
                    .arg(me.member(bus)),
            )
            .await?;
        me.lapses += 1;
        me.known = false;
        me.lost();
        store.beat(&me.member(bus), now, now + ttl, false).await?;
    }
    me.known = true;

    let conns: Vec<(String, usize)> = hub
        .connections()
        .into_iter()
        .map(|(c, n)| (c.to_string(), n))
        .collect();
    let conns_key = member_key(store, &me.member(bus), "conns");
    let mut pipe = redis::pipe();
    pipe.atomic();
    if me.conns.as_ref() != Some(&conns) {
        pipe.cmd("DEL").arg(&conns_key).ignore();
        if !conns.is_empty() {
            pipe.cmd("HSET").arg(&conns_key).arg(&conns).ignore();
        }
    }
    pipe.cmd("PEXPIRE").arg(&conns_key).arg(ttl).ignore();
    let () = pipe
        .query_async(&mut store.connection())
        .await
        .map_err(StoreError::backend)?;
    me.conns = Some(conns);

    let nodes: Vec<(String, f64)> = bus
        .query(
            redis::cmd("ZRANGE")
                .arg(store.nodes_key())
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
        .await?;
    let mut wait = bus.ttl / 3;
    let mine = me.member(bus);
    for (node, expiry) in nodes {
        // Scores are whole milliseconds.
        let expiry = expiry as u64;
        // This node's earlier name, after a lapse, waits until its share is written again
        // under the new one: its devices' totals then never pass through 0.
        if node == mine || (me.whole && store.is_mine(&node)) {
            continue;
        }
        if expiry < now {
            sweep(bus, &node).await?;
        } else {
            // Swept as soon as it expires: a dead node's devices go offline within the TTL.
            wait = wait.min(Duration::from_millis(expiry - now + 1));
        }
    }
    Ok(wait)
}

/// Clears the share of presence of a node whose registration expired, channel by channel, and
/// then the node itself. Each channel's clearing is one script, which finds nothing to clear
/// when another node swept it first: every device goes offline once.
async fn sweep(bus: &Bus, node: &str) -> Result<(), StoreError> {
    let store = &bus.store;
    let index = member_key(store, node, "chans");
    let channels: Vec<String> = bus.query(redis::cmd("SMEMBERS").arg(&index)).await?;
    for name in &channels {
        if let Ok(channel) = ChannelName::new(name) {
            store
                .set_presence(node, &channel, &[], true, PRESENCE_HISTORY)
                .await?;
        }
        let _: () = bus.query(redis::cmd("SREM").arg(&index).arg(name)).await?;
    }
    let left: usize = bus.query(redis::cmd("SCARD").arg(&index)).await?;
    if left == 0 {
        let _: () = bus
            .query(redis::cmd("ZREM").arg(store.nodes_key()).arg(node))
            .await?;
        let _: () = bus
            .query(redis::cmd("DEL").arg(member_key(store, node, "conns")))
            .await?;
    }
    if !channels.is_empty() {
        tracing::info!("bus: node {node} expired; its streams no longer count");
    }
    Ok(())
}

/// Writes this node's count of streams per device into each channel's presence: the devices that
/// changed, or the whole share when `me.whole` asks for it.
async fn write_presence(
    hub: &Hub<RedisStore>,
    bus: &Bus,
    me: &mut Registration,
) -> Result<(), StoreError> {
    let mut by_channel: BTreeMap<ChannelName, Vec<(DeviceId, usize)>> = BTreeMap::new();
    let changed = hub.presence_updates();
    let whole = me.whole;
    if whole {
        // Written in full below, the changes included.
        for (channel, device, streams) in hub.live_streams() {
            by_channel
                .entry(channel)
                .or_default()
                .push((device, streams));
        }
        // Channels this node wrote before and holds no stream on now: cleared.
        let written: Vec<String> = bus
            .query(redis::cmd("SMEMBERS").arg(member_key(&bus.store, &me.member(bus), "chans")))
            .await?;
        for name in written {
            if let Ok(channel) = ChannelName::new(&name) {
                by_channel.entry(channel).or_default();
            }
        }
    } else {
        for (channel, device, streams) in changed {
            by_channel
                .entry(channel)
                .or_default()
                .push((device, streams));
        }
    }
    let member = me.member(bus);
    let index = member_key(&bus.store, &member, "chans");
    for (channel, streams) in by_channel {
        // Listed before anything is written under it, so a sweep finds every channel.
        let _: () = bus
            .query(redis::cmd("SADD").arg(&index).arg(channel.as_str()))
            .await?;
        let left = bus
            .store
            .set_presence(&member, &channel, &streams, whole, PRESENCE_HISTORY)
            .await?;
        if left == 0 {
            let _: () = bus
                .query(redis::cmd("SREM").arg(&index).arg(channel.as_str()))
                .await?;
        }
    }
    me.whole = false;
    Ok(())
}
