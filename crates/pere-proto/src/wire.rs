//! Every JSON shape PERE writes or reads on the wire, as typed structs shared by the server and
//! the clients. Kept apart from the domain types so that the wire format changes only on purpose;
//! each shape is built from the domain type it shows, in one place.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::{format_time, with_time_text, Event};
use crate::presence::PresenceChange;
use crate::receipt::ReceiptSummary;
use crate::receipt::{Membership, Receipt, StatusClass};
use crate::sse;
use crate::view::{ChannelView, DeviceView};

/// The answer to a successful `POST /push/:channel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAccepted {
    /// The channel.
    pub channel: String,
    /// The id the event got.
    pub id: u64,
    /// When it was stored (ISO-8601 UTC, milliseconds).
    pub time: String,
}

impl From<&Event> for PushAccepted {
    fn from(event: &Event) -> Self {
        PushAccepted {
            channel: event.channel.to_string(),
            id: event.id,
            time: format_time(event.time),
        }
    }
}

/// The answer to a batch push (`POST /push/:channel` with an NDJSON body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// The channel.
    pub channel: String,
    /// The id of each line's event, in line order (a replayed line has its stored event's id).
    pub ids: Vec<u64>,
    /// When the batch's new events were stored (ISO-8601 UTC, milliseconds); for a batch made
    /// only of replays, the stored time of its first line's event.
    pub time: String,
    /// How many lines were answered from an event already stored under their idempotency key
    /// (0 when absent, so a client reads the answers of servers that leave it out).
    #[serde(default)]
    pub replayed: usize,
}

/// One line of a batch in the envelope form (`Pere-Batch: envelope`): exactly one of `data`
/// and `text`, and optionally the event's type and idempotency key. Other members are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLine<'a> {
    /// A JSON body: the event body is this value's exact JSON text.
    #[serde(borrow, default, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
    /// A text body, sent as the event body as it is.
    #[serde(default)]
    pub text: Option<String>,
    /// The event's type (else the batch's `?event=` or `event` header).
    #[serde(default)]
    pub event: Option<String>,
    /// The event's idempotency key (else the batch key's `K.i`, if the batch has one).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A member that is present, even as `null` (which `Option` alone would take for absent).
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A receipt as the server reports it (the answer to `POST /feedback/:channel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptJson {
    /// The channel.
    pub channel: String,
    /// The event acknowledged.
    pub id: u64,
    /// The acknowledging device.
    pub device: String,
    /// The device's status.
    pub status: String,
    /// When the server recorded it.
    pub time: String,
}

impl From<&Receipt> for ReceiptJson {
    fn from(r: &Receipt) -> Self {
        ReceiptJson {
            channel: r.channel.to_string(),
            id: r.event_id,
            device: r.device.to_string(),
            status: r.status.to_string(),
            time: format_time(r.time),
        }
    }
}

/// A receipt written as [`ReceiptJson`] straight from the [`Receipt`], without copying its
/// names: for answers and streams, which write a receipt and never read one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReceiptJsonRef<'a> {
    channel: &'a str,
    id: u64,
    device: &'a str,
    status: &'a str,
    #[serde(serialize_with = "serialize_time")]
    time: DateTime<Utc>,
}

fn serialize_time<S: serde::Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    with_time_text(*time, |text| s.serialize_str(text))
}

impl ReceiptJsonRef<'_> {
    /// Appends to `out` the same JSON text serde writes for it, written field by field: a receipt
    /// answer is made once per receipt, and serde's general path cost half again as much as the
    /// rest of the answer.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"channel\":");
        json_string(out, self.channel);
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.id).as_bytes());
        out.extend_from_slice(b",\"device\":");
        json_string(out, self.device);
        out.extend_from_slice(b",\"status\":");
        json_string(out, self.status);
        out.extend_from_slice(b",\"time\":");
        with_time_text(self.time, |text| json_string(out, text));
        out.push(b'}');
    }
}

/// Appends `text` as a JSON string: as it is between quotes when nothing in it needs escaping
/// (names, times, most statuses), else as serde_json escapes it.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Writing into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    } else {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

impl<'a> From<&'a Receipt> for ReceiptJsonRef<'a> {
    fn from(r: &'a Receipt) -> Self {
        ReceiptJsonRef {
            channel: r.channel.as_str(),
            id: r.event_id,
            device: r.device.as_str(),
            status: &r.status,
            time: r.time,
        }
    }
}

/// The JSON form of a receipt a device sends: `{"device", "id", "status"}` for one event, or
/// `{"device", "upto", "status"}` for every event it owes up to an id (a cumulative receipt).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRequest {
    /// The acknowledging device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The event id, as a number or a numeric string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    /// A cumulative receipt's last id, as a number or a numeric string: every event up to it
    /// that the device owes a receipt. Never with `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<serde_json::Value>,
    /// The status of the device's local work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The answer to a cumulative receipt (`{"device", "upto", "status"}`): the events it
/// acknowledged, by ascending id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CumulativeAnswer {
    /// The channel.
    pub channel: String,
    /// The acknowledging device.
    pub device: String,
    /// The last id the receipt covers.
    pub upto: u64,
    /// How many events this request acknowledged (0 when the device owed none).
    pub acknowledged: usize,
    /// Their ids, ascending.
    pub ids: Vec<u64>,
    /// True when the device owed more than one request acknowledges: the oldest were, and
    /// the same receipt again acknowledges the next ones. Left out when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub more: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl CumulativeAnswer {
    /// Appends to `out` the JSON text serde writes for the answer with these fields, without
    /// making the answer (its names copied, its ids gathered): one per cumulative receipt, the
    /// request coalescing clients send most.
    pub fn write_json(
        out: &mut Vec<u8>,
        channel: &str,
        device: &str,
        upto: u64,
        ids: impl ExactSizeIterator<Item = u64>,
        more: bool,
    ) {
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b"{\"channel\":");
        json_string(out, channel);
        out.extend_from_slice(b",\"device\":");
        json_string(out, device);
        out.extend_from_slice(b",\"upto\":");
        out.extend_from_slice(number.format(upto).as_bytes());
        out.extend_from_slice(b",\"acknowledged\":");
        out.extend_from_slice(number.format(ids.len()).as_bytes());
        out.extend_from_slice(b",\"ids\":[");
        for (i, id) in ids.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(number.format(id).as_bytes());
        }
        out.push(b']');
        if more {
            out.extend_from_slice(b",\"more\":true");
        }
        out.push(b'}');
    }
}

