//! A subscriber's outbox: the receipts its events ask for, sent by one task, one request at a
//! time, coalesced by a [`Coalescer`]; each outcome goes to whoever waits for it (the caller of
//! `Event::ack`, or the stream, which yields it as `Item::Acked`).
//!
//! The task runs only while there is something to send: the first receipt asked for while the
//! outbox is idle starts it, at once (a quiet device's receipt leaves without delay), and it ends
//! when nothing waits. What the stream, its events and the task share is one [`Book`] behind a
//! mutex, never held across a request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use pere_proto::wire::{CumulativeAnswer, ReceiptBatchAnswer, ReceiptBatchLine, ReceiptJson};
use reqwest::StatusCode;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::coalesce::{Asked, Coalescer, Request};
use crate::error::{Error, Failure, Refusal};
use crate::ids::idempotency_key;
use crate::ledger::{Ledger, Owed};
use crate::receipt::{self, Acked, Via};
use crate::retry::{Outcome, Reply};

/// How many times a cumulative receipt is sent again while the server answers `"more":true`
/// (it bounds its work per request): far beyond any backlog a subscriber holds, and a bound, so
/// a server that always says "more" cannot keep the outbox busy forever.
const MAX_ROUNDS: u32 = 1000;

/// What the stream, the events it handed out and the outbox share.
#[derive(Debug)]
pub(crate) struct Book {
    /// Which ids are new, and which duplicates still owe a receipt.
    pub ledger: Ledger,
    /// The receipts waiting and in flight.
    pub coalescer: Coalescer<Waiter>,
    /// The `Last-Event-ID` for the next connection: the last new id, verbatim.
    pub resume: Option<String>,
    // The task is running (or about to).
    sending: bool,
    // The least time between the starts of two coalesced requests.
    spacing: Duration,
    // When the last request started.
    last_sent: Option<Instant>,
    // The stream was told that receipts go one by one.
    said_one_by_one: bool,
}

impl Book {
    /// A book that counts ids up to `start` as seen; `coalesce: false` sends every receipt alone;
    /// coalesced requests start at least `spacing` apart.
    pub fn new(
        start: Option<u64>,
        resume: Option<String>,
        coalesce: bool,
        spacing: Duration,
    ) -> Self {
        Book {
            ledger: Ledger::new(start),
            coalescer: Coalescer::new(coalesce),
            resume,
            sending: false,
            said_one_by_one: false,
            spacing,
            last_sent: None,
        }
    }

    /// When the next request may start, if not now: a device that sent one less than the
    /// spacing ago waits out the rest, and what it acknowledges meanwhile goes in that request.
    /// A device quiet for longer sends at once.
    fn next_send_at(&self) -> Option<Instant> {
        if !self.coalescer.merges() {
            return None;
        }
        let at = self.last_sent? + self.spacing;
        (at > Instant::now()).then_some(at)
    }
}

/// Locks the book. Nothing panics while holding it; a poisoned book is still the best there is.
pub(crate) fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Who hears how a receipt went.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// The caller of `Event::ack`.
    Caller(oneshot::Sender<Result<Option<ReceiptJson>, Error>>),
    /// The stream: an automatic receipt, or one sent again (`again`) because its event came back.
    Stream {
        /// Sent again.
        again: bool,
    },
}

/// What the outbox tells the stream.
#[derive(Debug)]
pub(crate) enum Report {
    /// A receipt the stream waits for went, or failed.
    Acked(Acked),
    /// The server refused a coalesced receipt as a form it does not know: one receipt per
    /// request from now until the feed reconnects. Told once per subscriber.
    OneByOne(String),
}

/// The outbox of one subscriber.
#[derive(Debug)]
pub(crate) struct Outbox {
    sender: receipt::Sender,
    book: Arc<Mutex<Book>>,
    reports: mpsc::UnboundedSender<Report>,
    // Where the task runs when a receipt is asked for outside a runtime's context: the one the
    // stream runs on (events, and so receipts, come only from there).
    runtime: OnceLock<Handle>,
}

