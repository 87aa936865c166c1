//! Retention: when events expire ([`age_cutoff`]), and the pruning of a channel's oldest events
//! with their receipts, in bounded steps ([`prune_channel`]).

use chrono::{DateTime, Utc};
use pere_proto::name::ChannelName;
use rusqlite::{params, Connection, OptionalExtension};

use super::shared::Draft;
use crate::store::Retention;

/// Events deleted per pruning step at most, so a large backlog (retention shortened, a week of
/// events expiring at once) is worked off between batches instead of stalling pushes.
pub(super) const PRUNE_CHUNK: u64 = 2048;

/// Events older than this (milliseconds since the epoch) are expired, if retention has an age.
pub(super) fn age_cutoff(retention: &Retention, at: DateTime<Utc>) -> Option<i64> {
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
pub(super) fn prune_channel(
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

/// The time (milliseconds) of the channel's oldest retained event, at or after `first`; `None`
/// too when that time is damaged into something else (the channel is then not aged).
pub(super) fn oldest_time(
    conn: &Connection,
    channel: &ChannelName,
    first: u64,
) -> rusqlite::Result<Option<i64>> {
    let time = conn
        .prepare_cached(
            "SELECT time FROM events WHERE channel = ?1 AND id >= ?2 ORDER BY id LIMIT 1",
        )?
        .query_row(params![channel.as_str(), first], |row| {
            Ok(row.get_ref(0)?.as_i64_or_null().unwrap_or(None))
        })
        .optional()?;
    Ok(time.flatten())
}
