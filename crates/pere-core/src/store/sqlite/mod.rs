//! The durable SQLite store: events, receipts and device records in `pere.db` under a data
//! directory, kept across restarts (and, with [`Durability::Full`], across power loss).
//!
//! How it works:
//! - **One writer thread** owns the only read-write connection. A write sends it a command and
//!   awaits the answer on a oneshot; the writer takes every command queued (up to [`MAX_BATCH`]),
//!   runs them in one transaction and answers each caller after the commit. Under load that is one
//!   sync per batch, not one per request, and a write never blocks a tokio thread. The rows a
//!   transaction appends (events, receipts) are held and inserted together, a few statements for
//!   any number, before it reads what they could change and before it commits.
//! - **Ids** come from per-channel heads the writer keeps in memory and saves in the `channels`
//!   table in the same transaction, so pruning every event never resets a sequence. A batch that
//!   fails rolls back whole: its callers all get the error and no id is consumed.
//! - **Reads** use read-only connections from a small pool, on tokio's blocking threads; WAL lets
//!   them run beside the writer. The committed head and the oldest retained id of each channel
//!   in use are also kept in memory (updated after each commit), so its `head` never touches
//!   the disk, and so are the newest events of channels recently appended to, within one byte
//!   budget for all channels ([`SqliteOptions::recent_bytes`]), so most tail replays do not
//!   either.
//! - **Idle channels cost no memory.** Nothing of a channel is read at open: the writer reads
//!   its state (head, oldest retained id, age index time, lost ids) on its first write, and
//!   readers read the database for a channel not in memory. When the hub unloads a channel
//!   ([`Store::channel_unloaded`]), the writer drops its state, cached events and keys between
//!   two batches, when memory and the database agree.
//! - **Retention** is enforced by the writer in bounded chunks, at a cost in proportion to what
//!   is pruned, not to the number of channels: the count limit right after appends, in the same
//!   transaction; the age limit by an index of each channel's oldest retained event time, kept
//!   in the database (`channels.oldest`, schema v9), so the writer wakes when the oldest of
//!   them expires and visits only the channels that have something to prune (an idle server
//!   with many channels does no work). After open, one pass over every channel, a page of
//!   names at a time, applies a retention shortened since the last run. Receipts go with their
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
//!   of their own, off the path of writes waiting for a commit: [`CHECKPOINT_INTERVAL`] after
//!   commits that come fast ([`BUSY_COMMITS`] since the last checkpoint), within
//!   [`QUIET_CHECKPOINT`] of the first one otherwise; an idle store has none.
//!
//! - **Damage** is found, contained and reported, never a stall: each event row carries a
//!   checksum of what it holds (schema v7), written with it and checked by every read. A row
//!   that fails it or does not decode is never served: [`Store::read`] names its id in
//!   [`EventPage::unreadable`], [`Store::event`] answers [`StoreError::EventDamaged`], the other
//!   reads leave it out; where SQLite reports a range's pages damaged, the range is read id by
//!   id. Each damaged event is counted and named in the log once ([`Store::damage`]).
//!   [`check`] finds damage offline and mends it (`pere-server check`).
//!
//! One process per data directory: the writer trusts its in-memory heads. (A check holds the
//! same lock while it works.)
//!
//! # Layout
//!
//! The store is kept in rooms, each using only the rooms listed before it:
//!
//! - `options`: what the store is opened with ([`Durability`], [`SqliteOptions`], both
//!   re-exported here).
//! - `failure`: why it failed (`Failure`, carried in [`StoreError::Backend`]), and which of
//!   SQLite's errors say the file is damaged.
//! - `checksum`: what an event row's checksum covers, byte for byte (`RowFields`), and the SQL
//!   function the v7 migration computes it with.
//! - `books`: the books kept in memory: the idempotency keys of retained events (`EventKeys`),
//!   the committed head and newest events of each channel in use (`ChannelMeta`, within the
//!   byte budget of `RecentCache`), and the device records (`DeviceBook`).
//! - `rows`: rows to values and back: the `select_*` macros, `event_from_row` (which checks the
//!   checksum, and names a row's [`Damage`]), `device_from_row`, the `query_*` helpers, spans of
//!   ids read whole or id by id (`read_span`, `read_page`), device rows loaded and saved.
//! - `damage`: the damage readers met (`DamageBook`): counted, and named once in the log.
//! - `schema`: opening the database: the migrations, the checks that it is a sound PERE
//!   database, the connections' settings, what is read at open (the greatest head, the device
//!   records recovered from receipts, the events a repair set aside) and a channel's state when
//!   first needed (`load_channel`), the lock.
//! - `shared`: what the writer and the readers share (`Shared`), and a transaction's view of it
//!   (`Drafts`), published once the transaction commits.
//! - `prune`: retention: `age_cutoff`, `prune_channel`, a channel's oldest retained time.
//! - `ops`: the writes run in a batch: `append`, `append_batch`, `insert_event`,
//!   `record_receipt`, `record_receipts`, `touch_device`, the memberships, and `finish_batch`
//!   before the commit.
//! - `identity`: the store's id and floor, and the file beside the database ([`IDS_FILE`]) that
//!   remembers the greatest id handed out, so a database gone back in time is noticed at open.
//! - `writer`: the writer thread: its commands, group commit (refused once the file was
//!   replaced under it), the age sweep, forgetting channels gone idle, the write-back of device
//!   records, and the checkpointer, which also writes the ids file (with [`MAX_BATCH`],
//!   [`DEVICE_WRITE_BACK`] and [`CHECKPOINT_INTERVAL`], re-exported here).
//! - `check`: the offline check and repair ([`check`], [`CheckReport`], [`Repaired`]).
//! - this module: [`SqliteStore`] (opening it, its handles) and its [`Store`] impl.
//!
//! ```text
//! options, failure, checksum → books → rows → damage → schema → identity → shared → prune → ops
//!   → writer → check → mod
//! ```

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pere_proto::event::{valid_idempotency_key, Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{DeviceRecord, DeviceTouch, Membership, Receipt};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, Semaphore};

