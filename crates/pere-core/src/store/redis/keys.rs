//! The names of the Redis store's keys and of its bus channels, all built from the prefix here
//! (the table of keys, their types and lifetimes is in the docs of [`super`]).
//!
//! A channel's keys and its bus channel share the hash tag `{PREFIX:ch:NAME}`, and a node's keys
//! `{PREFIX:node:N}`, so each is one slot of a Redis Cluster and a script on them stays atomic
//! there.

use pere_proto::name::ChannelName;

/// The key names under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: String) -> Self {
        Keys { prefix }
    }

    /// What every key and bus channel start with.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{PREFIX:ch:NAME}`: the hash tag and start of every key of the channel. The scripts build
    /// the per-event keys (`:rc:ID`, `:ra:ID`) from it.
    pub(super) fn base(&self, channel: &ChannelName) -> String {
        format!("{{{}:ch:{}}}", self.prefix, channel.as_str())
    }

    /// `{PREFIX:ch:NAME}:what`: one key of the channel.
    pub(super) fn key(&self, channel: &ChannelName, what: &str) -> String {
        format!("{}:{what}", self.base(channel))
    }

    /// `{PREFIX:ch:NAME}:slot`, never written: every script of the channel declares it last, so
    /// that Redis runs none while the channel's slot moves between cluster nodes (see
    /// [`super::lua`]).
    pub(super) fn slot(&self, channel: &ChannelName) -> String {
        self.key(channel, "slot")
    }

    /// The keys the membership scripts take, in their order: the channel's sequence, its
    /// memberships and its current memberships.
    pub(super) fn membership(&self, channel: &ChannelName) -> [String; 3] {
        ["seq", "mem", "memcur"].map(|what| self.key(channel, what))
    }

    /// `{PREFIX:ch:NAME}:pres:NODE`: `node`'s count of open streams per device of the channel.
    pub(super) fn node_presence(&self, node: &str, channel: &ChannelName) -> String {
        self.key(channel, &format!("pres:{node}"))
    }

    /// `{PREFIX:ch:NAME}:bus`: the shard channel the channel's scripts publish their notices on
    /// (`SPUBLISH`), in the channel's slot.
    pub(super) fn bus(&self, channel: &ChannelName) -> String {
        self.key(channel, "bus")
    }

    /// The channel whose bus is `bus` (see [`Keys::bus`]), if it is one of this prefix's.
    pub(super) fn channel_of_bus(&self, bus: &str) -> Option<ChannelName> {
        let name = bus
            .strip_prefix('{')?
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":ch:")?
            .strip_suffix("}:bus")?;
        ChannelName::new(name).ok()
    }

    /// `PREFIX:channels`: the set of channel names.
    pub(super) fn channels(&self) -> String {
        format!("{}:channels", self.prefix)
    }

    /// `PREFIX:nodes`: the nodes, each scored with the time its registration expires.
    pub(super) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// `{PREFIX:node:MEMBER}:what`: a key of one registration (`member`: a node's name in the
    /// set of nodes).
    pub(super) fn node(&self, member: &str, what: &str) -> String {
        format!("{{{}:node:{member}}}:{what}", self.prefix)
    }

    /// `PREFIX:store`: the store's identity (`id`), its `floor` and `since` when it was made
    /// again after a change (see [`super::lua::ADOPT`]).
    pub(super) fn store(&self) -> String {
        format!("{}:store", self.prefix)
    }

    /// `PREFIX:probe`: what the readiness probe writes and reads back.
    pub(super) fn probe(&self) -> String {
        format!("{}:probe", self.prefix)
    }

    /// `PREFIX:confirmed`: what a write whose replicas must confirm it writes last, before
    /// `WAIT` (one server or Sentinel's primary only). `WAIT` counts the replicas that have the
    /// connection's last write; a push answered from its idempotency key, or a receipt from
    /// its, writes nothing itself, and this write, after the original in the replication
    /// stream, makes the `WAIT` cover that original too.
    pub(super) fn confirmed(&self) -> String {
        format!("{}:confirmed", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bus_names_its_channel() {
        let keys = Keys::new("p".into());
        let c = ChannelName::new("Orders.eu").unwrap();
        assert_eq!(keys.bus(&c), "{p:ch:Orders.eu}:bus");
        assert_eq!(keys.channel_of_bus(&keys.bus(&c)), Some(c));
        assert_eq!(keys.channel_of_bus("{q:ch:Orders.eu}:bus"), None);
        assert_eq!(keys.channel_of_bus("{p:ch:Orders.eu}:ev"), None);
    }
}
