//! The live dashboard: its page (`GET /dashboard`) and the stream of admin events that feeds it
//! (`GET /admin/stream`, optionally `?channel=C`): the channels with their open feeds, and for one
//! channel its devices' presence and a receipts grid of its latest events, with throughput and
//! receipt latency once a second.
//!
//! One task per stream hears the hub's observer notices and, at most once per tick and only for
//! what changed, reads the store. What it sends waits in a small bounded queue; a dashboard that does not read is cut (its
//! connection closed) and reconnects to a fresh snapshot. Nothing grows with a slow reader or a
//! busy channel: the grid, the devices followed, the receipts sent per tick and the publication
//! times kept are all capped.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use pere_core::store::redis::Bus;
use pere_core::{ChannelName, Event, Hub, HubNotice, Membership, Receipt, Store, StoreError};
use pere_proto::event::format_time;
use pere_proto::sse;
use pere_proto::wire::{
    to_json, AckJson, ChannelStreamsJson, DashboardChannels, DashboardDevice, DashboardDevices,
    DashboardEvent, DashboardGrid, DashboardHello, DashboardReceipt, DashboardStats,
};
use pere_proto::StatusClass;
use serde::Serialize;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::ApiError;
use crate::response::{etag, etag_text, Asset};
use crate::sse_body::{ConnectionCloser, EndReason, SseBody, StreamContext};
use crate::state::AppState;

/// The dashboard page, embedded so the server stays one self-contained binary; it is built on
/// `pere.js` and revalidated by ETag like the subscriber page.
pub const PAGE: Asset = Asset {
    body: PAGE_SOURCE,
    content_type: "text/html; charset=utf-8",
    etag: etag_text(&PAGE_ETAG),
};
const PAGE_SOURCE: &str = include_str!("../assets/dashboard.html");
const PAGE_ETAG: [u8; 18] = etag(PAGE_SOURCE);

/// Events the receipts grid shows: enough to see a pattern, few enough for a phone.
pub const GRID_EVENTS: usize = 20;

/// Devices a stream follows at most (the first by id): each is a column of the grid.
pub const MAX_DEVICES: usize = 100;

/// Channels the `channels` event lists at most, those with the most open feeds first.
const MAX_CHANNELS: usize = 200;

/// How often the stream sends what changed: four times a second feels live, and reads the store
/// at most four times a second per dashboard.
const TICK: Duration = Duration::from_millis(250);

/// Devices are read again this often even when nothing was heard (a device's last-seen time is
/// saved just after its offline notice), and a grid is read again at most this often when
/// observers lost notices.
const REFRESH: Duration = Duration::from_secs(2);

/// Notices the stream's observer holds. The task drains them as they come, so this only absorbs
/// bursts; a notice lost anyway is noticed (`Hub::dropped_notices`) and the grid is read again.
const OBSERVER_CAPACITY: usize = 4096;

/// Batches of frames (one per tick at most, one a second at least) waiting for a dashboard that
/// does not read: past these (8 to 32 seconds' worth) it is cut.
const QUEUE: usize = 32;

/// Receipts sent one by one per tick at most; past it, the grid is sent whole instead.
const MAX_RECEIPTS_PER_TICK: usize = 256;

/// Publication times kept for the channel shown, to time the receipts of events that already
/// left the grid; also the most events read from the store in one tick.
const TIMED_EVENTS: usize = 1024;

/// Receipts heard for events not read yet (published since the last tick), kept until the tick
/// reads them; past it, the grid is read again.
const EARLY_RECEIPTS: usize = 1024;

