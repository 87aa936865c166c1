//! The writer thread, owner of the only read-write connection: the commands it takes, the
//! batches it runs in one transaction each (group commit), the age sweep (through the age
//! index in the database), dropping the memory of channels gone idle, the write-back of device
//! records, and the checkpointer thread beside it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use pere_proto::event::now;
use pere_proto::name::ChannelName;
use pere_proto::receipt::DeviceRecord;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::books::RecentCache;
use super::failure::{file_identity, replaced, Failure};
use super::identity::write_ids;
use super::ops::finish_batch;
use super::prune::{age_cutoff, oldest_time, prune_channel, PRUNE_CHUNK};
use super::rows::{save_device, save_devices_through};
use super::schema::BUSY_TIMEOUT;
use super::shared::{Drafts, Shared};
use crate::error::StoreError;

/// Writes per transaction at most: enough to spread one sync over a burst, few enough that the
/// first caller of a batch does not wait long for the last.
pub const MAX_BATCH: usize = 512;

/// How often changed device records are written back to `devices`. A crash loses at most this
/// much of connection touches (receipts are folded in again from the `receipts` table).
pub const DEVICE_WRITE_BACK: Duration = Duration::from_secs(1);

/// Device records let go by the book between two releases of SQLite's page caches (see
/// `Writer::let_go`): a release after each flood of devices going idle, not after each one.
const RELEASE_AFTER: usize = 1_000;

/// How soon the checkpointer thread, once a commit woke it, counts the commits since the last
/// checkpoint (then after twice as long each time, while they are few); it copies them from the
/// WAL into the database when they come fast ([`BUSY_COMMITS`]): a page changed by many commits
/// in that time is copied once. Short, so that a busy WAL never holds much that is not yet in
/// the database and synced: when it reaches the writer's own limit (16,384 pages), or when it
/// starts over, the writer itself copies and syncs what is left, and every write waits for that.
/// At 500 ms, pushes flat out on a slow disk waited 40 ms at the 99th percentile; at 50 ms, 4 ms.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);

/// Commits since the last checkpoint that make the WAL busy: checkpointed at the next count
/// ([`CHECKPOINT_INTERVAL`]). Fewer wait up to [`QUIET_CHECKPOINT`]: a few pages each, they cost
/// the WAL little, and a checkpoint per handful of commits cost a paced channel (100 events/s) a
/// quarter of the store's CPU per event (31 of 124 µs), in its syncs and in the writer's sync of
/// the WAL's new header each time the WAL started over.
pub const BUSY_COMMITS: u64 = 32;

/// The longest a commit waits to be checkpointed, however quiet the store: with the default
/// durability, what a crash of the machine may lose.
pub const QUIET_CHECKPOINT: Duration = Duration::from_secs(1);

/// Channels visited per sweep step at most; each costs an indexed lookup even with nothing to prune.
const SWEEP_CHANNELS: usize = 256;

/// The shortest time between two age sweeps honoured: a zero interval would keep the writer
/// spinning.
const MIN_PRUNE_INTERVAL: Duration = Duration::from_millis(10);

/// How long the writer sleeps at most when nothing is due: a bound in case the wall clock, by
/// which events expire, jumps; waking costs nothing when nothing is due.
const IDLE_WAKE: Duration = Duration::from_secs(60);

pub(super) type Answer<T> = oneshot::Sender<Result<T, StoreError>>;

/// One write, run by the writer inside a batch's transaction; it returns the answer to send
/// once the batch has committed or failed.
pub(super) type Job = Box<dyn FnOnce(&mut Batch<'_>) -> Box<dyn Deliver> + Send>;

/// A request to the writer thread.
pub(super) enum Command {
    Write(Job),
    /// Nothing uses this channel now: drop what memory holds of it.
    Forget(ChannelName),
    /// Finish what is queued, then stop.
    Close(oneshot::Sender<()>),
}

/// The writer thread: the only read-write connection, and the only code that changes
/// [`Shared::channels`].
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) shared: Arc<Shared>,
    pub(super) queue: mpsc::Receiver<Command>,
    /// Channels to prune before anything else, popped from the end: channels with a pruning
    /// backlog.
    pub(super) sweep: Vec<ChannelName>,
    /// The pass over every channel after open (a retention shortened since the last run
    /// applies): the name it continues after, `None` once done; and the next names, read a
    /// page at a time so the pass holds no list of every channel.
    pub(super) pass: Option<String>,
    pub(super) pass_page: VecDeque<ChannelName>,
    /// The earliest time in the age index (`channels.oldest`, each channel with retained events
    /// under a time no later than its oldest event's), once read: `None` until it is read again.
    pub(super) earliest: Option<Option<i64>>,
    /// No age sweep before this.
    pub(super) next_sweep: Instant,
    /// The recent-event cache's account across channels.
    pub(super) cache: RecentCache,
    /// When changed device records are next written back.
    pub(super) next_write_back: Instant,
    /// Device records the book let go since SQLite's caches were last released.
    pub(super) let_go: usize,
    /// Callers of `close`, answered once the writer has stopped.
    pub(super) closers: Vec<oneshot::Sender<()>>,
    /// Tells the checkpointer there is something to copy.
    pub(super) wake_checkpointer: mpsc::SyncSender<()>,
}

