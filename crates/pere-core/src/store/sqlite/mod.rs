//! The durable SQLite store: events, receipts and device records in `pere.db` under a data
//! directory, kept across restarts (and, with [`Durability::Full`], across power loss).
//!
//! How it works:
//! - **One writer thread** owns the only read-write connection. A write sends it a command and
//!   awaits the answer on a oneshot; the writer takes every command queued (up to [`MAX_BATCH`]),
//!   runs them in one transaction and answers each caller after the commit. Under load that is one
//!   sync per batch, not one per request, and a write never blocks a tokio thread.
//! - **Ids** come from per-channel heads the writer keeps in memory and saves in the `channels`
//!   table in the same transaction, so pruning every event never resets a sequence. A batch that
//!   fails rolls back whole: its callers all get the error and no id is consumed.
//! - **Reads** use read-only connections from a small pool, on tokio's blocking threads; WAL lets
//!   them run beside the writer. The committed head and the oldest retained id of each channel
//!   are also kept in memory (updated after each commit), so `head` never touches the disk, and
//!   so are the newest events of channels recently appended to, within one byte budget for all
//!   channels ([`SqliteOptions::recent_bytes`]), so most tail replays do not either.
//! - **Retention** is enforced by the writer in bounded chunks, at a cost in proportion to what
//!   is pruned, not to the number of channels: the count limit right after appends, in the same
//!   transaction; the age limit by an index of each channel's oldest retained event time, so the
//!   writer wakes when the oldest of them expires and visits only the channels that have
//!   something to prune (an idle server with many channels does no work). At open, one pass
//!   over every channel applies a retention shortened since the last run. Receipts go with their
//!   events (they are also the receipt stream, by `seq`); device records and recipient
//!   memberships are the ledger and are kept.
//! - **Device records** (presence and per-device counters) change with every receipt and feed
//!   connection. The writer keeps them in memory, where readers see each change as soon as it
//!   commits, and writes the changed ones back in one transaction every [`DEVICE_WRITE_BACK`],
//!   recording in `state` the last receipt folded in. Receipts themselves are committed before
//!   they are answered, so after a crash the receipts past that mark are folded in again at
//!   open: only connection touches of the last moment are lost. Once written back, the least
//!   recently changed records beyond [`SqliteOptions::device_records`] leave memory; a record
//!   not in memory is read from disk, by readers and by the writer when it changes again.
//! - **Checkpoints** (copying the WAL back into the database, with its syncs) run on a thread
//!   of their own [`CHECKPOINT_INTERVAL`] after commits (an idle store has none), off the path
//!   of writes waiting for a commit.
//!
//! One process per data directory: the writer trusts its in-memory heads.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pere_proto::event::{now, valid_idempotency_key, Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{DeviceRecord, DeviceTouch, Membership, Receipt};
use rusqlite::{params, CachedStatement, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::StoreError;
use crate::store::{
    check_keys, plan_batch, Appended, EventPage, Plan, RecordedReceipt, Retention, Store,
};

mod books;
mod failure;
mod options;
mod rows;
mod schema;
mod shared;

#[cfg(test)]
mod tests;

use books::{key_hash, ChannelMeta, EventKeys, RecentCache};
use failure::{closed, Failure};
pub use options::{Durability, SqliteOptions};
use rows::{
    device_from_row, load_device, membership_from_row, parse_name, query_events, query_receipts,
    read_page, receipt_touch, save_device, save_devices_through, select_device, select_event,
    select_membership, sql_limit,
};
use schema::{check_integrity, load_channels, prepare_schema, recover_devices, BUSY_TIMEOUT};
use shared::{Draft, Drafts, Shared};

/// The database file inside the data directory.
pub const DB_FILE: &str = "pere.db";
/// The lock file that keeps a second server off the same data directory.
const LOCK_FILE: &str = "pere.lock";

/// Writes per transaction at most: enough to spread one sync over a burst, few enough that the
/// first caller of a batch does not wait long for the last.
pub const MAX_BATCH: usize = 512;

/// Writes queued or in flight at most; further writers wait (asynchronously) for room, so a
/// stalled disk cannot make the queue grow without bound.
const MAX_QUEUED: usize = 4 * MAX_BATCH;

/// Events deleted per pruning step at most, so a large backlog (retention shortened, a week of
/// events expiring at once) is worked off between batches instead of stalling pushes.
const PRUNE_CHUNK: u64 = 2048;

/// Channels visited per sweep step at most; each costs an indexed lookup even with nothing to prune.
const SWEEP_CHANNELS: usize = 256;

/// The shortest time between two age sweeps honoured: a zero interval would keep the writer
/// spinning.
const MIN_PRUNE_INTERVAL: Duration = Duration::from_millis(10);

/// How long the writer sleeps at most when nothing is due: a bound in case the wall clock, by
/// which events expire, jumps; waking costs nothing when nothing is due.
const IDLE_WAKE: Duration = Duration::from_secs(60);

/// How often changed device records are written back to `devices`. A crash loses at most this
/// much of connection touches (receipts are folded in again from the `receipts` table).
pub const DEVICE_WRITE_BACK: Duration = Duration::from_secs(1);

/// How long the checkpointer thread lets commits gather before it copies them from the WAL into
/// the database: a page changed by many commits in that time is copied once. Short, so that the
/// WAL never holds much that is not yet in the database and synced: when it reaches the
/// writer's own limit (16,384 pages), or when it starts over, the writer itself copies and syncs
/// what is left, and every write waits for that. At 500 ms, pushes flat out on a slow disk waited
/// 40 ms at the 99th percentile; at 50 ms, 4 ms.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);

/// The SQLite [`Store`]: durable history, receipts and device records in `dir/pere.db`.
///
/// Handles are cheap to clone. Dropping the last one lets the writer finish every queued write
/// and waits for it; [`SqliteStore::close`] does the same without blocking.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// What the handles share; its drop stops the writer.
struct Inner {
    shared: Arc<Shared>,
    // `Option`s so that `drop` can close the queue and then join the writer.
    commands: Option<mpsc::Sender<Command>>,
    writer: Option<thread::JoinHandle<()>>,
    // The checkpointer stops once this sender and the writer's are dropped.
    checkpointer: Option<(mpsc::SyncSender<()>, thread::JoinHandle<()>)>,
    // Bounds the queue: a write holds a permit from before it is queued until it is answered.
    room: Arc<Semaphore>,
}

type Answer<T> = oneshot::Sender<Result<T, StoreError>>;

/// One write, run by the writer inside a batch's transaction; it returns the answer to send
/// once the batch has committed or failed.
type Job = Box<dyn FnOnce(&mut Batch<'_>) -> Box<dyn Deliver> + Send>;

/// A request to the writer thread.
enum Command {
    Write(Job),
    /// Finish what is queued, then stop.
    Close(oneshot::Sender<()>),
}

impl SqliteStore {
    /// Opens (or creates) the store in `dir`, creating the directory if needed, and migrates an
    /// older schema. It blocks on the disk: call it at startup, before serving.
    ///
    /// # Errors
    /// [`StoreError::Incompatible`] for a database written by a newer PERE or by something else;
    /// [`StoreError::Backend`], naming the path, when the directory or database cannot be
    /// created, opened or read (permissions, a file in the way, a corrupt database).
    pub fn open(dir: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|err| Failure::open(dir, err))?;
        // One server per data directory: a second writer would break the id sequences. The OS
        // drops the lock when the process ends, however it ends.
        let lock_path = dir.join(LOCK_FILE);
        let lock =
            std::fs::File::create(&lock_path).map_err(|err| Failure::open(&lock_path, err))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        let path = dir.join(DB_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(&path, flags).map_err(|err| Failure::open(&path, err))?;
        prepare_schema(&mut conn, &path, options.durability)?;
        check_integrity(&conn, &path)?;
        let mut channels = load_channels(&conn).map_err(|err| Failure::open(&path, err))?;
        // Every channel with events, once: a retention shortened since the last run applies.
        let sweep: Vec<ChannelName> = channels
            .iter()
            .filter(|(_, m)| m.first <= m.head)
            .map(|(name, _)| name.clone())
            .collect();
        let mut ages = BTreeSet::new();
        for (name, meta) in &mut channels {
            if options.retention.max_age.is_none() {
                meta.age_key = None;
            }
            if let Some(key) = meta.age_key {
                ages.insert((key, name.clone()));
            }
        }
        let last_receipt = recover_devices(&mut conn).map_err(|err| Failure::open(&path, err))?;

        let shared = Arc::new(Shared {
            _lock: lock,
            path: path.clone(),
            options,
            channels: RwLock::new(channels),
            readers: Mutex::default(),
            devices: Mutex::default(),
            last_receipt: AtomicU64::new(last_receipt),
            transactions: AtomicU64::new(0),
            on_commit: OnceLock::new(),
            visited: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            event_keys: Mutex::default(),
        });
        let (commands, queue) = mpsc::channel();
        let (checkpointer, wake_checkpointer) = start_checkpointer(&path)?;
        let writer = Writer {
            conn,
            shared: shared.clone(),
            queue,
            sweep,
            ages,
            next_sweep: Instant::now(),
            cache: RecentCache::default(),
            next_write_back: Instant::now() + DEVICE_WRITE_BACK,
            closers: Vec::new(),
            wake_checkpointer: wake_checkpointer.clone(),
        };
        let writer = thread::Builder::new()
            .name("pere-sqlite-writer".to_owned())
            .spawn(move || {
                let closers = writer.run();
                // The writer's connection is closed by now: whoever awaits `close` may exit.
                for closer in closers {
                    let _ = closer.send(());
                }
            })
            .map_err(|err| Failure::open(&path, err))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                shared,
                commands: Some(commands),
                writer: Some(writer),
                checkpointer: Some((wake_checkpointer, checkpointer)),
                room: Arc::new(Semaphore::new(MAX_QUEUED)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Write transactions committed since the store was opened: batches of writes and pruning
    /// steps that deleted something. A cheap counter for metrics, and for checking that writes
    /// are batched.
    pub fn committed_transactions(&self) -> u64 {
        self.inner.shared.transactions.load(Ordering::Relaxed)
    }

    /// Sets what the writer tells after each committed batch of writes: how long the batch took
    /// and how many writes it held (for metrics; called on the writer thread, so it must be
    /// quick). Only the first hook set is kept; returns whether this one was.
    pub fn on_commit(&self, hook: impl Fn(Duration, usize) + Send + Sync + 'static) -> bool {
        self.inner.shared.on_commit.set(Box::new(hook)).is_ok()
    }

    /// Stops taking writes, lets the writer commit everything already queued and waits for it to
    /// stop. Later writes fail; reads keep working. Call it last on shutdown.
    pub async fn close(&self) {
        self.inner.shared.closing.store(true, Ordering::SeqCst);
        let (reply, stopped) = oneshot::channel();
        if let Some(commands) = &self.inner.commands {
            if commands.send(Command::Close(reply)).is_ok() {
                // An error means the writer is gone already, which is what was asked.
                let _ = stopped.await;
            }
        }
    }

    /// Queues a write for the writer thread and awaits its answer, sent after the commit.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Drafts<'_>) -> rusqlite::Result<Result<T, StoreError>>
            + Send
            + 'static,
    {
        let permit = self
            .inner
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        if self.inner.shared.closing.load(Ordering::SeqCst) {
            return Err(closed());
        }
        let commands = self.inner.commands.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |batch: &mut Batch<'_>| {
            let result = batch.attempt(op);
            Box::new(Done {
                reply,
                result,
                _permit: permit,
            })
        });
        commands.send(Command::Write(job)).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Runs a query on a pooled read-only connection, on a blocking thread.
    async fn read_disk<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || shared.with_reader(query))
            .await
            .map_err(StoreError::backend)?
    }

    /// Reads the committed in-memory state of a channel.
    fn committed<T>(
        &self,
        channel: &ChannelName,
        read: impl FnOnce(Option<&ChannelMeta>) -> T,
    ) -> T {
        let channels = self
            .inner
            .shared
            .channels
            .read()
            .unwrap_or_else(|e| e.into_inner());
        read(channels.get(channel))
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.inner.shared;
        f.debug_struct("SqliteStore")
            .field("path", &shared.path)
            .field("options", &shared.options)
            .field("transactions", &shared.transactions.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue makes the writer finish what is queued, commit and stop. Waiting for
        // it means a process that drops its store before exiting loses nothing that was queued,
        // not even the write of a caller that stopped waiting for its answer.
        drop(self.commands.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some((stop, checkpointer)) = self.checkpointer.take() {
            drop(stop);
            let _ = checkpointer.join();
        }
    }
}

/// Starts the thread that checkpoints the WAL [`CHECKPOINT_INTERVAL`] after a commit wakes it
/// (idle, it sleeps), until every sender of its wake-ups is dropped. Returns it and a sender:
/// `try_send` after a commit, as a wake-up already pending stands for any number of commits.
fn start_checkpointer(
    path: &Path,
) -> Result<(thread::JoinHandle<()>, mpsc::SyncSender<()>), StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|err| Failure::open(path, err))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|err| Failure::open(path, err))?;
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    let thread = thread::Builder::new()
        .name("pere-sqlite-checkpoint".to_owned())
        .spawn(move || {
            while woken.recv().is_ok() {
                // Commits gather meanwhile; their wake-ups are for this same checkpoint.
                let until = Instant::now() + CHECKPOINT_INTERVAL;
                loop {
                    match woken.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        Ok(()) => {}
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        // Closing: the last connection to close checkpoints what is left.
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                // PASSIVE never waits for the writer or readers; what it cannot copy now it copies
                // next time. A failure (disk trouble) is the writer's to report, on its commits.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            }
        })
        .map_err(|err| Failure::open(path, err))?;
    Ok((thread, wake))
}

impl Store for SqliteStore {
    async fn append(&self, channel: &ChannelName, event: NewEvent) -> Result<Appended, StoreError> {
        check_keys(std::slice::from_ref(&event))?;
        let channel = channel.clone();
        self.write(move |conn, drafts| append(conn, drafts, channel, event).map(Ok))
            .await
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
        let channel = channel.clone();
        self.write(move |conn, drafts| append_batch(conn, drafts, channel, events))
            .await
    }

    async fn head(&self, channel: &ChannelName) -> Result<u64, StoreError> {
        Ok(self.committed(channel, |meta| meta.map_or(0, |m| m.head)))
    }

    async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let cached = self.committed(channel, |meta| {
            let Some(meta) = meta else {
                return Some(EventPage {
                    first_retained: 1,
                    ..EventPage::default()
                });
            };
            let page = |events: Vec<Arc<Event>>| EventPage {
                events,
                first_retained: meta.first,
                head: meta.head,
            };
            let start = after.saturating_add(1).max(meta.first);
            if start > meta.head {
                return Some(page(Vec::new()));
            }
            let front = meta.recent.front()?.id;
            (front <= start).then(|| {
                page(
                    meta.recent
                        .iter()
                        .skip((start - front) as usize)
                        .take(limit)
                        .cloned()
                        .collect(),
                )
            })
        });
        if let Some(page) = cached {
            return Ok(page);
        }
        let channel = channel.clone();
        self.read_disk(move |conn| read_page(conn, &channel, after, limit))
            .await
    }

    async fn recent(
        &self,
        channel: &ChannelName,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let cached = self.committed(channel, |meta| {
            let Some(meta) = meta else {
                return Some(Vec::new());
            };
            let retained =
                usize::try_from((meta.head + 1).saturating_sub(meta.first)).unwrap_or(usize::MAX);
            let want = limit.min(retained);
            let have = meta.recent.len();
            (have >= want).then(|| meta.recent.iter().skip(have - want).cloned().collect())
        });
        if let Some(events) = cached {
            return Ok(events);
        }
        let channel = channel.clone();
        self.read_disk(move |conn| {
            let mut events = query_events(
                conn,
                &channel,
                select_event!("WHERE channel = ?1 ORDER BY id DESC LIMIT ?2"),
                params![channel.as_str(), sql_limit(limit)],
            )?;
            events.reverse();
            Ok(events)
        })
        .await
    }

    async fn event(
        &self,
        channel: &ChannelName,
        id: u64,
    ) -> Result<Option<Arc<Event>>, StoreError> {
        let cached = self.committed(channel, |meta| {
            let Some(meta) = meta else { return Some(None) };
            if id < meta.first || id > meta.head {
                return Some(None);
            }
            let front = meta.recent.front()?.id;
            (front <= id).then(|| meta.recent.get((id - front) as usize).cloned())
        });
        if let Some(event) = cached {
            return Ok(event);
        }
        let channel = channel.clone();
        self.read_disk(move |conn| {
            let mut events = query_events(
                conn,
                &channel,
                select_event!("WHERE channel = ?1 AND id = ?2"),
                params![channel.as_str(), id],
            )?;
            Ok(events.pop())
        })
        .await
    }

    async fn record_receipt(
        &self,
        receipt: Receipt,
    ) -> Result<(Receipt, DeviceRecord), StoreError> {
        let recorded = self
            .write(move |conn, drafts| record_receipt(conn, drafts, receipt, None))
            .await?;
        Ok((recorded.receipt, recorded.record))
    }

    async fn record_receipt_keyed(
        &self,
        receipt: Receipt,
        key: String,
    ) -> Result<RecordedReceipt, StoreError> {
        if !valid_idempotency_key(&key) {
            return Err(StoreError::InvalidIdempotencyKey);
        }
        self.write(move |conn, drafts| record_receipt(conn, drafts, receipt, Some(key)))
            .await
    }

    async fn receipts(
        &self,
        channel: &ChannelName,
        event_id: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        // Per event, receipts exist only while the event does. (A late receipt for an event already
        // pruned stays in the receipt stream until the channel next prunes events.)
        if event_id < self.committed(channel, |meta| meta.map_or(1, |m| m.first)) {
            return Ok(Vec::new());
        }
        let channel = channel.clone();
        self.read_disk(move |conn| {
            query_receipts(
                conn,
                &channel,
                "SELECT seq, event_id, device, status, time FROM receipts WHERE channel = ?1 AND event_id = ?2 \
                 ORDER BY seq",
                params![channel.as_str(), event_id],
            )
        })
        .await
    }

    async fn receipt_head(&self, _channel: &ChannelName) -> Result<u64, StoreError> {
        // Seqs are numbered across channels, so the newest of all is a bound for every channel.
        Ok(self.inner.shared.last_receipt.load(Ordering::Relaxed))
    }

    async fn receipts_after(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Receipt>, StoreError> {
        let channel = channel.clone();
        self.read_disk(move |conn| {
            query_receipts(
                conn,
                &channel,
                "SELECT seq, event_id, device, status, time FROM receipts WHERE channel = ?1 AND seq > ?2 \
                 ORDER BY seq LIMIT ?3",
                params![channel.as_str(), after, sql_limit(limit)],
            )
        })
        .await
    }

    async fn unacknowledged(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let (channel, device) = (channel.clone(), device.clone());
        self.read_disk(move |conn| {
            query_events(
                conn,
                &channel,
                select_event!(
                    "WHERE channel = ?1 AND id > ?2 \
                     AND NOT EXISTS (SELECT 1 FROM receipts \
                         WHERE receipts.channel = ?1 AND receipts.event_id = events.id AND receipts.device = ?3) \
                     ORDER BY id LIMIT ?4"
                ),
                params![channel.as_str(), after, device.as_str(), sql_limit(limit)],
            )
        })
        .await
    }

    async fn add_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        at: DateTime<Utc>,
    ) -> Result<Membership, StoreError> {
        let (channel, device) = (channel.clone(), device.clone());
        self.write(move |conn, drafts| add_recipient(conn, drafts, channel, device, at).map(Ok))
            .await
    }

    async fn remove_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Option<Membership>, StoreError> {
        let (channel, device) = (channel.clone(), device.clone());
        self.write(move |conn, drafts| remove_recipient(conn, drafts, &channel, &device).map(Ok))
            .await
    }

    async fn memberships(&self, channel: &ChannelName) -> Result<Vec<Membership>, StoreError> {
        let channel = channel.clone();
        self.read_disk(move |conn| {
            let mut stmt =
                conn.prepare_cached(select_membership!("WHERE channel = ?1 ORDER BY seq"))?;
            let rows =
                stmt.query_map([channel.as_str()], |row| membership_from_row(&channel, row))?;
            rows.collect()
        })
        .await
    }

    async fn touch_device(&self, touch: DeviceTouch) -> Result<DeviceRecord, StoreError> {
        self.write(move |conn, drafts| touch_device(conn, drafts, touch).map(Ok))
            .await
    }

    async fn device(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        if let Some(record) = self.inner.shared.book().get(channel, device) {
            return Ok(Some(record.clone()));
        }
        let (channel, device) = (channel.clone(), device.clone());
        self.read_disk(move |conn| load_device(conn, &channel, &device))
            .await
    }

    async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceRecord>, StoreError> {
        // One page holding them all: the same read, the same merge with the book.
        self.devices_page(channel, None, usize::MAX).await
    }

    async fn devices_page(
        &self,
        channel: &ChannelName,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let channel = channel.clone();
        let after = after.cloned();
        let shared = self.inner.shared.clone();
        self.read_disk(move |conn| loop {
            let trims = shared.book().trims;
            // BINARY collation orders by bytes, as `DeviceId`'s `Ord` does; "" is before every id.
            let from = after.as_ref().map_or("", |a| a.as_str());
            let mut stmt = conn.prepare_cached(select_device!(
                "WHERE channel = ?1 AND device > ?2 ORDER BY device LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                rusqlite::params![
                    channel.as_str(),
                    from,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |row| device_from_row(&channel, row),
            )?;
            let mut records: Vec<DeviceRecord> = rows.collect::<rusqlite::Result<_>>()?;
            // The book is at least as new as the disk for every device it holds, and holds the
            // devices not written back yet: merged in, then cut to the page again. A trim since
            // the disk was read may have dropped a record newer than what was read: read again.
            let book = shared.book();
            if book.trims != trims {
                continue;
            }
            if let Some(known) = book.records.get(&channel) {
                records.retain(|record| !known.contains_key(&record.device));
                records.extend(
                    known
                        .values()
                        .map(|entry| &entry.record)
                        .filter(|r| after.as_ref().is_none_or(|a| r.device > *a))
                        .cloned(),
                );
                records.sort_by(|a, b| a.device.cmp(&b.device));
                records.truncate(limit);
            }
            return Ok(records);
        })
        .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.read_disk(|conn| {
            conn.query_row("SELECT count(*) FROM state", [], |row| row.get::<_, i64>(0))
        })
        .await?;
        // A real write through the writer, committed like any other: it fails when the disk is
        // full or the database is damaged, as pushes would.
        let stamp = chrono::Utc::now().timestamp_millis();
        self.write(move |conn, _| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO state (key, value) VALUES ('ready_probe', ?1)",
            )?
            .execute([stamp])
            .map(|_| Ok(()))
        })
        .await
    }

    async fn channels(&self) -> Result<Vec<ChannelName>, StoreError> {
        self.read_disk(|conn| {
            // BINARY collation orders by bytes, as `ChannelName`'s `Ord` does.
            let mut stmt = conn.prepare_cached("SELECT name FROM channels ORDER BY name")?;
            let rows = stmt.query_map([], |row| {
                parse_name(row.get_ref(0)?.as_str()?, 0, ChannelName::new)
            })?;
            rows.collect()
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// The writer

/// The writer thread: the only read-write connection, and the only code that changes
/// [`Shared::channels`].
struct Writer {
    conn: Connection,
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Command>,
    /// Channels to prune before anything else, popped from the end: every channel at open, and
    /// channels with a pruning backlog.
    sweep: Vec<ChannelName>,
    /// The age index: each channel with retained events under a time no later than its oldest
    /// event's (its `ChannelMeta::age_key`), so the channels with expired events come first.
    ages: BTreeSet<(i64, ChannelName)>,
    /// No age sweep before this.
    next_sweep: Instant,
    /// The recent-event cache's account across channels.
    cache: RecentCache,
    /// When changed device records are next written back.
    next_write_back: Instant,
    /// Callers of `close`, answered once the writer has stopped.
    closers: Vec<oneshot::Sender<()>>,
    /// Tells the checkpointer there is something to copy.
    wake_checkpointer: mpsc::SyncSender<()>,
}

/// A transaction of writes under way.
struct Batch<'a> {
    conn: &'a Connection,
    drafts: Drafts<'a>,
    /// The first failure; the transaction is lost then, and so is every write in it.
    failure: Option<Failure>,
}

impl Batch<'_> {
    /// Runs one write, unless the batch has failed already. An outer error (SQLite's) fails the
    /// whole batch; an inner one (an unknown event) refuses this write only.
    fn attempt<T>(
        &mut self,
        op: impl FnOnce(&Connection, &mut Drafts<'_>) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if let Some(failure) = &self.failure {
            return Err(StoreError::backend(failure.clone()));
        }
        op(self.conn, &mut self.drafts).unwrap_or_else(|err| {
            let failure = Failure::Batch(Arc::new(err));
            self.failure = Some(failure.clone());
            Err(StoreError::backend(failure))
        })
    }
}

/// A write's answer, held until its batch has committed or failed.
trait Deliver {
    fn deliver(self: Box<Self>, failure: Option<&Failure>);
}

struct Done<T> {
    reply: Answer<T>,
    result: Result<T, StoreError>,
    // Released once answered: the write no longer counts against the queue bound.
    _permit: OwnedSemaphorePermit,
}

impl<T> Deliver for Done<T> {
    fn deliver(self: Box<Self>, failure: Option<&Failure>) {
        let result = match failure {
            Some(failure) => Err(StoreError::backend(failure.clone())),
            None => self.result,
        };
        // A caller that went away no longer wants the answer; its write stands all the same.
        let _ = self.reply.send(result);
    }
}

impl Writer {
    /// Counts a committed transaction and wakes the checkpointer for it.
    fn committed(&self) {
        self.shared.transactions.fetch_add(1, Ordering::Relaxed);
        let _ = self.wake_checkpointer.try_send(());
    }

    /// Serves commands until every handle is gone or `close` was called, then returns the
    /// closers to answer.
    fn run(mut self) -> Vec<oneshot::Sender<()>> {
        loop {
            let wait = if !self.closers.is_empty() || !self.sweep.is_empty() {
                Duration::ZERO
            } else {
                // With nothing due the writer sleeps: an idle store costs no CPU, however many
                // channels it holds.
                // At most `IDLE_WAKE` though: expiry is computed on the wall clock, which may
                // jump.
                let idle_wake = Instant::now() + IDLE_WAKE;
                let mut until = self
                    .next_expiry()
                    .map_or(idle_wake, |expiry| expiry.min(idle_wake));
                if !self.shared.book().changed.is_empty() {
                    until = until.min(self.next_write_back);
                }
                until.saturating_duration_since(Instant::now())
            };
            match self.queue.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.queue.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    self.run_batch(batch);
                }
                // Closing, and nothing is left queued.
                Err(mpsc::RecvTimeoutError::Timeout) if !self.closers.is_empty() => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Every handle is gone and the queue is empty.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if self.closers.is_empty() {
                self.sweep_step();
            }
            if Instant::now() >= self.next_write_back {
                self.write_back();
            }
        }
        self.write_back();
        std::mem::take(&mut self.closers)
    }

    /// Writes the changed device records back to `devices`, in one transaction, with the seq of
    /// the newest receipt they include. On failure they stay changed and are tried again later.
    fn write_back(&mut self) {
        self.next_write_back = Instant::now() + DEVICE_WRITE_BACK;
        let (records, through) = {
            let book = self.shared.book();
            if book.changed.is_empty() {
                return;
            }
            let records: Vec<DeviceRecord> = book
                .changed
                .iter()
                .filter_map(|(channel, device)| book.get(channel, device).cloned())
                .collect();
            (records, self.shared.last_receipt.load(Ordering::Relaxed))
        };
        let written = self.conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
            for record in &records {
                save_device(&self.conn, record)?;
            }
            save_devices_through(&self.conn, through)?;
            self.conn.execute_batch("COMMIT")
        });
        match written {
            // Only the writer changes the book, so nothing changed since it was read.
            Ok(()) => {
                let mut book = self.shared.book();
                book.changed.clear();
                book.trim(self.shared.options.device_records);
                drop(book);
                self.committed();
            }
            Err(_) if !self.conn.is_autocommit() => {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            Err(_) => {}
        }
    }

    /// Runs a batch of commands in one transaction and answers them after the commit.
    fn run_batch(&mut self, commands: Vec<Command>) {
        let started = now();
        let clock = Instant::now();
        let retention = self.shared.options.retention;
        // Plain BEGIN/COMMIT statements rather than rusqlite's `Transaction`, which would borrow
        // the connection mutably for as long as the writes hold it.
        let begun = self.conn.execute_batch("BEGIN IMMEDIATE");
        let mut batch = Batch {
            conn: &self.conn,
            drafts: Drafts::new(&self.shared),
            failure: begun.err().map(|err| Failure::Batch(Arc::new(err))),
        };
        let mut answers = Vec::with_capacity(commands.len());
        for command in commands {
            match command {
                Command::Write(job) => answers.push(job(&mut batch)),
                Command::Close(closer) => self.closers.push(closer),
            }
        }
        let Batch {
            conn,
            mut drafts,
            mut failure,
        } = batch;
        if failure.is_none() {
            let committed = finish_batch(conn, &mut drafts, &retention, started, &mut self.sweep)
                .and_then(|()| conn.execute_batch("COMMIT"));
            failure = committed.err().map(|err| Failure::Batch(Arc::new(err)));
        }
        match &failure {
            None => {
                let filed = drafts.publish(&mut self.cache);
                self.ages.extend(filed);
                self.committed();
                if let Some(hook) = self.shared.on_commit.get() {
                    hook(clock.elapsed(), answers.len());
                }
            }
            // Some errors roll back by themselves; otherwise the transaction is still open.
            Some(_) if !conn.is_autocommit() => {
                let _ = conn.execute_batch("ROLLBACK");
                self.shared.event_keys().forget_all();
            }
            Some(_) => self.shared.event_keys().forget_all(),
        }
        for answer in answers {
            answer.deliver(failure.as_ref());
        }
    }

    /// When the oldest event filed in the age index expires (no sooner than `next_sweep`);
    /// `None` without age retention or with nothing retained.
    fn next_expiry(&self) -> Option<Instant> {
        let max_age = self.shared.options.retention.max_age?;
        let (oldest, _) = self.ages.first()?;
        let expires = oldest.saturating_add(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let wait = u64::try_from(expires.saturating_sub(now().timestamp_millis())).unwrap_or(0);
        // Expired exactly at `expires`: a millisecond later it is older than the cutoff.
        Some((Instant::now() + Duration::from_millis(wait.saturating_add(1))).max(self.next_sweep))
    }

    /// Whether the age index holds a channel whose oldest event is older than `cutoff`.
    fn expired(&self, cutoff: Option<i64>) -> bool {
        cutoff.is_some_and(|cutoff| {
            self.ages
                .first()
                .is_some_and(|(oldest, _)| *oldest < cutoff)
        })
    }

    /// One bounded step of pruning, in its own transaction, when there is something to prune:
    /// the channels queued in `sweep`, then those the age index says have expired events.
    fn sweep_step(&mut self) {
        let retention = self.shared.options.retention;
        let cutoff = age_cutoff(&retention, now());
        if self.sweep.is_empty() {
            let start = Instant::now();
            if start < self.next_sweep || !self.expired(cutoff) {
                return;
            }
            self.next_sweep = start + self.shared.options.prune_interval.max(MIN_PRUNE_INTERVAL);
        }
        if self.conn.execute_batch("BEGIN IMMEDIATE").is_err() {
            // Nobody to tell: the next batch meets the same trouble and reports it. The age
            // index is untouched, so expired channels are tried again.
            self.sweep.clear();
            return;
        }
        let mut drafts = Drafts::new(&self.shared);
        let (mut budget, mut visited, mut deleted) = (PRUNE_CHUNK, 0, 0);
        // Taken from the age index, and where each goes back once pruned.
        let (mut taken, mut refile) = (Vec::new(), Vec::new());
        let mut result = Ok(());
        while budget > 0 && visited < SWEEP_CHANNELS {
            let (name, aged) = match self.sweep.pop() {
                Some(name) => (name, false),
                None if self.expired(cutoff) => {
                    let Some((key, name)) = self.ages.pop_first() else {
                        break;
                    };
                    taken.push((key, name.clone()));
                    (name, true)
                }
                None => break,
            };
            visited += 1;
            self.shared.visited.fetch_add(1, Ordering::Relaxed);
            let Some(draft) = drafts.existing(&name) else {
                continue;
            };
            let pruned = prune_channel(&self.conn, &name, draft, &retention, cutoff, budget)
                .and_then(|(gone, more)| {
                    if !aged {
                        return Ok((gone, more, None));
                    }
                    // Filed again under its oldest remaining event (still expired if `more`).
                    let oldest = if more {
                        taken.last().map(|(key, _)| *key)
                    } else {
                        oldest_time(&self.conn, &name, draft.first)?
                    };
                    Ok((gone, more, Some(oldest)))
                });
            match pruned {
                Ok((gone, more, refiled)) => {
                    budget -= gone;
                    deleted += gone;
                    if more {
                        self.sweep.push(name.clone());
                    }
                    if let Some(key) = refiled {
                        refile.push((name, key));
                    }
                }
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        // With nothing deleted there is nothing to commit (and no sync to pay for).
        let commit = if deleted == 0 { "ROLLBACK" } else { "COMMIT" };
        match result.and_then(|()| self.conn.execute_batch(commit)) {
            Ok(()) => {
                if deleted > 0 {
                    self.ages.extend(drafts.publish(&mut self.cache));
                    self.committed();
                }
                let mut channels = self
                    .shared
                    .channels
                    .write()
                    .unwrap_or_else(|e| e.into_inner());
                for (name, key) in refile {
                    if let Some(meta) = channels.get_mut(&name) {
                        meta.age_key = key;
                        if let Some(key) = key {
                            self.ages.insert((key, name));
                        }
                    }
                }
            }
            Err(_) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.sweep.clear();
                // Nothing was pruned: the channels stay filed as they were.
                self.ages.extend(taken);
            }
        }
    }
}

/// The time (milliseconds) of the channel's oldest retained event, at or after `first`.
fn oldest_time(
    conn: &Connection,
    channel: &ChannelName,
    first: u64,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT time FROM events WHERE channel = ?1 AND id >= ?2 ORDER BY id LIMIT 1",
    )?
    .query_row(params![channel.as_str(), first], |row| row.get(0))
    .optional()
}

/// The retained event of `channel` holding `key`, if the key is still remembered. Run by the
/// writer, which sees its transaction's own inserts: a key sent twice in one batch is stored
/// once too. A key past the window is cleared from its event, so it can be given again.
fn keyed_event(
    conn: &Connection,
    keys: &mut EventKeys,
    retention: &Retention,
    channel: &ChannelName,
    key: &str,
    at: DateTime<Utc>,
) -> rusqlite::Result<Option<Arc<Event>>> {
    // Most keys are new: the map says so without reading the database.
    let Some(&id) = keys.channel(conn, channel)?.get(&key_hash(key)) else {
        return Ok(None);
    };
    let stored = query_events(
        conn,
        channel,
        select_event!("WHERE channel = ?1 AND id = ?2"),
        params![channel.as_str(), id],
    )?;
    let event = match stored.into_iter().next() {
        Some(event) if event.idempotency_key.as_deref() == Some(key) => event,
        // Pruned since.
        None => {
            keys.forget(channel, key, id);
            return Ok(None);
        }
        // Another key with the same hash holds the entry (about one chance in 2^64 per pair),
        // or the key was cleared: the channel's rows say.
        Some(_) => {
            let by_key = select_event!("WHERE channel = ?1 AND idempotency_key = ?2");
            match query_events(conn, channel, by_key, params![channel.as_str(), key])?
                .into_iter()
                .next()
            {
                Some(event) => event,
                None => return Ok(None),
            }
        }
    };
    if retention.key_alive(event.time, at) {
        return Ok(Some(event));
    }
    conn.prepare_cached("UPDATE events SET idempotency_key = NULL WHERE channel = ?1 AND id = ?2")?
        .execute(params![channel.as_str(), event.id])?;
    keys.forget(channel, key, event.id);
    Ok(None)
}

fn append(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: ChannelName,
    new: NewEvent,
) -> rusqlite::Result<Appended> {
    let at = now();
    if let Some(key) = &new.idempotency_key {
        let mut keys = drafts.shared.event_keys();
        let retention = &drafts.shared.options.retention;
        if let Some(event) = keyed_event(conn, &mut keys, retention, &channel, key, at)? {
            return Ok(Appended { event, new: false });
        }
    }
    insert_event(&mut insert_statement(conn)?, drafts, channel, new, at)
}

fn append_batch(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: ChannelName,
    events: Vec<NewEvent>,
) -> rusqlite::Result<Result<Vec<Appended>, StoreError>> {
    let at = now();
    let retention = drafts.shared.options.retention;
    // Every key is looked up before the first insert, so a refused batch inserts nothing. Only
    // a failure of SQLite itself can stop it midway, and that rolls back the whole transaction.
    let mut failed = None;
    let plans = {
        let mut keys = drafts.shared.event_keys();
        plan_batch(&events, |key| {
            keyed_event(conn, &mut keys, &retention, &channel, key, at).unwrap_or_else(|err| {
                failed.get_or_insert(err);
                None
            })
        })
    };
    if let Some(err) = failed {
        return Err(err);
    }
    let plans = match plans {
        Ok(plans) => plans,
        Err(refused) => return Ok(Err(refused)),
    };
    let mut appended: Vec<Appended> = Vec::with_capacity(events.len());
    let mut insert = insert_statement(conn)?;
    for (new, plan) in events.into_iter().zip(plans) {
        let answer = match plan {
            Plan::New => insert_event(&mut insert, drafts, channel.clone(), new, at)?,
            Plan::Stored(event) => Appended { event, new: false },
            Plan::Same(earlier) => Appended {
                event: appended[earlier].event.clone(),
                new: false,
            },
        };
        appended.push(answer);
    }
    Ok(Ok(appended))
}

/// The statement [`insert_event`] runs: taken once for a whole batch, as a statement from the
/// cache costs a lookup and a reset each time it is taken.
fn insert_statement(conn: &Connection) -> rusqlite::Result<CachedStatement<'_>> {
    conn.prepare_cached(
        "INSERT INTO events (channel, id, time, publisher, event_type, body, idempotency_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
}

fn insert_event(
    insert: &mut CachedStatement<'_>,
    drafts: &mut Drafts<'_>,
    channel: ChannelName,
    new: NewEvent,
    at: DateTime<Utc>,
) -> rusqlite::Result<Appended> {
    let shared = drafts.shared;
    let draft = drafts.entry(&channel);
    let id = draft.head + 1;
    let event = Arc::new(Event::new(channel, id, at, new));
    insert.execute(params![
        event.channel.as_str(),
        id,
        event.time.timestamp_millis(),
        event.publisher.as_ref().map(|p| p.as_str()),
        event.event_type.as_ref().map(|t| t.as_str()),
        event.body,
        event.idempotency_key,
    ])?;
    if let Some(key) = &event.idempotency_key {
        shared
            .event_keys()
            .noted(&event.channel, key, id, draft.first);
    }
    draft.head = id;
    draft.appended.push(event.clone());
    Ok(Appended { event, new: true })
}

fn record_receipt(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    mut receipt: Receipt,
    key: Option<String>,
) -> rusqlite::Result<Result<RecordedReceipt, StoreError>> {
    let unknown = StoreError::UnknownEvent {
        id: receipt.event_id,
    };
    let Some(draft) = drafts.existing(&receipt.channel) else {
        return Ok(Err(unknown));
    };
    if receipt.event_id == 0 || receipt.event_id > draft.head {
        return Ok(Err(unknown));
    }
    if let Some(key) = &key {
        let held = query_receipts(
            conn,
            &receipt.channel,
            "SELECT seq, event_id, device, status, time FROM receipts WHERE channel = ?1 AND idempotency_key = ?2",
            params![receipt.channel.as_str(), key],
        )?;
        if let Some(stored) = held.into_iter().next() {
            if drafts
                .shared
                .options
                .retention
                .key_alive(stored.time, receipt.time)
            {
                let first = || DeviceRecord::first(&receipt_touch(&stored));
                let record = drafts
                    .device(conn, &stored.channel, &stored.device, first)?
                    .clone();
                return Ok(Ok(RecordedReceipt {
                    receipt: stored,
                    record,
                    new: false,
                }));
            }
            // Past the window: forgotten, so the key can be given again.
            conn.prepare_cached("UPDATE receipts SET idempotency_key = NULL WHERE seq = ?1")?
                .execute([stored.seq])?;
        }
    }
    // Stored even for an event already pruned, so the receipt stream carries it; the channel's
    // next pruning of events removes it with the other receipts of pruned events.
    conn.prepare_cached(
        "INSERT INTO receipts (channel, event_id, device, status, time, idempotency_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        receipt.channel.as_str(),
        receipt.event_id,
        receipt.device.as_str(),
        receipt.status,
        receipt.time.timestamp_millis(),
        key,
    ])?;
    receipt.seq = u64::try_from(conn.last_insert_rowid()).unwrap_or_default();
    drafts.last_receipt = receipt.seq;
    // Applied by the writer alone, in seq order: no concurrent update is lost. Written back to
    // `devices` later, with the other changed records.
    let record = drafts.device(conn, &receipt.channel, &receipt.device, || {
        DeviceRecord::first(&receipt_touch(&receipt))
    })?;
    record.apply_receipt(&receipt);
    let record = record.clone();
    Ok(Ok(RecordedReceipt {
        receipt,
        record,
        new: true,
    }))
}

