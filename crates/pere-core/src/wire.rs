//! JSON shapes shared by the server and the command-line tools. Kept apart from the domain types
//! so that the wire format changes only on purpose.

use serde::{Deserialize, Serialize};

use crate::event::{format_time, Event};
use crate::receipt::Receipt;

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
        PushAccepted { channel: event.channel.to_string(), id: event.id, time: format_time(event.time) }
    }
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
            status: r.status.clone(),
            time: format_time(r.time),
        }
    }
}

/// The JSON form of a receipt a device sends: `{"device", "id", "status"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRequest {
    /// The acknowledging device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The event id, as a number or a numeric string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    /// The status of the device's local work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The data of the `pere-gap` SSE event: ids `from..=to` are no longer retained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapNotice {
    /// First missing id.
    pub from: u64,
    /// Last missing id.
    pub to: u64,
}

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
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
