//! The [`Store`] on Redis: appends, receipts, device records, memberships and reads, each change
//! one script run (see [`super::lua`]), the answers decoded by [`super::decode`].

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pere_proto::event::{valid_idempotency_key, Event, NewEvent};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::presence::PresenceChange;
use pere_proto::receipt::{DeviceRecord, DeviceTouch, Membership, Receipt};
use redis::{Script, ToRedisArgs, Value};

use super::connection::{failure, redacted, Conn, Deployment, RedisOptions, Target};
use super::decode::{
    bad, event_from_fields, events_from, first_entry_id, membership_from, number,
    presence_from_entry, receipt_from, record_from, text, time_of,
};
use super::keys::Keys;
use super::lua;
use super::nodes::Nodes;
use super::script::{eval, Confirmation, Confirming};
use crate::error::{StoreError, Unconfirmed};
use crate::store::{
    check_keys, check_receipt_keys, scoped_key, Appended, EventPage, ReceiptBatch, RecordedLine,
    RecordedReceipt, Retention, Store,
};

/// The Redis [`Store`]. Handles are cheap to clone and share one multiplexed, reconnecting
/// connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    // The URL, its password hidden.
    shown: String,
    target: Target,
    conn: Conn,
    keys: Keys,
    retention: Retention,
    // Replicas that must confirm a push or receipt (`WAIT`); 0: none.
    wait_replicas: usize,
    // The connections such a write is confirmed on (not for a cluster).
    confirming: Option<Confirming>,
    // Whether the server's version was found good (sharded Pub/Sub needs Redis 7).
    version_checked: AtomicBool,
    // Names this node knows are in the channel set, so a busy channel adds itself once.
    known: Mutex<HashSet<ChannelName>>,
    // This node's id, its registrations and its share of presence.
    nodes: Nodes,
    scripts: Scripts,
    // The store this node writes to, learnt at its first write and when it adopts the store.
    identity: Mutex<Option<Identity>>,
    // The greatest id this node knows each channel reached (its own appends, the bus's): a store
    // whose sequence is below it lost what the node saw. Only for the channels in use: a channel
    // the hub unloads is forgotten (`channel_unloaded`), as it is from `known`.
    heads: Mutex<HashMap<ChannelName, u64>>,
}

/// Who the store is, as this node knows it.
#[derive(Debug, Clone)]
struct Identity {
    // Shared: every append and receipt takes a copy.
    id: Arc<str>,
    floor: u64,
}

/// How long after a store was made again nodes wait before writing to it: the time every live
/// node has to notice (it checks every [`IDENTITY_CHECK`]) and raise the floor with what it
/// handed out.
const ADOPT_QUIET_MS: u64 = 3_000;

/// How often a node sharing a Redis store checks that the store is still the one it knows.
pub const IDENTITY_CHECK: Duration = Duration::from_secs(1);

