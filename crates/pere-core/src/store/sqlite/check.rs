//! The offline check and repair of a data directory, behind `pere-server check` ([`check`]):
//! SQLite's full `integrity_check`, then every event row read and verified as the server reads
//! it; with repair, damaged rows set aside, or the file rebuilt from what can be read.
//!
//! It holds the data directory's lock throughout, so no server starts on the directory while it
//! works (and it refuses to work while a server runs there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pere_proto::event::Event;
use pere_proto::name::ChannelName;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::checksum::RowFields;
use super::failure::{is_damage, Failure};
use super::options::Durability;
use super::rows::{event_row_of_any_channel, read_span, Damage, RowRead, Span};
use super::schema::{
    damaged_events_table, file_oldest, load_set_aside, lock_dir, prepare_schema, DB_FILE,
};
use crate::error::StoreError;

/// Ids verified per read: one replay page.
const SCAN_SPAN: u64 = 256;

/// What SQLite's `integrity_check` reports at most.
const INTEGRITY_LINES: u32 = 100;

/// The tables copied as they are when a file is rebuilt; events are copied one by one, each
/// checked. Their names and columns are the schema's.
const PLAIN_TABLES: &[&str] = &[
    "channels",
    "receipts",
    "memberships",
    "devices",
    "state",
    "damaged_events",
];

/// What [`check`] found and, when asked to repair, did.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// The database file.
    pub path: PathBuf,
    /// What SQLite's full `integrity_check` reported, when not `ok` (at most 100 lines):
    /// damage to the file's structure, which moving rows cannot mend.
    pub integrity: Vec<String>,
    /// Event rows read and verified.
    pub events_checked: u64,
    /// Channels whose events were read.
    pub channels_checked: usize,
    /// Per channel, the events the store holds but cannot serve, with why, by id.
    pub damaged: BTreeMap<String, Vec<(u64, Damage)>>,
    /// Events an earlier repair set aside (known, and no longer counted as damage).
    pub set_aside_before: usize,
    /// What the repair did, when one was asked for.
    pub repair: Option<Repaired>,
}

impl CheckReport {
    /// Whether the store was found sound: a well-formed file and every event readable.
    pub fn sound(&self) -> bool {
        self.integrity.is_empty() && self.damaged.is_empty()
    }

    /// How many events were found damaged.
    pub fn damaged_events(&self) -> usize {
        self.damaged.values().map(Vec::len).sum()
    }
}

/// What a repair did.
#[derive(Debug)]
pub enum Repaired {
    /// The file was sound as a file: each damaged event's row was moved into `damaged_events`,
    /// byte for byte, in one transaction.
    SetAside {
        /// How many.
        events: usize,
    },
    /// The file's structure was damaged: a new file was built from every row that could be
    /// read, and took the old one's place; the old one was kept beside it.
    Rebuilt {
        /// Where the damaged file (with its log, if it had one) now is.
        backup: PathBuf,
        /// Events copied, each verified.
        events_copied: u64,
        /// Damaged events recorded in the new file's `damaged_events`.
        events_set_aside: usize,
        /// The other tables: name, rows copied, and the error that stopped the copy early.
        tables: Vec<(String, u64, Option<String>)>,
    },
}

