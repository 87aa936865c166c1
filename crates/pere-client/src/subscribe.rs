//! Subscribing: a [`Subscriber`] is a `Stream` of one channel's events (`GET /feed/:channel`),
//! each handed over once, with its return receipt ([`Event::ack`]); it resumes from the last id
//! it saw after every drop, at the pace the server's `retry:` sets, and sends again a receipt
//! that failed when its event comes back.
//!
//! Receipts leave through the subscriber's outbox, one request at a time: those asked for while
//! one is in flight go together in the next (see [`crate::coalesce`]). The stream never waits for
//! a receipt before reading on; the outcome of an automatic receipt comes as a later item.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::stream::Stream;
use futures_util::StreamExt;
use pere_proto::sse::{GAP_EVENT_TYPE, RESET_EVENT_TYPE};
use pere_proto::wire::{GapNotice, ResetNotice};
use pere_proto::{ChannelName, DeviceId};
use reqwest::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER,
};
use reqwest::{Client, RequestBuilder, Response, Url};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::address::{base_url, endpoint};
use crate::error::{Error, ErrorAnswer, Failure, Refusal};
use crate::ledger::{Ledger, Verdict};
pub use crate::outbox::Ack;
use crate::outbox::{lock, Book, Outbox, Report, Waiter};
use crate::output::describe_transport;
use crate::receipt::{self, RECEIPT_RETRY};
pub use crate::receipt::{Acked, Via};
use crate::reconnect::{backoff, RetryScanner, DEFAULT_RETRY};
use crate::retry::{is_transient, Policy};
use crate::tls;
use crate::token;

/// Reconnect when nothing at all, not even a keep-alive comment, arrives for this long: the
/// server sends one every 15 s, so three missed ones mean the connection is dead.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// How long to wait for a TCP connection before counting the attempt as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default least time between the starts of two coalesced receipt requests: a device
/// receiving events faster than ten a second sends ten requests a second, each acknowledging
/// what came since the last, and its receipts reach the ledger at most this much later than
/// they would one by one; a device receiving fewer sends each receipt at once.
pub const RECEIPT_SPACING: Duration = Duration::from_millis(100);

/// The longest receipt spacing a subscriber keeps (a longer one is taken as this): receipts a
/// minute late are as late as a ledger can usefully be.
pub const MAX_RECEIPT_SPACING: Duration = Duration::from_secs(60);

/// What a [`Subscriber`] yields.
#[derive(Debug)]
#[non_exhaustive]
pub enum Item {
    /// The feed is open (after the first connection and after each reconnection): from here on
    /// nothing published is missed.
    Connected,
    /// A new event: each id once, in order, however often the server sends it.
    Event(Event),
    /// A receipt the subscriber sent by itself: the automatic receipt of an event it yielded
    /// (see [`SubscriberBuilder::auto_ack`]), or a receipt that had failed, sent again because
    /// its event came back. It comes when the server answered, which may be after later events.
    Acked(Acked),
    /// The server refused a batched or cumulative receipt as a form it does not know (an older
    /// server): receipts go one per request until the feed reconnects, then coalesced receipts
    /// are tried again. Yielded once per subscriber.
    OneByOne {
        /// What the server answered, in one line.
        reason: String,
    },
    /// `pere-gap`: events the subscriber should have had cannot be sent by the server (no longer
    /// retained, or damaged in its store).
    Gap {
        /// The missing ids, when the notice could be read.
        notice: Option<GapNotice>,
        /// The notice as sent.
        data: String,
    },
    /// `pere-reset`: the server does not know the position the subscriber resumed from (it
    /// lost its history); ids start over, and the subscriber has forgotten the ids it saw.
    Reset {
        /// The position asked for and the server's last id, when the notice could be read.
        notice: Option<ResetNotice>,
        /// The notice as sent.
        data: String,
    },
    /// The feed dropped or could not be opened; the subscriber reconnects after `delay`.
    Reconnecting(Reconnect),
}

/// A dropped or refused connection, and when the next attempt comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// Why, in one line.
    pub reason: String,
    /// Failed connection attempts in a row (0: an open feed dropped).
    pub failures: u32,
    /// The wait before the next attempt.
    pub delay: Duration,
    /// The `Last-Event-ID` the next attempt sends.
    pub last_event_id: Option<String>,
}

