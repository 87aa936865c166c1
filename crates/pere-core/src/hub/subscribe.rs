//! Subscriptions: where a feed starts, its registration at the resume seam, and the
//! [`Subscription`] that replays, goes live and redelivers overdue events.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use pere_proto::event::{now, Event};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{DeviceOp, DeviceTouch};
use tokio::time::{Instant, Sleep};

use crate::error::StoreError;
use crate::store::{EventPage, Store};

use super::channel::{ChannelHub, CutReason, DirectWrite, Inbox, Live, SubscriberSlot};
use super::Hub;

/// Where a new subscription starts.
#[derive(Debug, Clone, Default)]
pub struct SubscribeRequest {
    /// The subscribing device; `None` for an anonymous listener (no presence, no receipts).
    pub device: Option<DeviceId>,
    /// An explicit resume position (`Last-Event-ID`): deliver events after it.
    pub last_event_id: Option<u64>,
    /// The resume header as the client sent it, for the device record.
    pub last_event_id_raw: Option<String>,
}

/// One item of a feed.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// An event.
    Event(Arc<Event>),
    /// An event sent again because its receipt is overdue; the number is which send this is.
    Redelivery(Arc<Event>, u32),
    /// The client resumed from `requested`, beyond this server's last id `head`: the server's
    /// history was lost (a memory store restarted, a data directory replaced), ids start over,
    /// and replay begins at the oldest retained event.
    Reset {
        /// The position the client asked for.
        requested: u64,
        /// The channel's last id.
        head: u64,
    },
    /// Events `from..=to` were asked for but cannot be sent: no longer retained, or damaged in
    /// the store (one gap per run of consecutive damaged ids, in its place among the events).
    Gap {
        /// First missing id.
        from: u64,
        /// Last missing id.
        to: u64,
    },
    /// Nothing new: the feed was given nothing for a while (see [`HubConfig::keep_alive`]), and
    /// its writer sends something that is no event, so that the connection does not look dead.
    ///
    /// [`HubConfig::keep_alive`]: super::HubConfig::keep_alive
    KeepAlive,
    /// What the connection did not take of an event the hub wrote to it directly (see
    /// [`Subscription::write_directly`]): the event's frame from `from` on, to be written
    /// before anything else.
    Rest {
        /// The event.
        event: Arc<Event>,
        /// Where in its frame the rest begins.
        from: u32,
    },
}

