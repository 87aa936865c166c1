//! Rows to values and back: the `SELECT`s of event, device and membership rows (the
//! `select_*` macros), what rebuilds a value from its row ([`event_from_row`], which checks an
//! event row's checksum and refuses one that fails it or does not decode, naming its
//! [`Damage`]; [`device_from_row`], [`membership_from_row`]), the queries and page reads built
//! on them ([`read_span`], which still serves the readable rows of a span that SQLite reports
//! damaged), and device rows loaded and saved.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pere_proto::error::NameError;
use pere_proto::event::{Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId, EventType};
use pere_proto::receipt::{DeviceOp, DeviceRecord, DeviceTouch, Membership, Receipt};
use rusqlite::types::{Type, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::checksum::RowFields;
use super::failure::is_damage;
use crate::store::EventPage;

/// `SELECT` of a device row, in the column order [`device_from_row`] reads, followed by `rest`.
macro_rules! select_device {
    ($rest:literal) => {
        concat!(
            "SELECT device, first_seen, last_seen, last_op, last_event_id, last_delivered, last_acked, receipts ",
            "FROM devices ",
            $rest
        )
    };
}
pub(super) use select_device;

/// `SELECT` of an event row, in the column order [`event_from_row`] reads, followed by `rest`.
macro_rules! select_event {
    ($rest:literal) => {
        concat!(
            "SELECT id, time, publisher, event_type, body, idempotency_key, checksum FROM events ",
            $rest
        )
    };
}
pub(super) use select_event;

/// `SELECT` of a membership row, in the column order [`membership_from_row`] reads, followed by `rest`.
macro_rules! select_membership {
    ($rest:literal) => {
        concat!(
            "SELECT seq, device, joined_after, left_after, since FROM memberships ",
            $rest
        )
    };
}
pub(super) use select_membership;

/// The `state` key of the last receipt (by seq) whose effect on its device record is on disk.
pub(super) const DEVICES_THROUGH_RECEIPT: &str = "devices_through_receipt";

/// SQLite's `LIMIT` for a `usize` (a negative limit would mean "no limit", which is what a huge
/// one means anyway).
pub(super) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// SQLite's `LIMIT` for a count of ids.
fn sql_limit_u64(limit: u64) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(super) fn time_from_ms(ms: i64, column: usize) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or(rusqlite::Error::IntegralValueOutOfRange(column, ms))
}

pub(super) fn parse_name<T>(
    value: &str,
    column: usize,
    parse: fn(&str) -> Result<T, NameError>,
) -> rusqlite::Result<T> {
    parse(value)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(err)))
}

/// Why a stored event cannot be served. Such an event is never sent: readers name its id
/// instead (a feed says `pere-gap` for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The row's bytes are not those its checksum was computed over.
    Checksum,
    /// The row has no checksum (one that already did not decode when the v7 upgrade gave the
    /// others theirs).
    NoChecksum,
    /// A column does not decode: invalid UTF-8, a name that is not valid, a NULL or a value of
    /// another type where the row must hold something else.
    Column(&'static str),
    /// SQLite reports the page holding the row damaged (`SQLITE_CORRUPT`).
    Page,
    /// No row holds the id, though the channel's retained ids run through it.
    Lost,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Checksum => f.write_str("checksum mismatch"),
            Damage::NoChecksum => f.write_str("no checksum"),
            Damage::Column(column) => write!(f, "its {column} does not decode"),
            Damage::Page => f.write_str("SQLite reports its page damaged"),
            Damage::Lost => f.write_str("no row holds it"),
        }
    }
}

/// An event row as read: the event it holds, or why it cannot be served (with its id, when
/// that much could be read).
pub(super) enum RowRead {
    Event(Arc<Event>),
    Damaged(Option<u64>, Damage),
}

/// Rebuilds a stored event (and so its SSE frame) from
/// `id, time, publisher, event_type, body, idempotency_key, checksum`, once the row's checksum
/// says its bytes are the ones written. SQLite's error is the outer one; a row that cannot be
/// served is [`RowRead::Damaged`].
///
/// The channel hashed is the one asked for, not read from the row: a row of another channel
/// (an index entry leading astray) fails its checksum like a row whose bytes changed, and a row
/// whose channel column alone changed is still the event it was.
fn event_from_row(channel: &ChannelName, row: &Row<'_>) -> rusqlite::Result<RowRead> {
    let mut values = [ValueRef::Null; 7];
    for (i, value) in values.iter_mut().enumerate() {
        *value = row.get_ref(i)?;
    }
    Ok(match verified_event(channel, &values) {
        Ok(event) => RowRead::Event(event),
        Err((id, damage)) => RowRead::Damaged(id, damage),
    })
}

