//! The Server-Sent Events encoder: turns an event into the exact bytes of its SSE frame.
//!
//! Follows the WHATWG `text/event-stream` rules to the letter:
//! - each field is `name: value` and a client strips exactly one space after the colon, so a
//!   body line that starts with spaces keeps all but none of them;
//! - a body is split on CR, LF and CRLF into one `data:` line each, so a multi-line body arrives
//!   intact (line breaks arrive as LF, which is all an SSE client can deliver) and no body can
//!   end the frame early, forge a second event or set an `id:`;
//! - ids and event types come from validated values and can hold no line break.
//!
//! A frame is encoded once per event and its bytes are shared by every subscriber.

use bytes::Bytes;

/// The `event:` type of the notice sent when part of the requested history cannot be sent: no
/// longer retained, or damaged in the server's store.
pub const GAP_EVENT_TYPE: &str = "pere-gap";

/// The `event:` type of the notice sent when a client resumes from an id this server never gave
/// (its history was lost, e.g. a memory store restarted): the ids start over.
pub const RESET_EVENT_TYPE: &str = "pere-reset";

/// A comment line that keeps idle connections (and the proxies on their way) open. It ends with no
/// blank line: a blank line closes a block, and some clients (Python's `httpx-sse`) hand every
/// closed block that follows an `id:` to the application as a message, even one without data.
/// A comment alone changes no block, so every client sees exactly the events.
pub const KEEP_ALIVE_FRAME: &[u8] = b": keep-alive\n";

/// Encodes one event frame: `id`, optional `event`, then the body as `data:` lines.
pub fn encode_event(id: u64, event_type: Option<&str>, body: &str) -> Bytes {
    encode_frame(Some(id), event_type, body)
}

/// Encodes a notice of type `event_type` with no `id:`, so the client's last event id is left as
/// it was: for what is not a position in the stream (a completion, a gap, a reset).
pub fn encode_notice(event_type: &str, body: &str) -> Bytes {
    encode_frame(None, Some(event_type), body)
}

