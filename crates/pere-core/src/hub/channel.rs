//! A loaded channel ([`ChannelHub`]): its sequencer, which releases events to subscribers in id
//! order, its subscribers' queues (and the direct writes to idle subscribers' connections that
//! skip them), its ledger, and the follow state of its receipt and presence streams.

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

use super::devices::LiveDevice;
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
    // When the last fan-out ended, and whether the channel was quiet before it (see
    // `ChannelState::direct_writes`).
    pub(super) last_fan_out: Option<std::time::Instant>,
    pub(super) quiet_before_last: bool,
}

impl ChannelState {
    /// A channel whose events up to `last_released` are out, with no subscriber yet.
    pub(super) fn new(last_released: u64) -> Self {
        ChannelState {
            last_released,
            waiting: BTreeMap::new(),
            stalled_since: None,
            gap_timer: false,
            held: false,
            subscribers: HashMap::new(),
            last_fan_out: None,
            quiet_before_last: true,
        }
    }

    /// Whether an event released at `now` may be written to idle subscribers' connections by
    /// the publisher itself: only when the channel is not busy, that is, quiet for at least
    /// [`DIRECT_AFTER_QUIET`] since its last fan-out, both before this event and before the one
    /// before it (a flood has a lull now and then, hardly two in a row), and when it has at
    /// most [`DIRECT_SUBSCRIBERS_AT_MOST`] subscribers. Direct writes make a fan-out one write
    /// per subscriber in a row, on one core; under a flood (events queued behind the fan-out,
    /// or a publisher that sends the next as soon as this one is answered) the subscribers' own
    /// tasks instead gather what queued into few writes, on every core: 4.6 times the
    /// deliveries per second of direct writes alone, measured.
    fn direct_writes(&mut self, now: std::time::Instant) -> bool {
        let quiet = self
            .last_fan_out
            .is_none_or(|ended| now.saturating_duration_since(ended) >= DIRECT_AFTER_QUIET);
        let quiet_before = std::mem::replace(&mut self.quiet_before_last, quiet);
        quiet && quiet_before && self.subscribers.len() <= DIRECT_SUBSCRIBERS_AT_MOST
    }
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
    /// What the connection did not take of an event's frame written to it directly (see
    /// [`Inbox::push`]): the reader writes it before anything else.
    Rest {
        /// The event.
        event: Arc<Event>,
        /// Where in its frame the rest begins.
        from: u32,
    },
}

/// The least time a channel must have been quiet since its last fan-out before the next is
/// made of direct writes (see [`ChannelState::direct_writes`]): publishers that keep the
/// channel busy leave the writing to the subscribers' tasks.
const DIRECT_AFTER_QUIET: Duration = Duration::from_millis(1);

/// The most subscribers a fan-out of direct writes goes to: at about 2 µs a write, 5 ms of
/// writes, during which the channel's lock is held (subscribers opening and closing wait) and
/// the publisher's answer waits. Larger channels are written by their subscribers' tasks, on
/// every core.
const DIRECT_SUBSCRIBERS_AT_MOST: usize = 2_500;

