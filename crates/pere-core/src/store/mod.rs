//! The storage contract ([`Store`]) and its backends: everything that must outlive a restart goes
//! through it (events, receipts, device records).
//!
//! # Contract
//! - `append` gives the event the channel's next id and makes it readable; ids of one channel are
//!   strictly increasing and never reused, and an append that fails consumes no id.
//! - An event is durable, by the backend's own promise, when `append` returns.
//! - Idempotency keys are per publisher: an event's key is held in the scope of its publishing
//!   device ([`NewEvent::publisher`]; publishers without one share the anonymous scope), a
//!   receipt's in the scope of its device. Two publishers' equal keys are two keys: neither
//!   finds, nor is refused by, the other's.
//! - An event with an idempotency key its publisher already holds among the channel's retained
//!   events is not stored again: `append` returns the stored one with [`Appended::new`] false.
//!   Keys go with their events when retention prunes them. A key that is not valid (see
//!   [`valid_idempotency_key`](pere_proto::event::valid_idempotency_key)) is refused.
//! - Idempotency keys are forgotten once older than [`Retention::idempotency_window`] (an event
//!   keyed with a forgotten key is a new event), or sooner when their event is pruned.
//! - `append_batch` is `append` for many events of one channel, all or none: see
//!   [`Store::append_batch`].
//! - A receipt recorded with an idempotency key is recorded once: see
//!   [`Store::record_receipt_keyed`].
//! - `record_receipts` is `record_receipt_keyed` for several receipts of one device on one
//!   channel, all or none: see [`Store::record_receipts`].
//! - `read(after)` returns retained events with ids greater than `after`, in order, and says which
//!   is the oldest id still retained, so a reader can tell "pruned" from "never existed".
//! - Every store knows who it is (an id written when it was created, with its data) and keeps a
//!   **floor** under every channel's ids: a channel's next id is above both its head and the
//!   floor. When a store changes under a node (a Redis that came back empty or is another one, a
//!   database file put back from a backup), the node that notices adopts it
//!   ([`Store::adopt`]): the floor rises above every id the node handed out, so no id a client
//!   may have seen is given again; the ids a channel skips to pass the floor are *lost*
//!   ([`Store::lost`]): a feed resuming inside them hears `pere-reset`, one replaying across them
//!   `pere-gap`. Until then writes fail with [`StoreError::Changed`]. What a channel still held
//!   under the floor may stay (Redis keeps it: after a failover that lost only the last
//!   writes, the rest are real events) or go with the floor (memory, SQLite).
//! - Retained ids run without a hole from the oldest to the head, but for lost ids. An event the store holds but
//!   cannot read back as written (a damaged file) is never returned: `read` names its id in
//!   [`EventPage::unreadable`], `event` answers [`StoreError::EventDamaged`], the other reads
//!   leave it out; [`Store::damage`] counts what was met.
//! - Idle channels cost no memory beyond what the backend stores in it: a store keeps in
//!   memory what it needs for the channels in use, and may drop the rest when told
//!   ([`Store::channel_unloaded`]). The memory store's events are its storage, so they stay.
//! - Device records change only through [`DeviceTouch`] and [`Receipt`], applied atomically with
//!   the rules of [`DeviceRecord::apply`] and [`DeviceRecord::apply_receipt`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use pere_proto::event::{Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::{DeviceRecord, DeviceTouch, Membership, Receipt};

use crate::error::StoreError;

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "redis")]
pub use self::redis::{RedisClientCert, RedisOptions, RedisStore, RedisTls};
pub use memory::MemoryStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteOptions, SqliteStore};

/// How much history each channel keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most events kept per channel; older ones are pruned.
    pub max_events: usize,
    /// Events older than this are pruned; `None` keeps them until `max_events` pushes them out.
    pub max_age: Option<Duration>,
    /// How long an idempotency key (of an event or a receipt) is remembered: a retry later than
    /// this is a new event. `None` remembers a key as long as its event or receipt is retained.
    pub idempotency_window: Option<Duration>,
}

/// The default [`Retention::idempotency_window`]: a day, longer than any client's retries.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

