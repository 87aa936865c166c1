//! What the hub tells observers outside it ([`HubNotice`]: publications, receipts, completions,
//! presence, membership, cut subscribers) and the set of observers that hears it, where a slow
//! observer loses notices, counted, rather than slowing the hub.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::{Completion, Membership, Receipt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

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
    Receipt {
        /// The receipt.
        receipt: Receipt,
        /// When its event was published, if the channel's ledger still follows the event.
        published: Option<DateTime<Utc>>,
    },
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
    senders: RwLock<Vec<Observer>>,
    // Checked before a notice is built, so a hub nobody observes builds none.
    count: AtomicUsize,
    // Observers that want a notice per published event: when none does (metrics alone read
    // counters), the publish path builds and queues nothing for observers.
    count_per_event: AtomicUsize,
    dropped: AtomicU64,
    // Events handed to subscriber streams (live and replayed). Kept here because every path
    // that hands one over already holds the observers; one addition per event or replay page,
    // never per subscriber.
    delivered: AtomicU64,
    redelivered: AtomicU64,
    // Events published (new ones, not replays of an idempotency key), counted rather than
    // noticed, for the same reason.
    published: AtomicU64,
}

#[derive(Debug)]
struct Observer {
    sender: mpsc::Sender<HubNotice>,
    /// Whether it hears [`HubNotice::Published`].
    per_event: bool,
}

impl Observers {
    /// A new observer with room for `capacity` notices (at least one); `per_event` says whether
    /// it hears [`HubNotice::Published`], one notice per published event.
    pub(crate) fn add(&self, capacity: usize, per_event: bool) -> mpsc::Receiver<HubNotice> {
        let (sender, rx) = mpsc::channel(capacity.max(1));
        let mut senders = self.senders.write().unwrap_or_else(|e| e.into_inner());
        senders.push(Observer { sender, per_event });
        self.forget_gone(&mut senders);
        rx
    }

    /// Drops the observers whose receivers are gone and recounts the rest.
    fn forget_gone(&self, senders: &mut Vec<Observer>) {
        senders.retain(|o| !o.sender.is_closed());
        self.count.store(senders.len(), Ordering::Relaxed);
        let per_event = senders.iter().filter(|o| o.per_event).count();
        self.count_per_event.store(per_event, Ordering::Relaxed);
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

    /// Counts an event published.
    pub(crate) fn count_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Events published since the hub started.
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Builds the notice, if anyone observes, and offers it to every observer without waiting.
    pub(crate) fn send(&self, notice: impl FnOnce() -> HubNotice) {
        if self.any() {
            self.offer(notice(), false);
        }
    }

    /// As [`Observers::send`], for a notice of one published event: only the observers that
    /// asked for one per event hear it.
    pub(crate) fn send_per_event(&self, notice: impl FnOnce() -> HubNotice) {
        if self.count_per_event.load(Ordering::Relaxed) > 0 {
            self.offer(notice(), true);
        }
    }

    fn offer(&self, notice: HubNotice, per_event: bool) {
        let mut gone = false;
        {
            let senders = self.senders.read().unwrap_or_else(|e| e.into_inner());
            for observer in senders.iter().filter(|o| o.per_event || !per_event) {
                match observer.sender.try_send(notice.clone()) {
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
            self.forget_gone(&mut senders);
        }
    }
}