/// Checks the store in `dir` offline and, with `repair`, mends it:
///
/// 1. takes the directory's lock (a running server holds it: stop it first), opens `pere.db`
///    (never creating it) and upgrades an older schema as the server would;
/// 2. copies the log into the file (a `TRUNCATE` checkpoint), so that the file alone holds
///    everything and a backup of it is whole;
/// 3. runs SQLite's full `PRAGMA integrity_check`;
/// 4. reads every retained event of every channel, a page at a time, as the server reads it:
///    each row's checksum verified and every column decoded; where SQLite reports a page
///    damaged, id by id.
///
/// With `repair`, when damage was found:
/// - if the file is well formed (integrity `ok`), each damaged row is moved into
///   `damaged_events` (its columns as raw bytes), in one transaction: readers then pass over
///   its id as a known gap, without counting it as damage again;
/// - otherwise the file is rebuilt: a new file with the current schema gets every event that
///   reads back sound (damaged ones go to its `damaged_events`, with what could be read of them)
///   and every row of the other tables that can be read (a table whose copy meets an unreadable
///   page keeps the rows before it; the report says so); channel heads never go back. The
///   damaged file is renamed `pere.db.damaged-<UTC time>` (with its `-wal`, if any) and the new
///   one takes its name.
///
/// # Errors
/// [`StoreError::Locked`] while a server (or another check) holds the directory;
/// [`StoreError::Incompatible`] for a file that is not a PERE database this build knows;
/// [`StoreError::Damaged`] when the file is too damaged to be opened or upgraded at all;
/// [`StoreError::Backend`] when the directory or file cannot be read or written.
pub fn check(dir: &Path, repair: bool) -> Result<CheckReport, StoreError> {
    let path = dir.join(DB_FILE);
    if !path.is_file() {
        return Err(Failure::open(
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "there is no store here"),
        ));
    }
    let _lock = lock_dir(dir)?;
    let mut conn = open_existing(&path)?;
    prepare_schema(&mut conn, &path, Durability::Full)?;
    let fail = |err: rusqlite::Error| Failure::open(&path, err);
    let mut report = CheckReport {
        path: path.clone(),
        ..CheckReport::default()
    };
    if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        report.integrity.push(format!("checkpoint: {err}"));
    }
    report
        .integrity
        .extend(integrity_problems(&conn).map_err(fail)?);
    let set_aside = load_set_aside(&conn).unwrap_or_default();
    report.set_aside_before = set_aside.values().map(|ids| ids.len()).sum();
    for (channel, (first, last)) in channel_spans(&conn).map_err(fail)? {
        report.channels_checked += 1;
        let known = set_aside.get(&channel);
        let mut damaged = Vec::new();
        scan(&conn, &channel, first, last, |span| {
            report.events_checked += span.events.len() as u64;
            damaged.extend(
                span.damaged
                    .into_iter()
                    .filter(|(id, _)| !known.is_some_and(|ids| ids.contains(id))),
            );
            Ok(())
        })
        .map_err(fail)?;
        if !damaged.is_empty() {
            report.damaged.insert(channel.to_string(), damaged);
        }
    }
    if !repair || report.sound() {
        return Ok(report);
    }
    report.repair = Some(if report.integrity.is_empty() {
        set_aside_rows(&mut conn, &report.damaged).map_err(fail)?
    } else {
        drop(conn);
        rebuild(dir, &path)?
    });
    Ok(report)
}

fn open_existing(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags).map_err(|err| Failure::open(path, err))
}

/// SQLite's full integrity check: its lines other than `ok`, or the error that stopped it.
fn integrity_problems(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let found = conn
        .prepare(&format!("PRAGMA integrity_check({INTEGRITY_LINES})"))
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        });
    match found {
        Ok(lines) => Ok(lines.into_iter().filter(|l| l != "ok").collect()),
        Err(err) if is_damage(&err) => Ok(vec![err.to_string()]),
        Err(err) => Err(err),
    }
}

