//! Return receipts: `POST /feedback/:channel` exactly as the original `subscriber.rb` sends it,
//! plus an `Idempotency-Key`, a few times if it fails in a way that may pass.

use std::time::Duration;

use pere_proto::wire::ReceiptJson;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Client, RequestBuilder, Url};

use crate::retry::{retry, send_once, Outcome, Policy};

/// Attempts per receipt before it is left for a redelivery (3, the first after 200 ms, the next
/// after 400 ms): enough to ride out a blip without holding up the feed for long.
pub const RECEIPT_RETRY: Policy = Policy {
    attempts: Some(3),
    first_backoff: Duration::from_millis(200),
    growth: 2,
    jitter: Duration::ZERO,
};
/// A receipt is one small request; a server that takes longer than this is in trouble.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where receipts go and who sends them.
#[derive(Debug, Clone)]
pub struct Sender {
    /// The client.
    pub client: Client,
    /// `/feedback/:channel`.
    pub url: Url,
    /// The acknowledging device.
    pub device: String,
    /// The `Authorization` header, if any.
    pub token: Option<HeaderValue>,
    /// The attempts per receipt.
    pub policy: Policy,
}

impl Sender {
    /// The receipt request: form body `status=<status>` (`rx ok` becomes `status=rx+ok`),
    /// headers `device`, `last_event_id` and `Idempotency-Key`.
    pub fn request(&self, id: &str, status: &str, key: &str) -> RequestBuilder {
        let mut request = self
            .client
            .post(self.url.clone())
            .header("device", &self.device)
            .header("last_event_id", id)
            .header("idempotency-key", key)
            .form(&[("status", status)])
            .timeout(TIMEOUT);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        request
    }

    /// Sends the receipt for event `id`, with the same key on every attempt, trying again while
    /// the failure may pass.
    ///
    /// `Accepted` carries the server's receipt when it answered with one (the original server
    /// sent an empty 200); `Retryable` is worth sending again if the event comes back; `Refused`
    /// is for good (e.g. 404 for an event the server no longer has).
    pub async fn send(&self, id: &str, status: &str, key: &str) -> Outcome<Option<ReceiptJson>> {
        retry(
            &self.policy,
            || send_once(self.request(id, status, key)),
            |_, _| {},
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_original_subscribers() {
        let sender = Sender {
            client: Client::new(),
            url: Url::parse("http://h:1/feedback/CHANNEL_1").unwrap(),
            device: "H0039123456789".into(),
            token: None,
            policy: RECEIPT_RETRY,
        };
        let req = sender.request("42", "rx ok", "k1").build().unwrap();
        assert_eq!(req.method(), reqwest::Method::POST);
        assert_eq!(req.url().as_str(), "http://h:1/feedback/CHANNEL_1");
        let h = req.headers();
        assert_eq!(h["device"], "H0039123456789");
        assert_eq!(h["last_event_id"], "42");
        assert_eq!(h["idempotency-key"], "k1");
        assert_eq!(h["content-type"], "application/x-www-form-urlencoded");
        assert_eq!(
            req.body().and_then(|b| b.as_bytes()),
            Some(&b"status=rx+ok"[..])
        );
        let req = sender.request("1", "done & 100%", "k2").build().unwrap();
        assert_eq!(
            req.body().and_then(|b| b.as_bytes()),
            Some(&b"status=done+%26+100%25"[..])
        );
    }
}
