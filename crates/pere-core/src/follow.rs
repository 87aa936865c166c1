//! Following a channel's live streams: its receipts ([`ReceiptFollow`]: replay from the store
//! after a position, then live, every receipt once and in `seq` order, with completion notices
//! between) and its presence changes ([`PresenceFollow`]: read by `seq` from a bounded log).
//!
//! Live notices can overtake each other (two receipts recorded in one commit wake their
//! handlers in any order), so a notice only wakes the follower, which then reads the store from
//! the last `seq` it gave out: the store shows receipts in `seq` order, so a follower gets every
//! receipt once, in order, and resuming from its last `seq` misses nothing. Completions are live
//! only: they have no position and are not replayed.
//!
//! The newest receipts announced (at most [`RECENT_RECEIPTS`]) are kept with the announcement,
//! so a follower that keeps up takes them from memory, as feeds take events; it reads the store
//! only to replay, or when what it needs is no longer (or not yet, in order) in memory. Store
//! reads of every follower of a hub take turns (`ReceiptReplays`): a thousand followers
//! replaying a long history cost the same work, but never all of a node's threads at once, so
//! its other requests are still answered.
//!
//! Neither stream allocates anything sized for a busy channel up front: a channel keeps the
//! newest receipt `seq` announced, the newest receipts, and the completions and presence changes
//! that actually happened, up to a bound, made on the first follow, and followers read them at
//! their own pace.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use pere_proto::name::ChannelName;
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::Completion;
use pere_proto::receipt::Receipt;
use tokio::sync::Notify;

use crate::error::StoreError;
use crate::store::Store;

/// Receipts read from the store per step, in replay and when a live notice wakes the follower:
/// one page is what a follower holds in memory at once.
pub const RECEIPT_PAGE: usize = 256;

/// Receipts kept in memory per followed channel, newest first out, for followers that keep up.
pub const RECENT_RECEIPTS: usize = 256;

/// Items a waiting follower keeps room for; more room (a replayed page's) is given back.
const IDLE_ROOM: usize = 8;

/// The turns followers of one hub take to read receipts from the store: one at a time.
#[derive(Debug, Clone)]
pub(crate) struct ReceiptReplays(Arc<tokio::sync::Semaphore>);

impl Default for ReceiptReplays {
    fn default() -> Self {
        ReceiptReplays(Arc::new(tokio::sync::Semaphore::new(1)))
    }
}

/// Completions kept per channel for followers that have not read them yet; a follower further
/// behind than this ends (it resumes from its last `seq` and loses only completion notices,
/// which are live only). Kept as they happen, so a quiet channel holds none.
pub const COMPLETION_BUFFER: usize = 1024;

/// Presence changes kept per channel for replay and for followers that have not read them yet.
pub const PRESENCE_HISTORY: usize = 1000;

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The live side of one channel's receipt stream, shared by the hub (which announces) and the
/// followers (which read the store when woken).
#[derive(Debug, Default)]
pub(crate) struct ReceiptLive {
    state: Mutex<LiveReceipts>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct LiveReceipts {
    /// The greatest receipt `seq` announced.
    latest: u64,
    /// Recent completions, in the order announced, with the `seq` of the receipt that caused
    /// each; at most [`COMPLETION_BUFFER`].
    completions: VecDeque<(u64, Completion)>,
    /// How many completions were ever announced: a follower's cursor counts in these.
    announced: u64,
    /// The newest receipts announced, in `seq` order; at most [`RECENT_RECEIPTS`].
    recent: VecDeque<Receipt>,
    /// The hub went away: followers end once they have read everything.
    closed: bool,
}

impl ReceiptLive {
    /// Announces `receipt` (and the completion it caused) and wakes every follower.
    pub(crate) fn announce(&self, receipt: &Receipt, completed: Option<Completion>) {
        let seq = receipt.seq;
        {
            let mut state = locked(&self.state);
            state.latest = state.latest.max(seq);
            // Nearly always the newest; one relayed late by another node goes in its place.
            let at = state.recent.partition_point(|kept| kept.seq < seq);
            if state.recent.get(at).is_none_or(|kept| kept.seq != seq) {
                state.recent.insert(at, receipt.clone());
            }
            if state.recent.len() > RECENT_RECEIPTS {
                state.recent.pop_front();
            }
            if let Some(done) = completed {
                state.completions.push_back((seq, done));
                state.announced += 1;
                if state.completions.len() > COMPLETION_BUFFER {
                    state.completions.pop_front();
                }
            }
        }
        self.wake.notify_waiters();
    }

