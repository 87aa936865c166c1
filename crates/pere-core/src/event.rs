//! Events: what a publisher sends ([`NewEvent`]) and what the store keeps and feeds deliver ([`Event`]).

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

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
    /// Makes publishing safe to retry: an append whose key the channel already holds among its
    /// retained events stores nothing and returns the stored event. 1 to
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

/// Formats a time the way every PERE interface shows it: ISO-8601 UTC with milliseconds.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The current time, to the millisecond.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}
