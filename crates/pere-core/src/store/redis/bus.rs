//! The bus's Redis side: the notices the store's scripts publish on each channel's shard
//! channel (`{PREFIX:ch:NAME}:bus`), heard for exactly the channels this node's hub has loaded
//! and decoded into [`BusNotice`]s; and this node's registration in Redis under a time to live
//! (its open streams, its share of presence, the sweep of expired nodes). It knows nothing of
//! the hub: `crate::cluster` applies the notices to one, tells the bus which channels it loads
//! ([`Bus::follow`], [`Bus::unfollow`]) and feeds the registration what the hub counts.
//!
//! A channel is subscribed to before the hub reads it from the store: what is recorded after
//! that read is heard. Sharded Pub/Sub delivers a channel's notices in publish order (so in id
//! order) but only to connected listeners: after every (re)connection the listener says so
//! ([`BusNotice::Subscribed`]), and when a channel is heard again after its cluster slot moved
//! to another node, which ends its subscription, it names it ([`BusNotice::Joined`]); its user
//! then reads from the store what was recorded meanwhile.
//!
//! A node whose registration expired (killed, or cut off from Redis for longer than the time to
//! live) is swept by the first live node to notice: its share of every channel is cleared, each
//! device it alone held going offline once. A node that finds its own registration lapsed comes
//! back under a new name and writes its share again, so a sweep still under way never clears
//! what it writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use pere_proto::event::{Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId, EventType};
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::{Membership, Receipt};
use redis::{PushInfo, PushKind};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::connection::{query, Deployment, Subscriber, CONNECT_TIMEOUT};
use super::decode::{membership_from, receipt_from};
use super::nodes::unix_millis;
use super::store::RedisStore;
use crate::error::StoreError;

/// How long a node's registration lives without a heartbeat, by default: a dead node's streams
/// stop counting within this.
pub const NODE_TTL: Duration = Duration::from_secs(15);
/// The first pause before reconnecting the bus; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long connecting the bus may take (a cluster's: asking a node for the slots, then
/// connecting to each primary).
const BUS_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How many locks keep each channel's subscriptions in order: a channel's subscribe and
/// unsubscribe take the same one; different channels seldom wait for each other.
const ORDER_LOCKS: usize = 16;

/// A handle on this node's bus: the channels it hears, the cluster-wide views and claims.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    store: RedisStore,
    ttl: Duration,
    history: usize,
    follows: Arc<Follows>,
}

/// The channels this node hears, and the connection it hears them on.
#[derive(Default)]
struct Follows {
    // The shard channels of the channels the hub has loaded: subscribed to while connected.
    wanted: Mutex<HashSet<String>>,
    // The listener's connection while it has one.
    current: Mutex<Option<Subscriber>>,
    // One channel's subscribe and unsubscribe take the same lock (by its name), so that they
    // reach Redis in the order the hub loaded and unloaded the channel.
    order: [tokio::sync::Mutex<()>; ORDER_LOCKS],
    // Channels no longer wanted, for the listener to unsubscribe from.
    leaving: Mutex<HashSet<String>>,
    // Wakes the listener for `leaving`.
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Follows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follows")
            .field("wanted", &lock(&self.wanted).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Follows {
    /// The lock that orders `name`'s subscriptions.
    fn order(&self, name: &str) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        &self.order[(hasher.finish() % ORDER_LOCKS as u64) as usize]
    }

    fn current(&self) -> Option<Subscriber> {
        lock(&self.current).clone()
    }
}

impl Bus {
    /// The bus of `store`'s node, registered for `ttl` (at least a second) at each heartbeat. A
    /// sweep keeps the newest `history` presence changes of a channel, as every write of
    /// presence does.
    pub fn new(store: RedisStore, ttl: Duration, history: usize) -> Bus {
        Bus {
            store,
            ttl: ttl.max(Duration::from_secs(1)),
            history,
            follows: Arc::default(),
        }
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        self.store.node()
    }

    /// The kind of Redis deployment the bus is on.
    pub fn deployment(&self) -> Deployment {
        self.store.deployment()
    }

