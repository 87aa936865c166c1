//! The hub: local fan-out of published events to live subscribers, resume from a position with no
//! gap and no duplicate, device presence, and the receipt ledger's operations.
//!
//! Ordering: the store gives ids in order, but concurrent appends may finish in any order. Each
//! channel has a small sequencer that releases events to subscribers strictly by id, so every
//! subscriber sees a channel's events in id order.
//!
//! When an id never comes (its append was lost), the events behind it wait at most
//! [`GAP_WAIT`]: the sequencer then reads the gap from the store, releases what it finds and
//! skips the rest.
//!
//! Record, then apply: every change is first recorded in the store, then applied to this node's
//! live state by one `apply_*` method per kind of change ([`Hub::apply_published`],
//! [`Hub::apply_receipt`], [`Hub::apply_membership`], [`Hub::apply_presence`]), which a node can
//! also call for changes another node recorded.
//!
//! Presence is this node's own: a device's first stream opening here is "online", its last one
//! closing "offline", numbered by the hub. Nodes sharing a store share it instead
//! ([`Hub::share_presence`], which the Redis bus turns on): the hub hands out its count of
//! streams per device ([`Hub::presence_updates`]) and takes the changes the store decided for the
//! cluster, numbered there, through [`Hub::apply_presence`].
//!
//! Channels are loaded on first use (head and current recipients from the store) and unloaded
//! once nothing uses them for [`HubConfig::idle_channel`] ([`Hub::unload_idle`], run by a task
//! of the hub's): memory follows the channels in use, not every name ever touched. A
//! [`ChannelWatch`] hears of both, so that a bus can bring in what other nodes record on
//! exactly the loaded channels.
//!
//! A feed waits on its queue alone: the hub reaches idle feeds itself, so that a feed holds no
//! timer or shutdown wait of its own. One task of the hub's marks every quiet feed for a
//! keep-alive ([`HubConfig::keep_alive`], [`Hub::sweep_quiet_feeds`]), and a node that stops
//! cuts every feed ([`Hub::end_feeds`]).
//!
//! The resume seam: a subscriber is registered under the channel lock and, in the same critical
//! section, reads the id of the last event released (`snapshot`). Every event after `snapshot`
//! reaches it live; every event up to `snapshot` is replayed from the store. No event is in both
//! sets and none is in neither.
//!
//! Rooms: `channel` (a loaded channel and its sequencer), `publish` (publishing, applying
//! events, gaps, catch-up), `devices` (recipients, presence, device views), `receipts`
//! (receipts, waits, summaries, followers) and `subscribe` (subscriptions: replay, live,
//! redelivery). Each adds methods to [`Hub`]; `channel` is the floor the others stand on.
//! `recover` is what a node does when its store changed under it: it adopts the store above
//! every id it handed out, and every open feed of a loaded channel hears `pere-reset`.

mod channel;
mod devices;
mod publish;
mod receipts;
mod recover;
mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::Membership;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::follow::ReceiptReplays;
use crate::ledger::ChannelLedger;
use crate::notice::{HubNotice, NoticeQueue, Observer, Observers};
use crate::store::Store;

use channel::{ChannelHub, ChannelState};
pub use channel::{CutReason, DirectWrite};
use devices::LiveDevice;
pub use receipts::Cumulative;
pub use subscribe::{FeedItem, SubscribeRequest, Subscription};

/// Tuning of a [`Hub`].
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Events queued for one subscriber before it counts as too slow and is cut off (it then
    /// resumes with `Last-Event-ID` and loses nothing).
    pub subscriber_buffer: usize,
    /// Events read from the store per replay step.
    pub replay_page: usize,
    /// Redelivery: an event delivered to a device that owes a receipt for it and has not sent
    /// one within this time is sent again on the same stream, with the same id. `None`: off.
    pub ack_timeout: Option<Duration>,
    /// How many times an event is sent on one stream at most, the first time included.
    pub max_deliveries: u32,
    /// How long a channel nobody uses (no feed, no receipt or presence follower, no waiting
    /// push, no publish in flight) stays in memory before it is unloaded; see [`IDLE_CHANNEL`].
    pub idle_channel: Duration,
    /// A channel whose ledger still waits for receipts of an event published less than this long
    /// ago stays loaded, so that the event's completion is noticed live (the webhook, the
    /// receipt stream). Set it to at least the webhook's receipt timeout; see [`KEEP_INCOMPLETE`].
    pub keep_incomplete: Duration,
    /// Keep-alives: a feed given nothing for about this long hears [`FeedItem::KeepAlive`], then
    /// one every period while it stays quiet. One task of the hub's visits every feed twice a
    /// period (see [`Hub::sweep_quiet_feeds`]), so the first comes after half to one whole
    /// period of silence, never later. `None`: none (the task does not run).
    pub keep_alive: Option<Duration>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            subscriber_buffer: 1024,
            replay_page: 256,
            ack_timeout: None,
            max_deliveries: 5,
            idle_channel: IDLE_CHANNEL,
            keep_incomplete: KEEP_INCOMPLETE,
            keep_alive: None,
        }
    }
}

