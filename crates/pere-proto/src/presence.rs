//! Presence: a device going online or offline on a channel ([`PresenceChange`]).

use chrono::{DateTime, Utc};

use crate::name::DeviceId;

/// A device going online or offline on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// Position in the channel's presence stream, increasing: per node (from 1 on a fresh node,
    /// and above every earlier position when a channel is loaded again), or, with presence
    /// shared through the store, the store's, the same on every node.
    pub seq: u64,
    /// The device.
    pub device: DeviceId,
    /// Online (its first stream opened) or offline (its last stream closed).
    pub online: bool,
    /// When.
    pub at: DateTime<Utc>,
}
