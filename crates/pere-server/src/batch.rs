//! Reading batches: NDJSON bodies (`Content-Type: application/x-ndjson`) split into lines once
//! ([`lines`], with the limits and errors every batch shares), then read as the events a push
//! publishes, one per line, plain or in the envelope form, with their types and keys
//! ([`events`]), or as the receipts a device sends, one per line ([`receipts`]).

use pere_core::{DeviceId, EventType, NewEvent, ReceiptLine};
use pere_proto::event::{valid_idempotency_key, MAX_IDEMPOTENCY_KEY_LEN};
use pere_proto::receipt::MAX_STATUS_LEN;
use pere_proto::wire::{BatchLine, ReceiptBatchLine};

use crate::error::ApiError;

/// The request header that asks for the envelope form: `Pere-Batch: envelope`.
pub const BATCH_HEADER: &str = "pere-batch";

/// Room a batch key leaves for the line suffix `.i` of the keys it gives (up to 99 999 lines).
pub const KEY_SUFFIX_ROOM: usize = 6;

/// The longest batch-level `Idempotency-Key`: each line's key `K.i` must still be a valid key.
pub const MAX_BATCH_KEY_LEN: usize = MAX_IDEMPOTENCY_KEY_LEN - KEY_SUFFIX_ROOM;

/// A batch push's parameters, read from its request line, headers and the server's limits
/// (not from its body): what every line of the batch shares. (Not `Batch`: that is the client's
/// batch builder, `pere_client::Batch`.)
#[derive(Debug, Clone, Default)]
pub struct BatchParams {
    /// The publishing device, as for a single push.
    pub publisher: Option<DeviceId>,
    /// The type of every event without one of its own (`?event=` or the `event` header).
    pub event_type: Option<EventType>,
    /// The batch's `Idempotency-Key` `K`: line `i` (from 0) without a key of its own gets `K.i`.
    pub key: Option<String>,
    /// Lines are envelopes (`Pere-Batch: envelope`) rather than bodies.
    pub envelope: bool,
    /// The most lines taken.
    pub max_events: usize,
}

/// The batch form a push's `Pere-Batch` header asks for: `envelope`, or none (plain lines).
///
/// # Errors
/// 400 `bad_batch_form` for any other value: a mistyped `envelope` would otherwise publish each
/// envelope line as a body.
pub fn envelope_form(header: Option<&[u8]>) -> Result<bool, ApiError> {
    match header.map(<[u8]>::trim_ascii) {
        None => Ok(false),
        Some(b"envelope") => Ok(true),
        Some(_) => Err(ApiError::bad_request(
            "bad_batch_form",
            "Pere-Batch takes one value, `envelope` (leave it out for plain lines)",
        )),
    }
}

/// Checks a batch-level key: it must leave room for the line suffixes.
///
/// # Errors
/// 400 `bad_idempotency_key` for a key longer than [`MAX_BATCH_KEY_LEN`].
pub fn check_batch_key(key: &str) -> Result<(), ApiError> {
    if key.len() > MAX_BATCH_KEY_LEN {
        return Err(ApiError::bad_request(
            "bad_idempotency_key",
            format!("the Idempotency-Key of a batch must be at most {MAX_BATCH_KEY_LEN} characters (line i gets the key K.i)"),
        ));
    }
    Ok(())
}

/// The events of a batch body, in line order (see [`lines`]).
///
/// # Errors
/// As [`lines`]; a line is refused when it is empty, not UTF-8, not JSON (plain form: NDJSON
/// lines are JSON values; text goes in an envelope), or not a valid envelope (its type or key
/// included).
pub fn events(body: &[u8], batch: &BatchParams) -> Result<Vec<NewEvent>, ApiError> {
    lines(body, batch.max_events, "event", |i, line| {
        event(i, line, batch)
    })
}

