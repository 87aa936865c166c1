//! What the hub tells observers outside it ([`HubNotice`]: publications, receipts, completions,
//! presence, membership, cut subscribers) and the set of observers that hears it, where a slow
//! observer loses notices, counted, rather than slowing the hub.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::ledger::Completion;
use crate::name::{ChannelName, DeviceId};
use crate::receipt::{Membership, Receipt};

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

/// One change the hub applied, as observers hear of it (see [`Hub::observe`](crate::hub::Hub::observe)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubNotice {
    /// An event was published, expecting this many recipients.
    Published {
        /// The channel.
        channel: ChannelName,
        /// The event.
        event_id: u64,
        /// How many recipients it expects.
        expected: usize,
    },
    /// A receipt was recorded (with its stream position, `seq`).
    Receipt(Receipt),
    /// An event became fully acknowledged by its expected recipients.
    Completed {
        /// The channel.
        channel: ChannelName,
        /// The event.
        event_id: u64,
        /// How many recipients were expected (all acknowledged).
        expected: usize,
    },
    /// A device went online or offline on a channel.
    Presence {
        /// The channel.
        channel: ChannelName,
        /// The change, as the presence stream carries it.
        change: PresenceChange,
    },
    /// A device became a recipient of a channel (`left_after` is `None`), or stopped being one.
    Membership(Membership),
    /// A subscriber fell too far behind and its stream was ended; its client resumes.
    SubscriberCut {
        /// The channel.
        channel: ChannelName,
        /// The subscribing device, `None` for an anonymous listener.
        device: Option<DeviceId>,
        /// The event it had no room for.
        event_id: u64,
    },
}

impl HubNotice {
    /// The notice of a completion on `channel`.
    pub(crate) fn completed(channel: &ChannelName, done: Completion) -> Self {
        HubNotice::Completed {
            channel: channel.clone(),
            event_id: done.event_id,
            expected: done.expected,
        }
    }
}

/// Everyone observing a hub, and how many notices they lost.
#[derive(Debug, Default)]
pub(crate) struct Observers {
    // Read for every notice, written only when an observer comes or is found gone.
    senders: RwLock<Vec<mpsc::Sender<HubNotice>>>,
    // Checked before a notice is built, so a hub nobody observes builds none.
    count: AtomicUsize,
    dropped: AtomicU64,
    // Events handed to subscriber streams (live and replayed). Kept here because every path
    // that hands one over already holds the observers; one addition per event or replay page,
    // never per subscriber.
    delivered: AtomicU64,
    redelivered: AtomicU64,
}

impl Observers {
    /// A new observer with room for `capacity` notices (at least one).
    pub(crate) fn add(&self, capacity: usize) -> mpsc::Receiver<HubNotice> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut senders = self.senders.write().unwrap_or_else(|e| e.into_inner());
        senders.retain(|s| !s.is_closed());
        senders.push(tx);
        self.count.store(senders.len(), Ordering::Relaxed);
        rx
    }

    /// Whether anyone observes; when not, a notice need not be built.
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Notices dropped because an observer's queue was full, since the hub started.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts `n` events handed to subscriber streams.
    pub(crate) fn count_delivered(&self, n: usize) {
        if n > 0 {
            self.delivered.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Counts an event sent again on a stream because its receipt is overdue.
    pub(crate) fn count_redelivered(&self) {
        self.redelivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Events sent again since the hub started.
    pub(crate) fn redelivered(&self) -> u64 {
        self.redelivered.load(Ordering::Relaxed)
    }

    /// Events handed to subscriber streams since the hub started.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Builds the notice, if anyone observes, and offers it to every observer without waiting.
    pub(crate) fn send(&self, notice: impl FnOnce() -> HubNotice) {
        if !self.any() {
            return;
        }
        let notice = notice();
        let mut gone = false;
        {
            let senders = self.senders.read().unwrap_or_else(|e| e.into_inner());
            for sender in senders.iter() {
                match sender.try_send(notice.clone()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Closed(_)) => gone = true,
                }
            }
        }
        if gone {
            let mut senders = self.senders.write().unwrap_or_else(|e| e.into_inner());
            senders.retain(|s| !s.is_closed());
            self.count.store(senders.len(), Ordering::Relaxed);
        }
    }
}
