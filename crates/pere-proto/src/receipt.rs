//! The receipt ledger's records: return receipts ([`Receipt`]) and what their statuses say
//! ([`StatusClass`]), what is known of each device on a channel ([`DeviceRecord`], updated
//! through [`DeviceTouch`]), who owes an event a receipt ([`ReceiptSummary`]) and when it has
//! them all ([`Completion`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::name::{ChannelName, DeviceId};

/// The longest receipt status, in bytes: a status reports local work, it is not a payload.
pub const MAX_STATUS_LEN: usize = 1024;

/// A return receipt: a device says what it did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The receipt's position in the channel's receipt stream, given by the store (0 before):
    /// strictly increasing per channel, not necessarily contiguous.
    pub seq: u64,
    /// The event's channel.
    pub channel: ChannelName,
    /// The event acknowledged.
    pub event_id: u64,
    /// The acknowledging device.
    pub device: DeviceId,
    /// The device's status text, e.g. `rx ok`: shared, since a receipt is copied into the
    /// store's views, the stream and the notices, and the receipts of one request share theirs.
    pub status: Arc<str>,
    /// When the server recorded it.
    pub time: DateTime<Utc>,
}

/// What a receipt's status says of the device's work, by one rule for every view of it (the
/// `pere_receipts_total{status_class}` metric, the dashboard's colours, the receipt views'
/// `class`).
///
/// A status is free text (`rx ok`, `shipped`, `failed: disk full`); it is read as words (runs of
/// letters and digits, any case). **Failed** when any word is one of [`FAILURE_WORDS`] (`failed`,
/// `error`, `rejected`, `not`, …); else **ok** when any word is one of [`SUCCESS_WORDS`] (`ok`,
/// `done`, `shipped`, `delivered`, …); else **other**. A failure word wins, so `not ok` and
/// `ok: 2 errors` are failures; `rx ok`, the original clients' status, and `ok`, the status of a
/// receipt that gives none, are ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// The device did what the event asked (`ok`, `rx ok`, `done`, `shipped`).
    Ok,
    /// The device says it failed (`failed`, `error: …`, `rejected`, `not ok`).
    Failed,
    /// A status that says neither: acknowledged, but read the status itself (`queued`, `42%`).
    Other,
}

/// The words that make a status [`StatusClass::Ok`] (lower case), unless a failure word is
/// there too.
pub const SUCCESS_WORDS: &[&str] = &[
    "ok",
    "okay",
    "done",
    "success",
    "succeeded",
    "successful",
    "delivered",
    "received",
    "shipped",
    "handled",
    "processed",
    "completed",
    "accepted",
    "acked",
];

/// The words that make a status [`StatusClass::Failed`] (lower case), wherever they are.
pub const FAILURE_WORDS: &[&str] = &[
    "fail",
    "failed",
    "failure",
    "error",
    "errors",
    "err",
    "rejected",
    "refused",
    "denied",
    "invalid",
    "aborted",
    "cancelled",
    "canceled",
    "timeout",
    "nack",
    "nok",
    "ko",
    "not",
];

impl StatusClass {
    /// The class of `status`: see [`StatusClass`] for the rule.
    pub fn of(status: &str) -> Self {
        let mut ok = false;
        for word in status
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let is = |words: &[&str]| words.iter().any(|w| w.eq_ignore_ascii_case(word));
            if is(FAILURE_WORDS) {
                return StatusClass::Failed;
            }
            ok |= is(SUCCESS_WORDS);
        }
        if ok {
            StatusClass::Ok
        } else {
            StatusClass::Other
        }
    }

    /// Its name in metrics labels and JSON: `ok`, `failed` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Ok => "ok",
            StatusClass::Failed => "failed",
            StatusClass::Other => "other",
        }
    }

    /// Every class, in the order of [`StatusClass::as_str`]'s list.
    pub const ALL: [StatusClass; 3] = [StatusClass::Ok, StatusClass::Failed, StatusClass::Other];
}

