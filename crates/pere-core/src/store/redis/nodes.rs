//! The nodes sharing one Redis: this node's id, its registrations in `PREFIX:nodes` (the
//! `NODE_BEAT` script), and each node's share of a channel's presence with the cluster-wide
//! totals it changes (the `PRESENCE` script). The bus's heartbeat and sweeps call these; the
//! store reads the other nodes' shares for its device views.

use pere_proto::name::{ChannelName, DeviceId};
use redis::{Script, ToRedisArgs as _};

use super::connection::{query, Conn};
use super::keys::Keys;
use super::lua;
use super::script::eval;
use crate::error::StoreError;

/// This node among the others: its id, and the scripts that register it and write its share
/// of presence.
pub(super) struct Nodes {
    conn: Conn,
    keys: Keys,
    // Tells this node's notices from the others' on the bus, and names its registrations.
    node: String,
    presence: Script,
    node_beat: Script,
    node_conns: Script,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes").field("node", &self.node).finish()
    }
}

impl Nodes {
    /// This node, with an id of its own (random per process), on `conn`.
    pub(super) fn new(conn: Conn, keys: Keys) -> Self {
        Nodes {
            conn,
            keys,
            node: format!("{:016x}", rand::random::<u64>()),
            presence: Script::new(lua::PRESENCE),
            node_beat: Script::new(lua::NODE_BEAT),
            node_conns: Script::new(lua::NODE_CONNS),
        }
    }

    /// This node's id on the bus.
    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// Sets `node`'s count of open streams of each listed device of `channel` (0: none), and
    /// with `replace`, of every other device of the channel to 0 (so a node writes its whole
    /// share again, or, with nothing listed, a sweep clears a dead node's). Each device whose
    /// count over all nodes goes from 0 to more, or back to 0, is one presence change for the
    /// cluster, numbered, kept (the newest `history`) and published on the bus. Returns how
    /// many devices of the channel `node` still holds streams for.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub(super) async fn set_presence(
        &self,
        node: &str,
        channel: &ChannelName,
        streams: &[(DeviceId, usize)],
        replace: bool,
        history: usize,
    ) -> Result<usize, StoreError> {
        let keys = [
            self.keys.node_presence(node, channel),
            self.keys.key(channel, "pres"),
            self.keys.key(channel, "pseq"),
            self.keys.key(channel, "plog"),
            self.keys.slot(channel),
        ];
        let mut args = Vec::with_capacity(5 + 2 * streams.len());
        args.extend(self.node.to_redis_args());
        args.extend(channel.as_str().to_redis_args());
        args.extend(self.keys.bus(channel).to_redis_args());
        args.extend((if replace { "1" } else { "0" }).to_redis_args());
        args.extend(history.max(1).to_redis_args());
        for (device, count) in streams {
            args.extend(device.as_str().to_redis_args());
            args.extend(count.to_redis_args());
        }
        let left = eval(&self.conn, &self.presence, &keys, &args).await?;
        redis::from_redis_value(left).map_err(|e| StoreError::backend(redis::RedisError::from(e)))
    }

    /// Replaces this node's registered count of open streams per channel (`conns`) under
    /// its name `member`, or with `conns` `None` keeps what is there, and makes it live for
    /// `ttl_ms` more.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub(super) async fn set_conns(
        &self,
        member: &str,
        conns: Option<&[(String, usize)]>,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let mut args = Vec::new();
        args.extend(ttl_ms.to_redis_args());
        args.extend((if conns.is_some() { "1" } else { "0" }).to_redis_args());
        for (channel, n) in conns.unwrap_or_default() {
            args.extend(channel.to_redis_args());
            args.extend(n.to_redis_args());
        }
        let keys = [self.keys.node(member, "conns")];
        eval(&self.conn, &self.node_conns, &keys, &args).await?;
        Ok(())
    }

    /// `node`'s count of open streams per device of `channel`, as it last wrote them.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub(super) async fn node_presence(
        &self,
        node: &str,
        channel: &ChannelName,
    ) -> Result<Vec<(DeviceId, usize)>, StoreError> {
        let counts: Vec<(String, usize)> = query(
            &self.conn,
            redis::cmd("HGETALL").arg(self.keys.node_presence(node, channel)),
        )
        .await?;
        Ok(counts
            .into_iter()
            .filter_map(|(device, n)| Some((DeviceId::new(&device).ok()?, n)))
            .collect())
    }

    /// Registers `node` as alive until `expiry_ms` (Unix milliseconds) in the set of nodes,
    /// unless it is `known` (registered before) and its registration lapsed before `now_ms`:
    /// true then, and nothing registered (see the `NODE_BEAT` script).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub(super) async fn beat(
        &self,
        node: &str,
        now_ms: u64,
        expiry_ms: u64,
        known: bool,
    ) -> Result<bool, StoreError> {
        let mut args = Vec::new();
        args.extend(node.to_redis_args());
        args.extend(now_ms.to_redis_args());
        args.extend(expiry_ms.to_redis_args());
        args.extend((if known { "1" } else { "0" }).to_redis_args());
        let lapsed = eval(&self.conn, &self.node_beat, &[self.keys.nodes()], &args).await?;
        Ok(lapsed == redis::Value::Int(1))
    }

    /// The name this node registers under after its registration lapsed `lapses` times:
    /// `NODE.lapses`.
    pub(super) fn member(&self, lapses: u64) -> String {
        format!("{}.{lapses}", self.node)
    }

    /// Whether `member` is one of the names this node registered under.
    pub(super) fn is_mine(&self, member: &str) -> bool {
        member
            .strip_prefix(self.node.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The names of the live registrations of the other nodes (the clocks of the nodes
    /// decide what is alive).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub(super) async fn other_members(&self) -> Result<Vec<String>, StoreError> {
        let members: Vec<String> = query(
            &self.conn,
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.nodes())
                .arg(unix_millis())
                .arg("+inf"),
        )
        .await?;
        Ok(members.into_iter().filter(|m| !self.is_mine(m)).collect())
    }
}

/// Now, in Unix milliseconds: the unit of the registrations' expiry in `PREFIX:nodes`.
pub(super) fn unix_millis() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
