//! Measures what touching many fresh channels costs in resident memory, through the hub and no
//! HTTP: each channel gets its receipts and presence followed (and let go) and one small push,
//! as an anonymous client can do. Prints RSS before and after, per channel, on the memory and
//! SQLite stores, the process's CPU while idle, and RSS again once the hub has unloaded the
//! idle channels.
//!
//! `cargo run --release -p pere-core --example memory_per_channel -- [channels] [idle seconds]`

use std::time::{Duration, Instant};

use pere_core::store::{SqliteOptions, SqliteStore};
use pere_core::{ChannelName, Hub, HubConfig, MemoryStore, NewEvent, Store};

/// Resident set size of this process, in KiB, from `/proc`.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// User and system CPU time of this process, in clock ticks, from `/proc`.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    field(11) + field(12)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    100.0
}

async fn measure<S: Store>(label: &str, store: S, channels: usize, idle: Duration) {
    let hub = Hub::new(
        store,
        HubConfig {
            idle_channel: idle,
            ..HubConfig::default()
        },
    );
    // Warm up allocator and code paths on a few channels first.
    for i in 0..50 {
        touch(&hub, &format!("warm{i}")).await;
    }
    let before = rss_kib();
    let started = Instant::now();
    for i in 0..channels {
        touch(&hub, &format!("{label}{i}")).await;
    }
    let after = rss_kib();
    println!(
        "{label}: {channels} channels in {:?}: RSS {before} -> {after} KiB, {:.2} KiB per channel, {} loaded",
        started.elapsed(),
        after.saturating_sub(before) as f64 / channels as f64,
        hub.loaded_channels()
    );
    let (cpu, wall) = (cpu_ticks(), Instant::now());
    tokio::time::sleep(idle + idle / 2).await;
    let used = (cpu_ticks() - cpu) as f64 / ticks_per_second() / wall.elapsed().as_secs_f64();
    println!(
        "{label}: after {:?} idle: RSS {} KiB, {} loaded, CPU while idle {:.1}% of a core",
        idle + idle / 2,
        rss_kib(),
        hub.loaded_channels(),
        used * 100.0
    );
}

async fn touch<S: Store>(hub: &std::sync::Arc<Hub<S>>, name: &str) {
    let channel = ChannelName::new(name).unwrap();
    drop(hub.follow_receipts(&channel, None).await.unwrap());
    drop(hub.follow_presence(&channel, 0).await.unwrap());
    let event = NewEvent {
        publisher: None,
        event_type: None,
        body: "hello".to_owned(),
        idempotency_key: None,
    };
    hub.publish(&channel, event).await.unwrap();
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let channels = args.next().and_then(|n| n.parse().ok()).unwrap_or(6000);
    let idle = Duration::from_secs(args.next().and_then(|n| n.parse().ok()).unwrap_or(2));
    measure("memory", MemoryStore::default(), channels, idle).await;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    measure("sqlite", store.clone(), channels, idle).await;
    store.close().await;
}
