//! Recipients, presence and device views: who a channel expects receipts from, which devices
//! are online (this node's streams, or the cluster's when presence is shared), and what the
//! admin views show of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pere_proto::event::now;
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::{DeviceOp, DeviceRecord, DeviceTouch, Membership};
use pere_proto::view::{ChannelView, DeviceView};

use crate::error::StoreError;
use crate::follow::PresenceLog;
use crate::notice::HubNotice;
use crate::store::Store;

use super::channel::ChannelHub;
use super::Hub;

/// Live presence of a device on this node: how many streams, how far deliveries got.
#[derive(Debug, Default)]
pub(super) struct LiveDevice {
    pub(super) streams: AtomicUsize,
    pub(super) delivered: AtomicU64,
}

impl<S: Store> Hub<S> {
    pub(super) async fn add_recipient(
        &self,
        hub: &ChannelHub,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Membership, StoreError> {
        if let Some(current) = hub.ledger().recipient(device) {
            return Ok(current);
        }
        let membership = self.watched(self.store.add_recipient(channel, device, now()).await)?;
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

    pub(super) fn apply_membership_to(&self, hub: &ChannelHub, membership: &Membership) {
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
    pub(super) async fn presence_log_of(
        &self,
        hub: &ChannelHub,
    ) -> Result<Arc<PresenceLog>, StoreError> {
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

    pub(super) fn shares_presence(&self) -> bool {
        self.shared_presence.load(Ordering::Relaxed)
    }

    /// Notes that `device`'s count of streams on `channel` changed here, for the next
    /// [`Hub::presence_updates`].
    pub(super) fn presence_touched(&self, channel: &ChannelName, device: &DeviceId) {
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

    pub(super) fn apply_presence_to(
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
        self.writable()?;
        let hub = self.channel(channel).await?;
        let touched = self
            .store
            .touch_device(DeviceTouch {
                channel: channel.clone(),
                device: device.clone(),
                op: DeviceOp::Register,
                at: now(),
                last_event_id: None,
                delivered: 0,
            })
            .await;
        self.watched(touched)?;
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
        self.writable()?;
        let hub = self.channel(channel).await?;
        let ended = self.watched(self.store.remove_recipient(channel, device).await)?;
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
    pub(super) async fn offline_recipients(
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
            .collect())
    }

    pub(super) fn live_device(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Option<Arc<LiveDevice>> {
        let devices = self.live_devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.get(&(channel.clone(), device.clone())).cloned()
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
            .filter(|d| ledger.is_recipient(d))
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

    pub(super) fn with_presence(&self, mut record: DeviceRecord) -> DeviceView {
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
}
