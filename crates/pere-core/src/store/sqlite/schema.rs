//! Opening the database: the data directory's lock ([`lock_dir`]), the schema and its
//! migrations ([`MIGRATIONS`]), the checks that the file is a sound PERE database this build
//! understands, the connections' settings, and what is read at open: the greatest head
//! ([`greatest_head`]), the device records recovered from the receipts of the last moments
//! ([`recover_devices`]) and the events a repair set aside ([`load_set_aside`]). A channel's
//! committed state is read when it is first needed ([`load_channel`]), not at open.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{DeviceRecord, Receipt};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::books::ChannelMeta;
use super::checksum;
use super::failure::{is_damage, Failure};
use super::options::Durability;
use super::rows::{
    load_device, parse_name, receipt_touch, save_device, save_devices_through, time_from_ms,
    DEVICES_THROUGH_RECEIPT,
};
use crate::error::StoreError;

/// WAL pages past which the writer checkpoints by itself, should the checkpointer fall behind.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// The WAL file is truncated back to this size after a checkpoint has emptied it.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// How long a connection waits for a lock held by a checkpoint or another process.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `PRAGMA application_id` of a PERE database ("PERE" in ASCII), to tell it from other SQLite files.
const APPLICATION_ID: i64 = 0x5045_5245;

/// The database file inside the data directory.
pub const DB_FILE: &str = "pere.db";
/// The lock file that keeps a second process (a server, or `pere-server check`) off the same
/// data directory.
pub(super) const LOCK_FILE: &str = "pere.lock";

/// Takes the data directory's lock, held until the file is dropped; the OS drops it when the
/// process ends, however it ends.
///
/// # Errors
/// [`StoreError::Locked`] when another process holds it; [`StoreError::Backend`] when the lock
/// file cannot be made.
pub(super) fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = std::fs::File::create(&lock_path).map_err(|err| Failure::open(&lock_path, err))?;
    if lock.try_lock().is_err() {
        return Err(StoreError::Locked {
            dir: dir.to_path_buf(),
        });
    }
    Ok(lock)
}

/// The table where `pere-server check --repair` sets aside the event rows it finds damaged,
/// byte for byte: the channel and id where the row stood (as the channel's index names them),
/// then what the row held, each column as its raw bytes (text columns as BLOBs, so bytes that
/// are not UTF-8 stay as they were; NULL where the row could not be read at all), why it was
/// set aside and when (milliseconds). Nothing in it is ever read back as an event.
macro_rules! damaged_events_table {
    () => {
        "CREATE TABLE IF NOT EXISTS damaged_events (
            channel TEXT NOT NULL,
            id INTEGER NOT NULL,
            time BLOB,
            publisher BLOB,
            event_type BLOB,
            body BLOB,
            idempotency_key BLOB,
            checksum BLOB,
            reason TEXT NOT NULL,
            set_aside_at INTEGER NOT NULL,
            PRIMARY KEY (channel, id)
        ) WITHOUT ROWID;"
    };
}
pub(super) use damaged_events_table;

/// Files every channel under the time of its oldest retained event (`NULL` with none, or when
/// that time is damaged into something else: such a channel is not aged, count retention still
/// prunes it). Run by the v9 migration and after a repair rebuilt the file.
macro_rules! file_oldest {
    () => {
        "UPDATE channels SET oldest = (SELECT CASE WHEN typeof(time) = 'integer' THEN time END \
             FROM events WHERE events.channel = channels.name ORDER BY id LIMIT 1)"
    };
}
pub(super) use file_oldest;

