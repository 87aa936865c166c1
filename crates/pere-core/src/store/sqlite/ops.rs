//! The writes, each run by the writer inside a batch's transaction: appends of one event or a
//! batch (with their idempotency keys), receipts, device touches, recipient memberships, and
//! what every batch does before its commit ([`finish_batch`]).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pere_proto::event::{now, Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{DeviceRecord, DeviceTouch, Membership, Receipt};
use rusqlite::{params, CachedStatement, Connection, OptionalExtension};

use super::books::{key_hash, EventKeys};
use super::checksum::RowFields;
use super::prune::{age_cutoff, prune_channel, PRUNE_CHUNK};
use super::rows::{
    membership_from_row, query_events, query_receipts, receipt_touch, select_event,
    select_membership,
};
use super::shared::Drafts;
use crate::error::StoreError;
use crate::store::{
    plan_batch, plan_receipts, record_planned, Appended, Plan, ReceiptBatch, ReceiptPlan,
    RecordedLine, RecordedReceipt, Retention,
};

/// How a transaction looks idempotency keys up: in the keys held in memory (locked while it
/// looks), and in the rows when they name an event, after inserting the transaction's held
/// events (see [`write_events`]).
struct KeyLookup<'l, 'd> {
    conn: &'l Connection,
    drafts: &'l mut Drafts<'d>,
    keys: std::sync::MutexGuard<'d, EventKeys>,
    /// The write's time, for whether a key is still remembered.
    at: DateTime<Utc>,
}

impl<'l, 'd> KeyLookup<'l, 'd> {
    fn new(conn: &'l Connection, drafts: &'l mut Drafts<'d>, at: DateTime<Utc>) -> Self {
        let shared = drafts.shared;
        KeyLookup {
            conn,
            keys: shared.event_keys(),
            drafts,
            at,
        }
    }

    /// The retained event of `channel` that `publisher` published under `key`, if the key is
    /// still remembered (keys are per publisher: another's event under the same key is not
    /// found). Run by the writer, which sees its transaction's own inserts: a key sent twice in
    /// one batch is stored once too. A key past the window is cleared from its event, so it can
    /// be given again. An event that holds the key but is damaged (it fails its checksum, or
    /// does not decode) holds it no more: the retry is stored as a new event, which brings back
    /// what was lost. Most keys are new, and the keys in memory say so without a read: only a
    /// key found there, or a channel whose keys are not held yet, costs a read (and the insert
    /// of the transaction's events before it).
    fn event(
        &mut self,
        channel: &ChannelName,
        publisher: Option<&DeviceId>,
        key: &str,
    ) -> rusqlite::Result<Option<Arc<Event>>> {
        let conn = self.conn;
        let publisher_name = publisher.map(DeviceId::as_str);
        let hash = key_hash(publisher_name.map(str::as_bytes), key.as_bytes());
        if !self.keys.holds(channel) {
            write_events(conn, self.drafts)?;
        }
        let Some(&id) = self.keys.channel(conn, channel)?.get(&hash) else {
            return Ok(None);
        };
        write_events(conn, self.drafts)?;
        let stored = query_events(
            conn,
            channel,
            select_event!("WHERE channel = ?1 AND id = ?2"),
            params![channel.as_str(), id],
        )?;
        let event = match stored.events.into_iter().next() {
            Some(event)
                if event.idempotency_key.as_deref() == Some(key)
                    && event.publisher.as_ref() == publisher =>
            {
                event
            }
            // Pruned since, or damaged.
            None => {
                self.keys.forget(channel, hash, id);
                return Ok(None);
            }
            // Another key and publisher with the same hash hold the entry (about one chance in
            // 2^64 per pair), or the key was cleared: the channel's rows say.
            Some(_) => {
                let by_key = select_event!(
                    "WHERE channel = ?1 AND idempotency_key = ?2 AND publisher IS ?3"
                );
                let found = query_events(
                    conn,
                    channel,
                    by_key,
                    params![channel.as_str(), key, publisher_name],
                )?;
                match found.events.into_iter().next() {
                    Some(event) => event,
                    None => return Ok(None),
                }
            }
        };
        if self
            .drafts
            .shared
            .options
            .retention
            .key_alive(event.time, self.at)
        {
            return Ok(Some(event));
        }
        conn.prepare_cached(
            "UPDATE events SET idempotency_key = NULL WHERE channel = ?1 AND id = ?2",
        )?
        .execute(params![channel.as_str(), event.id])?;
        self.keys.forget(channel, hash, event.id);
        Ok(None)
    }
}