impl<S: Store> Hub<S> {
    /// Opens a subscription: replay from the resume position, then live events.
    ///
    /// The position is `request.last_event_id` when given; else, for a device already known on the
    /// channel, the last event it acknowledged; else the start of the retained history. A position
    /// beyond the channel's last id (a client of an earlier, forgotten history) starts from the
    /// beginning as well.
    ///
    /// # Errors
    /// The store's error when the device record or history cannot be read.
    pub async fn subscribe(
        self: &Arc<Self>,
        channel: &ChannelName,
        request: SubscribeRequest,
    ) -> Result<Subscription<S>, StoreError> {
        let hub = self.channel(channel).await?;
        // The loaded channel's own name from here on: what is kept for the feed's life (its
        // presence, its store record) shares it rather than the caller's copy.
        let channel = &hub.name.clone();
        let mut after = request.last_event_id;
        if let Some(device) = &request.device {
            if after.is_none() {
                after = self
                    .store
                    .device(channel, device)
                    .await?
                    .map(|d| d.last_acked);
            }
            self.store
                .touch_device(DeviceTouch {
                    channel: channel.clone(),
                    device: device.clone(),
                    op: DeviceOp::Feed,
                    at: now(),
                    last_event_id: request.last_event_id_raw.clone(),
                    delivered: 0,
                })
                .await?;
        }
        let mut explicit = after.is_some_and(|a| a > 0);
        let mut after = after.unwrap_or(0);
        // Heads only grow, so a position beyond the head read now was never given out here.
        let head = self.store.head(channel).await?;
        // A position beyond the head, or inside ids the store lost when it changed, names events
        // this store no longer has: the client must forget them.
        let forgotten = after > head
            || (after > 0
                && self
                    .store
                    .lost(channel)
                    .await?
                    .iter()
                    .any(|lost| lost.contains(&after)));
        let mut reset = None;
        if forgotten {
            reset = Some(FeedItem::Reset {
                requested: after,
                head,
            });
            after = 0;
            explicit = false;
        }

        if let Some(device) = &request.device {
            self.add_recipient(&hub, channel, device).await?;
        }
        let live = request.device.as_ref().map(|device| {
            let mut devices = self.live_devices.lock().unwrap_or_else(|e| e.into_inner());
            let live = devices
                .entry((channel.clone(), device.clone()))
                .or_default()
                .clone();
            let first = live.streams.fetch_add(1, Ordering::Relaxed) == 0;
            if self.shares_presence() {
                self.presence_touched(channel, device);
            } else if first {
                self.apply_presence_to(&hub, device, true);
            }
            live
        });

        let inbox = Arc::new(Inbox::new(self.config.subscriber_buffer, live));
        let id = self.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let snapshot = {
            let mut state = hub.state();
            // Read under the channel's lock, which `end_feeds` takes after setting it: a feed
            // is either registered in time to be cut there, or sees that feeds have ended.
            if self.feeds_ended.load(Ordering::SeqCst) {
                inbox.cut(CutReason::Stopping);
            } else {
                let device = request.device.clone();
                state.subscribers.insert(
                    id,
                    SubscriberSlot {
                        inbox: inbox.clone(),
                        device,
                    },
                );
            }
            hub.subscriber_count
                .store(state.subscribers.len(), Ordering::Relaxed);
            state.last_released
        };
        Ok(Subscription {
            hub: self.clone(),
            channel: channel.clone(),
            channel_hub: hub,
            device: request.device,
            id,
            inbox,
            replay: (after < snapshot).then(|| {
                Box::new(Replay {
                    next: after,
                    until: snapshot,
                    events: VecDeque::new(),
                    gaps: VecDeque::new(),
                    gap_open: false,
                    report_gaps: explicit,
                })
            }),
            skip_live_through: after,
            last_sent: after,
            in_flight: VecDeque::new(),
            redelivery: None,
            reset,
        })
    }
}

/// A live subscription: yields replayed events, then live ones, in id order, each once.
/// Dropping it unregisters the subscriber and updates the device's presence.
#[derive(Debug)]
pub struct Subscription<S: Store> {
    hub: Arc<Hub<S>>,
    channel_hub: Arc<ChannelHub>,
    channel: ChannelName,
    device: Option<DeviceId>,
    id: u64,
    inbox: Arc<Inbox>,
    // Boxed, and gone once replayed: a live feed carries none of it.
    replay: Option<Box<Replay>>,
    // A position between the last released event and the head: live events up to it were
    // already seen by the client.
    skip_live_through: u64,
    // The id of the last event given out (or the resume position): what a reset names.
    last_sent: u64,
    // Events sent to a device that owes receipts, oldest first: (event, next due, sends so far).
    in_flight: VecDeque<(Arc<Event>, Instant, u32)>,
    // When the oldest of `in_flight` is due. Boxed, and only while something is in flight: the
    // timer would otherwise be room in every feed (and in every future awaiting `next`), while
    // most feeds owe no receipts.
    redelivery: Option<Pin<Box<Sleep>>>,
    reset: Option<FeedItem>,
}

/// Where a subscription stands in its replay of the store, up to the last event released when
/// it subscribed.
#[derive(Debug)]
struct Replay {
    /// The last id read from the store.
    next: u64,
    until: u64,
    /// The page read and not yet given out.
    events: VecDeque<Arc<Event>>,
    // Runs of replayed ids that cannot be sent (pruned, damaged), `(from, to)` in id order; each
    // goes out as a gap in its place among `events`. Empty, and unallocated, nearly always.
    gaps: VecDeque<(u64, u64)>,
    // The last of `gaps` is a run of damaged ids that ended the last page read: held back until
    // the next page says whether it goes on.
    gap_open: bool,
    report_gaps: bool,
}

/// What a replay gives out next.
enum Replayed {
    Event(Arc<Event>),
    Gap { from: u64, to: u64 },
}

