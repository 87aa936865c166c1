//! The in-memory store: history, receipts and device records in process memory, bounded by
//! [`Retention`]. Nothing survives a restart; use it for tests, demos and ephemeral channels.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use pere_proto::event::{now, valid_idempotency_key, Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{DeviceRecord, DeviceTouch, Membership, Receipt};

use crate::error::StoreError;
use crate::store::{
    check_keys, check_receipt_keys, plan_batch, plan_receipts, record_planned, scoped_key,
    Appended, EventPage, Plan, ReceiptBatch, RecordedLine, RecordedReceipt, Retention, Store,
};

/// The in-memory [`Store`]. Each channel has its own lock, so channels never contend.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    retention: Retention,
    channels: RwLock<HashMap<ChannelName, Arc<Mutex<ChannelData>>, ahash::RandomState>>,
    // Every channel's ids are above it (see the store contract's floor).
    floor: AtomicU64,
    // Set by `lose_everything` until a node adopts the store: writes fail as a Redis that came
    // back empty makes them fail.
    changed: AtomicBool,
}

#[derive(Debug, Default)]
struct ChannelData {
    head: u64,
    events: VecDeque<Arc<Event>>,
    // The idempotency keys of retained events, each in its publisher's scope (`scoped_key`);
    // an event's key leaves with it, or when older than the window.
    keys: HashMap<String, Arc<Event>>,
    // Keyed events in the order their keys were given, to forget keys past the window.
    key_order: VecDeque<Arc<Event>>,
    // The idempotency keys of receipts, each in its device's scope (`scoped_key`), and the
    // order they were given, (seq, time, scoped key).
    receipt_keys: HashMap<String, Receipt>,
    receipt_key_order: VecDeque<(u64, chrono::DateTime<chrono::Utc>, String)>,
    // Keyed by event id so receipts are pruned together with their events.
    receipts: BTreeMap<u64, Vec<Receipt>>,
    devices: BTreeMap<DeviceId, DeviceRecord>,
    receipt_seq: u64,
    // The receipt stream, in seq order; bounded like the events.
    receipt_log: VecDeque<Receipt>,
    memberships: Vec<Membership>,
    // Ids a store change made this channel skip (see the store contract's floor).
    lost: Vec<RangeInclusive<u64>>,
}

impl ChannelData {
    /// Gives back the spare room of its queues and maps.
    fn shrink(&mut self) {
        self.events.shrink_to_fit();
        self.keys.shrink_to_fit();
        self.key_order.shrink_to_fit();
        self.receipt_keys.shrink_to_fit();
        self.receipt_key_order.shrink_to_fit();
        self.receipt_log.shrink_to_fit();
        self.memberships.shrink_to_fit();
    }

    fn first_retained(&self) -> u64 {
        self.events.front().map_or(self.head + 1, |e| e.id)
    }

    /// Applies `retention` as of `at` (the caller's clock reading, so an append reads it once).
    fn prune(&mut self, retention: &Retention, at: chrono::DateTime<chrono::Utc>) {
        while self.events.len() > retention.max_events {
            self.pop_oldest();
        }
        if let Some(max_age) = retention.max_age {
            // Milliseconds, as times are kept: integer arithmetic on the hot path of appends.
            let age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
            let oldest_allowed = at.timestamp_millis().saturating_sub(age);
            while self
                .events
                .front()
                .is_some_and(|e| e.time.timestamp_millis() < oldest_allowed)
            {
                self.pop_oldest();
            }
        }
        while self.receipt_log.len() > retention.max_events {
            self.receipt_log.pop_front();
        }
        if !self.key_order.is_empty() || !self.receipt_key_order.is_empty() {
            self.forget_keys(retention, at);
        }
        let first = self.first_retained();
        if self
            .receipts
            .first_key_value()
            .is_some_and(|(&id, _)| id < first)
        {
            self.receipts = self.receipts.split_off(&first);
        }
    }