fn touch_device(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    touch: DeviceTouch,
) -> rusqlite::Result<DeviceRecord> {
    // A device makes its channel known (`channels` lists channels with events or devices).
    drafts.entry(&touch.channel);
    // Applying a touch to its own first record changes nothing.
    let record = drafts.device(conn, &touch.channel, &touch.device, || {
        DeviceRecord::first(&touch)
    })?;
    record.apply(&touch);
    Ok(record.clone())
}

fn current_membership(
    conn: &Connection,
    channel: &ChannelName,
    device: &DeviceId,
) -> rusqlite::Result<Option<(i64, Membership)>> {
    conn.prepare_cached(select_membership!(
        "WHERE channel = ?1 AND device = ?2 AND left_after IS NULL"
    ))?
    .query_row([channel.as_str(), device.as_str()], |row| {
        Ok((row.get(0)?, membership_from_row(channel, row)?))
    })
    .optional()
}

fn add_recipient(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: ChannelName,
    device: DeviceId,
    at: DateTime<Utc>,
) -> rusqlite::Result<Membership> {
    // Serialized with appends by the writer: `joined_after` is exactly the head before the
    // first event the device is expected to acknowledge.
    let head = drafts.entry(&channel).head;
    if let Some((_, current)) = current_membership(conn, &channel, &device)? {
        return Ok(current);
    }
    conn.prepare_cached("INSERT INTO memberships (channel, device, joined_after, left_after, since) VALUES (?1, ?2, ?3, NULL, ?4)")?
        .execute(params![channel.as_str(), device.as_str(), head, at.timestamp_millis()])?;
    Ok(Membership {
        channel,
        device,
        joined_after: head,
        left_after: None,
        since: at,
    })
}

