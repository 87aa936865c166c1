//! Idle channels leave memory: what the store keeps of a channel the hub unloaded, and of every
//! channel after a restart, is nothing; read back from the database, a channel continues with
//! the right ids and retention.

use std::time::Duration;

use super::*;
use crate::store::conformance::{body, ch};
use crate::store::Retention;

/// Keeps two events per channel, for a day.
const TWO_A_DAY: Retention = Retention {
    max_events: 2,
    max_age: Some(Duration::from_secs(86_400)),
    idempotency_window: None,
};

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(
        dir,
        SqliteOptions {
            retention: TWO_A_DAY,
            ..SqliteOptions::default()
        },
    )
    .unwrap()
}

fn in_memory(store: &SqliteStore) -> Vec<String> {
    store.channels_in_memory()
}

/// Ids of a channel's retained events, with its oldest retained id and head.
async fn check_retained(store: &SqliteStore, channel: &str) -> (Vec<u64>, u64, u64) {
    let page = store.read(&ch(channel), 0, 100).await.unwrap();
    let ids = page.events.iter().map(|e| e.id).collect();
    (ids, page.first_retained, page.head)
}

async fn settle(store: &SqliteStore) {
    store.settle().await;
}

#[tokio::test]
async fn an_unloaded_channel_leaves_memory_and_continues_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for text in ["1", "2", "3"] {
        store.append(&ch("C"), body(text)).await.unwrap();
    }
    store.append(&ch("D"), body("d")).await.unwrap();
    assert_eq!(in_memory(&store), ["C", "D"]);

    store.channel_unloaded(&ch("C"));
    settle(&store).await;
    assert_eq!(
        in_memory(&store),
        ["D"],
        "C's state and cached events are dropped"
    );
    assert!(!store
        .inner
        .shared
        .event_keys()
        .channels
        .contains_key(&ch("C")));

    // Read back from the database: the same head, retention and next id.
    assert_eq!(store.head(&ch("C")).await.unwrap(), 3);
    assert_eq!(check_retained(&store, "C").await, (vec![2, 3], 2, 3));
    assert_eq!(store.recent(&ch("C"), 10).await.unwrap().len(), 2);
    assert!(store.event(&ch("C"), 1).await.unwrap().is_none(), "pruned");
    assert_eq!(store.event(&ch("C"), 3).await.unwrap().unwrap().body, "3");
    assert_eq!(in_memory(&store), ["D"], "reads do not load it");
    assert_eq!(store.append(&ch("C"), body("4")).await.unwrap().event.id, 4);
    assert_eq!(check_retained(&store, "C").await, (vec![3, 4], 3, 4));
    assert_eq!(in_memory(&store), ["C", "D"], "an append does");
    // A channel never written to, told as well, stays unknown.
    store.channel_unloaded(&ch("Nobody"));
    settle(&store).await;
    assert_eq!(store.head(&ch("Nobody")).await.unwrap(), 0);
}

#[tokio::test]
async fn a_restart_loads_no_channel_and_each_continues_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for i in 0..50 {
            for text in ["1", "2", "3"] {
                store
                    .append(&ch(&format!("C{i}")), body(text))
                    .await
                    .unwrap();
            }
        }
        store.close().await;
    }
    let store = open(dir.path());
    settle(&store).await;
    assert_eq!(
        in_memory(&store),
        Vec::<String>::new(),
        "nothing read at open"
    );
    assert_eq!(store.head(&ch("C7")).await.unwrap(), 3);
    assert_eq!(check_retained(&store, "C7").await, (vec![2, 3], 2, 3));
    assert_eq!(
        store.append(&ch("C7"), body("4")).await.unwrap().event.id,
        4
    );
    assert_eq!(check_retained(&store, "C7").await, (vec![3, 4], 3, 4));
    assert_eq!(store.lost(&ch("C7")).await.unwrap(), vec![]);
    // A receipt for a channel not in memory is checked against its head in the database.
    let receipt = |id| Receipt {
        seq: 0,
        channel: ch("C9"),
        event_id: id,
        device: crate::store::conformance::dev("H1"),
        status: "received".into(),
        time: Utc::now(),
    };
    assert!(matches!(
        store.record_receipt(receipt(4)).await,
        Err(StoreError::UnknownEvent { id: 4 })
    ));
    store.record_receipt(receipt(3)).await.unwrap();
    assert_eq!(store.receipts(&ch("C9"), 3).await.unwrap().len(), 1);
    assert_eq!(
        store.receipts(&ch("C9"), 1).await.unwrap(),
        vec![],
        "pruned"
    );
    assert_eq!(in_memory(&store), ["C7"]);
}

#[tokio::test]
async fn an_idle_channel_expires_by_age_with_nothing_of_it_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        retention: Retention {
            max_age: Some(Duration::from_millis(300)),
            ..TWO_A_DAY
        },
        prune_interval: Duration::from_millis(10),
        ..SqliteOptions::default()
    };
    {
        let store = SqliteStore::open(dir.path(), options).unwrap();
        store.append(&ch("Old"), body("x")).await.unwrap();
        store.close().await;
    }
    // Reopened: the age index is in the database, and the writer wakes for it.
    let store = SqliteStore::open(dir.path(), options).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check_retained(&store, "Old").await.0.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the expired event was pruned");
    assert_eq!(check_retained(&store, "Old").await, (vec![], 2, 1));
    assert_eq!(
        store.append(&ch("Old"), body("y")).await.unwrap().event.id,
        2
    );
}