    /// Forgets the keys past the window, and those whose event or receipt is gone.
    fn forget_keys(&mut self, retention: &Retention, at: chrono::DateTime<chrono::Utc>) {
        let cutoff = retention.key_cutoff(at);
        while let Some(event) = self.key_order.front() {
            let expired = cutoff.is_some_and(|c| event.time < c);
            if !expired && event.id >= self.first_retained() {
                break;
            }
            if let Some(key) = &event.idempotency_key {
                let key = scoped_key(event.publisher.as_ref(), key);
                // The key may have been given again, to a newer event, once forgotten.
                if self.keys.get(&key).is_some_and(|held| held.id == event.id) {
                    self.keys.remove(&key);
                }
            }
            self.key_order.pop_front();
        }
        let oldest_receipt = self.receipt_log.front().map_or(u64::MAX, |r| r.seq);
        while let Some((seq, time, _)) = self.receipt_key_order.front() {
            if *seq >= oldest_receipt && cutoff.is_none_or(|c| *time >= c) {
                break;
            }
            let Some((seq, _, key)) = self.receipt_key_order.pop_front() else {
                break;
            };
            if self
                .receipt_keys
                .get(&key)
                .is_some_and(|held| held.seq == seq)
            {
                self.receipt_keys.remove(&key);
            }
        }
    }
}

/// The device touch a receipt stands for, for a device first seen by its receipt.
fn receipt_touch(receipt: &Receipt) -> DeviceTouch {
    DeviceTouch {
        channel: receipt.channel.clone(),
        device: receipt.device.clone(),
        op: pere_proto::receipt::DeviceOp::Feedback,
        at: receipt.time,
        last_event_id: None,
        delivered: 0,
    }
}

impl ChannelData {
    fn pop_oldest(&mut self) {
        // Its key, if any, is forgotten by `prune`, which walks `key_order`.
        self.events.pop_front();
    }