/// The last thing a device did on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOp {
    /// Opened a feed.
    Feed,
    /// Sent a receipt.
    Feedback,
    /// Its last feed closed.
    Disconnect,
    /// It was registered as a recipient (`PUT /devices/...`).
    Register,
}

impl DeviceOp {
    /// The word the admin views and the original protocol use.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceOp::Feed => "feed",
            DeviceOp::Feedback => "feedback",
            DeviceOp::Disconnect => "disconnect",
            DeviceOp::Register => "register",
        }
    }

    /// The word of the original protocol, which knows two operations: `feed` (a feed request)
    /// and `feedback` (a receipt). Going offline and being registered are not among them; a
    /// record they created (a device registered before it ever connected) shows `feed`, as the
    /// device is expected from then on just as if it had opened a feed.
    pub fn original(self) -> &'static str {
        match self {
            DeviceOp::Feedback => "feedback",
            DeviceOp::Feed | DeviceOp::Disconnect | DeviceOp::Register => "feed",
        }
    }

    /// Whether the operation is one of the original protocol's, which set the record's `op` and
    /// `Last-Event-Id`; the others leave both as the last feed or receipt left them.
    pub fn is_original(self) -> bool {
        matches!(self, DeviceOp::Feed | DeviceOp::Feedback)
    }

    /// Parses [`DeviceOp::as_str`] back.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "feed" => Some(DeviceOp::Feed),
            "feedback" => Some(DeviceOp::Feedback),
            "disconnect" => Some(DeviceOp::Disconnect),
            "register" => Some(DeviceOp::Register),
            _ => None,
        }
    }
}

/// What the ledger keeps of one device on one channel; it outlives restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The channel.
    pub channel: ChannelName,
    /// The device.
    pub device: DeviceId,
    /// First time the device was seen on the channel.
    pub first_seen: DateTime<Utc>,
    /// Last time the device was seen on the channel.
    pub last_seen: DateTime<Utc>,
    /// The last thing it did.
    pub last_op: DeviceOp,
    /// The original protocol's `Last-Event-Id`: the header a feed sent, or the id a receipt named.
    pub last_event_id: Option<String>,
    /// The highest event id written to one of its streams (saved when its streams close).
    pub last_delivered: u64,
    /// The highest event id it acknowledged.
    pub last_acked: u64,
    /// How many receipts it sent on this channel.
    pub receipts: u64,
}

/// One update of a device record, applied atomically by the store so concurrent updates never
/// lose a field: cursors only move forward, counters only add.
#[derive(Debug, Clone)]
pub struct DeviceTouch {
    /// The channel.
    pub channel: ChannelName,
    /// The device.
    pub device: DeviceId,
    /// What it did.
    pub op: DeviceOp,
    /// When.
    pub at: DateTime<Utc>,
    /// The original protocol's `Last-Event-Id` for this operation.
    pub last_event_id: Option<String>,
    /// A delivery cursor to raise `last_delivered` to.
    pub delivered: u64,
}

impl DeviceRecord {
    /// A fresh record for a device first seen by `touch`.
    pub fn first(touch: &DeviceTouch) -> Self {
        DeviceRecord {
            channel: touch.channel.clone(),
            device: touch.device.clone(),
            first_seen: touch.at,
            last_seen: touch.at,
            last_op: touch.op,
            last_event_id: touch.last_event_id.clone(),
            last_delivered: touch.delivered,
            last_acked: 0,
            receipts: 0,
        }
    }

    /// Applies a touch: the rule every backend follows. Going offline or being registered moves
    /// `last_seen` only: `last_op` and `last_event_id` keep what the last feed or receipt said,
    /// so "what did this device last acknowledge" survives its going offline, as in the original.
    pub fn apply(&mut self, touch: &DeviceTouch) {
        self.last_seen = self.last_seen.max(touch.at);
        if touch.op.is_original() {
            self.last_op = touch.op;
            self.last_event_id = touch.last_event_id.clone();
        }
        self.last_delivered = self.last_delivered.max(touch.delivered);
    }

