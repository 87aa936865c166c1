//! Joins a hub to other nodes through the Redis bus: the changes other nodes record (events,
//! receipts, memberships) on the channels the hub has loaded go into this node's hub through
//! its `apply_*` seam, and the hub's open streams and share of presence go into this node's
//! registration in Redis.
//!
//! The bus hears exactly the loaded channels: the hub tells it of each load and unload (a
//! [`ChannelWatch`]), and a channel is heard before the hub reads it from the store. The bus
//! says when it (re)subscribed, or subscribed again to channels whose cluster slot moved; the
//! hub then catches up from the store ([`Hub::catch_up`], [`Hub::catch_up_channels`]), and a
//! notice lost in between is a gap the hub's sequencer fills from the store.
//!
//! Presence is the cluster's: the heartbeat writes how many streams each device has on this node
//! ([`Hub::presence_updates`]); the store's script decides when a device goes online (its first
//! stream on any node) or offline (its last), numbers the change for the channel and publishes
//! it, and every node, this one included, applies it from the bus ([`Hub::apply_presence`]),
//! so all show the same changes in the same order.
//!
//! The store's identity is checked every [`IDENTITY_CHECK`]: a Redis that came back empty or is
//! another store is adopted ([`Hub::store_changed`]) even by a node that is not writing, so that
//! every live node raises the floor with the ids it handed out.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use pere_proto::name::ChannelName;

use crate::error::StoreError;
use crate::follow::PRESENCE_HISTORY;
use crate::hub::{ChannelWatch, Hub};
use crate::store::redis::{Bus, BusNotice, RedisStore, IDENTITY_CHECK};

/// How soon a registration that Redis refused is tried again: presence written during an
/// outage shows about this long after Redis is back.
const RETRY: Duration = Duration::from_secs(1);

/// Joins `hub`'s node to the cluster, which from now on shares presence through the store
/// ([`Hub::share_presence`]): starts the listener that applies other nodes' changes (and every
/// presence change), and the heartbeat that registers this node's open streams for `ttl` and
/// sweeps expired nodes. Both tasks end when the hub is dropped. Call it before the hub loads
/// any channel. Returns the handle on this node's bus (cluster-wide views and claims).
pub fn join(hub: &Arc<Hub<RedisStore>>, ttl: Duration) -> Bus {
    let bus = Bus::new(hub.store().clone(), ttl, PRESENCE_HISTORY);
    if hub.watch_channels(Arc::new(Watch(bus.clone()))).is_err() {
        tracing::error!(
            "bus: the hub's channels are watched already; joining it once more hears nothing"
        );
    }
    hub.share_presence();
    tokio::spawn(listen(Arc::downgrade(hub), bus.clone()));
    tokio::spawn(heartbeat(Arc::downgrade(hub), bus.clone()));
    tokio::spawn(watch_identity(Arc::downgrade(hub)));
    bus
}

/// The bus hears the channels the hub loads.
#[derive(Debug)]
struct Watch(Bus);

impl ChannelWatch for Watch {
    fn loading(&self, channel: &ChannelName) -> BoxFuture<'static, ()> {
        self.0.follow(channel)
    }

    fn unloaded(&self, channel: &ChannelName) {
        self.0.unfollow(channel);
    }
}

/// Applies what the bus hears until the hub is gone.
async fn listen(hub: Weak<Hub<RedisStore>>, bus: Bus) {
    let mut listener = bus.listen();
    loop {
        let notice = listener.next().await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        match notice {
            // Subscribed first: whatever is recorded from now on is heard; what came before is
            // read.
            BusNotice::Subscribed => {
                if let Err(err) = hub.catch_up().await {
                    listener.resubscribe(err);
                }
            }
            BusNotice::Joined(channels) => {
                if let Err(err) = hub.catch_up_channels(&channels).await {
                    listener.resubscribe(err);
                }
            }
            BusNotice::Lost => {}
            notice => {
                if let Err(err) = apply(&hub, notice).await {
                    // The store failed under the hub (loading a channel): the sequencer fills
                    // the gap once the store answers again.
                    tracing::warn!("bus: applying a notice: {err}");
                }
            }
        }
    }
}

async fn apply(hub: &Hub<RedisStore>, notice: BusNotice) -> Result<(), StoreError> {
    match notice {
        BusNotice::Published(event) => {
            let channel = event.channel.clone();
            hub.store().saw(&channel, event.id);
            hub.apply_published(&channel, event).await
        }
        BusNotice::Receipt(receipt) => {
            hub.apply_receipt(&receipt);
            Ok(())
        }
        BusNotice::Membership(membership) => hub.apply_membership(&membership).await,
        BusNotice::Presence { channel, change } => {
            hub.apply_presence(&channel, change).await.map(|_| ())
        }
        BusNotice::Subscribed | BusNotice::Joined(_) | BusNotice::Lost => Ok(()),
    }
}

/// Registers this node every third of the time to live (sooner when another node's
/// registration expires before that, to sweep it in time) and writes its presence as it
/// changes, until the hub is gone.
async fn heartbeat(hub: Weak<Hub<RedisStore>>, bus: Bus) {
    let Some(wake) = hub.upgrade().map(|hub| hub.presence_wake()) else {
        return;
    };
    let mut me = bus.registration();
    let mut next_beat = tokio::time::Instant::now();
    let mut failing = false;
    loop {
        let Some(strong) = hub.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut outcome = Ok(());
        if now >= next_beat {
            match me.beat(|| strong.connections()).await {
                Ok(wait) => next_beat = now + wait,
                Err(err) => {
                    next_beat = now + RETRY;
                    outcome = Err(err);
                }
            }
        }
        if outcome.is_ok() && me.is_registered() {
            // Taken in any case: a whole write includes them.
            let changed = strong.presence_updates();
            let streams = if me.writes_whole() {
                strong.live_streams()
            } else {
                changed
            };
            outcome = me.write_presence(streams).await;
            if outcome.is_err() {
                next_beat = next_beat.min(now + RETRY);
            }
        }
        drop(strong);
        match outcome {
            // Once per outage, not once per attempt.
            Err(err) if !failing => {
                tracing::warn!("bus: registering this node: {err}; trying again");
                failing = true;
                me.lost();
            }
            Err(_) => me.lost(),
            Ok(()) if failing => {
                tracing::info!("bus: this node is registered again");
                failing = false;
            }
            Ok(()) => {}
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_beat) => {}
            () = wake.notified() => {}
        }
    }
}

/// Checks every [`IDENTITY_CHECK`] that the store is still the one this node knows, and starts
/// adopting it when it is not, until the hub is gone: a node that is not writing notices a
/// Redis that came back empty in time to raise the floor with the ids it handed out.
async fn watch_identity(hub: Weak<Hub<RedisStore>>) {
    let mut every = tokio::time::interval(IDENTITY_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        // Unreachable: the heartbeat says so.
        if let Ok(false) = hub.store().same_store().await {
            hub.store_changed();
        }
    }
}
