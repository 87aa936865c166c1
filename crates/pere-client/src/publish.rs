//! Publishing: a [`Publisher`] and what it sends, one event ([`Push`]) or many in one request
//! ([`Batch`]), each until the server takes it, refuses it or the attempts run out. Every event
//! carries one idempotency key, the same on every attempt, so a retry never stores it twice.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

pub use pere_proto::wire::BatchAnswer;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Client, RequestBuilder, Url};
use serde::Serialize;
use serde_json::value::RawValue;

use pere_proto::event::valid_idempotency_key;
use pere_proto::wire::{PushAccepted, PushWaited, ReceiptSummaryJson};
use pere_proto::{ChannelName, DeviceId, EventType};

use crate::address::{base_url, endpoint};
use crate::body::Body;
use crate::error::{Error, Refusal};
use crate::ids::idempotency_key;
use crate::retry::{exchange, retry, Outcome, Policy, Reply};
use crate::{tls, token};

/// The attempts a [`Publisher`] makes by default: 5 in all, 250 ms apart and doubling, plus up
/// to 250 ms at random (about 4 s from the first attempt to the last): enough to ride out a
/// server restart or a blip, short enough that a caller learns of an outage.
pub const DEFAULT_RETRY: Policy = Policy {
    attempts: Some(5),
    first_backoff: Duration::from_millis(250),
    growth: 2,
    jitter: Duration::from_millis(250),
};
/// How long one attempt may take (without a wait for receipts) before it counts as failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for a TCP connection before counting the attempt as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The request header that asks for the envelope form of a batch.
const BATCH_HEADER: &str = "pere-batch";

/// Publishes events to a PERE server: `POST /push/:channel`, one event or a batch per request.
///
/// Cheap to clone (the HTTP client is shared); one publisher serves any number of channels and
/// tasks.
///
/// ```no_run
/// # async fn run() -> Result<(), pere_client::Error> {
/// use pere_client::{Publisher, Wait};
/// use std::time::Duration;
///
/// let publisher = Publisher::builder("127.0.0.1:4567").device("P0039000000001").build()?;
/// let pushed = publisher.push("ORDERS", serde_json::json!({"order": 42})).await?;
/// println!("stored as {:?}", pushed.id());
///
/// // A type, and an answer only once every recipient acknowledged (or 5 s passed).
/// let pushed = publisher
///     .push("ORDERS", "ship 42")
///     .event_type("ship")
///     .wait(Wait::All, Duration::from_secs(5))
///     .await?;
/// println!("acknowledged by all: {:?}", pushed.satisfied());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    base: Url,
    device: Option<String>,
    token: Option<HeaderValue>,
    retry: Policy,
    timeout: Duration,
}

/// Settings for a [`Publisher`]; [`PublisherBuilder::build`] checks them.
#[derive(Debug, Clone)]
pub struct PublisherBuilder {
    server: String,
    device: Option<String>,
    token: Option<String>,
    client: Option<Client>,
    ca_pem: Option<Vec<u8>>,
    retry: Policy,
    timeout: Duration,
}

impl PublisherBuilder {
    /// The publishing device, sent as the `device` header [default: the token's subject, else
    /// none].
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// A token (from `pere-server token`) sent as `Authorization: Bearer` with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The HTTP client to use [default: one with a 10 s connect timeout, trusting the system's
    /// CAs or [`PublisherBuilder::ca_pem`]'s].
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// For an `https://` server whose certificate a private CA signed: trust the CA
    /// certificates in `pem` (PEM, one or more) instead of the system's [default: the
    /// system's]. Applies to the client the builder makes, not to one given with
    /// [`PublisherBuilder::client`].
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// How often and how far apart to try each request [default: [`DEFAULT_RETRY`]].
    pub fn retry(mut self, policy: Policy) -> Self {
        self.retry = policy;
        self
    }

