//! Rows to values and back: the `SELECT`s of event, device and membership rows (the
//! `select_*` macros), what rebuilds a value from its row ([`event_from_row`],
//! [`device_from_row`], [`membership_from_row`]), the queries and page reads built on them, and
//! device rows loaded and saved.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use pere_proto::error::NameError;
use pere_proto::event::{Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId, EventType};
use pere_proto::receipt::{DeviceOp, DeviceRecord, DeviceTouch, Membership, Receipt};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

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
            "SELECT id, time, publisher, event_type, body, idempotency_key FROM events ",
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

/// Rebuilds a stored event (and so its SSE frame) from
/// `id, time, publisher, event_type, body, idempotency_key`.
fn event_from_row(channel: &ChannelName, row: &Row<'_>) -> rusqlite::Result<Arc<Event>> {
    let id: u64 = row.get(0)?;
    let time = time_from_ms(row.get(1)?, 1)?;
    let publisher = row
        .get_ref(2)?
        .as_str_or_null()?
        .map(|s| parse_name(s, 2, DeviceId::new))
        .transpose()?;
    let event_type = row
        .get_ref(3)?
        .as_str_or_null()?
        .map(|s| parse_name(s, 3, EventType::new))
        .transpose()?;
    let body: String = row.get(4)?;
    let idempotency_key: Option<String> = row.get(5)?;
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

pub(super) fn query_events(
    conn: &Connection,
    channel: &ChannelName,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Arc<Event>>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |row| event_from_row(channel, row))?;
    rows.collect()
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

/// A page of history from disk; one read transaction, so head, first and events agree.
pub(super) fn read_page(
    conn: &mut Connection,
    channel: &ChannelName,
    after: u64,
    limit: usize,
) -> rusqlite::Result<EventPage> {
    let tx = conn.transaction()?;
    let head: u64 = tx
        .prepare_cached("SELECT head FROM channels WHERE name = ?1")?
        .query_row([channel.as_str()], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    let first: Option<u64> = tx
        .prepare_cached("SELECT MIN(id) FROM events WHERE channel = ?1")?
        .query_row([channel.as_str()], |row| row.get(0))?;
    let events = query_events(
        &tx,
        channel,
        select_event!("WHERE channel = ?1 AND id > ?2 ORDER BY id LIMIT ?3"),
        params![channel.as_str(), after, sql_limit(limit)],
    )?;
    tx.commit()?;
    Ok(EventPage {
        events,
        first_retained: first.unwrap_or(head + 1),
        head,
    })
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