impl Replay {
    /// Takes a page read from the store after `self.next`; returns how many events it adds.
    fn take_page(&mut self, page: EventPage) -> usize {
        let expected = self.next + 1;
        if self.report_gaps && page.first_retained > expected {
            self.gaps
                .push_back((expected, (page.first_retained - 1).min(self.until)));
        }
        self.report_gaps = false;
        let until = self.until;
        let before = self.events.len();
        self.events
            .extend(page.events.into_iter().filter(|e| e.id <= until));
        let added = self.events.len() - before;
        // What the store holds but cannot give (damaged): one gap per run of ids, in its
        // place, and the feed goes on after it.
        let mut run = if std::mem::take(&mut self.gap_open) {
            self.gaps.pop_back()
        } else {
            None
        };
        let mut last_unreadable = None;
        for id in page.unreadable.into_iter().filter(|&id| id <= until) {
            last_unreadable = Some(id);
            run = match run {
                Some((from, to)) if to + 1 == id => Some((from, id)),
                Some(done) => {
                    self.gaps.push_back(done);
                    Some((id, id))
                }
                None => Some((id, id)),
            };
        }
        match self.events.back().map(|e| e.id).max(last_unreadable) {
            Some(end) => {
                self.next = end;
                // A run that reaches the page's end may go on in the next one: held back, so
                // that one gap names it whole.
                self.gap_open = run.is_some_and(|(_, to)| to == end && end < until);
                self.gaps.extend(run);
            }
            None => {
                self.gaps.extend(run);
                self.next = until;
            }
        }
        added
    }

    /// The next replayed item in id order, from the page already read: an event, or the gap
    /// that comes before it.
    fn take_ready(&mut self) -> Option<Replayed> {
        let event = self.events.front().map(|e| e.id);
        // An open run (the last of `gaps`) waits for the next page.
        let ready = self.gaps.len() > usize::from(self.gap_open);
        match self.gaps.front() {
            Some(&(from, to)) if ready && event.is_none_or(|id| from < id) => {
                self.gaps.pop_front();
                Some(Replayed::Gap { from, to })
            }
            _ => {
                let event = self.events.pop_front()?;
                if self.events.is_empty() {
                    // A page's room goes back with its last event: a feed waits for its next
                    // page, or goes live, holding none.
                    self.events = VecDeque::new();
                }
                Some(Replayed::Event(event))
            }
        }
    }

    fn is_done(&self) -> bool {
        self.next >= self.until && self.events.is_empty() && self.gaps.is_empty()
    }
}

impl<S: Store> Subscription<S> {
    /// The next item, or `None` when the stream ends (the subscriber was too slow; see
    /// [`Subscription::lagged`]).
    ///
    /// # Errors
    /// The store's error when history cannot be read; the stream should end then.
    pub async fn next(&mut self) -> Option<Result<FeedItem, StoreError>> {
        if let Some(reset) = self.reset.take() {
            return Some(Ok(reset));
        }
        loop {
            if let Some((event, sends)) = self.due_redelivery() {
                return Some(Ok(FeedItem::Redelivery(event, sends)));
            }
            if let Some(item) = self.next_replayed() {
                return Some(Ok(item));
            }
            if let Some((after, until)) = self
                .replay
                .as_ref()
                .filter(|replay| replay.next < replay.until)
                .map(|replay| (replay.next, replay.until))
            {
                // A turn given before each page: a socket that takes every frame at once never
                // makes a replaying feed wait, and a thousand feeds replaying from the memory
                // store would keep the node's threads (and `/health`) for seconds. Given here,
                // with the last page sent, the feed waits for its turn holding no page.
                tokio::task::yield_now().await;
                let limit = self.hub.config.replay_page.min((until - after) as usize);
                // Boxed: a future is as large as its largest state, and a feed awaits this one
                // for its whole life; the store's read (a blocking task, a Redis command) would
                // otherwise be carried by every idle feed.
                let page = match Box::pin(self.hub.store.read(&self.channel, after, limit)).await {
                    Ok(page) => page,
                    Err(err) => return Some(Err(err)),
                };
                if let Some(replay) = self.replay.as_mut() {
                    let added = replay.take_page(page);
                    self.hub.observers.count_delivered(added);
                }
                continue;
            }
            match self.in_flight.front().map(|(_, due, _)| *due) {
                Some(due) => match &mut self.redelivery {
                    Some(timer) if timer.deadline() == due => {}
                    Some(timer) => timer.as_mut().reset(due),
                    None => self.redelivery = Some(Box::pin(tokio::time::sleep_until(due))),
                },
                None => self.redelivery = None,
            }
            let inbox = &self.inbox;
            // Not while live events up to a reset's floor are still to be passed over here: the
            // hub writes only above the last event this reader gave out, which is then what a
            // later reset names.
            let direct = (self.direct_writes_allowed() && self.skip_live_through <= self.last_sent)
                .then_some(self.last_sent);
            let redelivery = &mut self.redelivery;
            let received = std::future::poll_fn(|cx| {
                if let Poll::Ready(live) = inbox.poll_recv(cx, direct) {
                    return Poll::Ready(Some(live));
                }
                match redelivery {
                    Some(timer) => timer.as_mut().poll(cx).map(|()| None),
                    None => Poll::Pending,
                }
            })
            .await;
            // The oldest in flight is due: back to the top, which sends it again.
            let Some(live) = received else {
                continue;
            };
            let live = live?;
            match live {
                Live::Event(event) if event.id <= self.skip_live_through => continue,
                Live::Event(event) => return Some(Ok(self.delivered(event))),
                Live::Reset { floor } => return Some(Ok(self.reset_to(floor))),
                Live::KeepAlive => return Some(Ok(FeedItem::KeepAlive)),
                Live::Rest { event, from } => return Some(Ok(FeedItem::Rest { event, from })),
            }
        }
    }