    /// Ends the stream for every follower (the hub is gone).
    pub(crate) fn close(&self) {
        locked(&self.state).closed = true;
        self.wake.notify_waiters();
    }
}

/// One item of a receipt stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptItem {
    /// A receipt; its `seq` is its position in the stream.
    Receipt(Receipt),
    /// An event became fully acknowledged. Not a position: it is never replayed, and it may come
    /// after receipts recorded later than the one that completed it.
    Completed {
        /// The channel.
        channel: ChannelName,
        /// The event.
        event_id: u64,
        /// How many recipients were expected (all acknowledged).
        expected: usize,
    },
}

impl ReceiptItem {
    fn completed(channel: &ChannelName, done: Completion) -> Self {
        ReceiptItem::Completed {
            channel: channel.clone(),
            event_id: done.event_id,
            expected: done.expected,
        }
    }
}

/// A follower of one channel's receipts, made by
/// [`Hub::follow_receipts`](crate::hub::Hub::follow_receipts).
#[derive(Debug)]
pub struct ReceiptFollow<S> {
    store: S,
    replays: ReceiptReplays,
    channel: ChannelName,
    live: Arc<ReceiptLive>,
    /// How many of the channel's completions this follower has taken.
    completions_seen: u64,
    /// While replaying: the `seq` to read after next.
    replay: Option<u64>,
    /// The `seq` of the last receipt given out (or skipped as already known).
    through: u64,
    /// Read from the store, not given out yet.
    ready: VecDeque<ReceiptItem>,
    ended: bool,
    lagged: bool,
}

/// What woke a follower: the newest `seq` announced and the completions it had not taken.
struct LiveNews {
    latest: u64,
    completions: Vec<(u64, Completion)>,
    lost: bool,
    closed: bool,
}

impl<S: Store> ReceiptFollow<S> {
    /// A follower that hears `live` from now on: it replays from the store after `after`, when
    /// given, and otherwise goes live after the head given to
    /// [`starting_after`](Self::starting_after), read once it listens.
    pub(crate) fn new(
        store: S,
        replays: ReceiptReplays,
        channel: ChannelName,
        live: Arc<ReceiptLive>,
        after: Option<u64>,
    ) -> Self {
        let completions_seen = locked(&live.state).announced;
        ReceiptFollow {
            store,
            replays,
            channel,
            live,
            completions_seen,
            replay: after,
            through: 0,
            ready: VecDeque::new(),
            ended: false,
            lagged: false,
        }
    }

    /// Sets where the live stream starts when there is no replay: after `head`, read once the
    /// follower listens.
    pub(crate) fn starting_after(mut self, head: u64) -> Self {
        self.through = self.replay.unwrap_or(head);
        self
    }

