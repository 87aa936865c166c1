//! The names of the Redis store's keys and of its bus channel, all built from the prefix here
//! (the table of keys, their types and lifetimes is in the docs of [`super`]).
//!
//! A channel's keys share the hash tag `{PREFIX:ch:NAME}` and a node's keys `{PREFIX:node:N}`,
//! so each is one slot of a Redis Cluster and a script on them stays atomic there.

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

    /// What every key and the bus channel start with.
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

    /// The keys the membership scripts take, in their order: the channel's sequence, its
    /// memberships and its current memberships.
    pub(super) fn membership(&self, channel: &ChannelName) -> [String; 3] {
        ["seq", "mem", "memcur"].map(|what| self.key(channel, what))
    }

    /// `{PREFIX:ch:NAME}:pres:NODE`: `node`'s count of open streams per device of the channel.
    pub(super) fn node_presence(&self, node: &str, channel: &ChannelName) -> String {
        self.key(channel, &format!("pres:{node}"))
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

    /// `PREFIX:bus`: the Pub/Sub channel the scripts publish notices on.
    pub(super) fn bus(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    /// `PREFIX:probe`: what the readiness probe writes and reads back.
    pub(super) fn probe(&self) -> String {
        format!("{}:probe", self.prefix)
    }
}