    /// Hears `channel` from now on: the returned future ends once Redis confirmed the
    /// subscription (so that whatever is recorded afterwards is heard), at once when the bus
    /// is not connected (it subscribes to every followed channel when it connects, and says so
    /// with [`BusNotice::Subscribed`]), or after a second at most.
    pub fn follow(&self, channel: &ChannelName) -> BoxFuture<'static, ()> {
        let name = self.store.keys().bus(channel);
        let follows = self.follows.clone();
        // Wanted before the connection is looked at: a listener connecting now either finds it
        // wanted, or is connected by the time it is looked at.
        lock(&follows.wanted).insert(name.clone());
        async move {
            let _order = follows.order(&name).lock().await;
            let Some(subscriber) = follows.current() else {
                return;
            };
            if !lock(&follows.wanted).contains(&name) {
                return;
            }
            let names = [name];
            // A failure is the connection's: the listener hears of it and subscribes again.
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, subscriber.subscribe(&names)).await;
        }
        .boxed()
    }

    /// Stops hearing `channel` (it was unloaded): the listener unsubscribes soon. Never waits.
    pub fn unfollow(&self, channel: &ChannelName) {
        let name = self.store.keys().bus(channel);
        if lock(&self.follows.wanted).remove(&name) {
            lock(&self.follows.leaving).insert(name);
            self.follows.wake.notify_one();
        }
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
        for node in self.store.nodes().other_members().await? {
            let counts: HashMap<String, usize> = self
                .query(redis::cmd("HGETALL").arg(self.store.keys().node(&node, "conns")))
                .await?;
            for (channel, n) in counts {
                if let Ok(channel) = ChannelName::new(&channel) {
                    *total.entry(channel).or_default() += n;
                }
            }
        }
        Ok(total)
    }

    /// A listener of the bus; it connects at its first [`BusListener::next`]. One per bus.
    pub fn listen(&self) -> BusListener {
        BusListener {
            bus: self.clone(),
            pushes: None,
            backoff: MIN_BACKOFF,
            pause: false,
            subscribed: false,
            rejoin: HashSet::new(),
        }
    }

    /// This node's registration, not yet made: the first [`NodeRegistration::beat`] makes it.
    pub fn registration(&self) -> NodeRegistration {
        NodeRegistration {
            bus: self.clone(),
            lapses: 0,
            known: false,
            conns: None,
            whole: true,
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        query(&self.store.connection(), cmd).await
    }
}