    /// How long one attempt may take before it counts as failed [default: [`DEFAULT_TIMEOUT`]];
    /// a push that waits for receipts gets its wait on top.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The publisher.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a server address that is neither `http://` nor `https://`, a
    /// device id the server would refuse, a token that cannot travel in a header, or a CA that
    /// holds no certificate.
    pub fn build(self) -> Result<Publisher, Error> {
        let base = base_url(&self.server).map_err(Error::Invalid)?;
        let token = match &self.token {
            Some(t) => Some(
                token::bearer(t)
                    .ok_or_else(|| Error::Invalid("the token cannot be sent in a header".into()))?,
            ),
            None => None,
        };
        let device = self
            .device
            .or_else(|| self.token.as_deref().and_then(token::subject));
        if let Some(device) = &device {
            DeviceId::new(device)
                .map_err(|e| Error::Invalid(format!("invalid device id {device:?}: {e}")))?;
        }
        let client = match self.client {
            Some(client) => client,
            None => tls::trust(
                Client::builder().connect_timeout(CONNECT_TIMEOUT),
                self.ca_pem.as_deref(),
            )?
            .build()
            .map_err(|e| Error::Invalid(format!("cannot make an HTTP client: {e}")))?,
        };
        Ok(Publisher {
            client,
            base,
            device,
            token,
            retry: self.retry,
            timeout: self.timeout,
        })
    }
}

impl Publisher {
    /// Settings for a publisher to `server` (`host:port`, or an `http://` or `https://` URL).
    pub fn builder(server: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder {
            server: server.into(),
            device: None,
            token: None,
            client: None,
            ca_pem: None,
            retry: DEFAULT_RETRY,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The device the publisher sends as, if any.
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }

    /// The server's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// One event for `channel`, sent when awaited (or by [`Push::send`]); its builder methods
    /// add a type, an idempotency key or a wait for receipts.
    pub fn push(&self, channel: &str, body: impl Into<Body>) -> Push<'_> {
        Push {
            publisher: self,
            channel: channel.to_owned(),
            body: body.into(),
            event_type: None,
            key: None,
            wait: None,
            on_failure: None,
        }
    }

    /// Many events for `channel` in one request, in order, stored all or none with consecutive
    /// ids: `POST /push/:channel` with an NDJSON body (`Content-Type: application/x-ndjson`,
    /// `Pere-Batch: envelope`, one `{"data": …}` or `{"text": …}` line per event, with its
    /// `event` type and `idempotency_key` when given).
    ///
    /// The batch carries one `Idempotency-Key`, `K` (the server gives line `i` the key `K.i`),
    /// the same on every attempt: a retried batch is never stored twice.
    ///
    /// ```no_run
    /// # async fn run(publisher: pere_client::Publisher) -> Result<(), pere_client::Error> {
    /// use pere_client::BatchEvent;
    ///
    /// let events = (1..=100).map(|n| serde_json::json!({ "n": n }));
    /// let pushed = publisher.push_batch("TICKS", events).await?;
    /// println!("ids {:?}", pushed.answer.ids);
    /// let typed = [BatchEvent::new("up").event_type("state"), BatchEvent::new("down").event_type("state")];
    /// publisher.push_batch("TICKS", typed).await?;
    /// # Ok(()) }
    /// ```
    pub fn push_batch<I>(&self, channel: &str, events: I) -> Batch<'_>
    where
        I: IntoIterator,
        I::Item: Into<BatchEvent>,
    {
        Batch {
            publisher: self,
            channel: channel.to_owned(),
            events: events.into_iter().map(Into::into).collect(),
            key: None,
            on_failure: None,
        }
    }

    /// A POST to `url` with what every request of this publisher carries.
    fn post(&self, url: &Url, timeout: Duration) -> RequestBuilder {
        let mut request = self.client.post(url.clone()).timeout(timeout);
        if let Some(device) = &self.device {
            request = request.header("device", device);
        }
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        request
    }

    /// Sends what `request` makes until it is accepted, refused or the attempts run out.
    async fn send(
        &self,
        request: impl Fn() -> RequestBuilder,
        mut on_failure: Option<FailureHook<'_>>,
    ) -> Result<Reply, Error> {
        let mut failed = 0u32;
        let outcome = retry(
            &self.retry,
            || exchange(request()),
            |n, why| {
                failed = n;
                if let Some(hook) = on_failure.as_mut() {
                    hook(n, why);
                }
            },
        )
        .await;
        match outcome {
            Outcome::Accepted(reply) => Ok(reply),
            Outcome::Refused(refusal) => Err(Error::Refused(refusal)),
            Outcome::Retryable(last) => Err(Error::GaveUp {
                attempts: failed,
                last,
            }),
        }
    }
}

/// Hears of every failed attempt: its number (from 1) and why, in one line.
type FailureHook<'a> = Box<dyn FnMut(u32, &str) + Send + 'a>;

