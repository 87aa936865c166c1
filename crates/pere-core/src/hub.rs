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
//! of the hub's): memory follows the channels in use, not every name ever touched.
//!
//! The resume seam: a subscriber is registered under the channel lock and, in the same critical
//! section, reads the id of the last event released (`snapshot`). Every event after `snapshot`
//! reaches it live; every event up to `snapshot` is replayed from the store. No event is in both
//! sets and none is in neither.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pere_proto::event::{now, Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::{Completion, ReceiptSummary};
use pere_proto::receipt::{DeviceOp, DeviceRecord, DeviceTouch, Membership, Receipt};
use pere_proto::view::{ChannelView, DeviceView};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::follow::{PresenceFollow, PresenceLog, ReceiptFollow, ReceiptLive};
use crate::ledger::{ChannelLedger, WaitFor};
use crate::notice::{HubNotice, Observers};
use crate::store::{Appended, RecordedReceipt, Store};

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
    /// Called once per event as it is applied, before any subscriber can have it: a log written
    /// here shows each event before anything a subscriber does with it (its receipt).
    pub on_publish: Option<fn(&Event)>,
    /// How long a channel nobody uses (no feed, no receipt or presence follower, no waiting
    /// push, no publish in flight) stays in memory before it is unloaded; see [`IDLE_CHANNEL`].
    pub idle_channel: Duration,
    /// A channel whose ledger still waits for receipts of an event published less than this long
    /// ago stays loaded, so that the event's completion is noticed live (the webhook, the
    /// receipt stream). Set it to at least the webhook's receipt timeout; see [`KEEP_INCOMPLETE`].
    pub keep_incomplete: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            subscriber_buffer: 1024,
            replay_page: 256,
            ack_timeout: None,
            max_deliveries: 5,
            on_publish: None,
            idle_channel: IDLE_CHANNEL,
            keep_incomplete: KEEP_INCOMPLETE,
        }
    }
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Default)]
pub struct SubscribeRequest {
    /// The subscribing device; `None` for an anonymous listener (no presence, no receipts).
    pub device: Option<DeviceId>,
    /// An explicit resume position (`Last-Event-ID`): deliver events after it.
    pub last_event_id: Option<u64>,
    /// The resume header as the client sent it, for the device record.
    pub last_event_id_raw: Option<String>,
}

/// One item of a feed.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// An event.
    Event(Arc<Event>),
    /// An event sent again because its receipt is overdue; the number is which send this is.
    Redelivery(Arc<Event>, u32),
    /// The client resumed from `requested`, beyond this server's last id `head`: the server's
    /// history was lost (a memory store restarted, a data directory replaced), ids start over,
    /// and replay begins at the oldest retained event.
    Reset {
        /// The position the client asked for.
        requested: u64,
        /// The channel's last id.
        head: u64,
    },
    /// Events `from..=to` were asked for but are no longer retained.
    Gap {
        /// First missing id.
        from: u64,
        /// Last missing id.
        to: u64,
    },
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
    channels: Mutex<HashMap<ChannelName, Arc<ChannelHub>>>,
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
    // Whether the task that unloads idle channels runs.
    reaper: AtomicBool,
    live_devices: Mutex<HashMap<(ChannelName, DeviceId), Arc<LiveDevice>>>,
    // Presence shared through the store (see `Hub::share_presence`): the devices whose count of
    // streams on this node changed since `presence_updates` last took them, and the wake-up of
    // whoever writes them to the store.
    shared_presence: AtomicBool,
    presence_dirty: Mutex<std::collections::HashSet<(ChannelName, DeviceId)>>,
    presence_wake: Arc<tokio::sync::Notify>,
    next_subscriber: AtomicU64,
    observers: Observers,
    // The hub itself, for the gap timers, which outlive the call that starts them and must not
    // keep a dropped hub alive.
    me: Weak<Hub<S>>,
}

#[derive(Debug)]
struct ChannelHub {
    name: ChannelName,
    state: Mutex<ChannelState>,
    subscriber_count: AtomicUsize,
    // Apart from `state`, so receipts never contend with fan-out.
    ledger: Mutex<ChannelLedger>,
    // Made when first needed and growing only with use: most channels are never followed.
    receipts: OnceLock<Arc<ReceiptLive>>,
    presence: OnceLock<Arc<PresenceLog>>,
    // Where this channel's presence numbering starts (see `Hub::presence_floor`).
    presence_floor: u64,
    // Milliseconds from `Hub::epoch` to the last use; refreshed by every load and by the reaper
    // while something holds the channel.
    last_used: AtomicU64,
    // When the newest event was applied, in the same milliseconds.
    last_published: AtomicU64,
}

impl Drop for ChannelHub {
    fn drop(&mut self) {
        // Only the hub's own end drops a channel that is followed: the followers end.
        if let Some(live) = self.receipts.get() {
            live.close();
        }
        if let Some(log) = self.presence.get() {
            log.close();
        }
    }
}

impl ChannelHub {
    fn ledger(&self) -> std::sync::MutexGuard<'_, ChannelLedger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn presence_log(&self) -> &Arc<PresenceLog> {
        self.presence
            .get_or_init(|| Arc::new(PresenceLog::new(self.presence_floor)))
    }

    fn receipt_live(&self) -> &Arc<ReceiptLive> {
        self.receipts.get_or_init(Default::default)
    }

    fn presence_changed(&self, device: &DeviceId, online: bool) -> PresenceChange {
        self.presence_log().record(|seq| PresenceChange {
            seq,
            device: device.clone(),
            online,
            at: now(),
        })
    }

    /// Whether something besides the hub's map uses this channel, or its ledger still waits for
    /// receipts of an event published within `keep_incomplete` (as of `now`). Called under
    /// the map's lock, where no new use can begin.
    fn in_use(self: &Arc<Self>, now: u64, keep_incomplete: Duration) -> bool {
        let followed = |count: Option<usize>| count.is_some_and(|n| n > 1);
        if Arc::strong_count(self) > 1
            || followed(self.receipts.get().map(Arc::strong_count))
            || followed(self.presence.get().map(Arc::strong_count))
        {
            return true;
        }
        let published = self.last_published.load(Ordering::Relaxed);
        now.saturating_sub(published) < millis(keep_incomplete) && self.ledger().incomplete()
    }
}

