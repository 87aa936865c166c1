//! A loaded channel ([`ChannelHub`]): its sequencer, which releases events to subscribers in id
//! order, its subscribers' queues, its ledger, and the follow state of its receipt and presence
//! streams.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pere_proto::event::{now, Event};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::presence::PresenceChange;
use tokio::time::Instant;

use crate::follow::{PresenceLog, ReceiptLive};
use crate::ledger::ChannelLedger;
use crate::notice::{HubNotice, Observers};

use super::millis;

#[derive(Debug)]
pub(super) struct ChannelHub {
    pub(super) name: ChannelName,
    pub(super) state: Mutex<ChannelState>,
    pub(super) subscriber_count: AtomicUsize,
    // Apart from `state`, so receipts never contend with fan-out.
    pub(super) ledger: Mutex<ChannelLedger>,
    // Made when first needed and growing only with use: most channels are never followed.
    pub(super) receipts: OnceLock<Arc<ReceiptLive>>,
    pub(super) presence: OnceLock<Arc<PresenceLog>>,
    // Where this channel's presence numbering starts (see `Hub::presence_floor`).
    pub(super) presence_floor: u64,
    // Milliseconds from `Hub::epoch` to the last use; refreshed by every load and by the reaper
    // while something holds the channel.
    pub(super) last_used: AtomicU64,
    // When the newest event was applied, in the same milliseconds.
    pub(super) last_published: AtomicU64,
}

impl Drop for ChannelHub {
    fn drop(&mut self) {
        // Only the hub's own end drops a channel that is followed: the followers end.
        if let Some(live) = self.receipts.get() {
            live.close();
        }
        if let Some(log) = self.presence.get() {
            log.close();
        }
    }
}

impl ChannelHub {
    pub(super) fn ledger(&self) -> std::sync::MutexGuard<'_, ChannelLedger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn presence_log(&self) -> &Arc<PresenceLog> {
        self.presence
            .get_or_init(|| Arc::new(PresenceLog::new(self.presence_floor)))
    }

    pub(super) fn receipt_live(&self) -> &Arc<ReceiptLive> {
        self.receipts.get_or_init(Default::default)
    }

    pub(super) fn presence_changed(&self, device: &DeviceId, online: bool) -> PresenceChange {
        self.presence_log().record(|seq| PresenceChange {
            seq,
            device: device.clone(),
            online,
            at: now(),
        })
    }

    /// Whether something besides the hub's map uses this channel, or its ledger still waits for
    /// receipts of an event published within `keep_incomplete` (as of `now`). Called under
    /// the map's lock, where no new use can begin.
    pub(super) fn in_use(self: &Arc<Self>, now: u64, keep_incomplete: Duration) -> bool {
        let followed = |count: Option<usize>| count.is_some_and(|n| n > 1);
        if Arc::strong_count(self) > 1
            || followed(self.receipts.get().map(Arc::strong_count))
            || followed(self.presence.get().map(Arc::strong_count))
        {
            return true;
        }
        let published = self.last_published.load(Ordering::Relaxed);
        now.saturating_sub(published) < millis(keep_incomplete) && self.ledger().incomplete()
    }
}

#[derive(Debug)]
pub(super) struct ChannelState {
    pub(super) last_released: u64,
    // Appended events waiting for a smaller id to be released first.
    pub(super) waiting: BTreeMap<u64, Arc<Event>>,
    // Since when `waiting` has made no progress; `None` while it is empty.
    pub(super) stalled_since: Option<Instant>,
    // Whether a gap timer watches `waiting` (one per channel at most).
    pub(super) gap_timer: bool,
    // While the node adopts a store that changed under it: what arrives waits, so that the
    // channel's subscribers hear `pere-reset` before anything newer (see [`ChannelHub::hold`]).
    pub(super) held: bool,
    pub(super) subscribers: HashMap<u64, SubscriberSlot>,
}

/// What a subscriber's queue carries, in the order the channel released it.
#[derive(Debug)]
pub(super) enum Live {
    /// An event, shared by every queue it reached.
    Event(Arc<Event>),
    /// The store changed under the node: the channel's ids continue above `floor`, and the
    /// subscriber must be told to forget the ids it saw before anything newer.
    Reset {
        /// The channel's new last released id.
        floor: u64,
    },
    /// Nothing new, and the subscriber was given nothing for a while: a keep-alive. Never
    /// queued: the sweep marks a quiet inbox (see [`Inbox::sweep`]) and the reader takes the mark.
    KeepAlive,
}

/// Why the hub ended a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// It fell `subscriber_buffer` events behind; the client resumes with its last event id.
    Lagged,
    /// The node is stopping ([`Hub::end_feeds`](super::Hub::end_feeds)).
    Stopping,
}