use crate::error::StoreError;
use crate::store::{
    check_keys, check_receipt_keys, Appended, DamageSeen, EventPage, ReceiptBatch, RecordedLine,
    RecordedReceipt, Store,
};

mod books;
mod check;
mod checksum;
mod damage;
mod failure;
mod identity;
mod ops;
mod options;
mod prune;
mod rows;
mod schema;
mod shared;
mod writer;

#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod idle_tests;
#[cfg(test)]
mod tests;

use books::{ChannelMeta, RecentCache};
pub use check::{check, CheckReport, Repaired};
use damage::DamageBook;
use failure::{closed, file_identity, replaced, Failure};
pub use identity::IDS_FILE;
use ops::{
    add_recipient, append, append_batch, pass_floor, record_receipt, record_receipts,
    remove_recipient, touch_device,
};
pub use options::{Durability, SqliteOptions};
pub use rows::Damage;
use rows::{
    device_from_row, load_device, membership_from_row, parse_name, query_events, query_receipts,
    read_event, read_page, read_recent, select_device, select_event, select_membership, sql_limit,
};
pub use schema::DB_FILE;
use schema::{
    check_integrity, greatest_head, load_lost, load_set_aside, lock_dir, prepare_schema,
    recover_devices, save_floor,
};
use shared::{Drafts, Shared};
use writer::{start_checkpointer, Batch, Command, Done, Job, Writer};
pub use writer::{
    BUSY_COMMITS, CHECKPOINT_INTERVAL, DEVICE_WRITE_BACK, MAX_BATCH, QUIET_CHECKPOINT,
};