impl Retention {
    /// Whether a key given at `time` is still remembered at `now`.
    pub fn key_alive(
        &self,
        time: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        self.key_cutoff(now).is_none_or(|cutoff| time >= cutoff)
    }

    /// Keys given before this time are forgotten (`None`: no window).
    pub fn key_cutoff(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let window = chrono::Duration::from_std(self.idempotency_window?).ok()?;
        now.checked_sub_signed(window)
    }
}

impl Default for Retention {
    fn default() -> Self {
        // Enough to ride out a long disconnect of a phone on a busy channel, small enough that a
        // full replay stays cheap.
        Retention {
            max_events: 10_000,
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            idempotency_window: Some(IDEMPOTENCY_WINDOW),
        }
    }
}

/// A page of history, as returned by [`Store::read`].
#[derive(Debug, Clone, Default)]
pub struct EventPage {
    /// Retained events after the requested position, oldest first.
    pub events: Vec<Arc<Event>>,
    /// The oldest id still retained (`head + 1` when nothing is).
    pub first_retained: u64,
    /// The channel's last id (0 before its first event).
    pub head: u64,
    /// Retained ids within the page's span that the store holds but cannot serve (damaged in
    /// the store, or set aside by a repair), ascending: with `events` they account for every
    /// retained id from the first after the requested position to the last of the page, so a
    /// reader goes on after the greater of the two lists' last ids. At most `limit` of them.
    /// Always empty for stores that cannot be damaged so (memory, Redis).
    pub unreadable: Vec<u64>,
}

/// The damage a store met while reading, since it was opened (see [`Store::damage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DamageSeen {
    /// Distinct events found damaged (each counted once, however often it is read).
    pub events: u64,
    /// Reads of damaged events: every time one was met and left out.
    pub reads: u64,
}

/// What [`Store::append`] did.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The event as stored: the new one, or the one already stored under the same key.
    pub event: Arc<Event>,
    /// False when the channel already held an event with this idempotency key: nothing was
    /// stored and no id was consumed.
    pub new: bool,
}

/// What [`Store::record_receipt_keyed`] did.
#[derive(Debug, Clone)]
pub struct RecordedReceipt {
    /// The receipt as stored: the new one, or the one already stored under the same key.
    pub receipt: Receipt,
    /// The device's record after the receipt (its current record for a repeated key).
    pub record: DeviceRecord,
    /// False when the channel already held a receipt with this key: nothing was recorded.
    pub new: bool,
}

/// One receipt of a [`ReceiptBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptLine {
    /// The event acknowledged.
    pub event_id: u64,
    /// The device's status (shared by the lines of a cumulative receipt).
    pub status: Arc<str>,
    /// The receipt's idempotency key, if it has one (as [`Store::record_receipt_keyed`]'s).
    pub key: Option<String>,
}

/// Receipts of one device on one channel, recorded together, all or none (see
/// [`Store::record_receipts`]).
#[derive(Debug, Clone)]
pub struct ReceiptBatch {
    /// The channel.
    pub channel: ChannelName,
    /// The acknowledging device.
    pub device: DeviceId,
    /// When the server took them: the time of every receipt of the batch.
    pub time: chrono::DateTime<chrono::Utc>,
    /// The receipts, in the order they are recorded.
    pub lines: Vec<ReceiptLine>,
    /// Records only the lines whose event the device has not acknowledged yet, and the first
    /// line of each event only: the others are left out of the answer (a cumulative receipt,
    /// so that two that overlap acknowledge each event once). What "acknowledged" means is what
    /// [`Store::unacknowledged`] reads: a receipt kept for a retained event.
    pub unacknowledged_only: bool,
}

/// What [`Store::record_receipts`] did with one line of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedLine {
    /// The line's place in the batch (from 0).
    pub line: usize,
    /// The receipt as stored: the new one, or the one already stored under the line's key.
    pub receipt: Receipt,
    /// False when the channel (or an earlier line of the batch) already held a receipt with
    /// the line's key: nothing was recorded for it.
    pub new: bool,
}

