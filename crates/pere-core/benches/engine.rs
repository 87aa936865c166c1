//! Engine benchmarks without HTTP: hub fan-out, store append (memory, SQLite normal and full)
//! and replay. A plain `harness = false` program on stable Rust; each figure is the median of
//! five runs, and the clock stops only once every subscriber has drained (as a real fan-out
//! would have to).
//!
//! Run: `cargo bench -p pere-core --bench engine`

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
    let hub = Hub::new(
        MemoryStore::new(Retention {
            max_events: 10_000,
            max_age: None,
        }),
        config,
    );
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
        },
        recent_events: 0,
        ..SqliteOptions::default()
    };
    SqliteStore::open(dir, options).unwrap()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for subscribers in [100, 1000, 10_000] {
            let events = (200_000 / subscribers as u64).max(10);
            let mut runs = Vec::new();
            for _ in 0..5 {
                runs.push(fan_out(subscribers, events).await);
            }
            let per = median(runs).as_nanos() as f64 / (subscribers as f64 * events as f64);
            println!("hub fan-out, {subscribers:>6} subscribers: {per:>8.1} ns per delivery");
        }
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
    });
}
