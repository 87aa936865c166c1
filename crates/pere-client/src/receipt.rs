//! Return receipts: `POST /feedback/:channel` exactly as the original `subscriber.rb` sends it,
//! plus an `Idempotency-Key`, a few times if it fails in a way that may pass; and the two forms
//! that carry several receipts in one request: a batch (NDJSON, one receipt a line) and a
//! cumulative receipt (`{"device","upto","status"}`), with their answers.

use std::time::Duration;

use pere_proto::wire::{FeedbackRequest, ReceiptBatchLine, ReceiptJson};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, RequestBuilder, Url};

use crate::error::Error;
use crate::retry::{exchange, retry, send_once, Outcome, Policy, Reply};

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

    /// A batch: the `device` header, `Content-Type: application/x-ndjson` and one line per
    /// receipt, `{"id":N,"status":"S","key":"K"}` (the key makes a retried batch, or a receipt
    /// later sent again alone, count once).
    pub fn batch_request(&self, lines: &[ReceiptBatchLine]) -> RequestBuilder {
        let mut body = String::new();
        for line in lines {
            // Numbers and strings always serialize.
            body.push_str(&serde_json::to_string(line).unwrap_or_default());
            body.push('\n');
        }
        self.post()
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body)
    }

    /// A cumulative receipt: every event up to `upto` that the device owes, with `status`
    /// (`{"device","upto","status"}`, and the `device` header as every receipt has it). No
    /// `last_event_id` header: a server that does not know the form must not read it as a
    /// receipt for that one event.
    pub fn cumulative_request(&self, upto: u64, status: &str) -> RequestBuilder {
        let body = FeedbackRequest {
            device: Some(self.device.clone()),
            id: None,
            upto: Some(upto.into()),
            status: Some(status.to_owned()),
        };
        self.post()
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_string(&body).unwrap_or_default())
    }

    fn post(&self) -> RequestBuilder {
        let mut request = self
            .client
            .post(self.url.clone())
            .header("device", &self.device)
            .timeout(TIMEOUT);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        request
    }

    /// Sends a request made by `build` (a batch or a cumulative receipt), trying again while the
    /// failure may pass; the answer as it came.
    pub async fn exchange(&self, build: impl Fn() -> RequestBuilder) -> Outcome<Reply> {
        retry(&self.policy, || exchange(build()), |_, _| {}).await
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

/// How a receipt went to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Via {
    /// A request of its own, in the original form.
    Single,
    /// A line of a batch.
    Batch {
        /// The receipt's number in the channel's receipt stream, as the server gave it (none
        /// when the batch failed).
        seq: Option<u64>,
        /// The line's key was known: the receipt recorded before counts.
        replayed: bool,
    },
    /// A cumulative receipt for every event up to `upto`.
    Cumulative {
        /// Its N.
        upto: u64,
        /// The server named this event among those it acknowledged (false: it was acknowledged
        /// before, or never expected a receipt from this device).
        acknowledged: bool,
    },
}

/// The outcome of a receipt the subscriber sent by itself.
#[derive(Debug)]
pub struct Acked {
    /// The event acknowledged.
    pub id: String,
    /// The status sent.
    pub status: String,
    /// True when this receipt had failed before and was sent again because its event came back.
    pub again: bool,
    /// In which form it went.
    pub via: Via,
    /// The server's receipt (`None` from a server that answers with an empty 200, and for a
    /// receipt that went in a batch or a cumulative receipt, whose answers do not repeat each
    /// receipt: see [`Acked::via`]), or why it failed. A receipt that failed in a way that may
    /// pass is sent again if the event comes back.
    pub result: Result<Option<ReceiptJson>, Error>,
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

    #[test]
    fn batches_are_ndjson_and_cumulative_receipts_json_without_an_event_id() {
        let sender = Sender {
            client: Client::new(),
            url: Url::parse("http://h:1/feedback/C").unwrap(),
            device: "H1".into(),
            token: None,
            policy: RECEIPT_RETRY,
        };
        let line = |id: u64, status: &str, key: &str| ReceiptBatchLine {
            id,
            status: Some(status.into()),
            key: Some(key.into()),
        };
        let lines = [line(7, "ok", "k7"), line(8, "said \"no\"", "k8")];
        let req = sender.batch_request(&lines).build().unwrap();
        assert_eq!(req.headers()["device"], "H1");
        assert_eq!(req.headers()["content-type"], "application/x-ndjson");
        assert_eq!(
            req.body().and_then(|b| b.as_bytes()),
            Some(&b"{\"id\":7,\"status\":\"ok\",\"key\":\"k7\"}\n{\"id\":8,\"status\":\"said \\\"no\\\"\",\"key\":\"k8\"}\n"[..])
        );
        let req = sender.cumulative_request(42, "rx ok").build().unwrap();
        assert_eq!(req.headers()["content-type"], "application/json");
        assert!(req.headers().get("last_event_id").is_none());
        assert_eq!(
            req.body().and_then(|b| b.as_bytes()),
            Some(&br#"{"device":"H1","upto":42,"status":"rx ok"}"#[..])
        );
    }
}