/// Opens the admin stream: `hello`, `channels`, and for a `channel` its `devices` and `grid`;
/// then what changes.
///
/// # Errors
/// 503 `store_unavailable` when the channel's snapshot cannot be read.
pub async fn stream<S: Store>(
    state: &AppState<S>,
    channel: Option<ChannelName>,
    context: StreamContext,
) -> Result<SseBody, ApiError> {
    // Listening before the snapshot is read, so nothing that happens between the two is missed.
    let notices = state.hub.observe(OBSERVER_CAPACITY);
    let mut watch = Watch::new(state.hub.clone(), state.bus.get().cloned(), channel.clone());
    let mut first = Frames::default();
    watch.snapshot(&mut first).await?;
    let (tx, rx) = mpsc::channel(QUEUE);
    // An empty queue has room for the first batch.
    let _ = tx.try_send(first.into_bytes());
    let ended = Arc::new(OnceLock::new());
    tokio::spawn(watch.run(notices, tx, ended.clone(), context.closer.clone()));
    let frames = futures_util::stream::unfold((rx, ended), |(mut rx, ended)| async move {
        match rx.recv().await {
            Some(bytes) => Some((Ok(bytes), (rx, ended))),
            None => {
                let reason = ended.get().copied()?;
                Some((Err(reason), (rx, ended)))
            }
        }
    })
    .boxed();
    let label = channel.map_or_else(
        || "admin stream".to_owned(),
        |c| format!("{c} admin stream"),
    );
    Ok(SseBody::frames(frames, label, None, context))
}

/// SSE frames gathered in one tick, written to the client in one piece.
#[derive(Debug, Default)]
struct Frames(BytesMut);

impl Frames {
    /// Adds an event of type `kind` with `value` as its data, without an id: a dashboard never
    /// resumes, it starts from a snapshot.
    fn push(&mut self, kind: &str, value: &impl Serialize) {
        self.0
            .extend_from_slice(&sse::encode_notice(kind, &to_json(value)));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn into_bytes(self) -> Bytes {
        self.0.freeze()
    }
}

/// What one second brought, for the `stats` event.
#[derive(Debug, Default)]
struct Second {
    events: u64,
    receipts: u64,
    channel_events: u64,
    channel_receipts: u64,
    // Capped like everything else; a second with more receipts is timed on its first ones.
    latencies: Vec<u64>,
}

/// Latencies timed per second at most.
const LATENCY_SAMPLES: usize = 4096;

/// What one stream knows and has sent.
struct Watch<S: Store> {
    hub: Arc<Hub<S>>,
    /// The cluster's bus, on Redis: the other nodes' feeds count in the channel list.
    bus: Option<Bus>,
    channel: Option<ChannelName>,
    /// Open feeds per channel, as last sent.
    channels: BTreeMap<String, usize>,
    /// Open feeds per channel on the other nodes, read at most every [`REFRESH`].
    elsewhere: BTreeMap<String, usize>,
    last_elsewhere: Option<Instant>,
    /// The devices followed, by id, as last sent.
    devices: BTreeMap<String, DashboardDevice>,
    /// When each followed device last went online or offline, heard before the store has it.
    presence: HashMap<String, DateTime<Utc>>,
    /// The grid's events (id and publication time), oldest first.
    grid: VecDeque<(u64, DateTime<Utc>)>,
    /// Publication times of the channel's latest events.
    times: BTreeMap<u64, DateTime<Utc>>,
    /// The last event id read from the store, and the last one heard of.
    head: u64,
    latest: u64,
    /// Receipts for grid events, to send at the next tick.
    receipts: Vec<DashboardReceipt>,
    /// Receipts for events heard of but not read yet.
    early: Vec<Receipt>,
    devices_dirty: bool,
    resync: bool,
    last_devices: Instant,
    last_resync: Instant,
    dropped_seen: u64,
    second: Second,
    second_started: Instant,
}

impl<S: Store> Watch<S> {
    fn new(hub: Arc<Hub<S>>, bus: Option<Bus>, channel: Option<ChannelName>) -> Self {
        let now = Instant::now();
        let dropped_seen = hub.dropped_notices();
        Watch {
            hub,
            bus,
            channel,
            channels: BTreeMap::new(),
            elsewhere: BTreeMap::new(),
            last_elsewhere: None,
            devices: BTreeMap::new(),
            presence: HashMap::new(),
            grid: VecDeque::new(),
            times: BTreeMap::new(),
            head: 0,
            latest: 0,
            receipts: Vec::new(),
            early: Vec::new(),
            devices_dirty: false,
            resync: false,
            last_devices: now,
            last_resync: now,
            dropped_seen,
            second: Second::default(),
            second_started: now,
        }
    }

    fn shows(&self, channel: &ChannelName) -> bool {
        self.channel.as_ref() == Some(channel)
    }