fn remove_recipient(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: &ChannelName,
    device: &DeviceId,
) -> rusqlite::Result<Option<Membership>> {
    let Some(head) = drafts.existing(channel).map(|draft| draft.head) else {
        return Ok(None);
    };
    let Some((seq, mut membership)) = current_membership(conn, channel, device)? else {
        return Ok(None);
    };
    conn.prepare_cached("UPDATE memberships SET left_after = ?1 WHERE seq = ?2")?
        .execute(params![head, seq])?;
    membership.left_after = Some(head);
    Ok(Some(membership))
}

/// Before a batch commits: prune the channels it appended to (so a read after `append` already
/// sees the retention applied) and save the heads that moved.
fn finish_batch(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    retention: &Retention,
    started: DateTime<Utc>,
    backlog: &mut Vec<ChannelName>,
) -> rusqlite::Result<()> {
    // From the batch's start: an event appended in this batch is never already too old.
    let cutoff = age_cutoff(retention, started);
    for (name, draft) in &mut drafts.channels {
        if !draft.appended.is_empty() {
            let (_, more) = prune_channel(conn, name, draft, retention, cutoff, PRUNE_CHUNK)?;
            if more {
                backlog.push(name.clone());
            }
        }
        if draft.saved_head != Some(draft.head) {
            conn.prepare_cached(
                "INSERT INTO channels (name, head) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET head = excluded.head",
            )?
            .execute(params![name.as_str(), draft.head])?;
        }
    }
    Ok(())
}