    /// The next item, or `None` when the stream ends: the hub went away, or the follower fell
    /// behind the live notices (see [`ReceiptFollow::lagged`]) and should resume from the last
    /// `seq` it got.
    ///
    /// # Errors
    /// The store's error when receipts cannot be read; the stream ends then.
    pub async fn next(&mut self) -> Option<Result<ReceiptItem, StoreError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(Ok(item));
            }
            if self.ended {
                return None;
            }
            if let Some(after) = self.replay {
                match self.read_after(after).await {
                    Ok(page) if page.is_empty() => self.replay = None,
                    Ok(page) => {
                        self.replay = page.last().map(|r| r.seq);
                        for receipt in page {
                            self.through = receipt.seq;
                            self.ready.push_back(ReceiptItem::Receipt(receipt));
                        }
                    }
                    Err(err) => return Some(Err(self.fail(err))),
                }
                continue;
            }
            let live = self.live.clone();
            let woken = live.wake.notified();
            tokio::pin!(woken);
            // Listening before looking, so an announcement in between is not missed.
            woken.as_mut().enable();
            let news = self.news();
            if news.lost {
                self.lagged = true;
                self.ended = true;
                continue;
            }
            if news.latest <= self.through && news.completions.is_empty() {
                if news.closed {
                    self.ended = true;
                    continue;
                }
                // A replayed page's room (a page of receipts, ~30 KiB) is given back before
                // waiting: a follower that caught up may wait for hours.
                if self.ready.capacity() > IDLE_ROOM {
                    self.ready = VecDeque::new();
                }
                woken.await;
                continue;
            }
            if let Err(err) = self.read_up_to(news.latest, news.completions).await {
                return Some(Err(self.fail(err)));
            }
        }
    }

    /// Takes what was announced since this follower last looked.
    fn news(&mut self) -> LiveNews {
        let state = locked(&self.live.state);
        let kept_from = state.announced - state.completions.len() as u64;
        let lost = self.completions_seen < kept_from;
        let fresh = state
            .announced
            .saturating_sub(self.completions_seen.max(kept_from)) as usize;
        let completions = state
            .completions
            .iter()
            .skip(state.completions.len() - fresh)
            .copied()
            .collect();
        self.completions_seen = state.announced;
        LiveNews {
            latest: state.latest,
            completions,
            lost,
            closed: state.closed,
        }
    }

    /// Reads every receipt after the last one given out up to `target` (and any recorded since,
    /// on the same page), each completion right after the receipt that caused it; completions of
    /// receipts given out already come first.
    async fn read_up_to(
        &mut self,
        target: u64,
        completions: Vec<(u64, Completion)>,
    ) -> Result<(), StoreError> {
        let (known, mut pending): (Vec<_>, Vec<_>) = completions
            .into_iter()
            .partition(|(seq, _)| *seq <= self.through);
        for (_, done) in known {
            self.ready
                .push_back(ReceiptItem::completed(&self.channel, done));
        }
        while self.through < target {
            let page = match self.from_memory(target) {
                Some(page) => page,
                None => self.read_after(self.through).await?,
            };
            if page.is_empty() {
                break;
            }
            for receipt in page {
                self.through = receipt.seq;
                let seq = receipt.seq;
                self.ready.push_back(ReceiptItem::Receipt(receipt));
                pending.retain(|(caused_by, done)| {
                    let now = *caused_by == seq;
                    if now {
                        self.ready
                            .push_back(ReceiptItem::completed(&self.channel, *done));
                    }
                    !now
                });
            }
        }
        // Receipts pruned before they could be read (late receipts for events retention removed)
        // are not replayed either; their completions are still news.
        self.through = self.through.max(target);
        for (_, done) in pending {
            self.ready
                .push_back(ReceiptItem::completed(&self.channel, done));
        }
        Ok(())
    }

    /// The receipts after the last one given out, up to `target`, from memory: `None` unless
    /// the next one is there, then those that follow it without a hole.
    fn from_memory(&self, target: u64) -> Option<Vec<Receipt>> {
        let state = locked(&self.live.state);
        let next = self.through + 1;
        let at = state.recent.partition_point(|kept| kept.seq < next);
        if state.recent.get(at).is_none_or(|kept| kept.seq != next) {
            return None;
        }
        let run = state
            .recent
            .range(at..)
            .zip(next..)
            .take_while(|(kept, seq)| kept.seq == *seq && *seq <= target)
            .take(RECEIPT_PAGE)
            .map(|(kept, _)| kept.clone())
            .collect();
        Some(run)
    }

    /// A page of receipts after `after` from the store, in this hub's followers' turn.
    async fn read_after(&self, after: u64) -> Result<Vec<Receipt>, StoreError> {
        let _turn = self.replays.0.acquire().await;
        self.store
            .receipts_after(&self.channel, after, RECEIPT_PAGE)
            .await
    }

    fn fail(&mut self, err: StoreError) -> StoreError {
        self.ready.clear();
        self.ended = true;
        err
    }

    /// Whether the stream ended because the follower fell behind the live notices.
    pub fn lagged(&self) -> bool {
        self.lagged
    }

    /// The channel followed.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }
}