    /// The retained event of `publisher` holding `key`, if the key is still remembered.
    fn keyed(
        &self,
        publisher: Option<&DeviceId>,
        key: &str,
        retention: &Retention,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Option<&Arc<Event>> {
        self.keys
            .get(&scoped_key(publisher, key))
            .filter(|e| e.id >= self.first_retained() && retention.key_alive(e.time, at))
    }

    /// Raises the head to `floor` when it is below, the ids between becoming lost, and what
    /// was retained from before with them, so retained ids run without a hole from the floor.
    fn pass_floor(&mut self, floor: u64) {
        if self.head < floor {
            self.lost.push(self.head + 1..=floor);
            self.head = floor;
            self.events.clear();
            self.keys.clear();
            self.key_order.clear();
        }
    }

    /// Appends an event that passed every check: nothing here can fail.
    fn push(&mut self, event: Arc<Event>) {
        self.head = event.id;
        self.events.push_back(event.clone());
        if let Some(key) = &event.idempotency_key {
            self.keys
                .insert(scoped_key(event.publisher.as_ref(), key), event.clone());
            self.key_order.push_back(event);
        }
    }

    fn record_receipt(
        &mut self,
        receipt: Receipt,
        floor: u64,
    ) -> Result<(Receipt, DeviceRecord), StoreError> {
        // An id under the floor was given out before the store changed: as good as pruned.
        if receipt.event_id == 0 || receipt.event_id > self.head.max(floor) {
            return Err(StoreError::UnknownEvent {
                id: receipt.event_id,
            });
        }
        let receipt = self.keep_receipt(receipt);
        let record = self.apply_to_device(&receipt, []).clone();
        Ok((receipt, record))
    }

    /// The receipt of `device` held under `key`, if the key is still remembered at `at`.
    fn held_receipt(
        &self,
        device: &DeviceId,
        key: &str,
        retention: &Retention,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Option<&Receipt> {
        let oldest = self.receipt_log.front().map_or(u64::MAX, |r| r.seq);
        self.receipt_keys
            .get(&scoped_key(Some(device), key))
            .filter(|r| r.seq >= oldest && retention.key_alive(r.time, at))
    }

    /// Whether `device` has a receipt kept for event `id`. Asked for every event a cumulative
    /// receipt covers: every receipt raises its device's `last_acked`, so above it (every id,
    /// for a device that acknowledges as it goes) the answer needs no walk through the event's
    /// receipts, which on a channel of 1,000 devices compared ~500 names.
    ///
    /// `last_acked` is the device's last acknowledged id (`None` for a device never seen),
    /// looked up once by the caller for all the ids it asks about.
    fn acknowledged_after(&self, last_acked: Option<u64>, id: u64, device: &DeviceId) -> bool {
        if last_acked.is_none_or(|last| id > last) {
            return false;
        }
        self.receipts
            .get(&id)
            .is_some_and(|rs| rs.iter().any(|r| &r.device == device))
    }

    /// Applies `first` and then `more` receipts of the same device, in order, to its record,
    /// looked up once; the record after them.
    fn apply_to_device<'r>(
        &mut self,
        first: &Receipt,
        more: impl IntoIterator<Item = &'r Receipt>,
    ) -> &DeviceRecord {
        let record = self
            .devices
            .entry(first.device.clone())
            .or_insert_with(|| DeviceRecord::first(&receipt_touch(first)));
        record.apply_receipt(first);
        for receipt in more {
            record.apply_receipt(receipt);
        }
        record
    }

    /// Keeps a receipt that passed every check, giving it its place in the receipt stream; its
    /// device's record is [`ChannelData::apply_to_device`]'s.
    fn keep_receipt(&mut self, mut receipt: Receipt) -> Receipt {
        self.receipt_seq += 1;
        receipt.seq = self.receipt_seq;
        if receipt.event_id >= self.first_retained() {
            self.receipts
                .entry(receipt.event_id)
                .or_default()
                .push(receipt.clone());
        }
        self.receipt_log.push_back(receipt.clone());
        receipt
    }

    /// Remembers `key` for a receipt just recorded, in its device's scope.
    fn note_receipt_key(&mut self, receipt: &Receipt, key: &str) {
        let key = scoped_key(Some(&receipt.device), key);
        self.receipt_keys.insert(key.clone(), receipt.clone());
        self.receipt_key_order
            .push_back((receipt.seq, receipt.time, key));
    }
}

impl MemoryStore {
    /// An empty store keeping at most what `retention` allows per channel.
    pub fn new(retention: Retention) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                retention,
                channels: RwLock::default(),
                floor: AtomicU64::new(0),
                changed: AtomicBool::new(false),
            }),
        }
    }

    /// Forgets everything, as a Redis that restarted without its data does, and fails every
    /// write with [`StoreError::Changed`] until a node adopts the store ([`Store::adopt`]): for
    /// tests of what a node does when its store changes under it.
    pub fn lose_everything(&self) {
        self.inner
            .channels
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.inner.changed.store(true, Ordering::SeqCst);
    }

    fn floor(&self) -> u64 {
        self.inner.floor.load(Ordering::SeqCst)
    }

    /// Refuses writes while the store changed and no node adopted it.
    fn unchanged(&self) -> Result<(), StoreError> {
        if self.inner.changed.load(Ordering::SeqCst) {
            return Err(StoreError::Changed {
                detail: "the memory store lost everything".to_owned(),
            });
        }
        Ok(())
    }

    /// The channel's data for a receipt: it exists, or the receipt's event is under the floor
    /// (given out before the store changed), so the channel is made.
    fn for_receipt(&self, receipt: &Receipt) -> Result<Arc<Mutex<ChannelData>>, StoreError> {
        match self.existing(&receipt.channel) {
            Some(data) => Ok(data),
            None if receipt.event_id > 0 && receipt.event_id <= self.floor() => {
                Ok(self.channel(&receipt.channel))
            }
            None => Err(StoreError::UnknownEvent {
                id: receipt.event_id,
            }),
        }
    }

    fn existing(&self, channel: &ChannelName) -> Option<Arc<Mutex<ChannelData>>> {
        self.inner
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .cloned()
    }

    fn channel(&self, channel: &ChannelName) -> Arc<Mutex<ChannelData>> {
        if let Some(data) = self.existing(channel) {
            return data;
        }
        let mut channels = self
            .inner
            .channels
            .write()
            .unwrap_or_else(|e| e.into_inner());
        channels.entry(channel.clone()).or_default().clone()
    }

    fn with_existing<T>(
        &self,
        channel: &ChannelName,
        empty: T,
        f: impl FnOnce(&ChannelData) -> T,
    ) -> T {
        match self.existing(channel) {
            Some(data) => f(&data.lock().unwrap_or_else(|e| e.into_inner())),
            None => empty,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Retention::default())
    }
}

