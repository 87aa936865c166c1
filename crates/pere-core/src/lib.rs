//! PERE's core: the channel / event / receipt model and the engine that moves events, with no
//! HTTP in sight.
//!
//! Layout:
//! - [`store`]: the storage contract and its backends (memory; SQLite and Redis, each behind
//!   the Cargo feature of its name), the Redis one with the Redis side of the bus;
//! - `cluster` (feature `redis`): joins a hub to other nodes through the Redis bus: other
//!   nodes' changes fed to the hub, this node's open streams registered for the cluster-wide
//!   views;
//! - [`hub`]: local fan-out, resume, presence and the ledger's operations, each change applied
//!   by one `apply_*` method;
//! - [`notice`]: what the hub tells its observers, and the observers themselves;
//! - [`follow`]: following a channel's receipt stream, in order and resumable;
//! - [`ledger`]: the live receipt ledger: recipients and who still owes a receipt;
//! - [`error`]: the store's error type.
//!
//! What travels on the wire (names, events, receipts, the JSON views) is `pere-proto`'s; the
//! types an embedder needs most are re-exported here.
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

#[cfg(feature = "redis")]
pub mod cluster;
pub mod error;
pub mod follow;
pub mod hub;
pub mod ledger;
pub mod notice;
pub mod store;

pub use error::StoreError;
pub use follow::{ReceiptFollow, ReceiptItem};
pub use hub::{
    ChannelWatch, Cumulative, CutReason, DirectWrite, FeedItem, Hub, HubConfig, SubscribeRequest,
    Subscription,
};
pub use ledger::WaitFor;
pub use notice::HubNotice;
pub use pere_proto::{
    ChannelName, ChannelView, DeviceId, DeviceRecord, Event, EventType, Membership, NameError,
    NewEvent, Receipt,
};
pub use store::{
    Appended, MemoryStore, ReceiptBatch, ReceiptLine, RecordedLine, RecordedReceipt, Retention,
    Store,
};