/// One event of the channel.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its id (`id:`): the channel's sequence number on a PERE server.
    pub id: String,
    /// Its type (`event:`), `message` when none was given.
    pub event: String,
    /// Its body (the `data:` lines, joined by LF).
    pub data: String,
    outbox: Option<Arc<Outbox>>,
}

impl Event {
    /// The id as a number; `None` for an id that is not one (the original PERE's timestamps).
    pub fn number(&self) -> Option<u64> {
        self.id.parse().ok()
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    /// `serde_json`'s, when the body is not a `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.data)
    }

    /// Sends this event's return receipt with `status` (`POST /feedback/:channel`), with one
    /// `Idempotency-Key` for every attempt (three, 200 and 400 ms apart, by default), so the
    /// server records it once. A receipt that still failed in a way that may pass is sent again,
    /// by the subscriber, when the server delivers the event again.
    ///
    /// The receipt is asked for when `ack` is called: it goes whether or not the returned
    /// [`Ack`] is awaited, which gives its outcome. The subscriber keeps one receipt request in
    /// flight; receipts asked for meanwhile (by tasks that acknowledge without waiting for each
    /// other) go together in the next request, as a batch or a cumulative receipt, and their
    /// outcome then holds no receipt record (`Ok(None)`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a subscriber without a device (an anonymous listener sends no
    /// receipts) or an event without an id; [`Error::Refused`] when the server refuses it (404
    /// `unknown_event`, …); [`Error::GaveUp`] when every attempt failed.
    pub fn ack(&self, status: &str) -> Ack {
        let Some(outbox) = &self.outbox else {
            return Ack::ready(Err(Error::Invalid(
                "an anonymous subscriber (no device) sends no receipts".into(),
            )));
        };
        if self.id.is_empty() {
            return Ack::ready(Err(Error::Invalid(
                "an event without an id cannot be acknowledged".into(),
            )));
        }
        let (caller, outcome) = oneshot::channel();
        outbox.ask(&self.id, status, None, Waiter::Caller(caller));
        Ack::waiting(outcome)
    }
}

/// Settings for a [`Subscriber`]; [`SubscriberBuilder::build`] checks them.
#[derive(Debug, Clone)]
pub struct SubscriberBuilder {
    server: String,
    channel: String,
    device: Option<String>,
    token: Option<String>,
    client: Option<Client>,
    ca_pem: Option<Vec<u8>>,
    auto_ack: Option<String>,
    last_event_id: Option<String>,
    idle_timeout: Option<Duration>,
    max_failures: Option<u32>,
    receipt_retry: Policy,
    coalesce: bool,
    receipt_spacing: Duration,
}

impl SubscriberBuilder {
    /// The device (`device` header) [default: the token's subject, else none: an anonymous
    /// listener, which the server never expects receipts from and which sends none]. Keep it the
    /// same from run to run: each new id is a new recipient the server expects receipts from.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// A token (from `pere-server token`) sent as `Authorization: Bearer` with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The HTTP client to use [default: one with a 10 s connect timeout and the idle timeout as
    /// its read timeout]. A client given here should have a read timeout of its own, or a dead
    /// connection is noticed only by the operating system.
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// For an `https://` server whose certificate a private CA signed: trust the CA
    /// certificates in `pem` (PEM, one or more) instead of the system's [default: the
    /// system's]. Applies to the client the builder makes, not to one given with
    /// [`SubscriberBuilder::client`].
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Acknowledge every new event with `status` by itself, once the application asks for the
    /// next item (so after it handled the event); the outcome follows as [`Item::Acked`] when
    /// the server answered (the stream reads on meanwhile) [default: the application calls
    /// [`Event::ack`]].
    pub fn auto_ack(mut self, status: impl Into<String>) -> Self {
        self.auto_ack = Some(status.into());
        self
    }