/// One line of a batch of receipts (`Content-Type: application/x-ndjson`):
/// `{"id": N, "status": "S", "key": "K"}`, the status and key optional. Other members are
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBatchLine {
    /// The event acknowledged.
    pub id: u64,
    /// The status of the device's local work (`ok` when absent, as for a single receipt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The receipt's idempotency key, as a single receipt's `Idempotency-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// One receipt in the answer to a batch of receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBatchEntry {
    /// The event acknowledged.
    pub id: u64,
    /// The receipt's place in the channel's receipt stream.
    pub seq: u64,
    /// Its status.
    pub status: String,
    /// True when the line's key held a receipt already: this is that receipt, and nothing was
    /// recorded for the line.
    pub replayed: bool,
}

/// The answer to a batch of receipts: one entry per line, in line order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBatchAnswer {
    /// The channel.
    pub channel: String,
    /// The acknowledging device.
    pub device: String,
    /// The receipts, in line order.
    pub receipts: Vec<ReceiptBatchEntry>,
}

/// The data of the `pere-gap` SSE event: ids `from..=to` cannot be sent (no longer retained, or
/// damaged in the server's store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapNotice {
    /// First missing id.
    pub from: u64,
    /// Last missing id.
    pub to: u64,
}

impl GapNotice {
    /// The notice as an SSE frame of type [`sse::GAP_EVENT_TYPE`], with no `id:` (the client's
    /// last event id stays as it was).
    pub fn frame(&self) -> Bytes {
        sse::encode_notice(sse::GAP_EVENT_TYPE, &to_json(self))
    }
}

/// Every error answer: `{"error": {"code", "message"}, "message"}`. The top-level `message` is
/// the original PERE's error shape, kept for its clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
    /// The same sentence as `error.message`.
    #[serde(default)]
    pub message: String,
}

