//! Sending a request until the server takes it, refuses it, or the attempts run out: the one
//! loop behind the publisher's pushes and the subscriber's receipts.
//!
//! The loop ([`retry`]) knows nothing of HTTP: it runs an attempt, waits as its [`Policy`] says
//! and runs it again. [`send_once`] is the attempt both tools make: it sends a request and sorts
//! the result into an [`Outcome`], so "what may pass" ([`is_transient`]) is decided in one place.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::{ErrorAnswer, Failure, Refusal};
use crate::tls;

/// How an attempt (or all of them) ended.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The server took it; its answer.
    Accepted(T),
    /// It failed in a way that may pass (no answer, 5xx, 408, 429): the same request may be
    /// sent again. Why: reqwest's error or the server's answer.
    Retryable(Failure),
    /// The server refused it for good (another 4xx, or a request that cannot be built): sending
    /// it again cannot help. Its status and code, and why.
    Refused(Refusal),
}

impl<T> Outcome<T> {
    /// The same outcome with the accepted answer turned into another.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Accepted(answer) => Outcome::Accepted(f(answer)),
            Outcome::Retryable(why) => Outcome::Retryable(why),
            Outcome::Refused(refusal) => Outcome::Refused(refusal),
        }
    }
}

/// A success answer as it came: status, headers and body text.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status (2xx).
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, as text.
    pub body: String,
}

/// Statuses that say "not now" rather than "no": a server error, a timeout, or too many requests.
pub fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// Sends `request` once and sorts out how it went.
///
/// A success answer is parsed as `T`, as JSON; it is `None` when the body is empty or is not a
/// `T`, because the original PERE server answered pushes with 204 and receipts with an empty
/// 200, and a tool must work with it. Failures keep their cause: reqwest's error (no answer) or
/// the server's [`ErrorAnswer`] (an error status).
pub async fn send_once<T: DeserializeOwned>(request: RequestBuilder) -> Outcome<Option<T>> {
    exchange(request)
        .await
        .map(|reply| serde_json::from_str(&reply.body).ok())
}

/// Sends `request` once and sorts out how it went, as [`send_once`] does, keeping the whole
/// success answer (its headers say, e.g., whether a push was a replay).
pub async fn exchange(request: RequestBuilder) -> Outcome<Reply> {
    let response = match request.send().await {
        Ok(response) => response,
        // A request that cannot be built (a bad header value) will not build next time either.
        Err(err) if err.is_builder() => return Outcome::Refused(Refusal::request(err)),
        // A certificate not trusted now will not be trusted on the next attempt either.
        Err(err) if tls::is_handshake_failure(&err) => return Outcome::Refused(Refusal::tls(err)),
        Err(err) => return Outcome::Retryable(Failure::transport(err)),
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = match response.text().await {
        Ok(body) => body,
        Err(err) => return Outcome::Retryable(Failure::transport(err)),
    };
    if status.is_success() {
        Outcome::Accepted(Reply {
            status,
            headers,
            body,
        })
    } else if is_transient(status) {
        Outcome::Retryable(Failure::Answer(ErrorAnswer::new(status, &body)))
    } else {
        Outcome::Refused(Refusal::Answer(ErrorAnswer::new(status, &body)))
    }
}

/// How often, and how far apart, [`retry`] makes its attempts.
///
/// The wait after failed attempt `n` (from 1) is `first_backoff × growthⁿ⁻¹`, plus a random
/// part picked uniformly in `0..jitter` each time, so that clients which failed together do not
/// all come back in the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts in all, the first included (`Some(0)` still makes one); `None` tries until the
    /// request is accepted or refused, as the original publisher did.
    pub attempts: Option<u32>,
    /// The wait after the first failed attempt.
    pub first_backoff: Duration,
    /// How many times longer each wait is than the one before: 1 keeps a steady pace.
    pub growth: u32,
    /// The most added at random to each wait; zero for exact waits.
    pub jitter: Duration,
}

impl Policy {
    /// The wait after failed attempt `n` (from 1), random part included.
    fn wait(&self, n: u32, rng: &mut impl Rng) -> Duration {
        let exponent = n.saturating_sub(1);
        let base = self
            .first_backoff
            .saturating_mul(self.growth.saturating_pow(exponent));
        if self.jitter.is_zero() {
            base
        } else {
            base.saturating_add(self.jitter.mul_f64(rng.gen::<f64>()))
        }
    }

    /// True when attempt `n` (from 1) is the last one allowed.
    fn is_last(&self, n: u32) -> bool {
        self.attempts.is_some_and(|max| n >= max)
    }
}