    /// Everything a dashboard needs to start: `hello`, `channels`, and for a channel its
    /// `devices` and `grid`.
    async fn snapshot(&mut self, frames: &mut Frames) -> Result<(), StoreError> {
        frames.push(
            "hello",
            &DashboardHello {
                channel: self.channel.as_ref().map(ToString::to_string),
                grid_events: GRID_EVENTS,
                max_devices: MAX_DEVICES,
                time: format_time(Utc::now()),
            },
        );
        self.read_elsewhere().await;
        self.send_channels(frames, true);
        if self.channel.is_some() {
            self.read_channel(frames).await?;
        }
        Ok(())
    }

    /// The channel's devices and grid, whole.
    async fn read_channel(&mut self, frames: &mut Frames) -> Result<(), StoreError> {
        let Some(channel) = self.channel.clone() else {
            return Ok(());
        };
        self.read_devices(frames, true).await?;
        let store = self.hub.store();
        let head = store.head(&channel).await?;
        let events = store.recent(&channel, GRID_EVENTS).await?;
        let memberships = store.memberships(&channel).await?;
        let mut rows = Vec::with_capacity(events.len());
        for event in &events {
            let receipts = store.receipts(&channel, event.id).await?;
            rows.push(self.row(event, &memberships, &receipts));
        }
        self.grid = events.iter().map(|e| (e.id, e.time)).collect();
        for event in &events {
            self.remember_time(event.id, event.time);
        }
        self.head = head.max(self.head);
        self.latest = self.latest.max(self.head);
        self.early.retain(|r| r.event_id > head);
        self.receipts.clear();
        frames.push(
            "grid",
            &DashboardGrid {
                channel: channel.to_string(),
                head,
                events: rows,
            },
        );
        Ok(())
    }

    /// The grid's row for `event`: who of the followed devices it expects and who acknowledged.
    fn row(
        &self,
        event: &Event,
        memberships: &[Membership],
        receipts: &[Receipt],
    ) -> DashboardEvent {
        let expecting = memberships.iter().filter(|m| m.expects(event.id));
        let expected = expecting
            .clone()
            .map(|m| &m.device)
            .collect::<BTreeSet<_>>()
            .len();
        let recipients: BTreeSet<String> = expecting
            .map(|m| m.device.to_string())
            .filter(|d| self.devices.contains_key(d))
            .collect();
        // The latest receipt of each followed device (receipts come in `seq` order).
        let mut latest: BTreeMap<&str, &Receipt> = BTreeMap::new();
        for receipt in receipts
            .iter()
            .filter(|r| self.devices.contains_key(r.device.as_str()))
        {
            latest.insert(receipt.device.as_str(), receipt);
        }
        DashboardEvent {
            id: event.id,
            time: format_time(event.time),
            event_type: event.event_type.as_ref().map(ToString::to_string),
            publisher: event.publisher.as_ref().map(ToString::to_string),
            expected,
            recipients: recipients.into_iter().collect(),
            acknowledged: latest.values().map(|r| AckJson::from(*r)).collect(),
        }
    }

    fn remember_time(&mut self, id: u64, time: DateTime<Utc>) {
        self.times.insert(id, time);
        while self.times.len() > TIMED_EVENTS {
            self.times.pop_first();
        }
    }

    /// Reads the followed devices; sends them whole, or those that changed.
    async fn read_devices(&mut self, frames: &mut Frames, whole: bool) -> Result<(), StoreError> {
        let Some(channel) = self.channel.clone() else {
            return Ok(());
        };
        let mut page = self
            .hub
            .devices_page(&channel, None, MAX_DEVICES + 1)
            .await?;
        let more = page.len() > MAX_DEVICES;
        page.truncate(MAX_DEVICES);
        let recipients = self
            .hub
            .current_recipients(&channel, page.iter().map(|d| &d.record.device))
            .await?;
        let mut devices = BTreeMap::new();
        for view in &page {
            let mut device = DashboardDevice::new(view, recipients.contains(&view.record.device));
            if let Some(at) = self
                .presence
                .get(&device.device)
                .filter(|at| **at > view.record.last_seen)
            {
                device.last_seen = format_time(*at);
            }
            devices.insert(device.device.clone(), device);
        }
        if whole {
            let list = devices.values().cloned().collect();
            frames.push(
                "devices",
                &DashboardDevices {
                    channel: channel.to_string(),
                    devices: list,
                    more,
                },
            );
        } else {
            for device in devices
                .values()
                .filter(|d| self.devices.get(&d.device) != Some(*d))
            {
                frames.push("device", device);
            }
        }
        self.presence
            .retain(|device, _| devices.contains_key(device));
        self.devices = devices;
        self.devices_dirty = false;
        self.last_devices = Instant::now();
        Ok(())
    }