impl ErrorBody {
    /// The answer for an error with this code and sentence.
    pub fn new(code: &str, message: &str) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: message.to_owned(),
            },
            message: message.to_owned(),
        }
    }
}

/// The code (stable, for programs) and message (for people) of an error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `bad_channel`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

/// The data of the `pere-reset` SSE event: the client's `Last-Event-ID` is beyond the server's
/// history (whose last id is `head`), so ids start over and the client must forget those it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetNotice {
    /// The position the client asked for.
    pub last_event_id: u64,
    /// The channel's last id on this server.
    pub head: u64,
}

impl ResetNotice {
    /// The notice as an SSE frame of type [`sse::RESET_EVENT_TYPE`], with no `id:`.
    pub fn frame(&self) -> Bytes {
        sse::encode_notice(sse::RESET_EVENT_TYPE, &to_json(self))
    }
}

/// Compact JSON of a wire shape. These shapes hold only strings, numbers and maps with string
/// keys, which always serialise.
pub fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// An event body as JSON shows it: the body itself when it is JSON, else the body as a string.
pub fn body_value(body: &str) -> Box<RawValue> {
    // A valid JSON body is embedded as it is, without being parsed into a tree and written again.
    if serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok() {
        if let Ok(raw) = RawValue::from_string(body.trim().to_owned()) {
            return raw;
        }
    }
    RawValue::from_string(serde_json::to_string(body).unwrap_or_else(|_| "\"\"".to_owned()))
        .unwrap_or_else(|_| empty_string())
}

fn empty_string() -> Box<RawValue> {
    // A constant that is valid JSON.
    RawValue::from_string("\"\"".to_owned()).expect("a JSON string literal")
}

/// One event, as every JSON view shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventJson {
    /// The channel.
    pub channel: String,
    /// Its id.
    pub id: u64,
    /// When it was stored.
    pub time: String,
    /// The publishing device, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The SSE event type, when set.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The body: parsed when it is JSON, else the text.
    pub data: Box<RawValue>,
}

impl From<&Event> for EventJson {
    fn from(event: &Event) -> Self {
        EventJson {
            channel: event.channel.to_string(),
            id: event.id,
            time: format_time(event.time),
            device: event.publisher.as_ref().map(|d| d.to_string()),
            event_type: event.event_type.as_ref().map(|t| t.to_string()),
            data: body_value(&event.body),
        }
    }
}

/// `GET /events/:channel`: a page of retained events, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventList {
    /// The channel.
    pub channel: String,
    /// The channel's last id; a client pages on with `after` = the last id it got (in `events`
    /// or `unreadable`), until it reaches this.
    pub head: u64,
    /// The events.
    pub events: Vec<EventJson>,
    /// The ids within this page that the server holds but cannot read (damaged in its store):
    /// they are left out of `events`. Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<u64>,
}

/// One acknowledgement in a receipt summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckJson {
    /// The device.
    pub device: String,
    /// Its status.
    pub status: String,
    /// What the status says: `ok`, `failed` or `other` ([`StatusClass`]); empty from a server
    /// older than this field.
    #[serde(default)]
    pub class: String,
    /// When the receipt was recorded.
    pub time: String,
}

impl From<&Receipt> for AckJson {
    fn from(receipt: &Receipt) -> Self {
        AckJson {
            device: receipt.device.to_string(),
            status: receipt.status.to_string(),
            class: StatusClass::of(&receipt.status).as_str().to_owned(),
            time: format_time(receipt.time),
        }
    }
}

/// How many expected recipients are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptCounts {
    /// Acknowledged.
    pub acknowledged: usize,
    /// Delivered, not acknowledged.
    pub delivered: usize,
    /// Not delivered yet.
    pub pending: usize,
}