/// The storage backend of a [`Hub`](crate::hub::Hub). Handles are cheap to clone and share one store.
pub trait Store: Clone + Send + Sync + 'static {
    /// Appends an event, giving it the channel's next id and the current time, unless its
    /// publisher already holds its idempotency key with a retained event of the channel: that
    /// event is returned then, and nothing is stored. Another publisher's event under the same
    /// key is neither returned nor in the way.
    ///
    /// # Errors
    /// [`StoreError::InvalidIdempotencyKey`] for a malformed key; [`StoreError::Backend`] when
    /// the event could not be stored. No id is consumed then.
    fn append(
        &self,
        channel: &ChannelName,
        event: NewEvent,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// Appends several events to one channel, in order, all or none, in one transaction (a
    /// batch publish). Each event is treated as by [`Store::append`]:
    /// - a new event gets the next id: the new events of a batch have consecutive ids, as no
    ///   other append of the channel comes between them, and the same time;
    /// - a keyed event whose key its publisher holds on the channel (within the window), or
    ///   whose key and publisher an earlier event of the same batch carries, is not stored: its
    ///   place in the answer holds the stored event with [`Appended::new`] false;
    /// - unlike `append`, a held key whose event has another body or event type fails the whole
    ///   batch with [`StoreError::IdempotencyConflict`].
    ///
    /// The answer has one [`Appended`] per event, in the order given. The new events become
    /// readable together, when the call returns. An empty batch stores nothing and answers an
    /// empty list.
    ///
    /// # Errors
    /// [`StoreError::InvalidIdempotencyKey`] when any key is malformed,
    /// [`StoreError::IdempotencyConflict`] as above, [`StoreError::Backend`] when the events
    /// could not be stored. Nothing is stored and no id is consumed then.
    fn append_batch(
        &self,
        channel: &ChannelName,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Vec<Appended>, StoreError>> + Send;

    /// The channel's last event id, 0 for a channel with no events.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn head(&self, channel: &ChannelName) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// At most `limit` retained events with ids greater than `after`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<EventPage, StoreError>> + Send;

    /// The newest `limit` retained events, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn recent(
        &self,
        channel: &ChannelName,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<Event>>, StoreError>> + Send;

    /// One retained event.
    ///
    /// # Errors
    /// [`StoreError::EventDamaged`] when the store holds the event but cannot read it back as
    /// written; [`StoreError::Backend`] when the store cannot be read.
    fn event(
        &self,
        channel: &ChannelName,
        id: u64,
    ) -> impl Future<Output = Result<Option<Arc<Event>>, StoreError>> + Send;

    /// Records a receipt (giving it its `seq`) and applies it to the device's record, atomically.
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] when no event with that id was ever published on the channel
    /// (a receipt for an event already pruned is still recorded); [`StoreError::Backend`] otherwise.
    fn record_receipt(
        &self,
        receipt: Receipt,
    ) -> impl Future<Output = Result<(Receipt, DeviceRecord), StoreError>> + Send;

    /// Records a receipt as [`Store::record_receipt`] does, unless the channel already holds a
    /// receipt of the same device recorded under `key` (within
    /// [`Retention::idempotency_window`], and while that receipt is retained): that receipt is
    /// returned then, with the device's current record and [`RecordedReceipt::new`] false, and
    /// nothing is recorded. Keys are per channel and device (another device's receipt under the
    /// same key is never returned), and separate from event keys; comparing the stored receipt
    /// with the retried one is the caller's business.
    ///
    /// # Errors
    /// As [`Store::record_receipt`]; [`StoreError::InvalidIdempotencyKey`] for a malformed key.
    fn record_receipt_keyed(
        &self,
        receipt: Receipt,
        key: String,
    ) -> impl Future<Output = Result<RecordedReceipt, StoreError>> + Send;

    /// Records several receipts of one device on one channel, in order, all or none, in one
    /// transaction (a batch of receipts, or a cumulative one). Each line is treated as by
    /// [`Store::record_receipt_keyed`] (or [`Store::record_receipt`] without a key):
    /// - every line's event id is checked before anything is recorded: one never published on
    ///   the channel refuses the whole batch;
    /// - a line whose key the device holds on the channel (within the window) is answered by
    ///   the stored receipt, [`RecordedLine::new`] false, and records nothing; a key given to an
    ///   earlier line of the batch likewise answers that line's receipt; other devices' keys
    ///   are not the batch's;
    /// - unlike `record_receipt_keyed`, a held key whose receipt is for another event or status
    ///   (or an earlier line's key, for another event or status) fails the whole batch with
    ///   [`StoreError::IdempotencyConflict`] (`id`: the event of the device's stored receipt,
    ///   `None` for an earlier line's);
    /// - each new receipt gets the next `seq`, in line order, and is applied to the device's
    ///   record in that order; the receipt stream shows them together, when the call returns;
    /// - with [`ReceiptBatch::unacknowledged_only`], the lines it leaves out are left out.
    ///
    /// The answer has one [`RecordedLine`] per line recorded or answered, in line order. An
    /// empty batch records nothing and answers an empty list.
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] for the first line whose event was never published;
    /// [`StoreError::InvalidIdempotencyKey`] when any key is malformed;
    /// [`StoreError::IdempotencyConflict`] as above; [`StoreError::Backend`] when the receipts
    /// could not be recorded. Nothing is recorded then.
    fn record_receipts(
        &self,
        batch: ReceiptBatch,
    ) -> impl Future<Output = Result<Vec<RecordedLine>, StoreError>> + Send;

    /// Every receipt recorded for one event, in the order they arrived.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn receipts(
        &self,
        channel: &ChannelName,
        event_id: u64,
    ) -> impl Future<Output = Result<Vec<Receipt>, StoreError>> + Send;

    /// Creates or updates a device record.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be written.
    fn touch_device(
        &self,
        touch: DeviceTouch,
    ) -> impl Future<Output = Result<DeviceRecord, StoreError>> + Send;

    /// The records of `devices` on a channel, those that have one, in any order: what a
    /// receipt summary reads (the devices an event expects, not every device). The default asks
    /// for each in turn; a store with a round trip per read answers them in one.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn devices_named(
        &self,
        channel: &ChannelName,
        devices: &[DeviceId],
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, StoreError>> + Send {
        async move {
            let mut records = Vec::with_capacity(devices.len());
            for device in devices {
                records.extend(self.device(channel, device).await?);
            }
            Ok(records)
        }
    }

    /// One device's record on a channel.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn device(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Option<DeviceRecord>, StoreError>> + Send;

    /// Every device record of a channel, ordered by device id.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn devices(
        &self,
        channel: &ChannelName,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, StoreError>> + Send;

    /// At most `limit` device records of a channel with ids greater than `after` (all with
    /// `None`), ordered by device id: the admin views page through a channel's devices with it
    /// instead of reading them all.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn devices_page(
        &self,
        channel: &ChannelName,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, StoreError>> + Send;

    /// The `seq` of the newest receipt recorded on the channel (0 if none): every receipt
    /// recorded from now on gets a greater one. Where a live receipt stream starts.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn receipt_head(
        &self,
        channel: &ChannelName,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Receipts of the channel with `seq` greater than `after`, in `seq` order, at most `limit`.
    /// A receipt is visible here only once every receipt with a lower `seq` is, so a reader that
    /// follows the stream by `seq` never skips one.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn receipts_after(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Receipt>, StoreError>> + Send;

    /// Retained events with ids greater than `after` that `device` has sent no receipt for,
    /// oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn unacknowledged(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Arc<Event>>, StoreError>> + Send;

    /// Makes `device` a recipient of the channel from its current head on; a device that already
    /// is one keeps its membership. Returns the current membership.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be written.
    fn add_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> impl Future<Output = Result<Membership, StoreError>> + Send;

    /// Ends `device`'s current membership at the channel's current head. Returns the ended
    /// membership, or `None` when the device was not a recipient.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be written.
    fn remove_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Option<Membership>, StoreError>> + Send;

    /// Every membership of the channel, current and ended, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn memberships(
        &self,
        channel: &ChannelName,
    ) -> impl Future<Output = Result<Vec<Membership>, StoreError>> + Send;

    /// Every channel that has events or devices, ordered by name.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn channels(&self) -> impl Future<Output = Result<Vec<ChannelName>, StoreError>> + Send;

    /// Presence shared by the nodes of one store (an optional ability): the channel's presence
    /// changes after `after` (a change `seq`) that the store keeps, oldest first, numbered by the
    /// store for every node alike. `None`, the default: presence is each process's own, numbered
    /// by its hub.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn presence_after(
        &self,
        _channel: &ChannelName,
        _after: u64,
    ) -> impl Future<Output = Result<Option<Vec<PresenceChange>>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Presence shared by the nodes of one store (an optional ability): the devices of the
    /// channel with an open stream on any node. `None`, the default: only this process knows.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn online_devices(
        &self,
        _channel: &ChannelName,
    ) -> impl Future<Output = Result<Option<HashSet<DeviceId>>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Presence shared by the nodes of one store (an optional ability): how many streams each
    /// device of the channel holds on the other live nodes, so that device views count the
    /// whole cluster's. `None`, the default: there are no other nodes.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn streams_elsewhere(
        &self,
        _channel: &ChannelName,
    ) -> impl Future<Output = Result<Option<HashMap<DeviceId, usize>>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Adopts the store as it is now, after it changed under this node (an operation answered
    /// [`StoreError::Changed`]): raises the floor to at least `high_water`, the greatest id the
    /// node handed out or saw, and takes the store's identity as its own, so writes pass again.
    /// Returns the floor. Called again with the same or a lower `high_water`, it changes
    /// nothing; several nodes adopting one store end with the greatest of their high waters.
    ///
    /// # Errors
    /// The store's error when it cannot be written; [`StoreError::Changed`] while the nodes
    /// sharing the store may still raise the floor (a Redis store's first seconds after a
    /// change): the caller tries again.
    fn adopt(&self, high_water: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Raises `channel`'s head to `floor` at once, the ids between becoming lost, and lists the
    /// channel again: for a channel a node had loaded when the store changed, so that its feeds,
    /// receipts and views continue above the floor without waiting for its next event. Nothing
    /// changes for a channel whose head is already at or above `floor`.
    ///
    /// # Errors
    /// The store's error when it cannot be written.
    fn reseed(
        &self,
        channel: &ChannelName,
        floor: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The ids of `channel` that a store change lost (see [`Store::adopt`]), oldest first:
    /// events a client may have seen that the store no longer has, or never will.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the store cannot be read.
    fn lost(
        &self,
        channel: &ChannelName,
    ) -> impl Future<Output = Result<Vec<RangeInclusive<u64>>, StoreError>> + Send;

    /// The damage met by reads since the store was opened (an optional ability): events the
    /// store holds but could not serve. Zero, the default, for stores that cannot be damaged so.
    fn damage(&self) -> DamageSeen {
        DamageSeen::default()
    }

    /// How many times the store handed memory back to the C library's allocator (an optional
    /// ability): SQLite allocates there, and what it frees stays with the process until the
    /// allocator is trimmed, which the server does when this count moves. Zero, the default,
    /// for stores that allocate through Rust's allocator only.
    fn memory_released(&self) -> u64 {
        0
    }

    /// Told that nothing on this node uses `channel` any more (the hub unloaded it): the store
    /// may drop what it keeps in memory for the channel, never what it stores. Called often
    /// (once per idle channel), so it must not wait. Dropping is never wrong: whatever the
    /// store needs again it reads back. By default it keeps everything.
    fn channel_unloaded(&self, channel: &ChannelName) {
        let _ = channel;
    }

    /// Checks that the store answers a read and commits a write now (a readiness probe: a full
    /// disk or a damaged database fails it). A store with nothing to fail answers at once.
    ///
    /// # Errors
    /// The store's error when it cannot read or write.
    fn probe(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}

/// What a batch append does with one of its events (see [`plan_batch`]).
#[derive(Debug)]
pub(crate) enum Plan {
    /// Stored as a new event.
    New,
    /// Answered by the event the channel already holds under its key.
    Stored(Arc<Event>),
    /// Answered by the event stored for an earlier event of the batch with the same key (its
    /// index in the batch).
    Same(usize),
}

/// The scope and key an idempotency key is held under, as one string: `DEVICE/KEY`, the
/// device an event's publisher or a receipt's device, empty for an anonymous publisher. Device
/// ids never hold `/`, so the first one ends the device and two scopes never meet. The Redis
/// scripts build the same strings (`scoped` in the `lua` room).
pub(crate) fn scoped_key(device: Option<&DeviceId>, key: &str) -> String {
    let device = device.map_or("", DeviceId::as_str);
    let mut scoped = String::with_capacity(device.len() + 1 + key.len());
    scoped.push_str(device);
    scoped.push('/');
    scoped.push_str(key);
    scoped
}

/// Refuses events whose idempotency key is malformed, before anything is stored.
///
/// # Errors
/// [`StoreError::InvalidIdempotencyKey`] when any key is not 1 to 255 visible ASCII characters.
pub(crate) fn check_keys(events: &[NewEvent]) -> Result<(), StoreError> {
    well_formed(events.iter().map(|e| e.idempotency_key.as_deref()))
}

/// [`StoreError::InvalidIdempotencyKey`] unless every key given is well formed.
fn well_formed<'a>(keys: impl IntoIterator<Item = Option<&'a str>>) -> Result<(), StoreError> {
    if keys
        .into_iter()
        .flatten()
        .all(pere_proto::event::valid_idempotency_key)
    {
        Ok(())
    } else {
        Err(StoreError::InvalidIdempotencyKey)
    }
}

/// Decides, before anything is stored, what a batch append does with each event: `held` finds
/// the event a channel holds under a publisher's key. Shared by the backends so that they agree.
///
/// # Errors
/// [`StoreError::IdempotencyConflict`] when a key is held by the same publisher (in the channel
/// or by an earlier event of the batch) for another body or type.
pub(crate) fn plan_batch(
    events: &[NewEvent],
    mut held: impl FnMut(Option<&DeviceId>, &str) -> Option<Arc<Event>>,
) -> Result<Vec<Plan>, StoreError> {
    let mut first_with: HashMap<(Option<&DeviceId>, &str), usize> = HashMap::new();
    let mut plans = Vec::with_capacity(events.len());
    for (i, new) in events.iter().enumerate() {
        let Some(key) = new.idempotency_key.as_deref() else {
            plans.push(Plan::New);
            continue;
        };
        let publisher = new.publisher.as_ref();
        let conflict = |id| StoreError::IdempotencyConflict {
            id,
            key: key.to_owned(),
        };
        if let Some(&earlier) = first_with.get(&(publisher, key)) {
            let first = &events[earlier];
            if first.body != new.body || first.event_type != new.event_type {
                return Err(conflict(None));
            }
            plans.push(Plan::Same(earlier));
            continue;
        }
        match held(publisher, key) {
            Some(stored) if stored.body != new.body || stored.event_type != new.event_type => {
                return Err(conflict(Some(stored.id)));
            }
            Some(stored) => plans.push(Plan::Stored(stored)),
            None => {
                first_with.insert((publisher, key), i);
                plans.push(Plan::New);
            }
        }
    }
    Ok(plans)
}

/// What a batch of receipts does with one of its lines (see [`plan_receipts`]).
#[derive(Debug)]
pub(crate) enum ReceiptPlan {
    /// Recorded as a new receipt.
    New,
    /// Answered by the receipt the channel already holds under its key.
    Held(Receipt),
    /// Answered by the receipt of an earlier line with the same key (its index in the batch).
    Same(usize),
    /// Left out: the device already acknowledged the event
    /// ([`ReceiptBatch::unacknowledged_only`]).
    Skip,
}

/// Refuses a batch of receipts with a malformed key, before anything is recorded.
///
/// # Errors
/// [`StoreError::InvalidIdempotencyKey`] when any key is not 1 to 255 visible ASCII characters.
pub(crate) fn check_receipt_keys(lines: &[ReceiptLine]) -> Result<(), StoreError> {
    well_formed(lines.iter().map(|line| line.key.as_deref()))
}

/// Decides, before anything is recorded, what a batch of receipts does with each line:
/// `known` is the greatest id a receipt may name (the channel's head, or the floor above it),
/// `held` finds the receipt the batch's device holds under a key on the channel (within the
/// window; another device's receipt under the key is not its to find), `acknowledged`
/// says whether the device has a receipt for an event. Shared by the backends that record in
/// Rust, so that they agree (the Redis script follows the same steps).
///
/// # Errors
/// [`StoreError::UnknownEvent`] for the first line naming an id never published;
/// [`StoreError::IdempotencyConflict`] for a key held for another receipt.
pub(crate) fn plan_receipts(
    batch: &ReceiptBatch,
    known: u64,
    mut held: impl FnMut(&str) -> Option<Receipt>,
    mut acknowledged: impl FnMut(u64) -> bool,
) -> Result<Vec<ReceiptPlan>, StoreError> {
    let mut first_with: HashMap<&str, usize> = HashMap::new();
    let mut taken: HashSet<u64, ahash::RandomState> = HashSet::default();
    let mut plans = Vec::with_capacity(batch.lines.len());
    for (i, line) in batch.lines.iter().enumerate() {
        if line.event_id == 0 || line.event_id > known {
            return Err(StoreError::UnknownEvent { id: line.event_id });
        }
        if let Some(key) = line.key.as_deref() {
            let conflict = |id| StoreError::IdempotencyConflict {
                id,
                key: key.to_owned(),
            };
            if let Some(&earlier) = first_with.get(key) {
                let first = &batch.lines[earlier];
                if (first.event_id, &first.status) != (line.event_id, &line.status) {
                    return Err(conflict(None));
                }
                plans.push(ReceiptPlan::Same(earlier));
                continue;
            }
            first_with.insert(key, i);
            if let Some(stored) = held(key) {
                if (stored.event_id, &stored.status) != (line.event_id, &line.status) {
                    return Err(conflict(Some(stored.event_id)));
                }
                plans.push(ReceiptPlan::Held(stored));
                continue;
            }
        }
        if batch.unacknowledged_only
            && (!taken.insert(line.event_id) || acknowledged(line.event_id))
        {
            plans.push(ReceiptPlan::Skip);
            continue;
        }
        plans.push(ReceiptPlan::New);
    }
    Ok(plans)
}

/// Carries out a batch's plans (see [`plan_receipts`]) in line order: `insert` stores a new
/// receipt with its key and gives it back as stored. The answer has every line not skipped.
///
/// # Errors
/// What `insert` fails with; the caller undoes the batch.
pub(crate) fn record_planned<E>(
    batch: ReceiptBatch,
    plans: Vec<ReceiptPlan>,
    mut insert: impl FnMut(Receipt, Option<String>) -> Result<Receipt, E>,
) -> Result<Vec<RecordedLine>, E> {
    let ReceiptBatch {
        channel,
        device,
        time,
        lines,
        ..
    } = batch;
    let mut recorded: Vec<RecordedLine> = Vec::with_capacity(plans.len());
    for (line, (item, plan)) in lines.into_iter().zip(plans).enumerate() {
        let (receipt, new) = match plan {
            ReceiptPlan::Skip => continue,
            ReceiptPlan::Held(stored) => (stored, false),
            ReceiptPlan::Same(earlier) => match recorded.iter().find(|r| r.line == earlier) {
                Some(first) => (first.receipt.clone(), false),
                None => continue,
            },
            ReceiptPlan::New => {
                let receipt = Receipt {
                    seq: 0,
                    channel: channel.clone(),
                    event_id: item.event_id,
                    device: device.clone(),
                    status: item.status,
                    time,
                };
                (insert(receipt, item.key)?, true)
            }
        };
        recorded.push(RecordedLine { line, receipt, new });
    }
    Ok(recorded)
}

#[cfg(test)]
pub(crate) mod conformance;