    /// Start after this event id: sent as `Last-Event-ID` on the first connection; events up to
    /// it count as already seen [default: the server's choice: after the last event this device
    /// acknowledged, or the retained history for a device it does not know].
    pub fn last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = Some(id.into());
        self
    }

    /// Reconnect when nothing, not even a keep-alive comment, arrives for this long; `None`
    /// waits forever [default: [`DEFAULT_IDLE_TIMEOUT`]]. Applies to the client the builder
    /// makes, not to one given with [`SubscriberBuilder::client`].
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// End the stream with [`Error::GaveUp`] after this many failed connection attempts in a
    /// row [default: `None`, never: the subscriber waits for the server to come back].
    pub fn max_failures(mut self, failures: Option<u32>) -> Self {
        self.max_failures = failures.filter(|&n| n > 0);
        self
    }

    /// The attempts per receipt [default: 3, 200 ms apart and doubling].
    pub fn receipt_retry(mut self, policy: Policy) -> Self {
        self.receipt_retry = policy;
        self
    }

    /// Whether receipts asked for while one request is in flight go together in the next one,
    /// as one cumulative receipt when they can, as a batch otherwise [default: true]. `false`
    /// sends each receipt in a request of its own, in the original form, still one at a time.
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// The least time between the starts of two coalesced receipt requests [default:
    /// [`RECEIPT_SPACING`], 100 ms]. A device that sent one less than this ago waits out the
    /// rest, and whatever it acknowledges meanwhile goes in that request; a quiet device
    /// acknowledges at once. So a device receiving many events a second sends a few requests a
    /// second, not one per event. Zero sends the next request as soon as the last one is
    /// answered; at most [`MAX_RECEIPT_SPACING`]. Receipts sent one by one (`coalesce(false)`)
    /// are never held.
    pub fn receipt_spacing(mut self, spacing: Duration) -> Self {
        self.receipt_spacing = spacing.min(MAX_RECEIPT_SPACING);
        self
    }

    /// The subscriber. It connects when first polled.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a server address that is neither `http://` nor `https://`, a
    /// channel or device id the server would refuse, a start id that cannot travel in a header,
    /// a token that cannot, or a CA that holds no certificate.
    pub fn build(self) -> Result<Subscriber, Error> {
        let base = base_url(&self.server).map_err(Error::Invalid)?;
        let channel = &self.channel;
        ChannelName::new(channel)
            .map_err(|e| Error::Invalid(format!("invalid channel {channel:?}: {e}")))?;
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
        if let Some(id) = &self.last_event_id {
            if id.is_empty() || HeaderValue::from_str(id).is_err() {
                return Err(Error::Invalid(format!("invalid event id {id:?}")));
            }
        }
        let client = match self.client {
            Some(client) => client,
            None => {
                let mut client = tls::trust(
                    Client::builder().connect_timeout(CONNECT_TIMEOUT),
                    self.ca_pem.as_deref(),
                )?;
                if let Some(idle) = self.idle_timeout {
                    // Applies to each read, so the server's keep-alive comments keep a quiet
                    // feed alive.
                    client = client.read_timeout(idle);
                }
                client
                    .build()
                    .map_err(|e| Error::Invalid(format!("cannot make an HTTP client: {e}")))?
            }
        };
        let start = self.last_event_id.as_deref().and_then(|id| id.parse().ok());
        let book = Arc::new(Mutex::new(Book::new(
            start,
            self.last_event_id,
            self.coalesce,
            self.receipt_spacing,
        )));
        let (reports, reported) = mpsc::unbounded_channel();
        let outbox = device.clone().map(|device| {
            let sender = receipt::Sender {
                client: client.clone(),
                url: endpoint(&base, "feedback", channel),
                device,
                token: token.clone(),
                policy: self.receipt_retry,
            };
            let outbox = Outbox::new(sender, Arc::clone(&book), reports);
            if let Ok(runtime) = Handle::try_current() {
                outbox.runs_on(&runtime);
            }
            Arc::new(outbox)
        });
        let feed_url = endpoint(&base, "feed", channel);
        let finishing = Arc::new(AtomicBool::new(false));
        let state = State {
            client,
            feed_url: feed_url.clone(),
            device: device.clone(),
            token,
            outbox,
            book: Arc::clone(&book),
            reported,
            under_way: 0,
            finishing: Arc::clone(&finishing),
            auto_ack: self.auto_ack,
            idle_timeout: self.idle_timeout,
            max_failures: self.max_failures,
            retry_ms: Arc::new(AtomicU64::new(DEFAULT_RETRY.as_millis() as u64)),
            failures: 0,
            events: None,
            sleeping: None,
            connecting: None,
            to_ack: None,
            done: false,
        };
        let stream = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        });
        Ok(Subscriber {
            stream: Box::pin(stream),
            book,
            finishing,
            feed_url,
            device,
        })
    }
}

