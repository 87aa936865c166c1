//! Any bytes through every parser a request meets before the hub: the feed loop's request head,
//! the query string, the device and resume headers, receipt bodies (forms and JSON), names and
//! ids. The only failure is a panic; every input must get an answer.
#![no_main]

use hyper::header::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use pere_server::feed_conn::parse_stream_head;
use pere_server::request::{self, Query};

fuzz_target!(|data: &[u8]| {
    let _ = parse_stream_head(data);
    // The first line is the query, the second a header value, the rest a receipt body.
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let query = Query::parse(Some(&String::from_utf8_lossy(parts.next().unwrap_or_default())));
    let value = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(value) {
        for name in ["device", "last-event-id", "last_event_id", "event", "content-type"] {
            headers.insert(name, value.clone());
        }
    }
    let _ = request::receipt_parts(&headers, &query, body);
    let _ = request::device(&headers, &query);
    let _ = request::resume(&headers, &query);
    let _ = request::event_type(&headers, &query);
    let text = String::from_utf8_lossy(value);
    let _ = request::channel(&text);
    let _ = request::event_id(&text);
});
