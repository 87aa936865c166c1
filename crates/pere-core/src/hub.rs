//! The hub: local fan-out of published events to live subscribers, resume from a position with no
//! gap and no duplicate, device presence, and the receipt ledger's operations.
//!
//! Ordering: the store gives ids in order, but concurrent appends may finish in any order. Each
//! channel has a small sequencer that releases events to subscribers strictly by id, so every
//! subscriber sees a channel's events in id order.
//!
//! The resume seam: a subscriber is registered under the channel lock and, in the same critical
//! section, reads the id of the last event released (`snapshot`). Every event after `snapshot`
//! reaches it live; every event up to `snapshot` is replayed from the store. No event is in both
//! sets and none is in neither.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::event::{now, Event, NewEvent};
use crate::name::{ChannelName, DeviceId};
use crate::receipt::{DeviceOp, DeviceRecord, DeviceTouch, Receipt};
use crate::store::Store;

/// Tuning of a [`Hub`].
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Events queued for one subscriber before it counts as too slow and is cut off (it then
    /// resumes with `Last-Event-ID` and loses nothing).
    pub subscriber_buffer: usize,
    /// Events read from the store per replay step.
    pub replay_page: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig { subscriber_buffer: 1024, replay_page: 256 }
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
    /// Events `from..=to` were asked for but are no longer retained.
    Gap {
        /// First missing id.
        from: u64,
        /// Last missing id.
        to: u64,
    },
}

/// What the hub knows of one device on a channel, live and stored.
#[derive(Debug, Clone)]
pub struct DeviceView {
    /// The stored record.
    pub record: DeviceRecord,
    /// How many streams the device has open on this node.
    pub open_streams: usize,
}

/// For one event: who acknowledged it, who got it without acknowledging, who has not got it.
#[derive(Debug, Clone)]
pub struct ReceiptSummary {
    /// The channel.
    pub channel: ChannelName,
    /// The event.
    pub event_id: u64,
    /// The latest receipt of each device that acknowledged, by device id.
    pub acknowledged: Vec<Receipt>,
    /// Devices the event was delivered to that have not acknowledged it.
    pub delivered: Vec<DeviceId>,
    /// Known devices the event has not reached yet.
    pub pending: Vec<DeviceId>,
}

/// The local fan-out engine over a [`Store`].
#[derive(Debug)]
pub struct Hub<S> {
    store: S,
    config: HubConfig,
    // Channel hubs are never removed: a publish holds its channel's sequencer across the store
    // append, and a second sequencer for the same channel could wait forever for that event.
    channels: Mutex<HashMap<ChannelName, Arc<ChannelHub>>>,
    live_devices: Mutex<HashMap<(ChannelName, DeviceId), Arc<LiveDevice>>>,
    next_subscriber: AtomicU64,
}

#[derive(Debug)]
struct ChannelHub {
    state: Mutex<ChannelState>,
    subscriber_count: AtomicUsize,
}

#[derive(Debug)]
struct ChannelState {
    last_released: u64,
    // Appended events waiting for a smaller id to be released first.
    waiting: BTreeMap<u64, Arc<Event>>,
    subscribers: HashMap<u64, SubscriberSlot>,
}

#[derive(Debug)]
struct SubscriberSlot {
    tx: mpsc::Sender<Arc<Event>>,
    lagged: Arc<AtomicBool>,
}

/// Live presence of a device on this node: how many streams, how far deliveries got.
#[derive(Debug, Default)]
struct LiveDevice {
    streams: AtomicUsize,
    delivered: AtomicU64,
}

impl ChannelHub {
    fn release(&self, event: Arc<Event>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if event.id <= state.last_released {
            return;
        }
        state.waiting.insert(event.id, event);
        loop {
            let next = state.last_released + 1;
            let Some(event) = state.waiting.remove(&next) else { break };
            state.last_released = next;
            let mut cut = Vec::new();
            for (&id, slot) in &state.subscribers {
                if slot.tx.try_send(event.clone()).is_err() {
                    // Full or closed: end this stream. The client resumes from its last event id.
                    slot.lagged.store(true, Ordering::Relaxed);
                    cut.push(id);
                }
            }
            for id in cut {
                state.subscribers.remove(&id);
            }
            self.subscriber_count.store(state.subscribers.len(), Ordering::Relaxed);
        }
    }
}