/// The schema, one migration per version: `MIGRATIONS[n]` takes `user_version` n to n + 1.
pub(super) const MIGRATIONS: &[&str] = &[
    // v1. Times are integer milliseconds since the epoch, UTC.
    "CREATE TABLE channels (
        name TEXT NOT NULL PRIMARY KEY,
        -- The last id given out: survives pruning, so ids are never reused.
        head INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE events (
        channel TEXT NOT NULL,
        id INTEGER NOT NULL,
        time INTEGER NOT NULL,
        publisher TEXT,
        event_type TEXT,
        body TEXT NOT NULL,
        PRIMARY KEY (channel, id)
    );
    CREATE TABLE receipts (
        -- The channel's receipt stream position, a cursor for `receipts_after`: AUTOINCREMENT,
        -- so a value is never handed out again after the newest receipt is pruned.
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        event_id INTEGER NOT NULL,
        device TEXT NOT NULL,
        status TEXT NOT NULL,
        time INTEGER NOT NULL
    );
    CREATE INDEX receipts_by_event ON receipts (channel, event_id, device);
    CREATE INDEX receipts_by_seq ON receipts (channel, seq);
    CREATE TABLE memberships (
        -- Creation order: `memberships` lists oldest first.
        seq INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        device TEXT NOT NULL,
        joined_after INTEGER NOT NULL,
        left_after INTEGER,
        since INTEGER NOT NULL
    );
    CREATE INDEX memberships_by_channel ON memberships (channel);
    -- At most one current membership per device.
    CREATE UNIQUE INDEX memberships_current ON memberships (channel, device) WHERE left_after IS NULL;
    CREATE TABLE devices (
        channel TEXT NOT NULL,
        device TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        last_op TEXT NOT NULL,
        last_event_id TEXT,
        last_delivered INTEGER NOT NULL,
        last_acked INTEGER NOT NULL,
        receipts INTEGER NOT NULL,
        PRIMARY KEY (channel, device)
    ) WITHOUT ROWID;
    PRAGMA application_id = 1346720325;",
    // v2. Device records are written back in bulk; `state` says up to which receipt.
    "CREATE TABLE state (
        key TEXT NOT NULL PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Up to v1 every receipt was saved into its device row in its own transaction.
    INSERT INTO state (key, value)
        VALUES ('devices_through_receipt', COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'receipts'), 0));",
    // v3. Idempotent publishing: an event's key, unique among the channel's retained events
    // (a key leaves with its event's row when retention prunes it). Events stored before have none.
    "ALTER TABLE events ADD COLUMN idempotency_key TEXT;
    CREATE UNIQUE INDEX events_by_key ON events (channel, idempotency_key) WHERE idempotency_key IS NOT NULL;",
    // v4. Idempotent receipts: a receipt's key, unique among the channel's retained receipts.
    "ALTER TABLE receipts ADD COLUMN idempotency_key TEXT;
    CREATE UNIQUE INDEX receipts_by_key ON receipts (channel, idempotency_key) WHERE idempotency_key IS NOT NULL;",
    // v5. Event keys found by a 64-bit hash of channel and key, in an index of integers.
    "ALTER TABLE events ADD COLUMN key_hash INTEGER;
    DROP INDEX events_by_key;
    CREATE INDEX events_by_key_hash ON events (key_hash) WHERE key_hash IS NOT NULL;",
    // v6. Event keys are found through the writer's memory ([`EventKeys`]), not an index: an
    // index of random keys had every keyed insert, and every prune of a keyed event, dirty a
    // page of its own. `key_hash` is no longer written or read.
    "DROP INDEX events_by_key_hash;",
    // v7. Every event row carries the checksum of what it holds (the `checksum` room has the
    // byte layout): written with the row, checked by every read, so damage that leaves the file
    // well formed (a page overwritten inside a body) is found. Rows stored before get theirs
    // here, in this one transaction, from what they hold now; one that no longer decodes gets
    // NULL, which reads refuse. And the table where a repair sets damaged rows aside.
    concat!(
        "ALTER TABLE events ADD COLUMN checksum INTEGER;
        UPDATE events SET checksum =
            pere_event_checksum(channel, id, time, event_type, publisher, idempotency_key, body);",
        damaged_events_table!()
    ),
    // v8. The store's identity: a random id made with the store, and the floor every channel's
    // ids stay above (raised when the store is found to have gone back in time: a file put
    // back from a backup), with the ids each channel skipped to pass it.
    "CREATE TABLE store (
        id TEXT NOT NULL,
        floor INTEGER NOT NULL
    );
    INSERT INTO store (id, floor) VALUES (lower(hex(randomblob(16))), 0);
    CREATE TABLE lost (
        channel TEXT NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL
    );
    CREATE INDEX lost_by_channel ON lost (channel, first);",
    // v9. The age index leaves memory for the database: each channel with retained events is
    // filed under a time no later than its oldest event's (`oldest`), so the writer finds the
    // channels with expired events through the index, and an idle channel costs no memory.
    concat!(
        "ALTER TABLE channels ADD COLUMN oldest INTEGER;
        CREATE INDEX channels_by_oldest ON channels (oldest) WHERE oldest IS NOT NULL;",
        file_oldest!(),
        ";"
    ),
    // v10. Idempotency keys are per publisher: a receipt's key is unique among its device's
    // retained receipts of the channel, no longer among all of them (event keys were never
    // indexed since v6; the writer's memory now hashes them with their publisher). Every key
    // held before stays its device's, as it was unique on the channel.
    "DROP INDEX receipts_by_key;
    CREATE UNIQUE INDEX receipts_by_device_key ON receipts (channel, device, idempotency_key)
        WHERE idempotency_key IS NOT NULL;",
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Longest time the integrity check at open may take: a large database is checked as far as
/// this gets (damage usually shows in the first pages read: the schema and the tables' roots),
/// so a restart is never held up for minutes.
const INTEGRITY_BUDGET: Duration = Duration::from_secs(2);

pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|err| Failure::open(path, err))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|err| Failure::open(path, err))?;
    Ok(conn)
}

/// The error for a damaged database file, with SQLite's words on one line.
fn damaged(path: &Path, detail: &str) -> StoreError {
    let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
    StoreError::Damaged {
        path: path.to_owned(),
        detail,
    }
}

/// Runs SQLite's `quick_check` (every page and index entry well formed, without comparing
/// indexes with their tables) for at most [`INTEGRITY_BUDGET`]: a damaged database is reported
/// at start, in one line, rather than as failed writes later.
///
/// # Errors
/// [`StoreError::Damaged`] with the first problems found.
pub(super) fn check_integrity(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let interrupt = conn.get_interrupt_handle();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = thread::Builder::new()
        .name("pere-sqlite-check".to_owned())
        .spawn(move || {
            if finished.recv_timeout(INTEGRITY_BUDGET) == Err(mpsc::RecvTimeoutError::Timeout) {
                interrupt.interrupt();
            }
        })
        .map_err(|err| Failure::open(path, err))?;
    let found = conn.prepare("PRAGMA quick_check(3)").and_then(|mut stmt| {
        stmt.query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()
    });
    drop(done);
    let _ = watchdog.join();
    match found {
        Ok(rows) if rows.iter().all(|row| row == "ok") => Ok(()),
        Ok(rows) => Err(damaged(path, &rows.join("; "))),
        // Out of time: what was checked is sound.
        Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => {
            Ok(())
        }
        Err(err) if is_damage(&err) => Err(damaged(path, &err.to_string())),
        Err(err) => Err(Failure::open(path, err)),
    }
}

/// Checks the file is a PERE database this build understands, sets the journal and sync modes,
/// and migrates the schema to [`SCHEMA_VERSION`].
pub(super) fn prepare_schema(
    conn: &mut Connection,
    path: &Path,
    durability: Durability,
) -> Result<(), StoreError> {
    let fail = |err: rusqlite::Error| {
        if is_damage(&err) {
            damaged(path, &err.to_string())
        } else {
            Failure::open(path, err)
        }
    };
    conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
    // The first read of the file: a corrupt or foreign file fails here, before anything is written.
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(fail)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Incompatible(format!(
            "{} was created by a newer PERE (schema v{version}, this build knows v{SCHEMA_VERSION})",
            path.display()
        )));
    }
    if version < 0 {
        return Err(StoreError::Incompatible(format!(
            "{} is not a PERE database (schema v{version})",
            path.display()
        )));
    }
    if version > 0 {
        let id: i64 = conn
            .pragma_query_value(None, "application_id", |row| row.get(0))
            .map_err(fail)?;
        if id != APPLICATION_ID {
            return Err(StoreError::Incompatible(format!(
                "{} is not a PERE database (application_id {id:#x})",
                path.display()
            )));
        }
    } else {
        let objects: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(fail)?;
        if objects > 0 {
            return Err(StoreError::Incompatible(format!(
                "{} is an SQLite database of something else (it has tables but no PERE schema)",
                path.display()
            )));
        }
    }

    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(fail)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::backend(Failure::NoWal {
            path: path.to_owned(),
            mode,
        }));
    }
    let synchronous = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(fail)?;
    // The checkpointer thread does this work; the writer only steps in if it falls far behind.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
        .map_err(fail)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
        .map_err(fail)?;

    // The v7 migration computes the checksums of the rows already stored.
    checksum::register(conn).map_err(fail)?;
    for (from, migration) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(migration).map_err(fail)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
    }
    Ok(())
}