/// One channel's presence changes: the newest [`PRESENCE_HISTORY`], numbered by `seq`, and the
/// wake-up of their followers.
#[derive(Debug)]
pub(crate) struct PresenceLog {
    state: Mutex<PresenceState>,
    wake: Notify,
}

#[derive(Debug)]
struct PresenceState {
    /// The `seq` of the newest change (the first change gets the next one).
    seq: u64,
    changes: VecDeque<PresenceChange>,
    /// The `seq` of the newest change dropped from `changes` (0: none): a follower not past it
    /// has lost changes. Numbers given elsewhere need not be consecutive here.
    dropped: u64,
    closed: bool,
}

impl PresenceState {
    fn push(&mut self, change: PresenceChange) {
        self.changes.push_back(change);
        if self.changes.len() > PRESENCE_HISTORY {
            if let Some(old) = self.changes.pop_front() {
                self.dropped = old.seq;
            }
        }
    }
}

impl PresenceLog {
    /// An empty log whose first change will be `after + 1`.
    pub(crate) fn new(after: u64) -> Self {
        PresenceLog {
            state: Mutex::new(PresenceState {
                seq: after,
                changes: VecDeque::new(),
                // An earlier life's changes are gone.
                dropped: after,
                closed: false,
            }),
            wake: Notify::new(),
        }
    }

    /// A log holding `changes` (numbered elsewhere, oldest first): the newest
    /// [`PRESENCE_HISTORY`] of them; the next change is numbered after the last.
    pub(crate) fn seeded(changes: Vec<PresenceChange>) -> Self {
        let seq = changes.last().map_or(0, |c| c.seq);
        let skip = changes.len().saturating_sub(PRESENCE_HISTORY);
        let dropped = skip.checked_sub(1).map_or(0, |last| changes[last].seq);
        PresenceLog {
            state: Mutex::new(PresenceState {
                seq,
                changes: changes.into_iter().skip(skip).collect(),
                dropped,
                closed: false,
            }),
            wake: Notify::new(),
        }
    }

    /// Records a change numbered elsewhere (the store's numbering, shared by every node) and
    /// wakes the followers; false, and nothing recorded, for a change at or below the newest:
    /// heard twice (live and in a catch-up read).
    pub(crate) fn record_numbered(&self, change: PresenceChange) -> bool {
        {
            let mut state = locked(&self.state);
            if change.seq <= state.seq {
                return false;
            }
            state.seq = change.seq;
            state.push(change);
        }
        self.wake.notify_waiters();
        true
    }

    /// Records a change, numbering it, and wakes the followers.
    pub(crate) fn record(&self, change: impl FnOnce(u64) -> PresenceChange) -> PresenceChange {
        let change = {
            let mut state = locked(&self.state);
            state.seq += 1;
            let change = change(state.seq);
            state.push(change.clone());
            change
        };
        self.wake.notify_waiters();
        change
    }

    /// The `seq` of the newest change.
    pub(crate) fn seq(&self) -> u64 {
        locked(&self.state).seq
    }

    /// Ends the stream for every follower (the hub is gone).
    pub(crate) fn close(&self) {
        locked(&self.state).closed = true;
        self.wake.notify_waiters();
    }
}

/// A follower of one channel's presence changes, made by
/// [`Hub::follow_presence`](crate::hub::Hub::follow_presence): the changes kept after a position,
/// then live ones, in `seq` order.
#[derive(Debug)]
pub struct PresenceFollow {
    log: Arc<PresenceLog>,
    /// The `seq` of the last change given out.
    after: u64,
    ready: VecDeque<PresenceChange>,
    lagged: bool,
}