    /// The next replayed item in id order: an event, or the gap that comes before it. The
    /// replay's room goes once it is done.
    fn next_replayed(&mut self) -> Option<FeedItem> {
        let replay = self.replay.as_mut()?;
        let item = replay.take_ready();
        if replay.is_done() {
            self.replay = None;
        }
        match item? {
            Replayed::Event(event) => Some(self.delivered(event)),
            Replayed::Gap { from, to } => Some(FeedItem::Gap { from, to }),
        }
    }

    /// The oldest in-flight event whose receipt is overdue, to send again; drops the ones that
    /// were acknowledged or have been sent often enough.
    fn due_redelivery(&mut self) -> Option<(Arc<Event>, u32)> {
        let timeout = self.hub.config.ack_timeout?;
        let device = self.device.as_ref()?;
        let now = Instant::now();
        while let Some((_, due, _)) = self.in_flight.front() {
            if *due > now {
                return None;
            }
            let (event, _, sends) = self.in_flight.pop_front()?;
            let owed = self.channel_hub.ledger().owes(event.id, device);
            if owed && sends < self.hub.config.max_deliveries {
                self.in_flight
                    .push_back((event.clone(), now + timeout, sends + 1));
                self.hub.observers.count_redelivered();
                return Some((event, sends + 1));
            }
        }
        None
    }

    /// The next item ready now, without waiting: a replayed one from the page already read, or
    /// a live one already queued; for writers that coalesce frames. Returns nothing where
    /// [`Subscription::next`] would have to wait, read the store or redeliver first.
    pub fn try_next(&mut self) -> Option<FeedItem> {
        if self.reset.is_some() {
            return None;
        }
        if self.replay.is_some() {
            let item = self.next_replayed();
            if item.is_some() || self.replay.is_some() {
                return item;
            }
        }
        loop {
            match self.inbox.try_recv()? {
                Live::Event(event) if event.id <= self.skip_live_through => {}
                Live::Event(event) => return Some(self.delivered(event)),
                Live::Reset { floor } => {
                    // For `next`, which says it before anything newer.
                    self.reset = Some(self.reset_to(floor));
                    return None;
                }
                // Never queued, so never taken without waiting.
                Live::KeepAlive => return None,
                Live::Rest { event, from } => return Some(FeedItem::Rest { event, from }),
            }
        }
    }

    /// The reset a subscriber hears when the store changed under the node: the ids it saw are
    /// forgotten, and the channel goes on above `floor`.
    fn reset_to(&mut self, floor: u64) -> FeedItem {
        self.in_flight.clear();
        self.skip_live_through = self.skip_live_through.max(floor);
        FeedItem::Reset {
            requested: self.last_sent.max(self.inbox.given_through()),
            head: floor,
        }
    }

    fn delivered(&mut self, event: Arc<Event>) -> FeedItem {
        FeedItem::Event(self.mark(event))
    }