/// Who acknowledged, got, or has not got one event: the admin view, the `?wait=` answer and the
/// webhook's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptSummaryJson {
    /// The channel.
    pub channel: String,
    /// The event.
    pub id: u64,
    /// The latest receipt of each device that acknowledged.
    pub acknowledged: Vec<AckJson>,
    /// Devices the event reached that have not acknowledged it.
    pub delivered: Vec<String>,
    /// Expected recipients it has not reached.
    pub pending: Vec<String>,
    /// How many recipients were expected.
    pub expected: usize,
    /// Whether every expected recipient acknowledged.
    pub complete: bool,
    /// The sizes of the three lists.
    pub counts: ReceiptCounts,
    /// When each delivered or pending device was last seen on the channel (devices never seen
    /// are left out): a recipient that stopped coming long ago is why an event never completes.
    #[serde(default)]
    pub last_seen: BTreeMap<String, String>,
}

impl From<&ReceiptSummary> for ReceiptSummaryJson {
    fn from(summary: &ReceiptSummary) -> Self {
        let names =
            |devices: &[crate::name::DeviceId]| devices.iter().map(|d| d.to_string()).collect();
        ReceiptSummaryJson {
            channel: summary.channel.to_string(),
            id: summary.event_id,
            acknowledged: summary.acknowledged.iter().map(AckJson::from).collect(),
            delivered: names(&summary.delivered),
            pending: names(&summary.pending),
            expected: summary.expected,
            complete: summary.complete(),
            counts: ReceiptCounts {
                acknowledged: summary.acknowledged.len(),
                delivered: summary.delivered.len(),
                pending: summary.pending.len(),
            },
            last_seen: summary
                .last_seen
                .iter()
                .map(|(d, at)| (d.to_string(), format_time(*at)))
                .collect(),
        }
    }
}

/// The answer to `POST /push/:channel?wait=…`: the event, and whether the receipts asked for
/// arrived in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushWaited {
    /// The channel.
    pub channel: String,
    /// The id the event got.
    pub id: u64,
    /// When it was stored.
    pub time: String,
    /// Whether the wait was satisfied.
    pub satisfied: bool,
    /// Its receipts when the wait ended.
    pub receipts: ReceiptSummaryJson,
}

/// `GET /events/:channel/:id`: the event (the fields of [`EventJson`]) with its receipt summary;
/// for an event no longer retained, its channel and id with `"pruned": true`, and the receipts
/// still kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventReceipts {
    /// The channel.
    pub channel: String,
    /// The event's id.
    pub id: u64,
    /// When it was stored (absent once pruned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The publishing device, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The SSE event type, when set.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The body, as in [`EventJson::data`] (absent once pruned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
    /// Set when retention removed the event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pruned: bool,
    /// Its receipts.
    pub receipts: ReceiptSummaryJson,
}

impl EventReceipts {
    /// A retained event and its receipts.
    pub fn retained(event: EventJson, receipts: ReceiptSummaryJson) -> Self {
        let EventJson {
            channel,
            id,
            time,
            device,
            event_type,
            data,
        } = event;
        EventReceipts {
            channel,
            id,
            time: Some(time),
            device,
            event_type,
            data: Some(data),
            pruned: false,
            receipts,
        }
    }

    /// The receipts of event `id`, which retention removed.
    pub fn pruned(channel: &str, id: u64, receipts: ReceiptSummaryJson) -> Self {
        EventReceipts {
            channel: channel.to_owned(),
            id,
            time: None,
            device: None,
            event_type: None,
            data: None,
            pruned: true,
            receipts,
        }
    }
}

/// What the receipt webhook POSTs: the summary and why it is sent (`complete` or `timeout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSummary {
    /// The receipt summary.
    #[serde(flatten)]
    pub receipts: ReceiptSummaryJson,
    /// `complete` or `timeout`.
    pub reason: String,
}

/// One device in `GET /admin/devices/:channel`: the original's fields (`op`, `at`,
/// `Last-Event-Id`) and what PERE adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceJson {
    /// Whether the device is a current recipient of the channel.
    pub recipient: bool,
    /// The last of the original's operations it did: `feed` or `feedback`.
    pub op: String,
    /// When (the original's name for `last_seen`).
    pub at: String,
    /// The resume header of its last feed request as sent, or the id its last receipt named;
    /// kept when the device goes offline.
    #[serde(rename = "Last-Event-Id")]
    pub last_event_id: Option<String>,
    /// Whether it has a stream open.
    pub online: bool,
    /// How many.
    pub open_streams: usize,
    /// First seen on the channel.
    pub first_seen: String,
    /// Last seen on the channel.
    pub last_seen: String,
    /// The newest event written to one of its streams.
    pub last_delivered: u64,
    /// The newest event it acknowledged.
    pub last_acked: u64,
    /// How many receipts it sent.
    pub receipts: u64,
}