/// A subscription to one channel: a `Stream` of [`Item`]s that ends only after an error (the
/// server refused the feed, its TLS handshake failed, or [`SubscriberBuilder::max_failures`]
/// attempts failed in a row).
///
/// ```no_run
/// # async fn run() -> Result<(), pere_client::Error> {
/// use futures_util::StreamExt;
/// use pere_client::{Item, Subscriber};
///
/// let mut feed = Subscriber::builder("127.0.0.1:4567", "ORDERS").device("H0039000000001").build()?;
/// while let Some(item) = feed.next().await {
///     match item? {
///         Item::Event(event) => {
///             println!("{} {}: {}", event.id, event.event, event.data);
///             event.ack("done").await?;
///         }
///         Item::Gap { data, .. } => eprintln!("missed for good: {data}"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Subscriber {
    stream: Pin<Box<dyn Stream<Item = Result<Item, Error>> + Send>>,
    book: Arc<Mutex<Book>>,
    finishing: Arc<AtomicBool>,
    feed_url: Url,
    device: Option<String>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("feed_url", &self.feed_url.as_str())
            .field("device", &self.device)
            .field("last_event_id", &self.last_event_id())
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Settings for a subscriber to `channel` on `server` (`host:port`, or an `http://` or
    /// `https://` URL).
    pub fn builder(server: impl Into<String>, channel: impl Into<String>) -> SubscriberBuilder {
        SubscriberBuilder {
            server: server.into(),
            channel: channel.into(),
            device: None,
            token: None,
            client: None,
            ca_pem: None,
            auto_ack: None,
            last_event_id: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_failures: None,
            receipt_retry: RECEIPT_RETRY,
            coalesce: true,
            receipt_spacing: RECEIPT_SPACING,
        }
    }

    /// The position the next connection resumes from: the id of the last new event.
    pub fn last_event_id(&self) -> Option<String> {
        lock(&self.book).resume.clone()
    }

    /// The highest event id seen (forgotten on `pere-reset`).
    pub fn last_seen(&self) -> Option<u64> {
        lock(&self.book).ledger.last_seen()
    }

    /// Makes the next items the outcomes ([`Item::Acked`]) of the automatic receipts under way,
    /// the receipt of the last event yielded included, before anything more is read from the
    /// feed; once none is left, the stream reads on. For a program that stops after some events
    /// (`pere-sub --count`): it learns how their receipts went without being handed more events.
    pub fn finish_receipts(&self) {
        self.finishing.store(true, Ordering::Relaxed);
    }

    /// The device it subscribes as, if any.
    pub fn device(&self) -> Option<&str> {
        self.device.as_deref()
    }

    /// `GET /feed/:channel` on the server.
    pub fn feed_url(&self) -> &Url {
        &self.feed_url
    }
}

