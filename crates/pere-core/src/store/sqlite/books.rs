//! The books kept in memory: the idempotency keys of retained events ([`EventKeys`]), the
//! committed state and newest events of the channels in use ([`ChannelMeta`], within the byte
//! budget that [`RecentCache`] accounts for), and the committed records of the devices acting
//! now ([`DeviceBook`]). Each is a cache of what the database holds, so a channel that goes idle
//! leaves the first two, and a device that goes idle its record.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use pere_proto::event::Event;
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::DeviceRecord;
use rusqlite::Connection;

/// The hash an event's idempotency key is held under in [`EventKeys`]: of the key in its
/// publisher's scope (keys are per publisher; the map is per channel, so the channel is not in
/// it). The publisher seeds the key's hash, so no string is built per keyed push; an anonymous
/// publisher (no device, `None`) seeds none.
pub(super) fn key_hash(publisher: Option<&[u8]>, key: &[u8]) -> u64 {
    let seed = publisher.map_or(0, xxhash_rust::xxh3::xxh3_64);
    xxhash_rust::xxh3::xxh3_64_with_seed(key, seed)
}

/// Most keys [`EventKeys`] holds across channels: past it, the writer forgets them all and
/// reloads a channel's keys when next asked, so their memory stays bounded (about 32 bytes a key).
const HELD_KEYS: usize = 4_000_000;

/// A channel's held keys are swept of pruned events' entries once they number this many, or
/// twice as many as after the last sweep.
pub(super) const KEY_SWEEP_MIN: usize = 1024;

/// The idempotency keys of retained events, as the writer looks them up: per channel, the hash
/// of each key with its publisher ([`key_hash`]) and the id of its event, read from the
/// channel's rows (which keep the publisher beside the key) on its first keyed write
/// after open. The rows stay the truth: an entry is checked against its row when found; one whose
/// event was pruned is dropped when met or at the next sweep; and all are forgotten when a
/// transaction rolls back, since what it did to them is undone.
#[derive(Default)]
pub(super) struct EventKeys {
    pub(super) channels: HashMap<ChannelName, ChannelKeys>,
    /// Entries across channels.
    pub(super) held: usize,
}

/// One channel's held keys.
#[derive(Default)]
pub(super) struct ChannelKeys {
    /// Key hash → event id.
    pub(super) ids: HashMap<u64, u64>,
    /// Entries after the last sweep.
    swept: usize,
}

impl EventKeys {
    /// Whether the keys of `channel` are held (else [`EventKeys::channel`] reads its rows).
    pub(super) fn holds(&self, channel: &ChannelName) -> bool {
        self.channels.contains_key(channel)
    }

    /// The keys of `channel` (hash → event id), read from its rows if not held.
    pub(super) fn channel(
        &mut self,
        conn: &Connection,
        channel: &ChannelName,
    ) -> rusqlite::Result<&mut HashMap<u64, u64>> {
        if !self.channels.contains_key(channel) {
            let mut ids = HashMap::new();
            let mut rows = conn.prepare_cached(
                "SELECT id, publisher, idempotency_key FROM events \
                     WHERE channel = ?1 AND idempotency_key IS NOT NULL ORDER BY id",
            )?;
            let mut rows = rows.query([channel.as_str()])?;
            while let Some(row) = rows.next()? {
                // The bytes as stored: a key or publisher damaged into invalid UTF-8 is held
                // under a hash no valid pair has, and its row is checked when found anyway.
                let (Ok(publisher), Ok(key)) = (
                    row.get_ref(1)?.as_bytes_or_null(),
                    row.get_ref(2)?.as_bytes(),
                ) else {
                    continue;
                };
                // Oldest first: of two keys with one hash, the newer holds the entry.
                ids.insert(key_hash(publisher, key), row.get::<_, u64>(0)?);
            }
            if self.held + ids.len() > HELD_KEYS {
                self.forget_all();
            }
            self.held += ids.len();
            let swept = ids.len();
            self.channels
                .insert(channel.clone(), ChannelKeys { ids, swept });
        }
        Ok(&mut self.channels.get_mut(channel).expect("just held").ids)
    }

    /// Notes that event `id` of `channel` now holds the key hashed `hash` (see [`key_hash`]);
    /// `first` is the channel's oldest retained id, below which entries are stale.
    pub(super) fn noted(&mut self, channel: &ChannelName, hash: u64, id: u64, first: u64) {
        // Not held: the channel's rows, this one included, are read when it is next asked for.
        let Some(keys) = self.channels.get_mut(channel) else {
            return;
        };
        if keys.ids.insert(hash, id).is_none() {
            self.held += 1;
        }
        if keys.ids.len() >= (2 * keys.swept).max(KEY_SWEEP_MIN) {
            let before = keys.ids.len();
            keys.ids.retain(|_, id| *id >= first);
            self.held -= before - keys.ids.len();
            keys.swept = keys.ids.len();
        }
        if self.held > HELD_KEYS {
            self.forget_all();
        }
    }

