//! One push: `POST /push/:channel` with the body, the `device` header and an optional `event` type.

use std::time::Duration;

use pere_core::wire::PushAccepted;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, RequestBuilder, StatusCode, Url};

use crate::output::{describe_answer, describe_transport};
use crate::payload::Body;

/// A push is one small request; a server that takes longer than this counts as failed, and the
/// event is sent again.
const TIMEOUT: Duration = Duration::from_secs(30);

/// How a push ended.
#[derive(Debug)]
pub enum PushOutcome {
    /// Stored; the server's answer, when it sent one (the original server answered 204).
    Accepted(Option<PushAccepted>),
    /// Failed in a way that may pass (no answer, 5xx): try the same event again.
    Retryable(String),
    /// Refused for good (4xx: bad channel, body too large, …): trying again cannot help.
    Refused(String),
}

/// The push request for `body`.
pub fn push_request(client: &Client, url: &Url, device: &str, event_type: Option<&str>, body: &Body) -> RequestBuilder {
    let content_type = if body.json { "application/json" } else { "text/plain; charset=utf-8" };
    let mut request = client
        .post(url.clone())
        .header("device", device)
        .header(CONTENT_TYPE, content_type)
        .body(body.text.clone())
        .timeout(TIMEOUT);
    if let Some(event_type) = event_type {
        request = request.header("event", event_type);
    }
    request
}

/// Sends one push.
pub async fn push(request: RequestBuilder) -> PushOutcome {
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) if err.is_builder() => return PushOutcome::Refused(describe_transport(err)),
        Err(err) => return PushOutcome::Retryable(describe_transport(err)),
    };
    let status = response.status();
    let body = match response.text().await {
        Ok(body) => body,
        Err(err) => return PushOutcome::Retryable(describe_transport(err)),
    };
    if status.is_success() {
        PushOutcome::Accepted(serde_json::from_str(&body).ok())
    } else if is_transient(status) {
        PushOutcome::Retryable(describe_answer(status, &body))
    } else {
        PushOutcome::Refused(describe_answer(status, &body))
    }
}

/// Statuses that say "not now" rather than "no".
pub fn is_transient(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_original_publishers() {
        let client = Client::new();
        let url = Url::parse("http://h:1/push/CHANNEL_1").unwrap();
        let body = Body::text(r#"{"id":1}"#.into());
        let req = push_request(&client, &url, "P0039123456789", None, &body).build().unwrap();
        assert_eq!(req.method(), reqwest::Method::POST);
        assert_eq!(req.url().as_str(), "http://h:1/push/CHANNEL_1");
        assert_eq!(req.headers()["device"], "P0039123456789");
        assert_eq!(req.headers()["content-type"], "application/json");
        assert!(req.headers().get("event").is_none());
        assert_eq!(req.body().and_then(|b| b.as_bytes()), Some(&br#"{"id":1}"#[..]));

        let req = push_request(&client, &url, "P1", Some("tick"), &Body::text("hi".into())).build().unwrap();
        assert_eq!(req.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(req.headers()["event"], "tick");
    }

    #[test]
    fn transient_statuses() {
        assert!(is_transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_transient(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!is_transient(StatusCode::BAD_REQUEST));
        assert!(!is_transient(StatusCode::PAYLOAD_TOO_LARGE));
    }
}