/// What a push waits for before it is answered: `?wait=all` or `?wait=N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Every recipient the event expects has acknowledged it.
    All,
    /// At least this many devices have acknowledged it.
    AtLeast(usize),
}

/// One event on its way: set what it needs, then `.await` it (or call [`Push::send`]).
#[must_use = "a push is sent only when awaited"]
pub struct Push<'a> {
    publisher: &'a Publisher,
    channel: String,
    body: Body,
    event_type: Option<String>,
    key: Option<String>,
    wait: Option<(Wait, Duration)>,
    on_failure: Option<FailureHook<'a>>,
}

impl fmt::Debug for Push<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Push")
            .field("channel", &self.channel)
            .field("body", &self.body)
            .field("event_type", &self.event_type)
            .field("key", &self.key)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl<'a> Push<'a> {
    /// The SSE event type (`event:`) subscribers see [default: `message`].
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// The idempotency key (1-255 visible ASCII characters) [default: a fresh random one]. The
    /// same key with the same body, even from another process, is answered with the event
    /// already stored; with another body it is refused (409 `idempotency_conflict`).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Answer only once `wait` is satisfied or `timeout` passed (whole seconds, rounded up; the
    /// server caps it with its `--max-wait`): [`Pushed::waited`] then says which, with the
    /// receipt summary. The event is stored and delivered either way.
    pub fn wait(mut self, wait: Wait, timeout: Duration) -> Self {
        self.wait = Some((wait, timeout));
        self
    }

    /// Calls `hook` with the number (from 1) and the reason of every failed attempt, before the
    /// wait that follows it: a program that logs retries does it here.
    pub fn on_failure(mut self, hook: impl FnMut(u32, &str) + Send + 'a) -> Self {
        self.on_failure = Some(Box::new(hook));
        self
    }

    /// Sends the event until the server takes it, refuses it, or the attempts run out.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a channel, type or key the server would refuse (nothing is sent);
    /// [`Error::Refused`] when the server refuses it (e.g. `body_too_large`,
    /// `idempotency_conflict`) or its TLS handshake failed ([`Refusal::Tls`]);
    /// [`Error::GaveUp`] when every attempt failed.
    pub async fn send(self) -> Result<Pushed, Error> {
        let Push {
            publisher,
            channel,
            body,
            event_type,
            key,
            wait,
            on_failure,
        } = self;
        check_channel(&channel)?;
        if let Some(event_type) = &event_type {
            check_event_type(event_type)?;
        }
        let key = checked_key(key)?;
        let mut url = endpoint(&publisher.base, "push", &channel);
        let mut timeout = publisher.timeout;
        if let Some((wait, wait_timeout)) = wait {
            let secs = wait_timeout.as_secs() + u64::from(wait_timeout.subsec_nanos() > 0);
            let wait = match wait {
                Wait::All => "all".to_owned(),
                Wait::AtLeast(n) => n.to_string(),
            };
            url.query_pairs_mut()
                .append_pair("wait", &wait)
                .append_pair("timeout", &format!("{secs}s"));
            timeout += Duration::from_secs(secs);
        }
        let request = || {
            let mut request = publisher
                .post(&url, timeout)
                .header(CONTENT_TYPE, body.content_type())
                .header("idempotency-key", &key)
                .body(body.as_str().to_owned());
            if let Some(event_type) = &event_type {
                request = request.header("event", event_type);
            }
            request
        };
        let reply = publisher.send(request, on_failure).await?;
        Ok(Pushed::from_reply(reply, key, wait.is_some()))
    }
}

impl<'a> IntoFuture for Push<'a> {
    type Output = Result<Pushed, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A published event: the server's answer, and the key it was sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The server's answer (channel, id, time); `None` from a server that answers without one
    /// (the original PERE answered 204).
    pub answer: Option<PushAccepted>,
    /// With [`Push::wait`]: whether the wait was satisfied, and the receipts when it ended.
    pub waited: Option<PushWaited>,
    /// The idempotency key it was sent with.
    pub key: String,
    /// True when the server already held the event under this key and stored nothing
    /// (`Idempotent-Replayed: true`): an earlier attempt of this publisher got it through (keys
    /// are per publisher: another's never replays).
    pub replayed: bool,
}

impl Pushed {
    /// The id the server gave the event, when it said.
    pub fn id(&self) -> Option<u64> {
        self.answer.as_ref().map(|a| a.id)
    }

