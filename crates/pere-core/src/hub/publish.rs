//! Publishing: appending to the store and applying what was appended (this node's or another's),
//! the gap timer that stops a missing id from holding a channel back, and catching up after a
//! node missed changes.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use pere_proto::event::{Event, NewEvent};
use pere_proto::name::ChannelName;
use tokio::time::Instant;

use crate::error::{StoreError, Unconfirmed};
use crate::notice::HubNotice;
use crate::store::{Appended, EventPage, Store};

use super::channel::ChannelHub;
use super::{Hub, GAP_WAIT};

impl<S: Store> Hub<S> {
    /// Appends an event to the store, then applies it (see [`Hub::apply_published`]): delivers
    /// it to the channel's live subscribers. Returns once the event is stored, with its id and
    /// time. An event whose idempotency key its publisher already holds on the channel (keys are
    /// per publisher) is not stored again: the
    /// stored one is returned with [`Appended::new`] false, and nothing else happens (no
    /// delivery, no ledger change, no notice).
    ///
    /// # Errors
    /// The store's error when the append fails; nothing is delivered then.
    pub async fn publish(
        self: &Arc<Self>,
        channel: &ChannelName,
        event: NewEvent,
    ) -> Result<Appended, StoreError> {
        self.writable()?;
        let hub = self.channel(channel).await?;
        let this = self.clone();
        // Append and release run to completion even if the caller goes away: an event the store
        // accepted but the sequencer never saw would hold back later events for `GAP_WAIT`.
        let mut work = Box::pin(async move {
            let appended = this
                .store
                .append(&hub.name, event)
                .await
                .inspect_err(|err| this.apply_unconfirmed(&hub, err));
            let appended = this.watched(appended)?;
            if appended.new {
                this.apply_published_to(&hub, appended.event.clone());
            }
            Ok(appended)
        });
        // Most appends (the memory store's) finish at the first poll and need no task of their
        // own; the others are handed to one, so they finish even if the caller goes away.
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            return result;
        }
        let task = tokio::spawn(work);
        match task.await {
            Ok(result) => result,
            Err(join) => Err(StoreError::Backend(Box::new(join))),
        }
    }

    /// Publishes several events to one channel, in order, all or none (see
    /// [`Store::append_batch`]): the new events get consecutive ids and are delivered to live
    /// subscribers in that order, each as [`Hub::publish`] would. Returns one [`Appended`] per
    /// event, in the order given; events answered from an existing key are not delivered again.
    ///
    /// # Errors
    /// The store's error when the batch is refused or fails; nothing is stored or delivered then.
    pub async fn publish_batch(
        self: &Arc<Self>,
        channel: &ChannelName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.writable()?;
        let hub = self.channel(channel).await?;
        let this = self.clone();
        // As in `publish`: run to completion even if the caller goes away.
        let mut work = Box::pin(async move {
            let appended = this
                .store
                .append_batch(&hub.name, events)
                .await
                .inspect_err(|err| this.apply_unconfirmed(&hub, err));
            let appended = this.watched(appended)?;
            for event in appended.iter().filter(|a| a.new) {
                this.apply_published_to(&hub, event.event.clone());
            }
            Ok(appended)
        });
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            return result;
        }
        match tokio::spawn(work).await {
            Ok(result) => result,
            Err(join) => Err(StoreError::Backend(Box::new(join))),
        }
    }

    /// Applies an event recorded in the store (by this node's [`Hub::publish`] or by another
    /// node): the ledger follows it, the sequencer releases it to live subscribers in id order,
    /// observers hear of it. Applying an event twice changes nothing the second time.
    ///
    /// # Errors
    /// The store's error when the channel's state cannot be loaded.
    pub async fn apply_published(
        &self,
        channel: &ChannelName,
        event: Arc<Event>,
    ) -> Result<(), StoreError> {
        let hub = self.channel(channel).await?;
        self.apply_published_to(&hub, event);
        Ok(())
    }

    /// Applies what an append that its store's replicas did not confirm recorded all the same
    /// ([`StoreError::Unreplicated`]): other nodes hear of it, and so does this one.
    fn apply_unconfirmed(&self, hub: &Arc<ChannelHub>, err: &StoreError) {
        if let StoreError::Unreplicated {
            recorded: Unconfirmed::Events(events),
            ..
        } = err
        {
            for event in events {
                self.apply_published_to(hub, event.clone());
            }
        }
    }

    pub(super) fn apply_published_to(&self, hub: &Arc<ChannelHub>, event: Arc<Event>) {
        self.high_water.fetch_max(event.id, Ordering::Relaxed);
        hub.last_published.store(self.clock(), Ordering::Relaxed);
        // Followed before it is released, so no receipt can arrive before the ledger knows it;
        // told before it is released, so an observer hears of it before anything a subscriber
        // does with it.
        let tracked = hub.ledger().track(event.id, event.time);
        if let Some(expected) = tracked {
            self.observers.count_published();
            self.observers.send_per_event(|| HubNotice::Published {
                event: event.clone(),
                expected,
            });
        }
        // Released even when followed already: the sequencer ignores what it released before,
        // and a gap fill must not skip an event whose own apply is still on its way.
        if hub.release(event, &self.observers) {
            self.start_gap_timer(hub);
        }
    }

    /// Watches the events waiting behind a missing id of `hub` until none wait: each time they
    /// have waited [`GAP_WAIT`], the gap is read from the store, what is found is applied and
    /// the rest skipped.
    pub(super) fn start_gap_timer(&self, hub: &Arc<ChannelHub>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime, no timer: the gap waits for its event as it did before timers.
            hub.state().gap_timer = false;
            return;
        };
        let (me, hub) = (self.me.clone(), hub.clone());
        runtime.spawn(async move {
            loop {
                let deadline = {
                    let mut state = hub.state();
                    let Some(since) = state.stalled_since else {
                        state.gap_timer = false;
                        return;
                    };
                    since + GAP_WAIT
                };
                if Instant::now() < deadline {
                    tokio::time::sleep_until(deadline).await;
                    continue;
                }
                let Some(this) = me.upgrade() else { return };
                this.fill_gap(&hub).await;
            }
        });
    }

    /// Releases what the store holds between the last released event and the first waiting
    /// one, and skips the ids it does not hold or cannot read.
    pub(super) async fn fill_gap(&self, hub: &Arc<ChannelHub>) {
        let (mut after, first_waiting) = {
            let state = hub.state();
            match state.waiting.keys().next() {
                Some(&first) => (state.last_released, first),
                None => return,
            }
        };
        while after + 1 < first_waiting {
            let limit = self
                .config
                .replay_page
                .min((first_waiting - after - 1) as usize);
            // A store that cannot be read now has nothing to give: the ids are skipped like
            // missing ones, and subscribers that resume read them later.
            let Ok(page) = self.store.read(&hub.name, after, limit).await else {
                break;
            };
            let Some(last) = self.apply_page(hub, page, first_waiting) else {
                break;
            };
            after = last;
        }
        let mut state = hub.state();
        if state.last_released + 1 < first_waiting {
            state.last_released = first_waiting - 1;
        }
        // Asks for no new timer: the one running this is it.
        hub.drain(&mut state, &self.observers);
    }

    /// Applies a page read from the store, in id order, up to `below` (excluded): its events as
    /// published, and its unreadable ids (damaged) passed over by the sequencer, so that what
    /// follows them is not held back. Returns the last id the page accounted for.
    fn apply_page(&self, hub: &Arc<ChannelHub>, page: EventPage, below: u64) -> Option<u64> {
        let mut unreadable = page
            .unreadable
            .into_iter()
            .filter(|&id| id < below)
            .peekable();
        let mut last = None;
        let pass_over = |id: u64| {
            if hub.pass_over(id, &self.observers) {
                self.start_gap_timer(hub);
            }
        };
        for event in page.events.into_iter().filter(|e| e.id < below) {
            while let Some(id) = unreadable.next_if(|&id| id < event.id) {
                pass_over(id);
            }
            last = Some(event.id);
            self.apply_published_to(hub, event);
        }
        for id in unreadable {
            pass_over(id);
            last = last.max(Some(id));
        }
        last
    }

    /// Applies what the store holds beyond what each loaded channel released (and, with shared
    /// presence, the presence changes beyond its history's newest): a node whose feed of changes
    /// recorded elsewhere was cut (a bus reconnecting) catches up with it. Returns how many
    /// events were applied.
    ///
    /// # Errors
    /// The store's error when a channel cannot be read; the channels before it caught up.
    pub async fn catch_up(&self) -> Result<usize, StoreError> {
        let loaded = self.all_loaded();
        let mut applied = 0;
        for hub in loaded {
            applied += self.catch_up_channel(&hub).await?;
        }
        Ok(applied)
    }

    /// As [`Hub::catch_up`], for the channels `names` that are loaded: a node whose feed of
    /// changes recorded elsewhere was cut for these channels only (a Redis Cluster slot that
    /// moved) catches up with them.
    ///
    /// # Errors
    /// The store's error when it cannot be read.
    pub async fn catch_up_channels(&self, names: &[ChannelName]) -> Result<usize, StoreError> {
        let mut applied = 0;
        for name in names {
            if let Some(hub) = self.loaded(name) {
                applied += self.catch_up_channel(&hub).await?;
            }
        }
        Ok(applied)
    }

    async fn catch_up_channel(&self, hub: &Arc<ChannelHub>) -> Result<usize, StoreError> {
        let mut applied = 0;
        let mut after = hub.state().last_released;
        loop {
            let page = self
                .store
                .read(&hub.name, after, self.config.replay_page)
                .await?;
            applied += page.events.len();
            let Some(last) = self.apply_page(hub, page, u64::MAX) else {
                break;
            };
            after = last;
        }
        // Presence changes missed meanwhile, for a channel that keeps a history.
        if let (true, Some(log)) = (self.shares_presence(), hub.presence.get()) {
            let missed = self.store.presence_after(&hub.name, log.seq()).await?;
            for change in missed.into_iter().flatten() {
                if log.record_numbered(change.clone()) {
                    self.observers.send(|| HubNotice::Presence {
                        channel: hub.name.clone(),
                        change,
                    });
                }
            }
        }
        Ok(applied)
    }
}
