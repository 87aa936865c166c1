//! A store that changed under the node (a Redis that came back empty or is another one, a
//! database file put back from a backup): the node adopts it above every id it handed out, so
//! none is handed out again, and every open feed of a loaded channel hears `pere-reset` before
//! anything newer.
//!
//! The store says it changed by answering a write [`StoreError::Changed`]; a node that shares
//! the store with others may also hear it from its heartbeat ([`Hub::store_changed`]). Once, the
//! hub then: refuses writes (they answer `Changed` too, so a publisher retries); adopts the
//! store with its high water, the greatest id it applied ([`Store::adopt`], which on Redis waits
//! until every live node could raise the floor); raises each loaded channel to the floor in the
//! store ([`Store::reseed`]) and writes back its current recipients, which the ledger knows;
//! resets each loaded channel's sequencer, which tells its subscribers; and writes again.
//!
//! What the lost store held and no node remembers is gone: events under the floor (a feed
//! resuming inside them hears `pere-reset`), their receipts, device records (made again at a
//! device's next visit), recipients of channels no node had loaded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pere_proto::event::now;

use crate::error::StoreError;
use crate::store::Store;

use super::channel::ChannelHub;
use super::Hub;

/// How soon adopting the store is tried again when the store says the nodes sharing it may
/// still raise the floor, or cannot be written.
const ADOPT_RETRY: Duration = Duration::from_millis(250);

impl<S: Store> Hub<S> {
    /// Whether the store changed under this node and the node has not yet adopted it: writes
    /// are refused meanwhile, and a readiness probe should say the node is not ready.
    pub fn adopting_store(&self) -> bool {
        self.adopting.load(Ordering::SeqCst)
    }

    /// The greatest event id this node applied since it started: ids it may have handed out.
    pub fn high_water(&self) -> u64 {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Starts adopting the store, which changed under this node (see the module docs); once,
    /// however many times it is called meanwhile.
    pub fn store_changed(&self) {
        if self.adopting.swap(true, Ordering::SeqCst) {
            return;
        }
        let (Some(this), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current())
        else {
            self.adopting.store(false, Ordering::SeqCst);
            return;
        };
        runtime.spawn(async move { this.adopt_store().await });
    }

    /// Passes a store answer through, starting to adopt the store when it says it changed.
    pub(super) fn watched<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Changed { .. }) = &result {
            self.store_changed();
        }
        result
    }

    /// Refuses a write while the node adopts a changed store: it is not yet known above which
    /// id the store's channels continue.
    pub(super) fn writable(&self) -> Result<(), StoreError> {
        if self.adopting_store() {
            return Err(StoreError::Changed {
                detail: "the node is adopting a store that changed under it".to_owned(),
            });
        }
        Ok(())
    }

    async fn adopt_store(self: Arc<Self>) {
        let loaded = self.all_loaded();
        for hub in &loaded {
            hub.hold();
            self.high_water
                .fetch_max(hub.state().last_released, Ordering::Relaxed);
        }
        // Taken once: what arrives meanwhile was numbered by the store adopted, above its floor.
        let high_water = self.high_water();
        let floor = loop {
            match self.store.adopt(high_water).await {
                Ok(floor) => break floor,
                Err(StoreError::Changed { .. }) => {}
                Err(err) => tracing::warn!("store: adopting the changed store: {err}"),
            }
            tokio::time::sleep(ADOPT_RETRY).await;
        };
        for hub in &loaded {
            self.recover_channel(hub, floor).await;
        }
        self.adopting.store(false, Ordering::SeqCst);
        tracing::warn!(
            "store: adopted the store that changed under this node; ids continue above {floor}, and the {} loaded channels' feeds were told to forget the ids they saw",
            loaded.len()
        );
    }

    /// Raises one loaded channel to `floor` in the store, writes back its recipients, and
    /// resets it here, which tells its subscribers.
    async fn recover_channel(&self, hub: &Arc<ChannelHub>, floor: u64) {
        while let Err(err) = self.store.reseed(&hub.name, floor).await {
            tracing::warn!("store: raising {} to {floor}: {err}", hub.name);
            tokio::time::sleep(ADOPT_RETRY).await;
        }
        let recipients: Vec<_> = hub.ledger().recipients().map(|m| m.device).collect();
        for device in recipients {
            match self.store.add_recipient(&hub.name, &device, now()).await {
                Ok(membership) => self.apply_membership_to(hub, &membership),
                // Made again at the device's next feed or receipt.
                Err(err) => tracing::warn!("store: {device} as a recipient of {}: {err}", hub.name),
            }
        }
        if hub.reset(floor, &self.observers) {
            self.start_gap_timer(hub);
        }
    }
}
