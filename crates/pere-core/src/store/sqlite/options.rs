//! What a `SqliteStore` is opened with: how far its writes survive ([`Durability`]) and the
//! rest of its [`SqliteOptions`].

use std::time::Duration;

use crate::store::Retention;

/// How far a committed write is guaranteed to survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Survives a crash of the process, not of the machine (`synchronous=NORMAL`): commits reach
    /// the OS at once and the disk at checkpoints, within a second ([`QUIET_CHECKPOINT`]). The
    /// default: what a server restart needs, at a fraction of the cost.
    ///
    /// [`QUIET_CHECKPOINT`]: super::QUIET_CHECKPOINT
    #[default]
    Normal,
    /// Survives power loss too (`synchronous=FULL`): every commit is synced to disk.
    Full,
}

/// How a [`SqliteStore`] is opened.
///
/// [`SqliteStore`]: super::SqliteStore
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// What a committed write survives.
    pub durability: Durability,
    /// How much history each channel keeps.
    pub retention: Retention,
    /// Newest events kept in memory per channel, so tail replays skip the disk (0: none).
    pub recent_events: usize,
    /// Device records kept in memory once written back (the least recently changed go first;
    /// they are read from disk when needed). Records changed since the last write-back are
    /// always kept, so the book can exceed this by what changes within [`DEVICE_WRITE_BACK`].
    /// Below it, a record leaves anyway once its device did nothing for a whole write-back
    /// interval.
    ///
    /// [`DEVICE_WRITE_BACK`]: super::DEVICE_WRITE_BACK
    pub device_records: usize,
    /// Bytes of events kept in memory, all channels together (bodies and frames; 0: none).
    /// Past it, the oldest cached events of the channels appended to least recently go first;
    /// a read of what is not cached goes to disk.
    pub recent_bytes: usize,
    /// The shortest time between two sweeps for expired events (age retention on channels
    /// nobody publishes to): expiries that fall closer together are pruned together. The sweep
    /// visits only the channels whose oldest event has expired.
    pub prune_interval: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::default(),
            retention: Retention::default(),
            // One hub replay page: a resuming subscriber that is a little behind reads memory.
            recent_events: 256,
            // Enough for the tails of thousands of busy channels of small events; without a
            // global cap, 100 channels of 64 KiB events held 4 GB.
            recent_bytes: 64 << 20,
            // About 40 MB of records (some 400 bytes each): far more devices than are active
            // within a minute on most servers, few enough that a stream of made-up device ids
            // cannot grow the process.
            device_records: 100_000,
            prune_interval: Duration::from_secs(1),
        }
    }
}
