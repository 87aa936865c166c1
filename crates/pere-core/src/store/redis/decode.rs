//! Decoding what Redis answers: stream entries into events, the scripts' JSON into receipts,
//! memberships and device records, presence log entries into presence changes; an answer of
//! the wrong shape is a [`StoreError::Backend`].

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use pere_proto::event::{Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId, EventType};
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::{DeviceOp, DeviceRecord, Membership, Receipt};
use redis::Value;
use serde::Deserialize;

use crate::error::StoreError;

/// A presence change from its `plog` entry: id `SEQ-0`, fields `d` device, `o` online ('1' or
/// '0'), `t` time in ms.
pub(super) fn presence_from_entry(
    id: &str,
    fields: &[String],
) -> Result<PresenceChange, StoreError> {
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair.get(1))
    };
    let seq = id.split('-').next().and_then(|n| n.parse().ok());
    let device = field("d").and_then(|d| DeviceId::new(d).ok());
    let (Some(seq), Some(device)) = (seq, device) else {
        return Err(bad("presence entry"));
    };
    Ok(PresenceChange {
        seq,
        device,
        online: field("o").is_some_and(|o| o == "1"),
        at: time_of(field("t").and_then(|t| t.parse().ok()).unwrap_or(0)),
    })
}

/// A time in Unix milliseconds, as the scripts keep them (Redis's clock).
pub(super) fn time_of(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// An answer of a shape the code does not expect (`what` names it).
pub(super) fn bad(what: &str) -> StoreError {
    StoreError::Backend(format!("unexpected answer from Redis: {what}").into())
}

/// A value as text: a bulk or simple string, or a number.
pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Builds an event from a stream entry's id and its field list.
fn event_from_entry(channel: &ChannelName, entry: &Value) -> Result<Arc<Event>, StoreError> {
    let Value::Array(parts) = entry else {
        return Err(bad("stream entry"));
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return Err(bad("stream entry"));
    };
    let id = text(id)
        .and_then(|id| id.split('-').next().and_then(|n| n.parse::<u64>().ok()))
        .ok_or_else(|| bad("entry id"))?;
    event_from_fields(channel, id, fields)
}

/// Builds the event `id` of `channel` from its stream entry's fields (`t`, `b`, `p`, `y`, `k`).
pub(super) fn event_from_fields(
    channel: &ChannelName,
    id: u64,
    fields: &[Value],
) -> Result<Arc<Event>, StoreError> {
    let mut time = 0;
    let mut new = NewEvent {
        publisher: None,
        event_type: None,
        body: String::new(),
        idempotency_key: None,
    };
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(bad("entry fields"));
        };
        let (Some(name), Some(value)) = (text(name), text(value)) else {
            return Err(bad("entry field"));
        };
        match name.as_str() {
            "t" => time = value.parse().map_err(|_| bad("event time"))?,
            "b" => new.body = value,
            "p" => new.publisher = DeviceId::new(&value).ok(),
            "y" => new.event_type = EventType::new(&value).ok(),
            "k" => new.idempotency_key = Some(value),
            _ => {}
        }
    }
    Ok(Arc::new(Event::new(
        channel.clone(),
        id,
        time_of(time),
        new,
    )))
}

/// The events of a stream range (`XRANGE`, `XREVRANGE`), in the order given.
pub(super) fn events_from(
    channel: &ChannelName,
    value: &Value,
) -> Result<Vec<Arc<Event>>, StoreError> {
    match value {
        Value::Array(entries) => entries
            .iter()
            .map(|e| event_from_entry(channel, e))
            .collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("stream range")),
    }
}

/// The id of the first entry of a stream range, if any.
pub(super) fn first_entry_id(value: &Value) -> Option<u64> {
    let Value::Array(entries) = value else {
        return None;
    };
    let Value::Array(parts) = entries.first()? else {
        return None;
    };
    text(parts.first()?)?.split('-').next()?.parse().ok()
}

/// A value as a count or id: 0 for anything else.
pub(super) fn number(value: &Value) -> u64 {
    match value {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        other => text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
    }
}

/// A device record as the scripts keep it.
#[derive(Deserialize)]
struct RecordJson {
    fs: i64,
    ls: i64,
    op: String,
    #[serde(default)]
    lei: Option<String>,
    ld: u64,
    la: u64,
    n: u64,
}

impl RecordJson {
    fn into_record(self, channel: &ChannelName, device: DeviceId) -> DeviceRecord {
        DeviceRecord {
            channel: channel.clone(),
            device,
            first_seen: time_of(self.fs),
            last_seen: time_of(self.ls),
            last_op: DeviceOp::parse(&self.op).unwrap_or(DeviceOp::Feed),
            last_event_id: self.lei,
            last_delivered: self.ld,
            last_acked: self.la,
            receipts: self.n,
        }
    }
}

/// A device record from the JSON the scripts keep.
pub(super) fn record_from(
    channel: &ChannelName,
    device: &DeviceId,
    json: &str,
) -> Result<DeviceRecord, StoreError> {
    let parsed: RecordJson = serde_json::from_str(json).map_err(StoreError::backend)?;
    Ok(parsed.into_record(channel, device.clone()))
}

/// A receipt as the scripts keep it.
#[derive(Deserialize)]
struct ReceiptJson {
    q: u64,
    e: u64,
    d: String,
    s: String,
    t: i64,
}

impl ReceiptJson {
    fn into_receipt(self, channel: &ChannelName) -> Result<Receipt, StoreError> {
        Ok(Receipt {
            seq: self.q,
            channel: channel.clone(),
            event_id: self.e,
            device: DeviceId::new(&self.d).map_err(StoreError::backend)?,
            status: self.s.into(),
            time: time_of(self.t),
        })
    }
}

/// A receipt from the JSON the scripts keep (in `rc:ID`, `rlog` and the bus's notices).
pub(super) fn receipt_from(channel: &ChannelName, json: &str) -> Result<Receipt, StoreError> {
    serde_json::from_str::<ReceiptJson>(json)
        .map_err(StoreError::backend)?
        .into_receipt(channel)
}

/// A membership as the scripts keep it.
#[derive(Deserialize)]
struct MembershipJson {
    d: String,
    j: u64,
    #[serde(default)]
    l: Option<u64>,
    s: i64,
}

/// A membership from the JSON the scripts keep (in `mem` and the bus's notices).
pub(super) fn membership_from(channel: &ChannelName, json: &str) -> Result<Membership, StoreError> {
    let m: MembershipJson = serde_json::from_str(json).map_err(StoreError::backend)?;
    Ok(Membership {
        channel: channel.clone(),
        device: DeviceId::new(&m.d).map_err(StoreError::backend)?,
        joined_after: m.j,
        left_after: m.l,
        since: time_of(m.s),
    })
}