impl Outbox {
    /// The outbox of a subscriber that sends with `sender`; what it tells the stream goes to
    /// `reports` (unbounded, yet bounded by the events the stream yielded: one report for each
    /// receipt the stream itself asked for, and one notice).
    pub fn new(
        sender: receipt::Sender,
        book: Arc<Mutex<Book>>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Self {
        Outbox {
            sender,
            book,
            reports,
            runtime: OnceLock::new(),
        }
    }

    /// Remembers the runtime the stream runs on.
    pub fn runs_on(&self, runtime: &Handle) {
        self.runtime.get_or_init(|| runtime.clone());
    }

    /// Asks for the receipt of event `id` with `status` (sent with `key`, else a fresh one);
    /// `waiter` hears how it went. Starts the task when it is not running.
    pub fn ask(self: &Arc<Self>, id: &str, status: &str, key: Option<String>, waiter: Waiter) {
        let key = key.unwrap_or_else(|| idempotency_key(&mut rand::thread_rng()));
        let mut book = lock(&self.book);
        book.coalescer.ask(Asked::new(id, status, key, waiter));
        if book.sending {
            return;
        }
        let Some(runtime) = Handle::try_current()
            .ok()
            .or_else(|| self.runtime.get().cloned())
        else {
            // No runtime to send from yet: it waits for the next receipt asked for from one.
            return;
        };
        book.sending = true;
        drop(book);
        runtime.spawn(Arc::clone(self).run());
    }

    /// The task: one request at a time, coalesced ones the spacing apart, until nothing waits.
    async fn run(self: Arc<Self>) {
        loop {
            let send_at = lock(&self.book).next_send_at();
            if let Some(at) = send_at {
                tokio::time::sleep_until(at).await;
            }
            let request = {
                let mut book = lock(&self.book);
                match book.coalescer.next_request() {
                    Some(request) => {
                        book.last_sent = Some(Instant::now());
                        request
                    }
                    None => {
                        book.sending = false;
                        return;
                    }
                }
            };
            match request {
                Request::Single(asked) => self.single(asked).await,
                Request::Batch(receipts) => self.batch(receipts).await,
                Request::Cumulative {
                    upto,
                    status,
                    receipts,
                    owed,
                } => self.cumulative(upto, &status, receipts, owed).await,
            }
        }
    }

    async fn single(&self, asked: Asked<Waiter>) {
        let outcome = self.sender.send(&asked.id, &asked.status, &asked.key).await;
        let result = {
            let mut book = lock(&self.book);
            book.coalescer.done();
            match outcome {
                Outcome::Accepted(receipt) => {
                    settled(&mut book, &asked);
                    Ok(receipt)
                }
                Outcome::Refused(refusal) => {
                    settled(&mut book, &asked);
                    Err(Error::Refused(refusal))
                }
                Outcome::Retryable(last) => Err(self.owed(&mut book, &asked, last)),
            }
        };
        self.tell(asked, Via::Single, result);
    }

    async fn batch(&self, receipts: Vec<Asked<Waiter>>) {
        let lines: Vec<ReceiptBatchLine> = receipts
            .iter()
            .map(|asked| ReceiptBatchLine {
                id: asked.number().unwrap_or_default(),
                status: Some(asked.status.clone()),
                key: Some(asked.key.clone()),
            })
            .collect();
        let outcome = self
            .sender
            .exchange(|| self.sender.batch_request(&lines))
            .await;
        let answer = match outcome {
            Outcome::Accepted(reply) => match answer::<ReceiptBatchAnswer>(&reply) {
                Some(answer) if answer.receipts.len() == receipts.len() => answer,
                _ => return self.refused(receipts, unexpected(&reply, "batched receipts")),
            },
            Outcome::Refused(refusal) => return self.refused(receipts, refusal),
            Outcome::Retryable(last) => {
                let via = Via::Batch {
                    seq: None,
                    replayed: false,
                };
                return self.failed(receipts, via, last);
            }
        };
        {
            let mut book = lock(&self.book);
            book.coalescer.done();
            for asked in &receipts {
                settled(&mut book, asked);
            }
        }
        for (asked, line) in receipts.into_iter().zip(answer.receipts) {
            let via = Via::Batch {
                seq: Some(line.seq),
                replayed: line.replayed,
            };
            self.tell(asked, via, Ok(None));
        }
    }

    async fn cumulative(
        &self,
        upto: u64,
        status: &str,
        receipts: Vec<Asked<Waiter>>,
        owed: Vec<u64>,
    ) {
        let mut acknowledged = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let outcome = self
                .sender
                .exchange(|| self.sender.cumulative_request(upto, status))
                .await;
            let answer = match outcome {
                Outcome::Accepted(reply) => match answer::<CumulativeAnswer>(&reply) {
                    Some(answer) if answer.upto == upto => answer,
                    _ => return self.refused(receipts, unexpected(&reply, "cumulative receipts")),
                },
                Outcome::Refused(refusal) => return self.refused(receipts, refusal),
                Outcome::Retryable(last) => {
                    let via = Via::Cumulative {
                        upto,
                        acknowledged: false,
                    };
                    return self.failed(receipts, via, last);
                }
            };
            acknowledged.extend(answer.ids);
            if !answer.more {
                break;
            }
        }
        {
            let mut book = lock(&self.book);
            book.coalescer.done();
            book.coalescer.settle_owed(&owed);
            for id in &owed {
                book.ledger.settled(*id);
            }
            for asked in &receipts {
                settled(&mut book, asked);
            }
        }
        for asked in receipts {
            let named = asked.number().is_some_and(|n| acknowledged.contains(&n));
            let via = Via::Cumulative {
                upto,
                acknowledged: named,
            };
            self.tell(asked, via, Ok(None));
        }
    }