/// An event row of whichever channel it names (a `channel` column selected after the others),
/// read as [`event_from_row`] reads it; `None` when not even its channel can be read. For
/// whole-table scans.
pub(super) fn event_row_of_any_channel(
    row: &Row<'_>,
) -> rusqlite::Result<Option<(ChannelName, RowRead)>> {
    let channel = match row.get_ref(7)? {
        ValueRef::Text(name) => std::str::from_utf8(name)
            .ok()
            .and_then(|name| ChannelName::new(name).ok()),
        _ => None,
    };
    let Some(channel) = channel else {
        return Ok(None);
    };
    let read = event_from_row(&channel, row)?;
    Ok(Some((channel, read)))
}

/// The event the row's values hold, if their checksum matches and they decode.
fn verified_event(
    channel: &ChannelName,
    values: &[ValueRef<'_>; 7],
) -> Result<Arc<Event>, (Option<u64>, Damage)> {
    let id = match values[0] {
        ValueRef::Integer(id) => u64::try_from(id).ok(),
        _ => None,
    };
    let id = id.ok_or((None, Damage::Column("id")))?;
    let fail = |damage| (Some(id), damage);
    let ValueRef::Integer(time) = values[1] else {
        return Err(fail(Damage::Column("time")));
    };
    let text = |i: usize, name| match values[i] {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) => Ok(Some(bytes)),
        _ => Err(fail(Damage::Column(name))),
    };
    let publisher = text(2, "publisher")?;
    let event_type = text(3, "event type")?;
    let body = text(4, "body")?.ok_or(fail(Damage::Column("body")))?;
    let idempotency_key = text(5, "idempotency key")?;
    let stored = match values[6] {
        ValueRef::Integer(sum) => sum,
        ValueRef::Null => return Err(fail(Damage::NoChecksum)),
        _ => return Err(fail(Damage::Column("checksum"))),
    };
    let fields = RowFields {
        channel: channel.as_str().as_bytes(),
        id,
        time,
        event_type,
        publisher,
        idempotency_key,
        body,
    };
    if fields.checksum() != stored {
        return Err(fail(Damage::Checksum));
    }
    let utf8 = |bytes, name| std::str::from_utf8(bytes).map_err(|_| fail(Damage::Column(name)));
    let publisher = publisher
        .map(|p| {
            utf8(p, "publisher")
                .and_then(|p| DeviceId::new(p).map_err(|_| fail(Damage::Column("publisher"))))
        })
        .transpose()?;
    let event_type = event_type
        .map(|t| {
            utf8(t, "event type")
                .and_then(|t| EventType::new(t).map_err(|_| fail(Damage::Column("event type"))))
        })
        .transpose()?;
    let body = utf8(body, "body")?.to_owned();
    let idempotency_key = idempotency_key
        .map(|k| utf8(k, "idempotency key").map(str::to_owned))
        .transpose()?;
    let time = DateTime::from_timestamp_millis(time).ok_or(fail(Damage::Column("time")))?;
    Ok(Arc::new(Event::new(
        channel.clone(),
        id,
        time,
        NewEvent {
            publisher,
            event_type,
            body,
            idempotency_key,
        },
    )))
}

/// What a query of event rows found: the events it may serve, in the query's order, and the
/// rows it may not (by id, when the id could be read).
#[derive(Debug, Default)]
pub(super) struct Found {
    pub(super) events: Vec<Arc<Event>>,
    pub(super) damaged: Vec<(Option<u64>, Damage)>,
}

pub(super) fn query_events(
    conn: &Connection,
    channel: &ChannelName,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Found> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut found = Found::default();
    while let Some(row) = rows.next()? {
        match event_from_row(channel, row)? {
            RowRead::Event(event) => found.events.push(event),
            RowRead::Damaged(id, damage) => found.damaged.push((id, damage)),
        }
    }
    Ok(found)
}

/// Ids read one at a time at most, when SQLite reports a span's pages damaged: the largest page
/// any reader asks for (`GET /events` pages of 1,000), so the slow path of one damaged page
/// never reads a whole channel.
pub(super) const POINT_READS: u64 = 1000;

/// A span of a channel's retained ids read: the events that may be served, oldest first, and
/// every other id of the span, in order, with why it may not. Together they cover the span
/// from its first id through [`Span::end`] without a hole.
#[derive(Debug, Default)]
pub(super) struct Span {
    pub(super) events: Vec<Arc<Event>>,
    pub(super) damaged: Vec<(u64, Damage)>,
}