    fn mark(&mut self, event: Arc<Event>) -> Arc<Event> {
        self.last_sent = event.id;
        if let Some(live) = &self.inbox.live {
            live.delivered.fetch_max(event.id, Ordering::Relaxed);
        }
        if let (Some(timeout), Some(device)) = (self.hub.config.ack_timeout, &self.device) {
            if self.channel_hub.ledger().owes(event.id, device) {
                // Bounded like the queue: past it, the oldest stops being watched.
                if self.in_flight.len() >= self.hub.config.subscriber_buffer {
                    self.in_flight.pop_front();
                }
                self.in_flight
                    .push_back((event.clone(), Instant::now() + timeout, 1));
            }
        }
        event
    }

    /// Hands the subscriber's connection to the hub, which then writes an event to it itself
    /// when this subscription waits idle (see [`FeedItem::Rest`]). For a reader that writes
    /// each item it is given to that connection and nothing else. The connection must stay open
    /// until [`Subscription::stop_direct_writes`] returns (dropping the subscription calls it):
    /// no direct write is under way, or begins, after that.
    pub fn write_directly(&self, connection: DirectWrite) {
        self.inbox.write_directly(connection);
    }

    /// Takes the connection handed over by [`Subscription::write_directly`] back.
    pub fn stop_direct_writes(&self) {
        self.inbox.stop_direct_writes();
    }

    /// Whether events may be written to the connection while this subscription waits: not
    /// while events sent to a device that owes receipts are watched for redelivery, which
    /// happens as each is given out here.
    fn direct_writes_allowed(&self) -> bool {
        self.hub.config.ack_timeout.is_none() || self.device.is_none()
    }

    /// Whether the stream was cut because the subscriber fell too far behind.
    pub fn lagged(&self) -> bool {
        self.cut_reason() == Some(CutReason::Lagged)
    }

    /// Why the hub ended this subscription, if it did: the subscriber lagged, or the node is
    /// stopping.
    pub fn cut_reason(&self) -> Option<CutReason> {
        self.inbox.cut_reason()
    }

    /// Resolves, with why, when the hub cuts this subscription (for lagging, or because the
    /// node stops), even while nobody reads it: a writer blocked on a client that does not read
    /// can give up at once. One such notice is watched at a time: polling a newer one stops
    /// waking the task of an older one.
    pub fn cut_notice(&self) -> impl Future<Output = CutReason> + Send + 'static {
        let inbox = self.inbox.clone();
        std::future::poll_fn(move |cx| inbox.poll_cut(cx))
    }

    /// The device of this subscription, if not anonymous.
    pub fn device(&self) -> Option<&DeviceId> {
        self.device.as_ref()
    }

    /// The channel of this subscription.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }
}

impl<S: Store> Drop for Subscription<S> {
    fn drop(&mut self) {
        {
            let mut state = self.channel_hub.state();
            state.subscribers.remove(&self.id);
            self.channel_hub
                .subscriber_count
                .store(state.subscribers.len(), Ordering::Relaxed);
        }
        // Out of the channel's subscribers, no fan-out reaches the inbox any more; the connection
        // is taken back too, before the device's records below: the reader closes it once this
        // is dropped.
        self.inbox.stop_direct_writes();
        let (Some(live), Some(device)) = (self.inbox.live.clone(), self.device.clone()) else {
            return;
        };
        let last_stream = {
            let mut devices = self
                .hub
                .live_devices
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let remaining = live.streams.fetch_sub(1, Ordering::Relaxed) - 1;
            if remaining == 0 {
                devices.remove(&(self.channel.clone(), device.clone()));
            }
            remaining == 0
        };
        let shared = self.hub.shares_presence();
        if shared {
            self.hub.presence_touched(&self.channel, &device);
        }
        if !last_stream {
            // The device is still online; its last stream saves the shared delivery cursor.
            return;
        }
        if !shared {
            self.hub
                .apply_presence_to(&self.channel_hub, &device, false);
        }
        let touch = DeviceTouch {
            channel: self.channel.clone(),
            device,
            op: DeviceOp::Disconnect,
            at: now(),
            last_event_id: None,
            delivered: live.delivered.load(Ordering::Relaxed),
        };
        let store = self.hub.store.clone();
        // Saving the delivery cursor is worth a task; outside a runtime (a test tearing down)
        // there is nothing left to save it for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.touch_device(touch).await;
            });
        }
    }
}