    /// A coalesced request the server refused: its receipts go again, each alone, so each gets
    /// the server's own verdict. A refusal that says the server does not know the form (an
    /// older server) also turns coalescing off until the feed reconnects.
    fn refused(&self, receipts: Vec<Asked<Waiter>>, refusal: Refusal) {
        let mut book = lock(&self.book);
        book.coalescer.done();
        if unknown_form(&refusal) && book.coalescer.one_by_one() && !book.said_one_by_one {
            book.said_one_by_one = true;
            let why = format!(
                "the server does not take several receipts in one request ({refusal}): one \
                 request per receipt until the feed reconnects"
            );
            let _ = self.reports.send(Report::OneByOne(why));
        }
        book.coalescer.again_alone(receipts);
    }

    /// A coalesced request whose every attempt failed in a way that may pass: each receipt is
    /// owed, and sent again if its event comes back.
    fn failed(&self, receipts: Vec<Asked<Waiter>>, via: Via, last: Failure) {
        let results: Vec<Error> = {
            let mut book = lock(&self.book);
            book.coalescer.done();
            receipts
                .iter()
                .map(|asked| self.owed(&mut book, asked, last.clone()))
                .collect()
        };
        for (asked, err) in receipts.into_iter().zip(results) {
            self.tell(asked, via.clone(), Err(err));
        }
    }

    /// Notes that the receipt of `asked` is owed; the error its waiter hears.
    fn owed(&self, book: &mut Book, asked: &Asked<Waiter>, last: Failure) -> Error {
        if let Some(n) = asked.number() {
            book.ledger.unsettled(
                n,
                Owed {
                    status: asked.status.clone(),
                    key: asked.key.clone(),
                },
            );
            book.coalescer.owe(n, &asked.status);
        }
        Error::GaveUp {
            attempts: self.sender.policy.attempts.unwrap_or(1).max(1),
            last,
        }
    }

    fn tell(&self, asked: Asked<Waiter>, via: Via, result: Result<Option<ReceiptJson>, Error>) {
        match asked.waiter {
            Waiter::Caller(caller) => {
                // A caller that stopped waiting does not want to know.
                let _ = caller.send(result);
            }
            Waiter::Stream { again } => {
                let acked = Acked {
                    id: asked.id,
                    status: asked.status,
                    again,
                    via,
                    result,
                };
                // A stream that was dropped does not want to know either.
                let _ = self.reports.send(Report::Acked(acked));
            }
        }
    }
}

/// The receipt of `asked` got through, or never will: not to be sent again.
fn settled(book: &mut Book, asked: &Asked<Waiter>) {
    if let Some(n) = asked.number() {
        book.ledger.settled(n);
    }
}

/// A success answer read as `T`.
fn answer<T: serde::de::DeserializeOwned>(reply: &Reply) -> Option<T> {
    serde_json::from_str(&reply.body).ok()
}

/// A success answer that is not the one a form asks for: the server took the request for
/// something else (a server that does not know the form).
fn unexpected(reply: &Reply, form: &str) -> Refusal {
    Refusal::Unexpected {
        status: reply.status,
        message: format!("HTTP {} that is no answer to {form}", reply.status),
    }
}

/// A refusal that says the server does not know the coalesced forms: a success answer of
/// another shape, 415, or the 400 an older PERE gives a body without an event id or with several
/// JSON lines.
fn unknown_form(refusal: &Refusal) -> bool {
    match refusal {
        Refusal::Unexpected { .. } => true,
        Refusal::Answer(answer) if answer.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE => true,
        Refusal::Answer(answer) if answer.status() == StatusCode::BAD_REQUEST => matches!(
            answer.code(),
            None | Some("missing_event_id" | "invalid_json" | "bad_event_id")
        ),
        _ => false,
    }
}

/// A receipt on its way, from [`Event::ack`](crate::Event::ack): the receipt is asked for when
/// `ack` is called, and goes whether or not this is awaited; awaiting it gives its outcome.
#[derive(Debug)]
#[must_use = "the receipt goes anyway; await it to know how it went"]
pub struct Ack {
    state: AckState,
}

#[derive(Debug)]
enum AckState {
    Ready(Option<Result<Option<ReceiptJson>, Error>>),
    Waiting(oneshot::Receiver<Result<Option<ReceiptJson>, Error>>),
}

impl Ack {
    /// An outcome known at once (a receipt that cannot be sent).
    pub(crate) fn ready(result: Result<Option<ReceiptJson>, Error>) -> Self {
        Ack {
            state: AckState::Ready(Some(result)),
        }
    }

    /// An outcome the outbox gives later.
    pub(crate) fn waiting(receiver: oneshot::Receiver<Result<Option<ReceiptJson>, Error>>) -> Self {
        Ack {
            state: AckState::Waiting(receiver),
        }
    }
}

impl Future for Ack {
    type Output = Result<Option<ReceiptJson>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            AckState::Ready(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err(Error::Invalid("the outcome was already taken".into()))),
            ),
            AckState::Waiting(receiver) => Pin::new(receiver).poll(cx).map(|outcome| {
                outcome.unwrap_or_else(|_| {
                    Err(Error::Invalid(
                        "the receipt was dropped unsent: its runtime stopped".into(),
                    ))
                })
            }),
        }
    }
}
