//! Return receipts: `POST /feedback/:channel` exactly as the original `subscriber.rb` sends it.

use std::time::Duration;

use pere_core::wire::ReceiptJson;
use reqwest::{Client, RequestBuilder, StatusCode, Url};

use crate::output::{describe_answer, describe_transport};

/// Attempts per receipt before it is left for a redelivery: enough to ride out a blip without
/// holding up the feed for long.
const ATTEMPTS: u32 = 3;
/// The wait after the first failed attempt; it doubles after each.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// A receipt is one small request; a server that takes longer than this is in trouble.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How sending a receipt ended.
#[derive(Debug)]
pub enum AckOutcome {
    /// The server recorded it; its receipt, when it answered with one (the original server sent
    /// an empty 200).
    Acked(Option<ReceiptJson>),
    /// It failed in a way that may pass later (no answer, 5xx): worth sending again if the event
    /// comes back.
    Retryable(String),
    /// The server refused it for good (4xx, e.g. 404 for an event it no longer has).
    Refused(String),
}

/// The receipt request: form body `status=<status>` (`rx ok` becomes `status=rx+ok`), headers
/// `device` and `last_event_id`.
pub fn receipt_request(client: &Client, url: &Url, device: &str, id: &str, status: &str) -> RequestBuilder {
    client
        .post(url.clone())
        .header("device", device)
        .header("last_event_id", id)
        .form(&[("status", status)])
        .timeout(TIMEOUT)
}

/// Sends the receipt for event `id`, trying again a few times if the failure may pass.
pub async fn acknowledge(client: &Client, url: &Url, device: &str, id: &str, status: &str) -> AckOutcome {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let outcome = send_once(receipt_request(client, url, device, id, status)).await;
        match outcome {
            AckOutcome::Retryable(_) if attempt < ATTEMPTS => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn send_once(request: RequestBuilder) -> AckOutcome {
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) if err.is_builder() => return AckOutcome::Refused(describe_transport(err)),
        Err(err) => return AckOutcome::Retryable(describe_transport(err)),
    };
    let status = response.status();
    let body = match response.text().await {
        Ok(body) => body,
        Err(err) => return AckOutcome::Retryable(describe_transport(err)),
    };
    if status.is_success() {
        AckOutcome::Acked(serde_json::from_str(&body).ok())
    } else if is_transient(status) {
        AckOutcome::Retryable(describe_answer(status, &body))
    } else {
        AckOutcome::Refused(describe_answer(status, &body))
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
    fn the_request_is_the_original_subscribers() {
        let client = Client::new();
        let url = Url::parse("http://h:1/feedback/CHANNEL_1").unwrap();
        let req = receipt_request(&client, &url, "H0039123456789", "42", "rx ok").build().unwrap();
        assert_eq!(req.method(), reqwest::Method::POST);
        assert_eq!(req.url().as_str(), "http://h:1/feedback/CHANNEL_1");
        let h = req.headers();
        assert_eq!(h["device"], "H0039123456789");
        assert_eq!(h["last_event_id"], "42");
        assert_eq!(h["content-type"], "application/x-www-form-urlencoded");
        assert_eq!(req.body().and_then(|b| b.as_bytes()), Some(&b"status=rx+ok"[..]));
        let req = receipt_request(&client, &url, "H", "1", "done & 100%").build().unwrap();
        assert_eq!(req.body().and_then(|b| b.as_bytes()), Some(&b"status=done+%26+100%25"[..]));
    }

    #[test]
    fn transient_statuses() {
        assert!(is_transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_transient(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_transient(StatusCode::NOT_FOUND));
        assert!(!is_transient(StatusCode::BAD_REQUEST));
    }
}