/// What the bus tells its listener: the changes other nodes recorded (and every presence
/// change, this node's included), and the state of its subscription.
#[derive(Debug)]
pub enum BusNotice {
    /// Subscribed, first or again, to every followed channel: everything recorded from now on
    /// is heard, and what was recorded before (while no listener was connected) must be read
    /// from the store. A listener that cannot read it says so with
    /// [`BusListener::resubscribe`].
    Subscribed,
    /// Subscribed again to these followed channels, after Redis ended their subscriptions
    /// (their cluster slot moved to another node): what was recorded on them meanwhile must be
    /// read from the store.
    Joined(Vec<ChannelName>),
    /// The connection could not be made or ended; the next [`BusListener::next`] connects
    /// again after a pause.
    Lost,
    /// An event another node appended.
    Published(Arc<Event>),
    /// A receipt another node recorded.
    Receipt(Receipt),
    /// A membership another node recorded (a device joined or left the recipients).
    Membership(Membership),
    /// A change of a device's presence on the channel, decided and numbered for the cluster
    /// by the store. Every node hears every one, its own included, so all show one history.
    Presence {
        /// The channel.
        channel: ChannelName,
        /// The change.
        change: PresenceChange,
    },
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

impl BusNotice {
    /// The notice a published `payload` carries for node `me`: `None` for one to pass over (not
    /// a notice, a name that is not valid, or a change `me` recorded and applied already).
    ///
    /// # Errors
    /// [`StoreError::Backend`] for a receipt or membership that cannot be read.
    fn decode(payload: &str, me: &str) -> Result<Option<BusNotice>, StoreError> {
        let Ok(notice) = serde_json::from_str::<Notice>(payload) else {
            return Ok(None);
        };
        if notice.n == me && notice.k != "p" {
            // Applied already by the hub that recorded it. Presence changes are applied from
            // the bus only, so every node numbers and orders them alike.
            return Ok(None);
        }
        let Ok(channel) = ChannelName::new(&notice.c) else {
            return Ok(None);
        };
        Ok(match notice.k.as_str() {
            "e" => {
                let new = NewEvent {
                    publisher: notice.p.and_then(|p| DeviceId::new(&p).ok()),
                    event_type: notice.y.and_then(|y| EventType::new(&y).ok()),
                    body: notice.b,
                    idempotency_key: notice.x,
                };
                let time = chrono::DateTime::from_timestamp_millis(notice.t).unwrap_or_default();
                Some(BusNotice::Published(Arc::new(Event::new(
                    channel, notice.i, time, new,
                ))))
            }
            "r" => match notice.r {
                Some(json) => Some(BusNotice::Receipt(receipt_from(&channel, &json)?)),
                None => None,
            },
            "m" => match notice.m {
                Some(json) => Some(BusNotice::Membership(membership_from(&channel, &json)?)),
                None => None,
            },
            "p" => DeviceId::new(&notice.d)
                .ok()
                .map(|device| BusNotice::Presence {
                    channel,
                    change: PresenceChange {
                        seq: notice.q,
                        device,
                        online: notice.o == "1",
                        at: chrono::DateTime::from_timestamp_millis(notice.t).unwrap_or_default(),
                    },
                }),
            _ => None,
        })
    }
}

/// Hears the bus: connects, subscribes to the followed channels, and does so again with backoff
/// whenever the connection is lost. Made by [`Bus::listen`].
pub struct BusListener {
    bus: Bus,
    // What the connection hears; `None` between connections.
    pushes: Option<mpsc::UnboundedReceiver<PushInfo>>,
    // The pause before the next attempt after this one fails.
    backoff: Duration,
    // Whether to pause before connecting: the last connection failed.
    pause: bool,
    // Whether `Subscribed` was given out and not yet handed back: asking for the next notice
    // says the listener read what it missed.
    subscribed: bool,
    // Followed channels whose subscription Redis ended (their slot moved to another node), to
    // subscribe to again.
    rejoin: HashSet<String>,
}

impl std::fmt::Debug for BusListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusListener")
            .field("node", &self.bus.node())
            .field("connected", &self.pushes.is_some())
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl BusListener {
    /// The next notice, in the order they were published per channel. Connects first when not
    /// connected, after a pause when the last attempt failed (from 100 ms, doubling up to
    /// 2 s), and subscribes to every followed channel; whether that works is a notice too
    /// ([`BusNotice::Subscribed`] or [`BusNotice::Lost`]). Asking for the next notice after
    /// [`BusNotice::Subscribed`] says that what was recorded before was read: an outage is
    /// over then. Meanwhile it unsubscribes from the channels no longer followed.
    pub async fn next(&mut self) -> BusNotice {
        if std::mem::take(&mut self.subscribed) {
            if self.backoff != MIN_BACKOFF {
                tracing::info!("bus: connected again");
            }
            self.backoff = MIN_BACKOFF;
        }
        let follows = self.bus.follows.clone();
        let Some(subscriber) = self.pushes.as_ref().and(follows.current()) else {
            return self.connect().await;
        };
        loop {
            if let Err(err) = self.leave(&subscriber).await {
                self.resubscribe(err);
                return BusNotice::Lost;
            }
            if !self.rejoin.is_empty() {
                return match self.rejoin(&subscriber).await {
                    Ok(channels) if channels.is_empty() => continue,
                    Ok(channels) => BusNotice::Joined(channels),
                    Err(err) => {
                        self.resubscribe(err);
                        BusNotice::Lost
                    }
                };
            }
            let Some(pushes) = self.pushes.as_mut() else {
                return BusNotice::Lost;
            };
            let push = tokio::select! {
                push = pushes.recv() => push,
                () = follows.wake.notified() => continue,
            };
            let Some(push) = push else {
                self.resubscribe("connection closed");
                return BusNotice::Lost;
            };
            match push.kind {
                PushKind::SMessage => {
                    let Some(msg) = redis::Msg::from_push_info(push) else {
                        continue;
                    };
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    match BusNotice::decode(&payload, self.bus.node()) {
                        Ok(Some(notice)) => return notice,
                        Ok(None) => {}
                        // A gap the hub's sequencer fills from the store, as for a notice lost.
                        Err(err) => tracing::warn!("bus: applying a notice: {err}"),
                    }
                }
                // Redis ends the subscriptions of a slot that moves to another node; the
                // listener's own unsubscribing is answered so too, for a channel not wanted.
                PushKind::SUnsubscribe => {
                    let name = push
                        .data
                        .first()
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok());
                    if let Some(name) = name.filter(|n| lock(&follows.wanted).contains(n)) {
                        self.rejoin.insert(name);
                    }
                }
                PushKind::Disconnection => {
                    self.resubscribe("connection closed");
                    return BusNotice::Lost;
                }
                _ => {}
            }
        }
    }