/// Runs `attempt` until it is accepted or refused, or until `policy.attempts` have failed,
/// waiting between attempts as `policy` says; returns the last outcome.
///
/// `on_failure` hears of every failed attempt, its number (from 1) and why in one line, before
/// the wait that follows it: the publisher prints each one, the subscriber only the result.
///
/// The attempt is a closure rather than a request so that the loop is one for every request
/// (a request builder is used up by sending it) and can be tested without a network.
pub async fn retry<T, F, Fut>(
    policy: &Policy,
    mut attempt: F,
    mut on_failure: impl FnMut(u32, &str),
) -> Outcome<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Outcome<T>>,
{
    let mut n = 1u32;
    loop {
        let outcome = attempt().await;
        match &outcome {
            Outcome::Accepted(_) => return outcome,
            Outcome::Refused(refusal) => {
                on_failure(n, &refusal.to_string());
                return outcome;
            }
            Outcome::Retryable(why) => {
                on_failure(n, &why.to_string());
                if policy.is_last(n) {
                    return outcome;
                }
            }
        }
        let wait = policy.wait(n, &mut rand::thread_rng());
        tokio::time::sleep(wait).await;
        n = n.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::*;

    /// A failure that may pass: a 503 without a body.
    fn busy<T>() -> Outcome<T> {
        Outcome::Retryable(Failure::Answer(ErrorAnswer::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
        )))
    }

    /// How [`busy`] reads.
    const BUSY: &str = "HTTP 503 Service Unavailable";

    /// An outcome in one line, to compare: `accepted: 7`, `retryable: <why>`, `refused: <why>`.
    fn summary(outcome: &Outcome<u32>) -> String {
        match outcome {
            Outcome::Accepted(answer) => format!("accepted: {answer}"),
            Outcome::Retryable(why) => format!("retryable: {why}"),
            Outcome::Refused(why) => format!("refused: {why}"),
        }
    }

    /// Runs `retry` over scripted outcomes (an exhausted script answers [`busy`]); returns
    /// the result, when each attempt began (from the start) and what `on_failure` heard.
    async fn check_retry(
        policy: Policy,
        script: Vec<Outcome<u32>>,
    ) -> (Outcome<u32>, Vec<Duration>, Vec<(u32, String)>) {
        let start = Instant::now();
        let script = RefCell::new(VecDeque::from(script));
        let began = RefCell::new(Vec::new());
        let mut failures = Vec::new();
        let outcome = retry(
            &policy,
            || {
                began.borrow_mut().push(start.elapsed());
                let next = script.borrow_mut().pop_front().unwrap_or_else(busy);
                async move { next }
            },
            |n, why| failures.push((n, why.to_owned())),
        )
        .await;
        (outcome, began.into_inner(), failures)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// The subscriber's receipts.
    const DOUBLING: Policy = Policy {
        attempts: Some(3),
        first_backoff: Duration::from_millis(200),
        growth: 2,
        jitter: Duration::ZERO,
    };

    #[tokio::test(start_paused = true)]
    async fn limited_attempts_double_their_wait_and_end_retryable() {
        let (outcome, began, failures) = check_retry(DOUBLING, vec![]).await;
        assert_eq!(summary(&outcome), format!("retryable: {BUSY}"));
        assert_eq!(
            began,
            [ms(0), ms(200), ms(600)],
            "3 attempts, 200 then 400 ms apart, no wait after the last"
        );
        assert_eq!(
            failures,
            [(1, BUSY.into()), (2, BUSY.into()), (3, BUSY.into())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn success_ends_the_loop() {
        let script = vec![busy(), Outcome::Accepted(7)];
        let (outcome, began, failures) = check_retry(DOUBLING, script).await;
        assert_eq!(summary(&outcome), "accepted: 7");
        assert_eq!(began, [ms(0), ms(200)]);
        assert_eq!(failures, [(1, BUSY.into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_retried() {
        let policy = Policy {
            attempts: None,
            ..DOUBLING
        };
        let refused =
            Outcome::Refused(Refusal::Answer(ErrorAnswer::new(StatusCode::NOT_FOUND, "")));
        let (outcome, began, failures) = check_retry(policy, vec![refused]).await;
        assert_eq!(summary(&outcome), "refused: HTTP 404 Not Found");
        assert_eq!(began, [ms(0)]);
        assert_eq!(failures, [(1, "HTTP 404 Not Found".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_attempts_go_on_until_accepted() {
        let policy = Policy {
            attempts: None,
            first_backoff: ms(1000),
            growth: 1,
            jitter: Duration::ZERO,
        };
        let mut script: Vec<Outcome<u32>> = (0..50).map(|_| busy()).collect();
        script.push(Outcome::Accepted(1));
        let (outcome, began, failures) = check_retry(policy, script).await;
        assert_eq!(summary(&outcome), "accepted: 1");
        assert_eq!(began.len(), 51);
        assert_eq!(
            began.last(),
            Some(&Duration::from_secs(50)),
            "a steady second apart"
        );
        assert_eq!(failures.len(), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_spreads_waits_over_its_range() {
        // The publisher's default `--retry-delay 1-10`.
        let policy = Policy {
            attempts: Some(200),
            first_backoff: ms(1000),
            growth: 1,
            jitter: ms(9000),
        };
        let (_, began, _) = check_retry(policy, vec![]).await;
        let waits: Vec<Duration> = began.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(waits.len(), 199);
        assert!(
            waits.iter().all(|w| (ms(1000)..=ms(10_000)).contains(w)),
            "{waits:?}"
        );
        assert!(
            waits.iter().any(|w| *w < ms(2000)) && waits.iter().any(|w| *w > ms(9000)),
            "{waits:?}"
        );
    }

    #[test]
    fn zero_attempts_still_make_one_and_waits_saturate() {
        let policy = Policy {
            attempts: Some(0),
            ..DOUBLING
        };
        assert!(policy.is_last(1));
        let mut rng = rand::thread_rng();
        assert_eq!(
            DOUBLING.wait(u32::MAX, &mut rng),
            ms(200) * u32::MAX,
            "no overflow"
        );
    }

    #[test]
    fn transient_statuses() {
        assert!(is_transient(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_transient(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(is_transient(StatusCode::REQUEST_TIMEOUT));
        assert!(is_transient(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_transient(StatusCode::BAD_REQUEST));
        assert!(!is_transient(StatusCode::NOT_FOUND));
        assert!(!is_transient(StatusCode::PAYLOAD_TOO_LARGE));
    }

    /// A server on a loopback port that answers each connection's first request with `answer`.
    async fn answering(answer: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{addr}/push/C")
    }

    async fn check_send(answer: String) -> Outcome<Option<serde_json::Value>> {
        let url = answering(answer).await;
        send_once(reqwest::Client::new().post(url)).await
    }

    #[tokio::test]
    async fn answers_are_sorted_and_parsed() {
        let answer = |head: &str, body: &str| {
            format!(
                "HTTP/1.1 {head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let json = answer("200 OK", r#"{"id":1}"#);
        let Outcome::Accepted(accepted) = check_send(json).await else {
            panic!("accepted")
        };
        assert_eq!(accepted, Some(serde_json::json!({"id": 1})));
        let empty = "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned();
        let empty = check_send(empty).await;
        assert!(matches!(empty, Outcome::Accepted(None)), "{empty:?}");
        let busy = answer("503 Service Unavailable", "");
        let Outcome::Retryable(Failure::Answer(busy)) = check_send(busy).await else {
            panic!("retryable")
        };
        assert_eq!(
            (busy.status(), busy.to_string()),
            (StatusCode::SERVICE_UNAVAILABLE, BUSY.to_owned())
        );
        let error = r#"{"error":{"code":"bad_channel","message":"invalid channel name"}}"#;
        let refused = answer("400 Bad Request", error);
        let Outcome::Refused(refusal) = check_send(refused).await else {
            panic!("refused")
        };
        assert_eq!(
            refusal.to_string(),
            "HTTP 400 bad_channel: invalid channel name"
        );
        assert_eq!(
            (refusal.status(), refusal.code()),
            (Some(StatusCode::BAD_REQUEST), Some("bad_channel"))
        );
    }

    #[tokio::test]
    async fn no_answer_is_retryable_and_a_bad_request_is_refused() {
        // A port that was just free: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = reqwest::Client::new();
        let gone =
            send_once::<serde_json::Value>(client.post(format!("http://127.0.0.1:{port}/push/C")))
                .await;
        assert!(
            matches!(&gone, Outcome::Retryable(why @ Failure::Transport(err))
                if err.is_connect() && why.to_string().contains("error sending request")),
            "{gone:?}"
        );
        let bad_header = client
            .post(format!("http://127.0.0.1:{port}/push/C"))
            .header("device", "a\nb");
        let bad = send_once::<serde_json::Value>(bad_header).await;
        assert!(
            matches!(bad, Outcome::Refused(Refusal::Request(_))),
            "{bad:?}"
        );
    }
}
