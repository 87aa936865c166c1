//! The one way the hub tells others what happened: [`HubNotice`]s (publications, receipts,
//! completions, presence, membership, cut subscribers), heard by every [`Observer`] at the
//! moment the hub applies the change. An observer that cannot keep up loses notices, counted,
//! rather than slowing the hub; [`NoticeQueue`], the observer behind `Hub::observe`, hands
//! them to a task through a bounded queue.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use pere_proto::event::Event;
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::{Completion, Membership, Receipt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// One change the hub applied, as observers hear of it (see [`Hub::observe`](crate::hub::Hub::observe)).
#[derive(Debug, Clone)]
pub enum HubNotice {
    /// An event was published, expecting this many recipients. Observers hear it before any
    /// subscriber can have the event, so a log written from it shows each event before
    /// anything a device did with it.
    Published {
        /// The event.
        event: Arc<Event>,
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

/// What became of a notice offered to an observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Taken in.
    Taken,
    /// Lost: the observer had no room for it (counted in `Hub::dropped_notices`).
    NoRoom,
    /// The observer is gone and should be forgotten.
    Gone,
}

/// Someone who hears every change the hub applies. Called at the moment of the change, on the
/// task that made it, under no lock of the hub's: an observer must not block (a queue, a
/// counter, a line into a log buffer).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// Whether it hears [`HubNotice::Published`], one notice per published event; an observer
    /// that does not spares the publish path the work.
    fn hears_publications(&self) -> bool {
        true
    }

    /// Hears one notice.
    fn notice(&self, notice: &HubNotice) -> Heard;

    /// Whether it has gone for good (its reader dropped), so the hub forgets it.
    fn is_gone(&self) -> bool {
        false
    }
}

/// An observer that queues notices for a task, up to a bound, and loses the ones it has no
/// room for: the observer behind `Hub::observe`.
#[derive(Debug)]
pub struct NoticeQueue {
    sender: mpsc::Sender<HubNotice>,
    publications: bool,
}

impl NoticeQueue {
    /// A queue of `capacity` notices (at least one); `publications` says whether it hears
    /// [`HubNotice::Published`]. The task reads the receiver; dropping it ends the observation.
    pub fn new(capacity: usize, publications: bool) -> (Self, mpsc::Receiver<HubNotice>) {
        let (sender, rx) = mpsc::channel(capacity.max(1));
        (
            NoticeQueue {
                sender,
                publications,
            },
            rx,
        )
    }
}

impl Observer for NoticeQueue {
    fn hears_publications(&self) -> bool {
        self.publications
    }

    fn notice(&self, notice: &HubNotice) -> Heard {
        match self.sender.try_send(notice.clone()) {
            Ok(()) => Heard::Taken,
            Err(TrySendError::Full(_)) => Heard::NoRoom,
            Err(TrySendError::Closed(_)) => Heard::Gone,
        }
    }

    fn is_gone(&self) -> bool {
        self.sender.is_closed()
    }
}

/// Everyone observing a hub, and how many notices they lost.
#[derive(Debug, Default)]
pub(crate) struct Observers {
    // Read for every notice, written only when an observer comes or is found gone.
    observers: RwLock<Vec<Arc<dyn Observer>>>,
    // Checked before a notice is built, so a hub nobody observes builds none.
    count: AtomicUsize,
    // Observers that hear a notice per published event: when none does (metrics alone read
    // counters), the publish path builds and offers nothing.
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

impl Observers {
    /// Adds an observer.
    pub(crate) fn add(&self, observer: Arc<dyn Observer>) {
        let mut observers = self.observers.write().unwrap_or_else(|e| e.into_inner());
        observers.retain(|o| !o.is_gone());
        observers.push(observer);
        self.recount(&observers);
    }

    fn recount(&self, observers: &[Arc<dyn Observer>]) {
        self.count.store(observers.len(), Ordering::Relaxed);
        let per_event = observers.iter().filter(|o| o.hears_publications()).count();
        self.count_per_event.store(per_event, Ordering::Relaxed);
    }

    /// Whether anyone observes; when not, a notice need not be built.
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Notices dropped because an observer had no room for them, since the hub started.
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
            self.offer(&notice(), false);
        }
    }

    /// As [`Observers::send`], for a notice of one published event: only the observers that
    /// hear publications hear it.
    pub(crate) fn send_per_event(&self, notice: impl FnOnce() -> HubNotice) {
        if self.count_per_event.load(Ordering::Relaxed) > 0 {
            self.offer(&notice(), true);
        }
    }

    fn offer(&self, notice: &HubNotice, per_event: bool) {
        let mut gone = false;
        {
            let observers = self.observers.read().unwrap_or_else(|e| e.into_inner());
            for observer in observers.iter() {
                if per_event && !observer.hears_publications() {
                    continue;
                }
                match observer.notice(notice) {
                    Heard::Taken => {}
                    Heard::NoRoom => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Heard::Gone => gone = true,
                }
            }
        }
        if gone {
            let mut observers = self.observers.write().unwrap_or_else(|e| e.into_inner());
            observers.retain(|o| !o.is_gone());
            self.recount(&observers);
        }
    }
}