impl Span {
    /// Fills the ids of `from..=to` that `found` does not serve with its damage, or as lost.
    fn cover(from: u64, to: u64, found: Found) -> Span {
        // As nearly always: every id there, once, in order.
        let whole = found.damaged.is_empty()
            && found.events.len() as u64 == to - from + 1
            && found.events.first().is_some_and(|e| e.id == from)
            && found.events.last().is_some_and(|e| e.id == to);
        if whole {
            return Span {
                events: found.events,
                damaged: Vec::new(),
            };
        }
        let mut events: Vec<Arc<Event>> = found
            .events
            .into_iter()
            .filter(|e| (from..=to).contains(&e.id))
            .collect();
        events.dedup_by_key(|e| e.id);
        let mut told: Vec<(u64, Damage)> = found
            .damaged
            .into_iter()
            .filter_map(|(id, damage)| Some((id?, damage)))
            .collect();
        told.sort_by_key(|(id, _)| *id);
        let mut damaged = Vec::new();
        let mut served = events.iter().map(|e| e.id).peekable();
        let mut told = told.into_iter().peekable();
        for id in from..=to {
            while served.next_if(|&s| s < id).is_some() {}
            if served.next_if_eq(&id).is_some() {
                continue;
            }
            while told.next_if(|(t, _)| *t < id).is_some() {}
            let damage = told
                .next_if(|(t, _)| *t == id)
                .map_or(Damage::Lost, |(_, d)| d);
            damaged.push((id, damage));
        }
        Span { events, damaged }
    }

    /// The last id the span covers (`None` for an empty one).
    pub(super) fn end(&self) -> Option<u64> {
        let event = self.events.last().map(|e| e.id);
        let damaged = self.damaged.last().map(|(id, _)| *id);
        event.max(damaged)
    }
}

/// Reads the channel's retained ids `from..=to` (which the caller knows to be retained, so
/// contiguous). When SQLite reports the range's pages damaged, reads the ids one at a time
/// instead, at most [`POINT_READS`] of them (the span is cut short there): the readable rows
/// are still served and the others named.
pub(super) fn read_span(
    conn: &Connection,
    channel: &ChannelName,
    from: u64,
    to: u64,
) -> rusqlite::Result<Span> {
    if from > to {
        return Ok(Span::default());
    }
    // A limit rather than an upper bound: the index walk then compares the channel alone. A
    // row past `to` (when ids are missing) is left out by `Span::cover`.
    let range = query_events(
        conn,
        channel,
        select_event!("WHERE channel = ?1 AND id >= ?2 ORDER BY id LIMIT ?3"),
        params![channel.as_str(), from, sql_limit_u64(to - from + 1)],
    );
    match range {
        Ok(found) => Ok(Span::cover(from, to, found)),
        Err(err) if is_damage(&err) => {
            let to = to.min(from.saturating_add(POINT_READS - 1));
            let mut span = Span::default();
            for id in from..=to {
                let one = query_events(
                    conn,
                    channel,
                    select_event!("WHERE channel = ?1 AND id = ?2"),
                    params![channel.as_str(), id],
                );
                let one = match one {
                    Ok(found) => Span::cover(id, id, found),
                    Err(err) if is_damage(&err) => Span {
                        events: Vec::new(),
                        damaged: vec![(id, Damage::Page)],
                    },
                    Err(err) => return Err(err),
                };
                span.events.extend(one.events);
                span.damaged.extend(one.damaged);
            }
            Ok(span)
        }
        Err(err) => Err(err),
    }
}

pub(super) fn query_receipts(
    conn: &Connection,
    channel: &ChannelName,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Receipt>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |row| {
        Ok(Receipt {
            seq: row.get(0)?,
            channel: channel.clone(),
            event_id: row.get(1)?,
            device: parse_name(row.get_ref(2)?.as_str()?, 2, DeviceId::new)?,
            status: row.get(3)?,
            time: time_from_ms(row.get(4)?, 4)?,
        })
    })?;
    rows.collect()
}

pub(super) fn membership_from_row(
    channel: &ChannelName,
    row: &Row<'_>,
) -> rusqlite::Result<Membership> {
    Ok(Membership {
        channel: channel.clone(),
        device: parse_name(row.get_ref(1)?.as_str()?, 1, DeviceId::new)?,
        joined_after: row.get(2)?,
        left_after: row.get(3)?,
        since: time_from_ms(row.get(4)?, 4)?,
    })
}

/// The channel's retained ids `(first, head)` as the transaction sees them (first is `head + 1`
/// when nothing is retained). `known` is what memory holds of them, taken where SQLite reports
/// their pages damaged.
fn bounds(
    tx: &Connection,
    channel: &ChannelName,
    known: (u64, u64),
) -> rusqlite::Result<(u64, u64)> {
    let head = tx
        .prepare_cached("SELECT head FROM channels WHERE name = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([channel.as_str()], |row| row.get::<_, u64>(0))
                .optional()
        });
    let head = match head {
        Ok(head) => head.unwrap_or(0),
        Err(err) if is_damage(&err) => known.1,
        Err(err) => return Err(err),
    };
    let first = tx
        .prepare_cached("SELECT MIN(id) FROM events WHERE channel = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([channel.as_str()], |row| row.get::<_, Option<u64>>(0))
        });
    let first = match first {
        Ok(first) => first.unwrap_or(head + 1),
        Err(err) if is_damage(&err) => known.0,
        Err(err) => return Err(err),
    };
    Ok((first, head))
}