/// Writes queued or in flight at most; further writers wait (asynchronously) for room, so a
/// stalled disk cannot make the queue grow without bound.
const MAX_QUEUED: usize = 4 * MAX_BATCH;

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
        // One server per data directory: a second writer would break the id sequences. A
        // repair (`pere-server check --repair`) holds the same lock while it works.
        let lock = lock_dir(dir)?;
        let path = dir.join(DB_FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(&path, flags).map_err(|err| Failure::open(&path, err))?;
        // The writer's statements, with a receipt insert of each size (`ops`), stay prepared.
        conn.set_prepared_statement_cache_capacity(64);
        prepare_schema(&mut conn, &path, options.durability)?;
        check_integrity(&conn, &path)?;
        // No channel is read at open: each is read when first used, so a restart takes the
        // same time with a million channels as with one.
        let heads = greatest_head(&conn).map_err(|err| Failure::open(&path, err))?;
        let settled =
            identity::settle(&conn, dir, &path, heads).map_err(|err| Failure::open(&path, err))?;
        if let Some(why) = &settled.raised {
            tracing::warn!(
                "{why}: every channel's ids continue above {}, so none a client saw is handed out again",
                settled.floor
            );
        }
        let last_receipt = recover_devices(&mut conn).map_err(|err| Failure::open(&path, err))?;
        let set_aside = load_set_aside(&conn).map_err(|err| Failure::open(&path, err))?;

        let shared = Arc::new(Shared {
            _lock: lock,
            path: path.clone(),
            options,
            channels: RwLock::default(),
            readers: Mutex::default(),
            devices: Mutex::default(),
            last_receipt: AtomicU64::new(last_receipt),
            memory_released: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            checkpointer_asleep: AtomicBool::new(false),
            on_commit: OnceLock::new(),
            visited: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            event_keys: Mutex::default(),
            damage: DamageBook::new(set_aside),
            store_id: settled.store_id,
            floor: AtomicU64::new(settled.floor),
            high_water: AtomicU64::new(settled.high_water),
            file: file_identity(&path),
            replaced: AtomicBool::new(false),
        });
        let (commands, queue) = mpsc::channel();
        let (checkpointer, wake_checkpointer) = start_checkpointer(&path, shared.clone())?;
        let writer = Writer {
            conn,
            shared: shared.clone(),
            queue,
            sweep: Vec::new(),
            // Every channel once, a page at a time: a retention shortened since the last run
            // applies.
            pass: Some(String::new()),
            pass_page: std::collections::VecDeque::new(),
            earliest: None,
            next_sweep: Instant::now(),
            cache: RecentCache::default(),
            next_write_back: Instant::now() + DEVICE_WRITE_BACK,
            let_go: 0,
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
        // Idle read connections close before the writer's: with one open, the database's last
        // connection left the WAL beside it (and a file copied in its place would meet it).
        // Reads after this open new ones.
        self.inner
            .shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let (reply, stopped) = oneshot::channel();
        if let Some(commands) = &self.inner.commands {
            if commands.send(Command::Close(reply)).is_ok() {
                // An error means the writer is gone already, which is what was asked.
                let _ = stopped.await;
            }
        }
        // Everything is committed: the ids file says so before the process ends.
        let shared = &self.inner.shared;
        if !shared.replaced.load(Ordering::Relaxed) {
            let high_water = shared.high_water.load(Ordering::Relaxed);
            let _ = identity::write_ids(&shared.path, &shared.store_id, high_water);
        }
    }

    /// The channels whose state is in memory now, by name: for tests of what idle channels keep.
    #[cfg(test)]
    pub(crate) fn channels_in_memory(&self) -> Vec<String> {
        let channels = self.inner.shared.channels();
        let mut names: Vec<String> = channels.keys().map(|name| name.to_string()).collect();
        names.sort();
        names
    }

    /// Waits for what the writer was told before now (a channel to forget, say): a write
    /// queued after it is answered once it is done. For tests.
    #[cfg(test)]
    pub(crate) async fn settle(&self) {
        self.probe().await.expect("the store takes writes");
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
        if self.inner.shared.replaced.load(Ordering::Relaxed) {
            return Err(replaced(&self.inner.shared.path));
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

    /// The channel's committed `(first, head)` as memory holds them: what a disk read falls
    /// back on where SQLite reports their pages damaged.
    fn known_bounds(&self, channel: &ChannelName) -> (u64, u64) {
        self.committed(channel, |meta| meta.map_or((1, 0), |m| (m.first, m.head)))
    }

    /// Reads the committed in-memory state of a channel.
    fn committed<T>(
        &self,
        channel: &ChannelName,
        read: impl FnOnce(Option<&ChannelMeta>) -> T,
    ) -> T {
        let channels = self.inner.shared.channels();
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
        // The read-only connections close first: the last connection to close copies the WAL
        // into the database and deletes it, which a read-only one cannot do.
        self.shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
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
        if let Some(head) = self.committed(channel, |meta| meta.map(|m| m.head)) {
            return Ok(head);
        }
        let channel = channel.clone();
        self.read_disk(move |conn| {
            conn.prepare_cached("SELECT head FROM channels WHERE name = ?1")?
                .query_row([channel.as_str()], |row| row.get::<_, u64>(0))
                .optional()
                .map(Option::unwrap_or_default)
        })
        .await
    }

    async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let cached = self.committed(channel, |meta| {
            // A channel not in memory is read from the database.
            let meta = meta?;
            // Memory holds only events read back or appended whole: none damaged.
            let page = |events: Vec<Arc<Event>>| EventPage {
                events,
                first_retained: meta.first,
                head: meta.head,
                unreadable: Vec::new(),
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
        let known = self.known_bounds(channel);
        let (channel, shared) = (channel.clone(), self.inner.shared.clone());
        self.read_disk(move |conn| {
            let (page, damaged) = read_page(conn, &channel, after, limit, known)?;
            shared.damage.note(&channel, &damaged);
            Ok(page)
        })
        .await
    }

    async fn recent(
        &self,
        channel: &ChannelName,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        let cached = self.committed(channel, |meta| {
            let meta = meta?;
            let retained =
                usize::try_from((meta.head + 1).saturating_sub(meta.first)).unwrap_or(usize::MAX);
            let want = limit.min(retained);
            let have = meta.recent.len();
            (have >= want).then(|| meta.recent.iter().skip(have - want).cloned().collect())
        });
        if let Some(events) = cached {
            return Ok(events);
        }
        let known = self.known_bounds(channel);
        let (channel, shared) = (channel.clone(), self.inner.shared.clone());
        // Damaged events are left out (and counted, and named in the log).
        self.read_disk(move |conn| {
            let span = read_recent(conn, &channel, limit, known)?;
            shared.damage.note(&channel, &span.damaged);
            Ok(span.events)
        })
        .await
    }

    async fn event(
        &self,
        channel: &ChannelName,
        id: u64,
    ) -> Result<Option<Arc<Event>>, StoreError> {
        let cached = self.committed(channel, |meta| {
            let meta = meta?;
            if id < meta.first || id > meta.head {
                return Some(None);
            }
            let front = meta.recent.front()?.id;
            (front <= id).then(|| meta.recent.get((id - front) as usize).cloned())
        });
        if let Some(event) = cached {
            return Ok(event);
        }
        let known = self.known_bounds(channel);
        let (channel, shared) = (channel.clone(), self.inner.shared.clone());
        let span = self
            .read_disk(move |conn| {
                let span = read_event(conn, &channel, id, known)?;
                shared.damage.note(&channel, &span.damaged);
                Ok(span)
            })
            .await?;
        match span.damaged.first() {
            Some(_) => Err(StoreError::EventDamaged { id }),
            None => Ok(span.events.into_iter().next()),
        }
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

    async fn record_receipts(&self, batch: ReceiptBatch) -> Result<Vec<RecordedLine>, StoreError> {
        check_receipt_keys(&batch.lines)?;
        if batch.lines.is_empty() {
            return Ok(Vec::new());
        }
        // One job of the writer: in one transaction, and no other write comes between its lines.
        self.write(move |conn, drafts| record_receipts(conn, drafts, batch))
            .await
    }

    async fn receipts(
        &self,
        channel: &ChannelName,
        event_id: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        // Per event, receipts exist only while the event does. (A late receipt for an event already
        // pruned stays in the receipt stream until the channel next prunes events.)
        let first = self.committed(channel, |meta| meta.map(|m| m.first));
        if first.is_some_and(|first| event_id < first) {
            return Ok(Vec::new());
        }
        let channel = channel.clone();
        self.read_disk(move |conn| {
            if first.is_none() {
                let first: Option<u64> = conn
                    .prepare_cached("SELECT MIN(id) FROM events WHERE channel = ?1")?
                    .query_row([channel.as_str()], |row| row.get(0))?;
                if first.is_none_or(|first| event_id < first) {
                    return Ok(Vec::new());
                }
            }
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
        let shared = self.inner.shared.clone();
        self.read_disk(move |conn| {
            let found = query_events(
                conn,
                &channel,
                select_event!(
                    "WHERE channel = ?1 AND id > ?2 \
                     AND NOT EXISTS (SELECT 1 FROM receipts \
                         WHERE receipts.channel = ?1 AND receipts.event_id = events.id AND receipts.device = ?3) \
                     ORDER BY id LIMIT ?4"
                ),
                params![channel.as_str(), after, device.as_str(), sql_limit(limit)],
            )?;
            // Damaged events are left out; a row whose very id is unreadable is found by the
            // readers that account for every id.
            let damaged: Vec<(u64, Damage)> = found
                .damaged
                .iter()
                .filter_map(|(id, damage)| Some(((*id)?, *damage)))
                .collect();
            shared.damage.note(&channel, &damaged);
            Ok(found.events)
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

    fn damage(&self) -> DamageSeen {
        self.inner.shared.damage.seen()
    }

    fn memory_released(&self) -> u64 {
        self.inner.shared.memory_released.load(Ordering::Relaxed)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.read_disk(|conn| {
            conn.query_row("SELECT count(*) FROM state", [], |row| row.get::<_, i64>(0))
        })
        .await?;
        // A real write through the writer, committed like any other: it fails when the disk is
        // full or the database is damaged, as pushes would.
        let stamp = Utc::now().timestamp_millis();
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

    async fn adopt(&self, high_water: u64) -> Result<u64, StoreError> {
        // A file replaced under the server cannot be adopted from here: the new one is opened
        // at the next start, which compares it with the ids file.
        let shared = &self.inner.shared;
        if shared.replaced.load(Ordering::Relaxed) {
            return Err(replaced(&shared.path));
        }
        self.write(move |conn, drafts| {
            save_floor(conn, high_water)?;
            let floor = drafts.shared.floor.fetch_max(high_water, Ordering::SeqCst);
            Ok(Ok(floor.max(high_water)))
        })
        .await
    }

    async fn reseed(&self, channel: &ChannelName, floor: u64) -> Result<(), StoreError> {
        let channel = channel.clone();
        self.write(move |conn, drafts| pass_floor(conn, drafts, &channel, floor).map(Ok))
            .await
    }

    async fn lost(
        &self,
        channel: &ChannelName,
    ) -> Result<Vec<std::ops::RangeInclusive<u64>>, StoreError> {
        if let Some(lost) = self.committed(channel, |meta| meta.map(|m| m.lost.clone())) {
            return Ok(lost);
        }
        let channel = channel.clone();
        self.read_disk(move |conn| load_lost(conn, &channel)).await
    }

    fn channel_unloaded(&self, channel: &ChannelName) {
        // Not a write: it takes no room in the queue (the hub unloads each channel once, so
        // these are as many as the channels it had loaded) and is served between batches.
        if let Some(commands) = &self.inner.commands {
            let _ = commands.send(Command::Forget(channel.clone()));
        }
    }
}