impl DeviceJson {
    /// The view of `device`; `recipient` says whether it currently is one.
    pub fn new(device: &DeviceView, recipient: bool) -> Self {
        let r = &device.record;
        DeviceJson {
            recipient,
            op: r.last_op.original().to_owned(),
            at: format_time(r.last_seen),
            last_event_id: r.last_event_id.clone(),
            online: device.open_streams > 0,
            open_streams: device.open_streams,
            first_seen: format_time(r.first_seen),
            last_seen: format_time(r.last_seen),
            last_delivered: r.last_delivered,
            last_acked: r.last_acked,
            receipts: r.receipts,
        }
    }
}

/// `GET /admin/devices/:channel`: every device by id.
pub type DevicesJson = BTreeMap<String, DeviceJson>;

/// A recipient's membership of a channel (`PUT`/`DELETE /devices/:channel/:device`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipJson {
    /// The channel.
    pub channel: String,
    /// The device.
    pub device: String,
    /// When it became a recipient.
    pub since: String,
    /// It is expected to acknowledge events with ids above this.
    pub expects_events_after: u64,
    /// It stopped being a recipient after this id, if it did.
    pub left_after: Option<u64>,
}

impl From<&Membership> for MembershipJson {
    fn from(m: &Membership) -> Self {
        MembershipJson {
            channel: m.channel.to_string(),
            device: m.device.to_string(),
            since: format_time(m.since),
            expects_events_after: m.joined_after,
            left_after: m.left_after,
        }
    }
}

/// `GET /devices/:channel/:device/pending`: retained events the device owes a receipt for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingEvents {
    /// The channel.
    pub channel: String,
    /// The device.
    pub device: String,
    /// The events, oldest first.
    pub pending: Vec<EventJson>,
}

/// The data of a `presence` event on `GET /presence/:channel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceJson {
    /// The device.
    pub device: String,
    /// Online (its first stream opened) or offline (its last closed).
    pub online: bool,
    /// When.
    pub at: String,
}

impl From<&PresenceChange> for PresenceJson {
    fn from(change: &PresenceChange) -> Self {
        PresenceJson {
            device: change.device.to_string(),
            online: change.online,
            at: format_time(change.at),
        }
    }
}

/// The data of a `complete` event on `GET /receipts/:channel`: every expected recipient
/// acknowledged event `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionJson {
    /// The channel.
    pub channel: String,
    /// The event.
    pub id: u64,
    /// How many recipients were expected.
    pub expected: usize,
}

/// `GET /admin/connections`: open feeds per channel, and their total under the original's key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsJson {
    /// Open feeds per channel with any.
    #[serde(flatten)]
    pub channels: BTreeMap<String, usize>,
    /// All open feeds.
    #[serde(rename = "total number")]
    pub total: usize,
}

/// One channel in `GET /admin/channels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelJson {
    /// The channel's name.
    pub channel: String,
    /// Streams open on it (feeds), on every node of a cluster.
    pub open_streams: usize,
    /// The last event id given out (0 before the first event).
    pub head: u64,
    /// Events still retained for replay.
    pub retained: u64,
    /// Devices currently expected to acknowledge its new events.
    pub recipients: usize,
}

impl From<&ChannelView> for ChannelJson {
    fn from(view: &ChannelView) -> Self {
        ChannelJson {
            channel: view.channel.to_string(),
            open_streams: view.open_streams,
            head: view.head,
            retained: view.retained,
            recipients: view.recipients,
        }
    }
}

/// `GET /admin/channels`: a page of channels in name order (the next page's link is in the
/// `Link` header).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelsPage {
    /// The channels of this page.
    pub channels: Vec<ChannelJson>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// `GET /readyz`: whether this server should get traffic, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// `ready`; `degraded` (serving, but its store holds damaged events it cannot send); or
    /// `not_ready`.
    pub status: String,
    /// Why not: `shutting_down`, or `store_failed` (the details are in the server's log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many damaged events the server's reads have met since it started (each counted
    /// once); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged_events: Option<u64>,
}

