//! Events: what a publisher sends ([`NewEvent`]) and what the store keeps and feeds deliver ([`Event`]).

use bytes::Bytes;
use chrono::{DateTime, Datelike, SecondsFormat, SubsecRound, Timelike, Utc};

use crate::name::{ChannelName, DeviceId, EventType};
use crate::sse;

/// An event as a publisher hands it over, before the store gives it an id and a time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The publishing device, when it said who it is.
    pub publisher: Option<DeviceId>,
    /// The SSE event type, for clients that listen by type.
    pub event_type: Option<EventType>,
    /// The body, kept verbatim.
    pub body: String,
    /// Makes publishing safe to retry: an append whose key its publisher already holds among
    /// the channel's retained events stores nothing and returns the stored event (keys are per
    /// publisher: another's event under the same key is never returned). 1 to
    /// [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII characters.
    pub idempotency_key: Option<String>,
}

/// The longest idempotency key, in bytes: room for a UUID or a hash with a prefix, small enough
/// that a unique index over keys stays cheap.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Whether `key` is a valid idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII
/// characters (`!` to `~`), so it can travel in a header and be logged as is.
pub fn valid_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// A published event. Its id is the channel's sequence number: strictly increasing, never reused.
#[derive(Debug)]
pub struct Event {
    /// The channel it was published on.
    pub channel: ChannelName,
    /// Its id within the channel, from 1.
    pub id: u64,
    /// When the store accepted it, in UTC, to the millisecond.
    pub time: DateTime<Utc>,
    /// The publishing device, if known.
    pub publisher: Option<DeviceId>,
    /// The SSE event type, if any.
    pub event_type: Option<EventType>,
    /// The body, verbatim.
    pub body: String,
    /// The publisher's idempotency key, if it gave one.
    pub idempotency_key: Option<String>,
    // The SSE frame, encoded once here and shared (reference-counted) with every subscriber.
    frame: Bytes,
}

impl Event {
    /// Builds the stored form of an event and encodes its SSE frame.
    pub fn new(channel: ChannelName, id: u64, time: DateTime<Utc>, new: NewEvent) -> Self {
        let frame = sse::encode_event(id, new.event_type.as_ref().map(|t| t.as_str()), &new.body);
        Event {
            channel,
            id,
            // Millisecond precision, so an event reads back from any store exactly as it was sent.
            time: time.trunc_subsecs(3),
            publisher: new.publisher,
            event_type: new.event_type,
            body: new.body,
            idempotency_key: new.idempotency_key,
            frame,
        }
    }

    /// The event's SSE frame, ready to write to a stream.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

/// Formats a time the way every PERE interface shows it: ISO-8601 UTC with milliseconds
/// (`2026-11-30T06:40:32.720Z`, as chrono's `to_rfc3339_opts(Millis, true)` writes it).
pub fn format_time(time: DateTime<Utc>) -> String {
    with_time_text(time, str::to_owned)
}

/// Calls `with` with the text [`format_time`] makes, without making a `String` of it: for what
/// writes the time straight into a larger text (a receipt's answer, one per receipt).
///
/// Written digit by digit: every push answer carries a time, and chrono's general formatter
/// cost more than the rest of the answer.
pub fn with_time_text<R>(time: DateTime<Utc>, with: impl FnOnce(&str) -> R) -> R {
    // Leap seconds are chrono's business, and so are years beyond four digits.
    // Taken apart once: each field asked of a `DateTime` adds its offset anew.
    let (date, clock) = (time.date_naive(), time.time());
    if clock.nanosecond() >= 1_000_000_000 || !(0..=9999).contains(&date.year()) {
        return with(&time.to_rfc3339_opts(SecondsFormat::Millis, true));
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, value: u32, width: usize| {
        let mut value = value;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, date.year().unsigned_abs(), 4);
    put(5, date.month(), 2);
    put(8, date.day(), 2);
    put(11, clock.hour(), 2);
    put(14, clock.minute(), 2);
    put(17, clock.second(), 2);
    put(20, clock.nanosecond() / 1_000_000, 3);
    // Digits and ASCII punctuation only.
    with(std::str::from_utf8(&out).unwrap_or_default())
}

/// The current time, to the millisecond.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_are_formatted_as_chrono_formats_them() {
        let chrono = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut times = vec![
            now(),
            Utc.timestamp_millis_opt(0).unwrap(),
            Utc.timestamp_millis_opt(1).unwrap(),
        ];
        // A spread of instants, from 1970 to the 2200s, with every millisecond digit.
        let mut ms: i64 = 7;
        for _ in 0..5000 {
            ms = (ms
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407))
            .rem_euclid(7_258_118_400_000);
            times.push(Utc.timestamp_millis_opt(ms).unwrap());
            times.push(Utc.timestamp_millis_opt(-ms / 4).unwrap());
        }
        times.push(Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap());
        times.push(Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap());
        times.push(Utc.with_ymd_and_hms(2000, 2, 29, 12, 0, 0).unwrap());
        times.push(Utc.with_ymd_and_hms(2100, 3, 1, 0, 0, 0).unwrap());
        times.push(Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap());
        times.push(Utc.with_ymd_and_hms(-1, 1, 1, 0, 0, 0).unwrap());
        for t in times {
            assert_eq!(format_time(t), chrono(t), "{t:?}");
        }
    }
}