    /// Drops the entry of the key hashed `hash` if it is event `id`'s.
    pub(super) fn forget(&mut self, channel: &ChannelName, hash: u64, id: u64) {
        if let Some(keys) = self.channels.get_mut(channel) {
            if let Entry::Occupied(entry) = keys.ids.entry(hash) {
                if *entry.get() == id {
                    entry.remove();
                    self.held -= 1;
                }
            }
        }
    }

    /// Forgets the keys of `channel`: it left memory, and they are read again if needed.
    pub(super) fn forget_channel(&mut self, channel: &ChannelName) {
        if let Some(keys) = self.channels.remove(channel) {
            self.held -= keys.ids.len();
        }
        if self.channels.capacity() > 2 * self.channels.len() + 64 {
            self.channels.shrink_to_fit();
        }
    }

    pub(super) fn forget_all(&mut self) {
        self.channels.clear();
        self.held = 0;
    }
}

/// The committed state of one channel, as far as memory knows it.
pub(super) struct ChannelMeta {
    pub(super) head: u64,
    /// The oldest retained id; `head + 1` when nothing is retained.
    pub(super) first: u64,
    /// The newest retained events, contiguous and ending at `head` (possibly empty).
    pub(super) recent: VecDeque<Arc<Event>>,
    /// Under which time (milliseconds) the age index (`channels.oldest`) files this channel:
    /// never later than its oldest retained event's. `None` when it is not in the index
    /// (nothing retained).
    pub(super) age_key: Option<i64>,
    /// The bytes `recent` holds, as [`cached_size`] counts them.
    pub(super) recent_bytes: usize,
    /// Where `recent` stands in the cache's order of last appends (0: it is empty).
    pub(super) recent_stamp: u64,
    /// The ids this channel skipped to pass the store's floor, oldest first (nearly always
    /// none, and then unallocated).
    pub(super) lost: Vec<std::ops::RangeInclusive<u64>>,
}

impl ChannelMeta {
    pub(super) fn new(head: u64, first: u64, age_key: Option<i64>) -> Self {
        ChannelMeta {
            head,
            first,
            recent: VecDeque::new(),
            age_key,
            recent_bytes: 0,
            recent_stamp: 0,
            lost: Vec::new(),
        }
    }

    /// Drops the oldest cached event; returns its size.
    pub(super) fn uncache_oldest(&mut self) -> usize {
        let size = self
            .recent
            .pop_front()
            .map_or(0, |event| cached_size(&event));
        self.recent_bytes -= size;
        size
    }
}

/// An event larger than this part of [`SqliteOptions::recent_bytes`] is not cached.
///
/// [`SqliteOptions::recent_bytes`]: super::options::SqliteOptions::recent_bytes
pub(super) const LARGEST_CACHED: usize = 16;

/// What a cached event costs in memory, about: the event, its body and key, and its frame.
pub(super) fn cached_size(event: &Event) -> usize {
    size_of::<Event>()
        + 2 * size_of::<usize>()
        + event.body.len()
        + event.frame().len()
        + event.idempotency_key.as_ref().map_or(0, String::len)
}

/// The writer's account of the recent-event cache across channels: how many bytes it holds and
/// the channels holding some, by last append.
#[derive(Default)]
pub(super) struct RecentCache {
    bytes: usize,
    /// Channels with cached events by `recent_stamp`, least recently appended first.
    order: std::collections::BTreeMap<u64, ChannelName>,
    clock: u64,
}

impl RecentCache {
    /// Accounts for `meta`'s cache after it changed by `added - removed` bytes; restamps it
    /// when it was appended to.
    pub(super) fn update(
        &mut self,
        name: &ChannelName,
        meta: &mut ChannelMeta,
        added: usize,
        removed: usize,
        appended: bool,
    ) {
        self.bytes = self.bytes + added - removed;
        if meta.recent.is_empty() || appended {
            self.order.remove(&meta.recent_stamp);
            meta.recent_stamp = 0;
        }
        if !meta.recent.is_empty() && meta.recent_stamp == 0 {
            self.clock += 1;
            meta.recent_stamp = self.clock;
            self.order.insert(self.clock, name.clone());
        }
    }

    /// Takes `meta`'s cached events out of the account: its channel leaves memory.
    pub(super) fn forget(&mut self, meta: &ChannelMeta) {
        self.bytes -= meta.recent_bytes;
        if meta.recent_stamp != 0 {
            self.order.remove(&meta.recent_stamp);
        }
    }

    /// Drops the oldest cached events of the channels appended to least recently until the
    /// cache is within `budget`.
    pub(super) fn trim(
        &mut self,
        channels: &mut HashMap<ChannelName, ChannelMeta, ahash::RandomState>,
        budget: usize,
    ) {
        while self.bytes > budget {
            let Some((stamp, name)) = self.order.pop_first() else {
                break;
            };
            let Some(meta) = channels.get_mut(&name) else {
                continue;
            };
            while self.bytes > budget && !meta.recent.is_empty() {
                self.bytes -= meta.uncache_oldest();
            }
            if meta.recent.is_empty() {
                meta.recent_stamp = 0;
            } else {
                self.order.insert(stamp, name);
            }
        }
    }
}