/// A transaction of writes under way.
pub(super) struct Batch<'a> {
    conn: &'a Connection,
    drafts: Drafts<'a>,
    /// The first failure; the transaction is lost then, and so is every write in it.
    failure: Option<Failure>,
}

impl Batch<'_> {
    /// Runs one write, unless the batch has failed already. An outer error (SQLite's) fails the
    /// whole batch; an inner one (an unknown event) refuses this write only.
    pub(super) fn attempt<T>(
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

/// Runs a statement kept prepared: a transaction's `BEGIN` and `COMMIT` are not parsed again
/// for every batch.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// A write's answer, held until its batch has committed or failed.
pub(super) trait Deliver {
    fn deliver(self: Box<Self>, failure: Option<&Failure>);
}

pub(super) struct Done<T> {
    pub(super) reply: Answer<T>,
    pub(super) result: Result<T, StoreError>,
    // Released once answered: the write no longer counts against the queue bound.
    pub(super) _permit: OwnedSemaphorePermit,
}

impl<T> Deliver for Done<T> {
    fn deliver(self: Box<Self>, failure: Option<&Failure>) {
        let result = match failure {
            Some(Failure::Replaced { path }) => Err(replaced(path)),
            Some(failure) => Err(StoreError::backend(failure.clone())),
            None => self.result,
        };
        // A caller that went away no longer wants the answer; its write stands all the same.
        let _ = self.reply.send(result);
    }
}

impl Writer {
    /// Whether another file now has the database's path (restored from a backup, say, while
    /// the server ran): a stat per commit, so nothing is answered as committed into a file
    /// nobody will open again. Once found, it stays so until the server restarts.
    fn file_replaced(&self) -> bool {
        if self.shared.replaced.load(Ordering::Relaxed) {
            return true;
        }
        let Some(opened) = self.shared.file else {
            return false;
        };
        if file_identity(&self.shared.path).is_some_and(|now| now != opened) {
            tracing::error!(
                "{} was replaced while the server ran: writes are refused until the server is restarted",
                self.shared.path.display()
            );
            self.shared.replaced.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Counts a committed transaction, and wakes the checkpointer if it sleeps with nothing
    /// pending (otherwise it reads the count when it looks next).
    fn committed(&self) {
        // SeqCst with the checkpointer's side: either it sees this commit counted, or the writer
        // sees it asleep.
        self.shared.transactions.fetch_add(1, Ordering::SeqCst);
        if self
            .shared
            .checkpointer_asleep
            .swap(false, Ordering::SeqCst)
        {
            let _ = self.wake_checkpointer.try_send(());
        }
    }

    /// Serves commands until every handle is gone or `close` was called, then returns the
    /// closers to answer.
    pub(super) fn run(mut self) -> Vec<oneshot::Sender<()>> {
        loop {
            let wait = if !self.closers.is_empty() || !self.sweep.is_empty() || self.pass.is_some()
            {
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
                let book = self.shared.book();
                if !book.changed.is_empty() || !book.written.is_empty() {
                    until = until.min(self.next_write_back);
                }
                drop(book);
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
            let mut book = self.shared.book();
            if book.changed.is_empty() {
                // Nothing to write: the records written last time are let go if idle since.
                let dropped = book.written_back();
                drop(book);
                self.let_go(dropped);
                return;
            }
            let records: Vec<DeviceRecord> = book
                .changed
                .iter()
                .filter_map(|(channel, device)| book.get(channel, device).cloned())
                .collect();
            (records, self.shared.last_receipt.load(Ordering::Relaxed))
        };
        let written = run_cached(&self.conn, "BEGIN IMMEDIATE").and_then(|()| {
            for record in &records {
                save_device(&self.conn, record)?;
            }
            save_devices_through(&self.conn, through)?;
            run_cached(&self.conn, "COMMIT")
        });
        match written {
            // Only the writer changes the book, so nothing changed since it was read.
            Ok(()) => {
                let mut book = self.shared.book();
                let dropped = book.written_back() + book.trim(self.shared.options.device_records);
                drop(book);
                self.let_go(dropped);
                self.committed();
            }
            Err(_) if !self.conn.is_autocommit() => {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            Err(_) => {}
        }
    }

    /// Counts device records the book let go; once [`RELEASE_AFTER`] of them went since the
    /// last release, empties the page caches of the writer's connection and of the idle
    /// readers. Those caches hold the pages of `devices` that the write-backs and the
    /// subscribing feeds' reads went through, up to SQLite's 2 MB a connection: after a flood
    /// of feeds went idle, about 0.3 KiB a feed at 10,000 feeds (`bench/OPTIMISATIONS.md`). A
    /// busy store reads its hot pages back from the system's file cache.
    fn let_go(&mut self, records: usize) {
        self.let_go += records;
        if self.let_go < RELEASE_AFTER {
            return;
        }
        self.let_go = 0;
        let _ = self.conn.release_memory();
        for reader in self
            .shared
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = reader.release_memory();
        }
        self.shared.memory_released.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs a batch of commands in one transaction and answers them after the commit.
    fn run_batch(&mut self, commands: Vec<Command>) {
        if !commands.iter().any(|c| matches!(c, Command::Write(_))) {
            // Nothing to write (channels gone idle, a close): no transaction, no commit to count.
            for command in commands {
                match command {
                    Command::Forget(channel) => self.forget(&channel),
                    Command::Close(closer) => self.closers.push(closer),
                    Command::Write(_) => {}
                }
            }
            return;
        }
        let started = now();
        let clock = Instant::now();
        let retention = self.shared.options.retention;
        // Plain BEGIN/COMMIT statements rather than rusqlite's `Transaction`, which would borrow
        // the connection mutably for as long as the writes hold it.
        let begun = run_cached(&self.conn, "BEGIN IMMEDIATE");
        let mut batch = Batch {
            conn: &self.conn,
            drafts: Drafts::new(&self.shared),
            failure: begun.err().map(|err| Failure::Batch(Arc::new(err))),
        };
        let mut answers = Vec::with_capacity(commands.len());
        let mut forgotten = Vec::new();
        for command in commands {
            match command {
                Command::Write(job) => answers.push(job(&mut batch)),
                Command::Forget(channel) => forgotten.push(channel),
                Command::Close(closer) => self.closers.push(closer),
            }
        }
        let Batch {
            conn,
            mut drafts,
            mut failure,
        } = batch;
        if failure.is_none() && self.file_replaced() {
            failure = Some(Failure::Replaced {
                path: self.shared.path.clone(),
            });
        }
        if failure.is_none() {
            let committed = finish_batch(conn, &mut drafts, &retention, started, &mut self.sweep)
                .and_then(|()| run_cached(conn, "COMMIT"));
            failure = committed.err().map(|err| Failure::Batch(Arc::new(err)));
        }
        match &failure {
            None => {
                // The earliest filed time, kept without a read while it is known.
                if let (Some(known), Some(filed)) = (self.earliest, drafts.newly_filed()) {
                    self.earliest = Some(Some(known.map_or(filed, |known| known.min(filed))));
                }
                drafts.publish(&mut self.cache);
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
        // After the batch's changes are in memory (or dropped), so that what is dropped is
        // exactly what the database holds; before the answers, so that a write sent after
        // `channel_unloaded` is answered once the channel is forgotten.
        for channel in forgotten {
            self.forget(&channel);
        }
        for answer in answers {
            answer.deliver(failure.as_ref());
        }
    }

    /// Drops what memory holds of `channel`: its committed state, cached events and keys.
    fn forget(&mut self, channel: &ChannelName) {
        let mut channels = self
            .shared
            .channels
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(meta) = channels.remove(channel) {
            self.cache.forget(&meta);
        }
        // A burst of channels gone idle leaves a large table behind.
        if channels.capacity() > 2 * channels.len() + 64 {
            channels.shrink_to_fit();
        }
        drop(channels);
        self.shared.event_keys().forget_channel(channel);
    }

    /// The earliest time in the age index, read from the database when not known (`None` with
    /// nothing filed, or when it cannot be read: the writer looks again at its next wake-up).
    fn earliest(&mut self) -> Option<i64> {
        if let Some(known) = self.earliest {
            return known;
        }
        let read = self
            .conn
            .prepare_cached(
                "SELECT oldest FROM channels WHERE oldest IS NOT NULL ORDER BY oldest LIMIT 1",
            )
            .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)).optional());
        let earliest = read.ok()?;
        self.earliest = Some(earliest);
        earliest
    }

    /// When the oldest event filed in the age index expires (no sooner than `next_sweep`);
    /// `None` without age retention or with nothing retained.
    fn next_expiry(&mut self) -> Option<Instant> {
        let max_age = self.shared.options.retention.max_age?;
        let oldest = self.earliest()?;
        let expires = oldest.saturating_add(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let wait = u64::try_from(expires.saturating_sub(now().timestamp_millis())).unwrap_or(0);
        // Expired exactly at `expires`: a millisecond later it is older than the cutoff.
        Some((Instant::now() + Duration::from_millis(wait.saturating_add(1))).max(self.next_sweep))
    }

    /// Whether the age index holds a channel whose oldest event is older than `cutoff`.
    fn expired(&mut self, cutoff: Option<i64>) -> bool {
        cutoff.is_some_and(|cutoff| self.earliest().is_some_and(|oldest| oldest < cutoff))
    }

    /// The next channel of the pass over every channel after open, if it is not done.
    fn next_in_pass(&mut self) -> rusqlite::Result<Option<ChannelName>> {
        if self.pass_page.is_empty() {
            let Some(after) = &self.pass else {
                return Ok(None);
            };
            let mut stmt = self.conn.prepare_cached(
                "SELECT name FROM channels WHERE name > ?1 ORDER BY name LIMIT ?2",
            )?;
            let names = stmt.query_map(params![after, SWEEP_CHANNELS as i64], |row| {
                row.get::<_, String>(0)
            })?;
            for name in names {
                // A name that is not one holds nothing any reader asks for.
                let name = name?;
                if let Ok(channel) = ChannelName::new(&name) {
                    self.pass_page.push_back(channel);
                }
                self.pass = Some(name);
            }
            if self.pass_page.is_empty() {
                self.pass = None;
            }
        }
        Ok(self.pass_page.pop_front())
    }

    /// Channels the age index says have expired events, earliest first, with their times.
    fn expired_page(&self, cutoff: i64) -> rusqlite::Result<VecDeque<(ChannelName, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, oldest FROM channels WHERE oldest < ?1 ORDER BY oldest LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![cutoff, SWEEP_CHANNELS as i64], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut page = VecDeque::new();
        for row in rows {
            let (name, key) = row?;
            if let Ok(channel) = ChannelName::new(&name) {
                page.push_back((channel, key));
            }
        }
        Ok(page)
    }

    /// One bounded step of pruning, in its own transaction, when there is something to prune:
    /// the channels queued in `sweep`, then those of the pass after open, then those the age
    /// index says have expired events.
    fn sweep_step(&mut self) {
        let retention = self.shared.options.retention;
        let cutoff = age_cutoff(&retention, now());
        if self.sweep.is_empty() && self.pass.is_none() {
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
            self.pass = None;
            self.pass_page.clear();
            return;
        }
        let shared = self.shared.clone();
        let mut drafts = Drafts::new(&shared);
        let (mut budget, mut visited, mut deleted, mut refiled) = (PRUNE_CHUNK, 0, 0, false);
        let mut expired: Option<VecDeque<(ChannelName, i64)>> = None;
        let result = (|| -> rusqlite::Result<()> {
            while budget > 0 && visited < SWEEP_CHANNELS {
                let (name, aged) = if let Some(name) = self.sweep.pop() {
                    (name, false)
                } else if let Some(name) = self.next_in_pass()? {
                    (name, false)
                } else if let Some(cutoff) = cutoff {
                    let page = match &mut expired {
                        Some(page) => page,
                        None => expired.insert(self.expired_page(cutoff)?),
                    };
                    match page.pop_front() {
                        Some((name, _)) => (name, true),
                        None => break,
                    }
                } else {
                    break;
                };
                visited += 1;
                self.shared.visited.fetch_add(1, Ordering::Relaxed);
                let Some(draft) = drafts.existing(&self.conn, &name)? else {
                    continue;
                };
                let (gone, more) =
                    prune_channel(&self.conn, &name, draft, &retention, cutoff, budget)?;
                budget -= gone;
                deleted += gone;
                if more {
                    // Still expired: it stays filed as it is, and comes first next time.
                    self.sweep.push(name);
                    continue;
                }
                if !aged {
                    continue;
                }
                // Filed again under its oldest remaining event.
                let oldest = oldest_time(&self.conn, &name, draft.first)?;
                if oldest != draft.age_key {
                    self.conn
                        .prepare_cached("UPDATE channels SET oldest = ?1 WHERE name = ?2")?
                        .execute(params![oldest, name.as_str()])?;
                    draft.age_key = oldest;
                    draft.saved_age_key = oldest;
                    refiled = true;
                }
            }
            Ok(())
        })();
        // With nothing changed there is nothing to commit (and no sync to pay for).
        let commit = if deleted == 0 && !refiled {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        match result.and_then(|()| self.conn.execute_batch(commit)) {
            Ok(()) => {
                if deleted > 0 || refiled {
                    drafts.publish(&mut self.cache);
                    self.committed();
                }
                if refiled {
                    self.earliest = None;
                }
            }
            Err(_) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                // Nothing was pruned: the channels stay filed as they were.
                self.sweep.clear();
                self.pass = None;
                self.pass_page.clear();
            }
        }
    }
}

/// Starts the thread that checkpoints the WAL once commits come fast ([`BUSY_COMMITS`] since the
/// last checkpoint, first looked at [`CHECKPOINT_INTERVAL`] after the wake-up), and within
/// [`QUIET_CHECKPOINT`] of the first commit when they do not; idle, it sleeps until a commit
/// wakes it. It stops once every sender of its wake-ups is dropped. Returns it and a sender:
/// `try_send` after a commit that found it asleep (`Shared::checkpointer_asleep`).
pub(super) fn start_checkpointer(
    path: &Path,
    shared: Arc<Shared>,
) -> Result<(thread::JoinHandle<()>, mpsc::SyncSender<()>), StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|err| Failure::open(path, err))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|err| Failure::open(path, err))?;
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    let thread = thread::Builder::new()
        .name("pere-sqlite-checkpoint".to_owned())
        .spawn(move || {
            let mut written = 0;
            let remember = |written: &mut u64| {
                let high_water = shared.high_water.load(Ordering::Relaxed);
                if high_water > *written && !shared.replaced.load(Ordering::Relaxed) {
                    // Not synced: the file matters only if the database goes back in time, and
                    // then a crash of the machine is the lesser loss; the next commit writes it.
                    if write_ids(&shared.path, &shared.store_id, high_water).is_ok() {
                        *written = high_water;
                    }
                }
            };
            let transactions = || shared.transactions.load(Ordering::SeqCst);
            // The commits the last checkpoint saw.
            let mut copied = transactions();
            'idle: loop {
                if transactions() == copied {
                    // Asleep until a commit: no timer at all, and no wake-up per commit after the
                    // first (a wake-up per commit cost a paced channel 5% of its CPU per delivery).
                    shared.checkpointer_asleep.store(true, Ordering::SeqCst);
                    if transactions() == copied && woken.recv().is_err() {
                        break 'idle;
                    }
                    if !shared.checkpointer_asleep.swap(false, Ordering::SeqCst) {
                        // A commit sent a wake-up for this same sleep: not one for the next.
                        let _ = woken.try_recv();
                    }
                }
                let first = Instant::now();
                let mut interval = CHECKPOINT_INTERVAL;
                loop {
                    // Commits gather meanwhile; a page changed by many of them is copied once.
                    let until = (Instant::now() + interval).min(first + QUIET_CHECKPOINT);
                    // Counted again twice as late while they are few: a commit every few seconds
                    // wakes it a handful of times, not every 50 ms for a second.
                    interval = interval.saturating_mul(2);
                    match woken.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        // The last connection to close checkpoints what is left.
                        Err(mpsc::RecvTimeoutError::Disconnected) => break 'idle,
                        Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                    }
                    let committed = transactions();
                    let busy = committed.wrapping_sub(copied) >= BUSY_COMMITS;
                    if busy || first.elapsed() >= QUIET_CHECKPOINT {
                        // The commits counted so far are this checkpoint's.
                        copied = committed;
                        break;
                    }
                }
                // PASSIVE never waits for the writer or readers; what it cannot copy now it copies
                // next time. A failure (disk trouble) is the writer's to report, on its commits.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                remember(&mut written);
            }
            remember(&mut written);
        })
        .map_err(|err| Failure::open(path, err))?;
    Ok((thread, wake))
}
