//! What the writer thread and the readers share ([`Shared`]: the committed state of the
//! channels in use, the device book, the pool of read connections), and how one transaction
//! sees and changes it ([`Drafts`], read from memory or else from the database), published to
//! the readers once it has committed.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use pere_proto::event::Event;
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{DeviceRecord, Receipt};
use rusqlite::Connection;

use super::books::{cached_size, ChannelMeta, DeviceBook, EventKeys, RecentCache, LARGEST_CACHED};
use super::damage::DamageBook;
use super::options::SqliteOptions;
use super::rows::{load_device, receipt_touch};
use super::schema::{load_channel, open_reader};
use crate::error::StoreError;

/// Idle read connections kept; more are opened under load and closed when they come back.
const MAX_IDLE_READERS: usize = 8;

/// Told by the writer, after each committed batch of writes, how long the batch took (from its
/// `BEGIN` to the end of its `COMMIT`) and how many writes it held.
pub(super) type CommitHook = Box<dyn Fn(Duration, usize) + Send + Sync>;

/// What the writer thread and the readers share.
pub(super) struct Shared {
    // Held for the store's lifetime: the data directory's lock.
    pub(super) _lock: std::fs::File,
    pub(super) path: PathBuf,
    pub(super) options: SqliteOptions,
    // Committed state only, of the channels in use: the writer updates it after each commit,
    // before answering, adds a channel when it appends to it and drops one the hub unloads (a
    // cache: the database has every channel, and readers read it for a channel not here).
    pub(super) channels: RwLock<HashMap<ChannelName, ChannelMeta, ahash::RandomState>>,
    // std Mutex: held only to push or pop a connection, never across a query or an await.
    pub(super) readers: Mutex<Vec<Connection>>,
    // Committed device records; std Mutex, held only to look up, clone or merge records.
    pub(super) devices: Mutex<DeviceBook>,
    // The seq of the newest committed receipt; changed by the writer only.
    pub(super) last_receipt: AtomicU64,
    pub(super) transactions: AtomicU64,
    // Counts the writer's releases of SQLite's caches (`Store::memory_released`).
    pub(super) memory_released: AtomicU64,
    // Set by the checkpointer while it sleeps with no commit pending: a commit wakes it then
    // only, not every time.
    pub(super) checkpointer_asleep: AtomicBool,
    // Told of every committed batch of writes (metrics); set at most once.
    pub(super) on_commit: OnceLock<CommitHook>,
    // Channels the pruning sweep has looked at, for tests of its cost.
    pub(super) visited: AtomicU64,
    pub(super) closing: AtomicBool,
    // Used by the writer only (a Mutex for the borrow, never contended).
    pub(super) event_keys: Mutex<EventKeys>,
    // What readers found damaged; its lock is taken only when a read met damage.
    pub(super) damage: DamageBook,
    // The store's id, made with it (schema v8); written beside the file with the high water.
    pub(super) store_id: String,
    // Every channel's ids stay above it (see the store contract's floor).
    pub(super) floor: AtomicU64,
    // The greatest head committed: what the file beside the database remembers.
    pub(super) high_water: AtomicU64,
    // Which file the database was at open (device, inode); set once another is found there.
    pub(super) file: Option<(u64, u64)>,
    pub(super) replaced: AtomicBool,
}

impl Shared {
    /// The committed state of the channels in memory, to read.
    pub(super) fn channels(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<ChannelName, ChannelMeta, ahash::RandomState>> {
        self.channels.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn event_keys(&self) -> std::sync::MutexGuard<'_, EventKeys> {
        self.event_keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn book(&self) -> std::sync::MutexGuard<'_, DeviceBook> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn with_reader<T>(
        &self,
        query: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        let result = query(&mut conn).map_err(StoreError::backend);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        result
    }
}

/// One channel as a transaction sees it: loaded from the committed state (in memory, or else
/// read from the database), changed by the transaction, published to [`Shared::channels`] only
/// after the commit. A rolled-back batch drops its drafts, which is what restores the heads: a
/// failed append consumes no id.
pub(super) struct Draft {
    pub(super) head: u64,
    pub(super) first: u64,
    /// The channel's time in the age index (`channels.oldest`), and as the row holds it.
    pub(super) age_key: Option<i64>,
    pub(super) saved_age_key: Option<i64>,
    /// The lost ids read from the database, when the channel was not in memory: what its
    /// state in memory starts with, should the transaction put it there.
    pub(super) lost_before: Option<Vec<std::ops::RangeInclusive<u64>>>,
    /// Ids this transaction made the channel skip to pass the floor.
    pub(super) lost: Option<std::ops::RangeInclusive<u64>>,
    /// The head stored in the `channels` table; `None` while the channel has no row.
    pub(super) saved_head: Option<u64>,
    pub(super) appended: Vec<Arc<Event>>,
}

/// A device record as a transaction sees it.
struct DraftDevice {
    record: DeviceRecord,
    /// Whether some of the device's receipts in [`Drafts::unwritten`] are not inserted yet.
    unwritten: bool,
}

/// The channels and device records a transaction has touched.
pub(super) struct Drafts<'a> {
    pub(super) shared: &'a Shared,
    pub(super) channels: HashMap<ChannelName, Draft, ahash::RandomState>,
    devices: HashMap<(ChannelName, DeviceId), DraftDevice, ahash::RandomState>,
    /// The seq of the newest receipt, this transaction's included: the writer gives every seq
    /// (the store opens with the AUTOINCREMENT counter's value, so none is given twice).
    pub(super) last_receipt: u64,
    /// Receipts given their seqs in this transaction and not yet inserted, with their keys:
    /// inserted together, a few statements for any number of them, before the transaction reads
    /// a device's receipts while some of its own are here, and before it commits.
    pub(super) unwritten: Vec<(Receipt, Option<String>)>,
    /// Events appended in this transaction and not yet inserted, with their rows' checksums:
    /// inserted together as receipts are, before the transaction reads or deletes events, and
    /// before it commits.
    pub(super) unwritten_events: Vec<(Arc<Event>, i64)>,
}