struct Scripts {
    append: Script,
    receipt: Script,
    receipts: Script,
    reseed: Script,
    adopt: Script,
    touch: Script,
    add_recipient: Script,
    remove_recipient: Script,
    unacknowledged: Script,
    devices_page: Script,
    read: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix())
            .field("node", &self.node())
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
    /// is not over TLS, certificates that cannot be read, or replicas' confirmations asked of
    /// a Redis Cluster.
    pub fn open(options: RedisOptions) -> Result<Self, StoreError> {
        let shown = redacted(&options.url);
        let target = Target::new(&options.url, &options.tls)?;
        if options.wait_replicas > 0 && target.deployment() == Deployment::Cluster {
            return Err(StoreError::Incompatible(format!(
                "{shown}: replicas' confirmations (WAIT) are not supported on a Redis Cluster"
            )));
        }
        let conn = target.shared_connection(&shown)?;
        let keys = Keys::new(options.prefix);
        let scripts = Scripts {
            append: Script::new(&format!("{}{}", lua::IDENTITY, lua::APPEND)),
            receipt: Script::new(&lua::with_helpers(&format!(
                "{}{}",
                lua::IDENTITY,
                lua::RECEIPT
            ))),
            receipts: Script::new(&lua::with_helpers(&format!(
                "{}{}",
                lua::IDENTITY,
                lua::RECEIPTS
            ))),
            reseed: Script::new(&format!("{}{}", lua::IDENTITY, lua::RESEED)),
            adopt: Script::new(lua::ADOPT),
            touch: Script::new(&lua::with_helpers(lua::TOUCH)),
            add_recipient: Script::new(lua::ADD_RECIPIENT),
            remove_recipient: Script::new(lua::REMOVE_RECIPIENT),
            unacknowledged: Script::new(&lua::with_helpers(lua::UNACKNOWLEDGED)),
            devices_page: Script::new(lua::DEVICES_PAGE),
            read: Script::new(lua::READ),
        };
        let confirming = Confirming::new(&target).filter(|_| options.wait_replicas > 0);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                shown,
                target,
                nodes: Nodes::new(conn.clone(), keys.clone()),
                conn,
                keys,
                retention: options.retention,
                wait_replicas: options.wait_replicas,
                confirming,
                version_checked: AtomicBool::new(false),
                known: Mutex::default(),
                scripts,
                identity: Mutex::default(),
                heads: Mutex::default(),
            }),
        })
    }

    /// This node's id on the bus (random per process).
    pub fn node(&self) -> &str {
        self.inner.nodes.node()
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The store's URL, its password hidden, for messages.
    fn shown(&self) -> String {
        self.inner.shown.clone()
    }

    /// The kind of Redis deployment the store is on.
    pub fn deployment(&self) -> Deployment {
        self.inner.target.deployment()
    }

    /// The deployment, for connections of their own (the bus's).
    pub(super) fn target(&self) -> &Target {
        &self.inner.target
    }

    /// A handle on the shared connection.
    pub(super) fn connection(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// Runs `script` on the channel's `keys` (its `:slot` key added last) with `args`; with
    /// `confirmed`, waits for the replicas asked for ([`RedisOptions::wait_replicas`]).
    async fn run(
        &self,
        script: &Script,
        channel: &ChannelName,
        mut keys: Vec<String>,
        args: Args,
        confirmed: bool,
    ) -> Result<(Value, Confirmation), StoreError> {
        keys.push(self.inner.keys.slot(channel));
        match &self.inner.confirming {
            Some(confirming) if confirmed && self.inner.wait_replicas > 0 => {
                let marker = self.inner.keys.confirmed();
                let wanted = self.inner.wait_replicas;
                confirming
                    .eval(script, &keys, &args.0, wanted, &marker)
                    .await
            }
            _ => {
                let answer = eval(&self.inner.conn, script, &keys, &args.0).await?;
                Ok((answer, Confirmation::Enough))
            }
        }
    }

    /// As [`RedisStore::run`], with no confirmation, the answer as a `T`.
    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        channel: &ChannelName,
        keys: Vec<String>,
        args: Args,
    ) -> Result<T, StoreError> {
        let (answer, _) = self.run(script, channel, keys, args, false).await?;
        redis::from_redis_value(answer).map_err(|e| StoreError::backend(redis::RedisError::from(e)))
    }

    /// The names of the keys.
    pub(super) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// This node among the others sharing the Redis.
    pub(super) fn nodes(&self) -> &Nodes {
        &self.inner.nodes
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
        let key = format!("{}:{what}:{event_id}", self.inner.keys.base(channel));
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(self.node())
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        Ok(set.is_some())
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
            .arg(self.inner.keys.channels())
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

/// What a script answers when the store is not the one the node knew.
fn changed() -> StoreError {
    StoreError::Changed {
        detail: "Redis does not hold what this node wrote and saw (it came back empty, failed over to a copy that lacks the last writes, or is another store)".to_owned(),
    }
}

impl RedisStore {
    fn cached_identity(&self) -> Option<Identity> {
        self.inner
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The store as this node knows it, learnt at the first write (and made there, on a Redis
    /// that never held one).
    async fn identity(&self) -> Result<Identity, StoreError> {
        if let Some(known) = self.cached_identity() {
            return Ok(known);
        }
        let (id, _, floor, _) = self.run_adopt(0, false).await?;
        let identity = Identity {
            id: id.into(),
            floor,
        };
        *self
            .inner
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(identity.clone());
        Ok(identity)
    }

    /// Runs [`lua::ADOPT`]: `(id, since_ms, floor, now_ms)`.
    async fn run_adopt(
        &self,
        high_water: u64,
        changed: bool,
    ) -> Result<(String, u64, u64, u64), StoreError> {
        let keys = vec![self.inner.keys.store()];
        let fresh = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let args = Args::default()
            .arg(fresh)
            .arg(high_water)
            .arg(if changed { "1" } else { "0" });
        let answer = eval(&self.inner.conn, &self.inner.scripts.adopt, &keys, &args.0).await?;
        redis::from_redis_value(answer).map_err(|e| StoreError::backend(redis::RedisError::from(e)))
    }

    /// How many channels this node keeps something of in memory (a known head, or a place in
    /// the set of channels): for tests of what idle channels keep.
    #[cfg(test)]
    pub(super) fn channels_in_memory(&self) -> usize {
        let heads = self.inner.heads.lock().unwrap_or_else(|e| e.into_inner());
        let known = self.inner.known.lock().unwrap_or_else(|e| e.into_inner());
        heads
            .keys()
            .chain(known.iter())
            .collect::<HashSet<_>>()
            .len()
    }

    /// The greatest id this node knows `channel` reached.
    pub(super) fn known_head(&self, channel: &ChannelName) -> u64 {
        self.inner
            .heads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .copied()
            .unwrap_or(0)
    }

    /// Notes that `channel` reached `id` (an event this node appended, or heard of on the bus):
    /// a store whose sequence of the channel is below it lost what this node saw.
    pub fn saw(&self, channel: &ChannelName, id: u64) {
        let mut heads = self.inner.heads.lock().unwrap_or_else(|e| e.into_inner());
        // The name is copied once per channel, not per event.
        match heads.get_mut(channel) {
            Some(head) => *head = (*head).max(id),
            None => {
                heads.insert(channel.clone(), id);
            }
        }
    }

    /// Whether the store is still the one this node knows (false once it is not: it came back
    /// empty or is another), the floor refreshed as other nodes raise it. A node sharing the
    /// store asks every [`IDENTITY_CHECK`], so that it notices a change before it writes.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when Redis cannot be reached.
    pub async fn same_store(&self) -> Result<bool, StoreError> {
        let Some(known) = self.cached_identity() else {
            return Ok(true);
        };
        let (id, floor): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.inner.keys.store())
            .arg("id")
            .arg("floor")
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        if id.as_deref() != Some(&*known.id) {
            return Ok(false);
        }
        if let Some(identity) = self
            .inner
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            identity.floor = identity.floor.max(floor.unwrap_or(0));
        }
        Ok(true)
    }

    /// The keys every script that hands out ids or takes receipts checks the store's identity
    /// with (see [`lua::IDENTITY`]): the channel's `sid`, then the store's identity on a
    /// deployment where a script may read any key.
    fn identity_keys(&self, channel: &ChannelName, keys: &mut Vec<String>) {
        keys.push(self.inner.keys.key(channel, "sid"));
        if self.deployment() != Deployment::Cluster {
            keys.push(self.inner.keys.store());
        }
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
        let identity = self.identity().await?;
        let mut keys: Vec<String> = ["seq", "ev", "keys", "sid", "lost"]
            .map(|what| self.inner.keys.key(channel, what))
            .into();
        if self.deployment() != Deployment::Cluster {
            keys.push(self.inner.keys.store());
        }
        let args = Args::default()
            .arg(max_events)
            .arg(max_age)
            .arg(self.window_ms())
            .arg(self.node())
            .arg(channel.as_str())
            .arg(self.inner.keys.bus(channel))
            .arg(self.inner.keys.base(channel))
            .arg(if strict { "1" } else { "0" })
            .arg(payload)
            .arg(&*identity.id)
            .arg(identity.floor)
            .arg(self.known_head(channel));
        let (reply, confirmation) = self
            .run(&self.inner.scripts.append, channel, keys, args, true)
            .await?;
        let Value::Array(parts) = reply else {
            return Err(bad("append"));
        };
        let answers = match parts.as_slice() {
            [Value::Int(-3)] => return Err(changed()),
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
        if let Some(last) = appended.iter().map(|a| a.event.id).max() {
            self.saw(channel, last);
        }
        if let Confirmation::Short { confirmed, wanted } = confirmation {
            let new = appended.iter().filter(|a| a.new).map(|a| a.event.clone());
            return Err(StoreError::Unreplicated {
                confirmed,
                wanted,
                recorded: Unconfirmed::Events(new.collect()),
            });
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
        // Receipt keys are per device: the script sees the key in its device's scope only.
        let key = key.map(|key| scoped_key(Some(&receipt.device), &key));
        let key_key = self
            .inner
            .keys
            .key(&channel, &format!("rk:{}", key.as_deref().unwrap_or("")));
        let mut keys: Vec<String> = ["seq", "ev", "rseq", "rlog", "dev", "devs"]
            .map(|what| self.inner.keys.key(&channel, what))
            .into();
        keys.push(key_key);
        let identity = self.identity().await?;
        self.identity_keys(&channel, &mut keys);
        let args = Args::default()
            .arg(receipt.event_id)
            .arg(receipt.device.as_str())
            .arg(&*receipt.status)
            .arg(receipt.time.timestamp_millis())
            .arg(self.inner.retention.max_events.max(1))
            .arg(self.node())
            .arg(channel.as_str())
            .arg(self.inner.keys.bus(&channel))
            .arg(self.inner.keys.base(&channel))
            .arg(key.as_deref().unwrap_or(""))
            .arg(self.window_ms())
            .arg(&*identity.id)
            .arg(identity.floor)
            .arg(self.known_head(&channel));
        let (reply, confirmation) = self
            .run(&self.inner.scripts.receipt, &channel, keys, args, true)
            .await?;
        let Value::Array(parts) = reply else {
            return Err(bad("receipt"));
        };
        let (stored, record, new) = match parts.as_slice() {
            [Value::Int(-3)] => return Err(changed()),
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
        if let Confirmation::Short { confirmed, wanted } = confirmation {
            return Err(StoreError::Unreplicated {
                confirmed,
                wanted,
                recorded: match new {
                    true => Unconfirmed::Receipt(Box::new(stored)),
                    false => Unconfirmed::Nothing,
                },
            });
        }
        Ok(RecordedReceipt {
            receipt: stored,
            record,
            new,
        })
    }
}

impl RedisStore {
    /// Records a batch of receipts in one script run (see [`Store::record_receipts`]).
    async fn run_receipts(&self, batch: ReceiptBatch) -> Result<Vec<RecordedLine>, StoreError> {
        check_receipt_keys(&batch.lines)?;
        if batch.lines.is_empty() {
            return Ok(Vec::new());
        }
        let channel = batch.channel.clone();
        let payload: Vec<ScriptReceipt<'_>> = batch
            .lines
            .iter()
            .map(|line| ScriptReceipt {
                e: line.event_id.to_string(),
                s: &line.status,
                k: line.key.as_deref(),
            })
            .collect();
        let payload = serde_json::to_string(&payload).map_err(StoreError::backend)?;
        let mut keys: Vec<String> = ["seq", "ev", "rseq", "rlog", "dev", "devs"]
            .map(|what| self.inner.keys.key(&channel, what))
            .into();
        let identity = self.identity().await?;
        self.identity_keys(&channel, &mut keys);
        let args = Args::default()
            .arg(batch.device.as_str())
            .arg(batch.time.timestamp_millis())
            .arg(self.inner.retention.max_events.max(1))
            .arg(self.node())
            .arg(channel.as_str())
            .arg(self.inner.keys.bus(&channel))
            .arg(self.inner.keys.base(&channel))
            .arg(self.window_ms())
            .arg(&*identity.id)
            .arg(identity.floor)
            .arg(self.known_head(&channel))
            .arg(if batch.unacknowledged_only { "1" } else { "0" })
            .arg(payload);
        let (reply, confirmation) = self
            .run(&self.inner.scripts.receipts, &channel, keys, args, true)
            .await?;
        let Value::Array(parts) = reply else {
            return Err(bad("receipts"));
        };
        let answers = match parts.as_slice() {
            [Value::Int(-3)] => return Err(changed()),
            [Value::Int(-1), line] => {
                let line = usize::try_from(number(line)).unwrap_or(0);
                let id = line
                    .checked_sub(1)
                    .and_then(|i| batch.lines.get(i))
                    .map_or(0, |l| l.event_id);
                return Err(StoreError::UnknownEvent { id });
            }
            [Value::Int(-2), id, key] => {
                return Err(StoreError::IdempotencyConflict {
                    id: Some(number(id)).filter(|&id| id > 0),
                    key: text(key).unwrap_or_default(),
                })
            }
            [Value::Int(1), Value::Array(answers)] if answers.len() == batch.lines.len() => answers,
            _ => return Err(bad("receipts")),
        };
        let mut recorded: Vec<RecordedLine> = Vec::with_capacity(answers.len());
        for (line, answer) in answers.iter().enumerate() {
            let Value::Array(answer) = answer else {
                return Err(bad("receipts answer"));
            };
            let (receipt, new) = match answer.as_slice() {
                [Value::Int(3)] => continue,
                [Value::Int(flag @ (0 | 1)), json] => {
                    let json = text(json).ok_or_else(|| bad("receipts answer"))?;
                    (receipt_from(&channel, &json)?, *flag == 1)
                }
                // The same key as an earlier line (1-based).
                [Value::Int(2), earlier] => {
                    let earlier = usize::try_from(number(earlier))
                        .ok()
                        .and_then(|i| i.checked_sub(1));
                    let first = recorded
                        .iter()
                        .find(|r| Some(r.line) == earlier)
                        .ok_or_else(|| bad("receipts answer"))?;
                    (first.receipt.clone(), false)
                }
                _ => return Err(bad("receipts answer")),
            };
            recorded.push(RecordedLine { line, receipt, new });
        }
        if let Confirmation::Short { confirmed, wanted } = confirmation {
            let new = recorded.iter().filter(|r| r.new).map(|r| r.receipt.clone());
            return Err(StoreError::Unreplicated {
                confirmed,
                wanted,
                recorded: Unconfirmed::Receipts(new.collect()),
            });
        }
        Ok(recorded)
    }
}

/// One receipt as the batch script reads it (absent members are absent, not null).
#[derive(serde::Serialize)]
struct ScriptReceipt<'a> {
    e: String,
    s: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<&'a str>,
}

/// A script's arguments, each as Redis takes it.
#[derive(Default)]
struct Args(Vec<Vec<u8>>);

impl Args {
    fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.0.extend(arg.to_redis_args());
        self
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
            .arg(self.inner.keys.key(channel, "seq"))
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
        let keys = ["seq", "ev"].map(|what| self.inner.keys.key(channel, what));
        // Ids are u64 as stream entry ids are: the start is written here, never summed in Lua,
        // whose numbers are doubles.
        let start = format!("{}-0", after.saturating_add(1));
        let args = Args::default().arg(start).arg(limit.max(1));
        let (head, first, events): (Value, Value, Value) = self
            .call(&self.inner.scripts.read, channel, keys.into(), args)
            .await?;
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
            .arg(self.inner.keys.key(channel, "ev"))
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
            .arg(self.inner.keys.key(channel, "ev"))
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

    async fn record_receipts(&self, batch: ReceiptBatch) -> Result<Vec<RecordedLine>, StoreError> {
        self.run_receipts(batch).await
    }

    async fn receipts(
        &self,
        channel: &ChannelName,
        event_id: u64,
    ) -> Result<Vec<Receipt>, StoreError> {
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{}:rc:{event_id}", self.inner.keys.base(channel)))
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
        let keys = ["dev", "devs"].map(|what| self.inner.keys.key(&touch.channel, what));
        let args = Args::default()
            .arg(touch.device.as_str())
            .arg(touch.op.as_str())
            .arg(touch.at.timestamp_millis())
            .arg(if touch.last_event_id.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(touch.last_event_id.as_deref().unwrap_or(""))
            .arg(touch.delivered);
        let json: String = self
            .call(&self.inner.scripts.touch, &touch.channel, keys.into(), args)
            .await?;
        record_from(&touch.channel, &touch.device, &json)
    }

    async fn device(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.inner.keys.key(channel, "dev"))
            .arg(device.as_str())
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        json.map(|json| record_from(channel, device, &json))
            .transpose()
    }

    async fn devices_named(
        &self,
        channel: &ChannelName,
        devices: &[DeviceId],
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(self.inner.keys.key(channel, "dev"));
        for device in devices {
            hmget.arg(device.as_str());
        }
        let found: Vec<Option<String>> = hmget
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        devices
            .iter()
            .zip(found)
            .filter_map(|(device, json)| json.map(|json| record_from(channel, device, &json)))
            .collect()
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
            .arg(self.inner.keys.key(channel, "rseq"))
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
            .arg(self.inner.keys.key(channel, "rlog"))
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
        let args = Args::default()
            .arg(after)
            .arg(device.as_str())
            .arg(limit)
            .arg(self.inner.keys.base(channel));
        let keys = vec![self.inner.keys.key(channel, "ev")];
        let entries: Value = self
            .call(&self.inner.scripts.unacknowledged, channel, keys, args)
            .await?;
        events_from(channel, &entries)
    }

    async fn add_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
        at: DateTime<Utc>,
    ) -> Result<Membership, StoreError> {
        self.remember(channel).await?;
        let args = Args::default()
            .arg(device.as_str())
            .arg(at.timestamp_millis())
            .arg(self.node())
            .arg(channel.as_str())
            .arg(self.inner.keys.bus(channel));
        let keys = self.inner.keys.membership(channel).into();
        let json: String = self
            .call(&self.inner.scripts.add_recipient, channel, keys, args)
            .await?;
        membership_from(channel, &json)
    }

    async fn remove_recipient(
        &self,
        channel: &ChannelName,
        device: &DeviceId,
    ) -> Result<Option<Membership>, StoreError> {
        let args = Args::default()
            .arg(device.as_str())
            .arg(self.node())
            .arg(channel.as_str())
            .arg(self.inner.keys.bus(channel));
        let keys = self.inner.keys.membership(channel).into();
        let json: Option<String> = self
            .call(&self.inner.scripts.remove_recipient, channel, keys, args)
            .await?;
        json.map(|json| membership_from(channel, &json)).transpose()
    }

    async fn memberships(&self, channel: &ChannelName) -> Result<Vec<Membership>, StoreError> {
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg(self.inner.keys.key(channel, "mem"))
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
            .arg(self.inner.keys.channels())
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
            .arg(self.inner.keys.key(channel, "plog"))
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
            .arg(self.inner.keys.key(channel, "pres"))
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
        for member in self.inner.nodes.other_members().await? {
            for (device, n) in self.inner.nodes.node_presence(&member, channel).await? {
                *total.entry(device).or_default() += n;
            }
        }
        Ok(Some(total))
    }

    async fn adopt(&self, high_water: u64) -> Result<u64, StoreError> {
        let (id, since, floor, now) = self.run_adopt(high_water, true).await?;
        if since > 0 && now < since.saturating_add(ADOPT_QUIET_MS) {
            return Err(StoreError::Changed {
                detail: "the other nodes sharing the store may still raise its floor".to_owned(),
            });
        }
        *self
            .inner
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Identity {
            id: id.into(),
            floor,
        });
        Ok(floor)
    }

    async fn reseed(&self, channel: &ChannelName, floor: u64) -> Result<(), StoreError> {
        let identity = self.identity().await?;
        let keys = ["seq", "sid", "lost"]
            .map(|what| self.inner.keys.key(channel, what))
            .into();
        let args = Args::default().arg(&*identity.id).arg(floor);
        let _: i64 = self
            .call(&self.inner.scripts.reseed, channel, keys, args)
            .await?;
        self.saw(channel, floor);
        // Listed again: the set of channels went with the store.
        self.inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(channel);
        self.remember(channel).await
    }

    fn channel_unloaded(&self, channel: &ChannelName) {
        // What this node saw of an idle channel was replicated long ago (a failover loses the
        // last moment's writes, not a minute's): past that, the store's identity is what tells
        // a store that changed, and the node keeps nothing per channel it no longer uses.
        let mut heads = self.inner.heads.lock().unwrap_or_else(|e| e.into_inner());
        heads.remove(channel);
        // A burst of channels gone idle leaves a large table behind.
        if heads.capacity() > 2 * heads.len() + 64 {
            heads.shrink_to_fit();
        }
        drop(heads);
        // Listed again (one `SADD`) if it is written to again.
        let mut known = self.inner.known.lock().unwrap_or_else(|e| e.into_inner());
        known.remove(channel);
        if known.capacity() > 2 * known.len() + 64 {
            known.shrink_to_fit();
        }
    }

    async fn lost(&self, channel: &ChannelName) -> Result<Vec<RangeInclusive<u64>>, StoreError> {
        let ranges: Vec<String> = redis::cmd("LRANGE")
            .arg(self.inner.keys.key(channel, "lost"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection())
            .await
            .map_err(StoreError::backend)?;
        ranges
            .iter()
            .map(|range| {
                let (first, last) = range.split_once('-').ok_or_else(|| bad("lost ids"))?;
                match (first.parse::<u64>(), last.parse::<u64>()) {
                    (Ok(first), Ok(last)) => Ok(first..=last),
                    _ => Err(bad("lost ids")),
                }
            })
            .collect()
    }

    async fn probe(&self) -> Result<(), StoreError> {
        if !self.inner.version_checked.load(Ordering::Relaxed) {
            // The bus is sharded Pub/Sub, Redis 7.0's: say so rather than fail every push.
            let spublish: Vec<Value> = redis::cmd("COMMAND")
                .arg("INFO")
                .arg("SPUBLISH")
                .query_async(&mut self.connection())
                .await
                .map_err(failure)?;
            if matches!(spublish.first(), None | Some(Value::Nil)) {
                return Err(StoreError::Incompatible(format!(
                    "{}: Redis 7.0 or later is needed (sharded Pub/Sub, SPUBLISH)",
                    self.shown()
                )));
            }
            self.inner.version_checked.store(true, Ordering::Relaxed);
        }
        let key = self.inner.keys.probe();
        let (_, read): ((), Option<String>) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(self.node())
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
        let keys = ["devs", "dev"].map(|what| self.inner.keys.key(channel, what));
        let args = Args::default()
            .arg(after.map_or("", |d| d.as_str()))
            .arg(limit);
        let pairs: Vec<String> = self
            .call(&self.inner.scripts.devices_page, channel, keys.into(), args)
            .await?;
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
