//! PERE's client library: publish events and subscribe to them, with return receipts, from a
//! Rust program. `pere-pub` and `pere-sub` are thin layers over it.
//!
//! - [`Publisher`] pushes one event ([`Publisher::push`], with a type, a key or a wait for
//!   receipts) or a batch ([`Publisher::push_batch`]) and tries again while a failure may pass,
//!   with the same idempotency key each time: a retry never stores an event twice.
//! - [`Subscriber`] is a `Stream` of a channel's events: each handed over once, acknowledged
//!   with [`Event::ack`] (or automatically), resumed from the last id after every drop, paced by
//!   the server's `retry:`. It keeps one receipt request in flight: receipts asked for meanwhile
//!   go together in the next one, cumulative when they share a status, batched otherwise.
//!
//! ```no_run
//! # async fn run() -> Result<(), pere_client::Error> {
//! use futures_util::StreamExt;
//! use pere_client::{Item, Publisher, Subscriber};
//!
//! let mut feed = Subscriber::builder("127.0.0.1:4567", "ORDERS").device("H0039000000001").build()?;
//! let publisher = Publisher::builder("127.0.0.1:4567").build()?;
//! publisher.push("ORDERS", serde_json::json!({"order": 42})).await?;
//! while let Some(item) = feed.next().await {
//!     if let Item::Event(event) = item? {
//!         event.ack("shipped").await?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - [`publish`]: [`Publisher`], [`Push`], [`Batch`] and their answers;
//! - [`subscribe`]: [`Subscriber`], the [`Item`]s it yields, [`Event`] and its receipt;
//! - [`body`]: [`Body`], an event's text and whether it is JSON;
//! - [`error`]: [`Error`], by kind: invalid, refused ([`Refusal`]: the server's answer with its
//!   code, or why else), gave up (the last [`Failure`]: reqwest's error or the server's
//!   [`ErrorAnswer`]), each cause kept and given by `source()`;
//! - [`retry`]: one request's outcome (accepted, retryable, refused), which statuses may pass,
//!   and the retry loop under a [`Policy`];
//! - [`receipt`]: the receipt requests (one receipt, a batch, a cumulative receipt), their
//!   attempts and answers, and [`Acked`], the outcome of a receipt the subscriber sent itself;
//! - [`coalesce`]: which receipt request goes next, and when a cumulative one is safe;
//! - `outbox`: the task that sends a subscriber's receipts, one request at a time;
//! - [`ledger`]: which events are new, duplicates, or still owed a receipt;
//! - [`reconnect`]: the server's `retry:` and the wait before reconnecting;
//! - [`address`]: the server address (`http://` or `https://`) and endpoint URLs;
//! - [`tls`]: the CAs an `https://` client trusts, and a failed handshake told from a failure
//!   that may pass;
//! - [`ids`]: device ids in the original style, idempotency keys;
//! - [`device`]: the default device id kept per user in a small file;
//! - [`token`]: the bearer header a token adds to every request, and the device it speaks for;
//! - [`output`]: line-at-a-time printing and one-line failure descriptions (for the tools);
//! - [`interrupt`]: Ctrl-C, on which the tools stop with a summary;
//! - [`fatal`]: [`Fatal`], the tools' failure that retrying cannot fix.
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod address;
pub mod body;
pub mod coalesce;
pub mod device;
pub mod error;
pub mod fatal;
pub mod ids;
pub mod interrupt;
pub mod ledger;
mod outbox;
pub mod output;
pub mod publish;
pub mod receipt;
pub mod reconnect;
pub mod retry;
pub mod subscribe;
pub mod tls;
pub mod token;

pub use address::{base_url, endpoint};
pub use body::Body;
pub use error::{Error, ErrorAnswer, Failure, Refusal};
pub use fatal::Fatal;
pub use ids::{idempotency_key, random_device};
pub use publish::{
    Batch, BatchAnswer, BatchEvent, BatchPushed, Publisher, PublisherBuilder, Push, Pushed, Wait,
};
pub use reqwest::Url;
pub use retry::Policy;
pub use subscribe::{
    Ack, Acked, Event, Item, Reconnect, Subscriber, SubscriberBuilder, Via, MAX_RECEIPT_SPACING,
    RECEIPT_SPACING,
};
