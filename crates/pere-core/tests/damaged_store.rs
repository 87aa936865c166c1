//! The hub over a damaged SQLite store: a feed resuming across events that cannot be read gets
//! one gap per run of them, in its place, and goes on; catching up passes over them.

#![cfg(feature = "sqlite")]

use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;

use pere_core::store::sqlite::DB_FILE;
use pere_core::store::{SqliteOptions, SqliteStore, Store as _};
use pere_core::{ChannelName, FeedItem, Hub, HubConfig, NewEvent, Retention, SubscribeRequest};

fn ch() -> ChannelName {
    ChannelName::new("C").unwrap()
}

fn text(body: &str) -> NewEvent {
    NewEvent {
        publisher: None,
        event_type: None,
        body: body.to_owned(),
        idempotency_key: None,
    }
}

/// A store that reads every event from disk (no recent-event cache).
fn open(dir: &Path) -> SqliteStore {
    let options = SqliteOptions {
        retention: Retention {
            max_events: 1000,
            max_age: None,
            idempotency_window: None,
        },
        recent_events: 0,
        recent_bytes: 0,
        ..SqliteOptions::default()
    };
    SqliteStore::open(dir, options).unwrap()
}

/// Events 1..=count on channel C, the store closed.
async fn stored(dir: &Path, count: u64) {
    let store = open(dir);
    for i in 1..=count {
        store.append(&ch(), text(&format!("e{i}"))).await.unwrap();
    }
    store.close().await;
}

/// Damages rows behind the store's back: their bodies changed, their checksums not.
fn change_bodies(dir: &Path, ids: RangeInclusive<u64>) {
    let conn = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
    conn.execute(
        "UPDATE events SET body = body || '!' WHERE id BETWEEN ?1 AND ?2",
        [ids.start(), ids.end()],
    )
    .unwrap();
}

/// The next item: an event's id, or a gap.
async fn next(feed: &mut pere_core::Subscription<SqliteStore>) -> String {
    match feed.next().await.unwrap().unwrap() {
        FeedItem::Event(event) => event.id.to_string(),
        FeedItem::Gap { from, to } => format!("gap {from}-{to}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_feed_resuming_across_damage_gets_one_gap_per_run_even_across_pages() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path(), 12).await;
    // A run across the first page's end (pages of 4 after id 1: 2-5, 6-9, 10-12), and one id.
    change_bodies(dir.path(), 3..=6);
    change_bodies(dir.path(), 9..=9);
    let config = HubConfig {
        replay_page: 4,
        ..HubConfig::default()
    };
    let hub: Arc<Hub<SqliteStore>> = Hub::new(open(dir.path()), config);
    let request = SubscribeRequest {
        last_event_id: Some(1),
        ..SubscribeRequest::default()
    };
    let mut feed = hub.subscribe(&ch(), request).await.unwrap();
    let mut items = Vec::new();
    for _ in 0..7 {
        items.push(next(&mut feed).await);
    }
    assert_eq!(items, ["2", "gap 3-6", "7", "8", "gap 9-9", "10", "11"]);
    assert_eq!(next(&mut feed).await, "12");
    // Live from there: a new event comes straight on.
    hub.publish(&ch(), text("live")).await.unwrap();
    assert_eq!(next(&mut feed).await, "13");
    assert_eq!(hub.store().damage().events, 5);
}

#[tokio::test]
async fn catching_up_passes_over_what_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path(), 2).await;
    let store = open(dir.path());
    let hub = Hub::new(store.clone(), HubConfig::default());
    let mut feed = hub
        .subscribe(&ch(), SubscribeRequest::default())
        .await
        .unwrap();
    assert_eq!(next(&mut feed).await, "1");
    assert_eq!(next(&mut feed).await, "2");
    // Recorded behind the hub's back (as another node would), one of them then damaged.
    for body in ["e3", "e4", "e5"] {
        store.append(&ch(), text(body)).await.unwrap();
    }
    change_bodies(dir.path(), 4..=4);
    assert_eq!(hub.catch_up().await.unwrap(), 2);
    // Live subscribers get what can be read, in order; the sequencer is not held back.
    assert_eq!(next(&mut feed).await, "3");
    assert_eq!(next(&mut feed).await, "5");
    assert_eq!(store.damage().events, 1);
}