impl Stream for Subscriber {
    type Item = Result<Item, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// The bytes of an open feed, parsed into events.
type Events = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// The outcome of a connection attempt.
enum Connect {
    Open(Response),
    /// Why, and the server's `Retry-After`, if any.
    Retry(Failure, Option<Duration>),
    Refused(Refusal),
}

/// The subscription's working state, owned by its stream.
struct State {
    client: Client,
    feed_url: Url,
    device: Option<String>,
    token: Option<HeaderValue>,
    // None for an anonymous listener, which sends no receipts.
    outbox: Option<Arc<Outbox>>,
    book: Arc<Mutex<Book>>,
    // What the outbox tells the stream.
    reported: mpsc::UnboundedReceiver<Report>,
    // Receipts the stream asked for whose outcome has not been yielded yet.
    under_way: usize,
    // Set by `Subscriber::finish_receipts`.
    finishing: Arc<AtomicBool>,
    auto_ack: Option<String>,
    idle_timeout: Option<Duration>,
    max_failures: Option<u32>,
    // The server's `retry:` in milliseconds; shared with the byte scanner of the current feed.
    retry_ms: Arc<AtomicU64>,
    failures: u32,
    events: Option<Events>,
    // The wait before the next connection attempt, and that attempt, under way: kept across
    // items, so an outcome yielded meanwhile does not start them over.
    sleeping: Option<Pin<Box<tokio::time::Sleep>>>,
    connecting: Option<Pin<Box<dyn Future<Output = Connect> + Send>>>,
    // The event whose automatic receipt is due when the next item is asked for.
    to_ack: Option<String>,
    done: bool,
}

/// What the stream waited for, whichever came first.
enum Step {
    Reported(Option<Report>),
    Slept,
    Connected(Connect),
    Read(Option<Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>),
}

impl State {
    async fn next(&mut self) -> Option<Result<Item, Error>> {
        if self.done {
            return None;
        }
        if let Some(outbox) = &self.outbox {
            outbox.runs_on(&Handle::current());
        }
        if let Some(id) = self.to_ack.take() {
            if let (Some(outbox), Some(status)) = (&self.outbox, &self.auto_ack) {
                outbox.ask(&id, status, None, Waiter::Stream { again: false });
                self.under_way += 1;
            }
        }
        // Outcomes already in come first.
        if let Ok(report) = self.reported.try_recv() {
            return Some(Ok(self.report(report)));
        }
        if self.finishing.load(Ordering::Relaxed) {
            if self.under_way > 0 {
                if let Some(report) = self.reported.recv().await {
                    return Some(Ok(self.report(report)));
                }
            }
            self.finishing.store(false, Ordering::Relaxed);
        }
        loop {
            // An anonymous listener has no outbox, and nothing to hear from it.
            let watching = self.outbox.is_some();
            let step = if let Some(events) = self.events.as_mut() {
                tokio::select! {
                    biased;
                    report = self.reported.recv(), if watching => Step::Reported(report),
                    read = events.next() => Step::Read(read),
                }
            } else if let Some(sleeping) = self.sleeping.as_mut() {
                tokio::select! {
                    biased;
                    report = self.reported.recv(), if watching => Step::Reported(report),
                    () = sleeping => Step::Slept,
                }
            } else {
                if self.connecting.is_none() {
                    let attempt = connect(self.request());
                    self.connecting = Some(Box::pin(attempt));
                }
                let Some(connecting) = self.connecting.as_mut() else {
                    continue;
                };
                tokio::select! {
                    biased;
                    report = self.reported.recv(), if watching => Step::Reported(report),
                    connected = connecting => Step::Connected(connected),
                }
            };
            match step {
                Step::Reported(Some(report)) => return Some(Ok(self.report(report))),
                // The outbox lives as long as the stream, so this cannot be; if it were, there
                // would be nothing more to hear from it.
                Step::Reported(None) => {
                    self.under_way = 0;
                    self.outbox = None;
                }
                Step::Slept => self.sleeping = None,
                Step::Connected(connected) => {
                    self.connecting = None;
                    return Some(self.connected(connected));
                }
                Step::Read(Some(Ok(event))) => {
                    if let Some(item) = self.on_event(event) {
                        return Some(Ok(item));
                    }
                }
                Step::Read(Some(Err(err))) => {
                    let why = self.describe(err);
                    self.events = None;
                    return Some(Ok(self.reconnecting(why, None)));
                }
                Step::Read(None) => {
                    self.events = None;
                    let why = "the server closed the stream".to_owned();
                    return Some(Ok(self.reconnecting(why, None)));
                }
            }
        }
    }

    /// An outcome of the outbox, as an item.
    fn report(&mut self, report: Report) -> Item {
        match report {
            Report::Acked(acked) => {
                self.under_way = self.under_way.saturating_sub(1);
                Item::Acked(acked)
            }
            Report::OneByOne(reason) => Item::OneByOne { reason },
        }
    }

    /// How a connection attempt went, as an item (or the end).
    fn connected(&mut self, connected: Connect) -> Result<Item, Error> {
        match connected {
            Connect::Open(response) => {
                self.failures = 0;
                self.events = Some(self.read(response));
                lock(&self.book).coalescer.reconnected();
                Ok(Item::Connected)
            }
            Connect::Refused(refusal) => {
                self.done = true;
                Err(Error::Refused(refusal))
            }
            Connect::Retry(last, retry_after) => {
                self.failures += 1;
                if self.max_failures.is_some_and(|max| self.failures >= max) {
                    self.done = true;
                    return Err(Error::GaveUp {
                        attempts: self.failures,
                        last,
                    });
                }
                Ok(self.reconnecting(last.to_string(), retry_after))
            }
        }
    }

