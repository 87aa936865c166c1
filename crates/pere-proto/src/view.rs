//! What the admin views show of a channel ([`ChannelView`]) and of a device on it ([`DeviceView`]).

use crate::name::ChannelName;
use crate::receipt::DeviceRecord;

/// A channel as the admin views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelView {
    /// The channel.
    pub channel: ChannelName,
    /// Streams open on it on this node (feeds).
    pub open_streams: usize,
    /// The last event id given out (0 before the first event).
    pub head: u64,
    /// Events still retained for replay.
    pub retained: u64,
    /// Devices currently expected to acknowledge its new events.
    pub recipients: usize,
}

/// What the hub knows of one device on a channel, live and stored.
#[derive(Debug, Clone)]
pub struct DeviceView {
    /// The stored record.
    pub record: DeviceRecord,
    /// How many streams the device has open: on this node, or on the whole cluster where a view
    /// says so (the hub's paged device view with shared presence).
    pub open_streams: usize,
}
