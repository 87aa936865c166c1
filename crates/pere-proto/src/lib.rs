//! What both sides of PERE's wire share: the server, the client library and the tools build on it,
//! and it builds on no runtime, HTTP stack or store, so a client compiles none of them.
//!
//! Layout:
//! - [`name`]: validated channel names, device ids and event types;
//! - [`error`]: what is wrong with a name;
//! - [`sse`]: the Server-Sent Events encoder and the protocol's event types;
//! - [`event`]: events as published and as stored, and their times;
//! - [`receipt`]: return receipts, device records, receipt summaries and completions;
//! - [`presence`]: devices going online and offline;
//! - [`view`]: channels and devices as the admin views show them;
//! - [`wire`]: every JSON shape on the wire.
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod error;
pub mod event;
pub mod name;
pub mod presence;
pub mod receipt;
pub mod sse;
pub mod view;
pub mod wire;

pub use error::NameError;
pub use event::{Event, NewEvent};
pub use name::{ChannelName, DeviceId, EventType};
pub use presence::PresenceChange;
pub use receipt::{Completion, DeviceRecord, Membership, Receipt, ReceiptSummary, StatusClass};
pub use view::{ChannelView, DeviceView};