/// Folds the receipts committed after the last device write-back (a crash came before the next)
/// into their device records, and returns the seq of the newest receipt.
pub(super) fn recover_devices(conn: &mut Connection) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let through: u64 = tx.query_row(
        "SELECT value FROM state WHERE key = ?1",
        [DEVICES_THROUGH_RECEIPT],
        |row| row.get(0),
    )?;
    let last: u64 = tx.query_row(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'receipts'), 0)",
        [],
        |row| row.get(0),
    )?;
    if last > through {
        let mut records: HashMap<(ChannelName, DeviceId), DeviceRecord> = HashMap::new();
        let mut stmt =
            tx.prepare("SELECT seq, channel, event_id, device, status, time FROM receipts WHERE seq > ?1 ORDER BY seq")?;
        let mut rows = stmt.query([through])?;
        while let Some(row) = rows.next()? {
            let receipt = Receipt {
                seq: row.get(0)?,
                channel: parse_name(row.get_ref(1)?.as_str()?, 1, ChannelName::new)?,
                event_id: row.get(2)?,
                device: parse_name(row.get_ref(3)?.as_str()?, 3, DeviceId::new)?,
                status: row.get(4)?,
                time: time_from_ms(row.get(5)?, 5)?,
            };
            let key = (receipt.channel.clone(), receipt.device.clone());
            let record = match records.entry(key) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let known = load_device(&tx, &receipt.channel, &receipt.device)?;
                    entry.insert(
                        known.unwrap_or_else(|| DeviceRecord::first(&receipt_touch(&receipt))),
                    )
                }
            };
            record.apply_receipt(&receipt);
        }
        drop(rows);
        drop(stmt);
        for record in records.values() {
            save_device(&tx, record)?;
        }
        save_devices_through(&tx, last)?;
    }
    tx.commit()?;
    Ok(last)
}

/// The store's identity and floor (schema v8's one row of `store`).
pub(super) fn load_identity(conn: &Connection) -> rusqlite::Result<(String, u64)> {
    conn.query_row("SELECT id, floor FROM store", [], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })
}

/// Raises the floor kept in the file.
pub(super) fn save_floor(conn: &Connection, floor: u64) -> rusqlite::Result<()> {
    conn.execute("UPDATE store SET floor = MAX(floor, ?1)", [floor])?;
    Ok(())
}

/// The greatest head of any channel (0 with none): the ids the database knows were handed out.
pub(super) fn greatest_head(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("SELECT MAX(head) FROM channels", [], |row| {
        row.get::<_, Option<u64>>(0)
    })
    .map(Option::unwrap_or_default)
}

/// A channel's committed state as the database holds it (its head, oldest retained id, age
/// index time and lost ids), or `None` for a channel that does not exist. Read by the writer
/// on a channel's first write since it was last in memory.
pub(super) fn load_channel(
    conn: &Connection,
    channel: &ChannelName,
) -> rusqlite::Result<Option<ChannelMeta>> {
    let row = conn
        .prepare_cached("SELECT head, oldest FROM channels WHERE name = ?1")?
        .query_row([channel.as_str()], |row| {
            // A time damaged into something else files the channel under none, as at v9.
            let oldest = row.get_ref(1)?.as_i64_or_null().unwrap_or(None);
            Ok((row.get::<_, u64>(0)?, oldest))
        })
        .optional()?;
    let Some((head, oldest)) = row else {
        return Ok(None);
    };
    let first: Option<u64> = conn
        .prepare_cached("SELECT MIN(id) FROM events WHERE channel = ?1")?
        .query_row([channel.as_str()], |row| row.get(0))?;
    let mut meta = ChannelMeta::new(head, first.unwrap_or(head + 1), oldest);
    meta.lost = load_lost(conn, channel)?;
    Ok(Some(meta))
}

/// The ids a channel skipped to pass the store's floor, oldest first.
pub(super) fn load_lost(
    conn: &Connection,
    channel: &ChannelName,
) -> rusqlite::Result<Vec<std::ops::RangeInclusive<u64>>> {
    let mut stmt =
        conn.prepare_cached("SELECT first, last FROM lost WHERE channel = ?1 ORDER BY first")?;
    let rows = stmt.query_map([channel.as_str()], |row| {
        Ok(row.get::<_, u64>(0)?..=row.get::<_, u64>(1)?)
    })?;
    rows.collect()
}

/// The events a repair set aside, per channel (`damaged_events`).
pub(super) fn load_set_aside(
    conn: &Connection,
) -> rusqlite::Result<HashMap<ChannelName, BTreeSet<u64>>> {
    let mut stmt = conn.prepare("SELECT channel, id FROM damaged_events")?;
    let mut rows = stmt.query([])?;
    let mut set_aside: HashMap<ChannelName, BTreeSet<u64>> = HashMap::new();
    while let Some(row) = rows.next()? {
        // A name that is not one no reader will ever ask for.
        let Ok(channel) = ChannelName::new(row.get_ref(0)?.as_str()?) else {
            continue;
        };
        set_aside.entry(channel).or_default().insert(row.get(1)?);
    }
    Ok(set_aside)
}