impl PresenceFollow {
    /// Follows `log` after `after`; a position beyond the log's newest change (from an earlier
    /// life of the channel) starts with the next change.
    pub(crate) fn new(log: Arc<PresenceLog>, after: u64) -> Self {
        let after = {
            let state = locked(&log.state);
            // What is no longer kept is not owed: replay starts with the oldest change kept.
            let oldest = state.changes.front().map_or(state.seq + 1, |c| c.seq);
            after.clamp(oldest - 1, state.seq)
        };
        PresenceFollow {
            log,
            after,
            ready: VecDeque::new(),
            lagged: false,
        }
    }

    /// The next change, or `None` when the stream ends: the hub went away, or the follower fell
    /// behind by more than [`PRESENCE_HISTORY`] changes (see [`PresenceFollow::lagged`]).
    pub async fn next(&mut self) -> Option<PresenceChange> {
        loop {
            if let Some(change) = self.ready.pop_front() {
                return Some(change);
            }
            if self.lagged {
                return None;
            }
            let log = self.log.clone();
            let woken = log.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let state = locked(&self.log.state);
                if state.dropped > self.after {
                    self.lagged = true;
                    continue;
                }
                self.ready
                    .extend(state.changes.iter().filter(|c| c.seq > self.after).cloned());
                if let Some(last) = self.ready.back() {
                    self.after = last.seq;
                    continue;
                }
                if state.closed {
                    return None;
                }
            }
            woken.await;
        }
    }

    /// Whether the stream ended because the follower fell too far behind.
    pub fn lagged(&self) -> bool {
        self.lagged
    }
}

#[cfg(test)]
mod tests {
    use pere_proto::name::DeviceId;

    use super::*;
    use crate::store::MemoryStore;

    fn receipt(seq: u64) -> Receipt {
        Receipt {
            seq,
            channel: ChannelName::new("C").unwrap(),
            event_id: seq,
            device: DeviceId::new("H1").unwrap(),
            status: "ok".into(),
            time: pere_proto::event::now(),
        }
    }

    fn seqs(items: &[ReceiptItem]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|item| match item {
                ReceiptItem::Receipt(r) => Some(r.seq),
                ReceiptItem::Completed { .. } => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_follower_that_keeps_up_takes_receipts_from_memory() {
        // The store holds none of them: whatever the follower gets came from memory.
        let live = Arc::new(ReceiptLive::default());
        let channel = ChannelName::new("C").unwrap();
        let mut follow = ReceiptFollow::new(
            MemoryStore::default(),
            ReceiptReplays::default(),
            channel,
            live.clone(),
            None,
        )
        .starting_after(0);
        for seq in [1, 3, 2] {
            live.announce(&receipt(seq), None);
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(follow.next().await.unwrap().unwrap());
        }
        assert_eq!(seqs(&got), vec![1, 2, 3], "in seq order, each once");
    }

    #[tokio::test]
    async fn a_follower_that_caught_up_gives_back_its_pages_room_while_it_waits() {
        let live = Arc::new(ReceiptLive::default());
        let channel = ChannelName::new("C").unwrap();
        let mut follow = ReceiptFollow::new(
            MemoryStore::default(),
            ReceiptReplays::default(),
            channel,
            live.clone(),
            None,
        )
        .starting_after(0);
        for seq in 1..=RECEIPT_PAGE as u64 {
            live.announce(&receipt(seq), None);
        }
        for _ in 0..RECEIPT_PAGE {
            follow.next().await.unwrap().unwrap();
        }
        assert!(follow.ready.capacity() >= RECEIPT_PAGE, "a page was held");
        // Nothing more announced: the follower waits.
        assert!(futures_util::FutureExt::now_or_never(follow.next()).is_none());
        assert!(follow.ready.capacity() <= IDLE_ROOM);
    }

    #[test]
    fn memory_keeps_the_newest_receipts_only() {
        let live = ReceiptLive::default();
        for seq in 1..=(RECENT_RECEIPTS as u64 + 10) {
            live.announce(&receipt(seq), None);
        }
        let state = locked(&live.state);
        assert_eq!(state.recent.len(), RECENT_RECEIPTS);
        assert_eq!(state.recent.front().map(|r| r.seq), Some(11));
    }
}