    /// With [`Push::wait`]: whether the receipts asked for arrived in time.
    pub fn satisfied(&self) -> Option<bool> {
        self.waited.as_ref().map(|w| w.satisfied)
    }

    /// With [`Push::wait`]: the event's receipts when the wait ended: who acknowledged it (with
    /// their statuses), who has it without a receipt yet (`delivered`), who it has not reached
    /// (`pending`), and when each of those was last seen. An unsatisfied wait is explained here.
    pub fn receipts(&self) -> Option<&ReceiptSummaryJson> {
        self.waited.as_ref().map(|w| &w.receipts)
    }

    fn from_reply(reply: Reply, key: String, waited: bool) -> Self {
        let replayed = reply
            .headers
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let waited = if waited {
            serde_json::from_str::<PushWaited>(&reply.body).ok()
        } else {
            None
        };
        let answer = match &waited {
            Some(w) => Some(PushAccepted {
                channel: w.channel.clone(),
                id: w.id,
                time: w.time.clone(),
            }),
            None => serde_json::from_str(&reply.body).ok(),
        };
        Pushed {
            answer,
            waited,
            key,
            replayed,
        }
    }
}

/// One event of a batch: its body, and optionally its type and its own idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEvent {
    body: Body,
    event_type: Option<String>,
    key: Option<String>,
}

impl BatchEvent {
    /// An event with this body.
    pub fn new(body: impl Into<Body>) -> Self {
        BatchEvent {
            body: body.into(),
            event_type: None,
            key: None,
        }
    }

    /// Its SSE event type.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Its own idempotency key, instead of the one the batch's key gives it.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Its body.
    pub fn body(&self) -> &Body {
        &self.body
    }
}

impl From<Body> for BatchEvent {
    fn from(body: Body) -> Self {
        BatchEvent::new(body)
    }
}

impl From<&str> for BatchEvent {
    fn from(text: &str) -> Self {
        BatchEvent::new(text)
    }
}

impl From<String> for BatchEvent {
    fn from(text: String) -> Self {
        BatchEvent::new(text)
    }
}

impl From<serde_json::Value> for BatchEvent {
    fn from(value: serde_json::Value) -> Self {
        BatchEvent::new(value)
    }
}

/// A published batch: the server's answer, and the batch's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPushed {
    /// The server's answer.
    pub answer: BatchAnswer,
    /// The batch's idempotency key (line `i` had the key `key.i` unless it had its own).
    pub key: String,
}

/// A batch on its way: `.await` it (or call [`Batch::send`]).
#[must_use = "a batch is sent only when awaited"]
pub struct Batch<'a> {
    publisher: &'a Publisher,
    channel: String,
    events: Vec<BatchEvent>,
    key: Option<String>,
    on_failure: Option<FailureHook<'a>>,
}

impl fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("channel", &self.channel)
            .field("events", &self.events.len())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// One line of a batch in the envelope form.
#[derive(Serialize)]
struct EnvelopeLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

impl<'a> Batch<'a> {
    /// The batch's idempotency key [default: a fresh random one].
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Calls `hook` with the number (from 1) and the reason of every failed attempt.
    pub fn on_failure(mut self, hook: impl FnMut(u32, &str) + Send + 'a) -> Self {
        self.on_failure = Some(Box::new(hook));
        self
    }

    /// Sends the batch until the server takes it, refuses it, or the attempts run out.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty batch, or a channel, type or key the server would refuse
    /// (nothing is sent); [`Error::Refused`] when the server refuses it (`batch_too_large`,
    /// `body_too_large`, `bad_batch_line`, …) or answers with something that is not a batch
    /// answer (a server without batches); [`Error::GaveUp`] when every attempt failed.
    pub async fn send(self) -> Result<BatchPushed, Error> {
        let Batch {
            publisher,
            channel,
            events,
            key,
            on_failure,
        } = self;
        check_channel(&channel)?;
        if events.is_empty() {
            return Err(Error::Invalid("a batch needs at least one event".into()));
        }
        let key = checked_key(key)?;
        let ndjson = envelope(&events)?;
        let url = endpoint(&publisher.base, "push", &channel);
        let request = || {
            publisher
                .post(&url, publisher.timeout)
                .header(CONTENT_TYPE, "application/x-ndjson")
                .header(BATCH_HEADER, "envelope")
                .header("idempotency-key", &key)
                .body(ndjson.clone())
        };
        let reply = publisher.send(request, on_failure).await?;
        match serde_json::from_str::<BatchAnswer>(&reply.body) {
            Ok(answer) if answer.ids.len() == events.len() => Ok(BatchPushed { answer, key }),
            _ => Err(Error::Refused(Refusal::Unexpected {
                status: reply.status,
                message: format!(
                    "HTTP {}: the answer is not a batch answer for {} events (does this server publish batches?)",
                    reply.status.as_u16(),
                    events.len()
                ),
            })),
        }
    }
}