/// Every channel with events, and the span of ids to read: from its oldest event to the
/// greater of its head and its newest event (so that a channel whose row in `channels` is lost
/// is still read whole). A list that SQLite reports damaged is as much of it as could be read.
fn channel_spans(conn: &Connection) -> rusqlite::Result<BTreeMap<ChannelName, (u64, u64)>> {
    let mut spans: BTreeMap<ChannelName, (u64, u64)> = BTreeMap::new();
    // Through the channels' index; where that is damaged, through the table itself.
    for from in ["events", "events NOT INDEXED"] {
        let listed = (|| {
            let mut stmt = conn.prepare(&format!(
                "SELECT channel, MIN(id), MAX(id) FROM {from} GROUP BY channel"
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let channel = row.get_ref(0)?.as_str().ok();
                let Some(channel) = channel.and_then(|c| ChannelName::new(c).ok()) else {
                    continue;
                };
                let (first, last): (u64, u64) = (row.get(1)?, row.get(2)?);
                let span = spans.entry(channel).or_insert((first, last));
                *span = (span.0.min(first), span.1.max(last));
            }
            Ok(())
        })();
        match listed {
            Ok(()) => break,
            Err(err) if is_damage(&err) => continue,
            Err(err) => return Err(err),
        }
    }
    for (channel, (_, last)) in &mut spans {
        let head: Option<u64> = conn
            .query_row(
                "SELECT head FROM channels WHERE name = ?1",
                [channel.as_str()],
                |row| row.get(0),
            )
            .optional()
            .unwrap_or(None);
        *last = (*last).max(head.unwrap_or(0));
    }
    Ok(spans)
}

/// Reads `first..=last` of the channel a page at a time, as the server reads, and hands each
/// page's span to `each`.
fn scan(
    conn: &Connection,
    channel: &ChannelName,
    first: u64,
    last: u64,
    mut each: impl FnMut(Span) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut from = first;
    while from <= last {
        let to = last.min(from.saturating_add(SCAN_SPAN - 1));
        let span = read_span(conn, channel, from, to)?;
        let Some(end) = span.end() else { break };
        each(span)?;
        from = end.saturating_add(1);
        if end == u64::MAX {
            break;
        }
    }
    Ok(())
}

/// Moves each damaged row into `damaged_events`, its columns as raw bytes, in one transaction.
fn set_aside_rows(
    conn: &mut Connection,
    damaged: &BTreeMap<String, Vec<(u64, Damage)>>,
) -> rusqlite::Result<Repaired> {
    let at = chrono::Utc::now().timestamp_millis();
    let tx = conn.transaction()?;
    tx.execute_batch(damaged_events_table!())?;
    let mut events = 0;
    for (channel, ids) in damaged {
        for (id, damage) in ids {
            let moved = tx.execute(
                "INSERT OR REPLACE INTO damaged_events (channel, id, time, publisher, event_type, body, \
                 idempotency_key, checksum, reason, set_aside_at) \
                 SELECT ?1, ?2, time, CAST(publisher AS BLOB), CAST(event_type AS BLOB), CAST(body AS BLOB), \
                 CAST(idempotency_key AS BLOB), checksum, ?3, ?4 FROM events WHERE channel = ?1 AND id = ?2",
                params![channel, id, damage.to_string(), at],
            )?;
            if moved == 0 {
                // No row holds it: only its place is recorded.
                record_lost(&tx, channel, *id, *damage, at)?;
            }
            tx.execute(
                "DELETE FROM events WHERE channel = ?1 AND id = ?2",
                params![channel, id],
            )?;
            events += 1;
        }
    }
    tx.commit()?;
    Ok(Repaired::SetAside { events })
}

fn record_lost(
    conn: &Connection,
    channel: &str,
    id: u64,
    damage: Damage,
    at: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO damaged_events (channel, id, reason, set_aside_at) VALUES (?1, ?2, ?3, ?4)",
        params![channel, id, damage.to_string(), at],
    )?;
    Ok(())
}