    /// The feed request, from the current position.
    fn request(&self) -> RequestBuilder {
        let mut request = self
            .client
            .get(self.feed_url.clone())
            .header(ACCEPT, "text/event-stream")
            .header(CACHE_CONTROL, "no-cache");
        if let Some(device) = &self.device {
            request = request.header("device", device);
        }
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, token.clone());
        }
        if let Some(id) = &lock(&self.book).resume {
            request = request.header("Last-Event-ID", id);
        }
        request
    }

    fn read(&self, response: Response) -> Events {
        let retry_ms = Arc::clone(&self.retry_ms);
        let mut scanner = RetryScanner::default();
        let bytes = response.bytes_stream().map(move |chunk| {
            if let Ok(bytes) = &chunk {
                if let Some(ms) = scanner.feed(bytes) {
                    retry_ms.store(ms, Ordering::Relaxed);
                }
            }
            chunk
        });
        Box::pin(bytes.eventsource())
    }

    fn reconnecting(&mut self, reason: String, retry_after: Option<Duration>) -> Item {
        let retry = Duration::from_millis(self.retry_ms.load(Ordering::Relaxed));
        let mut delay = backoff(retry, self.failures, &mut rand::thread_rng());
        if let Some(after) = retry_after {
            delay = delay.max(after);
        }
        self.sleeping = Some(Box::pin(tokio::time::sleep(delay)));
        let last_event_id = lock(&self.book).resume.clone();
        Item::Reconnecting(Reconnect {
            reason,
            failures: self.failures,
            delay,
            last_event_id,
        })
    }

    fn describe(&self, err: EventStreamError<reqwest::Error>) -> String {
        match err {
            EventStreamError::Transport(err) if err.is_timeout() => match self.idle_timeout {
                Some(idle) => format!(
                    "nothing received for {} s, not even a keep-alive",
                    idle.as_secs()
                ),
                None => describe_transport(err),
            },
            EventStreamError::Transport(err) => {
                format!("the stream broke: {}", describe_transport(err))
            }
            other => format!("unreadable stream: {other}"),
        }
    }

    /// Sorts one event out: an item to yield, or nothing (a duplicate).
    fn on_event(&mut self, event: eventsource_stream::Event) -> Option<Item> {
        if event.event == GAP_EVENT_TYPE {
            return Some(Item::Gap {
                notice: serde_json::from_str(&event.data).ok(),
                data: event.data,
            });
        }
        if event.event == RESET_EVENT_TYPE {
            // The server lost the history our ids came from: what it sends now is all new.
            let mut book = lock(&self.book);
            book.ledger = Ledger::new(None);
            book.coalescer.forget();
            drop(book);
            return Some(Item::Reset {
                notice: serde_json::from_str(&event.data).ok(),
                data: event.data,
            });
        }
        let id = event.id;
        // An id that is no PERE sequence number (the original server's timestamps) cannot be
        // ordered: such events are all new. (An event without `id:` keeps the previous id, as in
        // a browser, and so reads as a duplicate.)
        let verdict = {
            let mut book = lock(&self.book);
            let number = id.parse::<u64>().ok();
            let verdict = number.map_or(Verdict::New, |n| book.ledger.classify(n));
            if verdict == Verdict::New && !id.is_empty() {
                book.resume = Some(id.clone());
                if let (Some(n), Some(_)) = (number, &self.outbox) {
                    book.coalescer.received(n);
                }
            }
            verdict
        };
        match verdict {
            Verdict::Skip => None,
            Verdict::Reack(owed) => {
                // Its outcome comes as an item once the server answered.
                let outbox = self.outbox.as_ref()?;
                let again = Waiter::Stream { again: true };
                outbox.ask(&id, &owed.status, Some(owed.key), again);
                self.under_way += 1;
                None
            }
            Verdict::New => {
                if self.auto_ack.is_some() && self.outbox.is_some() && !id.is_empty() {
                    self.to_ack = Some(id.clone());
                }
                Some(Item::Event(Event {
                    id,
                    event: event.event,
                    data: event.data,
                    outbox: self.outbox.clone(),
                }))
            }
        }
    }
}

/// Opens a feed.
async fn connect(request: RequestBuilder) -> Connect {
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) if err.is_builder() => return Connect::Refused(Refusal::request(err)),
        Err(err) if tls::is_handshake_failure(&err) => return Connect::Refused(Refusal::tls(err)),
        Err(err) => return Connect::Retry(Failure::transport(err), None),
    };
    let status = response.status();
    if status.is_success() {
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type.starts_with("text/event-stream") {
            let why = format!("HTTP {status} with {content_type:?}, not an event stream");
            return Connect::Refused(Refusal::Unexpected {
                status,
                message: why,
            });
        }
        return Connect::Open(response);
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    let answer = ErrorAnswer::new(status, &body);
    if is_transient(status) || status.is_redirection() {
        Connect::Retry(Failure::Answer(answer), retry_after)
    } else {
        Connect::Refused(Refusal::Answer(answer))
    }
}