#[derive(Debug)]
pub(super) struct SubscriberSlot {
    pub(super) inbox: Arc<Inbox>,
    // For the notice when it is cut.
    pub(super) device: Option<DeviceId>,
}

/// A subscriber's queue of what its channel released to it, with the cut that ends it.
///
/// Why not a tokio `mpsc` channel: an idle feed pays for its queue for hours, and a bounded
/// `mpsc` channel allocates its shared state (padded to cache lines) and a first block of 32
/// slots up front, about 1.2 KiB per subscriber; a separate `Notify` told a blocked writer of
/// the cut. This is one small allocation: the queue takes memory only while events wait in it,
/// and the cut is a flag beside it with the one writer's waker.
///
/// It also carries what a feed would otherwise need a timer and a shutdown wait of its own for:
/// the hub's keep-alive sweep marks an inbox that was given nothing since its last visit, and
/// the node's stop cuts every inbox, so an idle feed waits on its inbox and its socket only.
#[derive(Debug)]
pub(super) struct Inbox {
    state: Mutex<InboxState>,
    // Items queued at most: a subscriber this far behind is cut.
    capacity: usize,
}

#[derive(Debug, Default)]
struct InboxState {
    queue: VecDeque<Live>,
    // The subscription waiting for something to be queued (or for the cut).
    reader: Option<Waker>,
    // A writer blocked on a client that does not read, waiting for the cut.
    cut_watcher: Option<Waker>,
    cut: Option<CutReason>,
    // Whether the subscriber was given something (an item queued, a keep-alive asked for) since
    // the keep-alive sweep last looked: only a subscriber left quiet for a whole sweep period
    // gets a keep-alive.
    stirred: bool,
    // A keep-alive asked for by the sweep and not yet taken by the reader.
    keep_alive: bool,
}

/// Past this many slots an emptied queue gives its memory back: a burst, or a catch-up after a
/// stall, must not stay in every idle feed. At or under it, kept: a live feed that gets one
/// event at a time would otherwise allocate for each.
const INBOX_KEPT: usize = 4;