/// Builds a new file from what `path` holds that can be read, and puts it in its place (see
/// [`check`]).
fn rebuild(dir: &Path, path: &Path) -> Result<Repaired, StoreError> {
    let building = dir.join(format!("{DB_FILE}.rebuilding"));
    for leftover in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{DB_FILE}.rebuilding{leftover}")));
    }
    let fail_old = |err: rusqlite::Error| Failure::open(path, err);
    let fail_new = |err: rusqlite::Error| Failure::open(&building, err);
    let old = open_existing(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut new = Connection::open_with_flags(&building, flags)
        .map_err(|err| Failure::open(&building, err))?;
    prepare_schema(&mut new, &building, Durability::Full)?;
    let tx = new.transaction().map_err(fail_new)?;
    // The migrations' own rows (the state) give way to the old file's.
    tx.execute_batch("DELETE FROM state").map_err(fail_new)?;
    let mut tables = Vec::new();
    for table in PLAIN_TABLES {
        tables.push(copy_table(&old, &tx, table).map_err(fail_new)?);
    }
    // Where the old state is lost, the receipts copied are taken as folded into the devices
    // copied (folding them again would count them twice).
    tx.execute_batch(
        "INSERT OR IGNORE INTO state (key, value) \
         VALUES ('devices_through_receipt', (SELECT COALESCE(MAX(seq), 0) FROM receipts))",
    )
    .map_err(fail_new)?;
    let set_aside_before = load_set_aside(&old).unwrap_or_default();
    let at = chrono::Utc::now().timestamp_millis();
    let mut seen: BTreeMap<ChannelName, Vec<u64>> = BTreeMap::new();
    let mut events_copied = 0;
    let mut events_set_aside = 0;
    scan_table(&old, |channel, read| {
        match read {
            RowRead::Event(event) => {
                insert_event(&tx, &event)?;
                seen.entry(channel).or_default().push(event.id);
                events_copied += 1;
            }
            RowRead::Damaged(Some(id), damage) => {
                set_aside_raw(&old, &tx, &channel, id, damage, at)?;
                seen.entry(channel).or_default().push(id);
                events_set_aside += 1;
            }
            // Its id unreadable: found missing below, with the others.
            RowRead::Damaged(None, _) => {}
        }
        Ok(())
    })
    .map_err(fail_old)?;
    for (channel, mut ids) in seen {
        ids.sort_unstable();
        ids.dedup();
        let (Some(&first), Some(&newest)) = (ids.first(), ids.last()) else {
            continue;
        };
        let head: u64 = tx
            .query_row(
                "SELECT head FROM channels WHERE name = ?1",
                [channel.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(fail_new)?
            .unwrap_or(0);
        let known = set_aside_before.get(&channel);
        // Retained ids run without a hole: every one the rows did not account for was lost.
        let mut present = ids.iter().peekable();
        for id in first..=head.max(newest) {
            if present.next_if_eq(&&id).is_some() || known.is_some_and(|k| k.contains(&id)) {
                continue;
            }
            record_lost(&tx, channel.as_str(), id, Damage::Lost, at).map_err(fail_new)?;
            events_set_aside += 1;
        }
        // A head never goes back, even when the channel's row was lost.
        tx.execute(
            "INSERT INTO channels (name, head) VALUES (?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET head = MAX(head, excluded.head)",
            params![channel.as_str(), newest],
        )
        .map_err(fail_new)?;
    }
    // The age index, from the events copied.
    tx.execute_batch(file_oldest!()).map_err(fail_new)?;
    // Receipt seqs are never given out twice.
    let old_seq: Option<i64> = old
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'receipts'",
            [],
            |row| row.get(0),
        )
        .optional()
        .unwrap_or(None);
    if let Some(seq) = old_seq {
        let raised = tx
            .execute(
                "UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'receipts'",
                [seq],
            )
            .map_err(fail_new)?;
        if raised == 0 {
            tx.execute(
                "INSERT INTO sqlite_sequence (name, seq) VALUES ('receipts', ?1)",
                [seq],
            )
            .map_err(fail_new)?;
        }
    }
    tx.commit().map_err(fail_new)?;
    new.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(fail_new)?;
    drop(new);
    drop(old);

    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let backup = dir.join(format!("{DB_FILE}.damaged-{stamp}"));
    let rename =
        |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|err| Failure::open(from, err));
    rename(path, &backup)?;
    for log in ["-wal", "-shm"] {
        let old_log = dir.join(format!("{DB_FILE}{log}"));
        if old_log.exists() {
            rename(
                &old_log,
                &dir.join(format!("{DB_FILE}.damaged-{stamp}{log}")),
            )?;
        }
    }
    rename(&building, path)?;
    for log in ["-wal", "-shm"] {
        let new_log = dir.join(format!("{DB_FILE}.rebuilding{log}"));
        if new_log.exists() {
            rename(&new_log, &dir.join(format!("{DB_FILE}{log}")))?;
        }
    }
    Ok(Repaired::Rebuilt {
        backup,
        events_copied,
        events_set_aside,
        tables,
    })
}