impl<'a> Drafts<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        let last_receipt = shared.last_receipt.load(Ordering::Relaxed);
        Drafts {
            shared,
            channels: HashMap::default(),
            devices: HashMap::default(),
            last_receipt,
            unwritten: Vec::new(),
            unwritten_events: Vec::new(),
        }
    }

    /// The next receipt seq, given now: after every seq ever handed out.
    pub(super) fn next_receipt_seq(&mut self) -> u64 {
        self.last_receipt += 1;
        self.last_receipt
    }

    /// Gives `receipt` the next seq and holds it (with its key) for the next insert of
    /// [`Drafts::unwritten`]; returns its device's record, to apply it to.
    pub(super) fn queue_receipt(
        &mut self,
        conn: &Connection,
        receipt: &mut Receipt,
        key: Option<String>,
    ) -> rusqlite::Result<&mut DeviceRecord> {
        receipt.seq = self.next_receipt_seq();
        self.unwritten.push((receipt.clone(), key));
        let receipt: &Receipt = receipt;
        let drafted = self.drafted(conn, &receipt.channel, &receipt.device, || {
            DeviceRecord::first(&receipt_touch(receipt))
        })?;
        drafted.unwritten = true;
        Ok(&mut drafted.record)
    }

    /// Holds receipts of one device, their seqs given ([`Drafts::next_receipt_seq`]), for the next insert of
    /// [`Drafts::unwritten`], and applies them to the device's record, looked up once.
    pub(super) fn queue_batch(
        &mut self,
        conn: &Connection,
        rows: Vec<(Receipt, Option<String>)>,
    ) -> rusqlite::Result<()> {
        let Some((first, _)) = rows.first() else {
            return Ok(());
        };
        let drafted = self.drafted(conn, &first.channel, &first.device, || {
            DeviceRecord::first(&receipt_touch(first))
        })?;
        drafted.unwritten = true;
        for (receipt, _) in &rows {
            drafted.record.apply_receipt(receipt);
        }
        self.unwritten.extend(rows);
        Ok(())
    }

    /// Whether `device` on `channel` has receipts in [`Drafts::unwritten`].
    pub(super) fn has_unwritten(&self, channel: &ChannelName, device: &DeviceId) -> bool {
        self.devices
            .get(&(channel.clone(), device.clone()))
            .is_some_and(|drafted| drafted.unwritten)
    }

    /// Takes the receipts to insert, and forgets whose they were.
    pub(super) fn take_unwritten(&mut self) -> Vec<(Receipt, Option<String>)> {
        for drafted in self.devices.values_mut() {
            drafted.unwritten = false;
        }
        std::mem::take(&mut self.unwritten)
    }

    /// A device's record as this transaction sees it (changed earlier in it, committed in the
    /// book, or on disk), or `new` for a device never seen.
    pub(super) fn device(
        &mut self,
        conn: &Connection,
        channel: &ChannelName,
        device: &DeviceId,
        new: impl FnOnce() -> DeviceRecord,
    ) -> rusqlite::Result<&mut DeviceRecord> {
        Ok(&mut self.drafted(conn, channel, device, new)?.record)
    }

    /// [`Drafts::device`], with whether the device has receipts unwritten.
    fn drafted(
        &mut self,
        conn: &Connection,
        channel: &ChannelName,
        device: &DeviceId,
        new: impl FnOnce() -> DeviceRecord,
    ) -> rusqlite::Result<&mut DraftDevice> {
        let key = (channel.clone(), device.clone());
        let drafted = match self.devices.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let committed = self.shared.book().get(channel, device).cloned();
                let known = match committed {
                    Some(record) => Some(record),
                    None => load_device(conn, channel, device)?,
                };
                entry.insert(DraftDevice {
                    record: known.unwrap_or_else(new),
                    unwritten: false,
                })
            }
        };
        Ok(drafted)
    }

    /// The greatest event id `device` acknowledged on `channel`, as its record says (changed
    /// earlier in this transaction, committed in the book, or on disk); `None` for a device
    /// without a record. Every receipt raises it, so the device has none for a greater id.
    pub(super) fn acked_through(
        &self,
        conn: &Connection,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> rusqlite::Result<Option<u64>> {
        if let Some(drafted) = self.devices.get(&(channel.clone(), device.clone())) {
            return Ok(Some(drafted.record.last_acked));
        }
        if let Some(record) = self.shared.book().get(channel, device) {
            return Ok(Some(record.last_acked));
        }
        Ok(load_device(conn, channel, device)?.map(|record| record.last_acked))
    }

    /// The draft of a channel that exists, committed or created earlier in this transaction.
    pub(super) fn existing(
        &mut self,
        conn: &Connection,
        channel: &ChannelName,
    ) -> rusqlite::Result<Option<&mut Draft>> {
        if !self.channels.contains_key(channel) {
            let in_memory = self
                .shared
                .channels()
                .get(channel)
                .map(|meta| (meta.head, meta.first, meta.age_key));
            let (head, first, age_key, lost_before) = match in_memory {
                Some((head, first, age_key)) => (head, first, age_key, None),
                None => match load_channel(conn, channel)? {
                    Some(meta) => (meta.head, meta.first, meta.age_key, Some(meta.lost)),
                    None => return Ok(None),
                },
            };
            self.channels.insert(
                channel.clone(),
                Draft {
                    head,
                    first,
                    age_key,
                    saved_age_key: age_key,
                    lost_before,
                    lost: None,
                    saved_head: Some(head),
                    appended: Vec::new(),
                },
            );
        }
        Ok(self.channels.get_mut(channel))
    }

    /// The draft of a channel, created if it does not exist yet.
    pub(super) fn entry(
        &mut self,
        conn: &Connection,
        channel: &ChannelName,
    ) -> rusqlite::Result<&mut Draft> {
        let _ = self.existing(conn, channel)?;
        Ok(self
            .channels
            .entry(channel.clone())
            .or_insert_with(|| Draft {
                head: 0,
                first: 1,
                age_key: None,
                saved_age_key: None,
                lost_before: Some(Vec::new()),
                lost: None,
                saved_head: None,
                appended: Vec::new(),
            }))
    }

    /// The earliest time a channel was newly filed under in the age index by this transaction.
    pub(super) fn newly_filed(&self) -> Option<i64> {
        self.channels
            .values()
            .filter(|draft| draft.saved_age_key.is_none())
            .filter_map(|draft| draft.age_key)
            .min()
    }

    /// Makes the committed drafts visible to readers: the channels in memory are updated, and a
    /// channel appended to is put there (the others are read from the database when needed).
    pub(super) fn publish(self, cache: &mut RecentCache) {
        let options = &self.shared.options;
        if !self.devices.is_empty() {
            let mut book = self.shared.book();
            for drafted in self.devices.into_values() {
                book.change(drafted.record);
            }
        }
        self.shared
            .last_receipt
            .store(self.last_receipt, Ordering::Relaxed);
        let mut channels = self
            .shared
            .channels
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for (name, draft) in self.channels {
            self.shared
                .high_water
                .fetch_max(draft.head, Ordering::Relaxed);
            let meta = match channels.entry(name.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(_) if draft.appended.is_empty() => continue,
                Entry::Vacant(entry) => {
                    let mut meta = ChannelMeta::new(draft.head, draft.first, draft.age_key);
                    meta.lost = draft.lost_before.unwrap_or_default();
                    entry.insert(meta)
                }
            };
            meta.age_key = draft.age_key;
            meta.head = draft.head;
            meta.first = draft.first;
            meta.lost.extend(draft.lost);
            let appended = !draft.appended.is_empty();
            let (mut added, mut removed) = (0, 0);
            for event in draft.appended {
                let size = cached_size(&event);
                if size > options.recent_bytes / LARGEST_CACHED {
                    // Not worth the tails of many other channels; the cache stays a contiguous
                    // run ending at the head, so it restarts after this event.
                    while !meta.recent.is_empty() {
                        removed += meta.uncache_oldest();
                    }
                    continue;
                }
                added += size;
                meta.recent_bytes += size;
                meta.recent.push_back(event);
            }
            while meta.recent.len() > options.recent_events
                || meta.recent.front().is_some_and(|e| e.id < meta.first)
            {
                removed += meta.uncache_oldest();
            }
            cache.update(&name, meta, added, removed, appended);
        }
        cache.trim(&mut channels, options.recent_bytes);
    }
}