/// The receipts of a batch body (one `{"id", "status", "key"}` per line), in line order:
/// without a status a receipt says `ok`, as a single one does; with a batch key `K` (the
/// request's `Idempotency-Key`), a line without a key of its own gets `K.i`.
///
/// # Errors
/// As [`lines`]; a line is refused when it is empty, not UTF-8, not such an object (other
/// members included), or its status or key is not one.
pub fn receipts(
    body: &[u8],
    max_receipts: usize,
    key: Option<&str>,
) -> Result<Vec<ReceiptLine>, ApiError> {
    lines(body, max_receipts, "receipt", |i, line| {
        receipt(i, line, key)
    })
}

/// The lines of a batch body, each read by `read` (given its index from 0), in order. Lines are
/// split on `\n`, a trailing `\r` is removed, and a final empty line (after the last `\n`) is
/// ignored. `what` names one line's item in messages (`event`, `receipt`).
///
/// # Errors
/// 400 `empty_batch` for an empty body; 413 `batch_too_large` for more than `max` lines;
/// 400 `bad_batch_line`, naming the line (from 1) and why `read` refused it.
pub fn lines<T>(
    body: &[u8],
    max: usize,
    what: &str,
    mut read: impl FnMut(usize, &[u8]) -> Result<T, String>,
) -> Result<Vec<T>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_batch",
            format!("a batch needs at least one line, one {what} per line"),
        ));
    }
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let count = memchr::memchr_iter(b'\n', body).count() + 1;
    if count > max {
        return Err(ApiError::new(
            hyper::StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("a batch carries at most {max} {what}s; this one has {count} lines"),
        ));
    }
    let mut items = Vec::with_capacity(count);
    let mut rest = body;
    for i in 0..count {
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        items.push(read(i, line).map_err(|why| bad_line(i, &why))?);
    }
    Ok(items)
}

