//! The in-memory store: history, receipts and device records in process memory, bounded by
//! [`Retention`]. Nothing survives a restart; use it for tests, demos and ephemeral channels.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::StoreError;
use crate::event::{now, valid_idempotency_key, Event, NewEvent};
use crate::name::{ChannelName, DeviceId};
use crate::receipt::{DeviceRecord, DeviceTouch, Membership, Receipt};
use crate::store::{Appended, EventPage, Retention, Store};

/// The in-memory [`Store`]. Each channel has its own lock, so channels never contend.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    retention: Retention,
    channels: RwLock<HashMap<ChannelName, Arc<Mutex<ChannelData>>>>,
}

#[derive(Debug, Default)]
struct ChannelData {
    head: u64,
    events: VecDeque<Arc<Event>>,
    // The idempotency keys of retained events; an event's key leaves with it.
    keys: HashMap<String, Arc<Event>>,
    // Keyed by event id so receipts are pruned together with their events.
    receipts: BTreeMap<u64, Vec<Receipt>>,
    devices: BTreeMap<DeviceId, DeviceRecord>,
    receipt_seq: u64,
    // The receipt stream, in seq order; bounded like the events.
    receipt_log: VecDeque<Receipt>,
    memberships: Vec<Membership>,
}

impl ChannelData {
    fn first_retained(&self) -> u64 {
        self.events.front().map_or(self.head + 1, |e| e.id)
    }

    fn prune(&mut self, retention: &Retention) {
        while self.events.len() > retention.max_events {
            self.pop_oldest();
        }
        if let Some(max_age) = retention
            .max_age
            .and_then(|a| chrono::Duration::from_std(a).ok())
        {
            let oldest_allowed = now() - max_age;
            while self.events.front().is_some_and(|e| e.time < oldest_allowed) {
                self.pop_oldest();
            }
        }
        while self.receipt_log.len() > retention.max_events {
            self.receipt_log.pop_front();
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
}

impl ChannelData {
    fn pop_oldest(&mut self) {
        let Some(event) = self.events.pop_front() else {
            return;
        };
        if let Some(key) = &event.idempotency_key {
            self.keys.remove(key);
        }
    }
}

impl MemoryStore {
    /// An empty store keeping at most what `retention` allows per channel.
    pub fn new(retention: Retention) -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                retention,
                channels: RwLock::default(),
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
        if event
            .idempotency_key
            .as_deref()
            .is_some_and(|key| !valid_idempotency_key(key))
        {
            return Err(StoreError::InvalidIdempotencyKey);
        }
        let data = self.channel(channel);
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stored) = event
            .idempotency_key
            .as_ref()
            .and_then(|key| data.keys.get(key))
        {
            return Ok(Appended {
                event: stored.clone(),
                new: false,
            });
        }
        let id = data.head + 1;
        let event = Arc::new(Event::new(channel.clone(), id, now(), event));
        data.head = id;
        data.events.push_back(event.clone());
        if let Some(key) = &event.idempotency_key {
            data.keys.insert(key.clone(), event.clone());
        }
        data.prune(&self.inner.retention);
        Ok(Appended { event, new: true })
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
        mut receipt: Receipt,
    ) -> Result<(Receipt, DeviceRecord), StoreError> {
        let Some(data) = self.existing(&receipt.channel) else {
            return Err(StoreError::UnknownEvent {
                id: receipt.event_id,
            });
        };
        let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
        if receipt.event_id == 0 || receipt.event_id > data.head {
            return Err(StoreError::UnknownEvent {
                id: receipt.event_id,
            });
        }
        let record = match data.devices.get_mut(&receipt.device) {
            Some(record) => record,
            None => {
                let touch = DeviceTouch {
                    channel: receipt.channel.clone(),
                    device: receipt.device.clone(),
                    op: crate::receipt::DeviceOp::Feedback,
                    at: receipt.time,
                    last_event_id: None,
                    delivered: 0,
                };
                data.devices
                    .entry(receipt.device.clone())
                    .or_insert_with(|| DeviceRecord::first(&touch))
            }
        };
        record.apply_receipt(&receipt);
        let record = record.clone();
        data.receipt_seq += 1;
        receipt.seq = data.receipt_seq;
        if receipt.event_id >= data.first_retained() {
            data.receipts
                .entry(receipt.event_id)
                .or_default()
                .push(receipt.clone());
        }
        data.receipt_log.push_back(receipt.clone());
        data.prune(&self.inner.retention);
        Ok((receipt, record))
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
            let acked = |id: u64| {
                d.receipts
                    .get(&id)
                    .is_some_and(|rs| rs.iter().any(|r| &r.device == device))
            };
            d.events
                .iter()
                .skip(start)
                .filter(|e| !acked(e.id))
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