fn encode_frame(id: Option<u64>, event_type: Option<&str>, body: &str) -> Bytes {
    // Most bodies are one line: one quick scan says so, and they are written whole.
    let one_line = memchr::memchr2(b'\n', b'\r', body.as_bytes()).is_none();
    // Each line is `data: <line>\n`; the line breaks of the body are not written.
    let data_len = if one_line {
        7 + body.len()
    } else {
        split_lines(body).map(|line| 7 + line.len()).sum()
    };
    // itoa: the formatting machinery costs more than the digits, once per event.
    let mut digits = itoa::Buffer::new();
    let id = id.map(|id| digits.format(id).as_bytes());
    // The exact size up front: one allocation per event, however many subscribers share it,
    // and none more when it becomes `Bytes` (a vector with room to spare would be copied).
    let mut len = data_len + 1;
    if let Some(id) = id {
        len += 4 + id.len() + 1;
    }
    if let Some(t) = event_type {
        len += 8 + t.len();
    }
    let mut out = Vec::with_capacity(len);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id);
        out.push(b'\n');
    }
    if let Some(t) = event_type {
        debug_assert!(!t.contains(['\r', '\n']));
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(t.as_bytes());
        out.push(b'\n');
    }
    if one_line {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(body.as_bytes());
        out.push(b'\n');
    } else {
        for line in split_lines(body) {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    debug_assert_eq!(out.len(), len);
    Bytes::from(out)
}

/// The first bytes of every stream: the `retry:` field that tells a client how long to wait
/// before reconnecting, with no blank line after it. A browser applies the field as it reads the
/// line, and it becomes part of the first event's block: a block of its own would reach clients
/// that dispatch any block with a field (Python's `httpx-sse`) as an empty message.
pub fn encode_opening(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n"))
}

/// Splits on CRLF, CR and LF, as an SSE parser does. An empty body, or one that ends with a line
/// break, yields a final empty line, so the client rebuilds exactly the same text.
pub fn split_lines(body: &str) -> impl Iterator<Item = &str> {
    let bytes = body.as_bytes();
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let rest = &bytes[start..];
        match memchr::memchr2(b'\n', b'\r', rest) {
            Some(pos) => {
                let line = &body[start..start + pos];
                let skip = if rest[pos] == b'\r' && rest.get(pos + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start += pos + skip;
                Some(line)
            }
            None => {
                done = true;
                Some(&body[start..])
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal WHATWG event-stream parser, to check what a browser would see.
    fn parse(stream: &[u8]) -> Vec<(Option<String>, String, String)> {
        let text = std::str::from_utf8(stream).unwrap();
        let mut events = Vec::new();
        let (mut id, mut ty, mut data) = (None, String::new(), String::new());
        for line in split_lines(text) {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    events.push((
                        id.clone(),
                        std::mem::take(&mut ty),
                        std::mem::take(&mut data),
                    ));
                }
                ty.clear();
                continue;
            }
            let (field, value) = match line.find(':') {
                Some(0) => continue,
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(' ').unwrap_or(v))
                }
                None => (line, ""),
            };
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => ty = value.to_owned(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                _ => {}
            }
        }
        events
    }

    #[test]
    fn simple_event() {
        let frame = encode_event(42, None, "hello");
        assert_eq!(&frame[..], b"id: 42\ndata: hello\n\n");
    }

    #[test]
    fn typed_event() {
        let frame = encode_event(7, Some("order.created"), "{}");
        assert_eq!(&frame[..], b"id: 7\nevent: order.created\ndata: {}\n\n");
    }

    #[test]
    fn multi_line_bodies_arrive_intact_with_lf() {
        for (body, expected) in [
            ("a\nb", "a\nb"),
            ("a\r\nb", "a\nb"),
            ("a\rb", "a\nb"),
            ("a\n\nb", "a\n\nb"),
            ("trailing\n", "trailing\n"),
            ("\n", "\n"),
            ("", ""),
            ("  two leading spaces", "  two leading spaces"),
            (" one", " one"),
            ("ünïcødé ✓ 🍐", "ünïcødé ✓ 🍐"),
        ] {
            let events = parse(&encode_event(1, None, body));
            assert_eq!(events.len(), 1, "{body:?}");
            assert_eq!(events[0].2, expected, "{body:?}");
            assert_eq!(events[0].0.as_deref(), Some("1"));
        }
    }

    #[test]
    fn a_body_cannot_forge_events_or_ids() {
        let forged = "x\n\nid: 999\nevent: admin\ndata: forged\n\r\n";
        let events = parse(&encode_event(5, None, forged));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0.as_deref(), Some("5"));
        assert_eq!(events[0].1, "");
        assert_eq!(events[0].2, "x\n\nid: 999\nevent: admin\ndata: forged\n\n");
    }

    #[test]
    fn capacity_is_exact_enough() {
        let body = "a\nb\r\nc";
        let frame = encode_event(u64::MAX, Some("t"), body);
        assert!(frame.starts_with(b"id: 18446744073709551615\nevent: t\n"));
    }

    #[test]
    fn the_opening_and_keep_alives_dispatch_nothing_and_join_the_first_event() {
        let mut stream = encode_opening(3000).to_vec();
        stream.extend_from_slice(KEEP_ALIVE_FRAME);
        stream.extend_from_slice(&encode_event(1, None, "one"));
        stream.extend_from_slice(KEEP_ALIVE_FRAME);
        stream.extend_from_slice(KEEP_ALIVE_FRAME);
        stream.extend_from_slice(&encode_event(2, None, "two"));
        assert!(
            !stream.starts_with(b"retry: 3000\n\n") && !stream.windows(3).any(|w| w == b"\n\n\n")
        );
        let events = parse(&stream);
        let ids: Vec<_> = events
            .iter()
            .map(|e| e.0.clone().unwrap_or_default())
            .collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(
            stream.iter().filter(|&&b| b == b'\n').count(),
            1 + 1 + 3 + 2 + 3,
            "no blank line but the events' own"
        );
    }

    #[test]
    fn a_notice_leaves_the_last_id_as_it_was() {
        let mut stream = encode_event(8, Some("receipt"), "{}").to_vec();
        stream.extend_from_slice(&encode_notice("complete", "{\"id\":3}\nsecond line"));
        let events = parse(&stream);
        assert_eq!(
            events[1],
            (
                Some("8".to_owned()),
                "complete".to_owned(),
                "{\"id\":3}\nsecond line".to_owned()
            )
        );
        assert_eq!(
            &encode_notice("complete", "x")[..],
            b"event: complete\ndata: x\n\n"
        );
    }
}