/// Reads every event row of the table itself, in rowid order (not through the channels' index,
/// which may be what is damaged), and hands each to `each` with its channel. Where SQLite reports
/// a page damaged, the scan jumps over it: to the first rowid past it that can be read, found by
/// doubling steps and then halving back, so that few readable rows are skipped with it.
fn scan_table(
    conn: &Connection,
    mut each: impl FnMut(ChannelName, RowRead) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let last: i64 = conn
        .query_row("SELECT MAX(rowid) FROM events NOT INDEXED", [], |row| {
            row.get::<_, Option<i64>>(0)
        })
        .map(Option::unwrap_or_default)
        .unwrap_or(i64::MAX);
    let first_from = |from: i64| {
        conn.query_row(
            "SELECT rowid FROM events NOT INDEXED WHERE rowid >= ?1 ORDER BY rowid LIMIT 1",
            [from],
            |row| row.get::<_, i64>(0),
        )
        .optional()
    };
    let mut after = 0_i64;
    loop {
        let scanned = (|| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, time, publisher, event_type, body, idempotency_key, checksum, channel, rowid \
                 FROM events NOT INDEXED WHERE rowid > ?1 ORDER BY rowid",
            )?;
            let mut rows = stmt.query([after])?;
            while let Some(row) = rows.next()? {
                after = row.get(8)?;
                if let Some((channel, read)) = event_row_of_any_channel(row)? {
                    each(channel, read)?;
                }
            }
            Ok(())
        })();
        match scanned {
            Ok(()) => return Ok(()),
            Err(err) if is_damage(&err) => {}
            Err(err) => return Err(err),
        }
        // The next row cannot be read whole: skip it, naming it if its place can be read.
        match first_from(after.saturating_add(1)) {
            Ok(Some(rowid)) => {
                let place = conn
                    .query_row(
                        "SELECT channel, id FROM events NOT INDEXED WHERE rowid = ?1",
                        [rowid],
                        |row| Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?)),
                    )
                    .ok();
                if let Some((Ok(channel), id)) =
                    place.map(|(channel, id)| (ChannelName::new(&channel), id))
                {
                    each(channel, RowRead::Damaged(Some(id), Damage::Page))?;
                }
                after = rowid;
                continue;
            }
            Ok(None) => return Ok(()),
            Err(err) if is_damage(&err) => {}
            Err(err) => return Err(err),
        }
        // Not even its rowid: a damaged page. The nearest readable rowid past it, if any.
        let mut step = 2_i64;
        let found = loop {
            let probe = after.saturating_add(step);
            if probe > last {
                break None;
            }
            match first_from(probe) {
                Ok(found) => break Some((probe, found)),
                Err(err) if is_damage(&err) => step = step.saturating_mul(2),
                Err(err) => return Err(err),
            }
        };
        let Some((mut good, mut found)) = found else {
            return Ok(());
        };
        // Back towards the damage while rows there can still be read.
        let mut bad = good - step / 2;
        while good - bad > 1 {
            let middle = bad + (good - bad) / 2;
            match first_from(middle) {
                Ok(at) => {
                    good = middle;
                    found = at;
                }
                Err(err) if is_damage(&err) => bad = middle,
                Err(err) => return Err(err),
            }
        }
        match found {
            Some(rowid) => after = rowid - 1,
            None => return Ok(()),
        }
    }
}