impl<S: Store> Hub<S> {
    /// A hub over `store`.
    pub fn new(store: S, config: HubConfig) -> Arc<Self> {
        Arc::new(Hub {
            store,
            config,
            channels: Mutex::default(),
            live_devices: Mutex::default(),
            next_subscriber: AtomicU64::new(1),
        })
    }

    /// The store behind this hub.
    pub fn store(&self) -> &S {
        &self.store
    }

    async fn channel(&self, name: &ChannelName) -> Result<Arc<ChannelHub>, StoreError> {
        if let Some(hub) = self.channels.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(hub.clone());
        }
        // Every append goes through an existing channel hub, so no append of this channel is in
        // flight now and the store's head is exactly what has been released.
        let head = self.store.head(name).await?;
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let hub = channels.entry(name.clone()).or_insert_with(|| {
            Arc::new(ChannelHub {
                state: Mutex::new(ChannelState {
                    last_released: head,
                    waiting: BTreeMap::new(),
                    subscribers: HashMap::new(),
                }),
                subscriber_count: AtomicUsize::new(0),
            })
        });
        Ok(hub.clone())
    }

    /// Appends an event to the store, then delivers it to the channel's live subscribers.
    /// Returns once the event is stored, with its id and time.
    ///
    /// # Errors
    /// The store's error when the append fails; nothing is delivered then.
    pub async fn publish(self: &Arc<Self>, channel: &ChannelName, event: NewEvent) -> Result<Arc<Event>, StoreError> {
        let hub = self.channel(channel).await?;
        let this = self.clone();
        let channel = channel.clone();
        // Append and release run to completion even if the caller goes away: an event the store
        // accepted but the sequencer never saw would hold back every later event of the channel.
        let task = tokio::spawn(async move {
            let event = this.store.append(&channel, event).await?;
            hub.release(event.clone());
            Ok(event)
        });
        match task.await {
            Ok(result) => result,
            Err(join) => Err(StoreError::Backend(Box::new(join))),
        }
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
                after = self.store.device(channel, device).await?.map(|d| d.last_acked);
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
        if after > self.store.head(channel).await? {
            after = 0;
            explicit = false;
        }

        let live = request.device.as_ref().map(|device| {
            let mut devices = self.live_devices.lock().unwrap_or_else(|e| e.into_inner());
            let live = devices.entry((channel.clone(), device.clone())).or_default().clone();
            live.streams.fetch_add(1, Ordering::Relaxed);
            live
        });

        let (tx, rx) = mpsc::channel(self.config.subscriber_buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let snapshot = {
            let mut state = hub.state.lock().unwrap_or_else(|e| e.into_inner());
            state.subscribers.insert(id, SubscriberSlot { tx, lagged: lagged.clone() });
            hub.subscriber_count.store(state.subscribers.len(), Ordering::Relaxed);
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
        })
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
        let receipt = Receipt { channel: channel.clone(), event_id, device: device.clone(), status, time: now() };
        let record = self.store.record_receipt(receipt.clone()).await?;
        if let Some(live) = self.live_device(channel, device) {
            live.delivered.fetch_max(event_id, Ordering::Relaxed);
        }
        Ok((receipt, record))
    }

    fn live_device(&self, channel: &ChannelName, device: &DeviceId) -> Option<Arc<LiveDevice>> {
        let devices = self.live_devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.get(&(channel.clone(), device.clone())).cloned()
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
        Ok(records.into_iter().map(|record| self.with_presence(record)).collect())
    }

    fn with_presence(&self, mut record: DeviceRecord) -> DeviceView {
        let mut open_streams = 0;
        if let Some(live) = self.live_device(&record.channel, &record.device) {
            open_streams = live.streams.load(Ordering::Relaxed);
            record.last_delivered = record.last_delivered.max(live.delivered.load(Ordering::Relaxed));
        }
        DeviceView { record, open_streams }
    }

    /// Who acknowledged, got, or has not yet got one event.
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] for an id never published on the channel.
    pub async fn receipt_summary(&self, channel: &ChannelName, event_id: u64) -> Result<ReceiptSummary, StoreError> {
        let head = self.store.head(channel).await?;
        if event_id == 0 || event_id > head {
            return Err(StoreError::UnknownEvent { id: event_id });
        }
        let mut latest: BTreeMap<DeviceId, Receipt> = BTreeMap::new();
        for receipt in self.store.receipts(channel, event_id).await? {
            latest.insert(receipt.device.clone(), receipt);
        }
        let mut summary = ReceiptSummary {
            channel: channel.clone(),
            event_id,
            acknowledged: Vec::new(),
            delivered: Vec::new(),
            pending: Vec::new(),
        };
        for view in self.devices(channel).await? {
            let device = view.record.device;
            if latest.contains_key(&device) {
                continue;
            } else if view.record.last_delivered >= event_id {
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
    lagged: Arc<AtomicBool>,
    replay_next: u64,
    replay_until: u64,
    // A position between the last released event and the head: live events up to it were
    // already seen by the client.
    skip_live_through: u64,
    replayed: VecDeque<Arc<Event>>,
    report_gaps: bool,
}

impl<S: Store> Subscription<S> {
    /// The next item, or `None` when the stream ends (the subscriber was too slow; see
    /// [`Subscription::lagged`]).
    ///
    /// # Errors
    /// The store's error when history cannot be read; the stream should end then.
    pub async fn next(&mut self) -> Option<Result<FeedItem, StoreError>> {
        loop {
            if let Some(event) = self.replayed.pop_front() {
                return Some(Ok(self.delivered(event)));
            }
            if self.replay_next < self.replay_until {
                let limit = self.hub.config.replay_page.min((self.replay_until - self.replay_next) as usize);
                let page = match self.hub.store.read(&self.channel, self.replay_next, limit).await {
                    Ok(page) => page,
                    Err(err) => return Some(Err(err)),
                };
                let expected = self.replay_next + 1;
                let gap = (self.report_gaps && page.first_retained > expected)
                    .then(|| FeedItem::Gap { from: expected, to: (page.first_retained - 1).min(self.replay_until) });
                self.report_gaps = false;
                let until = self.replay_until;
                self.replayed.extend(page.events.into_iter().filter(|e| e.id <= until));
                self.replay_next = self.replayed.back().map_or(until, |e| e.id);
                if let Some(gap) = gap {
                    return Some(Ok(gap));
                }
                continue;
            }
            let event = self.rx.recv().await?;
            if event.id <= self.skip_live_through {
                continue;
            }
            return Some(Ok(self.delivered(event)));
        }
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

    fn delivered(&self, event: Arc<Event>) -> FeedItem {
        FeedItem::Event(self.mark(event))
    }

    fn mark(&self, event: Arc<Event>) -> Arc<Event> {
        if let Some(live) = &self.live {
            live.delivered.fetch_max(event.id, Ordering::Relaxed);
        }
        event
    }

    /// Whether the stream was cut because the subscriber fell too far behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
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
            let mut state = self.channel_hub.state.lock().unwrap_or_else(|e| e.into_inner());
            state.subscribers.remove(&self.id);
            self.channel_hub.subscriber_count.store(state.subscribers.len(), Ordering::Relaxed);
        }
        let (Some(live), Some(device)) = (self.live.take(), self.device.clone()) else { return };
        let last_stream = {
            let mut devices = self.hub.live_devices.lock().unwrap_or_else(|e| e.into_inner());
            let remaining = live.streams.fetch_sub(1, Ordering::Relaxed) - 1;
            if remaining == 0 {
                devices.remove(&(self.channel.clone(), device.clone()));
            }
            remaining == 0
        };
        if !last_stream {
            // The device is still online; its last stream saves the shared delivery cursor.
            return;
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