impl Store for MemoryStore {
    async fn append(&self, channel: &ChannelName, event: NewEvent) -> Result<Appended, StoreError> {
        check_keys(std::slice::from_ref(&event))?;
        self.unchanged()?;
        let retention = &self.inner.retention;
        let data = self.channel(channel);
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        let at = now();
        if let Some(stored) = event
            .idempotency_key
            .as_deref()
            .and_then(|key| data.keyed(event.publisher.as_ref(), key, retention, at))
        {
            return Ok(Appended {
                event: stored.clone(),
                new: false,
            });
        }
        data.pass_floor(self.floor());
        let event = Arc::new(Event::new(channel.clone(), data.head + 1, at, event));
        data.push(event.clone());
        data.prune(retention, at);
        Ok(Appended { event, new: true })
    }

    async fn append_batch(
        &self,
        channel: &ChannelName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>, StoreError> {
        check_keys(&events)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.unchanged()?;
        let retention = &self.inner.retention;
        let data = self.channel(channel);
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        let at = now();
        // Everything is checked before anything changes: all or none under one lock.
        let plans = plan_batch(&events, |publisher, key| {
            data.keyed(publisher, key, retention, at).cloned()
        })?;
        if plans.iter().any(|plan| matches!(plan, Plan::New)) {
            data.pass_floor(self.floor());
        }
        let mut appended: Vec<Appended> = Vec::with_capacity(events.len());
        for (new, plan) in events.into_iter().zip(plans) {
            let answer = match plan {
                Plan::New => {
                    let event = Arc::new(Event::new(channel.clone(), data.head + 1, at, new));
                    data.push(event.clone());
                    Appended { event, new: true }
                }
                Plan::Stored(event) => Appended { event, new: false },
                Plan::Same(earlier) => Appended {
                    event: appended[earlier].event.clone(),
                    new: false,
                },
            };
            appended.push(answer);
        }
        data.prune(retention, at);
        Ok(appended)
    }

    async fn head(&self, channel: &ChannelName) -> Result<u64, StoreError> {
        Ok(self.with_existing(channel, 0, |d| d.head))
    }

    async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        Ok(self.with_existing(
            channel,
            EventPage {
                first_retained: 1,
                ..EventPage::default()
            },
            |d| {
                let start = d.events.partition_point(|e| e.id <= after);
                EventPage {
                    events: d.events.iter().skip(start).take(limit).cloned().collect(),
                    first_retained: d.first_retained(),
                    head: d.head,
                    unreadable: Vec::new(),
                }
            },
        ))
    }

    async fn recent(
        &self,
        channel: &ChannelName,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        Ok(self.with_existing(channel, Vec::new(), |d| {
            d.events
                .iter()
                .skip(d.events.len().saturating_sub(limit))
                .cloned()
                .collect()
        }))
    }

    async fn event(
        &self,
        channel: &ChannelName,
        id: u64,
    ) -> Result<Option<Arc<Event>>, StoreError> {
        Ok(self.with_existing(channel, None, |d| {
            let i = d.events.partition_point(|e| e.id < id);
            d.events.get(i).filter(|e| e.id == id).cloned()
        }))
    }

