//! One push: `POST /push/:channel` with the body, the `device` header, an optional `event` type
//! and the event's `Idempotency-Key`. Sending it, and again after a failure, is
//! `pere_client::retry`'s job; every attempt carries the same key, so a retry never stores the
//! event twice.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, RequestBuilder, Url};

use crate::payload::Body;

/// A push is one small request; a server that takes longer than this counts as failed, and the
/// event is sent again.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What one event's push says besides its body: who sends it, its type and its idempotency key.
#[derive(Debug, Clone, Copy)]
pub struct PushHeaders<'a> {
    /// The `device` header.
    pub device: &'a str,
    /// The `event` header, if any.
    pub event_type: Option<&'a str>,
    /// The `Idempotency-Key` header: the same for every attempt at one event.
    pub key: &'a str,
}

/// The push request for `body`.
pub fn push_request(
    client: &Client,
    url: &Url,
    headers: PushHeaders<'_>,
    body: &Body,
) -> RequestBuilder {
    let PushHeaders {
        device,
        event_type,
        key,
    } = headers;
    let content_type = if body.json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut request = client
        .post(url.clone())
        .header("device", device)
        .header(CONTENT_TYPE, content_type)
        .header("idempotency-key", key)
        .body(body.text.clone())
        .timeout(TIMEOUT);
    if let Some(event_type) = event_type {
        request = request.header("event", event_type);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_original_publishers() {
        let client = Client::new();
        let url = Url::parse("http://h:1/push/CHANNEL_1").unwrap();
        let body = Body::text(r#"{"id":1}"#.into());
        let headers = PushHeaders {
            device: "P0039123456789",
            event_type: None,
            key: "k1",
        };
        let req = push_request(&client, &url, headers, &body).build().unwrap();
        assert_eq!(req.method(), reqwest::Method::POST);
        assert_eq!(req.url().as_str(), "http://h:1/push/CHANNEL_1");
        assert_eq!(req.headers()["device"], "P0039123456789");
        assert_eq!(req.headers()["content-type"], "application/json");
        assert!(req.headers().get("event").is_none());
        assert_eq!(req.headers()["idempotency-key"], "k1");
        assert_eq!(
            req.body().and_then(|b| b.as_bytes()),
            Some(&br#"{"id":1}"#[..])
        );

        let headers = PushHeaders {
            device: "P1",
            event_type: Some("tick"),
            key: "k2",
        };
        let req = push_request(&client, &url, headers, &Body::text("hi".into()))
            .build()
            .unwrap();
        assert_eq!(req.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(req.headers()["event"], "tick");
    }
}