    /// Reads the other nodes' open feeds, if this node has any and they were not read within
    /// [`REFRESH`]. When Redis cannot answer, the last counts stay.
    async fn read_elsewhere(&mut self) {
        let Some(bus) = &self.bus else { return };
        if self
            .last_elsewhere
            .is_some_and(|last| last.elapsed() < REFRESH)
        {
            return;
        }
        self.last_elsewhere = Some(Instant::now());
        if let Ok(counts) = bus.other_connections().await {
            self.elsewhere = counts
                .into_iter()
                .map(|(c, n)| (c.to_string(), n))
                .collect();
        }
    }

    /// Sends the channels whose open feeds changed (or all of them, `whole`), on every node.
    fn send_channels(&mut self, frames: &mut Frames, whole: bool) {
        let mut now: BTreeMap<String, usize> = self
            .hub
            .connections()
            .into_iter()
            .map(|(c, n)| (c.to_string(), n))
            .collect();
        for (channel, n) in &self.elsewhere {
            *now.entry(channel.clone()).or_default() += n;
        }
        if !whole && now == self.channels {
            return;
        }
        if whole || now.len() > MAX_CHANNELS || self.channels.len() > MAX_CHANNELS {
            let total = now.values().sum();
            let mut list: Vec<ChannelStreamsJson> = now
                .iter()
                .map(|(c, n)| ChannelStreamsJson {
                    channel: c.clone(),
                    open_streams: *n,
                })
                .collect();
            list.sort_by(|a, b| {
                b.open_streams
                    .cmp(&a.open_streams)
                    .then_with(|| a.channel.cmp(&b.channel))
            });
            let more = list.len().saturating_sub(MAX_CHANNELS);
            list.truncate(MAX_CHANNELS);
            frames.push(
                "channels",
                &DashboardChannels {
                    channels: list,
                    total,
                    more,
                },
            );
        } else {
            for (channel, n) in now
                .iter()
                .filter(|(c, n)| self.channels.get(*c) != Some(*n))
            {
                frames.push(
                    "channel",
                    &ChannelStreamsJson {
                        channel: channel.clone(),
                        open_streams: *n,
                    },
                );
            }
            for channel in self.channels.keys().filter(|c| !now.contains_key(*c)) {
                frames.push(
                    "channel",
                    &ChannelStreamsJson {
                        channel: channel.clone(),
                        open_streams: 0,
                    },
                );
            }
        }
        self.channels = now;
    }

    /// Takes in one notice; the next tick sends what it changed.
    fn heard(&mut self, notice: HubNotice) {
        match notice {
            HubNotice::Published { event, .. } => {
                self.second.events += 1;
                if self.shows(&event.channel) {
                    self.second.channel_events += 1;
                    self.latest = self.latest.max(event.id);
                    // Delivered to the devices online by the next tick: their cursors moved.
                    self.devices_dirty = true;
                }
            }
            HubNotice::Receipt { receipt, .. } => {
                self.second.receipts += 1;
                if self.shows(&receipt.channel) {
                    self.second.channel_receipts += 1;
                    self.receipt(receipt);
                }
            }
            HubNotice::Presence { channel, change } => {
                if self.shows(&channel) {
                    self.devices_dirty = true;
                    let device = change.device.to_string();
                    if self.devices.contains_key(&device) {
                        self.presence.insert(device, change.at);
                    }
                }
            }
            HubNotice::Membership(membership) => {
                if self.shows(&membership.channel) {
                    self.devices_dirty = true;
                }
            }
            HubNotice::Completed { .. } | HubNotice::SubscriberCut { .. } => {}
        }
    }