    async fn record_receipt(
        &self,
        receipt: Receipt,
    ) -> Result<(Receipt, DeviceRecord), StoreError> {
        self.unchanged()?;
        let data = self.for_receipt(&receipt)?;
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        let at = receipt.time;
        let recorded = data.record_receipt(receipt, self.floor())?;
        data.prune(&self.inner.retention, at);
        Ok(recorded)
    }

    async fn record_receipt_keyed(
        &self,
        receipt: Receipt,
        key: String,
    ) -> Result<RecordedReceipt, StoreError> {
        if !valid_idempotency_key(&key) {
            return Err(StoreError::InvalidIdempotencyKey);
        }
        self.unchanged()?;
        let data = self.for_receipt(&receipt)?;
        let retention = &self.inner.retention;
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stored) = data
            .held_receipt(&receipt.device, &key, retention, receipt.time)
            .cloned()
        {
            let record = data
                .devices
                .get(&stored.device)
                .cloned()
                .unwrap_or_else(|| DeviceRecord::first(&receipt_touch(&stored)));
            return Ok(RecordedReceipt {
                receipt: stored,
                record,
                new: false,
            });
        }
        let (receipt, record) = data.record_receipt(receipt, self.floor())?;
        data.note_receipt_key(&receipt, &key);
        data.prune(retention, receipt.time);
        Ok(RecordedReceipt {
            receipt,
            record,
            new: true,
        })
    }

    async fn record_receipts(&self, batch: ReceiptBatch) -> Result<Vec<RecordedLine>, StoreError> {
        check_receipt_keys(&batch.lines)?;
        if batch.lines.is_empty() {
            return Ok(Vec::new());
        }
        self.unchanged()?;
        let floor = self.floor();
        let data = match self.existing(&batch.channel) {
            Some(data) => data,
            None => {
                // Ids under the floor were given out before the store changed: as good as
                // pruned, so the channel is made for them; any other id was never published.
                let unknown = batch
                    .lines
                    .iter()
                    .find(|l| l.event_id == 0 || l.event_id > floor);
                if let Some(line) = unknown {
                    return Err(StoreError::UnknownEvent { id: line.event_id });
                }
                self.channel(&batch.channel)
            }
        };
        let retention = &self.inner.retention;
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        let at = batch.time;
        let last_acked = data.devices.get(&batch.device).map(|r| r.last_acked);
        // Everything is checked before anything changes: all or none under one lock.
        let plans = plan_receipts(
            &batch,
            data.head.max(floor),
            |key| {
                data.held_receipt(&batch.device, key, retention, at)
                    .cloned()
            },
            |id| data.acknowledged_after(last_acked, id, &batch.device),
        )?;
        let recorded = record_planned(batch, plans, |receipt, key| {
            let receipt = data.keep_receipt(receipt);
            if let Some(key) = key {
                data.note_receipt_key(&receipt, &key);
            }
            Ok::<_, Infallible>(receipt)
        });
        let Ok(recorded) = recorded;
        // The device's record once for the batch: the lines are all of one device.
        let mut new = recorded
            .iter()
            .filter(|line| line.new)
            .map(|line| &line.receipt);
        if let Some(first) = new.next() {
            data.apply_to_device(first, new);
        }
        data.prune(retention, at);
        Ok(recorded)
    }

    async fn receipts(
        &self,
        channel: &ChannelName,
        event_id: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        Ok(self.with_existing(channel, Vec::new(), |d| {
            d.receipts.get(&event_id).cloned().unwrap_or_default()
        }))
    }

    async fn touch_device(&self, touch: DeviceTouch) -> Result<DeviceRecord, StoreError> {
        let data = self.channel(&touch.channel);
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        let record = data
            .devices
            .entry(touch.device.clone())
            .and_modify(|r| r.apply(&touch))
            .or_insert_with(|| DeviceRecord::first(&touch));
        Ok(record.clone())
    }

    async fn device(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.with_existing(channel, None, |d| d.devices.get(device).cloned()))
    }

    async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self.with_existing(channel, Vec::new(), |d| {
            d.devices.values().cloned().collect()
        }))
    }

    async fn devices_page(
        &self,
        channel: &ChannelName,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.clone()));
        Ok(self.with_existing(channel, Vec::new(), |d| {
            d.devices
                .range((start, Bound::Unbounded))
                .take(limit)
                .map(|(_, r)| r.clone())
                .collect()
        }))
    }

    async fn receipt_head(&self, channel: &ChannelName) -> Result<u64, StoreError> {
        Ok(self.with_existing(channel, 0, |d| d.receipt_seq))
    }

    async fn receipts_after(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Receipt>, StoreError> {
        Ok(self.with_existing(channel, Vec::new(), |d| {
            let start = d.receipt_log.partition_point(|r| r.seq <= after);
            d.receipt_log
                .iter()
                .skip(start)
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn unacknowledged(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        Ok(self.with_existing(channel, Vec::new(), |d| {
            let start = d.events.partition_point(|e| e.id <= after);
            let last_acked = d.devices.get(device).map(|r| r.last_acked);
            d.events
                .iter()
                .skip(start)
                .filter(|e| !d.acknowledged_after(last_acked, e.id, device))
                .take(limit)
                .cloned()
                .collect()
        }))
    }

    async fn add_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Membership, StoreError> {
        let data = self.channel(channel);
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = data
            .memberships
            .iter()
            .find(|m| &m.device == device && m.is_current())
        {
            return Ok(current.clone());
        }
        let membership = Membership {
            channel: channel.clone(),
            device: device.clone(),
            joined_after: data.head,
            left_after: None,
            since: at,
        };
        data.memberships.push(membership.clone());
        Ok(membership)
    }

    async fn remove_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Option<Membership>, StoreError> {
        let Some(data) = self.existing(channel) else {
            return Ok(None);
        };
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        let head = data.head;
        Ok(data
            .memberships
            .iter_mut()
            .find(|m| &m.device == device && m.is_current())
            .map(|m| {
                m.left_after = Some(head);
                m.clone()
            }))
    }

    async fn memberships(&self, channel: &ChannelName) -> Result<Vec<Membership>, StoreError> {
        Ok(self.with_existing(channel, Vec::new(), |d| d.memberships.clone()))
    }

    async fn channels(&self) -> Result<Vec<ChannelName>, StoreError> {
        let channels = self
            .inner
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<ChannelName> = channels.keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    async fn adopt(&self, high_water: u64) -> Result<u64, StoreError> {
        let floor = self
            .inner
            .floor
            .fetch_max(high_water, Ordering::SeqCst)
            .max(high_water);
        self.inner.changed.store(false, Ordering::SeqCst);
        Ok(floor)
    }

    async fn reseed(&self, channel: &ChannelName, floor: u64) -> Result<(), StoreError> {
        let data = self.channel(channel);
        data.lock()
            .unwrap_or_else(|e| e.into_inner())
            .pass_floor(floor);
        Ok(())
    }

    async fn lost(&self, channel: &ChannelName) -> Result<Vec<RangeInclusive<u64>>, StoreError> {
        Ok(self.with_existing(channel, Vec::new(), |d| d.lost.clone()))
    }

    fn channel_unloaded(&self, channel: &ChannelName) {
        // The events, receipts and records are the storage and stay; the room their queues
        // grew into while the channel was busy goes.
        let channels = self
            .inner
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(data) = channels.get(channel) {
            data.lock().unwrap_or_else(|e| e.into_inner()).shrink();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[tokio::test]
    async fn conformance_suite() {
        conformance::run_all(|retention| async move { MemoryStore::new(retention) }).await;
    }
}