/// `GET /` for programs: the original's banner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Banner {
    /// `PERE server up and running`.
    pub message: String,
}

/// The data of the `hello` event that opens `GET /admin/stream`: what the stream shows. A
/// dashboard forgets what it knew when it reads one (every connection starts with a snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardHello {
    /// The channel shown in detail, when one was asked for (`?channel=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// How many of the channel's latest events the receipts grid shows.
    pub grid_events: usize,
    /// How many of the channel's devices the stream follows at most.
    pub max_devices: usize,
    /// The server's time.
    pub time: String,
}

/// One channel and its open feeds, in the `channels` snapshot and, alone, in a `channel` event
/// when the number changes (0: none left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStreamsJson {
    /// The channel.
    pub channel: String,
    /// Open feeds on it.
    pub open_streams: usize,
}

/// The data of the `channels` event: every channel with open feeds, most first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardChannels {
    /// The channels shown (at most a few hundred).
    pub channels: Vec<ChannelStreamsJson>,
    /// Open feeds on all channels, those not shown included.
    pub total: usize,
    /// How many channels with open feeds are not shown.
    pub more: usize,
}

/// A device as the dashboard shows it: presence and where its deliveries and receipts stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardDevice {
    /// The device.
    pub device: String,
    /// Whether it is a current recipient of the channel.
    pub recipient: bool,
    /// Whether it has a stream open.
    pub online: bool,
    /// How many.
    pub open_streams: usize,
    /// When it was last seen on the channel.
    pub last_seen: String,
    /// The newest event written to one of its streams.
    pub last_delivered: u64,
    /// The newest event it acknowledged.
    pub last_acked: u64,
}

impl DashboardDevice {
    /// The view of `device`; `recipient` says whether it currently is one.
    pub fn new(device: &DeviceView, recipient: bool) -> Self {
        let r = &device.record;
        DashboardDevice {
            device: r.device.to_string(),
            recipient,
            online: device.open_streams > 0,
            open_streams: device.open_streams,
            last_seen: format_time(r.last_seen),
            last_delivered: r.last_delivered,
            last_acked: r.last_acked,
        }
    }
}

/// The data of the `devices` event: the channel's devices (a snapshot; `device` events follow
/// with each one that changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardDevices {
    /// The channel.
    pub channel: String,
    /// The devices followed, by id.
    pub devices: Vec<DashboardDevice>,
    /// Whether the channel has more devices than are followed.
    pub more: bool,
}

/// The data of an `event` event: one of the channel's latest events, a row of the receipts grid.
/// A device's cell is acknowledged when `acknowledged` names it, else delivered when the device's
/// `last_delivered` reached the id, else pending, for the devices in `recipients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardEvent {
    /// The event's id.
    pub id: u64,
    /// When it was stored.
    pub time: String,
    /// Its SSE event type, when set.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The publishing device, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// How many recipients it expects.
    pub expected: usize,
    /// The followed devices among them.
    pub recipients: Vec<String>,
    /// The latest receipt of each followed device that acknowledged it.
    pub acknowledged: Vec<AckJson>,
}

/// The data of the `grid` event: the channel's latest events with their receipts, oldest first
/// (a snapshot; `event` and `receipt` events follow as they happen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardGrid {
    /// The channel.
    pub channel: String,
    /// The channel's last event id.
    pub head: u64,
    /// The events.
    pub events: Vec<DashboardEvent>,
}

/// The data of a `receipt` event: a receipt for one of the grid's events, and how long after the
/// event's publication it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardReceipt {
    /// The event acknowledged.
    pub id: u64,
    /// The device.
    pub device: String,
    /// Its status.
    pub status: String,
    /// What the status says: `ok`, `failed` or `other` ([`StatusClass`]).
    pub class: String,
    /// When the server recorded it.
    pub time: String,
    /// Milliseconds from the event's publication to this receipt.
    pub latency_ms: u64,
}