/// A subscriber's connection as the publisher writes to it itself, while the subscriber's
/// reader waits with nothing to do (see [`Subscription::write_directly`]): a paced delivery
/// then costs one write and no wake-up of the reader's task. A function and the handle it is
/// given (for the server, the socket's descriptor): two words in the subscriber's inbox,
/// nothing allocated per subscriber.
///
/// [`Subscription::write_directly`]: super::Subscription::write_directly
#[derive(Debug, Clone, Copy)]
pub struct DirectWrite {
    /// Writes as much of `frame` as the connection named by `handle` takes now, without
    /// waiting; how much. An error, `WouldBlock` included, leaves the frame to the reader.
    pub write: fn(handle: u64, frame: &[u8]) -> std::io::Result<usize>,
    /// What names the connection to `write`.
    pub handle: u64,
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
///
/// An idle feed holds one for hours, so its size is watched: 88 bytes, 112 with the allocator's
/// rounding (a test holds it there).
#[derive(Debug)]
pub(super) struct Inbox {
    state: Mutex<InboxState>,
    // The subscriber's device, while it has a stream open on this node: its delivery cursor.
    pub(super) live: Option<Arc<LiveDevice>>,
}

#[derive(Debug, Default)]
struct InboxState {
    // Boxed, and made at the first item queued: a subscriber written to directly, or given
    // nothing yet, holds a pointer, not an empty queue's four words; one that was queued for
    // keeps the box (48 bytes).
    #[allow(clippy::box_collection)]
    queue: Option<Box<VecDeque<Live>>>,
    // Items queued at most: a subscriber this far behind is cut.
    capacity: u32,
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
    // The reader waits with nothing in hand and allows direct writes (see `Inbox::push`).
    parked: bool,
    // The subscriber's connection, for direct writes; set by its reader.
    direct: Option<DirectWrite>,
    // The last event the subscriber was given, by its reader or directly: a direct write is
    // only of a later one.
    given_through: u64,
}

/// Past this many slots an emptied queue gives its memory back: a burst, or a catch-up after a
/// stall, must not stay in every idle feed. At or under it, kept: a live feed that gets one
/// event at a time would otherwise allocate for each.
const INBOX_KEPT: usize = 4;

impl Inbox {
    pub(super) fn new(capacity: usize, live: Option<Arc<LiveDevice>>) -> Self {
        Inbox {
            // The answer's head and opening are the first thing a subscriber is given.
            state: Mutex::new(InboxState {
                stirred: true,
                capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
                ..InboxState::default()
            }),
            live,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `live` to the subscriber unless the queue is full or the subscriber was cut
    /// ([`Given::Refused`]: the caller cuts the subscriber).
    ///
    /// With `direct` (the channel is not busy, see [`ChannelState::direct_writes`]), an event is
    /// written straight to the subscriber's connection, under the inbox's lock, when the reader
    /// waits with nothing in hand and its connection was handed over
    /// ([`Inbox::write_directly`]): no queue, no wake-up. Whatever the connection does not take
    /// is queued for the reader, as is everything else. The reader cannot write meanwhile: it
    /// writes only what it takes from here, and taking it ends the wait that allowed direct
    /// writes.
    pub(super) fn push(&self, live: Live, direct: bool) -> Given {
        let reader = {
            let mut state = self.lock();
            if state.cut.is_some() || state.queued() >= state.capacity as usize {
                return Given::Refused;
            }
            state.stirred = true;
            // What is given goes out anyway, and keeps the connection alive as well.
            state.keep_alive = false;
            let live = match live {
                Live::Event(event) if direct => {
                    let written = state.write_directly(&event);
                    if let (Some(device), Written::Whole | Written::Part(_)) =
                        (&self.live, &written)
                    {
                        device.delivered.fetch_max(event.id, Ordering::Relaxed);
                    }
                    match written {
                        Written::Whole => return Given::Written,
                        Written::Part(from) => Live::Rest { event, from },
                        Written::Nothing => Live::Event(event),
                    }
                }
                other => other,
            };
            state.parked = false;
            state.queue.get_or_insert_default().push_back(live);
            state.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
        Given::Queued
    }

    /// Ends the subscriber: what is queued is still read, then nothing more. The first reason
    /// given is the one kept.
    pub(super) fn cut(&self, reason: CutReason) {
        let (reader, watcher) = {
            let mut state = self.lock();
            state.cut.get_or_insert(reason);
            state.parked = false;
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
            if std::mem::take(&mut state.stirred) || state.queued() > 0 || state.cut.is_some() {
                return;
            }
            state.keep_alive = true;
            state.stirred = true;
            // The reader writes the keep-alive: nothing else may write meanwhile.
            state.parked = false;
            state.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// The next queued item, else a keep-alive the sweep asked for; `Ready(None)` once the
    /// queue is empty and the subscriber was cut. When it waits, and `direct` holds the last
    /// event the reader gave out, later events may be written to its connection directly until
    /// the reader is woken (see [`Inbox::push`]).
    pub(super) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        direct: Option<u64>,
    ) -> Poll<Option<Live>> {
        let mut state = self.lock();
        state.parked = false;
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
        if let Some(given_through) = direct {
            state.given_through = state.given_through.max(given_through);
            state.parked = state.direct.is_some();
        }
        Poll::Pending
    }

    /// Hands the subscriber's connection over for direct writes (see [`Inbox::push`]).
    pub(super) fn write_directly(&self, connection: DirectWrite) {
        self.lock().direct = Some(connection);
    }

    /// Takes the connection back: no direct write begins after this returns, and none is under
    /// way (they are made under the lock). The reader calls it before it closes the connection.
    pub(super) fn stop_direct_writes(&self) {
        let mut state = self.lock();
        state.parked = false;
        state.direct = None;
    }

    /// The last event the subscriber was given or saw, as far as direct writes know.
    pub(super) fn given_through(&self) -> u64 {
        self.lock().given_through
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

/// What became of what was given to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Given {
    /// Written to its connection by the publisher.
    Written,
    /// Queued for its reader (with the rest of what a direct write began, if any).
    Queued,
    /// Neither: the queue is full, or the subscriber was cut.
    Refused,
}

/// What a direct write did with an event.
enum Written {
    /// Nothing: the reader was not waiting, or the connection took nothing (or failed; the
    /// reader's own write will say so). The event is queued.
    Nothing,
    /// All of it.
    Whole,
    /// Its frame up to here: the rest is queued, first.
    Part(u32),
}

impl InboxState {
    fn write_directly(&mut self, event: &Event) -> Written {
        if !self.parked || event.id <= self.given_through {
            return Written::Nothing;
        }
        let Some(connection) = self.direct else {
            return Written::Nothing;
        };
        let frame = event.frame();
        match (connection.write)(connection.handle, frame) {
            Ok(written) if written == frame.len() => {
                self.given_through = event.id;
                Written::Whole
            }
            Ok(written) if written > 0 => {
                self.given_through = event.id;
                // Frames are far smaller than 4 GiB (bodies are bounded by `--max-body`).
                Written::Part(written as u32)
            }
            _ => Written::Nothing,
        }
    }

    fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |queue| queue.len())
    }

    fn take_next(&mut self) -> Option<Live> {
        let queue = self.queue.as_mut()?;
        let live = queue.pop_front()?;
        if queue.is_empty() && queue.capacity() > INBOX_KEPT {
            // The box stays: a busy subscriber would otherwise make it again at every burst.
            **queue = VecDeque::new();
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
            if slot.inbox.push(Live::Reset { floor }, false) == Given::Refused {
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
        let direct = state.direct_writes(std::time::Instant::now());
        let mut cut = Vec::new();
        for (&id, slot) in &state.subscribers {
            if slot.inbox.push(Live::Event(event.clone()), direct) == Given::Refused {
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
        state.last_fan_out = Some(std::time::Instant::now());
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
        let inbox = Arc::new(Inbox::new(8, None));
        for floor in 0..8 {
            assert_eq!(inbox.push(Live::Reset { floor }, false), Given::Queued);
        }
        // Full: not queued, and the hub cuts it.
        assert_eq!(inbox.push(Live::Reset { floor: 8 }, false), Given::Refused);
        assert!(inbox.try_recv().is_some());
        assert_eq!(inbox.push(Live::Reset { floor: 8 }, false), Given::Queued);
        inbox.cut(CutReason::Lagged);
        inbox.cut(CutReason::Stopping);
        assert_eq!(
            inbox.cut_reason(),
            Some(CutReason::Lagged),
            "the first reason stays"
        );
        assert_eq!(inbox.push(Live::Reset { floor: 9 }, false), Given::Refused);
        // What was queued before the cut is still read, in order, then nothing.
        let mut floors = Vec::new();
        while let Some(live) = poll_fn(|cx| inbox.poll_recv(cx, None)).await {
            match live {
                Live::Reset { floor } => floors.push(floor),
                Live::Event(_) | Live::KeepAlive | Live::Rest { .. } => unreachable!(),
            }
        }
        assert_eq!(floors, (1..=8).collect::<Vec<_>>());
        assert_eq!(inbox.lock().queue.as_ref().map(|q| q.capacity()), Some(0));
        assert_eq!(poll_fn(|cx| inbox.poll_cut(cx)).await, CutReason::Lagged);
    }

    #[tokio::test]
    async fn a_waiting_reader_and_a_blocked_writer_are_woken() {
        let inbox = Arc::new(Inbox::new(4, None));
        let reader = tokio::spawn({
            let inbox = inbox.clone();
            async move { poll_fn(|cx| inbox.poll_recv(cx, None)).await.is_some() }
        });
        let watcher = tokio::spawn({
            let inbox = inbox.clone();
            async move { poll_fn(|cx| inbox.poll_cut(cx)).await }
        });
        // Yields until both wait: each registered its waker under the lock.
        while inbox.lock().reader.is_none() || inbox.lock().cut_watcher.is_none() {
            tokio::task::yield_now().await;
        }
        assert_eq!(inbox.push(Live::Reset { floor: 1 }, false), Given::Queued);
        assert!(reader.await.unwrap());
        inbox.cut(CutReason::Stopping);
        assert_eq!(watcher.await.unwrap(), CutReason::Stopping);
    }

    /// The next item ready now, if any, without registering as a reader.
    fn ready(inbox: &Inbox) -> Option<Option<Live>> {
        let mut cx = Context::from_waker(Waker::noop());
        match inbox.poll_recv(&mut cx, None) {
            Poll::Ready(live) => Some(live),
            Poll::Pending => None,
        }
    }

    #[test]
    fn the_sweep_asks_a_quiet_inbox_for_a_keep_alive_every_second_visit() {
        let inbox = Inbox::new(4, None);
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
        assert_eq!(inbox.push(Live::Reset { floor: 1 }, false), Given::Queued);
        inbox.sweep();
        assert!(matches!(ready(&inbox), Some(Some(Live::Reset { .. }))));
        inbox.sweep();
        assert!(keep_alive(&inbox));

        // A mark not taken yet is dropped by what comes next: that goes out anyway.
        inbox.sweep();
        inbox.sweep();
        assert_eq!(inbox.push(Live::Reset { floor: 2 }, false), Given::Queued);
        assert!(matches!(ready(&inbox), Some(Some(Live::Reset { .. }))));
        assert!(ready(&inbox).is_none());
        // Something still queued (a reader that does not keep up) is not quiet.
        assert_eq!(inbox.push(Live::Reset { floor: 3 }, false), Given::Queued);
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

    /// A connection that takes at most `room` bytes more (everything when `None`), then would
    /// block; it keeps what it took.
    #[derive(Debug, Default)]
    struct Connection {
        taken: Mutex<Vec<u8>>,
        room: Mutex<Option<usize>>,
    }

    /// The tests' connections, by handle: each test takes its own.
    static CONNECTIONS: Mutex<Vec<Arc<Connection>>> = Mutex::new(Vec::new());

    impl Connection {
        fn direct(self: &Arc<Self>) -> DirectWrite {
            let mut connections = CONNECTIONS.lock().unwrap();
            connections.push(self.clone());
            DirectWrite {
                write: |handle, frame| {
                    let connection = CONNECTIONS.lock().unwrap()[handle as usize].clone();
                    connection.try_write(frame)
                },
                handle: connections.len() as u64 - 1,
            }
        }

        fn try_write(&self, frame: &[u8]) -> std::io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            let n = room.map_or(frame.len(), |room| room.min(frame.len()));
            if n == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            if let Some(room) = room.as_mut() {
                *room -= n;
            }
            self.taken.lock().unwrap().extend_from_slice(&frame[..n]);
            Ok(n)
        }
    }

    /// Counts its wake-ups.
    #[derive(Debug, Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn event(id: u64) -> Arc<Event> {
        let new = pere_proto::event::NewEvent {
            publisher: None,
            event_type: None,
            body: format!("{{\"n\":{id}}}"),
            idempotency_key: None,
        };
        Arc::new(Event::new(ChannelName::new("c").unwrap(), id, now(), new))
    }

    /// An inbox whose connection was handed over, its connection and its reader's wake-ups.
    fn handed_over() -> (Inbox, Arc<Connection>, Arc<Wakes>) {
        let inbox = Inbox::new(8, None);
        let connection = Arc::new(Connection::default());
        inbox.write_directly(connection.direct());
        (inbox, connection, Arc::new(Wakes::default()))
    }

    /// The reader waits, having been given or seen every event up to `through`.
    fn waits(inbox: &Inbox, wakes: &Arc<Wakes>, through: u64) {
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(inbox.poll_recv(&mut cx, Some(through)).is_pending());
    }

    fn taken(connection: &Connection) -> Vec<u8> {
        std::mem::take(&mut *connection.taken.lock().unwrap())
    }

    #[test]
    fn an_inbox_and_what_it_queues_stay_small() {
        assert_eq!(size_of::<Inbox>(), 88);
        assert_eq!(size_of::<Live>(), 16);
    }

    #[test]
    fn a_waiting_reader_is_written_for_and_not_woken() {
        let (inbox, connection, wakes) = handed_over();
        waits(&inbox, &wakes, 0);
        assert_eq!(inbox.push(Live::Event(event(1)), true), Given::Written);
        assert_eq!(inbox.push(Live::Event(event(2)), true), Given::Written);
        let mut both = event(1).frame().to_vec();
        both.extend_from_slice(event(2).frame());
        assert_eq!(taken(&connection), both);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        assert!(inbox.try_recv().is_none(), "nothing queued");
        assert_eq!(inbox.given_through(), 2);
    }

    #[test]
    fn a_busy_channel_or_a_reader_at_work_gets_its_events_queued() {
        let (inbox, connection, wakes) = handed_over();
        waits(&inbox, &wakes, 0);
        // The channel is busy: queued, and the reader woken.
        assert_eq!(inbox.push(Live::Event(event(1)), false), Given::Queued);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // Woken, the reader is at work until it waits again: queued as well.
        assert_eq!(inbox.push(Live::Event(event(2)), true), Given::Queued);
        assert!(taken(&connection).is_empty());
        assert!(matches!(inbox.try_recv(), Some(Live::Event(e)) if e.id == 1));
        assert!(matches!(inbox.try_recv(), Some(Live::Event(e)) if e.id == 2));
        // Never handed over: always queued.
        let plain = Inbox::new(8, None);
        waits(&plain, &wakes, 0);
        assert_eq!(plain.push(Live::Event(event(3)), true), Given::Queued);
        assert!(matches!(plain.try_recv(), Some(Live::Event(e)) if e.id == 3));
    }

    #[test]
    fn what_the_connection_does_not_take_is_queued_first() {
        let (inbox, connection, wakes) = handed_over();
        *connection.room.lock().unwrap() = Some(5);
        waits(&inbox, &wakes, 0);
        assert_eq!(inbox.push(Live::Event(event(1)), true), Given::Queued);
        assert_eq!(inbox.push(Live::Event(event(2)), true), Given::Queued);
        assert_eq!(taken(&connection), event(1).frame()[..5].to_vec());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        match inbox.try_recv() {
            Some(Live::Rest { event, from }) => assert_eq!((event.id, from), (1, 5)),
            other => panic!("the rest first, not {other:?}"),
        }
        assert!(matches!(inbox.try_recv(), Some(Live::Event(e)) if e.id == 2));

        // Nothing taken at all: the event itself is queued.
        waits(&inbox, &wakes, 2);
        assert_eq!(inbox.push(Live::Event(event(3)), true), Given::Queued);
        assert!(taken(&connection).is_empty());
        assert!(matches!(inbox.try_recv(), Some(Live::Event(e)) if e.id == 3));
    }

    #[test]
    fn no_direct_write_of_a_seen_event_after_a_keep_alive_or_once_taken_back() {
        let (inbox, connection, wakes) = handed_over();
        // Already given out by the reader (or its resume position): left to the reader to skip.
        waits(&inbox, &wakes, 5);
        assert_eq!(inbox.push(Live::Event(event(5)), true), Given::Queued);
        assert!(matches!(inbox.try_recv(), Some(Live::Event(e)) if e.id == 5));
        // The sweep asked for a keep-alive, which the reader writes: nothing else meanwhile.
        waits(&inbox, &wakes, 5);
        inbox.sweep();
        inbox.sweep();
        assert_eq!(inbox.push(Live::Event(event(6)), true), Given::Queued);
        assert!(matches!(inbox.try_recv(), Some(Live::Event(e)) if e.id == 6));
        // Taken back (the reader is closing its connection).
        waits(&inbox, &wakes, 6);
        inbox.stop_direct_writes();
        assert_eq!(inbox.push(Live::Event(event(7)), true), Given::Queued);
        assert!(matches!(inbox.try_recv(), Some(Live::Event(e)) if e.id == 7));
        assert!(taken(&connection).is_empty());
    }

    #[test]
    fn direct_writes_wait_for_a_quiet_channel_of_a_few_thousand_subscribers() {
        let mut state = ChannelState::new(0);
        for id in 0..DIRECT_SUBSCRIBERS_AT_MOST as u64 {
            let inbox = Arc::new(Inbox::new(4, None));
            state.subscribers.insert(
                id,
                SubscriberSlot {
                    inbox,
                    device: None,
                },
            );
        }
        let ended = std::time::Instant::now();
        assert!(state.direct_writes(ended), "no fan-out yet");
        state.last_fan_out = Some(ended);
        assert!(!state.direct_writes(ended + Duration::from_micros(900)));
        // Quiet before the one before too: a lull in a flood is not enough.
        assert!(!state.direct_writes(ended + Duration::from_millis(1)));
        assert!(state.direct_writes(ended + Duration::from_millis(1)));
        // One subscriber more than one core writes to in a few milliseconds.
        let inbox = Arc::new(Inbox::new(4, None));
        let slot = SubscriberSlot {
            inbox,
            device: None,
        };
        state.subscribers.insert(u64::MAX, slot);
        assert!(!state.direct_writes(ended + Duration::from_secs(1)));
    }
}
