//! The live receipt ledger of one channel: its current recipients, and for each recently
//! published event who is still expected to acknowledge it. It answers "is this event fully
//! acknowledged yet?" without a store read, wakes publishers waiting for receipts, and tells the
//! receipt stream when an event completes. The store stays the source of truth; this is a
//! bounded cache of the recent past.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::name::DeviceId;
use crate::receipt::Membership;

/// How many recent events per channel are followed live. Older events' summaries come from the
/// store; only their live completion notice and synchronous waits are given up.
pub const TRACKED_EVENTS: usize = 1024;

/// What a publisher waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// Every expected recipient acknowledged.
    All,
    /// At least this many devices acknowledged.
    AtLeast(usize),
}

/// An event's live acknowledgement state.
#[derive(Debug)]
pub(crate) struct OpenEvent {
    expected: usize,
    pending: HashSet<DeviceId>,
    acked: HashSet<DeviceId>,
    pub(crate) changed: Arc<Notify>,
}

impl OpenEvent {
    pub(crate) fn satisfies(&self, wait: WaitFor) -> bool {
        match wait {
            WaitFor::All => self.pending.is_empty(),
            WaitFor::AtLeast(n) => self.acked.len() >= n,
        }
    }
}

/// Sent when an event becomes fully acknowledged by its expected recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The event.
    pub event_id: u64,
    /// How many recipients were expected (all acknowledged).
    pub expected: usize,
}

/// What the ledger tells an observer outside the hub (such as the receipt webhook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerNotice {
    /// An event was published, expecting this many recipients.
    Published {
        /// The channel.
        channel: crate::name::ChannelName,
        /// The event.
        event_id: u64,
        /// How many recipients it expects.
        expected: usize,
    },
    /// An event became fully acknowledged.
    Completed {
        /// The channel.
        channel: crate::name::ChannelName,
        /// The event.
        event_id: u64,
    },
}

/// One channel's live ledger.
#[derive(Debug, Default)]
pub(crate) struct ChannelLedger {
    pub(crate) recipients: HashMap<DeviceId, Membership>,
    pub(crate) open: BTreeMap<u64, OpenEvent>,
}

impl ChannelLedger {
    /// Starts following event `id`, expected of the current recipients that joined before it.
    /// Returns how many recipients it expects.
    pub(crate) fn track(&mut self, id: u64) -> usize {
        let pending: HashSet<DeviceId> =
            self.recipients.values().filter(|m| m.expects(id)).map(|m| m.device.clone()).collect();
        let expected = pending.len();
        let open = OpenEvent { expected, pending, acked: HashSet::new(), changed: Arc::new(Notify::new()) };
        self.open.insert(id, open);
        while self.open.len() > TRACKED_EVENTS {
            self.open.pop_first();
        }
        expected
    }

    /// Records that `device` acknowledged `id`; returns the completion if this receipt completed it.
    pub(crate) fn acknowledge(&mut self, id: u64, device: &DeviceId) -> Option<Completion> {
        let open = self.open.get_mut(&id)?;
        let first_ack = open.acked.insert(device.clone());
        let was_expected = open.pending.remove(device);
        if first_ack {
            open.changed.notify_waiters();
        }
        (was_expected && open.pending.is_empty()).then_some(Completion { event_id: id, expected: open.expected })
    }

    /// Whether `device` still owes a receipt for `id` (false for events no longer followed).
    pub(crate) fn owes(&self, id: u64, device: &DeviceId) -> bool {
        self.open.get(&id).is_some_and(|open| open.pending.contains(device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(device: &str, joined_after: u64) -> Membership {
        Membership {
            channel: crate::name::ChannelName::new("C").unwrap(),
            device: DeviceId::new(device).unwrap(),
            joined_after,
            left_after: None,
            since: crate::event::now(),
        }
    }

    #[test]
    fn completes_when_every_expected_recipient_acknowledged() {
        let mut ledger = ChannelLedger::default();
        for m in [member("A", 0), member("B", 0), member("Late", 5)] {
            ledger.recipients.insert(m.device.clone(), m);
        }
        ledger.track(3);
        let (a, b, late) = (DeviceId::new("A").unwrap(), DeviceId::new("B").unwrap(), DeviceId::new("Late").unwrap());
        assert!(ledger.owes(3, &a) && !ledger.owes(3, &late));
        assert_eq!(ledger.acknowledge(3, &late), None, "not expected: no completion");
        assert!(ledger.open[&3].satisfies(WaitFor::AtLeast(1)));
        assert_eq!(ledger.acknowledge(3, &a), None);
        assert_eq!(ledger.acknowledge(3, &a), None, "a second receipt changes nothing");
        assert_eq!(ledger.acknowledge(3, &b), Some(Completion { event_id: 3, expected: 2 }));
        assert!(ledger.open[&3].satisfies(WaitFor::All));
        assert_eq!(ledger.acknowledge(99, &a), None);
    }

    #[test]
    fn follows_a_bounded_number_of_events() {
        let mut ledger = ChannelLedger::default();
        for id in 1..=(TRACKED_EVENTS as u64 + 10) {
            ledger.track(id);
        }
        assert_eq!(ledger.open.len(), TRACKED_EVENTS);
        assert_eq!(ledger.open.first_key_value().map(|(k, _)| *k), Some(11));
    }
}