/// A page of history from disk, with why each id of its span that it does not serve cannot be;
/// one read transaction, so head, first and events agree. `known`: as for [`bounds`].
pub(super) fn read_page(
    conn: &mut Connection,
    channel: &ChannelName,
    after: u64,
    limit: usize,
    known: (u64, u64),
) -> rusqlite::Result<(EventPage, Vec<(u64, Damage)>)> {
    let tx = conn.transaction()?;
    let (first, head) = bounds(&tx, channel, known)?;
    // Retained ids run without a hole from `first` to `head`: the span is exactly the ids the
    // page must account for.
    let start = after.saturating_add(1).max(first);
    let end = head.min(start.saturating_add(u64::try_from(limit).unwrap_or(u64::MAX)) - 1);
    let span = read_span(&tx, channel, start, end)?;
    tx.commit()?;
    let page = EventPage {
        events: span.events,
        first_retained: first,
        head,
        unreadable: span.damaged.iter().map(|(id, _)| *id).collect(),
    };
    Ok((page, span.damaged))
}

/// The newest `limit` retained ids of the channel, read as [`read_span`] reads them.
pub(super) fn read_recent(
    conn: &mut Connection,
    channel: &ChannelName,
    limit: usize,
    known: (u64, u64),
) -> rusqlite::Result<Span> {
    let tx = conn.transaction()?;
    let (first, head) = bounds(&tx, channel, known)?;
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let span = if limit == 0 {
        Span::default()
    } else {
        let start = first.max((head + 1).saturating_sub(limit));
        read_span(&tx, channel, start, head)?
    };
    tx.commit()?;
    Ok(span)
}

/// One event, if retained, read as [`read_span`] reads it.
pub(super) fn read_event(
    conn: &mut Connection,
    channel: &ChannelName,
    id: u64,
    known: (u64, u64),
) -> rusqlite::Result<Span> {
    let tx = conn.transaction()?;
    let (first, head) = bounds(&tx, channel, known)?;
    let span = if (first..=head).contains(&id) {
        read_span(&tx, channel, id, id)?
    } else {
        Span::default()
    };
    tx.commit()?;
    Ok(span)
}

pub(super) fn device_from_row(
    channel: &ChannelName,
    row: &Row<'_>,
) -> rusqlite::Result<DeviceRecord> {
    let op = row.get_ref(3)?.as_str()?;
    let last_op = DeviceOp::parse(op).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            Type::Text,
            format!("unknown device operation {op:?}").into(),
        )
    })?;
    Ok(DeviceRecord {
        channel: channel.clone(),
        device: parse_name(row.get_ref(0)?.as_str()?, 0, DeviceId::new)?,
        first_seen: time_from_ms(row.get(1)?, 1)?,
        last_seen: time_from_ms(row.get(2)?, 2)?,
        last_op,
        last_event_id: row.get(4)?,
        last_delivered: row.get(5)?,
        last_acked: row.get(6)?,
        receipts: row.get(7)?,
    })
}

pub(super) fn load_device(
    conn: &Connection,
    channel: &ChannelName,
    device: &DeviceId,
) -> rusqlite::Result<Option<DeviceRecord>> {
    conn.prepare_cached(select_device!("WHERE channel = ?1 AND device = ?2"))?
        .query_row([channel.as_str(), device.as_str()], |row| {
            device_from_row(channel, row)
        })
        .optional()
}

pub(super) fn save_device(conn: &Connection, record: &DeviceRecord) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO devices (channel, device, first_seen, last_seen, last_op, last_event_id, \
         last_delivered, last_acked, receipts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        record.channel.as_str(),
        record.device.as_str(),
        record.first_seen.timestamp_millis(),
        record.last_seen.timestamp_millis(),
        record.last_op.as_str(),
        record.last_event_id,
        record.last_delivered,
        record.last_acked,
        record.receipts,
    ])?;
    Ok(())
}

pub(super) fn save_devices_through(conn: &Connection, seq: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE state SET value = ?2 WHERE key = ?1")?
        .execute(params![DEVICES_THROUGH_RECEIPT, seq])?;
    Ok(())
}

/// The record of a device first seen through a receipt.
pub(super) fn receipt_touch(receipt: &Receipt) -> DeviceTouch {
    DeviceTouch {
        channel: receipt.channel.clone(),
        device: receipt.device.clone(),
        op: DeviceOp::Feedback,
        at: receipt.time,
        last_event_id: None,
        delivered: 0,
    }
}