impl<'a> IntoFuture for Batch<'a> {
    type Output = Result<BatchPushed, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// The NDJSON body of a batch in the envelope form.
fn envelope(events: &[BatchEvent]) -> Result<String, Error> {
    let mut out = String::new();
    for event in events {
        if let Some(event_type) = &event.event_type {
            check_event_type(event_type)?;
        }
        if let Some(key) = &event.key {
            if !valid_idempotency_key(key) {
                return Err(Error::Invalid(format!(
                    "invalid idempotency key {key:?}: 1 to 255 visible ASCII characters"
                )));
            }
        }
        // A line break in JSON can only be whitespace between tokens (inside strings it is
        // escaped), so a space in its place keeps the value and keeps the event on one line.
        let raw = if event.body.is_json() {
            RawValue::from_string(event.body.as_str().replace(['\n', '\r'], " ")).ok()
        } else {
            None
        };
        let line = EnvelopeLine {
            data: raw.as_deref(),
            text: raw.is_none().then(|| event.body.as_str()),
            event: event.event_type.as_deref(),
            idempotency_key: event.key.as_deref(),
        };
        // Strings and raw JSON always serialize.
        out.push_str(&serde_json::to_string(&line).unwrap_or_default());
        out.push('\n');
    }
    Ok(out)
}

fn check_channel(channel: &str) -> Result<(), Error> {
    ChannelName::new(channel)
        .map(drop)
        .map_err(|e| Error::Invalid(format!("invalid channel {channel:?}: {e}")))
}

fn check_event_type(event_type: &str) -> Result<(), Error> {
    EventType::new(event_type)
        .map(drop)
        .map_err(|e| Error::Invalid(format!("invalid event type {event_type:?}: {e}")))
}

/// The key given, checked, or a fresh one.
fn checked_key(key: Option<String>) -> Result<String, Error> {
    match key {
        Some(key) if valid_idempotency_key(&key) => Ok(key),
        Some(key) => Err(Error::Invalid(format!(
            "invalid idempotency key {key:?}: 1 to 255 visible ASCII characters"
        ))),
        None => Ok(idempotency_key(&mut rand::thread_rng())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_one_envelope_line_per_event() {
        let events = [
            BatchEvent::new(serde_json::json!({"a": 1})),
            BatchEvent::new("two\nlines").event_type("note").key("k-2"),
            BatchEvent::new(Body::detect("{\n  \"pretty\": \"x\\ny\"\n}".into())),
        ];
        let ndjson = envelope(&events).unwrap();
        let lines: Vec<&str> = ndjson.lines().collect();
        assert_eq!(lines.len(), 3, "{ndjson}");
        assert_eq!(lines[0], r#"{"data":{"a":1}}"#);
        assert_eq!(
            lines[1],
            r#"{"text":"two\nlines","event":"note","idempotency_key":"k-2"}"#
        );
        let third: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(third, serde_json::json!({"data": {"pretty": "x\ny"}}));
        assert!(matches!(
            envelope(&[BatchEvent::new("x").event_type("a b")]),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn keys_are_checked_or_made() {
        assert_eq!(checked_key(Some("k1".into())).unwrap(), "k1");
        assert!(matches!(
            checked_key(Some("has space".into())),
            Err(Error::Invalid(_))
        ));
        assert_eq!(checked_key(None).unwrap().len(), 32);
    }

    #[test]
    fn the_builder_checks_its_settings() {
        assert!(matches!(
            Publisher::builder("ws://h:1").build(),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            Publisher::builder("https://h:1")
                .ca_pem("no certificate")
                .build(),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            Publisher::builder("h:1").device("a b").build(),
            Err(Error::Invalid(_))
        ));
        // {"sub":"D1","exp":1}: the token's device is the default.
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJEMSIsImV4cCI6MX0.sig";
        assert_eq!(
            Publisher::builder("h:1")
                .token(token)
                .build()
                .unwrap()
                .device(),
            Some("D1")
        );
    }
}
