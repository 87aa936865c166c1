//! Receipts: recording and applying them, waiting for them, following a channel's receipt and
//! presence streams, and the summary of who acknowledged an event.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pere_proto::event::now;
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{Completion, ReceiptSummary};
use pere_proto::receipt::{DeviceRecord, Receipt};
use tokio::time::Instant;

use crate::error::{StoreError, Unconfirmed};
use crate::follow::{PresenceFollow, ReceiptFollow};
use crate::ledger::WaitFor;
use crate::notice::HubNotice;
use crate::store::{RecordedReceipt, Store};

use super::Hub;

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
            status,
            time: now(),
        };
        // The store refuses receipts for unknown channels and ids before any hub state is made
        // for them: a stream of bogus receipts costs no memory.
        self.writable()?;
        let recorded = self.watched(self.store.record_receipt(receipt).await);
        let (receipt, record) = self.unless_unconfirmed(recorded).await?;
        self.apply_receipt(&receipt).await?;
        Ok((receipt, record))
    }

    /// Records a return receipt under an idempotency key (see [`Store::record_receipt_keyed`]):
    /// a receipt retried with the same key is answered with the stored one
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
            status,
            time: now(),
        };
        self.writable()?;
        let recorded = self.watched(self.store.record_receipt_keyed(receipt, key).await);
        let recorded = self.unless_unconfirmed(recorded).await?;
        if recorded.new {
            self.apply_receipt(&recorded.receipt).await?;
        }
        Ok(recorded)
    }

    /// `recorded`, after applying the receipt that the store's replicas did not confirm but its
    /// primary recorded all the same ([`StoreError::Unreplicated`]): other nodes hear of it,
    /// and so does this one.
    async fn unless_unconfirmed<T>(
        &self,
        recorded: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(StoreError::Unreplicated {
            recorded: Unconfirmed::Receipt(receipt),
            ..
        }) = &recorded
        {
            self.apply_receipt(receipt).await?;
        }
        recorded
    }

    /// Applies a receipt recorded in the store (by this node's [`Hub::acknowledge`] or by
    /// another node): moves the device's live delivery cursor, tells the channel's ledger (which
    /// may complete the event and wake waiting publishers), and tells observers and receipt
    /// followers. Returns the completion it caused, if any.
    ///
    /// # Errors
    /// The store's error when the channel's state cannot be loaded.
    pub async fn apply_receipt(&self, receipt: &Receipt) -> Result<Option<Completion>, StoreError> {
        if let Some(live) = self.live_device(&receipt.channel, &receipt.device) {
            live.delivered
                .fetch_max(receipt.event_id, Ordering::Relaxed);
        }
        // A channel that is not loaded has nobody following or waiting and no event in its
        // ledger (a loaded ledger starts empty): there is nothing to tell it, and loading it
        // would cost store reads and memory per receipt.
        let Some(hub) = self.loaded(&receipt.channel) else {
            self.observers.send(|| HubNotice::Receipt {
                receipt: receipt.clone(),
                published: None,
            });
            return Ok(None);
        };
        let (completed, published) = {
            let mut ledger = hub.ledger();
            let completed = ledger.acknowledge(receipt.event_id, &receipt.device);
            (completed, ledger.published_at(receipt.event_id))
        };
        self.observers.send(|| HubNotice::Receipt {
            receipt: receipt.clone(),
            published,
        });
        if let Some(done) = completed {
            self.observers
                .send(|| HubNotice::completed(&hub.name, done));
        }
        if let Some(live) = hub.receipts.get() {
            live.announce(receipt, completed);
        }
        Ok(completed)
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
