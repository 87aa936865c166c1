//! Following a channel's receipt stream ([`ReceiptFollow`]): replay from the store after a
//! position, then live, every receipt once and in `seq` order, with completion notices between.
//!
//! Live notices can overtake each other (two receipts recorded in one commit wake their
//! handlers in any order), so a notice only wakes the follower, which then reads the store from
//! the last `seq` it gave out: the store shows receipts in `seq` order, so a follower gets every
//! receipt once, in order, and resuming from its last `seq` misses nothing. Completions are live
//! only: they have no position and are not replayed.

use std::collections::VecDeque;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::error::StoreError;
use crate::ledger::Completion;
use crate::name::ChannelName;
use crate::receipt::Receipt;
use crate::store::Store;

/// Receipts read from the store per step, in replay and when a live notice wakes the follower:
/// one page is what a follower holds in memory at once.
pub const RECEIPT_PAGE: usize = 256;

/// A receipt as the hub announces it to followers, with the completion it caused, if any.
#[derive(Debug, Clone)]
pub struct ReceiptNotice {
    /// The receipt (with its stream position, `seq`).
    pub receipt: Receipt,
    /// Set when this receipt made its event fully acknowledged.
    pub completed: Option<Completion>,
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
        ReceiptItem::Completed { channel: channel.clone(), event_id: done.event_id, expected: done.expected }
    }
}

/// A follower of one channel's receipts, made by
/// [`Hub::follow_receipts`](crate::hub::Hub::follow_receipts).
#[derive(Debug)]
pub struct ReceiptFollow<S> {
    store: S,
    channel: ChannelName,
    live: broadcast::Receiver<ReceiptNotice>,
    /// While replaying: the `seq` to read after next.
    replay: Option<u64>,
    /// The `seq` of the last receipt given out (or skipped as already known).
    through: u64,
    /// Read from the store, not given out yet.
    ready: VecDeque<ReceiptItem>,
    ended: bool,
    lagged: bool,
}

impl<S: Store> ReceiptFollow<S> {
    /// A follower that heard `live` from before the store's receipt head was `head`: it replays
    /// from the store after `after`, when given, and goes live after `head` otherwise.
    pub(crate) fn new(
        store: S,
        channel: ChannelName,
        live: broadcast::Receiver<ReceiptNotice>,
        head: u64,
        after: Option<u64>,
    ) -> Self {
        ReceiptFollow {
            store,
            channel,
            live,
            replay: after,
            through: after.unwrap_or(head),
            ready: VecDeque::new(),
            ended: false,
            lagged: false,
        }
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
                match self.store.receipts_after(&self.channel, after, RECEIPT_PAGE).await {
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
            match self.live.recv().await {
                // Given out already, read from the store ahead of its notice: only a completion
                // is news.
                Ok(notice) if notice.receipt.seq <= self.through => {
                    if let Some(done) = notice.completed {
                        return Some(Ok(ReceiptItem::completed(&self.channel, done)));
                    }
                }
                Ok(notice) => {
                    if let Err(err) = self.read_up_to(&notice).await {
                        return Some(Err(self.fail(err)));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    self.lagged = true;
                    self.ended = true;
                }
                Err(RecvError::Closed) => self.ended = true,
            }
        }
    }

    /// Reads every receipt after the last one given out up to the one `notice` announces (and
    /// any recorded since, on the same page), with the notice's completion after its receipt.
    async fn read_up_to(&mut self, notice: &ReceiptNotice) -> Result<(), StoreError> {
        let target = notice.receipt.seq;
        while self.through < target {
            let page = self.store.receipts_after(&self.channel, self.through, RECEIPT_PAGE).await?;
            if page.is_empty() {
                break;
            }
            for receipt in page {
                self.through = receipt.seq;
                let completed = if receipt.seq == target { notice.completed } else { None };
                self.ready.push_back(ReceiptItem::Receipt(receipt));
                if let Some(done) = completed {
                    self.ready.push_back(ReceiptItem::completed(&self.channel, done));
                }
            }
        }
        if self.through < target {
            // Pruned already (a late receipt for an event retention removed): give it as announced.
            self.ready.push_back(ReceiptItem::Receipt(notice.receipt.clone()));
            if let Some(done) = notice.completed {
                self.ready.push_back(ReceiptItem::completed(&self.channel, done));
            }
            self.through = target;
        }
        Ok(())
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
