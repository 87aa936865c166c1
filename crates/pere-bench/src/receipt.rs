//! How subscribers acknowledge: the receipt styles, the bytes of each receipt request, and which
//! events a cumulative receipt covers. Pure: the tasks that send them are in `load`.

use serde_json::Value;

use crate::http;

/// How the subscribers of the receipts scenario send their receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReceiptStyle {
    /// `{"device","id","status"}` JSON per event, over `--receipt-conns` connections that
    /// all devices share: the server's receipt path without a connection per device.
    Shared,
    /// As devices running the seed's client (`subscriber.rb`) send them: each device its own
    /// keep-alive connection, one form request (`status=rx+ok`, headers `device` and
    /// `last_event_id`) per delivery.
    PerEvent,
    /// As pere.js and the Rust `Subscriber` send them: each device its own keep-alive
    /// connection and one request in flight; events that arrive meanwhile are acknowledged by
    /// the next request, one cumulative `{"device","upto","status"}`.
    Coalesced,
}

impl ReceiptStyle {
    /// The style's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ReceiptStyle::Shared => "shared",
            ReceiptStyle::PerEvent => "per-event",
            ReceiptStyle::Coalesced => "coalesced",
        }
    }

    /// Whether every device has a receipt connection of its own.
    pub fn per_device(self) -> bool {
        self != ReceiptStyle::Shared
    }
}

/// An id as a JSON value: PERE's ids are numbers; other servers' (Nchan's `1700000000:0`) are
/// sent as strings.
fn json_id(id: &str) -> String {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        id.to_owned()
    } else {
        Value::String(id.to_owned()).to_string()
    }
}

/// Who sends a receipt: a device named in headers and body, or (with a token) the token's
/// device, named nowhere else.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    /// The identity header: `("device", name)` or `("Authorization", "Bearer …")`.
    pub identity: (&'static str, &'a str),
    /// The device's name, when the request names it.
    pub device: Option<&'a str>,
}

/// `shared`: `{"device","id","status"}` for one event.
pub fn single(path: &str, host: &str, sender: Sender<'_>, id: &str) -> Vec<u8> {
    let id = json_id(id);
    let body = match sender.device {
        Some(device) => format!("{{\"device\":\"{device}\",\"id\":{id},\"status\":\"ok\"}}"),
        None => format!("{{\"id\":{id},\"status\":\"ok\"}}"),
    };
    let headers = [("Content-Type", "application/json"), sender.identity];
    http::request("POST", path, host, &headers, Some(body.as_bytes()))
}

/// `per-event`: the seed's form, `status=rx+ok` with the device and the event id in headers.
pub fn seed_form(path: &str, host: &str, sender: Sender<'_>, id: &str) -> Vec<u8> {
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        sender.identity,
        ("last_event_id", id),
    ];
    http::request("POST", path, host, &headers, Some(b"status=rx+ok"))
}

/// `coalesced`: `{"device","upto","status"}`, every event the device owes up to `upto`.
pub fn cumulative(path: &str, host: &str, sender: Sender<'_>, upto: &str) -> Vec<u8> {
    let upto = json_id(upto);
    let body = match sender.device {
        Some(device) => format!("{{\"device\":\"{device}\",\"upto\":{upto},\"status\":\"ok\"}}"),
        None => format!("{{\"upto\":{upto},\"status\":\"ok\"}}"),
    };
    let headers = [("Content-Type", "application/json"), sender.identity];
    http::request("POST", path, host, &headers, Some(body.as_bytes()))
}

/// The id a cumulative receipt names for events received since the last one (in arrival
/// order): the greatest, since a feed may deliver a replayed event after a newer one; `None`
/// when there is none or when an id is not a number (then no `upto` can cover it).
pub fn upto<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(u64, &str)> = None;
    for id in ids {
        let n: u64 = id.parse().ok()?;
        if best.is_none_or(|(b, _)| n > b) {
            best = Some((n, id));
        }
    }
    best.map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: Sender<'static> = Sender {
        identity: ("device", "d7"),
        device: Some("d7"),
    };
    const TOKEN: Sender<'static> = Sender {
        identity: ("Authorization", "Bearer t"),
        device: None,
    };

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn the_seed_form_is_what_subscriber_rb_sends() {
        assert_eq!(
            text(seed_form("/feedback/c0", "h:1", DEVICE, "42")),
            "POST /feedback/c0 HTTP/1.1\r\nHost: h:1\r\n\
             Content-Type: application/x-www-form-urlencoded\r\ndevice: d7\r\nlast_event_id: 42\r\n\
             Content-Length: 12\r\n\r\nstatus=rx+ok"
        );
        // Nchan's ids go as they came.
        assert!(text(seed_form("/f", "h", TOKEN, "1700000000:0"))
            .contains("Authorization: Bearer t\r\nlast_event_id: 1700000000:0\r\n"));
    }

    #[test]
    fn json_receipts_name_the_device_unless_a_token_does() {
        let one = text(single("/feedback/c0", "h", DEVICE, "5"));
        assert!(one.ends_with("\r\n\r\n{\"device\":\"d7\",\"id\":5,\"status\":\"ok\"}"));
        assert!(one.contains("Content-Type: application/json\r\ndevice: d7\r\n"));
        let nchan = text(single("/f", "h", DEVICE, "17:0"));
        assert!(nchan.ends_with("\"id\":\"17:0\",\"status\":\"ok\"}"));
        let all = text(cumulative("/feedback/c0", "h", DEVICE, "9"));
        assert!(all.ends_with("\r\n\r\n{\"device\":\"d7\",\"upto\":9,\"status\":\"ok\"}"));
        let token = text(cumulative("/f", "h", TOKEN, "9"));
        assert!(token.ends_with("\r\n\r\n{\"upto\":9,\"status\":\"ok\"}"));
        assert!(!token.contains("device"));
    }

    #[test]
    fn a_cumulative_receipt_names_the_greatest_id_received_since_the_last() {
        assert_eq!(upto(["3"]), Some("3"));
        assert_eq!(upto(["3", "5", "4"]), Some("5"));
        assert_eq!(upto(["9", "10"]), Some("10"), "by number, not text");
        assert_eq!(upto([]), None);
        assert_eq!(
            upto(["3", "17:0"]),
            None,
            "no upto covers an id that is not a number"
        );
    }
}