    /// Connects, then subscribes to every followed channel.
    async fn connect(&mut self) -> BusNotice {
        if std::mem::take(&mut self.pause) {
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        let follows = self.bus.follows.clone();
        let made =
            tokio::time::timeout(BUS_CONNECT_TIMEOUT, self.bus.store.target().subscriber()).await;
        let (subscriber, pushes) = match made {
            Ok(Ok(made)) => made,
            Ok(Err(err)) => {
                self.resubscribe(err);
                return BusNotice::Lost;
            }
            Err(_) => {
                self.resubscribe("connecting timed out");
                return BusNotice::Lost;
            }
        };
        // Published before the followed channels are listed: a channel followed from now on
        // is either listed here or subscribed to by `Bus::follow` on this connection.
        *lock(&follows.current) = Some(subscriber.clone());
        lock(&follows.leaving).clear();
        self.rejoin.clear();
        let wanted: Vec<String> = lock(&follows.wanted).iter().cloned().collect();
        match tokio::time::timeout(BUS_CONNECT_TIMEOUT, subscriber.subscribe(&wanted)).await {
            Ok(Ok(())) => {
                self.pushes = Some(pushes);
                self.subscribed = true;
                BusNotice::Subscribed
            }
            Ok(Err(err)) => {
                self.resubscribe(err);
                BusNotice::Lost
            }
            Err(_) => {
                self.resubscribe("subscribing timed out");
                BusNotice::Lost
            }
        }
    }

    /// Unsubscribes from the channels no longer followed.
    async fn leave(&mut self, subscriber: &Subscriber) -> redis::RedisResult<()> {
        let follows = self.bus.follows.clone();
        let leaving: Vec<String> = lock(&follows.leaving).drain().collect();
        for name in leaving {
            let _order = follows.order(&name).lock().await;
            // Followed again meanwhile: subscribed to again, in order, by `Bus::follow`.
            if !lock(&follows.wanted).contains(&name) {
                subscriber.unsubscribe(std::slice::from_ref(&name)).await?;
            }
        }
        Ok(())
    }

    /// Subscribes again to the followed channels whose subscription Redis ended; returns them.
    async fn rejoin(&mut self, subscriber: &Subscriber) -> redis::RedisResult<Vec<ChannelName>> {
        let follows = self.bus.follows.clone();
        let mut joined = Vec::new();
        for name in std::mem::take(&mut self.rejoin) {
            let _order = follows.order(&name).lock().await;
            if lock(&follows.wanted).contains(&name) {
                subscriber.subscribe(std::slice::from_ref(&name)).await?;
                joined.extend(self.bus.store.keys().channel_of_bus(&name));
            }
        }
        Ok(joined)
    }

    /// Drops the connection, to connect again after a pause: the listener could not read what
    /// it missed (`err`), or the connection failed. Logged once per outage.
    pub fn resubscribe(&mut self, err: impl std::fmt::Display) {
        if self.backoff == MIN_BACKOFF {
            tracing::warn!("bus: {err}; reconnecting with backoff");
        }
        self.pushes = None;
        lock(&self.bus.follows.current).take();
        self.subscribed = false;
        self.pause = true;
    }
}

/// This node's registration in Redis as the heartbeat keeps it: its name in `PREFIX:nodes`, its
/// open streams per channel and its share of presence. Made by [`Bus::registration`].
#[derive(Debug)]
pub struct NodeRegistration {
    bus: Bus,
    /// How many times the registration lapsed: the node registers as `NODE.lapses`.
    lapses: u64,
    /// Whether the current name was registered (a beat under it succeeded).
    known: bool,
    /// The open streams per channel as last written; `None`: to be written in full.
    conns: Option<Vec<(String, usize)>>,
    /// Whether the next presence write replaces this node's whole share (at start, after an
    /// error, after a lapse) rather than the devices that changed.
    whole: bool,
}

impl NodeRegistration {
    /// Whether this node is registered under its current name: its presence may be written.
    pub fn is_registered(&self) -> bool {
        self.known
    }