/// The data of the `stats` event, sent every second: what happened during it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DashboardStats {
    /// Events published on every channel.
    pub events: u64,
    /// Receipts recorded on every channel.
    pub receipts: u64,
    /// Events published on the channel shown, with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_events: Option<u64>,
    /// Receipts recorded on the channel shown, with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_receipts: Option<u64>,
    /// The median receipt latency (publication to receipt, milliseconds) on the channel shown,
    /// over the receipts of the second that the stream could time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<u64>,
    /// The greatest of those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_max_ms: Option<u64>,
    /// Notices this server's observers lost since it started (a stream that sees this grow reads
    /// its snapshot again).
    pub dropped_notices: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_written_from_the_receipt_reads_back_as_receipt_json() {
        let receipt = Receipt {
            seq: 7,
            channel: crate::name::ChannelName::new("C1").unwrap(),
            event_id: 42,
            device: crate::name::DeviceId::new("D1").unwrap(),
            status: "done \"quoted\"".into(),
            time: Utc::now(),
        };
        let written = serde_json::to_string(&ReceiptJsonRef::from(&receipt)).unwrap();
        assert_eq!(
            written,
            serde_json::to_string(&ReceiptJson::from(&receipt)).unwrap()
        );
        let read: ReceiptJson = serde_json::from_str(&written).unwrap();
        assert_eq!(read, ReceiptJson::from(&receipt));
    }

    proptest::proptest! {
        #[test]
        fn a_receipt_written_field_by_field_is_what_serde_writes(
            status in "\\PC{0,40}|[\"\\\\\u{0}-\u{1f}a-z]{0,12}",
            id in proptest::prelude::any::<u64>(),
            millis in 0i64..400_000_000_000_000,
        ) {
            let receipt = Receipt {
                seq: 1,
                channel: crate::name::ChannelName::new("orders.eu:1").unwrap(),
                event_id: id,
                device: crate::name::DeviceId::new("till-7_b").unwrap(),
                status: status.into(),
                time: DateTime::from_timestamp_millis(millis).unwrap(),
            };
            let json = ReceiptJsonRef::from(&receipt);
            let mut written = Vec::new();
            json.write_json(&mut written);
            proptest::prop_assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&json).unwrap()
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn a_cumulative_answer_written_field_by_field_is_what_serde_writes(
            device in "[A-Za-z0-9_.:-]{1,20}|\\PC{0,12}",
            upto in proptest::prelude::any::<u64>(),
            ids in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..40),
            more in proptest::prelude::any::<bool>(),
        ) {
            let answer = CumulativeAnswer {
                channel: "orders.eu".to_owned(),
                device: device.clone(),
                upto,
                acknowledged: ids.len(),
                ids: ids.clone(),
                more,
            };
            let mut written = Vec::new();
            CumulativeAnswer::write_json(
                &mut written,
                "orders.eu",
                &device,
                upto,
                ids.iter().copied(),
                more,
            );
            proptest::prop_assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&answer).unwrap()
            );
        }
    }

    #[test]
    fn bodies_show_as_json_when_they_are_json_and_as_text_otherwise() {
        assert_eq!(body_value(r#"{"a":[1,2]}"#).get(), r#"{"a":[1,2]}"#);
        assert_eq!(body_value(" 42 ").get(), "42");
        assert_eq!(body_value("hello").get(), r#""hello""#);
        assert_eq!(body_value("line\n\"two\"").get(), r#""line\n\"two\"""#);
        assert_eq!(body_value("").get(), r#""""#);
        assert_eq!(body_value("{nope").get(), r#""{nope""#);
    }

    #[test]
    fn notices_are_frames_without_ids() {
        assert_eq!(
            &GapNotice { from: 1, to: 3 }.frame()[..],
            b"event: pere-gap\ndata: {\"from\":1,\"to\":3}\n\n"
        );
        assert_eq!(
            &ResetNotice {
                last_event_id: 9,
                head: 2
            }
            .frame()[..],
            b"event: pere-reset\ndata: {\"last_event_id\":9,\"head\":2}\n\n"
        );
    }

    #[test]
    fn connections_keep_the_original_total_key() {
        let view = ConnectionsJson {
            channels: [("C".to_owned(), 2)].into(),
            total: 2,
        };
        assert_eq!(to_json(&view), r#"{"C":2,"total number":2}"#);
    }
}