    fn receipt(&mut self, receipt: Receipt) {
        // A receipt moves its device's last acknowledged id.
        self.devices_dirty = true;
        if receipt.event_id > self.head {
            if self.early.len() < EARLY_RECEIPTS {
                self.early.push(receipt);
            } else {
                self.resync = true;
            }
            return;
        }
        let latency = self
            .times
            .get(&receipt.event_id)
            .copied()
            .map(|at| self.time_receipt(receipt.time - at));
        let in_grid = self.grid.iter().any(|(id, _)| *id == receipt.event_id);
        if !in_grid || !self.devices.contains_key(receipt.device.as_str()) {
            return;
        }
        if self.receipts.len() >= MAX_RECEIPTS_PER_TICK {
            self.resync = true;
            return;
        }
        self.receipts.push(DashboardReceipt {
            id: receipt.event_id,
            device: receipt.device.to_string(),
            class: StatusClass::of(&receipt.status).as_str().to_owned(),
            status: receipt.status.to_string(),
            time: format_time(receipt.time),
            latency_ms: latency.unwrap_or(0),
        });
    }

    /// Reads the events published since the last tick: the newest become grid rows.
    async fn read_events(&mut self, frames: &mut Frames) -> Result<(), StoreError> {
        let Some(channel) = self.channel.clone() else {
            return Ok(());
        };
        if self.latest <= self.head {
            return Ok(());
        }
        let from = self
            .head
            .max(self.latest.saturating_sub(TIMED_EVENTS as u64));
        let store = self.hub.store();
        let page = store.read(&channel, from, TIMED_EVENTS).await?;
        let memberships = store.memberships(&channel).await?;
        for event in &page.events {
            self.remember_time(event.id, event.time);
        }
        let skip = page.events.len().saturating_sub(GRID_EVENTS);
        let early = std::mem::take(&mut self.early);
        for event in &page.events[skip..] {
            let receipts: Vec<Receipt> = early
                .iter()
                .filter(|r| r.event_id == event.id)
                .cloned()
                .collect();
            frames.push("event", &self.row(event, &memberships, &receipts));
            self.grid.push_back((event.id, event.time));
        }
        while self.grid.len() > GRID_EVENTS {
            self.grid.pop_front();
        }
        // Events pruned before they could be read are skipped: the stream moves on.
        self.head = page
            .events
            .last()
            .map_or(self.latest, |e| e.id.max(self.head));
        let head = self.head;
        // Receipts for the events just read are in their rows now; they are timed here.
        for receipt in early.iter().filter(|r| r.event_id <= head) {
            if let Some(at) = self.times.get(&receipt.event_id) {
                self.time_receipt(receipt.time - *at);
            }
        }
        self.early = early.into_iter().filter(|r| r.event_id > head).collect();
        Ok(())
    }

    fn time_receipt(&mut self, latency: chrono::TimeDelta) -> u64 {
        let ms = u64::try_from(latency.num_milliseconds()).unwrap_or(0);
        if self.second.latencies.len() < LATENCY_SAMPLES {
            self.second.latencies.push(ms);
        }
        ms
    }

    /// One tick: what changed since the last one.
    async fn flush(&mut self, frames: &mut Frames) -> Result<(), StoreError> {
        self.read_elsewhere().await;
        self.send_channels(frames, false);
        let dropped = self.hub.dropped_notices();
        if dropped > self.dropped_seen && self.last_resync.elapsed() >= REFRESH {
            self.dropped_seen = dropped;
            self.resync = true;
        }
        if self.resync && self.channel.is_some() {
            self.resync = false;
            self.last_resync = Instant::now();
            self.read_channel(frames).await?;
        } else {
            if self.devices_dirty || self.last_devices.elapsed() >= REFRESH {
                self.read_devices(frames, false).await?;
            }
            self.read_events(frames).await?;
            for receipt in std::mem::take(&mut self.receipts) {
                frames.push("receipt", &receipt);
            }
        }
        if self.second_started.elapsed() >= Duration::from_secs(1) {
            self.second_started = Instant::now();
            let mut second = std::mem::take(&mut self.second);
            second.latencies.sort_unstable();
            let shown = self.channel.is_some();
            let stats = DashboardStats {
                events: second.events,
                receipts: second.receipts,
                channel_events: shown.then_some(second.channel_events),
                channel_receipts: shown.then_some(second.channel_receipts),
                latency_p50_ms: second.latencies.get(second.latencies.len() / 2).copied(),
                latency_max_ms: second.latencies.last().copied(),
                dropped_notices: dropped,
            };
            frames.push("stats", &stats);
        }
        Ok(())
    }