    /// Whether the next [`NodeRegistration::write_presence`] writes this node's whole share
    /// (every live stream) rather than the devices that changed.
    pub fn writes_whole(&self) -> bool {
        self.whole
    }

    /// Redis did not answer: what was written may be stale, so everything is written again.
    pub fn lost(&mut self) {
        self.conns = None;
        self.whole = true;
    }

    fn member(&self) -> String {
        self.bus.store.nodes().member(self.lapses)
    }

    /// One heartbeat: registers this node (under a new name if its registration lapsed),
    /// writes its open streams per channel (`connections`, asked once registered), and sweeps
    /// the nodes whose registration expired. Returns how long until the next one: a third of
    /// the time to live, or sooner when another node expires before that, to sweep it in time.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub async fn beat(
        &mut self,
        connections: impl FnOnce() -> Vec<(ChannelName, usize)>,
    ) -> Result<Duration, StoreError> {
        let bus = self.bus.clone();
        let nodes = bus.store.nodes();
        let keys = bus.store.keys();
        let ttl = u64::try_from(bus.ttl.as_millis()).unwrap_or(u64::MAX);
        let now = unix_millis();
        if nodes
            .beat(&self.member(), now, now + ttl, self.known)
            .await?
        {
            tracing::warn!(
                "bus: this node's registration lapsed (no heartbeat for {:?}); registering again",
                bus.ttl
            );
            // Listed as expired, so that a sweep clears whatever it wrote under the old name,
            // even after another node's sweep removed it.
            let _: () = bus
                .query(
                    redis::cmd("ZADD")
                        .arg(keys.nodes())
                        .arg(0)
                        .arg(self.member()),
                )
                .await?;
            self.lapses += 1;
            self.known = false;
            self.lost();
            nodes.beat(&self.member(), now, now + ttl, false).await?;
        }
        self.known = true;

        let conns: Vec<(String, usize)> = connections()
            .into_iter()
            .map(|(c, n)| (c.to_string(), n))
            .collect();
        let changed = self.conns.as_ref() != Some(&conns);
        nodes
            .set_conns(&self.member(), changed.then_some(&conns[..]), ttl)
            .await?;
        self.conns = Some(conns);

        let registered: Vec<(String, f64)> = bus
            .query(
                redis::cmd("ZRANGE")
                    .arg(keys.nodes())
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let mut wait = bus.ttl / 3;
        let mine = self.member();
        for (node, expiry) in registered {
            // Scores are whole milliseconds.
            let expiry = expiry as u64;
            // This node's earlier name, after a lapse, waits until its share is written again
            // under the new one: its devices' totals then never pass through 0.
            if node == mine || (self.whole && nodes.is_mine(&node)) {
                continue;
            }
            if expiry < now {
                bus.sweep(&node).await?;
            } else {
                // Swept as soon as it expires: a dead node's devices go offline within the TTL.
                wait = wait.min(Duration::from_millis(expiry - now + 1));
            }
        }
        Ok(wait)
    }

    /// Writes this node's count of streams per device (`streams`) into each channel's presence:
    /// the devices that changed, or, when [`NodeRegistration::writes_whole`], every live one,
    /// every channel this node wrote before and holds no stream on now being cleared.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub async fn write_presence(
        &mut self,
        streams: Vec<(ChannelName, DeviceId, usize)>,
    ) -> Result<(), StoreError> {
        let bus = &self.bus;
        let member = self.member();
        let index = bus.store.keys().node(&member, "chans");
        let mut by_channel: BTreeMap<ChannelName, Vec<(DeviceId, usize)>> = BTreeMap::new();
        for (channel, device, streams) in streams {
            by_channel
                .entry(channel)
                .or_default()
                .push((device, streams));
        }
        let whole = self.whole;
        if whole {
            let written: Vec<String> = bus.query(redis::cmd("SMEMBERS").arg(&index)).await?;
            for name in written {
                if let Ok(channel) = ChannelName::new(&name) {
                    by_channel.entry(channel).or_default();
                }
            }
        }
        for (channel, streams) in by_channel {
            // Listed before anything is written under it, so a sweep finds every channel.
            let _: () = bus
                .query(redis::cmd("SADD").arg(&index).arg(channel.as_str()))
                .await?;
            let left = bus
                .store
                .nodes()
                .set_presence(&member, &channel, &streams, whole, bus.history)
                .await?;
            if left == 0 {
                let _: () = bus
                    .query(redis::cmd("SREM").arg(&index).arg(channel.as_str()))
                    .await?;
            }
        }
        self.whole = false;
        Ok(())
    }
}