/// The device records of the devices in use, as last committed: a record stays from its change
/// until the write-back after the one that wrote it, so a device that acts at least once per
/// [`DEVICE_WRITE_BACK`] keeps its record here (its receipts read no disk), while an idle one
/// (a feed left open, a device gone) leaves it on disk only. At most
/// [`SqliteOptions::device_records`] of them once written back: past that, the least recently
/// changed ones that are written back already are dropped (readers find them on disk).
///
/// [`SqliteOptions::device_records`]: super::options::SqliteOptions::device_records
/// [`DEVICE_WRITE_BACK`]: super::DEVICE_WRITE_BACK
#[derive(Default)]
pub(super) struct DeviceBook {
    pub(super) records:
        HashMap<ChannelName, HashMap<DeviceId, BookEntry, ahash::RandomState>, ahash::RandomState>,
    /// How many records `records` holds.
    pub(super) len: usize,
    /// Committed but not yet written back to `devices`.
    pub(super) changed: HashSet<(ChannelName, DeviceId), ahash::RandomState>,
    /// The records the last write-back wrote, with `clock` when it read them: the next one
    /// drops those that did not change since ([`DeviceBook::written_back`]).
    pub(super) written: Vec<(ChannelName, DeviceId)>,
    written_at: u64,
    /// Counts changes, for the order of `BookEntry::stamp`.
    clock: u64,
    /// Counts trims: a reader that read the disk before a trim may have missed a record the
    /// trim dropped after writing it back, and reads again.
    pub(super) trims: u64,
}

pub(super) struct BookEntry {
    pub(super) record: DeviceRecord,
    /// When it last changed, in `DeviceBook::clock`.
    stamp: u64,
}

impl DeviceBook {
    pub(super) fn get(&self, channel: &ChannelName, device: &DeviceId) -> Option<&DeviceRecord> {
        self.records
            .get(channel)?
            .get(device)
            .map(|entry| &entry.record)
    }

    /// Takes a committed change, to be written back.
    pub(super) fn change(&mut self, record: DeviceRecord) {
        self.clock += 1;
        self.changed
            .insert((record.channel.clone(), record.device.clone()));
        let entry = BookEntry {
            stamp: self.clock,
            record,
        };
        let devices = self
            .records
            .entry(entry.record.channel.clone())
            .or_default();
        if devices.insert(entry.record.device.clone(), entry).is_none() {
            self.len += 1;
        }
    }

    /// Marks every changed record written back, and drops those that the write-back before
    /// wrote and that did not change since: their devices did nothing for a whole
    /// [`DEVICE_WRITE_BACK`], and the disk has them as they are. Returns how many were dropped.
    ///
    /// [`DEVICE_WRITE_BACK`]: super::DEVICE_WRITE_BACK
    pub(super) fn written_back(&mut self) -> usize {
        let mut dropped = 0;
        for (channel, device) in std::mem::take(&mut self.written) {
            let Some(devices) = self.records.get_mut(&channel) else {
                continue;
            };
            if let Entry::Occupied(entry) = devices.entry(device) {
                // A later change gave it a later stamp (and put it in `changed`).
                if entry.get().stamp <= self.written_at {
                    entry.remove();
                    dropped += 1;
                }
            }
            if devices.is_empty() {
                self.records.remove(&channel);
            } else if devices.len() < devices.capacity() / 4 {
                devices.shrink_to_fit();
            }
        }
        self.written = std::mem::take(&mut self.changed).into_iter().collect();
        self.written_at = self.clock;
        self.len -= dropped;
        if dropped > 0 {
            self.trims += 1;
        }
        dropped
    }

    /// Drops the least recently changed records that are written back, down to nine tenths of
    /// `limit` when over it (a tenth of room, so trims, which look at every record, are rare).
    /// Returns how many were dropped.
    pub(super) fn trim(&mut self, limit: usize) -> usize {
        if self.len <= limit {
            return 0;
        }
        let keep = limit - limit / 10;
        let mut clean: Vec<u64> = Vec::with_capacity(self.len);
        for (channel, devices) in &self.records {
            for (device, entry) in devices {
                if !self.changed.contains(&(channel.clone(), device.clone())) {
                    clean.push(entry.stamp);
                }
            }
        }
        let excess = self.len.saturating_sub(keep).min(clean.len());
        if excess == 0 {
            return 0;
        }
        // Stamps are unique: the `excess` oldest clean records are those below the threshold.
        let threshold = if excess == clean.len() {
            u64::MAX
        } else {
            *clean.select_nth_unstable(excess).1
        };
        let changed = &self.changed;
        let mut dropped = 0;
        self.records.retain(|channel, devices| {
            devices.retain(|device, entry| {
                let drop = entry.stamp < threshold
                    && !changed.contains(&(channel.clone(), device.clone()));
                dropped += usize::from(drop);
                !drop
            });
            devices.shrink_to_fit();
            !devices.is_empty()
        });
        self.len -= dropped;
        self.trims += 1;
        dropped
    }
}
