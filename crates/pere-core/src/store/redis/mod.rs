//! The Redis store: history, receipts, device records and memberships in a Redis server that
//! several PERE nodes share, so every node gives out the same ids and sees the same ledger.
//!
//! Each channel's keys share one hash tag (`{PREFIX:ch:NAME}`), so a channel lives in one slot
//! of a Redis Cluster and its scripts stay atomic there. Events are a Redis Stream whose entry
//! ids are the event ids (`ID-0`); the channel's id sequence is a counter beside it. Every
//! change other nodes must hear of (an event, a receipt, a membership) is published as a notice
//! on the prefix's bus channel by the same script that records it (see [`crate::bus`]). So is
//! presence: each node's count of streams per device of a channel, the totals over all nodes,
//! and the channel's presence changes, numbered once for the cluster.
//! ARCHITECTURE.md lists the keys, their types and lifetimes.
//!
//! A `rediss://` URL connects over TLS (rustls), trusting the system's CAs or those of
//! [`RedisTls::ca`], and presenting [`RedisTls::client`] to a server that asks for a client
//! certificate. The store's client makes every connection, the bus's Pub/Sub included, so both
//! go the same way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use pere_proto::event::{valid_idempotency_key, Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId, EventType};
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::{DeviceOp, DeviceRecord, DeviceTouch, Membership, Receipt};
use redis::aio::ConnectionManager;
use redis::{ConnectionAddr, IntoConnectionInfo as _, Script, Value};
use serde::Deserialize;

use crate::error::StoreError;
use crate::store::{check_keys, Appended, EventPage, RecordedReceipt, Retention, Store};

mod lua;

/// How long one connection attempt may take: an unreachable Redis fails a push at once (503)
/// instead of holding it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take before it counts as failed. AOF with `appendfsync always`
/// adds a disk sync per write; a healthy server answers well within this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between reconnection attempts: reconnecting never busy-loops, and a Redis that
/// comes back is found within this.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[:password@]host:port/db`, or `rediss://` for Redis over TLS.
    pub url: String,
    /// What every key and the bus channel start with, so several deployments can share a Redis.
    pub prefix: String,
    /// How much history each channel keeps.
    pub retention: Retention,
    /// What a `rediss://` connection trusts and presents; empty for `redis://`.
    pub tls: RedisTls,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold the password.
        f.debug_struct("RedisOptions")
            .field("url", &redacted(&self.url))
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("tls", &self.tls)
            .finish()
    }
}

/// What a `rediss://` connection trusts and presents, as PEM. The default trusts the system's
/// CAs and presents no certificate.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// The certificates of the CAs that sign the Redis server's certificate, trusted instead of
    /// the system's (a private CA).
    pub ca: Option<Vec<u8>>,
    /// The certificate this client presents to a Redis that asks for one.
    pub client: Option<RedisClientCert>,
}

impl RedisTls {
    /// Whether anything is set beyond the defaults.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

/// A client certificate for Redis over TLS, as PEM.
#[derive(Clone)]
pub struct RedisClientCert {
    /// The certificate chain, the client's own certificate first.
    pub chain: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for RedisClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("RedisClientCert").finish_non_exhaustive()
    }
}

/// A Redis URL with its password replaced by `***`, for logs and messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The Redis [`Store`]. Handles are cheap to clone and share one multiplexed, reconnecting
/// connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    retention: Retention,
    // Names this node knows are in the channel set, so a busy channel adds itself once.
    known: Mutex<HashSet<ChannelName>>,
    // Tells this node's notices from the others' on the bus.
    node: String,
    scripts: Scripts,
}

struct Scripts {
    append: Script,
    receipt: Script,
    touch: Script,
    add_recipient: Script,
    remove_recipient: Script,
    unacknowledged: Script,
    devices_page: Script,
    presence: Script,
    node_beat: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("node", &self.inner.node)
            .finish()
    }
}