/// Line `i` (from 0) of a batch of receipts, or why it is refused.
fn receipt(i: usize, line: &[u8], batch_key: Option<&str>) -> Result<ReceiptLine, String> {
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8 text".to_owned())?;
    if line.trim().is_empty() {
        return Err(r#"empty (a receipt line is {"id": N, "status": "S"})"#.to_owned());
    }
    // Serde would also take the members in order from an array: a receipt is an object.
    if !line.trim_start().starts_with('{') {
        return Err("not a receipt: a JSON object is expected".to_owned());
    }
    let parsed: ReceiptBatchLine =
        serde_json::from_str(line).map_err(|err| format!("not a receipt: {err}"))?;
    let status = parsed.status.unwrap_or_else(|| "ok".to_owned());
    if status.len() > MAX_STATUS_LEN {
        return Err(format!("status is longer than {MAX_STATUS_LEN} bytes"));
    }
    let key = match parsed.key {
        Some(key) if valid_idempotency_key(&key) => Some(key),
        Some(_) => {
            return Err(format!(
                "a key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ))
        }
        None => batch_key.map(|k| format!("{k}.{i}")),
    };
    Ok(ReceiptLine {
        event_id: parsed.id,
        status: status.into(),
        key,
    })
}

fn bad_line(i: usize, why: &str) -> ApiError {
    ApiError::bad_request("bad_batch_line", format!("line {}: {why}", i + 1))
}

/// Line `i` (from 0) as an event, or why it is refused.
fn event(i: usize, line: &[u8], batch: &BatchParams) -> Result<NewEvent, String> {
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8 text".to_owned())?;
    if line.is_empty() {
        return Err(empty_body());
    }
    let batch_key = || batch.key.as_ref().map(|k| format!("{k}.{i}"));
    if !batch.envelope {
        serde_json::from_str::<serde::de::IgnoredAny>(line).map_err(|err| {
            format!(
                "not a JSON value ({err}); send text as {{\"text\": …}} with Pere-Batch: envelope"
            )
        })?;
        return Ok(NewEvent {
            publisher: batch.publisher.clone(),
            event_type: batch.event_type.clone(),
            body: line.to_owned(),
            idempotency_key: batch_key(),
        });
    }
    // Serde would also take the members in order from an array: an envelope is an object.
    if !line.trim_start().starts_with('{') {
        return Err("not a batch envelope: a JSON object is expected".to_owned());
    }
    let envelope: BatchLine<'_> =
        serde_json::from_str(line).map_err(|err| format!("not a batch envelope: {err}"))?;
    let body = match (envelope.data, envelope.text) {
        (Some(data), None) => data.get().to_owned(),
        (None, Some(text)) if text.is_empty() => return Err(empty_body()),
        (None, Some(text)) => text,
        _ => return Err("an envelope has exactly one of `data` and `text`".to_owned()),
    };
    let event_type = match envelope.event {
        Some(name) => Some(EventType::new(&name).map_err(|err| err.to_string())?),
        None => batch.event_type.clone(),
    };
    let idempotency_key = match envelope.idempotency_key {
        Some(key) if valid_idempotency_key(&key) => Some(key),
        Some(_) => {
            return Err(format!(
            "an idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
        ))
        }
        None => batch_key(),
    };
    Ok(NewEvent {
        publisher: batch.publisher.clone(),
        event_type,
        body,
        idempotency_key,
    })
}

fn empty_body() -> String {
    "empty (an event body must not be empty: browsers never dispatch an event with empty data)"
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(max_events: usize) -> BatchParams {
        BatchParams {
            max_events,
            ..BatchParams::default()
        }
    }

    fn refusal(body: &str, batch: &BatchParams) -> (u16, String, String) {
        let err = events(body.as_bytes(), batch).unwrap_err();
        (
            err.status.as_u16(),
            err.code.to_owned(),
            err.message.clone(),
        )
    }

    #[test]
    fn lines_are_bodies_exactly_as_written() {
        let batch = BatchParams {
            key: Some("K".into()),
            ..plain(10)
        };
        let got = events(b"{\"a\": 1}\r\n[1,2]\n  \"s\"  \n", &batch).unwrap();
        let bodies: Vec<&str> = got.iter().map(|e| e.body.as_str()).collect();
        assert_eq!(bodies, ["{\"a\": 1}", "[1,2]", "  \"s\"  "]);
        let keys: Vec<_> = got
            .iter()
            .map(|e| e.idempotency_key.as_deref().unwrap())
            .collect();
        assert_eq!(keys, ["K.0", "K.1", "K.2"]);
        assert_eq!(
            events(b"1", &plain(10)).unwrap()[0].idempotency_key,
            None,
            "no batch key, no keys"
        );
    }

    #[test]
    fn bad_lines_are_named_by_number() {
        assert_eq!(refusal("", &plain(10)).1, "empty_batch");
        let (status, code, message) = refusal("1\n\n2\n", &plain(10));
        assert_eq!((status, code.as_str()), (400, "bad_batch_line"));
        assert!(message.starts_with("line 2: empty"), "{message}");
        assert!(refusal("1\nhello\n", &plain(10))
            .2
            .starts_with("line 2: not a JSON value"));
        let err = events(b"1\n\xff\n", &plain(10)).unwrap_err();
        assert!(
            err.message.starts_with("line 2: not UTF-8"),
            "{}",
            err.message
        );
        assert_eq!(refusal("1\n2\n3", &plain(2)).0, 413);
        assert_eq!(refusal("1\n2\n3", &plain(2)).1, "batch_too_large");
        assert!(
            events(b"1\n2\n", &plain(2)).is_ok(),
            "the final newline ends the last line"
        );
    }

    #[test]
    fn envelopes_give_each_event_its_type_and_key() {
        let batch = BatchParams {
            envelope: true,
            key: Some("K".into()),
            event_type: Some(EventType::new("default").unwrap()),
            ..plain(10)
        };
        let body = concat!(
            r#"{"data": {"x": [1, 2]}, "event": "tick", "idempotency_key": "own"}"#,
            "\n",
            r#"{"text": "plain words"}"#,
            "\n",
            r#"{"data": null}"#,
        );
        let got = events(body.as_bytes(), &batch).unwrap();
        assert_eq!(got[0].body, r#"{"x": [1, 2]}"#, "the exact JSON text");
        assert_eq!(got[0].event_type.as_ref().unwrap().as_str(), "tick");
        assert_eq!(got[0].idempotency_key.as_deref(), Some("own"));
        assert_eq!(
            (got[1].body.as_str(), got[1].idempotency_key.as_deref()),
            ("plain words", Some("K.1"))
        );
        assert_eq!(got[1].event_type.as_ref().unwrap().as_str(), "default");
        assert_eq!(got[2].body, "null");
        for (line, why) in [
            (r#"{"data": 1, "text": "a"}"#, "exactly one"),
            (r#"{"event": "a"}"#, "exactly one"),
            (r#"{"data": 1, "extra": 2}"#, "unknown field"),
            (r#"{"text": ""}"#, "empty"),
            (r#"{"text": "a", "event": "a b"}"#, "event type"),
            (
                r#"{"text": "a", "idempotency_key": "a b"}"#,
                "idempotency_key",
            ),
            ("[1]", "not a batch envelope"),
        ] {
            let message = refusal(&format!("{{\"text\": \"ok\"}}\n{line}"), &batch).2;
            assert!(
                message.starts_with("line 2: ") && message.contains(why),
                "{line}: {message}"
            );
        }
    }

    #[test]
    fn receipt_lines_are_read_with_the_same_limits_and_errors() {
        let body = concat!(
            r#"{"id": 3, "status": "read", "key": "own"}"#,
            "\r\n",
            r#"{"id": 4}"#,
            "\n",
        );
        let got = receipts(body.as_bytes(), 10, Some("K")).unwrap();
        assert_eq!(
            got,
            [
                ReceiptLine {
                    event_id: 3,
                    status: "read".into(),
                    key: Some("own".into())
                },
                ReceiptLine {
                    event_id: 4,
                    status: "ok".into(),
                    key: Some("K.1".into())
                },
            ]
        );
        assert_eq!(receipts(b"{\"id\":1}", 10, None).unwrap()[0].key, None);
        let refused = |body: &str, max: usize| {
            let err = receipts(body.as_bytes(), max, None).unwrap_err();
            (err.status.as_u16(), err.code, err.message)
        };
        assert_eq!(refused("", 10).1, "empty_batch");
        assert_eq!(refused("{\"id\":1}\n{\"id\":2}", 1).1, "batch_too_large");
        for (line, why) in [
            ("", "empty"),
            ("[1]", "a JSON object"),
            (r#"{"id": -1}"#, "not a receipt"),
            (r#"{"id": "1"}"#, "not a receipt"),
            (r#"{"status": "ok"}"#, "missing field `id`"),
            (r#"{"id": 1, "device": "D1"}"#, "unknown field"),
            (r#"{"id": 1, "key": "a b"}"#, "key"),
        ] {
            let (status, code, message) =
                refused(&format!("{{\"id\":1}}\n{line}\n{{\"id\":2}}"), 10);
            assert_eq!((status, code), (400, "bad_batch_line"), "{line}");
            assert!(
                message.starts_with("line 2: ") && message.contains(why),
                "{line}: {message}"
            );
        }
        let long = format!(
            r#"{{"id": 1, "status": "{}"}}"#,
            "s".repeat(MAX_STATUS_LEN + 1)
        );
        assert!(refused(&long, 10).2.contains("status is longer"));
    }

    #[test]
    fn a_batch_key_leaves_room_for_line_numbers() {
        assert!(check_batch_key(&"k".repeat(MAX_BATCH_KEY_LEN)).is_ok());
        assert_eq!(
            check_batch_key(&"k".repeat(MAX_BATCH_KEY_LEN + 1))
                .unwrap_err()
                .code,
            "bad_idempotency_key"
        );
    }
}
