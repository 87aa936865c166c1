//! Engine benchmarks without HTTP: hub fan-out, store append (memory, SQLite normal and full)
//! and replay. A plain `harness = false` program on stable Rust; each figure is the median of
//! five runs, and the clock stops only once every subscriber has drained (as a real fan-out
//! would have to).
//!
//! Run: `cargo bench -p pere-core --bench engine`, or name the groups to run after `--`:
//! `fanout`, `append`, `replay` (the three run when none is named) and `upgrade` (the time
//! the schema v7 migration takes to give 100,000 stored events their checksums).

use std::time::{Duration, Instant};

use pere_core::store::{Durability, SqliteOptions, SqliteStore};
use pere_core::{
    ChannelName, DeviceId, FeedItem, Hub, HubConfig, MemoryStore, NewEvent, Retention, Store,
    SubscribeRequest,
};

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn event(body: &str) -> NewEvent {
    NewEvent {
        publisher: None,
        event_type: None,
        body: body.to_owned(),
        idempotency_key: None,
    }
}

async fn fan_out(subscribers: usize, events: u64) -> Duration {
    let config = HubConfig {
        subscriber_buffer: events as usize + 1,
        ..HubConfig::default()
    };
    let retention = Retention {
        max_events: 10_000,
        max_age: None,
        idempotency_window: None,
    };
    let hub = Hub::new(MemoryStore::new(retention), config);
    let channel = ChannelName::new("bench").unwrap();
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let request = SubscribeRequest {
            device: Some(DeviceId::new(&format!("D{i}")).unwrap()),
            ..Default::default()
        };
        subs.push(hub.subscribe(&channel, request).await.unwrap());
    }
    let start = Instant::now();
    for _ in 0..events {
        hub.publish(
            &channel,
            event(r#"{"t":0,"seq":0,"data":"jvg2dchijlkob1afuauaohtbzzhd7ayp"}"#),
        )
        .await
        .unwrap();
    }
    for sub in &mut subs {
        for _ in 0..events {
            match sub.next().await {
                Some(Ok(FeedItem::Event(_))) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    start.elapsed()
}

async fn appends<S: Store>(store: S, writers: usize, each: usize) -> Duration {
    let channel = ChannelName::new("bench").unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (store, channel) = (store.clone(), channel.clone());
            tokio::spawn(async move {
                for _ in 0..each {
                    store.append(&channel, event("{\"n\":1}")).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

async fn replay<S: Store>(store: S, events: usize) -> Duration {
    let channel = ChannelName::new("bench").unwrap();
    for _ in 0..events {
        store.append(&channel, event("{\"n\":1}")).await.unwrap();
    }
    let start = Instant::now();
    let mut after = 0;
    loop {
        let page = store.read(&channel, after, 256).await.unwrap();
        let Some(last) = page.events.last() else {
            break;
        };
        after = last.id;
    }
    start.elapsed()
}

fn sqlite(dir: &std::path::Path, durability: Durability) -> SqliteStore {
    let options = SqliteOptions {
        durability,
        retention: Retention {
            max_events: 1_000_000,
            max_age: None,
            idempotency_window: None,
        },
        recent_events: 0,
        ..SqliteOptions::default()
    };
    SqliteStore::open(dir, options).unwrap()
}

/// How long opening a store takes when its 100,000 events were stored by schema v6 (without
/// checksums): the v7 migration computes them all, in one transaction.
fn upgrade() -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = sqlite(dir.path(), Durability::Normal);
        let channel = ChannelName::new("bench").unwrap();
        for _ in 0..100 {
            let batch = (0..1000)
                .map(|_| event(r#"{"t":0,"seq":0,"data":"jvg2dchijlkob1afuauaohtbzzhd7ayp"}"#))
                .collect();
            store.append_batch(&channel, batch).await.unwrap();
        }
        store.close().await;
    });
    drop(runtime);
    let conn = rusqlite::Connection::open(dir.path().join("pere.db")).unwrap();
    conn.execute_batch(
        "ALTER TABLE events DROP COLUMN checksum; DROP TABLE damaged_events; DROP TABLE store; DROP TABLE lost;
        DROP INDEX channels_by_oldest; ALTER TABLE channels DROP COLUMN oldest;
        DROP INDEX receipts_by_device_key;
        CREATE UNIQUE INDEX receipts_by_key ON receipts (channel, idempotency_key) WHERE idempotency_key IS NOT NULL;
        PRAGMA user_version = 6;",
    )
    .unwrap();
    drop(conn);
    let start = Instant::now();
    let store = sqlite(dir.path(), Durability::Normal);
    let took = start.elapsed();
    drop(store);
    took
}

fn main() {
    // Groups named after `--` (cargo passes `--bench` itself).
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |group: &str| {
        if named.is_empty() {
            group != "upgrade"
        } else {
            named.iter().any(|n| n == group)
        }
    };
    if wanted("upgrade") {
        let runs: Vec<Duration> = (0..3).map(|_| upgrade()).collect();
        println!(
            "upgrade to v7, 100,000 events:           {:>8.0} ms",
            median(runs).as_secs_f64() * 1000.0
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if wanted("fanout") {
            fan_outs().await;
        }
        if wanted("append") {
            append_all().await;
        }
        if wanted("replay") {
            replays().await;
        }
    });
}

async fn fan_outs() {
    for subscribers in [100, 1000, 10_000] {
        let events = (200_000 / subscribers as u64).max(10);
        let mut runs = Vec::new();
        for _ in 0..5 {
            runs.push(fan_out(subscribers, events).await);
        }
        let per = median(runs).as_nanos() as f64 / (subscribers as f64 * events as f64);
        println!("hub fan-out, {subscribers:>6} subscribers: {per:>8.1} ns per delivery");
    }
}

async fn append_all() {
    let (writers, each) = (50, 400);
    let total = (writers * each) as f64;
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(appends(MemoryStore::new(Retention::default()), writers, each).await);
    }
    println!(
        "append, memory, {writers} writers:        {:>8.0} appends/s",
        total / median(runs).as_secs_f64()
    );
    for (name, durability) in [("normal", Durability::Normal), ("full", Durability::Full)] {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            runs.push(appends(sqlite(dir.path(), durability), writers, each).await);
        }
        println!(
            "append, sqlite {name:<6}, {writers} writers: {:>8.0} appends/s",
            total / median(runs).as_secs_f64()
        );
    }
}

async fn replays() {
    let mut runs = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        runs.push(replay(sqlite(dir.path(), Durability::Normal), 10_000).await);
    }
    println!(
        "replay, sqlite, 10,000 events from disk: {:>8.0} events/s",
        10_000.0 / median(runs).as_secs_f64()
    );
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(replay(MemoryStore::new(Retention::default()), 10_000).await);
    }
    println!(
        "replay, memory, 10,000 events:           {:>8.0} events/s",
        10_000.0 / median(runs).as_secs_f64()
    );
}