    /// Hears notices and sends what changed every tick, until the client goes away, the hub
    /// ends, the client is too slow (cut) or the store fails.
    async fn run(
        mut self,
        mut notices: mpsc::Receiver<HubNotice>,
        tx: mpsc::Sender<Bytes>,
        ended: Arc<OnceLock<EndReason>>,
        closer: Option<ConnectionCloser>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                notice = notices.recv() => match notice {
                    Some(notice) => self.heard(notice),
                    None => return,
                },
                _ = tick.tick() => {
                    let mut frames = Frames::default();
                    if let Err(err) = self.flush(&mut frames).await {
                        tracing::error!("admin stream: {err}");
                        let _ = ended.set(EndReason::StoreFailed);
                        return;
                    }
                    if frames.is_empty() {
                        continue;
                    }
                    match tx.try_send(frames.into_bytes()) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            // Too slow: closed now, it reconnects to a fresh snapshot.
                            let _ = ended.set(EndReason::Lagged);
                            if let Some(closer) = &closer {
                                closer.close();
                            }
                            return;
                        }
                        Err(TrySendError::Closed(_)) => return,
                    }
                }
                () = tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pere_core::{HubConfig, MemoryStore};

    #[tokio::test]
    async fn a_dashboard_that_does_not_read_is_cut_and_its_connection_closed() {
        let hub = Hub::new(MemoryStore::default(), HubConfig::default());
        let watch = Watch::new(hub.clone(), None, None);
        // A queue already full: the client has read nothing.
        let (tx, mut rx) = mpsc::channel(1);
        tx.try_send(Bytes::from_static(b"unread")).unwrap();
        let ended = Arc::new(OnceLock::new());
        let closer = ConnectionCloser::default();
        let task =
            tokio::spawn(watch.run(hub.observe(16), tx, ended.clone(), Some(closer.clone())));
        // The first `stats` (a second in) finds no room.
        tokio::time::timeout(Duration::from_secs(10), closer.closed())
            .await
            .expect("cut");
        task.await.unwrap();
        assert_eq!(ended.get(), Some(&EndReason::Lagged));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"unread"[..]));
        assert!(rx.recv().await.is_none(), "nothing more is queued for it");
    }

    #[tokio::test]
    async fn the_grid_keeps_the_latest_events_and_times_their_receipts() {
        let hub = Hub::new(MemoryStore::default(), HubConfig::default());
        let channel = ChannelName::new("C").unwrap();
        let device = pere_core::DeviceId::new("D1").unwrap();
        hub.register(&channel, &device).await.unwrap();
        let mut watch = Watch::new(hub.clone(), None, Some(channel.clone()));
        let mut notices = hub.observe(1024);
        watch.snapshot(&mut Frames::default()).await.unwrap();
        for n in 0..(GRID_EVENTS + 5) {
            let event = pere_core::NewEvent {
                publisher: None,
                event_type: None,
                body: n.to_string(),
                idempotency_key: None,
            };
            hub.publish(&channel, event).await.unwrap();
        }
        hub.acknowledge(&channel, 3, &device, "ok".into())
            .await
            .unwrap();
        let last = (GRID_EVENTS + 5) as u64;
        hub.acknowledge(&channel, last, &device, "ok".into())
            .await
            .unwrap();
        while let Ok(notice) = notices.try_recv() {
            watch.heard(notice);
        }
        let mut frames = Frames::default();
        watch.flush(&mut frames).await.unwrap();
        let text = String::from_utf8(frames.into_bytes().to_vec()).unwrap();
        assert_eq!(
            text.matches("event: event\n").count(),
            GRID_EVENTS,
            "{text}"
        );
        assert_eq!(watch.grid.front().map(|e| e.0), Some(6));
        // Both receipts were heard before their events were read: the newest is in its row, the
        // other left the grid; both were timed.
        assert!(
            text.contains(&format!("\"id\":{last},"))
                && text.contains("\"acknowledged\":[{\"device\":\"D1\"")
        );
        assert_eq!(watch.second.latencies.len(), 2);
        assert!(!text.contains("event: receipt"));
    }
}