/// How long an unused channel stays loaded by default. Anyone can touch any channel name, so a
/// channel must leave memory on its own; a minute spares a channel used now and then (a
/// reconnecting phone, a periodic publisher) the store reads of loading it again, and keeps what
/// a flood of fresh names can hold to what it touched in the last minute or so.
pub const IDLE_CHANNEL: Duration = Duration::from_secs(60);
/// How long, by default, a channel stays loaded for an event still owed receipts: the server's
/// default receipt timeout (60 s) with room to spare. Past it, a late completion is not noticed
/// live; the store still has every receipt and the summary says complete.
pub const KEEP_INCOMPLETE: Duration = Duration::from_secs(300);
/// How long events may wait behind a missing id before the sequencer reads the gap from the
/// store, releases what it finds there and skips the ids it does not. A missing id is nearly
/// always an append still finishing (ids are given in order and an event is applied only once
/// stored, so a later event's arrival means the earlier one is committed or lost); one that has
/// not come after this long was lost on the way (its publishing task died, a bus dropped it) and
/// must not hold the channel's subscribers back forever. Long enough that a busy writer is never
/// overtaken, short enough that a stall is a hiccup, not an outage.
pub const GAP_WAIT: Duration = Duration::from_secs(2);

/// Told of each channel the hub loads and unloads, so that what other nodes record reaches the
/// hub for exactly the loaded channels (the Redis bus hears those: `crate::cluster`).
pub trait ChannelWatch: Send + Sync + std::fmt::Debug + 'static {
    /// `channel` is about to be loaded: the future ends once whatever is recorded on it from
    /// now on reaches the hub, or the watch cannot wait longer. The hub reads the channel from
    /// the store afterwards, so nothing recorded in between is missed. A load that fails
    /// leaves the channel watched: whatever is heard of it loads it, and it is unloaded when
    /// idle.
    fn loading(&self, channel: &ChannelName) -> BoxFuture<'static, ()>;
    /// `channel` was unloaded. Called under the hub's lock, in the order of the loads and
    /// unloads: it must not wait.
    fn unloaded(&self, channel: &ChannelName);
}

/// The local fan-out engine over a [`Store`].
#[derive(Debug)]
pub struct Hub<S> {
    store: S,
    config: HubConfig,
    // Loaded channels. One is unloaded (`unload_idle`) only when nothing but this map holds it:
    // a publish holds its channel across the store append, so none is in flight then, and a
    // channel loaded again reads a head that every released event is under (a second
    // sequencer beside a publish still holding the first would hold later events back for
    // `GAP_WAIT`).
    channels: Mutex<HashMap<ChannelName, Arc<ChannelHub>, ahash::RandomState>>,
    // Bumped (under the `channels` lock) whenever a channel is unloaded: a load that read the
    // store before an unload reads it again, so it never installs a state older than the one
    // unloaded.
    unloads: AtomicU64,
    // The greatest presence `seq` an unloaded channel had given out: a channel loaded again
    // numbers its changes above it, so a presence follower resuming from an earlier life of the
    // channel misses nothing new.
    presence_floor: AtomicU64,
    // What `ChannelHub::last_used` counts from (tokio's clock, which tests can pause).
    epoch: Instant,
    // Whether the hub's tasks (the reaper of idle channels, the keep-alive sweep) run.
    tasks_started: AtomicBool,
    // Set by `end_feeds`: a feed subscribing from then on is ended at once.
    feeds_ended: AtomicBool,
    // Told of every load and unload (see `Hub::watch_channels`).
    watch: OnceLock<Arc<dyn ChannelWatch>>,
    live_devices: Mutex<HashMap<(ChannelName, DeviceId), Arc<LiveDevice>, ahash::RandomState>>,
    // Presence shared through the store (see `Hub::share_presence`): the devices whose count of
    // streams on this node changed since `presence_updates` last took them, and the wake-up of
    // whoever writes them to the store.
    shared_presence: AtomicBool,
    presence_dirty: Mutex<std::collections::HashSet<(ChannelName, DeviceId)>>,
    presence_wake: Arc<tokio::sync::Notify>,
    next_subscriber: AtomicU64,
    observers: Observers,
    // The greatest event id this node applied: what it may have handed out (see `recover`).
    high_water: AtomicU64,
    // Set while the node adopts a store that changed under it; writes wait for it.
    adopting: AtomicBool,
    // Receipt followers' turns at reading the store.
    receipt_replays: ReceiptReplays,
    // The hub itself, for the gap timers, which outlive the call that starts them and must not
    // keep a dropped hub alive.
    me: Weak<Hub<S>>,
}