#[derive(Debug)]
struct ChannelState {
    last_released: u64,
    // Appended events waiting for a smaller id to be released first.
    waiting: BTreeMap<u64, Arc<Event>>,
    // Since when `waiting` has made no progress; `None` while it is empty.
    stalled_since: Option<Instant>,
    // Whether a gap timer watches `waiting` (one per channel at most).
    gap_timer: bool,
    subscribers: HashMap<u64, SubscriberSlot>,
}

#[derive(Debug)]
struct SubscriberSlot {
    tx: mpsc::Sender<Arc<Event>>,
    lagged: Arc<Cut>,
    // For the notice when it is cut.
    device: Option<DeviceId>,
}

/// Set once, when the hub cuts a subscriber that fell too far behind.
#[derive(Debug, Default)]
struct Cut {
    flag: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Cut {
    fn cut(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    fn is_cut(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// Live presence of a device on this node: how many streams, how far deliveries got.
#[derive(Debug, Default)]
struct LiveDevice {
    streams: AtomicUsize,
    delivered: AtomicU64,
}

impl ChannelHub {
    fn state(&self) -> std::sync::MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases `event` to subscribers in id order. Returns true when events now wait behind a
    /// missing id and no gap timer watches them yet: the caller starts one.
    fn release(&self, event: Arc<Event>, observers: &Observers) -> bool {
        let mut state = self.state();
        if event.id <= state.last_released {
            return false;
        }
        // In order, as nearly always: straight out, no reordering map.
        if event.id == state.last_released + 1 && state.waiting.is_empty() {
            self.fan_out(&mut state, event, observers);
            return false;
        }
        state.waiting.insert(event.id, event);
        self.drain(&mut state, observers)
    }

    /// Releases the waiting events that are next in line and restarts the stall clock when that
    /// made progress. Returns true when a gap timer is needed and none runs (it counts as
    /// running from now on).
    fn drain(&self, state: &mut ChannelState, observers: &Observers) -> bool {
        let before = state.last_released;
        loop {
            let next = state.last_released + 1;
            let Some(event) = state.waiting.remove(&next) else {
                break;
            };
            self.fan_out(state, event, observers);
        }
        if state.waiting.is_empty() {
            state.stalled_since = None;
            return false;
        }
        if state.stalled_since.is_none() || state.last_released != before {
            state.stalled_since = Some(Instant::now());
        }
        !std::mem::replace(&mut state.gap_timer, true)
    }

    fn fan_out(&self, state: &mut ChannelState, event: Arc<Event>, observers: &Observers) {
        state.last_released = event.id;
        let mut cut = Vec::new();
        for (&id, slot) in &state.subscribers {
            if slot.tx.try_send(event.clone()).is_err() {
                // Full or closed: end this stream. The client resumes from its last event id.
                slot.lagged.cut();
                cut.push(id);
                observers.send(|| HubNotice::SubscriberCut {
                    channel: self.name.clone(),
                    device: slot.device.clone(),
                    event_id: event.id,
                });
            }
        }
        observers.count_delivered(state.subscribers.len() - cut.len());
        if !cut.is_empty() {
            for id in cut {
                state.subscribers.remove(&id);
            }
            self.subscriber_count
                .store(state.subscribers.len(), Ordering::Relaxed);
        }
    }
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
            reaper: AtomicBool::new(false),
            live_devices: Mutex::default(),
            shared_presence: AtomicBool::new(false),
            presence_dirty: Mutex::default(),
            presence_wake: Arc::default(),
            next_subscriber: AtomicU64::new(1),
            observers: Observers::default(),
            me: me.clone(),
        })
    }

    /// A new observer: every [`HubNotice`] from now on, queued up to `capacity`. Any number of
    /// observers may listen (a webhook, metrics, a dashboard). One that falls behind loses the
    /// notices it has no room for, counted in [`Hub::dropped_notices`]: publishing and receipts
    /// never wait for an observer. Dropping the receiver ends the observation.
    pub fn observe(&self, capacity: usize) -> mpsc::Receiver<HubNotice> {
        self.observers.add(capacity, true)
    }

    /// As [`Hub::observe`], without [`HubNotice::Published`]: for an observer that needs no
    /// notice per event (it reads [`Hub::published`] instead), so that publishing builds and
    /// queues nothing for it.
    pub fn observe_except_published(&self, capacity: usize) -> mpsc::Receiver<HubNotice> {
        self.observers.add(capacity, false)
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

    /// A page of the channels the store knows (names after `after`, at most `limit`, in name
    /// order), each with its open streams on this node, head, retained events and current
    /// recipients.
    ///
    /// # Errors
    /// The store's error when it cannot be read.
    pub async fn channels_page(
        &self,
        after: Option<&ChannelName>,
        limit: usize,
    ) -> Result<Vec<ChannelView>, StoreError> {
        let mut names = self.store.channels().await?;
        names.retain(|name| after.is_none_or(|after| name > after));
        names.truncate(limit);
        let streams: HashMap<ChannelName, usize> = self.connections().into_iter().collect();
        let mut page = Vec::with_capacity(names.len());
        for channel in names {
            // Nothing after the head: only the head and the oldest retained id are read.
            let bounds = self.store.read(&channel, u64::MAX, 0).await?;
            let memberships = self.store.memberships(&channel).await?;
            page.push(ChannelView {
                open_streams: streams.get(&channel).copied().unwrap_or(0),
                head: bounds.head,
                retained: (bounds.head + 1).saturating_sub(bounds.first_retained.max(1)),
                recipients: memberships
                    .iter()
                    .filter(|m| m.left_after.is_none())
                    .count(),
                channel,
            });
        }
        Ok(page)
    }

    /// The store behind this hub.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Milliseconds since the hub started, on tokio's clock.
    fn clock(&self) -> u64 {
        millis(Instant::now().saturating_duration_since(self.epoch))
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
                state: Mutex::new(ChannelState {
                    last_released: head,
                    waiting: BTreeMap::new(),
                    stalled_since: None,
                    gap_timer: false,
                    subscribers: HashMap::new(),
                }),
                subscriber_count: AtomicUsize::new(0),
                ledger: Mutex::new(ChannelLedger::new(recipients)),
                receipts: OnceLock::new(),
                presence: OnceLock::new(),
                presence_floor: self.presence_floor.load(Ordering::SeqCst),
                last_used: AtomicU64::new(self.clock()),
                last_published: AtomicU64::new(0),
            });
            channels.insert(name.clone(), hub.clone());
            drop(channels);
            self.start_reaper();
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
        channels.retain(|_, hub| {
            if hub.in_use(now, self.config.keep_incomplete) {
                // Idle time counts from when the last use ended.
                hub.last_used.store(now, Ordering::Relaxed);
                return true;
            }
            if now.saturating_sub(hub.last_used.load(Ordering::Relaxed)) < idle {
                return true;
            }
            floor = floor.max(hub.presence.get().map_or(0, |log| log.seq()));
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
        gone
    }

    /// Starts, once, the task that unloads idle channels. It holds the hub weakly and ends
    /// with it.
    fn start_reaper(&self) {
        if self.reaper.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.reaper.swap(true, Ordering::Relaxed) {
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
    }

    /// Appends an event to the store, then applies it (see [`Hub::apply_published`]): delivers
    /// it to the channel's live subscribers. Returns once the event is stored, with its id and
    /// time. An event whose idempotency key the channel already holds is not stored again: the
    /// stored one is returned with [`Appended::new`] false, and nothing else happens (no
    /// delivery, no ledger change, no notice).
    ///
    /// # Errors
    /// The store's error when the append fails; nothing is delivered then.
    pub async fn publish(
        self: &Arc<Self>,
        channel: &ChannelName,
        event: NewEvent,
    ) -> Result<Appended, StoreError> {
        let hub = self.channel(channel).await?;
        let this = self.clone();
        // Append and release run to completion even if the caller goes away: an event the store
        // accepted but the sequencer never saw would hold back later events for `GAP_WAIT`.
        let mut work = Box::pin(async move {
            let appended = this.store.append(&hub.name, event).await?;
            if appended.new {
                this.apply_published_to(&hub, appended.event.clone());
            }
            Ok(appended)
        });
        // Most appends (the memory store's) finish at the first poll and need no task of their
        // own; the others are handed to one, so they finish even if the caller goes away.
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            return result;
        }
        let task = tokio::spawn(work);
        match task.await {
            Ok(result) => result,
            Err(join) => Err(StoreError::Backend(Box::new(join))),
        }
    }

    /// Publishes several events to one channel, in order, all or none (see
    /// [`Store::append_batch`]): the new events get consecutive ids and are delivered to live
    /// subscribers in that order, each as [`Hub::publish`] would. Returns one [`Appended`] per
    /// event, in the order given; events answered from an existing key are not delivered again.
    ///
    /// # Errors
    /// The store's error when the batch is refused or fails; nothing is stored or delivered then.
    pub async fn publish_batch(
        self: &Arc<Self>,
        channel: &ChannelName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>, StoreError> {
        let hub = self.channel(channel).await?;
        let this = self.clone();
        // As in `publish`: run to completion even if the caller goes away.
        let mut work = Box::pin(async move {
            let appended = this.store.append_batch(&hub.name, events).await?;
            for event in appended.iter().filter(|a| a.new) {
                this.apply_published_to(&hub, event.event.clone());
            }
            Ok(appended)
        });
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            return result;
        }
        match tokio::spawn(work).await {
            Ok(result) => result,
            Err(join) => Err(StoreError::Backend(Box::new(join))),
        }
    }

    /// Applies an event recorded in the store (by this node's [`Hub::publish`] or by another
    /// node): the ledger follows it, the sequencer releases it to live subscribers in id order,
    /// observers hear of it. Applying an event twice changes nothing the second time.
    ///
    /// # Errors
    /// The store's error when the channel's state cannot be loaded.
    pub async fn apply_published(
        &self,
        channel: &ChannelName,
        event: Arc<Event>,
    ) -> Result<(), StoreError> {
        let hub = self.channel(channel).await?;
        self.apply_published_to(&hub, event);
        Ok(())
    }

    fn apply_published_to(&self, hub: &Arc<ChannelHub>, event: Arc<Event>) {
        let id = event.id;
        hub.last_published.store(self.clock(), Ordering::Relaxed);
        // Followed before it is released, so no receipt can arrive before the ledger knows it.
        let tracked = hub.ledger().track(id, event.time);
        if let (Some(_), Some(on_publish)) = (tracked, self.config.on_publish) {
            on_publish(&event);
        }
        // Released even when followed already: the sequencer ignores what it released before,
        // and a gap fill must not skip an event whose own apply is still on its way.
        if hub.release(event, &self.observers) {
            self.start_gap_timer(hub);
        }
        if let Some(expected) = tracked {
            self.observers.count_published();
            self.observers.send_per_event(|| HubNotice::Published {
                channel: hub.name.clone(),
                event_id: id,
                expected,
            });
        }
    }

    /// Watches the events waiting behind a missing id of `hub` until none wait: each time they
    /// have waited [`GAP_WAIT`], the gap is read from the store, what is found is applied and
    /// the rest skipped.
    fn start_gap_timer(&self, hub: &Arc<ChannelHub>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime, no timer: the gap waits for its event as it did before timers.
            hub.state().gap_timer = false;
            return;
        };
        let (me, hub) = (self.me.clone(), hub.clone());
        runtime.spawn(async move {
            loop {
                let deadline = {
                    let mut state = hub.state();
                    let Some(since) = state.stalled_since else {
                        state.gap_timer = false;
                        return;
                    };
                    since + GAP_WAIT
                };
                if Instant::now() < deadline {
                    tokio::time::sleep_until(deadline).await;
                    continue;
                }
                let Some(this) = me.upgrade() else { return };
                this.fill_gap(&hub).await;
            }
        });
    }

    /// Releases what the store holds between the last released event and the first waiting
    /// one, and skips the ids it does not hold.
    async fn fill_gap(&self, hub: &Arc<ChannelHub>) {
        let (mut after, first_waiting) = {
            let state = hub.state();
            match state.waiting.keys().next() {
                Some(&first) => (state.last_released, first),
                None => return,
            }
        };
        while after + 1 < first_waiting {
            let limit = self
                .config
                .replay_page
                .min((first_waiting - after - 1) as usize);
            // A store that cannot be read now has nothing to give: the ids are skipped like
            // missing ones, and subscribers that resume read them later.
            let Ok(page) = self.store.read(&hub.name, after, limit).await else {
                break;
            };
            let found: Vec<Arc<Event>> = page
                .events
                .into_iter()
                .filter(|e| e.id < first_waiting)
                .collect();
            let Some(last) = found.last() else { break };
            after = last.id;
            for event in found {
                self.apply_published_to(hub, event);
            }
        }
        let mut state = hub.state();
        if state.last_released + 1 < first_waiting {
            state.last_released = first_waiting - 1;
        }
        // Asks for no new timer: the one running this is it.
        hub.drain(&mut state, &self.observers);
    }

    /// Opens a subscription: replay from the resume position, then live events.
    ///
    /// The position is `request.last_event_id` when given; else, for a device already known on the
    /// channel, the last event it acknowledged; else the start of the retained history. A position
    /// beyond the channel's last id (a client of an earlier, forgotten history) starts from the
    /// beginning as well.
    ///
    /// # Errors
    /// The store's error when the device record or history cannot be read.
    pub async fn subscribe(
        self: &Arc<Self>,
        channel: &ChannelName,
        request: SubscribeRequest,
    ) -> Result<Subscription<S>, StoreError> {
        let hub = self.channel(channel).await?;
        let mut after = request.last_event_id;
        if let Some(device) = &request.device {
            if after.is_none() {
                after = self
                    .store
                    .device(channel, device)
                    .await?
                    .map(|d| d.last_acked);
            }
            self.store
                .touch_device(DeviceTouch {
                    channel: channel.clone(),
                    device: device.clone(),
                    op: DeviceOp::Feed,
                    at: now(),
                    last_event_id: request.last_event_id_raw.clone(),
                    delivered: 0,
                })
                .await?;
        }
        let mut explicit = after.is_some_and(|a| a > 0);
        let mut after = after.unwrap_or(0);
        // Heads only grow, so a position beyond the head read now was never given out here.
        let head = self.store.head(channel).await?;
        let mut reset = None;
        if after > head {
            reset = Some(FeedItem::Reset {
                requested: after,
                head,
            });
            after = 0;
            explicit = false;
        }

        if let Some(device) = &request.device {
            self.add_recipient(&hub, channel, device).await?;
        }
        let live = request.device.as_ref().map(|device| {
            let mut devices = self.live_devices.lock().unwrap_or_else(|e| e.into_inner());
            let live = devices
                .entry((channel.clone(), device.clone()))
                .or_default()
                .clone();
            let first = live.streams.fetch_add(1, Ordering::Relaxed) == 0;
            if self.shares_presence() {
                self.presence_touched(channel, device);
            } else if first {
                self.apply_presence_to(&hub, device, true);
            }
            live
        });

        let (tx, rx) = mpsc::channel(self.config.subscriber_buffer);
        let lagged = Arc::new(Cut::default());
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let snapshot = {
            let mut state = hub.state();
            let device = request.device.clone();
            state.subscribers.insert(
                id,
                SubscriberSlot {
                    tx,
                    lagged: lagged.clone(),
                    device,
                },
            );
            hub.subscriber_count
                .store(state.subscribers.len(), Ordering::Relaxed);
            state.last_released
        };
        Ok(Subscription {
            hub: self.clone(),
            channel_hub: hub,
            channel: channel.clone(),
            device: request.device,
            live,
            id,
            rx,
            lagged,
            replay_next: after,
            replay_until: snapshot,
            skip_live_through: after,
            replayed: VecDeque::new(),
            report_gaps: explicit,
            in_flight: VecDeque::new(),
            reset,
        })
    }

    async fn add_recipient(
        &self,
        hub: &ChannelHub,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Membership, StoreError> {
        if let Some(current) = hub.ledger().recipient(device) {
            return Ok(current.clone());
        }
        let membership = self.store.add_recipient(channel, device, now()).await?;
        self.apply_membership_to(hub, &membership);
        Ok(membership)
    }

    /// Applies a membership recorded in the store (by this node or another): a current one makes
    /// its device a recipient in the channel's ledger, an ended one ends it there (events
    /// published while it lasted keep expecting the device). Observers hear of it.
    ///
    /// # Errors
    /// The store's error when the channel's state cannot be loaded.
    pub async fn apply_membership(&self, membership: &Membership) -> Result<(), StoreError> {
        let hub = self.channel(&membership.channel).await?;
        self.apply_membership_to(&hub, membership);
        Ok(())
    }

    fn apply_membership_to(&self, hub: &ChannelHub, membership: &Membership) {
        {
            let mut ledger = hub.ledger();
            if membership.is_current() {
                ledger.join(membership.clone());
            } else {
                ledger.leave(Some(membership.clone()), &membership.device);
            }
        }
        self.observers
            .send(|| HubNotice::Membership(membership.clone()));
    }

    /// Applies a presence change numbered by the store, when presence is shared (see
    /// [`Hub::share_presence`]; every node, the one whose stream caused it included, hears it
    /// from the bus): it goes into the channel's presence history and stream, and observers hear
    /// of it. A change heard before (at or below the newest `seq` of the channel's history)
    /// changes nothing. A channel that is not loaded keeps no history: it reads it from the
    /// store when loaded. Returns whether the change was new here.
    ///
    /// Without shared presence, this node's own streams make the changes (a device's first stream
    /// opening, its last one closing), numbered by the hub.
    ///
    /// # Errors
    /// The store's error when the channel's history cannot be read.
    pub async fn apply_presence(
        &self,
        channel: &ChannelName,
        change: PresenceChange,
    ) -> Result<bool, StoreError> {
        let notify = |change: PresenceChange| {
            self.observers.send(|| HubNotice::Presence {
                channel: channel.clone(),
                change,
            });
        };
        let Some(hub) = self.loaded(channel) else {
            notify(change);
            return Ok(false);
        };
        let log = self.presence_log_of(&hub).await?;
        if !log.record_numbered(change.clone()) {
            return Ok(false);
        }
        notify(change);
        Ok(true)
    }

    /// The channel's presence history: with shared presence, read from the store when the
    /// channel first needs it, so a node shows the changes of every node, by the store's
    /// numbering.
    async fn presence_log_of(&self, hub: &ChannelHub) -> Result<Arc<PresenceLog>, StoreError> {
        if let Some(log) = hub.presence.get() {
            return Ok(log.clone());
        }
        if self.shares_presence() {
            if let Some(changes) = self.store.presence_after(&hub.name, 0).await? {
                // Two first readers: the first log installed wins; each then records its change.
                return Ok(hub
                    .presence
                    .get_or_init(|| Arc::new(PresenceLog::seeded(changes)))
                    .clone());
            }
        }
        Ok(hub.presence_log().clone())
    }

    /// Makes presence shared through the store: from now on, this node's streams no longer
    /// make presence changes themselves; the count of each device's streams here is handed out
    /// by [`Hub::presence_updates`] (the bus writes it to the store, which decides, for all
    /// nodes, when a device goes online or offline) and the changes come back through
    /// [`Hub::apply_presence`]. Called once, before any stream opens.
    pub fn share_presence(&self) {
        self.shared_presence.store(true, Ordering::SeqCst);
    }

    fn shares_presence(&self) -> bool {
        self.shared_presence.load(Ordering::Relaxed)
    }

    /// Notes that `device`'s count of streams on `channel` changed here, for the next
    /// [`Hub::presence_updates`].
    fn presence_touched(&self, channel: &ChannelName, device: &DeviceId) {
        self.presence_dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((channel.clone(), device.clone()));
        // A permit is kept when nobody waits: no update is left unwritten.
        self.presence_wake.notify_one();
    }

    /// With shared presence: the devices whose streams on this node changed since the last call,
    /// each with its count now (0: none left), in no order.
    pub fn presence_updates(&self) -> Vec<(ChannelName, DeviceId, usize)> {
        let touched = std::mem::take(
            &mut *self
                .presence_dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let devices = self.live_devices.lock().unwrap_or_else(|e| e.into_inner());
        touched
            .into_iter()
            .map(|key| {
                let streams = devices
                    .get(&key)
                    .map_or(0, |live| live.streams.load(Ordering::Relaxed));
                (key.0, key.1, streams)
            })
            .collect()
    }

    /// Woken when [`Hub::presence_updates`] has something (at least once per change; it may
    /// find nothing new). It holds no hub, so a task waiting on it lets the hub go.
    pub fn presence_wake(&self) -> Arc<tokio::sync::Notify> {
        self.presence_wake.clone()
    }

    fn apply_presence_to(
        &self,
        hub: &ChannelHub,
        device: &DeviceId,
        online: bool,
    ) -> PresenceChange {
        let change = hub.presence_changed(device, online);
        self.observers.send(|| HubNotice::Presence {
            channel: hub.name.clone(),
            change: change.clone(),
        });
        change
    }

    /// Makes `device` a recipient of the channel (idempotent): it is expected to acknowledge
    /// every event published from now on.
    ///
    /// # Errors
    /// The store's error when it cannot be written.
    pub async fn register(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Membership, StoreError> {
        let hub = self.channel(channel).await?;
        self.store
            .touch_device(DeviceTouch {
                channel: channel.clone(),
                device: device.clone(),
                op: DeviceOp::Register,
                at: now(),
                last_event_id: None,
                delivered: 0,
            })
            .await?;
        self.add_recipient(&hub, channel, device).await
    }

    /// Ends `device`'s membership: events published from now on no longer expect it. Events
    /// already published keep it in their expected set. Returns the ended membership, `None` if
    /// it was not a recipient.
    ///
    /// # Errors
    /// The store's error when it cannot be written.
    pub async fn unregister(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Option<Membership>, StoreError> {
        let hub = self.channel(channel).await?;
        let ended = self.store.remove_recipient(channel, device).await?;
        match &ended {
            Some(ended) => self.apply_membership_to(&hub, ended),
            // Not a recipient by the store's account: nothing to tell, but the ledger agrees.
            None => hub.ledger().leave(None, device),
        }
        Ok(ended)
    }

    /// Ends the membership of every recipient, on every channel, that has not been seen for
    /// `max_idle` and has no open stream (on any node, with shared presence). Returns how many
    /// memberships ended.
    ///
    /// # Errors
    /// The store's error when it cannot be read or written.
    pub async fn expire_recipients(&self, max_idle: Duration) -> Result<usize, StoreError> {
        let Ok(max_idle) = chrono::Duration::from_std(max_idle) else {
            return Ok(0);
        };
        let oldest_allowed = now() - max_idle;
        let mut ended = 0;
        for channel in self.store.channels().await? {
            let mut idle = Vec::new();
            for membership in self.offline_recipients(&channel).await? {
                let record = self.store.device(&channel, &membership.device).await?;
                let online = self.live_device(&channel, &membership.device).is_some();
                if record.map_or(membership.since, |r| r.last_seen) < oldest_allowed && !online {
                    idle.push(membership.device);
                }
            }
            if idle.is_empty() {
                continue;
            }
            // Offline here may be online on another node: shared presence has the last word.
            if self.shares_presence() {
                if let Some(online) = self.store.online_devices(&channel).await? {
                    idle.retain(|device| !online.contains(device));
                }
            }
            for device in idle {
                if self.unregister(&channel, &device).await?.is_some() {
                    ended += 1;
                }
            }
        }
        Ok(ended)
    }

    /// The current recipients of a channel with no open stream. Read from the channel's ledger
    /// when its hub is loaded, so that a check of thousands of connected recipients copies
    /// nothing (it runs every minute); from the store otherwise, when none can be connected.
    async fn offline_recipients(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<Membership>, StoreError> {
        let loaded = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .cloned();
        let Some(hub) = loaded else {
            return Ok(self
                .store
                .memberships(channel)
                .await?
                .into_iter()
                .filter(Membership::is_current)
                .collect());
        };
        let ledger = hub.ledger();
        let live = self.live_devices.lock().unwrap_or_else(|e| e.into_inner());
        Ok(ledger
            .recipients()
            .filter(|m| !live.contains_key(&(channel.clone(), m.device.clone())))
            .cloned()
            .collect())
    }

    /// Records a return receipt.
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] for an id never published on the channel.
    pub async fn acknowledge(
        &self,
        channel: &ChannelName,
        event_id: u64,
        device: &DeviceId,
        status: String,
    ) -> Result<(Receipt, DeviceRecord), StoreError> {
        let receipt = Receipt {
            seq: 0,
            channel: channel.clone(),
            event_id,
            device: device.clone(),
            status,
            time: now(),
        };
        // The store refuses receipts for unknown channels and ids before any hub state is made
        // for them: a stream of bogus receipts costs no memory.
        let (receipt, record) = self.store.record_receipt(receipt).await?;
        self.apply_receipt(&receipt).await?;
        Ok((receipt, record))
    }

    /// Records a return receipt under an idempotency key (see [`Store::record_receipt_keyed`]):
    /// a receipt retried with the same key is answered with the stored one
    /// ([`RecordedReceipt::new`] false), and nothing is recorded, applied or told again.
    ///
    /// # Errors
    /// As [`Hub::acknowledge`]; [`StoreError::InvalidIdempotencyKey`] for a malformed key.
    pub async fn acknowledge_keyed(
        &self,
        channel: &ChannelName,
        event_id: u64,
        device: &DeviceId,
        status: String,
        key: String,
    ) -> Result<RecordedReceipt, StoreError> {
        let receipt = Receipt {
            seq: 0,
            channel: channel.clone(),
            event_id,
            device: device.clone(),
            status,
            time: now(),
        };
        let recorded = self.store.record_receipt_keyed(receipt, key).await?;
        if recorded.new {
            self.apply_receipt(&recorded.receipt).await?;
        }
        Ok(recorded)
    }

    /// Applies a receipt recorded in the store (by this node's [`Hub::acknowledge`] or by
    /// another node): moves the device's live delivery cursor, tells the channel's ledger (which
    /// may complete the event and wake waiting publishers), and tells observers and receipt
    /// followers. Returns the completion it caused, if any.
    ///
    /// # Errors
    /// The store's error when the channel's state cannot be loaded.
    pub async fn apply_receipt(&self, receipt: &Receipt) -> Result<Option<Completion>, StoreError> {
        if let Some(live) = self.live_device(&receipt.channel, &receipt.device) {
            live.delivered
                .fetch_max(receipt.event_id, Ordering::Relaxed);
        }
        // A channel that is not loaded has nobody following or waiting and no event in its
        // ledger (a loaded ledger starts empty): there is nothing to tell it, and loading it
        // would cost store reads and memory per receipt.
        let Some(hub) = self.loaded(&receipt.channel) else {
            self.observers.send(|| HubNotice::Receipt {
                receipt: receipt.clone(),
                published: None,
            });
            return Ok(None);
        };
        let (completed, published) = {
            let mut ledger = hub.ledger();
            let completed = ledger.acknowledge(receipt.event_id, &receipt.device);
            (completed, ledger.published_at(receipt.event_id))
        };
        self.observers.send(|| HubNotice::Receipt {
            receipt: receipt.clone(),
            published,
        });
        if let Some(done) = completed {
            self.observers
                .send(|| HubNotice::completed(&hub.name, done));
        }
        if let Some(live) = hub.receipts.get() {
            live.announce(receipt.seq, completed);
        }
        Ok(completed)
    }

    fn live_device(&self, channel: &ChannelName, device: &DeviceId) -> Option<Arc<LiveDevice>> {
        let devices = self.live_devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.get(&(channel.clone(), device.clone())).cloned()
    }

    /// Applies what the store holds beyond what each loaded channel released (and, with shared
    /// presence, the presence changes beyond its history's newest): a node whose feed of changes
    /// recorded elsewhere was cut (a bus reconnecting) catches up with it. Returns how many
    /// events were applied.
    ///
    /// # Errors
    /// The store's error when a channel cannot be read; the channels before it caught up.
    pub async fn catch_up(&self) -> Result<usize, StoreError> {
        let loaded: Vec<Arc<ChannelHub>> = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut applied = 0;
        for hub in loaded {
            let mut after = hub.state().last_released;
            loop {
                let page = self
                    .store
                    .read(&hub.name, after, self.config.replay_page)
                    .await?;
                let Some(last) = page.events.last().map(|e| e.id) else {
                    break;
                };
                after = last;
                for event in page.events {
                    applied += 1;
                    self.apply_published_to(&hub, event);
                }
            }
            // Presence changes missed meanwhile, for a channel that keeps a history.
            if let (true, Some(log)) = (self.shares_presence(), hub.presence.get()) {
                let missed = self.store.presence_after(&hub.name, log.seq()).await?;
                for change in missed.into_iter().flatten() {
                    if log.record_numbered(change.clone()) {
                        self.observers.send(|| HubNotice::Presence {
                            channel: hub.name.clone(),
                            change,
                        });
                    }
                }
            }
        }
        Ok(applied)
    }

    /// Open streams of identified devices on this node: (channel, device, streams).
    pub fn live_streams(&self) -> Vec<(ChannelName, DeviceId, usize)> {
        let devices = self.live_devices.lock().unwrap_or_else(|e| e.into_inner());
        devices
            .iter()
            .map(|((c, d), live)| (c.clone(), d.clone(), live.streams.load(Ordering::Relaxed)))
            .collect()
    }

    /// Open streams per channel on this node, for channels with at least one.
    pub fn connections(&self) -> Vec<(ChannelName, usize)> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: Vec<(ChannelName, usize)> = channels
            .iter()
            .map(|(name, hub)| (name.clone(), hub.subscriber_count.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort();
        counts
    }

    /// Every known device of a channel with its live presence merged in.
    ///
    /// # Errors
    /// The store's error when it cannot be read.
    pub async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceView>, StoreError> {
        let records = self.store.devices(channel).await?;
        Ok(records
            .into_iter()
            .map(|record| self.with_presence(record))
            .collect())
    }

    /// Which of `devices` are current recipients of `channel`, from the channel's live ledger
    /// (no read of every membership per question).
    ///
    /// # Errors
    /// The store's error when the channel cannot be loaded.
    pub async fn current_recipients<'a>(
        &self,
        channel: &ChannelName,
        devices: impl IntoIterator<Item = &'a DeviceId>,
    ) -> Result<std::collections::HashSet<DeviceId>, StoreError> {
        let hub = self.channel(channel).await?;
        let ledger = hub.ledger();
        Ok(devices
            .into_iter()
            .filter(|d| ledger.recipient(d).is_some())
            .cloned()
            .collect())
    }

    /// A page of a channel's devices (ids after `after`, at most `limit`) with their live
    /// presence: their streams on this node, and with shared presence on the other live nodes
    /// too.
    ///
    /// # Errors
    /// The store's error when it cannot be read.
    pub async fn devices_page(
        &self,
        channel: &ChannelName,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceView>, StoreError> {
        let records = self.store.devices_page(channel, after, limit).await?;
        let mut views: Vec<DeviceView> = records
            .into_iter()
            .map(|record| self.with_presence(record))
            .collect();
        if self.shares_presence() {
            if let Some(elsewhere) = self.store.streams_elsewhere(channel).await? {
                for view in &mut views {
                    view.open_streams += elsewhere.get(&view.record.device).copied().unwrap_or(0);
                }
            }
        }
        Ok(views)
    }

    fn with_presence(&self, mut record: DeviceRecord) -> DeviceView {
        let mut open_streams = 0;
        if let Some(live) = self.live_device(&record.channel, &record.device) {
            open_streams = live.streams.load(Ordering::Relaxed);
            record.last_delivered = record
                .last_delivered
                .max(live.delivered.load(Ordering::Relaxed));
        }
        DeviceView {
            record,
            open_streams,
        }
    }

    /// Waits until event `event_id` satisfies `wait` or `timeout` passes; returns whether it was
    /// satisfied. Events no longer followed live (see [`crate::ledger::TRACKED_EVENTS`]) are
    /// judged once, from the store.
    ///
    /// # Errors
    /// The store's error when it cannot be read.
    pub async fn wait_for_receipts(
        &self,
        channel: &ChannelName,
        event_id: u64,
        wait: WaitFor,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let hub = self.channel(channel).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let changed = {
                let mut ledger = hub.ledger();
                let Some(open) = ledger.open.get_mut(&event_id) else {
                    break;
                };
                if open.satisfies(wait) {
                    return Ok(true);
                }
                open.changed()
            };
            let notified = changed.notified();
            // Checked again with the notification armed, so a receipt in between is not missed.
            if hub
                .ledger()
                .open
                .get(&event_id)
                .is_none_or(|open| open.satisfies(wait))
            {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(false);
            }
        }
        let summary = self.receipt_summary(channel, event_id).await?;
        Ok(match wait {
            WaitFor::All => summary.complete(),
            WaitFor::AtLeast(n) => summary.acknowledged.len() >= n,
        })
    }

    /// Follows a channel's receipts: those recorded after `after` (a receipt `seq`) from the
    /// store, then live ones; with no position, live ones from now on. See [`ReceiptFollow`].
    ///
    /// # Errors
    /// The store's error when the channel cannot be opened.
    pub async fn follow_receipts(
        &self,
        channel: &ChannelName,
        after: Option<u64>,
    ) -> Result<ReceiptFollow<S>, StoreError> {
        let hub = self.channel(channel).await?;
        let follow = ReceiptFollow::new(
            self.store.clone(),
            channel.clone(),
            hub.receipt_live().clone(),
            after,
        );
        // Read once listening: every receipt beyond this head is heard of live.
        let head = self.store.receipt_head(channel).await?;
        Ok(follow.starting_after(head))
    }

    /// The presence changes kept for `channel` after `after`, and live changes from then on.
    ///
    /// # Errors
    /// The store's error when the channel cannot be opened.
    pub async fn follow_presence(
        &self,
        channel: &ChannelName,
        after: u64,
    ) -> Result<PresenceFollow, StoreError> {
        let hub = self.channel(channel).await?;
        Ok(PresenceFollow::new(
            self.presence_log_of(&hub).await?,
            after,
        ))
    }

    /// Who acknowledged, got, or has not yet got one event.
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] for an id never published on the channel.
    pub async fn receipt_summary(
        &self,
        channel: &ChannelName,
        event_id: u64,
    ) -> Result<ReceiptSummary, StoreError> {
        let head = self.store.head(channel).await?;
        if event_id == 0 || event_id > head {
            return Err(StoreError::UnknownEvent { id: event_id });
        }
        let mut latest: BTreeMap<DeviceId, Receipt> = BTreeMap::new();
        for receipt in self.store.receipts(channel, event_id).await? {
            latest.insert(receipt.device.clone(), receipt);
        }
        let expected: std::collections::BTreeSet<DeviceId> = self
            .store
            .memberships(channel)
            .await?
            .into_iter()
            .filter(|m| m.expects(event_id))
            .map(|m| m.device)
            .collect();
        let seen: HashMap<DeviceId, (u64, DateTime<Utc>)> = self
            .devices(channel)
            .await?
            .into_iter()
            .map(|v| {
                (
                    v.record.device,
                    (v.record.last_delivered, v.record.last_seen),
                )
            })
            .collect();
        let mut summary = ReceiptSummary {
            channel: channel.clone(),
            event_id,
            acknowledged: Vec::new(),
            delivered: Vec::new(),
            pending: Vec::new(),
            expected: expected.len(),
            last_seen: BTreeMap::new(),
        };
        for device in expected {
            if latest.contains_key(&device) {
                continue;
            }
            let record = seen.get(&device);
            if let Some(&(_, at)) = record {
                summary.last_seen.insert(device.clone(), at);
            }
            if record.is_some_and(|&(delivered, _)| delivered >= event_id) {
                summary.delivered.push(device);
            } else {
                summary.pending.push(device);
            }
        }
        summary.acknowledged = latest.into_values().collect();
        Ok(summary)
    }
}

/// A live subscription: yields replayed events, then live ones, in id order, each once.
/// Dropping it unregisters the subscriber and updates the device's presence.
#[derive(Debug)]
pub struct Subscription<S: Store> {
    hub: Arc<Hub<S>>,
    channel_hub: Arc<ChannelHub>,
    channel: ChannelName,
    device: Option<DeviceId>,
    live: Option<Arc<LiveDevice>>,
    id: u64,
    rx: mpsc::Receiver<Arc<Event>>,
    lagged: Arc<Cut>,
    replay_next: u64,
    replay_until: u64,
    // A position between the last released event and the head: live events up to it were
    // already seen by the client.
    skip_live_through: u64,
    replayed: VecDeque<Arc<Event>>,
    report_gaps: bool,
    // Events sent to a device that owes receipts, oldest first: (event, next due, sends so far).
    in_flight: VecDeque<(Arc<Event>, Instant, u32)>,
    reset: Option<FeedItem>,
}

impl<S: Store> Subscription<S> {
    /// The next item, or `None` when the stream ends (the subscriber was too slow; see
    /// [`Subscription::lagged`]).
    ///
    /// # Errors
    /// The store's error when history cannot be read; the stream should end then.
    pub async fn next(&mut self) -> Option<Result<FeedItem, StoreError>> {
        if let Some(reset) = self.reset.take() {
            return Some(Ok(reset));
        }
        loop {
            if let Some((event, sends)) = self.due_redelivery() {
                return Some(Ok(FeedItem::Redelivery(event, sends)));
            }
            if let Some(event) = self.replayed.pop_front() {
                return Some(Ok(self.delivered(event)));
            }
            if self.replay_next < self.replay_until {
                let limit = self
                    .hub
                    .config
                    .replay_page
                    .min((self.replay_until - self.replay_next) as usize);
                // Boxed: a future is as large as its largest state, and a feed awaits this one
                // for its whole life; the store's read (a blocking task, a Redis command) would
                // otherwise be carried by every idle feed.
                let page =
                    match Box::pin(self.hub.store.read(&self.channel, self.replay_next, limit))
                        .await
                    {
                        Ok(page) => page,
                        Err(err) => return Some(Err(err)),
                    };
                let expected = self.replay_next + 1;
                let gap =
                    (self.report_gaps && page.first_retained > expected).then(|| FeedItem::Gap {
                        from: expected,
                        to: (page.first_retained - 1).min(self.replay_until),
                    });
                self.report_gaps = false;
                let until = self.replay_until;
                let before = self.replayed.len();
                self.replayed
                    .extend(page.events.into_iter().filter(|e| e.id <= until));
                self.hub
                    .observers
                    .count_delivered(self.replayed.len() - before);
                self.replay_next = self.replayed.back().map_or(until, |e| e.id);
                if let Some(gap) = gap {
                    return Some(Ok(gap));
                }
                continue;
            }
            let event = match self.in_flight.front().map(|(_, due, _)| *due) {
                Some(due) => match tokio::time::timeout_at(due, self.rx.recv()).await {
                    Ok(event) => event?,
                    Err(_) => continue,
                },
                None => self.rx.recv().await?,
            };
            if event.id <= self.skip_live_through {
                continue;
            }
            return Some(Ok(self.delivered(event)));
        }
    }

    /// The oldest in-flight event whose receipt is overdue, to send again; drops the ones that
    /// were acknowledged or have been sent often enough.
    fn due_redelivery(&mut self) -> Option<(Arc<Event>, u32)> {
        let timeout = self.hub.config.ack_timeout?;
        let device = self.device.as_ref()?;
        let now = Instant::now();
        while let Some((_, due, _)) = self.in_flight.front() {
            if *due > now {
                return None;
            }
            let (event, _, sends) = self.in_flight.pop_front()?;
            let owed = self.channel_hub.ledger().owes(event.id, device);
            if owed && sends < self.hub.config.max_deliveries {
                self.in_flight
                    .push_back((event.clone(), now + timeout, sends + 1));
                self.hub.observers.count_redelivered();
                return Some((event, sends + 1));
            }
        }
        None
    }

    /// Takes every live event already queued, without waiting; for writers that coalesce frames.
    /// Returns nothing while replay is still under way.
    pub fn try_next_live(&mut self) -> Option<Arc<Event>> {
        if !self.replayed.is_empty() || self.replay_next < self.replay_until {
            return None;
        }
        loop {
            let event = self.rx.try_recv().ok()?;
            if event.id > self.skip_live_through {
                return Some(self.mark(event));
            }
        }
    }

    fn delivered(&mut self, event: Arc<Event>) -> FeedItem {
        FeedItem::Event(self.mark(event))
    }

    fn mark(&mut self, event: Arc<Event>) -> Arc<Event> {
        if let Some(live) = &self.live {
            live.delivered.fetch_max(event.id, Ordering::Relaxed);
        }
        if let (Some(timeout), Some(device)) = (self.hub.config.ack_timeout, &self.device) {
            if self.channel_hub.ledger().owes(event.id, device) {
                // Bounded like the queue: past it, the oldest stops being watched.
                if self.in_flight.len() >= self.hub.config.subscriber_buffer {
                    self.in_flight.pop_front();
                }
                self.in_flight
                    .push_back((event.clone(), Instant::now() + timeout, 1));
            }
        }
        event
    }

    /// Whether the stream was cut because the subscriber fell too far behind.
    pub fn lagged(&self) -> bool {
        self.lagged.is_cut()
    }

    /// Resolves when the hub cuts this subscription for lagging, even while nobody reads it: a
    /// writer blocked on a client that does not read can give up at once.
    pub fn cut_notice(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let cut = self.lagged.clone();
        async move {
            loop {
                let notified = cut.notify.notified();
                if cut.is_cut() {
                    return;
                }
                notified.await;
            }
        }
    }

    /// The device of this subscription, if not anonymous.
    pub fn device(&self) -> Option<&DeviceId> {
        self.device.as_ref()
    }

    /// The channel of this subscription.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }
}

impl<S: Store> Drop for Subscription<S> {
    fn drop(&mut self) {
        {
            let mut state = self.channel_hub.state();
            state.subscribers.remove(&self.id);
            self.channel_hub
                .subscriber_count
                .store(state.subscribers.len(), Ordering::Relaxed);
        }
        let (Some(live), Some(device)) = (self.live.take(), self.device.clone()) else {
            return;
        };
        let last_stream = {
            let mut devices = self
                .hub
                .live_devices
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let remaining = live.streams.fetch_sub(1, Ordering::Relaxed) - 1;
            if remaining == 0 {
                devices.remove(&(self.channel.clone(), device.clone()));
            }
            remaining == 0
        };
        let shared = self.hub.shares_presence();
        if shared {
            self.hub.presence_touched(&self.channel, &device);
        }
        if !last_stream {
            // The device is still online; its last stream saves the shared delivery cursor.
            return;
        }
        if !shared {
            self.hub
                .apply_presence_to(&self.channel_hub, &device, false);
        }
        let touch = DeviceTouch {
            channel: self.channel.clone(),
            device,
            op: DeviceOp::Disconnect,
            at: now(),
            last_event_id: None,
            delivered: live.delivered.load(Ordering::Relaxed),
        };
        let store = self.hub.store.clone();
        // Saving the delivery cursor is worth a task; outside a runtime (a test tearing down)
        // there is nothing left to save it for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.touch_device(touch).await;
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
}