impl Bus {
    /// Clears the share of presence of a node whose registration expired, channel by channel,
    /// and then the node itself. Each channel's clearing is one script, which finds nothing to
    /// clear when another node swept it first: every device goes offline once.
    async fn sweep(&self, node: &str) -> Result<(), StoreError> {
        let keys = self.store.keys();
        let index = keys.node(node, "chans");
        let channels: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(&index)).await?;
        for name in &channels {
            if let Ok(channel) = ChannelName::new(name) {
                self.store
                    .nodes()
                    .set_presence(node, &channel, &[], true, self.history)
                    .await?;
            }
            let _: () = self.query(redis::cmd("SREM").arg(&index).arg(name)).await?;
        }
        let left: usize = self.query(redis::cmd("SCARD").arg(&index)).await?;
        if left == 0 {
            let _: () = self
                .query(redis::cmd("ZREM").arg(keys.nodes()).arg(node))
                .await?;
            let _: () = self
                .query(redis::cmd("DEL").arg(keys.node(node, "conns")))
                .await?;
        }
        if !channels.is_empty() {
            tracing::info!("bus: node {node} expired; its streams no longer count");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(payload: &str) -> Option<BusNotice> {
        BusNotice::decode(payload, "me").expect("a notice that can be read")
    }

    #[test]
    fn another_nodes_changes_are_decoded_and_this_nodes_passed_over_but_presence() {
        let event =
            r#"{"n":"other","k":"e","c":"C","i":7,"t":1000,"b":"hi","p":"P1","y":"note","x":"k1"}"#;
        let Some(BusNotice::Published(event)) = decode(event) else {
            panic!("an event");
        };
        assert_eq!(
            (
                event.channel.as_str(),
                event.id,
                event.time.timestamp_millis()
            ),
            ("C", 7, 1000)
        );
        assert_eq!(event.idempotency_key.as_deref(), Some("k1"));
        assert!(decode(r#"{"n":"me","k":"e","c":"C","i":8,"t":1000,"b":"x"}"#).is_none());

        let receipt = r#"{"n":"other","k":"r","c":"C","r":"{\"q\":3,\"e\":7,\"d\":\"H1\",\"s\":\"ok\",\"t\":1000}"}"#;
        let Some(BusNotice::Receipt(receipt)) = decode(receipt) else {
            panic!("a receipt");
        };
        assert_eq!(
            (receipt.seq, receipt.event_id, receipt.device.as_str()),
            (3, 7, "H1")
        );

        let membership = r#"{"n":"other","k":"m","c":"C","m":"{\"d\":\"H1\",\"j\":7,\"s\":1000}"}"#;
        assert!(matches!(
            decode(membership),
            Some(BusNotice::Membership(m)) if m.joined_after == 7 && m.left_after.is_none()
        ));

        // Applied from the bus only, this node's own included.
        let presence = r#"{"n":"me","k":"p","c":"C","q":2,"d":"H1","o":"1","t":1000}"#;
        let Some(BusNotice::Presence { channel, change }) = decode(presence) else {
            panic!("a presence change");
        };
        assert_eq!(
            (channel.as_str(), change.seq, change.online),
            ("C", 2, true)
        );
    }

    #[test]
    fn what_is_not_a_notice_is_passed_over() {
        for payload in [
            "not JSON",
            r#"{"n":"other","k":"e","c":"bad name!","i":1,"t":0,"b":""}"#,
            r#"{"n":"other","k":"z","c":"C"}"#,
            r#"{"n":"other","k":"p","c":"C","q":1,"d":"","o":"1","t":0}"#,
        ] {
            assert!(decode(payload).is_none(), "{payload}");
        }
        let unreadable = r#"{"n":"other","k":"r","c":"C","r":"{}"}"#;
        assert!(BusNotice::decode(unreadable, "me").is_err());
    }
}