pub(super) fn append(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: ChannelName,
    new: NewEvent,
) -> rusqlite::Result<Appended> {
    let at = now();
    if let Some(key) = &new.idempotency_key {
        let mut lookup = KeyLookup::new(conn, drafts, at);
        if let Some(event) = lookup.event(&channel, new.publisher.as_ref(), key)? {
            return Ok(Appended { event, new: false });
        }
    }
    insert_event(conn, drafts, channel, new, at)
}

pub(super) fn append_batch(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: ChannelName,
    events: Vec<NewEvent>,
) -> rusqlite::Result<Result<Vec<Appended>, StoreError>> {
    let at = now();
    // Every key is looked up before the first insert, so a refused batch inserts nothing. Only
    // a failure of SQLite itself can stop it midway, and that rolls back the whole transaction.
    let mut failed = None;
    let plans = {
        let mut lookup = KeyLookup::new(conn, drafts, at);
        plan_batch(&events, |publisher, key| {
            lookup
                .event(&channel, publisher, key)
                .unwrap_or_else(|err| {
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
    for (new, plan) in events.into_iter().zip(plans) {
        let answer = match plan {
            Plan::New => insert_event(conn, drafts, channel.clone(), new, at)?,
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

/// Inserts the events of the transaction not inserted yet, a few statements for any number
/// (see [`insert_rows`]). Run before the transaction reads or deletes events, and before it
/// commits.
pub(super) fn write_events(conn: &Connection, drafts: &mut Drafts<'_>) -> rusqlite::Result<()> {
    if drafts.unwritten_events.is_empty() {
        return Ok(());
    }
    let rows = std::mem::take(&mut drafts.unwritten_events);
    insert_rows(
        conn,
        &INSERT_EVENT_ROWS,
        &rows,
        |statement, at, (event, checksum)| {
            statement.raw_bind_parameter(at + 1, event.channel.as_str())?;
            statement.raw_bind_parameter(at + 2, event.id)?;
            statement.raw_bind_parameter(at + 3, event.time.timestamp_millis())?;
            statement.raw_bind_parameter(at + 4, event.publisher.as_ref().map(DeviceId::as_str))?;
            statement.raw_bind_parameter(at + 5, event.event_type.as_ref().map(|t| t.as_str()))?;
            statement.raw_bind_parameter(at + 6, &*event.body)?;
            statement.raw_bind_parameter(at + 7, event.idempotency_key.as_deref())?;
            statement.raw_bind_parameter(at + 8, *checksum)
        },
    )
}

/// Takes the channel's head up to the store's floor when it is below: the ids between are lost
/// (recorded), and what the channel retained from before goes, so that its retained ids run
/// without a hole from the floor on. Nothing happens at or above the floor.
pub(super) fn pass_floor(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: &ChannelName,
    floor: u64,
) -> rusqlite::Result<()> {
    if drafts.entry(conn, channel)?.head >= floor {
        return Ok(());
    }
    write_events(conn, drafts)?;
    let draft = drafts.entry(conn, channel)?;
    conn.prepare_cached("DELETE FROM events WHERE channel = ?1")?
        .execute([channel.as_str()])?;
    conn.prepare_cached("INSERT INTO lost (channel, first, last) VALUES (?1, ?2, ?3)")?
        .execute(params![channel.as_str(), draft.head + 1, floor])?;
    draft.lost = Some(draft.head + 1..=floor);
    draft.head = floor;
    draft.first = floor + 1;
    Ok(())
}

/// Appends a new event to its channel's draft; its row is inserted with the transaction's other
/// events (see [`write_events`]).
fn insert_event(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: ChannelName,
    new: NewEvent,
    at: DateTime<Utc>,
) -> rusqlite::Result<Appended> {
    let shared = drafts.shared;
    let floor = shared.floor.load(std::sync::atomic::Ordering::Relaxed);
    if drafts.entry(conn, &channel)?.head < floor {
        pass_floor(conn, drafts, &channel, floor)?;
    }
    let draft = drafts.entry(conn, &channel)?;
    let id = draft.head + 1;
    let event = Arc::new(Event::new(channel, id, at, new));
    let time = event.time.timestamp_millis();
    let publisher = event.publisher.as_ref().map(|p| p.as_str());
    let event_type = event.event_type.as_ref().map(|t| t.as_str());
    let checksum = RowFields {
        channel: event.channel.as_str().as_bytes(),
        id,
        time,
        event_type: event_type.map(str::as_bytes),
        publisher: publisher.map(str::as_bytes),
        idempotency_key: event.idempotency_key.as_deref().map(str::as_bytes),
        body: event.body.as_bytes(),
    }
    .checksum();
    if let Some(key) = &event.idempotency_key {
        let hash = key_hash(publisher.map(str::as_bytes), key.as_bytes());
        shared
            .event_keys()
            .noted(&event.channel, hash, id, draft.first);
    }
    draft.head = id;
    draft.appended.push(event.clone());
    drafts.unwritten_events.push((event.clone(), checksum));
    Ok(Appended { event, new: true })
}

/// The greatest id a receipt on `channel` may name: its head, or the floor above it (an id
/// under the floor was given out before the store changed: as good as pruned). `None` for a
/// channel that does not exist while `id` is above the floor.
fn receipt_bound(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: &ChannelName,
    id: u64,
) -> rusqlite::Result<Option<u64>> {
    let floor = drafts
        .shared
        .floor
        .load(std::sync::atomic::Ordering::Relaxed);
    let head = match drafts.existing(conn, channel)? {
        Some(draft) => draft.head,
        None if id <= floor => drafts.entry(conn, channel)?.head,
        None => return Ok(None),
    };
    Ok(Some(head.max(floor)))
}

/// The receipt of `device` on `channel` held under `key`, if the key is still remembered at
/// `at` (keys are per device: another device's receipt under the key is not found). A key past
/// the window is cleared from its receipt, so it can be given again.
fn held_receipt(
    conn: &Connection,
    drafts: &Drafts<'_>,
    channel: &ChannelName,
    device: &DeviceId,
    key: &str,
    at: DateTime<Utc>,
) -> rusqlite::Result<Option<Receipt>> {
    let held = query_receipts(
        conn,
        channel,
        "SELECT seq, event_id, device, status, time FROM receipts \
             WHERE channel = ?1 AND device = ?2 AND idempotency_key = ?3",
        params![channel.as_str(), device.as_str(), key],
    )?;
    let Some(stored) = held.into_iter().next() else {
        return Ok(None);
    };
    if drafts.shared.options.retention.key_alive(stored.time, at) {
        return Ok(Some(stored));
    }
    // Past the window: forgotten, so the key can be given again.
    conn.prepare_cached("UPDATE receipts SET idempotency_key = NULL WHERE seq = ?1")?
        .execute([stored.seq])?;
    Ok(None)
}

/// Whether `device` has a receipt kept for event `id` of `channel`.
fn acknowledged(
    conn: &Connection,
    channel: &ChannelName,
    id: u64,
    device: &DeviceId,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM receipts WHERE channel = ?1 AND event_id = ?2 AND device = ?3 LIMIT 1",
    )?
    .query_row(params![channel.as_str(), id, device.as_str()], |_| Ok(()))
    .optional()
    .map(|found| found.is_some())
}

/// Records a receipt that passed every check, and applies it to its device's record. Stored
/// even for an event already pruned, so the receipt stream carries it; the channel's next
/// pruning of events removes it with the other receipts of pruned events. Its row is inserted
/// with the transaction's other receipts (see [`write_receipts`]).
fn insert_receipt(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    mut receipt: Receipt,
    key: Option<String>,
) -> rusqlite::Result<(Receipt, DeviceRecord)> {
    // Applied by the writer alone, in seq order: no concurrent update is lost. Written back to
    // `devices` later, with the other changed records.
    let record = drafts.queue_receipt(conn, &mut receipt, key)?;
    record.apply_receipt(&receipt);
    let record = record.clone();
    Ok((receipt, record))
}

/// Inserts the receipts of the transaction not inserted yet: a few statements for any number
/// (see [`insert_receipt_rows`]), rather than one a receipt. Run before the transaction reads
/// the receipts of a device that has some of them, and before it commits.
pub(super) fn write_receipts(conn: &Connection, drafts: &mut Drafts<'_>) -> rusqlite::Result<()> {
    if drafts.unwritten.is_empty() {
        return Ok(());
    }
    insert_receipt_rows(conn, &drafts.take_unwritten())
}

pub(super) fn record_receipt(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    receipt: Receipt,
    key: Option<String>,
) -> rusqlite::Result<Result<RecordedReceipt, StoreError>> {
    let id = receipt.event_id;
    match receipt_bound(conn, drafts, &receipt.channel, id)? {
        Some(known) if id > 0 && id <= known => {}
        _ => return Ok(Err(StoreError::UnknownEvent { id })),
    }
    if let Some(key) = &key {
        let (channel, device) = (&receipt.channel, &receipt.device);
        if drafts.has_unwritten(channel, device) {
            write_receipts(conn, drafts)?;
        }
        if let Some(stored) = held_receipt(conn, drafts, channel, device, key, receipt.time)? {
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
    }
    let (receipt, record) = insert_receipt(conn, drafts, receipt, key)?;
    Ok(Ok(RecordedReceipt {
        receipt,
        record,
        new: true,
    }))
}

/// Records a batch of receipts (see [`Store::record_receipts`](crate::store::Store)): every
/// line is planned (ids, keys, what the device acknowledged) before the first insert, so a
/// refused batch records nothing; only a failure of SQLite itself can stop it midway, and that
/// rolls back the whole transaction.
pub(super) fn record_receipts(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    batch: ReceiptBatch,
) -> rusqlite::Result<Result<Vec<RecordedLine>, StoreError>> {
    let floor = drafts
        .shared
        .floor
        .load(std::sync::atomic::Ordering::Relaxed);
    let known = match drafts.existing(conn, &batch.channel)? {
        Some(draft) => draft.head.max(floor),
        None => {
            // A channel that does not exist has only ids under the floor (given out before the
            // store changed: as good as pruned), and it is made for them; any other id was
            // never published.
            let unknown = batch
                .lines
                .iter()
                .find(|l| l.event_id == 0 || l.event_id > floor);
            if let Some(line) = unknown {
                return Ok(Err(StoreError::UnknownEvent { id: line.event_id }));
            }
            if batch.lines.is_empty() {
                return Ok(Ok(Vec::new()));
            }
            drafts.entry(conn, &batch.channel)?.head.max(floor)
        }
    };
    // The lookups below read the device's receipts: its own still waiting in this transaction
    // are inserted first.
    let reads = batch.unacknowledged_only || batch.lines.iter().any(|l| l.key.is_some());
    if reads && drafts.has_unwritten(&batch.channel, &batch.device) {
        write_receipts(conn, drafts)?;
    }
    // A device that acknowledges as it goes (what a cumulative receipt nearly always finds)
    // has no receipt above the greatest id its record holds: no lookup for those ids.
    let acked_through = if batch.unacknowledged_only {
        drafts.acked_through(conn, &batch.channel, &batch.device)?
    } else {
        None
    };
    // SQLite's own failures met while planning, which fail the whole transaction.
    let (mut failed_key, mut failed_ack) = (None, None);
    let plans = {
        let drafts = &*drafts;
        plan_receipts(
            &batch,
            known,
            |key| {
                held_receipt(conn, drafts, &batch.channel, &batch.device, key, batch.time)
                    .unwrap_or_else(|err| {
                        failed_key.get_or_insert(err);
                        None
                    })
            },
            |id| {
                if acked_through.is_some_and(|through| id > through) {
                    return false;
                }
                acknowledged(conn, &batch.channel, id, &batch.device).unwrap_or_else(|err| {
                    failed_ack.get_or_insert(err);
                    false
                })
            },
        )
    };
    if let Some(err) = failed_key.or(failed_ack) {
        return Err(err);
    }
    let plans = match plans {
        Ok(plans) => plans,
        Err(refused) => return Ok(Err(refused)),
    };
    let new = plans
        .iter()
        .filter(|plan| matches!(plan, ReceiptPlan::New))
        .count();
    // Their seqs given now, their rows held for the transaction's insert (see `write_receipts`).
    let mut rows = Vec::with_capacity(new);
    let recorded = record_planned(batch, plans, |mut receipt, key| {
        receipt.seq = drafts.next_receipt_seq();
        rows.push((receipt.clone(), key));
        Ok::<_, rusqlite::Error>(receipt)
    })?;
    drafts.queue_batch(conn, rows)?;
    Ok(Ok(recorded))
}

/// Rows per statement when a transaction's receipts or events are inserted: they are cut into
/// these sizes, largest first, so that a handful of statements (kept prepared) insert any number
/// of rows. A statement per row cost SQLite ~16,000 instructions, most of it the statement's own
/// work (its cursors, the AUTOINCREMENT counter read and written, its end), not the row's.
const ROWS_PER_STATEMENT: [usize; 6] = [32, 16, 8, 4, 2, 1];

/// The inserts into one table of each size of [`ROWS_PER_STATEMENT`], in its order, and the
/// columns of a row: written once, not for each transaction (the statement cache is looked up
/// by the text).
struct Inserts {
    sql: [String; 6],
    columns: usize,
}

impl Inserts {
    fn of(table: &str, columns: &str) -> Inserts {
        let columns_count = columns.split(',').count();
        let row = format!("({})", vec!["?"; columns_count].join(", "));
        let sql = ROWS_PER_STATEMENT.map(|size| {
            let values = vec![row.as_str(); size].join(", ");
            format!("INSERT OR FAIL INTO {table} ({columns}) VALUES {values}")
        });
        Inserts {
            sql,
            columns: columns_count,
        }
    }
}

static INSERT_RECEIPT_ROWS: std::sync::LazyLock<Inserts> = std::sync::LazyLock::new(|| {
    Inserts::of(
        "receipts",
        "seq, channel, event_id, device, status, time, idempotency_key",
    )
});

static INSERT_EVENT_ROWS: std::sync::LazyLock<Inserts> = std::sync::LazyLock::new(|| {
    Inserts::of(
        "events",
        "channel, id, time, publisher, event_type, body, idempotency_key, checksum",
    )
});

/// Inserts `rows` by the statements of `inserts`, `bind` binding a row's values from the
/// parameter after the given index.
fn insert_rows<T>(
    conn: &Connection,
    inserts: &Inserts,
    rows: &[T],
    bind: impl Fn(&mut CachedStatement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut rest = rows;
    while !rest.is_empty() {
        let (sized, size) = ROWS_PER_STATEMENT
            .into_iter()
            .enumerate()
            .find(|&(_, size)| size <= rest.len())
            .unwrap_or((ROWS_PER_STATEMENT.len() - 1, 1));
        let (chunk, after) = rest.split_at(size);
        let mut statement = conn.prepare_cached(&inserts.sql[sized])?;
        for (i, row) in chunk.iter().enumerate() {
            bind(&mut statement, i * inserts.columns, row)?;
        }
        statement.raw_execute()?;
        rest = after;
    }
    Ok(())
}

/// Inserts receipts whose seqs are given (ascending), with their keys.
fn insert_receipt_rows(
    conn: &Connection,
    rows: &[(Receipt, Option<String>)],
) -> rusqlite::Result<()> {
    insert_rows(
        conn,
        &INSERT_RECEIPT_ROWS,
        rows,
        |statement, at, (receipt, key)| {
            statement.raw_bind_parameter(at + 1, receipt.seq)?;
            statement.raw_bind_parameter(at + 2, receipt.channel.as_str())?;
            statement.raw_bind_parameter(at + 3, receipt.event_id)?;
            statement.raw_bind_parameter(at + 4, receipt.device.as_str())?;
            statement.raw_bind_parameter(at + 5, &*receipt.status)?;
            statement.raw_bind_parameter(at + 6, receipt.time.timestamp_millis())?;
            statement.raw_bind_parameter(at + 7, key.as_deref())
        },
    )
}

pub(super) fn touch_device(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    touch: DeviceTouch,
) -> rusqlite::Result<DeviceRecord> {
    // A device makes its channel known (`channels` lists channels with events or devices).
    drafts.entry(conn, &touch.channel)?;
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

pub(super) fn add_recipient(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: ChannelName,
    device: DeviceId,
    at: DateTime<Utc>,
) -> rusqlite::Result<Membership> {
    // Serialized with appends by the writer: `joined_after` is exactly the head before the
    // first event the device is expected to acknowledge.
    let head = drafts.entry(conn, &channel)?.head;
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

pub(super) fn remove_recipient(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    channel: &ChannelName,
    device: &DeviceId,
) -> rusqlite::Result<Option<Membership>> {
    let Some(head) = drafts.existing(conn, channel)?.map(|draft| draft.head) else {
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

/// Before a batch commits: file the channels that now retain events in the age index, prune
/// the channels it appended to (so a read after `append` already sees the retention applied)
/// and save the heads and age index times that moved.
pub(super) fn finish_batch(
    conn: &Connection,
    drafts: &mut Drafts<'_>,
    retention: &Retention,
    started: DateTime<Utc>,
    backlog: &mut Vec<ChannelName>,
) -> rusqlite::Result<()> {
    // From the batch's start: an event appended in this batch is never already too old.
    let cutoff = age_cutoff(retention, started);
    write_events(conn, drafts)?;
    write_receipts(conn, drafts)?;
    for (name, draft) in &mut drafts.channels {
        if let (None, Some(oldest)) = (draft.age_key, draft.appended.first()) {
            // Filed even without age retention, so that turning it on finds every channel.
            draft.age_key = Some(oldest.time.timestamp_millis());
        }
        if !draft.appended.is_empty() {
            let (_, more) = prune_channel(conn, name, draft, retention, cutoff, PRUNE_CHUNK)?;
            if more {
                backlog.push(name.clone());
            }
        }
        if draft.saved_head.is_some() && draft.saved_age_key == draft.age_key {
            // The head alone (most appends): `oldest` left out of the statement, so that its
            // index is not rewritten, a page more per commit.
            if draft.saved_head != Some(draft.head) {
                conn.prepare_cached("UPDATE channels SET head = ?2 WHERE name = ?1")?
                    .execute(params![name.as_str(), draft.head])?;
            }
        } else if draft.saved_head != Some(draft.head) || draft.saved_age_key != draft.age_key {
            conn.prepare_cached(
                "INSERT INTO channels (name, head, oldest) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET head = excluded.head, oldest = excluded.oldest",
            )?
            .execute(params![name.as_str(), draft.head, draft.age_key])?;
        }
    }
    Ok(())
}
