//! PERE's core: the channel / event / receipt model and the engine that moves events, with no
//! HTTP in sight.
//!
//! Layout:
//! - [`name`]: validated channel names, device ids and event types;
//! - [`event`]: events as published and as stored;
//! - [`sse`]: the Server-Sent Events encoder;
//! - [`receipt`]: return receipts and device records (the ledger's rows);
//! - [`store`]: the storage contract and its backends (memory, SQLite, Redis);
//! - [`bus`]: the link between nodes sharing one Redis: other nodes' changes fed to the hub,
//!   this node's open streams registered for the cluster-wide views;
//! - [`hub`]: local fan-out, resume, presence and the ledger's operations, each change applied
//!   by one `apply_*` method;
//! - [`notice`]: what the hub tells its observers, and the observers themselves;
//! - [`follow`]: following a channel's receipt stream, in order and resumable;
//! - [`ledger`]: the live receipt ledger: recipients and who still owes a receipt;
//! - [`wire`]: JSON shapes shared with the command-line tools;
//! - [`error`]: the error types.
#![deny(missing_docs, missing_debug_implementations)]

pub mod bus;
pub mod error;
pub mod event;
pub mod follow;
pub mod hub;
pub mod ledger;
pub mod name;
pub mod notice;
pub mod receipt;
pub mod sse;
pub mod store;
pub mod wire;

pub use error::{NameError, StoreError};
pub use event::{Event, NewEvent};
pub use follow::{ReceiptFollow, ReceiptItem};
pub use hub::{ChannelView, FeedItem, Hub, HubConfig, SubscribeRequest, Subscription};
pub use ledger::WaitFor;
pub use name::{ChannelName, DeviceId, EventType};
pub use notice::HubNotice;
pub use receipt::{DeviceRecord, Membership, Receipt};
pub use store::{Appended, MemoryStore, RecordedReceipt, Retention, Store};