impl RedisStore {
    /// A store on the Redis at `options.url`. It connects lazily and reconnects by itself with
    /// backoff: a Redis that is down now makes requests fail (and readiness say so) until it
    /// is back.
    ///
    /// # Errors
    /// [`StoreError::Incompatible`] for a URL that cannot be used, TLS settings with a URL that
    /// is not `rediss://`, or certificates that cannot be read.
    pub fn open(options: RedisOptions) -> Result<Self, StoreError> {
        let client = client(&options.url, &options.tls)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(MAX_RECONNECT_DELAY)
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StoreError::Incompatible(format!("{}: {e}", redacted(&options.url))))?;
        let node = format!("{:016x}", rand::random::<u64>());
        let scripts = Scripts {
            append: Script::new(lua::APPEND),
            receipt: Script::new(&lua::with_helpers(lua::RECEIPT)),
            touch: Script::new(&lua::with_helpers(lua::TOUCH)),
            add_recipient: Script::new(lua::ADD_RECIPIENT),
            remove_recipient: Script::new(lua::REMOVE_RECIPIENT),
            unacknowledged: Script::new(&lua::with_helpers(lua::UNACKNOWLEDGED)),
            devices_page: Script::new(lua::DEVICES_PAGE),
            presence: Script::new(lua::PRESENCE),
            node_beat: Script::new(lua::NODE_BEAT),
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                conn,
                prefix: options.prefix,
                retention: options.retention,
                known: Mutex::default(),
                node,
                scripts,
            }),
        })
    }

    /// This node's id on the bus (random per process).
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The Pub/Sub channel the scripts publish notices on.
    pub fn bus_channel(&self) -> String {
        format!("{}:bus", self.inner.prefix)
    }

    /// The client, for connections of their own (the bus's Pub/Sub).
    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// A handle on the shared connection.
    pub fn connection(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Claims `what` of one event for this node, once cluster-wide: true for the first node to
    /// ask within `ttl`. The webhook asks before it posts, so an event is reported once however
    /// many nodes followed it.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub async fn claim(
        &self,
        channel: &ChannelName,
        event_id: u64,
        what: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = format!("{}:{what}:{event_id}", self.base(channel));
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&self.inner.node)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        Ok(set.is_some())
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
    pub async fn set_presence(
        &self,
        node: &str,
        channel: &ChannelName,
        streams: &[(DeviceId, usize)],
        replace: bool,
        history: usize,
    ) -> Result<usize, StoreError> {
        let mut call = self.inner.scripts.presence.prepare_invoke();
        call.key(self.node_presence_key(node, channel))
            .key(self.key(channel, "pres"))
            .key(self.key(channel, "pseq"))
            .key(self.key(channel, "plog"))
            .arg(&self.inner.node)
            .arg(channel.as_str())
            .arg(self.bus_channel())
            .arg(if replace { "1" } else { "0" })
            .arg(history.max(1));
        for (device, count) in streams {
            call.arg(device.as_str()).arg(*count);
        }
        call.invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)
    }

    /// `node`'s count of open streams per device of `channel`, as it last wrote them.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub async fn node_presence(
        &self,
        node: &str,
        channel: &ChannelName,
    ) -> Result<Vec<(DeviceId, usize)>, StoreError> {
        let counts: Vec<(String, usize)> = redis::cmd("HGETALL")
            .arg(self.node_presence_key(node, channel))
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
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
    pub async fn beat(
        &self,
        node: &str,
        now_ms: u64,
        expiry_ms: u64,
        known: bool,
    ) -> Result<bool, StoreError> {
        let lapsed: i64 = self
            .inner
            .scripts
            .node_beat
            .key(self.nodes_key())
            .arg(node)
            .arg(now_ms)
            .arg(expiry_ms)
            .arg(if known { "1" } else { "0" })
            .invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        Ok(lapsed == 1)
    }

    /// `PREFIX:nodes`: the nodes, each scored with the time its registration expires.
    pub fn nodes_key(&self) -> String {
        format!("{}:nodes", self.inner.prefix)
    }

    /// The name this node registers under after its registration lapsed `lapses` times:
    /// `NODE.lapses`.
    pub fn member(&self, lapses: u64) -> String {
        format!("{}.{lapses}", self.inner.node)
    }

    /// Whether `member` is one of the names this node registered under.
    pub fn is_mine(&self, member: &str) -> bool {
        member
            .strip_prefix(self.inner.node.as_str())
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The names of the live registrations of the other nodes (the clocks of the nodes
    /// decide what is alive).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub async fn other_members(&self) -> Result<Vec<String>, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg(u64::try_from(now).unwrap_or(u64::MAX))
            .arg("+inf")
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        Ok(members.into_iter().filter(|m| !self.is_mine(m)).collect())
    }

    fn node_presence_key(&self, node: &str, channel: &ChannelName) -> String {
        self.key(channel, &format!("pres:{node}"))
    }

    /// `{PREFIX:ch:NAME}`: the hash tag and start of every key of the channel.
    fn base(&self, channel: &ChannelName) -> String {
        format!("{{{}:ch:{}}}", self.inner.prefix, channel.as_str())
    }

    /// The keys the membership scripts take, in their order: the channel's sequence, its
    /// memberships and its current memberships.
    fn membership_keys(&self, channel: &ChannelName) -> [String; 3] {
        ["seq", "mem", "memcur"].map(|what| self.key(channel, what))
    }

    fn key(&self, channel: &ChannelName, what: &str) -> String {
        format!("{}:{what}", self.base(channel))
    }

    fn channels_key(&self) -> String {
        format!("{}:channels", self.inner.prefix)
    }

    /// Adds the channel to the set of channels, once per process.
    async fn remember(&self, channel: &ChannelName) -> Result<(), StoreError> {
        if self
            .inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(channel)
        {
            return Ok(());
        }
        let _: i64 = redis::cmd("SADD")
            .arg(self.channels_key())
            .arg(channel.as_str())
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        self.inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(channel.clone());
        Ok(())
    }

    fn retention_args(&self) -> (usize, u64) {
        let age = self.inner.retention.max_age.map_or(0, |a| {
            u64::try_from(a.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        (self.inner.retention.max_events.max(1), age)
    }
}

impl RedisStore {
    /// The idempotency window in milliseconds for the scripts (0: keys live as long as what they
    /// name).
    fn window_ms(&self) -> u64 {
        self.inner.retention.idempotency_window.map_or(0, |w| {
            u64::try_from(w.as_millis()).unwrap_or(u64::MAX).max(1)
        })
    }

    /// Appends events in one script run: `strict` (a batch) fails the whole call on a held key
    /// with another body or type, otherwise the stored event answers (see [`Store::append`]).
    async fn run_append(
        &self,
        channel: &ChannelName,
        events: Vec<NewEvent>,
        strict: bool,
    ) -> Result<Vec<Appended>, StoreError> {
        check_keys(&events)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.remember(channel).await?;
        let (max_events, max_age) = self.retention_args();
        let payload: Vec<ScriptEvent<'_>> = events
            .iter()
            .map(|e| ScriptEvent {
                b: &e.body,
                p: e.publisher.as_ref().map(|p| p.as_str()),
                y: e.event_type.as_ref().map(|t| t.as_str()),
                k: e.idempotency_key.as_deref(),
            })
            .collect();
        let payload = serde_json::to_string(&payload).map_err(StoreError::backend)?;
        let reply: Value = self
            .inner
            .scripts
            .append
            .key(self.key(channel, "seq"))
            .key(self.key(channel, "ev"))
            .key(self.key(channel, "keys"))
            .arg(max_events)
            .arg(max_age)
            .arg(self.window_ms())
            .arg(&self.inner.node)
            .arg(channel.as_str())
            .arg(self.bus_channel())
            .arg(self.base(channel))
            .arg(if strict { "1" } else { "0" })
            .arg(payload)
            .invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        let Value::Array(parts) = reply else {
            return Err(bad("append"));
        };
        let answers = match parts.as_slice() {
            [Value::Int(-2), id, key] => {
                return Err(StoreError::IdempotencyConflict {
                    id: Some(number(id)).filter(|&id| id > 0),
                    key: text(key).unwrap_or_default(),
                })
            }
            [Value::Int(1), Value::Array(answers)] if answers.len() == events.len() => answers,
            _ => return Err(bad("append")),
        };
        let mut appended: Vec<Appended> = Vec::with_capacity(events.len());
        for (new, answer) in events.into_iter().zip(answers) {
            let Value::Array(answer) = answer else {
                return Err(bad("append answer"));
            };
            let one = match answer.as_slice() {
                [Value::Int(1), id, time] => {
                    let time = i64::try_from(number(time)).unwrap_or(0);
                    let event = Event::new(channel.clone(), number(id), time_of(time), new);
                    Appended {
                        event: Arc::new(event),
                        new: true,
                    }
                }
                [Value::Int(0), id, Value::Array(fields)] => Appended {
                    event: event_from_fields(channel, number(id), fields)?,
                    new: false,
                },
                // The same key as an earlier event of this call (1-based).
                [Value::Int(2), earlier] => {
                    let earlier = usize::try_from(number(earlier))
                        .ok()
                        .and_then(|i| i.checked_sub(1))
                        .and_then(|i| appended.get(i))
                        .ok_or_else(|| bad("append answer"))?;
                    Appended {
                        event: earlier.event.clone(),
                        new: false,
                    }
                }
                _ => return Err(bad("append answer")),
            };
            appended.push(one);
        }
        Ok(appended)
    }

    /// Records a receipt in one script run, unless `key` names one already recorded.
    async fn run_receipt(
        &self,
        receipt: Receipt,
        key: Option<String>,
    ) -> Result<RecordedReceipt, StoreError> {
        let channel = receipt.channel.clone();
        let key_key = self.key(&channel, &format!("rk:{}", key.as_deref().unwrap_or("")));
        let reply: Value = self
            .inner
            .scripts
            .receipt
            .key(self.key(&channel, "seq"))
            .key(self.key(&channel, "ev"))
            .key(self.key(&channel, "rseq"))
            .key(self.key(&channel, "rlog"))
            .key(self.key(&channel, "dev"))
            .key(self.key(&channel, "devs"))
            .key(key_key)
            .arg(receipt.event_id)
            .arg(receipt.device.as_str())
            .arg(&receipt.status)
            .arg(receipt.time.timestamp_millis())
            .arg(self.inner.retention.max_events.max(1))
            .arg(&self.inner.node)
            .arg(channel.as_str())
            .arg(self.bus_channel())
            .arg(self.base(&channel))
            .arg(key.as_deref().unwrap_or(""))
            .arg(self.window_ms())
            .invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        let Value::Array(parts) = reply else {
            return Err(bad("receipt"));
        };
        let (stored, record, new) = match parts.as_slice() {
            [Value::Int(-1)] => {
                return Err(StoreError::UnknownEvent {
                    id: receipt.event_id,
                })
            }
            [Value::Int(0), stored, record] => (stored, record, false),
            [stored, record] => (stored, record, true),
            _ => return Err(bad("receipt")),
        };
        let (Some(stored), Some(record)) = (text(stored), text(record)) else {
            return Err(bad("receipt"));
        };
        let stored = receipt_from(&channel, &stored)?;
        let record = record_from(&channel, &stored.device, &record)?;
        Ok(RecordedReceipt {
            receipt: stored,
            record,
            new,
        })
    }
}

/// One event as the append script reads it (absent members are absent, not null).
#[derive(serde::Serialize)]
struct ScriptEvent<'a> {
    b: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<&'a str>,
}

/// A presence change from its `plog` entry: id `SEQ-0`, fields `d` device, `o` online ('1' or
/// '0'), `t` time in ms.
fn presence_from_entry(id: &str, fields: &[String]) -> Result<PresenceChange, StoreError> {
    let field = |name: &str| {
        fields
            .chunks(2)
            .find(|pair| pair[0] == name)
            .and_then(|pair| pair.get(1))
    };
    let seq = id.split('-').next().and_then(|n| n.parse().ok());
    let device = field("d").and_then(|d| DeviceId::new(d).ok());
    let (Some(seq), Some(device)) = (seq, device) else {
        return Err(bad("presence entry"));
    };
    Ok(PresenceChange {
        seq,
        device,
        online: field("o").is_some_and(|o| o == "1"),
        at: time_of(field("t").and_then(|t| t.parse().ok()).unwrap_or(0)),
    })
}

fn time_of(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn bad(what: &str) -> StoreError {
    StoreError::Backend(format!("unexpected answer from Redis: {what}").into())
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Builds an event from a stream entry's id and its field list.
pub(crate) fn event_from_entry(
    channel: &ChannelName,
    entry: &Value,
) -> Result<Arc<Event>, StoreError> {
    let Value::Array(parts) = entry else {
        return Err(bad("stream entry"));
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return Err(bad("stream entry"));
    };
    let id = text(id)
        .and_then(|id| id.split('-').next().and_then(|n| n.parse::<u64>().ok()))
        .ok_or_else(|| bad("entry id"))?;
    event_from_fields(channel, id, fields)
}

fn event_from_fields(
    channel: &ChannelName,
    id: u64,
    fields: &[Value],
) -> Result<Arc<Event>, StoreError> {
    let mut time = 0;
    let mut new = NewEvent {
        publisher: None,
        event_type: None,
        body: String::new(),
        idempotency_key: None,
    };
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(bad("entry fields"));
        };
        let (Some(name), Some(value)) = (text(name), text(value)) else {
            return Err(bad("entry field"));
        };
        match name.as_str() {
            "t" => time = value.parse().map_err(|_| bad("event time"))?,
            "b" => new.body = value,
            "p" => new.publisher = DeviceId::new(&value).ok(),
            "y" => new.event_type = EventType::new(&value).ok(),
            "k" => new.idempotency_key = Some(value),
            _ => {}
        }
    }
    Ok(Arc::new(Event::new(
        channel.clone(),
        id,
        time_of(time),
        new,
    )))
}

fn events_from(channel: &ChannelName, value: &Value) -> Result<Vec<Arc<Event>>, StoreError> {
    match value {
        Value::Array(entries) => entries
            .iter()
            .map(|e| event_from_entry(channel, e))
            .collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err(bad("stream range")),
    }
}

fn first_entry_id(value: &Value) -> Option<u64> {
    let Value::Array(entries) = value else {
        return None;
    };
    let Value::Array(parts) = entries.first()? else {
        return None;
    };
    text(parts.first()?)?.split('-').next()?.parse().ok()
}

fn number(value: &Value) -> u64 {
    match value {
        Value::Int(n) => u64::try_from(*n).unwrap_or(0),
        other => text(other).and_then(|t| t.parse().ok()).unwrap_or(0),
    }
}

/// A device record as the scripts keep it.
#[derive(Deserialize)]
struct RecordJson {
    fs: i64,
    ls: i64,
    op: String,
    #[serde(default)]
    lei: Option<String>,
    ld: u64,
    la: u64,
    n: u64,
}

impl RecordJson {
    fn into_record(self, channel: &ChannelName, device: DeviceId) -> DeviceRecord {
        DeviceRecord {
            channel: channel.clone(),
            device,
            first_seen: time_of(self.fs),
            last_seen: time_of(self.ls),
            last_op: DeviceOp::parse(&self.op).unwrap_or(DeviceOp::Feed),
            last_event_id: self.lei,
            last_delivered: self.ld,
            last_acked: self.la,
            receipts: self.n,
        }
    }
}

fn record_from(
    channel: &ChannelName,
    device: &DeviceId,
    json: &str,
) -> Result<DeviceRecord, StoreError> {
    let parsed: RecordJson = serde_json::from_str(json).map_err(StoreError::backend)?;
    Ok(parsed.into_record(channel, device.clone()))
}

/// A receipt as the scripts keep it.
#[derive(Deserialize)]
pub(crate) struct ReceiptJson {
    q: u64,
    e: u64,
    d: String,
    s: String,
    t: i64,
}

impl ReceiptJson {
    pub(crate) fn into_receipt(self, channel: &ChannelName) -> Result<Receipt, StoreError> {
        Ok(Receipt {
            seq: self.q,
            channel: channel.clone(),
            event_id: self.e,
            device: DeviceId::new(&self.d).map_err(StoreError::backend)?,
            status: self.s,
            time: time_of(self.t),
        })
    }
}

pub(crate) fn receipt_from(channel: &ChannelName, json: &str) -> Result<Receipt, StoreError> {
    serde_json::from_str::<ReceiptJson>(json)
        .map_err(StoreError::backend)?
        .into_receipt(channel)
}

/// A membership as the scripts keep it.
#[derive(Deserialize)]
struct MembershipJson {
    d: String,
    j: u64,
    #[serde(default)]
    l: Option<u64>,
    s: i64,
}

pub(crate) fn membership_from(channel: &ChannelName, json: &str) -> Result<Membership, StoreError> {
    let m: MembershipJson = serde_json::from_str(json).map_err(StoreError::backend)?;
    Ok(Membership {
        channel: channel.clone(),
        device: DeviceId::new(&m.d).map_err(StoreError::backend)?,
        joined_after: m.j,
        left_after: m.l,
        since: time_of(m.s),
    })
}

impl Store for RedisStore {
    async fn append(&self, channel: &ChannelName, event: NewEvent) -> Result<Appended, StoreError> {
        self.run_append(channel, vec![event], false)
            .await?
            .pop()
            .ok_or_else(|| bad("append"))
    }

    async fn append_batch(
        &self,
        channel: &ChannelName,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>, StoreError> {
        self.run_append(channel, events, true).await
    }

    async fn head(&self, channel: &ChannelName) -> Result<u64, StoreError> {
        let head: Option<u64> = redis::cmd("GET")
            .arg(self.key(channel, "seq"))
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        Ok(head.unwrap_or(0))
    }

    async fn read(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let ev = self.key(channel, "ev");
        let (head, first, events): (Value, Value, Value) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(self.key(channel, "seq"))
            .cmd("XRANGE")
            .arg(&ev)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(&ev)
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        let head = number(&head);
        let mut events = events_from(channel, &events)?;
        events.truncate(limit);
        Ok(EventPage {
            events,
            first_retained: first_entry_id(&first).unwrap_or(head + 1),
            head,
            unreadable: Vec::new(),
        })
    }

    async fn recent(
        &self,
        channel: &ChannelName,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let newest: Value = redis::cmd("XREVRANGE")
            .arg(self.key(channel, "ev"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        let mut events = events_from(channel, &newest)?;
        events.reverse();
        Ok(events)
    }

    async fn event(
        &self,
        channel: &ChannelName,
        id: u64,
    ) -> Result<Option<Arc<Event>>, StoreError> {
        if id == 0 {
            return Ok(None);
        }
        let entry: Value = redis::cmd("XRANGE")
            .arg(self.key(channel, "ev"))
            .arg(format!("{id}-0"))
            .arg(format!("{id}-0"))
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        Ok(events_from(channel, &entry)?.into_iter().next())
    }

    async fn record_receipt(
        &self,
        receipt: Receipt,
    ) -> Result<(Receipt, DeviceRecord), StoreError> {
        let recorded = self.run_receipt(receipt, None).await?;
        Ok((recorded.receipt, recorded.record))
    }

    async fn record_receipt_keyed(
        &self,
        receipt: Receipt,
        key: String,
    ) -> Result<RecordedReceipt, StoreError> {
        if !valid_idempotency_key(&key) {
            return Err(StoreError::InvalidIdempotencyKey);
        }
        self.run_receipt(receipt, Some(key)).await
    }

    async fn receipts(
        &self,
        channel: &ChannelName,
        event_id: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{}:rc:{event_id}", self.base(channel)))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        list.iter()
            .map(|json| receipt_from(channel, json))
            .collect()
    }

    async fn touch_device(&self, touch: DeviceTouch) -> Result<DeviceRecord, StoreError> {
        self.remember(&touch.channel).await?;
        let json: String = self
            .inner
            .scripts
            .touch
            .key(self.key(&touch.channel, "dev"))
            .key(self.key(&touch.channel, "devs"))
            .arg(touch.device.as_str())
            .arg(touch.op.as_str())
            .arg(touch.at.timestamp_millis())
            .arg(if touch.last_event_id.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(touch.last_event_id.as_deref().unwrap_or(""))
            .arg(touch.delivered)
            .invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        record_from(&touch.channel, &touch.device, &json)
    }

    async fn device(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.key(channel, "dev"))
            .arg(device.as_str())
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        json.map(|json| record_from(channel, device, &json))
            .transpose()
    }

    async fn devices(&self, channel: &ChannelName) -> Result<Vec<DeviceRecord>, StoreError> {
        self.devices_after(channel, None, -1).await
    }

    async fn devices_page(
        &self,
        channel: &ChannelName,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.devices_after(channel, after, i64::try_from(limit).unwrap_or(i64::MAX))
            .await
    }

    async fn receipt_head(&self, channel: &ChannelName) -> Result<u64, StoreError> {
        let head: Option<u64> = redis::cmd("GET")
            .arg(self.key(channel, "rseq"))
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        Ok(head.unwrap_or(0))
    }

    async fn receipts_after(
        &self,
        channel: &ChannelName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Receipt>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(self.key(channel, "rlog"))
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        entries
            .iter()
            .map(|(_, fields)| {
                // `j` the receipt, then `k` its idempotency key when it has one.
                match fields.chunks(2).find(|pair| pair[0] == "j") {
                    Some([_, json]) => receipt_from(channel, json),
                    _ => Err(bad("receipt entry")),
                }
            })
            .collect()
    }

    async fn unacknowledged(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Value = self
            .inner
            .scripts
            .unacknowledged
            .key(self.key(channel, "ev"))
            .arg(after)
            .arg(device.as_str())
            .arg(limit)
            .arg(self.base(channel))
            .invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        events_from(channel, &entries)
    }

    async fn add_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        at: DateTime<Utc>,
    ) -> Result<Membership, StoreError> {
        self.remember(channel).await?;
        let json: String = self
            .inner
            .scripts
            .add_recipient
            .key(&self.membership_keys(channel)[..])
            .arg(device.as_str())
            .arg(at.timestamp_millis())
            .arg(&self.inner.node)
            .arg(channel.as_str())
            .arg(self.bus_channel())
            .invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        membership_from(channel, &json)
    }

    async fn remove_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Option<Membership>, StoreError> {
        let json: Option<String> = self
            .inner
            .scripts
            .remove_recipient
            .key(&self.membership_keys(channel)[..])
            .arg(device.as_str())
            .arg(&self.inner.node)
            .arg(channel.as_str())
            .arg(self.bus_channel())
            .invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        json.map(|json| membership_from(channel, &json)).transpose()
    }

    async fn memberships(&self, channel: &ChannelName) -> Result<Vec<Membership>, StoreError> {
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg(self.key(channel, "mem"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        list.iter()
            .map(|json| membership_from(channel, json))
            .collect()
    }

    async fn channels(&self) -> Result<Vec<ChannelName>, StoreError> {
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.channels_key())
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        let mut channels: Vec<ChannelName> = names
            .iter()
            .filter_map(|n| ChannelName::new(n).ok())
            .collect();
        channels.sort();
        Ok(channels)
    }

    async fn presence_after(
        &self,
        channel: &ChannelName,
        after: u64,
    ) -> Result<Option<Vec<PresenceChange>>, StoreError> {
        let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
            .arg(self.key(channel, "plog"))
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        entries
            .iter()
            .map(|(id, fields)| presence_from_entry(id, fields))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    async fn online_devices(
        &self,
        channel: &ChannelName,
    ) -> Result<Option<HashSet<DeviceId>>, StoreError> {
        let devices: Vec<String> = redis::cmd("HKEYS")
            .arg(self.key(channel, "pres"))
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        Ok(Some(
            devices
                .iter()
                .filter_map(|d| DeviceId::new(d).ok())
                .collect(),
        ))
    }

    async fn streams_elsewhere(
        &self,
        channel: &ChannelName,
    ) -> Result<Option<HashMap<DeviceId, usize>>, StoreError> {
        let mut total = HashMap::new();
        for member in self.other_members().await? {
            for (device, n) in self.node_presence(&member, channel).await? {
                *total.entry(device).or_default() += n;
            }
        }
        Ok(Some(total))
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let key = format!("{}:probe", self.inner.prefix);
        let (_, read): ((), Option<String>) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(&self.inner.node)
            .arg("PX")
            .arg(60_000)
            .cmd("GET")
            .arg(&key)
            .query_async(&mut self.connection())
            .await
            .map_err(failure)?;
        read.map(|_| ())
            .ok_or_else(|| bad("probe read nothing back"))
    }
}

impl RedisStore {
    async fn devices_after(
        &self,
        channel: &ChannelName,
        after: Option<&DeviceId>,
        limit: i64,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let pairs: Vec<String> = self
            .inner
            .scripts
            .devices_page
            .key(self.key(channel, "devs"))
            .key(self.key(channel, "dev"))
            .arg(after.map_or("", |d| d.as_str()))
            .arg(limit)
            .invoke_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        pairs
            .chunks(2)
            .map(|pair| match pair {
                [name, json] => record_from(
                    channel,
                    &DeviceId::new(name).map_err(StoreError::backend)?,
                    json,
                ),
                _ => Err(bad("device page")),
            })
            .collect()
    }
}

/// The client for `url`, over TLS with `tls` for a `rediss://` URL.
fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, StoreError> {
    let shown = redacted(url);
    let unusable = |e: redis::RedisError| StoreError::Incompatible(format!("{shown}: {e}"));
    let info = url.into_connection_info().map_err(unusable)?;
    match info.addr() {
        // Checking no certificate would make TLS a show: the way to trust a private server is
        // its CA.
        ConnectionAddr::TcpTls { insecure: true, .. } => Err(StoreError::Incompatible(format!(
            "{shown}: #insecure (no certificate check) is not supported; trust the server's CA instead"
        ))),
        ConnectionAddr::TcpTls { .. } if tls.is_set() => {
            let certificates = redis::TlsCertificates {
                client_tls: tls.client.as_ref().map(|c| redis::ClientTlsConfig {
                    client_cert: c.chain.clone(),
                    client_key: c.key.clone(),
                }),
                root_cert: tls.ca.clone(),
            };
            redis::Client::build_with_tls(info, certificates).map_err(unusable)
        }
        ConnectionAddr::TcpTls { .. } => redis::Client::open(info).map_err(unusable),
        _ if tls.is_set() => Err(StoreError::Incompatible(format!(
            "{shown}: TLS certificates are for a rediss:// URL (Redis over TLS)"
        ))),
        _ => redis::Client::open(info).map_err(unusable),
    }
}

/// A Redis error as a store error, a TLS failure told apart: waiting does not mend it, so a
/// node refuses to start on one rather than wait for its Redis.
fn failure(err: redis::RedisError) -> StoreError {
    if from_tls(&err) {
        StoreError::Tls(Box::new(err))
    } else {
        StoreError::backend(err)
    }
}

/// Whether rustls caused `err`. The Redis client keeps the cause behind an `Arc<dyn Error>`,
/// often an I/O error wrapping the rustls one, and `source()` steps over the wrapped error; so
/// each link of the chain is opened by hand. A test on a real TLS server holds this to the
/// client's version (`an_untrusted_server_certificate_is_a_tls_failure_found_fast`).
fn from_tls(err: &redis::RedisError) -> bool {
    fn is_rustls(err: &(dyn std::error::Error + 'static)) -> bool {
        err.is::<rustls::Error>()
            || err
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>())
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = cause {
        let shared = err
            .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
            .map(|shared| &**shared as &(dyn std::error::Error + 'static));
        if is_rustls(err) || shared.is_some_and(is_rustls) {
            return true;
        }
        cause = err.source();
    }
    false
}

// The end-to-end harness's private Redis, shared so both start it the same way.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../../../../tests/support/redis_server.rs"]
pub(crate) mod redis_server;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, ROOMY};

    use super::redis_server;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite() {
        let server = redis_server::RedisServer::start();
        let url = server.url();
        let round = std::sync::atomic::AtomicU64::new(0);
        conformance::run_all(|retention| {
            // A fresh prefix per check: a fresh store on the same server.
            let prefix = format!(
                "t{}",
                round.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let url = url.clone();
            async move {
                RedisStore::open(RedisOptions {
                    url,
                    prefix,
                    retention,
                    tls: RedisTls::default(),
                })
                .unwrap()
            }
        })
        .await;
    }

    /// Options for a store on `server` (a TLS one) trusting `ca`, with the server's client
    /// certificate when `client`.
    fn over_tls(
        server: &redis_server::RedisServer,
        prefix: &str,
        retention: Retention,
        ca: Option<Vec<u8>>,
        client: bool,
    ) -> RedisOptions {
        let read = |path: std::path::PathBuf| std::fs::read(path).expect("certificate file");
        RedisOptions {
            url: server.url(),
            prefix: prefix.to_owned(),
            retention,
            tls: RedisTls {
                ca,
                client: client.then(|| RedisClientCert {
                    chain: read(server.client_cert_file()),
                    key: read(server.client_key_file()),
                }),
            },
        }
    }

    fn ca_of(server: &redis_server::RedisServer) -> Option<Vec<u8>> {
        Some(std::fs::read(server.ca_file()).expect("CA file"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite_over_tls() {
        let server = redis_server::RedisServer::start_tls(false);
        assert!(server.url().starts_with("rediss://"), "{}", server.url());
        let round = std::sync::atomic::AtomicU64::new(0);
        conformance::run_all(|retention| {
            let prefix = format!(
                "tls{}",
                round.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let options = over_tls(&server, &prefix, retention, ca_of(&server), false);
            async move { RedisStore::open(options).unwrap() }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_untrusted_server_certificate_is_a_tls_failure_found_fast() {
        let server = redis_server::RedisServer::start_tls(false);
        let unrelated = redis_server::unrelated_ca_pem().into_bytes();
        // Another CA's, then the system's CAs: neither signed the server's certificate.
        for (what, ca) in [("another CA", Some(unrelated)), ("the system's CAs", None)] {
            let store = RedisStore::open(over_tls(&server, "untrusted", ROOMY, ca, false)).unwrap();
            let started = std::time::Instant::now();
            let outcome = store.probe().await;
            assert!(
                matches!(outcome, Err(StoreError::Tls(_))),
                "{what}: {outcome:?}"
            );
            assert!(
                started.elapsed() < RESPONSE_TIMEOUT,
                "{what}: failed in {:?}",
                started.elapsed()
            );
        }
        let trusted = RedisStore::open(over_tls(&server, "trusted", ROOMY, ca_of(&server), false));
        trusted
            .unwrap()
            .probe()
            .await
            .expect("the server's own CA is trusted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_asking_for_a_client_certificate_is_given_one() {
        let server = redis_server::RedisServer::start_tls(true);
        let store =
            RedisStore::open(over_tls(&server, "mtls", ROOMY, ca_of(&server), true)).unwrap();
        store
            .probe()
            .await
            .expect("answers a client with a certificate");
        let c = conformance::ch("C");
        let appended = store.append(&c, conformance::body("x")).await.unwrap();
        assert_eq!(store.head(&c).await.unwrap(), appended.event.id);

        let without =
            RedisStore::open(over_tls(&server, "mtls", ROOMY, ca_of(&server), false)).unwrap();
        let refused = without.probe().await;
        assert!(
            matches!(refused, Err(StoreError::Tls(_))),
            "a client without a certificate is refused: {refused:?}"
        );
    }

    // A runtime: a store that opens spawns its connection task.
    #[tokio::test]
    async fn tls_settings_go_with_rediss_urls_only() {
        let ca = RedisTls {
            ca: Some(redis_server::unrelated_ca_pem().into_bytes()),
            client: None,
        };
        let open = |url: &str, tls: &RedisTls| {
            RedisStore::open(RedisOptions {
                url: url.to_owned(),
                prefix: "p".into(),
                retention: ROOMY,
                tls: tls.clone(),
            })
        };
        let refused = open("redis://:secret@127.0.0.1:6379/0", &ca).unwrap_err();
        assert!(
            matches!(&refused, StoreError::Incompatible(m) if m.contains("rediss://") && !m.contains("secret")),
            "{refused}"
        );
        let insecure = open("rediss://127.0.0.1:6379/0#insecure", &RedisTls::default());
        assert!(
            matches!(insecure, Err(StoreError::Incompatible(_))),
            "{insecure:?}"
        );
        let bad_ca = RedisTls {
            ca: Some(
                b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_vec(),
            ),
            client: None,
        };
        assert!(matches!(
            open("rediss://127.0.0.1:6379/0", &bad_ca),
            Err(StoreError::Incompatible(_))
        ));
        open("rediss://127.0.0.1:6379/0", &ca).expect("certificates with rediss://");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_appending_to_one_channel_share_one_sequence() {
        let server = redis_server::RedisServer::start();
        let open = || {
            RedisStore::open(RedisOptions {
                url: server.url(),
                prefix: "two".into(),
                retention: conformance::ROOMY,
                tls: RedisTls::default(),
            })
            .unwrap()
        };
        let (a, b) = (open(), open());
        assert_ne!(a.node(), b.node());
        let c = conformance::ch("Shared");
        let tasks: Vec<_> = [a.clone(), b.clone(), a, b]
            .into_iter()
            .map(|store| {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for _ in 0..25 {
                        ids.push(
                            store
                                .append(&c, conformance::body("x"))
                                .await
                                .unwrap()
                                .event
                                .id,
                        );
                    }
                    ids
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (1..=100).collect::<Vec<u64>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_window_a_receipt_key_is_deleted_with_its_receipt() {
        let server = redis_server::RedisServer::start();
        let store = RedisStore::open(RedisOptions {
            url: server.url(),
            prefix: "rk".into(),
            retention: Retention {
                max_events: 2,
                ..conformance::ROOMY
            },
            tls: RedisTls::default(),
        })
        .unwrap();
        let held = "{rk:ch:RG}:rk:once";
        let exists = |key: &'static str| {
            let mut conn = store.connection();
            async move {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<i64>(&mut conn)
                    .await
                    .unwrap()
            }
        };
        conformance::receipt_keys_go_with_their_receipts(store.clone()).await;
        assert_eq!(exists(held).await, 1, "given again by the last receipt");
        // Two more receipts push that one out of the receipt stream: its key goes too.
        let c = conformance::ch("RG");
        for _ in 0..2 {
            store
                .record_receipt(Receipt {
                    seq: 0,
                    channel: c.clone(),
                    event_id: 3,
                    device: conformance::dev("H2"),
                    status: "ok".into(),
                    time: pere_proto::event::now(),
                })
                .await
                .unwrap();
        }
        assert_eq!(exists(held).await, 0, "no key outlives its receipt");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn presence_changes_once_for_the_cluster_and_a_sweep_clears_a_node_once() {
        let server = redis_server::RedisServer::start();
        let store = RedisStore::open(RedisOptions {
            url: server.url(),
            prefix: "pr".into(),
            retention: conformance::ROOMY,
            tls: RedisTls::default(),
        })
        .unwrap();
        let (c, h1, h2) = (
            conformance::ch("Room"),
            conformance::dev("H1"),
            conformance::dev("H2"),
        );
        let changes = || async { store.presence_after(&c, 0).await.unwrap().unwrap() };
        let states = |changes: Vec<PresenceChange>| -> Vec<(u64, String, bool)> {
            changes
                .into_iter()
                .map(|p| (p.seq, p.device.to_string(), p.online))
                .collect()
        };
        let set = |node: &'static str, streams: Vec<(DeviceId, usize)>, replace: bool| {
            let (store, c) = (store.clone(), c.clone());
            async move {
                store
                    .set_presence(node, &c, &streams, replace, 1000)
                    .await
                    .unwrap()
            }
        };

        assert_eq!(set("n1", vec![(h1.clone(), 1)], false).await, 1);
        assert_eq!(
            set("n2", vec![(h1.clone(), 2), (h2.clone(), 1)], false).await,
            2
        );
        assert_eq!(set("n1", vec![(h1.clone(), 0)], false).await, 0);
        assert_eq!(
            states(changes().await),
            vec![(1, "H1".into(), true), (2, "H2".into(), true)],
            "H1's second node and its first node's leaving change nothing"
        );
        // n2 dies: two sweeps, one change per device.
        assert_eq!(set("n2", Vec::new(), true).await, 0);
        assert_eq!(set("n2", Vec::new(), true).await, 0);
        assert_eq!(
            states(store.presence_after(&c, 2).await.unwrap().unwrap()),
            vec![(3, "H1".into(), false), (4, "H2".into(), false)]
        );
        assert!(store.online_devices(&c).await.unwrap().unwrap().is_empty());
        // Written whole again, a node's share replaces what it held.
        set("n1", vec![(h1.clone(), 1), (h2.clone(), 1)], false).await;
        assert_eq!(set("n1", vec![(h2.clone(), 3)], true).await, 1);
        assert_eq!(
            store.node_presence("n1", &c).await.unwrap(),
            vec![(h2.clone(), 3)]
        );
        assert_eq!(
            store.online_devices(&c).await.unwrap().unwrap(),
            HashSet::from([h2])
        );
        assert_eq!(changes().await.last().map(|p| p.seq), Some(7));
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast() {
        let server = redis_server::RedisServer::start();
        let url = server.url();
        drop(server);
        let store = RedisStore::open(RedisOptions {
            url,
            prefix: "gone".into(),
            retention: conformance::ROOMY,
            tls: RedisTls::default(),
        })
        .unwrap();
        let started = std::time::Instant::now();
        let outcome = store
            .append(&conformance::ch("C"), conformance::body("x"))
            .await;
        assert!(
            matches!(outcome, Err(StoreError::Backend(_))),
            "{outcome:?}"
        );
        assert!(store.probe().await.is_err());
        assert!(
            started.elapsed() < RESPONSE_TIMEOUT,
            "failed in {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("redis://:secret@h:6379/2"),
            "redis://:***@h:6379/2"
        );
        assert_eq!(redacted("redis://user:secret@h/0"), "redis://user:***@h/0");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        assert_eq!(
            redacted("rediss://:secret@h:6380/0"),
            "rediss://:***@h:6380/0"
        );
    }
}