/// Copies the rows of `table` that can be read, in its own order; stops at the first row that
/// cannot be (the rows after it are behind a damaged page). Returns the table's name, the rows
/// copied, and why the copy stopped early.
fn copy_table(
    old: &Connection,
    new: &Connection,
    table: &str,
) -> rusqlite::Result<(String, u64, Option<String>)> {
    let columns_of = |conn: &Connection| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        let names = stmt.query_map([], |row| row.get(0))?;
        names.collect()
    };
    // The columns both files have: an old file's schema may lack the newest (filled after).
    let in_old = columns_of(old).unwrap_or_default();
    let columns: Vec<String> = columns_of(new)?
        .into_iter()
        .filter(|column| in_old.is_empty() || in_old.contains(column))
        .collect();
    let list = columns.join(", ");
    let marks = vec!["?"; columns.len()].join(", ");
    let mut insert = new.prepare(&format!(
        "INSERT OR REPLACE INTO {table} ({list}) VALUES ({marks})"
    ))?;
    let mut copied = 0;
    let read = (|| {
        let mut stmt = old.prepare(&format!("SELECT {list} FROM {table}"))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let values: Vec<rusqlite::types::Value> = (0..columns.len())
                .map(|i| row.get(i))
                .collect::<rusqlite::Result<_>>()?;
            insert.execute(rusqlite::params_from_iter(values))?;
            copied += 1;
        }
        Ok::<_, rusqlite::Error>(())
    })();
    let stopped = match read {
        Ok(()) => None,
        // A table the old file does not have (`damaged_events` before any repair) has no rows.
        Err(rusqlite::Error::SqliteFailure(_, Some(message)))
            if message.starts_with("no such table") =>
        {
            None
        }
        Err(err) => Some(err.to_string()),
    };
    Ok((table.to_owned(), copied, stopped))
}

fn insert_event(conn: &Connection, event: &Arc<Event>) -> rusqlite::Result<()> {
    let time = event.time.timestamp_millis();
    let publisher = event.publisher.as_ref().map(|p| p.as_str());
    let event_type = event.event_type.as_ref().map(|t| t.as_str());
    let checksum = RowFields {
        channel: event.channel.as_str().as_bytes(),
        id: event.id,
        time,
        event_type: event_type.map(str::as_bytes),
        publisher: publisher.map(str::as_bytes),
        idempotency_key: event.idempotency_key.as_deref().map(str::as_bytes),
        body: event.body.as_bytes(),
    }
    .checksum();
    conn.prepare_cached(
        "INSERT OR REPLACE INTO events (channel, id, time, publisher, event_type, body, idempotency_key, checksum) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        event.channel.as_str(),
        event.id,
        time,
        publisher,
        event_type,
        event.body,
        event.idempotency_key,
        checksum,
    ])?;
    Ok(())
}

/// Records a damaged event of the old file in the new file's `damaged_events`, with what can be
/// read of its row.
fn set_aside_raw(
    old: &Connection,
    new: &Connection,
    channel: &ChannelName,
    id: u64,
    damage: Damage,
    at: i64,
) -> rusqlite::Result<()> {
    type Raw = rusqlite::types::Value;
    let raw: Option<[Raw; 6]> = old
        .query_row(
            "SELECT time, CAST(publisher AS BLOB), CAST(event_type AS BLOB), CAST(body AS BLOB), \
             CAST(idempotency_key AS BLOB), checksum FROM events WHERE channel = ?1 AND id = ?2",
            params![channel.as_str(), id],
            |row| {
                Ok([
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ])
            },
        )
        .optional()
        .unwrap_or(None);
    let Some(raw) = raw else {
        return record_lost(new, channel.as_str(), id, damage, at);
    };
    let [time, publisher, event_type, body, key, checksum] = raw;
    new.execute(
        "INSERT OR REPLACE INTO damaged_events (channel, id, time, publisher, event_type, body, \
         idempotency_key, checksum, reason, set_aside_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            channel.as_str(),
            id,
            time,
            publisher,
            event_type,
            body,
            key,
            checksum,
            damage.to_string(),
            at
        ],
    )?;
    Ok(())
}
