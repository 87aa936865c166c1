//! The Redis store: history, receipts, device records and memberships in a Redis that several
//! PERE nodes share, so every node gives out the same ids and sees the same ledger; and the
//! Redis side of the bus that links those nodes.
//!
//! The Redis is one server (`redis://`), a Redis Cluster (`redis+cluster://`, from any of its
//! nodes) or the primary that Sentinel names (`redis+sentinel://`, followed across failovers);
//! see [`Deployment`]. Redis 7.0 or later: the bus is sharded Pub/Sub.
//!
//! Each channel's keys share one hash tag (`{PREFIX:ch:NAME}`), so a channel lives in one slot
//! of a Redis Cluster and its scripts stay atomic there, even while the slot moves (see the
//! `lua` room and the `:slot` key). Events are a Redis Stream whose entry ids are the event
//! ids (`ID-0`); the channel's id sequence is a counter beside it. Every change other nodes must
//! hear of (an event, a receipt, a membership) is published as a notice on the channel's own
//! shard channel, in its slot, by the same script that records it (`SPUBLISH`); each node hears
//! the channels its hub has loaded (see [`Bus`]). So is presence: each node's count of streams
//! per device of a channel, the totals over all nodes, and the channel's presence changes,
//! numbered once for the cluster. The few keys that are not a channel's (the set of channel
//! names, the nodes, the probe) are each one key, written by commands of their own: no command
//! spans two slots.
//!
//! The store knows who it is (`P:store`, made by the first node that writes): every script that
//! hands out ids or takes receipts checks that the store is the one the node knows and holds
//! what the node saw of the channel, and changes nothing when not ([`StoreError::Changed`](crate::StoreError::Changed));
//! every node also checks the identity every [`IDENTITY_CHECK`]. The nodes then adopt the
//! store: each raises its floor with the ids it handed out, and none writes until
//! `ADOPT_QUIET_MS` after the first noticed, so that ids continue above every id any live node
//! handed out (see [`Store::adopt`](crate::store::Store::adopt)).
//!
//! With [`RedisOptions::wait_replicas`], a push or receipt is recorded and then confirmed by
//! that many replicas (`WAIT`, in the same pipeline) before it counts; a confirmation that does
//! not come in [`WAIT_TIMEOUT`] is [`StoreError::Unreplicated`](crate::StoreError).
//!
//! A `rediss://` URL (`rediss+cluster://`) connects over TLS (rustls), trusting the system's
//! CAs or those of [`RedisTls::ca`], and presenting [`RedisTls::client`] to a server that asks
//! for a client certificate. Every connection, the bus's included, goes the same way.
//!
//! # Layout
//! Each room uses only those above it in this list:
//! - `connection`: the options, the deployment a URL names (TLS included), the shared
//!   reconnecting connection (Sentinel's primary followed), the bus's connections, and Redis
//!   errors as [`StoreError`](crate::StoreError)s;
//! - `keys`: the names of the keys and of the bus channels;
//! - `decode`: Redis answers into events, receipts, memberships, device records, presence;
//! - `lua`: the scripts, one per change that must be atomic;
//! - `script`: running them, and the writes whose replicas must confirm them;
//! - `nodes`: this node's id, its registration and its share of presence (scripts the bus calls);
//! - `store`: [`RedisStore`], the [`Store`](crate::store::Store);
//! - `bus`: [`Bus`], the channels this node hears, the notices heard on them ([`BusNotice`])
//!   and this node's registration ([`NodeRegistration`]); it knows nothing of the hub.
//!
//! # Keys
//! All of a channel's keys, and its bus, share the hash tag `{PREFIX:ch:NAME}`, so a channel is
//! one slot of a Redis Cluster and its scripts stay atomic there; per-event keys are built
//! inside the scripts from that tag. A node's keys share `{PREFIX:node:N}`. `P` is the prefix (`--redis-prefix`), `C` a channel, `N` a node's name in
//! `P:nodes` (its id and how many times its registration lapsed, `ID.n`).
//!
//! | key | type | holds | lifetime |
//! | --- | --- | --- | --- |
//! | `{P:ch:C}:seq` | string | last event id | forever (ids are never reused) |
//! | `{P:ch:C}:ev` | stream | events, entry id `ID-0`; fields `t` ms, `b` body, `p`, `y`, `k` | trimmed at append by `--retention-events` and `--retention-age` |
//! | `{P:ch:C}:keys` | hash | idempotency key in its publisher's scope (`PUBLISHER/KEY`, `/KEY` when anonymous) → id | a key leaves with its event; ignored past `--idempotency-window` |
//! | `{P:ch:C}:rc:ID` | list | receipts of a retained event (JSON) | deleted with the event |
//! | `{P:ch:C}:ra:ID` | set | devices that acknowledged it (`unacknowledged`) | deleted with the event |
//! | `{P:ch:C}:rseq` | string | last receipt `seq` | forever |
//! | `{P:ch:C}:rlog` | stream | the receipt stream, entry id `SEQ-0` | the newest `--retention-events` |
//! | `{P:ch:C}:dev` | hash | device → record (JSON) | forever, like SQLite's |
//! | `{P:ch:C}:devs` | sorted set | device ids, for pages in id order | forever |
//! | `{P:ch:C}:mem`, `:memcur` | list, hash | memberships (JSON); device → index of its current one | forever |
//! | `{P:ch:C}:wh:ID` | string | the node that reports the event | 2 × receipt timeout + 60 s |
//! | `{P:ch:C}:rk:DEVICE/KEY` | string | a receipt's idempotency key, in its device's scope → its `seq` | `--idempotency-window`; deleted with its receipt |
//! | `{P:ch:C}:pres:N` | hash | device → streams on node N | until N's last stream closes or a sweep |
//! | `{P:ch:C}:pres` | hash | device → streams on all nodes (online devices) | while the device is online |
//! | `{P:ch:C}:pseq`, `:plog` | string, stream | last presence `seq`; changes, entry id `SEQ-0`, fields `d`, `o`, `t` | forever; the newest 1,000 |
//! | `{P:ch:C}:sid` | string | the store id the channel was written under | forever |
//! | `{P:ch:C}:lost` | list | id ranges `A-B` the channel skipped when the store changed | forever |
//! | `{P:ch:C}:slot` | none | never written: every script of the channel declares it, so none runs while the slot moves | — |
//! | `{P:ch:C}:bus` | shard channel | the channel's notices (`SPUBLISH`) | — |
//! | `P:channels` | set | channel names (`SADD` of its own, once per node and channel) | forever |
//! | `{P:node:N}:conns` | hash | a node's open streams per channel | `--redis-node-ttl` |
//! | `{P:node:N}:chans` | set | channels with a `:pres:N` hash | a channel leaves when N's share of it empties, or in a sweep |
//! | `P:nodes` | sorted set | node names (`ID.n`) by expiry | until swept |
//! | `P:store` | hash | the store's `id`, its `floor`, `since` (ms) it was made again after a change | forever |
//! | `P:probe` | string | `/readyz`'s write | 60 s |
//! | `P:confirmed` | string | what a write waiting for its replicas writes last (one server or Sentinel only) | 60 s |

mod bus;
mod connection;
mod decode;
mod keys;
mod lua;
mod nodes;
mod script;
mod store;
#[cfg(test)]
mod tests;

pub use bus::{Bus, BusListener, BusNotice, NodeRegistration, NODE_TTL};
pub use connection::{redacted, Deployment, RedisClientCert, RedisOptions, RedisTls};
pub use script::WAIT_TIMEOUT;
pub use store::{RedisStore, IDENTITY_CHECK};
