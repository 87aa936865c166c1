//! Return receipts: `POST /feedback/:channel` exactly as the original `subscriber.rb` sends it,
//! a few times if it fails in a way that may pass.

use std::time::Duration;

use pere_client::retry::{retry, send_once, Outcome, Policy};
use pere_core::wire::ReceiptJson;
use reqwest::{Client, RequestBuilder, Url};

/// Attempts per receipt before it is left for a redelivery (3, the first after 200 ms, the next
/// after 400 ms): enough to ride out a blip without holding up the feed for long.
const RETRY: Policy = Policy {
    attempts: Some(3),
    first_backoff: Duration::from_millis(200),
    growth: 2,
    jitter: Duration::ZERO,
};
/// A receipt is one small request; a server that takes longer than this is in trouble.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The receipt request: form body `status=<status>` (`rx ok` becomes `status=rx+ok`), headers
/// `device` and `last_event_id`.
pub fn receipt_request(
    client: &Client,
    url: &Url,
    device: &str,
    id: &str,
    status: &str,
) -> RequestBuilder {
    client
        .post(url.clone())
        .header("device", device)
        .header("last_event_id", id)
        .form(&[("status", status)])
        .timeout(TIMEOUT)
}

/// Sends the receipt for event `id`, trying again a few times if the failure may pass.
///
/// `Accepted` carries the server's receipt when it answered with one (the original server sent
/// an empty 200); `Retryable` is worth sending again if the event comes back; `Refused` is for
/// good (e.g. 404 for an event the server no longer has). The caller reports the end only.
pub async fn acknowledge(
    client: &Client,
    url: &Url,
    device: &str,
    id: &str,
    status: &str,
) -> Outcome<Option<ReceiptJson>> {
    retry(
        &RETRY,
        || send_once(receipt_request(client, url, device, id, status)),
        |_, _| {},
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_original_subscribers() {
        let client = Client::new();
        let url = Url::parse("http://h:1/feedback/CHANNEL_1").unwrap();
        let req = receipt_request(&client, &url, "H0039123456789", "42", "rx ok")
            .build()
            .unwrap();
        assert_eq!(req.method(), reqwest::Method::POST);
        assert_eq!(req.url().as_str(), "http://h:1/feedback/CHANNEL_1");
        let h = req.headers();
        assert_eq!(h["device"], "H0039123456789");
        assert_eq!(h["last_event_id"], "42");
        assert_eq!(h["content-type"], "application/x-www-form-urlencoded");
        assert_eq!(
            req.body().and_then(|b| b.as_bytes()),
            Some(&b"status=rx+ok"[..])
        );
        let req = receipt_request(&client, &url, "H", "1", "done & 100%")
            .build()
            .unwrap();
        assert_eq!(
            req.body().and_then(|b| b.as_bytes()),
            Some(&b"status=done+%26+100%25"[..])
        );
    }
}
