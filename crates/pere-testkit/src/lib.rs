//! What PERE's tests share across crates, so each crate's tests stay inside it and one copy
//! serves them all: [`RedisServer`], a private `redis-server` on a free loopback port,
//! [`RedisCluster`], a private Redis Cluster, and [`RedisSentinel`], a primary with a replica
//! and a sentinel, used by the Redis store's tests in `pere-core` and by the end-to-end harness.
//!
//! Layout:
//! - [`redis_server`]: start, stop, restart and ask a private `redis-server`, plain or TLS;
//! - [`redis_cluster`]: start a Redis Cluster of a few primaries, plain or TLS, and move its
//!   slots;
//! - [`redis_sentinel`]: start a primary, its replica and a sentinel; kill the primary and wait
//!   for the failover.
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod redis_cluster;
pub mod redis_sentinel;
pub mod redis_server;

pub use redis_cluster::RedisCluster;
pub use redis_sentinel::RedisSentinel;
pub use redis_server::RedisServer;