    /// Applies a receipt: the rule every backend follows.
    pub fn apply_receipt(&mut self, receipt: &Receipt) {
        self.last_seen = self.last_seen.max(receipt.time);
        self.last_op = DeviceOp::Feedback;
        // The text rewritten in place: a device's receipts would each allocate a new one. itoa:
        // the formatting machinery cost more than the digits, once per receipt.
        let text = self.last_event_id.get_or_insert_with(String::new);
        text.clear();
        text.push_str(itoa::Buffer::new().format(receipt.event_id));
        self.last_acked = self.last_acked.max(receipt.event_id);
        // A receipt proves the event reached the device, whatever the stream bookkeeping saw.
        self.last_delivered = self.last_delivered.max(receipt.event_id);
        self.receipts += 1;
    }
}

/// A device's time as a recipient of a channel: it is expected to acknowledge the events with
/// ids in `(joined_after, left_after]` (no upper bound while it is still a recipient). Fixing the
/// bounds by event id is what fixes each event's set of expected recipients when it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The channel.
    pub channel: ChannelName,
    /// The device.
    pub device: DeviceId,
    /// The channel's last id when the device became a recipient.
    pub joined_after: u64,
    /// The channel's last id when it stopped being one, if it did.
    pub left_after: Option<u64>,
    /// When it became a recipient.
    pub since: DateTime<Utc>,
}

impl Membership {
    /// Whether the device is expected to acknowledge event `id`.
    pub fn expects(&self, id: u64) -> bool {
        id > self.joined_after && self.left_after.is_none_or(|left| id <= left)
    }

    /// Whether the membership is still open.
    pub fn is_current(&self) -> bool {
        self.left_after.is_none()
    }
}

/// For one event: who acknowledged it, who got it without acknowledging, who has not got it.
#[derive(Debug, Clone)]
pub struct ReceiptSummary {
    /// The channel.
    pub channel: ChannelName,
    /// The event.
    pub event_id: u64,
    /// The latest receipt of each device that acknowledged, by device id.
    pub acknowledged: Vec<Receipt>,
    /// Devices the event was delivered to that have not acknowledged it.
    pub delivered: Vec<DeviceId>,
    /// Expected recipients the event has not reached yet.
    pub pending: Vec<DeviceId>,
    /// How many recipients were expected when the event was published.
    pub expected: usize,
    /// When each delivered or pending device was last seen on the channel, for those seen at all:
    /// a recipient gone for days is why an event never completes.
    pub last_seen: BTreeMap<DeviceId, DateTime<Utc>>,
}

impl ReceiptSummary {
    /// Whether every expected recipient acknowledged.
    pub fn complete(&self) -> bool {
        self.delivered.is_empty() && self.pending.is_empty()
    }
}

/// Sent when an event becomes fully acknowledged by its expected recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The event.
    pub event_id: u64,
    /// How many recipients were expected (all acknowledged).
    pub expected: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classed_by_their_words() {
        for (status, class) in [
            ("ok", StatusClass::Ok),
            ("rx ok", StatusClass::Ok),
            ("RX OK", StatusClass::Ok),
            ("done", StatusClass::Ok),
            ("shipped", StatusClass::Ok),
            ("done by the app", StatusClass::Ok),
            ("delivered:200", StatusClass::Ok),
            ("failed", StatusClass::Failed),
            ("error: disk full", StatusClass::Failed),
            ("not ok", StatusClass::Failed),
            ("ok, 2 errors", StatusClass::Failed),
            ("rejected", StatusClass::Failed),
            ("queued", StatusClass::Other),
            ("42%", StatusClass::Other),
            ("okapi", StatusClass::Other),
            ("", StatusClass::Other),
        ] {
            assert_eq!(StatusClass::of(status), class, "{status:?}");
        }
        assert_eq!(
            StatusClass::ALL.map(StatusClass::as_str),
            ["ok", "failed", "other"]
        );
    }
}