impl Inbox {
    pub(super) fn new(capacity: usize) -> Self {
        Inbox {
            // The answer's head and opening are the first thing a subscriber is given.
            state: Mutex::new(InboxState {
                stirred: true,
                ..InboxState::default()
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `live` unless the queue is full or the subscriber was cut. Returns false when it
    /// was not queued: the caller cuts the subscriber.
    pub(super) fn push(&self, live: Live) -> bool {
        let reader = {
            let mut state = self.lock();
            if state.cut.is_some() || state.queue.len() >= self.capacity {
                return false;
            }
            state.queue.push_back(live);
            state.stirred = true;
            // What is queued goes out anyway, and keeps the connection alive as well.
            state.keep_alive = false;
            state.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
        true
    }

    /// Ends the subscriber: what is queued is still read, then nothing more. The first reason
    /// given is the one kept.
    pub(super) fn cut(&self, reason: CutReason) {
        let (reader, watcher) = {
            let mut state = self.lock();
            state.cut.get_or_insert(reason);
            (state.reader.take(), state.cut_watcher.take())
        };
        for waker in [reader, watcher].into_iter().flatten() {
            waker.wake();
        }
    }

    /// Why the subscriber was cut, if it was.
    pub(super) fn cut_reason(&self) -> Option<CutReason> {
        self.lock().cut
    }

    /// The keep-alive sweep's visit: a subscriber given nothing since the last visit, with
    /// nothing queued, is asked for a keep-alive, which counts as something given. So a quiet
    /// subscriber hears one every second visit, and one that was given something hears the
    /// next after one to two visit periods of silence.
    pub(super) fn sweep(&self) {
        let reader = {
            let mut state = self.lock();
            if std::mem::take(&mut state.stirred) || !state.queue.is_empty() || state.cut.is_some()
            {
                return;
            }
            state.keep_alive = true;
            state.stirred = true;
            state.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// The next queued item, else a keep-alive the sweep asked for; `Ready(None)` once the
    /// queue is empty and the subscriber was cut.
    pub(super) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Live>> {
        let mut state = self.lock();
        if let Some(live) = state.take_next() {
            return Poll::Ready(Some(live));
        }
        if state.cut.is_some() {
            return Poll::Ready(None);
        }
        if std::mem::take(&mut state.keep_alive) {
            return Poll::Ready(Some(Live::KeepAlive));
        }
        match &state.reader {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.reader = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next queued item, without waiting (never a keep-alive: a writer gathering what is
    /// queued has something to send already).
    pub(super) fn try_recv(&self) -> Option<Live> {
        self.lock().take_next()
    }

    /// Ready once the subscriber is cut, with why. One watcher at a time: a later one takes its
    /// place.
    pub(super) fn poll_cut(&self, cx: &mut Context<'_>) -> Poll<CutReason> {
        let mut state = self.lock();
        if let Some(reason) = state.cut {
            return Poll::Ready(reason);
        }
        match &state.cut_watcher {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.cut_watcher = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl InboxState {
    fn take_next(&mut self) -> Option<Live> {
        let live = self.queue.pop_front()?;
        if self.queue.is_empty() && self.queue.capacity() > INBOX_KEPT {
            self.queue = VecDeque::new();
        }
        Some(live)
    }
}

impl ChannelHub {
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, ChannelState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases `event` to subscribers in id order. Returns true when events now wait behind a
    /// missing id and no gap timer watches them yet: the caller starts one.
    pub(super) fn release(&self, event: Arc<Event>, observers: &Observers) -> bool {
        let mut state = self.state();
        if event.id <= state.last_released {
            return false;
        }
        // In order, as nearly always: straight out, no reordering map.
        if event.id == state.last_released + 1 && state.waiting.is_empty() && !state.held {
            self.fan_out(&mut state, event, observers);
            return false;
        }
        state.waiting.insert(event.id, event);
        self.drain(&mut state, observers)
    }

    /// After the store changed under the node: the channel continues above `floor` (what waits
    /// at or under it is dropped: those ids are lost), and every subscriber hears of it before
    /// anything newer. A subscriber with no room left for the notice is cut, as for an event:
    /// it resumes, and its resume position inside the lost ids gets it `pere-reset`.
    pub(super) fn reset(&self, floor: u64, observers: &Observers) -> bool {
        let mut state = self.state();
        state.held = false;
        state.last_released = state.last_released.max(floor);
        state.waiting.retain(|&id, _| id > floor);
        let mut cut = Vec::new();
        for (&id, slot) in &state.subscribers {
            if !slot.inbox.push(Live::Reset { floor }) {
                slot.inbox.cut(CutReason::Lagged);
                cut.push(id);
            }
        }
        for id in cut {
            state.subscribers.remove(&id);
        }
        self.subscriber_count
            .store(state.subscribers.len(), Ordering::Relaxed);
        self.drain(&mut state, observers)
    }

    /// Holds what arrives from now on until [`ChannelHub::reset`]: the store changed under the
    /// node, and other nodes may number events above the floor before this one has told its
    /// subscribers to forget the ids they saw.
    pub(super) fn hold(&self) {
        self.state().held = true;
    }

    /// Passes over `id`, an event the store holds but cannot give (damaged), when it is next in
    /// line: what waits behind it goes out as if it had been released. Returns true as
    /// [`ChannelHub::release`] does.
    pub(super) fn pass_over(&self, id: u64, observers: &Observers) -> bool {
        let mut state = self.state();
        if id != state.last_released + 1 || state.held {
            return false;
        }
        state.last_released = id;
        self.drain(&mut state, observers)
    }

    /// Releases the waiting events that are next in line and restarts the stall clock when that
    /// made progress. Returns true when a gap timer is needed and none runs (it counts as
    /// running from now on).
    pub(super) fn drain(&self, state: &mut ChannelState, observers: &Observers) -> bool {
        if state.held {
            return false;
        }
        let before = state.last_released;
        loop {
            let next = state.last_released + 1;
            let Some(event) = state.waiting.remove(&next) else {
                break;
            };
            self.fan_out(state, event, observers);
        }
        if state.waiting.is_empty() {
            state.stalled_since = None;
            return false;
        }
        if state.stalled_since.is_none() || state.last_released != before {
            state.stalled_since = Some(Instant::now());
        }
        !std::mem::replace(&mut state.gap_timer, true)
    }

    pub(super) fn fan_out(
        &self,
        state: &mut ChannelState,
        event: Arc<Event>,
        observers: &Observers,
    ) {
        state.last_released = event.id;
        let mut cut = Vec::new();
        for (&id, slot) in &state.subscribers {
            if !slot.inbox.push(Live::Event(event.clone())) {
                // Full: end this stream. The client resumes from its last event id.
                slot.inbox.cut(CutReason::Lagged);
                cut.push(id);
                observers.send(|| HubNotice::SubscriberCut {
                    channel: self.name.clone(),
                    device: slot.device.clone(),
                    event_id: event.id,
                });
            }
        }
        observers.count_delivered(state.subscribers.len() - cut.len());
        if !cut.is_empty() {
            for id in cut {
                state.subscribers.remove(&id);
            }
            self.subscriber_count
                .store(state.subscribers.len(), Ordering::Relaxed);
        }
    }

    /// The keep-alive sweep over this channel's subscribers (see [`Inbox::sweep`]).
    pub(super) fn sweep_quiet(&self) {
        let state = self.state();
        for slot in state.subscribers.values() {
            slot.inbox.sweep();
        }
    }

    /// Cuts every subscriber for `reason` and forgets them: nothing more is queued for them.
    pub(super) fn cut_all(&self, reason: CutReason) {
        let mut state = self.state();
        for slot in state.subscribers.values() {
            slot.inbox.cut(reason);
        }
        state.subscribers.clear();
        self.subscriber_count.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    #[tokio::test]
    async fn an_inbox_bounds_its_queue_ends_after_the_cut_and_gives_its_room_back() {
        let inbox = Arc::new(Inbox::new(8));
        for floor in 0..8 {
            assert!(inbox.push(Live::Reset { floor }));
        }
        // Full: not queued, and the hub cuts it.
        assert!(!inbox.push(Live::Reset { floor: 8 }));
        assert!(inbox.try_recv().is_some());
        assert!(inbox.push(Live::Reset { floor: 8 }));
        inbox.cut(CutReason::Lagged);
        inbox.cut(CutReason::Stopping);
        assert_eq!(
            inbox.cut_reason(),
            Some(CutReason::Lagged),
            "the first reason stays"
        );
        assert!(!inbox.push(Live::Reset { floor: 9 }));
        // What was queued before the cut is still read, in order, then nothing.
        let mut floors = Vec::new();
        while let Some(live) = poll_fn(|cx| inbox.poll_recv(cx)).await {
            match live {
                Live::Reset { floor } => floors.push(floor),
                Live::Event(_) | Live::KeepAlive => unreachable!(),
            }
        }
        assert_eq!(floors, (1..=8).collect::<Vec<_>>());
        assert_eq!(inbox.lock().queue.capacity(), 0);
        assert_eq!(poll_fn(|cx| inbox.poll_cut(cx)).await, CutReason::Lagged);
    }

    #[tokio::test]
    async fn a_waiting_reader_and_a_blocked_writer_are_woken() {
        let inbox = Arc::new(Inbox::new(4));
        let reader = tokio::spawn({
            let inbox = inbox.clone();
            async move { poll_fn(|cx| inbox.poll_recv(cx)).await.is_some() }
        });
        let watcher = tokio::spawn({
            let inbox = inbox.clone();
            async move { poll_fn(|cx| inbox.poll_cut(cx)).await }
        });
        // Yields until both wait: each registered its waker under the lock.
        while inbox.lock().reader.is_none() || inbox.lock().cut_watcher.is_none() {
            tokio::task::yield_now().await;
        }
        assert!(inbox.push(Live::Reset { floor: 1 }));
        assert!(reader.await.unwrap());
        inbox.cut(CutReason::Stopping);
        assert_eq!(watcher.await.unwrap(), CutReason::Stopping);
    }

    /// The next item ready now, if any, without registering as a reader.
    fn ready(inbox: &Inbox) -> Option<Option<Live>> {
        let mut cx = Context::from_waker(Waker::noop());
        match inbox.poll_recv(&mut cx) {
            Poll::Ready(live) => Some(live),
            Poll::Pending => None,
        }
    }

    #[test]
    fn the_sweep_asks_a_quiet_inbox_for_a_keep_alive_every_second_visit() {
        let inbox = Inbox::new(4);
        let keep_alive = |inbox: &Inbox| matches!(ready(inbox), Some(Some(Live::KeepAlive)));
        // Opened just now: the head was written, so the first visit finds it stirred.
        inbox.sweep();
        assert!(ready(&inbox).is_none());
        inbox.sweep();
        assert!(keep_alive(&inbox));
        assert!(ready(&inbox).is_none(), "one keep-alive per mark");
        // The keep-alive counts as something given: the next visit passes over it.
        inbox.sweep();
        assert!(ready(&inbox).is_none());
        inbox.sweep();
        assert!(keep_alive(&inbox));

        // An event since the last visit: quiet only from the visit after.
        assert!(inbox.push(Live::Reset { floor: 1 }));
        inbox.sweep();
        assert!(matches!(ready(&inbox), Some(Some(Live::Reset { .. }))));
        inbox.sweep();
        assert!(keep_alive(&inbox));

        // A mark not taken yet is dropped by what comes next: that goes out anyway.
        inbox.sweep();
        inbox.sweep();
        assert!(inbox.push(Live::Reset { floor: 2 }));
        assert!(matches!(ready(&inbox), Some(Some(Live::Reset { .. }))));
        assert!(ready(&inbox).is_none());
        // Something still queued (a reader that does not keep up) is not quiet.
        assert!(inbox.push(Live::Reset { floor: 3 }));
        inbox.sweep();
        inbox.sweep();
        assert!(matches!(ready(&inbox), Some(Some(Live::Reset { .. }))));
        assert!(ready(&inbox).is_none());
        // A cut subscriber hears no keep-alive, only its end.
        inbox.sweep();
        inbox.cut(CutReason::Stopping);
        inbox.sweep();
        assert!(matches!(ready(&inbox), Some(None)));
    }
}