/// Events older than this (milliseconds since the epoch) are expired, if retention has an age.
fn age_cutoff(retention: &Retention, at: DateTime<Utc>) -> Option<i64> {
    let age = retention.max_age?;
    Some(
        at.timestamp_millis()
            .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)),
    )
}

/// Deletes the oldest events of a channel that retention no longer allows, at most `budget` of
/// them, with their receipts. Like the memory store, age prunes a prefix: it stops at the first
/// event young enough to keep, so retained ids stay contiguous even if the clock stepped back.
/// Returns how many events went and whether more may be due.
fn prune_channel(
    conn: &Connection,
    channel: &ChannelName,
    draft: &mut Draft,
    retention: &Retention,
    cutoff: Option<i64>,
    budget: u64,
) -> rusqlite::Result<(u64, bool)> {
    let end = draft.head + 1;
    if draft.first >= end || budget == 0 {
        return Ok((0, false));
    }
    // Ids below `bound` go; never more than `budget` of them in one step.
    let limit = draft.first.saturating_add(budget).min(end);
    let over_count = end.saturating_sub(retention.max_events as u64);
    let mut bound = over_count.clamp(draft.first, limit);
    if let Some(cutoff) = cutoff.filter(|_| bound < limit) {
        let young: Option<u64> = conn
            .prepare_cached(
                "SELECT id FROM events WHERE channel = ?1 AND id >= ?2 AND id < ?3 AND time >= ?4 ORDER BY id LIMIT 1",
            )?
            .query_row(params![channel.as_str(), bound, limit, cutoff], |row| row.get(0))
            .optional()?;
        bound = young.unwrap_or(limit);
    }
    if bound <= draft.first {
        return Ok((0, false));
    }
    conn.prepare_cached("DELETE FROM events WHERE channel = ?1 AND id < ?2")?
        .execute(params![channel.as_str(), bound])?;
    conn.prepare_cached("DELETE FROM receipts WHERE channel = ?1 AND event_id < ?2")?
        .execute(params![channel.as_str(), bound])?;
    let deleted = bound - draft.first;
    draft.first = bound;
    Ok((deleted, bound == limit && limit < end))
}