impl<S: Store> Hub<S> {
    /// A hub over `store`.
    pub fn new(store: S, config: HubConfig) -> Arc<Self> {
        Arc::new_cyclic(|me| Hub {
            store,
            config,
            channels: Mutex::default(),
            unloads: AtomicU64::new(0),
            presence_floor: AtomicU64::new(0),
            epoch: Instant::now(),
            tasks_started: AtomicBool::new(false),
            feeds_ended: AtomicBool::new(false),
            watch: OnceLock::new(),
            live_devices: Mutex::default(),
            shared_presence: AtomicBool::new(false),
            presence_dirty: Mutex::default(),
            presence_wake: Arc::default(),
            next_subscriber: AtomicU64::new(1),
            observers: Observers::default(),
            high_water: AtomicU64::new(0),
            receipt_replays: ReceiptReplays::default(),
            adopting: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    /// Adds an observer: it hears every [`HubNotice`] from now on, at the moment the hub
    /// applies the change (see [`Observer`]). Any number may listen: a log, metrics, a
    /// webhook, dashboards.
    pub fn add_observer(&self, observer: Arc<dyn Observer>) {
        self.observers.add(observer);
    }

    /// A new queued observer: every [`HubNotice`] from now on, queued up to `capacity` for a
    /// task to read. One that falls behind loses the notices it has no room for, counted in
    /// [`Hub::dropped_notices`]: publishing and receipts never wait for an observer. Dropping
    /// the receiver ends the observation.
    pub fn observe(&self, capacity: usize) -> mpsc::Receiver<HubNotice> {
        let (queue, rx) = NoticeQueue::new(capacity, true);
        self.observers.add(Arc::new(queue));
        rx
    }

    /// As [`Hub::observe`], without [`HubNotice::Published`]: for an observer that needs no
    /// notice per event (it reads [`Hub::published`] instead), so that publishing builds and
    /// queues nothing for it.
    pub fn observe_except_published(&self, capacity: usize) -> mpsc::Receiver<HubNotice> {
        let (queue, rx) = NoticeQueue::new(capacity, false);
        self.observers.add(Arc::new(queue));
        rx
    }

    /// Events published since the hub started: new events only, not the answers to a repeated
    /// idempotency key, and each event once even if it is applied again.
    pub fn published(&self) -> u64 {
        self.observers.published()
    }

    /// Notices lost by observers that had no room for them, since the hub started, all
    /// observers together.
    pub fn dropped_notices(&self) -> u64 {
        self.observers.dropped()
    }

    /// Events handed to subscriber streams since the hub started: each live event once per
    /// subscriber it reached, and each replayed event once per stream that replayed it
    /// (redeliveries are not counted here).
    pub fn deliveries(&self) -> u64 {
        self.observers.delivered()
    }

    /// Events sent again on a stream because their receipt was overdue (see
    /// [`HubConfig::ack_timeout`]), since the hub started.
    pub fn redeliveries(&self) -> u64 {
        self.observers.redelivered()
    }

    /// Events still owed receipts by their expected recipients, among the events each loaded
    /// channel follows live (the last [`TRACKED_EVENTS`](crate::ledger::TRACKED_EVENTS) of it).
    pub fn incomplete_events(&self) -> usize {
        let loaded: Vec<Arc<ChannelHub>> = {
            let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            channels.values().cloned().collect()
        };
        loaded
            .iter()
            .map(|hub| hub.ledger().incomplete_count())
            .sum()
    }

    /// Tells `watch` of every channel loaded and unloaded from now on (once: a second watch is
    /// refused, returned back). Call it before the hub loads any channel.
    ///
    /// # Errors
    /// The watch given, when one watches already.
    pub fn watch_channels(
        &self,
        watch: Arc<dyn ChannelWatch>,
    ) -> Result<(), Arc<dyn ChannelWatch>> {
        self.watch.set(watch)
    }

    /// Whether `channel` is loaded (in memory) now.
    pub fn is_loaded(&self, channel: &ChannelName) -> bool {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(channel)
    }

    /// The store behind this hub.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Milliseconds since the hub started, on tokio's clock.
    fn clock(&self) -> u64 {
        millis(Instant::now().saturating_duration_since(self.epoch))
    }

    /// Every loaded channel, as it is now.
    fn all_loaded(&self) -> Vec<Arc<ChannelHub>> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The channel's state if it is loaded, marked as used now.
    fn loaded(&self, name: &ChannelName) -> Option<Arc<ChannelHub>> {
        let hub = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()?;
        hub.last_used.store(self.clock(), Ordering::Relaxed);
        Some(hub)
    }

    /// The channel's state, loaded from the store if it is not in memory.
    async fn channel(&self, name: &ChannelName) -> Result<Arc<ChannelHub>, StoreError> {
        loop {
            let unloads = self.unloads.load(Ordering::SeqCst);
            if let Some(hub) = self.loaded(name) {
                return Ok(hub);
            }
            // Every append goes through a loaded channel, which stays loaded while the append
            // is in flight, so none is in flight now and the store's head is exactly what has
            // been released. Waits and completion notices of events published before an unload
            // are answered from the store (`wait_for_receipts`, `receipt_summary`).
            if let Some(watch) = self.watch.get() {
                // Watched before it is read: what is recorded after the read is heard.
                watch.loading(name).await;
            }
            let head = self.store.head(name).await?;
            let recipients: Vec<Membership> = self
                .store
                .memberships(name)
                .await?
                .into_iter()
                .filter(Membership::is_current)
                .collect();
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hub) = channels.get(name) {
                hub.last_used.store(self.clock(), Ordering::Relaxed);
                return Ok(hub.clone());
            }
            if self.unloads.load(Ordering::SeqCst) != unloads {
                // An unload came between the reads and now; they may predate its last changes.
                continue;
            }
            let hub = Arc::new(ChannelHub {
                name: name.clone(),
                state: Mutex::new(ChannelState::new(head)),
                subscriber_count: AtomicUsize::new(0),
                ledger: Mutex::new(ChannelLedger::new(name.clone(), recipients)),
                receipts: OnceLock::new(),
                presence: OnceLock::new(),
                presence_floor: self.presence_floor.load(Ordering::SeqCst),
                last_used: AtomicU64::new(self.clock()),
                last_published: AtomicU64::new(0),
            });
            channels.insert(name.clone(), hub.clone());
            drop(channels);
            self.start_tasks();
            return Ok(hub);
        }
    }

    /// How many channels are loaded (in memory) now.
    pub fn loaded_channels(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Unloads every channel that nothing uses and that has not been used for
    /// [`HubConfig::idle_channel`]; returns how many went. A task of the hub's runs it every
    /// quarter of that period, so a channel leaves memory between one and one and a quarter
    /// periods after its last use.
    pub fn unload_idle(&self) -> usize {
        let now = self.clock();
        let idle = millis(self.config.idle_channel);
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let before = channels.len();
        let mut floor = 0;
        let watch = self.watch.get();
        let mut unloaded = Vec::new();
        channels.retain(|name, hub| {
            if hub.in_use(now, self.config.keep_incomplete) {
                // Idle time counts from when the last use ended.
                hub.last_used.store(now, Ordering::Relaxed);
                return true;
            }
            if now.saturating_sub(hub.last_used.load(Ordering::Relaxed)) < idle {
                return true;
            }
            floor = floor.max(hub.presence.get().map_or(0, |log| log.seq()));
            if let Some(watch) = watch {
                watch.unloaded(name);
            }
            unloaded.push(name.clone());
            false
        });
        let gone = before - channels.len();
        if gone > 0 {
            self.presence_floor.fetch_max(floor, Ordering::SeqCst);
            self.unloads.fetch_add(1, Ordering::SeqCst);
            // A burst of fresh channels left a large table behind.
            if channels.capacity() > 2 * channels.len() + 64 {
                channels.shrink_to_fit();
            }
        }
        drop(channels);
        // Outside the lock: the store's memory of a channel is a cache, dropped whenever, and a
        // channel loaded again meanwhile only reads back what it needs.
        for name in &unloaded {
            self.store.channel_unloaded(name);
        }
        gone
    }

    /// Visits every feed of every loaded channel for keep-alives: a feed given nothing since
    /// the last visit, with nothing queued, is handed [`FeedItem::KeepAlive`], which counts as
    /// something given. A task of the hub's calls it twice every [`HubConfig::keep_alive`].
    ///
    /// Why one sweep and not a timer per feed: a timer is room in every feed's task (a tokio
    /// `Sleep` is over 100 bytes) and an entry in the runtime's timer wheel, for each of
    /// possibly a million idle feeds; the sweep costs a lock of each inbox per visit.
    pub fn sweep_quiet_feeds(&self) {
        for channel in self.all_loaded() {
            channel.sweep_quiet();
        }
    }

    /// Ends every feed, now and from now on: each reads what is queued for it, then ends with
    /// [`CutReason::Stopping`]. For a node that stops: its feeds need no shutdown wait of their
    /// own.
    pub fn end_feeds(&self) {
        // Set before any channel's lock is taken below; `subscribe` reads it under that lock.
        self.feeds_ended.store(true, Ordering::SeqCst);
        for channel in self.all_loaded() {
            channel.cut_all(CutReason::Stopping);
        }
    }

    /// Starts, once, the hub's tasks: the one that unloads idle channels and, when keep-alives
    /// are on, the keep-alive sweep. They hold the hub weakly and end with it.
    fn start_tasks(&self) {
        if self.tasks_started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.tasks_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let me = self.me.clone();
        let period = (self.config.idle_channel / 4).max(Duration::from_millis(10));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(this) = me.upgrade() else { return };
                this.unload_idle();
            }
        });
        if let Some(keep_alive) = self.config.keep_alive {
            let me = self.me.clone();
            // Two visits a period: a feed's silence before its keep-alive is then between half
            // a period and one, never longer than asked.
            let visit_every = (keep_alive / 2).max(Duration::from_millis(10));
            runtime.spawn(async move {
                let mut visits = tokio::time::interval(visit_every);
                visits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The first tick is at once.
                visits.tick().await;
                loop {
                    visits.tick().await;
                    let Some(this) = me.upgrade() else { return };
                    this.sweep_quiet_feeds();
                }
            });
        }
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "sqlite")]
    use crate::store::conformance::{body, ch};
    #[cfg(feature = "sqlite")]
    use crate::store::sqlite::{SqliteOptions, SqliteStore};
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_device_leaves_the_live_map_with_its_last_stream() {
        let hub = Hub::new(MemoryStore::default(), HubConfig::default());
        let (c, device) = (ChannelName::new("C").unwrap(), DeviceId::new("H1").unwrap());
        let request = SubscribeRequest {
            device: Some(device.clone()),
            ..SubscribeRequest::default()
        };
        let first = hub.subscribe(&c, request.clone()).await.unwrap();
        let second = hub.subscribe(&c, request).await.unwrap();
        let live = || hub.live_devices.lock().unwrap().len();
        assert_eq!(live(), 1);
        drop(first);
        assert_eq!(live(), 1, "still online on its second stream");
        drop(second);
        assert_eq!(live(), 0);
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn unloading_a_channel_empties_the_stores_memory_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
        let hub: Arc<Hub<SqliteStore>> = Hub::new(
            store.clone(),
            HubConfig {
                idle_channel: Duration::from_secs(60),
                ..HubConfig::default()
            },
        );
        let c = ch("C");
        for text in ["1", "2", "3"] {
            hub.publish(&c, body(text)).await.unwrap();
        }
        assert_eq!(store.channels_in_memory(), ["C"]);
        // Idle long enough: unloaded by this call or by the hub's own task.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(120)).await;
        hub.unload_idle();
        assert!(!hub.is_loaded(&c));
        store.settle().await;
        assert_eq!(store.channels_in_memory(), Vec::<String>::new());
        // Loaded again from the database: the next id follows.
        assert_eq!(hub.publish(&c, body("4")).await.unwrap().event.id, 4);
        let page = store.read(&c, 0, 10).await.unwrap();
        assert_eq!(
            (page.first_retained, page.head, page.events.len()),
            (1, 4, 4)
        );
    }
}
