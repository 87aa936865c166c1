//! Receipts: recording and applying them (one at a time, in a batch, or every event owed up to
//! an id), waiting for them, following a channel's receipt and presence streams, and the summary
//! of who acknowledged an event.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pere_proto::event::now;
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::ReceiptSummary;
use pere_proto::receipt::{DeviceRecord, Receipt};
use tokio::time::Instant;

use crate::error::{StoreError, Unconfirmed};
use crate::follow::{PresenceFollow, ReceiptFollow};
use crate::ledger::WaitFor;
use crate::notice::HubNotice;
use crate::store::{ReceiptBatch, ReceiptLine, RecordedLine, RecordedReceipt, Store};

use super::Hub;

/// Events read from the store at a time when a cumulative receipt looks for what a device owes
/// beyond the ledger's reach.
const OWED_PAGE: usize = 256;

/// What [`Hub::acknowledge_upto`] did.
#[derive(Debug, Clone, Default)]
pub struct Cumulative {
    /// The receipts recorded, one per event acknowledged, by ascending event id.
    pub receipts: Vec<Receipt>,
    /// Whether the device still owes receipts up to the id given: more were owed than one
    /// request acknowledges, and the oldest were.
    pub more: bool,
}

impl<S: Store> Hub<S> {
    /// Records a return receipt.
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] for an id never published on the channel.
    pub async fn acknowledge(
        &self,
        channel: &ChannelName,
        event_id: u64,
        device: &DeviceId,
        status: String,
    ) -> Result<(Receipt, DeviceRecord), StoreError> {
        let receipt = Receipt {
            seq: 0,
            channel: channel.clone(),
            event_id,
            device: device.clone(),
            status: status.into(),
            time: now(),
        };
        // The store refuses receipts for unknown channels and ids before any hub state is made
        // for them: a stream of bogus receipts costs no memory.
        self.writable()?;
        let recorded = self.watched(self.store.record_receipt(receipt).await);
        let (receipt, record) = self.unless_unconfirmed(recorded)?;
        self.apply_receipt(&receipt);
        Ok((receipt, record))
    }

    /// Records a return receipt under an idempotency key (see [`Store::record_receipt_keyed`]):
    /// a receipt its device retried with the same key (keys are per device) is answered with the
    /// stored one
    /// ([`RecordedReceipt::new`] false), and nothing is recorded, applied or told again.
    ///
    /// # Errors
    /// As [`Hub::acknowledge`]; [`StoreError::InvalidIdempotencyKey`] for a malformed key.
    pub async fn acknowledge_keyed(
        &self,
        channel: &ChannelName,
        event_id: u64,
        device: &DeviceId,
        status: String,
        key: String,
    ) -> Result<RecordedReceipt, StoreError> {
        let receipt = Receipt {
            seq: 0,
            channel: channel.clone(),
            event_id,
            device: device.clone(),
            status: status.into(),
            time: now(),
        };
        self.writable()?;
        let recorded = self.watched(self.store.record_receipt_keyed(receipt, key).await);
        let recorded = self.unless_unconfirmed(recorded)?;
        if recorded.new {
            self.apply_receipt(&recorded.receipt);
        }
        Ok(recorded)
    }

    /// Records several receipts of one device, all or none (see [`Store::record_receipts`]),
    /// and applies the new ones in order, each as [`Hub::acknowledge`] applies one.
    ///
    /// # Errors
    /// As [`Store::record_receipts`]: nothing is recorded then.
    pub async fn acknowledge_batch(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        lines: Vec<ReceiptLine>,
    ) -> Result<Vec<RecordedLine>, StoreError> {
        self.record_batch(ReceiptBatch {
            channel: channel.clone(),
            device: device.clone(),
            time: now(),
            lines,
            unacknowledged_only: false,
        })
        .await
    }

    /// A cumulative receipt: acknowledges with `status` every event with an id up to `upto`
    /// that expects a receipt from `device` (it was a recipient when the event was published)
    /// and that it has not acknowledged yet, at most `limit` of them, the oldest first
    /// ([`Cumulative::more`] says when some are left). Events the device was never expected
    /// to acknowledge are untouched; so are those neither retained by the store nor followed
    /// by the ledger, which nobody can name any more.
    ///
    /// What is owed comes from the ledger for the events it follows, and from the store
    /// ([`Store::unacknowledged`], with the device's memberships) for the others. The ledger
    /// remembers, for a current recipient, up to where it owes nothing, so that the next
    /// cumulative receipt starts there: a device that acknowledges as it goes costs no store
    /// read. The receipts are recorded in one store operation that skips any event acknowledged
    /// meanwhile, so two cumulative receipts that overlap record each event once.
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] for `upto` 0 or above the channel's last id.
    pub async fn acknowledge_upto(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        upto: u64,
        status: String,
        limit: usize,
    ) -> Result<Cumulative, StoreError> {
        self.writable()?;
        // Refused before any hub state is made for the channel, as a single receipt is.
        let head = self.store.head(channel).await?;
        if upto == 0 || upto > head {
            return Err(StoreError::UnknownEvent { id: upto });
        }
        let hub = self.channel(channel).await?;
        let limit = limit.max(1);
        let (after, mut owed, followed) = {
            let ledger = hub.ledger();
            let after = ledger.acked_through(device);
            if after >= upto {
                return Ok(Cumulative::default());
            }
            let (owed, followed) = ledger.owed_between(device, after, upto);
            (after, owed, followed)
        };
        // Ids of the range that the ledger does not follow: from the store.
        if u64::try_from(followed.len()).unwrap_or(u64::MAX) < upto - after {
            let unfollowed = self
                .owed_in_store(channel, device, after, upto, &followed, limit)
                .await?;
            owed.extend(unfollowed);
            owed.sort_unstable();
            owed.dedup();
        }
        let more = owed.len() > limit;
        owed.truncate(limit);
        // Up to here the device owes nothing once these are recorded.
        let settled = if more {
            owed.last().copied()
        } else {
            Some(upto)
        };
        let recorded = if owed.is_empty() {
            Vec::new()
        } else {
            let status: Arc<str> = status.into();
            let lines = owed
                .into_iter()
                .map(|event_id| ReceiptLine {
                    event_id,
                    status: status.clone(),
                    key: None,
                })
                .collect();
            self.record_batch(ReceiptBatch {
                channel: channel.clone(),
                device: device.clone(),
                time: now(),
                lines,
                unacknowledged_only: true,
            })
            .await?
        };
        if let Some(settled) = settled {
            hub.ledger().note_acked_through(device, settled);
        }
        Ok(Cumulative {
            receipts: recorded.into_iter().map(|line| line.receipt).collect(),
            more,
        })
    }

    /// The retained events with ids in `(after, upto]` that `device` owes a receipt and that
    /// are not in `followed` (the ledger's, ascending): at most `limit + 1`, ascending.
    async fn owed_in_store(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        after: u64,
        upto: u64,
        followed: &[u64],
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let mut memberships = self.store.memberships(channel).await?;
        memberships.retain(|m| &m.device == device);
        let Some(joined) = memberships.iter().map(|m| m.joined_after).min() else {
            // Never a recipient: never expected to acknowledge anything.
            return Ok(Vec::new());
        };
        let mut owed = Vec::new();
        let mut from = after.max(joined);
        while from < upto && owed.len() <= limit {
            let page = self
                .store
                .unacknowledged(channel, device, from, OWED_PAGE)
                .await?;
            let Some(last) = page.last().map(|event| event.id) else {
                break;
            };
            owed.extend(
                page.iter()
                    .map(|event| event.id)
                    .take_while(|&id| id <= upto)
                    .filter(|id| followed.binary_search(id).is_err())
                    .filter(|&id| memberships.iter().any(|m| m.expects(id))),
            );
            if page.len() < OWED_PAGE {
                break;
            }
            from = last;
        }
        owed.truncate(limit + 1);
        Ok(owed)
    }

    /// Records a batch of receipts and applies the new ones in order.
    async fn record_batch(&self, batch: ReceiptBatch) -> Result<Vec<RecordedLine>, StoreError> {
        self.writable()?;
        let recorded = self.watched(self.store.record_receipts(batch).await);
        let recorded = self.unless_unconfirmed(recorded)?;
        let new: Vec<&Receipt> = recorded
            .iter()
            .filter(|line| line.new)
            .map(|line| &line.receipt)
            .collect();
        self.apply_receipts(&new);
        Ok(recorded)
    }

    /// Applies a receipt recorded in the store (by this node's [`Hub::acknowledge`] or by
    /// another node): moves the device's live delivery cursor, tells the channel's ledger (which
    /// may complete the event and wake waiting publishers), and tells observers and receipt
    /// followers.
    pub fn apply_receipt(&self, receipt: &Receipt) {
        self.apply_receipts(&[receipt]);
    }

    /// Applies receipts of one device on one channel (a batch's, a cumulative receipt's) in
    /// order, each as [`Hub::apply_receipt`] says, with the device, the channel and the ledger
    /// looked up once for them all.
    fn apply_receipts(&self, receipts: &[&Receipt]) {
        let Some(first) = receipts.first() else {
            return;
        };
        debug_assert!(receipts
            .iter()
            .all(|r| r.channel == first.channel && r.device == first.device));
        if let Some(live) = self.live_device(&first.channel, &first.device) {
            let highest = receipts.iter().map(|r| r.event_id).max().unwrap_or(0);
            live.delivered.fetch_max(highest, Ordering::Relaxed);
        }
        // A channel that is not loaded has nobody following or waiting and no event in its
        // ledger (a loaded ledger starts empty): there is nothing to tell it, and loading it
        // would cost store reads and memory per receipt.
        let Some(hub) = self.loaded(&first.channel) else {
            for receipt in receipts {
                self.observers.send(|| HubNotice::Receipt {
                    receipt: (*receipt).clone(),
                    published: None,
                });
            }
            return;
        };
        let outcomes = hub
            .ledger()
            .acknowledge_all(&first.device, receipts.iter().map(|r| r.event_id));
        let live = hub.receipts.get();
        for (receipt, (completed, published)) in receipts.iter().zip(outcomes) {
            self.observers.send(|| HubNotice::Receipt {
                receipt: (*receipt).clone(),
                published,
            });
            if let Some(done) = completed {
                self.observers
                    .send(|| HubNotice::completed(&hub.name, done));
            }
            if let Some(live) = live {
                live.announce(receipt, completed);
            }
        }
    }

    /// `recorded`, after applying the receipts that the store's replicas did not confirm but
    /// its primary recorded all the same ([`StoreError::Unreplicated`]): other nodes hear of
    /// them, and so does this one.
    fn unless_unconfirmed<T>(&self, recorded: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Unreplicated { recorded: what, .. }) = &recorded {
            match what {
                Unconfirmed::Receipt(receipt) => self.apply_receipt(receipt),
                Unconfirmed::Receipts(receipts) => {
                    self.apply_receipts(&receipts.iter().collect::<Vec<_>>());
                }
                Unconfirmed::Events(_) | Unconfirmed::Nothing => {}
            }
        }
        recorded
    }

    /// Waits until event `event_id` satisfies `wait` or `timeout` passes; returns whether it was
    /// satisfied. Events no longer followed live (see [`crate::ledger::TRACKED_EVENTS`]) are
    /// judged once, from the store.
    ///
    /// # Errors
    /// The store's error when it cannot be read.
    pub async fn wait_for_receipts(
        &self,
        channel: &ChannelName,
        event_id: u64,
        wait: WaitFor,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let hub = self.channel(channel).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let changed = {
                let mut ledger = hub.ledger();
                let Some(open) = ledger.open.get_mut(&event_id) else {
                    break;
                };
                if open.satisfies(wait) {
                    return Ok(true);
                }
                open.changed()
            };
            let notified = changed.notified();
            // Checked again with the notification armed, so a receipt in between is not missed.
            if hub
                .ledger()
                .open
                .get(&event_id)
                .is_none_or(|open| open.satisfies(wait))
            {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(false);
            }
        }
        let summary = self.receipt_summary(channel, event_id).await?;
        Ok(match wait {
            WaitFor::All => summary.complete(),
            WaitFor::AtLeast(n) => summary.acknowledged.len() >= n,
        })
    }

    /// Follows a channel's receipts: those recorded after `after` (a receipt `seq`) from the
    /// store, then live ones; with no position, live ones from now on. See [`ReceiptFollow`].
    ///
    /// # Errors
    /// The store's error when the channel cannot be opened.
    pub async fn follow_receipts(
        &self,
        channel: &ChannelName,
        after: Option<u64>,
    ) -> Result<ReceiptFollow<S>, StoreError> {
        let hub = self.channel(channel).await?;
        let follow = ReceiptFollow::new(
            self.store.clone(),
            self.receipt_replays.clone(),
            channel.clone(),
            hub.receipt_live().clone(),
            after,
        );
        // Read once listening: every receipt beyond this head is heard of live.
        let head = self.store.receipt_head(channel).await?;
        Ok(follow.starting_after(head))
    }

    /// The presence changes kept for `channel` after `after`, and live changes from then on.
    ///
    /// # Errors
    /// The store's error when the channel cannot be opened.
    pub async fn follow_presence(
        &self,
        channel: &ChannelName,
        after: u64,
    ) -> Result<PresenceFollow, StoreError> {
        let hub = self.channel(channel).await?;
        Ok(PresenceFollow::new(
            self.presence_log_of(&hub).await?,
            after,
        ))
    }

    /// Who acknowledged, got, or has not yet got one event.
    ///
    /// # Errors
    /// [`StoreError::UnknownEvent`] for an id never published on the channel.
    pub async fn receipt_summary(
        &self,
        channel: &ChannelName,
        event_id: u64,
    ) -> Result<ReceiptSummary, StoreError> {
        let head = self.store.head(channel).await?;
        if event_id == 0 || event_id > head {
            return Err(StoreError::UnknownEvent { id: event_id });
        }
        let mut latest: BTreeMap<DeviceId, Receipt> = BTreeMap::new();
        for receipt in self.store.receipts(channel, event_id).await? {
            latest.insert(receipt.device.clone(), receipt);
        }
        // The devices the event expects: from the ledger while it follows the event, else
        // from the memberships in the store; then only their records, in one read.
        let followed = self
            .loaded(channel)
            .and_then(|hub| hub.ledger().expected_of(event_id));
        let expected: Vec<DeviceId> = match followed {
            Some(expected) => expected,
            None => {
                let mut expected: Vec<DeviceId> = self
                    .store
                    .memberships(channel)
                    .await?
                    .into_iter()
                    .filter(|m| m.expects(event_id))
                    .map(|m| m.device)
                    .collect();
                expected.sort();
                expected.dedup();
                expected
            }
        };
        let owing: Vec<DeviceId> = expected
            .iter()
            .filter(|d| !latest.contains_key(*d))
            .cloned()
            .collect();
        let seen: HashMap<DeviceId, (u64, DateTime<Utc>)> = self
            .store
            .devices_named(channel, &owing)
            .await?
            .into_iter()
            .map(|record| self.with_presence(record))
            .map(|v| {
                (
                    v.record.device,
                    (v.record.last_delivered, v.record.last_seen),
                )
            })
            .collect();
        let mut summary = ReceiptSummary {
            channel: channel.clone(),
            event_id,
            acknowledged: Vec::new(),
            delivered: Vec::new(),
            pending: Vec::new(),
            expected: expected.len(),
            last_seen: BTreeMap::new(),
        };
        for device in owing {
            let record = seen.get(&device);
            if let Some(&(_, at)) = record {
                summary.last_seen.insert(device.clone(), at);
            }
            if record.is_some_and(|&(delivered, _)| delivered >= event_id) {
                summary.delivered.push(device);
            } else {
                summary.pending.push(device);
            }
        }
        summary.acknowledged = latest.into_values().collect();
        Ok(summary)
    }
}
