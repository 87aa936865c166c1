//! The SQLite store's tests: the store conformance suite under each setting, and what only this
//! store does (its caches and keys, reopening, migrations, batching, pruning steps). The device
//! book and write-back are in `device_tests`, damage in `damage_tests`, idle channels in
//! `idle_tests`.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;

use pere_proto::event::now;
use pere_proto::receipt::DeviceOp;
use rusqlite::OptionalExtension;

use super::books::{cached_size, key_hash, KEY_SWEEP_MIN};
use super::prune::PRUNE_CHUNK;
use super::schema::{MIGRATIONS, SCHEMA_VERSION};
use super::*;
use crate::store::conformance::{self, body, ch, dev, ROOMY};
use crate::store::{ReceiptLine, Retention};

pub(super) fn open(dir: &Path, retention: Retention) -> SqliteStore {
    SqliteStore::open(
        dir,
        SqliteOptions {
            retention,
            ..SqliteOptions::default()
        },
    )
    .unwrap()
}

async fn check_conformance(options: SqliteOptions) {
    let root = tempfile::tempdir().unwrap();
    let stores = AtomicUsize::new(0);
    conformance::run_all(|retention| {
        let dir = root
            .path()
            .join(format!("store{}", stores.fetch_add(1, Ordering::Relaxed)));
        async move {
            SqliteStore::open(
                &dir,
                SqliteOptions {
                    retention,
                    ..options
                },
            )
            .unwrap()
        }
    })
    .await;
}

/// Ids of a channel's retained events, as a reader sees them (none of them damaged).
async fn check_ids(store: &SqliteStore, channel: &str) -> Vec<u64> {
    let page = store.read(&ch(channel), 0, 10_000).await.unwrap();
    assert_eq!(page.unreadable, Vec::<u64>::new(), "damaged in {channel}");
    page.events.iter().map(|e| e.id).collect()
}

/// Gives every event row the checksum of what it holds now, as the v7 migration does: for
/// tests that change rows behind the store's back on purpose.
pub(super) fn sum_again(conn: &Connection) {
    checksum::register(conn).unwrap();
    conn.execute_batch(
        "UPDATE events SET checksum = \
         pere_event_checksum(channel, id, time, event_type, publisher, idempotency_key, body)",
    )
    .unwrap();
}

fn check_open_fails(dir: &Path) -> StoreError {
    match SqliteStore::open(dir, SqliteOptions::default()) {
        Ok(store) => panic!("opened {store:?}"),
        Err(err) => err,
    }
}

#[tokio::test]
async fn the_probe_fails_once_the_store_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    store.probe().await.unwrap();
    store.close().await;
    assert!(store.probe().await.is_err(), "a closed writer is not ready");
}

#[tokio::test]
async fn conformance_suite_normal() {
    check_conformance(SqliteOptions {
        durability: Durability::Normal,
        ..SqliteOptions::default()
    })
    .await;
}

#[tokio::test]
async fn conformance_suite_full() {
    check_conformance(SqliteOptions {
        durability: Durability::Full,
        ..SqliteOptions::default()
    })
    .await;
}

#[tokio::test]
async fn conformance_suite_without_memory_cache() {
    // Every read goes to disk.
    check_conformance(SqliteOptions {
        recent_events: 0,
        ..SqliteOptions::default()
    })
    .await;
}

#[tokio::test]
async fn conformance_suite_with_a_tiny_memory_cache() {
    // Some reads from memory, the rest from disk.
    check_conformance(SqliteOptions {
        recent_bytes: 16 << 10,
        ..SqliteOptions::default()
    })
    .await;
}

/// Cached bytes per channel, as the store accounts them, and their total.
fn check_cached(store: &SqliteStore) -> (HashMap<String, (usize, usize)>, usize) {
    let channels = store.inner.shared.channels.read().unwrap();
    let per: HashMap<String, (usize, usize)> = channels
        .iter()
        .map(|(name, meta)| {
            assert_eq!(
                meta.recent_bytes,
                meta.recent.iter().map(|e| cached_size(e)).sum::<usize>()
            );
            (name.to_string(), (meta.recent.len(), meta.recent_bytes))
        })
        .collect();
    let total = per.values().map(|(_, bytes)| bytes).sum();
    (per, total)
}

#[tokio::test]
async fn the_recent_event_cache_keeps_to_one_byte_budget_across_channels() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 256 << 10;
    let options = SqliteOptions {
        recent_bytes: budget,
        retention: ROOMY,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(dir.path(), options).unwrap();
    let big = "x".repeat(4096);
    for i in 0..20 {
        for _ in 0..5 {
            store
                .append(&ch(&format!("C{i}")), body(&big))
                .await
                .unwrap();
        }
    }
    let (per, total) = check_cached(&store);
    assert!(
        total <= budget,
        "{total} cached bytes over a budget of {budget}"
    );
    assert!(total > budget / 2, "the budget is used: {total}");
    // The channels appended to last keep their tails; the first ones gave theirs up.
    assert_eq!(per["C19"].0, 5);
    assert_eq!(per["C0"].0, 0);
    // Whatever is cached or not, reads give the same events.
    for i in [0, 10, 19] {
        let page = store.read(&ch(&format!("C{i}")), 2, 10).await.unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert!(page.events.iter().all(|e| e.body == big));
    }
    // An event larger than a sixteenth of the budget is not cached, and takes no one's place.
    store
        .append(&ch("Huge"), body(&"y".repeat(budget)))
        .await
        .unwrap();
    let (per, after) = check_cached(&store);
    assert_eq!((per["Huge"].0, after), (0, total));
    assert_eq!(
        store
            .event(&ch("Huge"), 1)
            .await
            .unwrap()
            .unwrap()
            .body
            .len(),
        budget
    );
}

#[tokio::test]
async fn reopen_keeps_everything_and_the_sequence_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (c, h1) = (ch("C"), dev("H1"));
    let (sent, receipt, record, membership) = {
        let store = open(dir.path(), ROOMY);
        let mut sent = Vec::new();
        for i in 1..=3 {
            sent.push(
                store
                    .append(&c, body(&format!("e{i}")))
                    .await
                    .unwrap()
                    .event,
            );
        }
        store
            .touch_device(DeviceTouch {
                channel: c.clone(),
                device: h1.clone(),
                op: DeviceOp::Disconnect,
                at: now(),
                last_event_id: Some("2".to_owned()),
                delivered: 3,
            })
            .await
            .unwrap();
        let receipt = Receipt {
            seq: 0,
            channel: c.clone(),
            event_id: 2,
            device: h1.clone(),
            status: "ok".into(),
            time: now(),
        };
        let (receipt, record) = store.record_receipt(receipt).await.unwrap();
        let membership = store.add_recipient(&c, &h1, now()).await.unwrap();
        (sent, receipt, record, membership)
    };

    let store = open(dir.path(), ROOMY);
    assert_eq!(store.head(&c).await.unwrap(), 3);
    let page = store.read(&c, 0, 10).await.unwrap();
    assert_eq!((page.first_retained, page.head), (1, 3));
    for (read, sent) in page.events.iter().zip(&sent) {
        assert_eq!(
            (read.id, &read.body, read.time, &read.publisher),
            (sent.id, &sent.body, sent.time, &sent.publisher)
        );
        assert_eq!(read.frame(), sent.frame());
    }
    assert_eq!(store.receipts(&c, 2).await.unwrap(), vec![receipt.clone()]);
    assert_eq!(
        store.receipts_after(&c, 0, 10).await.unwrap(),
        vec![receipt.clone()]
    );
    assert_eq!(store.memberships(&c).await.unwrap(), vec![membership]);
    assert_eq!(store.device(&c, &h1).await.unwrap(), Some(record.clone()));
    assert_eq!(store.devices(&c).await.unwrap(), vec![record]);
    assert_eq!(store.channels().await.unwrap(), vec![c.clone()]);
    assert_eq!(store.append(&c, body("e4")).await.unwrap().event.id, 4);
    let later = Receipt {
        seq: 0,
        channel: c.clone(),
        event_id: 4,
        device: h1.clone(),
        status: "ok".into(),
        time: now(),
    };
    assert!(
        store.record_receipt(later).await.unwrap().0.seq > receipt.seq,
        "receipt seqs continue"
    );
}

#[tokio::test]
async fn the_sequence_survives_pruning_everything() {
    let dir = tempfile::tempdir().unwrap();
    let c = ch("C");
    let nothing = Retention {
        max_events: 0,
        max_age: None,
        idempotency_window: None,
    };
    {
        let store = open(dir.path(), nothing);
        for expected in 1..=3 {
            assert_eq!(
                store.append(&c, body("x")).await.unwrap().event.id,
                expected
            );
        }
        let page = store.read(&c, 0, 10).await.unwrap();
        assert!(page.events.is_empty());
        assert_eq!((page.first_retained, page.head), (4, 3));
    }
    let store = open(dir.path(), nothing);
    let page = store.read(&c, 0, 10).await.unwrap();
    assert_eq!((page.first_retained, page.head), (4, 3));
    assert_eq!(store.append(&c, body("x")).await.unwrap().event.id, 4);
}

#[tokio::test]
async fn receipts_are_pruned_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(
        dir.path(),
        Retention {
            max_events: 2,
            max_age: None,
            idempotency_window: None,
        },
    );
    let c = ch("C");
    store.append(&c, body("1")).await.unwrap();
    let receipt = Receipt {
        seq: 0,
        channel: c.clone(),
        event_id: 1,
        device: dev("H1"),
        status: "ok".into(),
        time: now(),
    };
    store.record_receipt(receipt).await.unwrap();
    assert_eq!(store.receipts(&c, 1).await.unwrap().len(), 1);
    store.append(&c, body("2")).await.unwrap();
    store.append(&c, body("3")).await.unwrap();
    assert_eq!(check_ids(&store, "C").await, vec![2, 3]);
    assert!(store.receipts(&c, 1).await.unwrap().is_empty());
    // The device record stays: it is the ledger, not history.
    assert_eq!(
        store
            .device(&c, &dev("H1"))
            .await
            .unwrap()
            .unwrap()
            .last_acked,
        1
    );
}

pub(super) fn ack(channel: &str, id: u64, device: &str) -> Receipt {
    Receipt {
        seq: 0,
        channel: ch(channel),
        event_id: id,
        device: dev(device),
        status: "ok".into(),
        time: now(),
    }
}

/// A device's `(last_acked, receipts)` as the `devices` table holds them.
pub(super) fn stored_device(dir: &Path, device: &str) -> Option<(u64, u64)> {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    conn.query_row(
        "SELECT last_acked, receipts FROM devices WHERE device = ?1",
        [device],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .optional()
    .unwrap()
}

#[tokio::test]
async fn a_version_1_database_is_migrated_without_counting_receipts_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute_batch(MIGRATIONS[0]).unwrap();
    tx.execute_batch(
        "PRAGMA user_version = 1;
            INSERT INTO channels (name, head) VALUES ('C', 1);
            INSERT INTO events (channel, id, time, body) VALUES ('C', 1, 0, 'x');
            INSERT INTO receipts (channel, event_id, device, status, time) VALUES ('C', 1, 'H1', 'ok', 0);
            INSERT INTO devices VALUES ('C', 'H1', 0, 0, 'feedback', '1', 1, 1, 1);",
    )
    .unwrap();
    tx.commit().unwrap();
    drop(conn);

    let store = open(dir.path(), ROOMY);
    let h1 = store.device(&ch("C"), &dev("H1")).await.unwrap().unwrap();
    assert_eq!((h1.last_acked, h1.receipts), (1, 1));
    let (next, record) = store.record_receipt(ack("C", 1, "H1")).await.unwrap();
    assert_eq!((next.seq, record.receipts), (2, 2));
    drop(store);
    assert_eq!(stored_device(dir.path(), "H1"), Some((1, 2)));
}

#[tokio::test]
async fn a_version_2_database_gets_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute_batch(MIGRATIONS[0]).unwrap();
    tx.execute_batch(MIGRATIONS[1]).unwrap();
    tx.execute_batch(
        "PRAGMA user_version = 2;
            INSERT INTO channels (name, head) VALUES ('C', 1);
            INSERT INTO events (channel, id, time, body) VALUES ('C', 1, 0, 'old');",
    )
    .unwrap();
    tx.commit().unwrap();
    drop(conn);

    let store = open(dir.path(), ROOMY);
    let old = store.event(&ch("C"), 1).await.unwrap().unwrap();
    assert_eq!(
        (old.body.as_str(), old.idempotency_key.as_deref()),
        ("old", None)
    );
    let keyed = NewEvent {
        idempotency_key: Some("k".to_owned()),
        ..body("new")
    };
    assert!(store.append(&ch("C"), keyed.clone()).await.unwrap().new);
    let again = store.append(&ch("C"), keyed).await.unwrap();
    assert_eq!((again.new, again.event.id), (false, 2));
    drop(store);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 10);
}

#[tokio::test]
async fn a_version_4_database_keeps_its_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let tx = conn.transaction().unwrap();
    for migration in &MIGRATIONS[..4] {
        tx.execute_batch(migration).unwrap();
    }
    tx.execute("INSERT INTO channels (name, head) VALUES ('C', 1)", [])
        .unwrap();
    tx.execute(
        "INSERT INTO events (channel, id, time, body, idempotency_key) VALUES ('C', 1, ?1, 'first', 'k')",
        [now().timestamp_millis()],
    )
    .unwrap();
    tx.execute_batch("PRAGMA user_version = 4;").unwrap();
    tx.commit().unwrap();
    drop(conn);

    let store = open(dir.path(), ROOMY);
    // Stored without a publisher: the anonymous publisher's key.
    let replay = NewEvent {
        publisher: None,
        idempotency_key: Some("k".to_owned()),
        ..body("first")
    };
    let again = store.append(&ch("C"), replay).await.unwrap();
    assert_eq!(
        (again.new, again.event.id, again.event.body.as_str()),
        (false, 1, "first"),
        "a key stored before the upgrade is found after it"
    );
    let other = NewEvent {
        idempotency_key: Some("k".to_owned()),
        ..body("first")
    };
    assert!(
        store.append(&ch("D"), other).await.unwrap().new,
        "keys are per channel"
    );
}

fn keyed(key: &str, text: &str) -> NewEvent {
    NewEvent {
        idempotency_key: Some(key.to_owned()),
        ..body(text)
    }
}

#[tokio::test]
async fn keys_are_found_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = ch("C");
    {
        let store = open(dir.path(), ROOMY);
        assert!(store.append(&c, keyed("a", "1")).await.unwrap().new);
        assert!(store.append(&c, body("plain")).await.unwrap().new);
        assert!(store.append(&c, keyed("b", "3")).await.unwrap().new);
    }
    let store = open(dir.path(), ROOMY);
    for (key, text, id) in [("b", "3", 3), ("a", "1", 1)] {
        let again = store.append(&c, keyed(key, text)).await.unwrap();
        assert_eq!((again.new, again.event.id), (false, id), "key {key}");
    }
    // The stored event answers; telling a conflict from a retry is the hub's.
    let other = store.append(&c, keyed("a", "other")).await.unwrap();
    assert_eq!((other.new, other.event.body.as_str()), (false, "1"));
    assert_eq!(store.append(&c, keyed("c", "4")).await.unwrap().event.id, 4);
}

#[tokio::test]
async fn a_key_whose_hash_another_key_holds_is_found_in_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), ROOMY);
    let c = ch("C");
    store.append(&c, keyed("a", "1")).await.unwrap();
    store.append(&c, keyed("b", "2")).await.unwrap();
    // As if "b" hashed like "a" and "a" had come later: the entry names the wrong event.
    store
        .inner
        .shared
        .event_keys()
        .channels
        .get_mut(&c)
        .expect("the channel's keys are held")
        .ids
        .insert(key_hash(Some(b"P1"), b"b"), 1);
    let again = store.append(&c, keyed("b", "2")).await.unwrap();
    assert_eq!((again.new, again.event.id), (false, 2));
    let again = store.append(&c, keyed("a", "1")).await.unwrap();
    assert_eq!((again.new, again.event.id), (false, 1));
}

#[tokio::test]
async fn keys_stay_per_publisher_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = ch("C");
    let by = |publisher: Option<&str>, text: &str| NewEvent {
        publisher: publisher.map(dev),
        ..keyed("k", text)
    };
    {
        let store = open(dir.path(), ROOMY);
        for (publisher, text) in [(Some("PA"), "1"), (Some("PB"), "2"), (None, "3")] {
            assert!(store.append(&c, by(publisher, text)).await.unwrap().new);
        }
    }
    // The held keys are read back from the rows, each with its publisher.
    let store = open(dir.path(), ROOMY);
    for (publisher, id) in [(None, 3), (Some("PB"), 2), (Some("PA"), 1)] {
        let again = store.append(&c, by(publisher, "retried")).await.unwrap();
        assert_eq!((again.new, again.event.id), (false, id), "{publisher:?}");
    }
    let another = store.append(&c, by(Some("PC"), "4")).await.unwrap();
    assert_eq!((another.new, another.event.id), (true, 4));
    // An entry whose hash names another publisher's event is checked against its row.
    store
        .inner
        .shared
        .event_keys()
        .channels
        .get_mut(&c)
        .expect("the channel's keys are held")
        .ids
        .insert(key_hash(Some(b"PD"), b"k"), 1);
    let fifth = store.append(&c, by(Some("PD"), "5")).await.unwrap();
    assert_eq!((fifth.new, fifth.event.id), (true, 5), "not PA's event");
}

#[tokio::test]
async fn a_version_8_database_keeps_receipt_keys_each_its_device_s() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    // The v7 migration sums what rows hold; these tables have no rows yet.
    conn.create_scalar_function(
        "pere_event_checksum",
        7,
        rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
        |_| Ok(0_i64),
    )
    .unwrap();
    let tx = conn.transaction().unwrap();
    for migration in &MIGRATIONS[..8] {
        tx.execute_batch(migration).unwrap();
    }
    tx.execute("INSERT INTO channels (name, head) VALUES ('C', 1)", [])
        .unwrap();
    tx.execute(
        "INSERT INTO receipts (channel, event_id, device, status, time, idempotency_key) \
             VALUES ('C', 1, 'HA', 'shipped', ?1, 'r')",
        [now().timestamp_millis()],
    )
    .unwrap();
    tx.execute_batch("PRAGMA user_version = 8;").unwrap();
    tx.commit().unwrap();
    drop(conn);

    let store = open(dir.path(), ROOMY);
    let again = store
        .record_receipt_keyed(receipt_of("HA", "shipped"), "r".to_owned())
        .await
        .unwrap();
    assert_eq!(
        (again.new, again.receipt.seq, &*again.receipt.status),
        (false, 1, "shipped"),
        "a key held before the upgrade is still its device's"
    );
    let other = store
        .record_receipt_keyed(receipt_of("HB", "ok"), "r".to_owned())
        .await
        .unwrap();
    assert!(
        other.new,
        "another device's key is its own after the upgrade"
    );
    assert_eq!(
        (other.receipt.device.as_str(), other.receipt.seq),
        ("HB", 2)
    );
}

fn receipt_of(device: &str, status: &str) -> Receipt {
    Receipt {
        seq: 0,
        channel: ch("C"),
        event_id: 1,
        device: dev(device),
        status: status.into(),
        time: now(),
    }
}

#[tokio::test]
async fn a_rolled_back_batch_leaves_no_key_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), ROOMY);
    let c = ch("C");
    store.append(&c, keyed("a", "1")).await.unwrap();
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.body = 'boom' BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .unwrap();
    let refused = store
        .append_batch(&c, vec![keyed("b", "2"), body("boom")])
        .await;
    assert!(matches!(refused, Err(StoreError::Backend(_))));
    conn.execute_batch("DROP TRIGGER refuse").unwrap();
    let b = store.append(&c, keyed("b", "2")).await.unwrap();
    assert_eq!((b.new, b.event.id), (true, 2), "b was never stored");
    let a = store.append(&c, keyed("a", "1")).await.unwrap();
    assert_eq!((a.new, a.event.id), (false, 1));
}

#[tokio::test]
async fn pruned_events_leave_the_held_keys() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        retention: Retention {
            max_events: 10,
            max_age: None,
            idempotency_window: None,
        },
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(dir.path(), options).unwrap();
    let c = ch("C");
    let pushes = 3 * KEY_SWEEP_MIN;
    for i in 0..pushes {
        store
            .append(&c, keyed(&format!("k{i}"), "x"))
            .await
            .unwrap();
    }
    let held = store.inner.shared.event_keys().held;
    assert!(
        held < 2 * KEY_SWEEP_MIN,
        "{held} keys held for 10 retained events"
    );
    // A pruned event's key can be given again.
    assert!(store.append(&c, keyed("k0", "x")).await.unwrap().new);
    let last = format!("k{}", pushes - 1);
    assert!(!store.append(&c, keyed(&last, "x")).await.unwrap().new);
}

#[tokio::test]
async fn the_sweep_prunes_expired_events_without_new_appends() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        retention: Retention {
            max_events: 100,
            max_age: Some(Duration::from_millis(50)),
            idempotency_window: None,
        },
        prune_interval: Duration::from_millis(10),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(dir.path(), options).unwrap();
    store.append(&ch("C"), body("old")).await.unwrap();
    // Wait for the writer's sweep, which is the thing under test.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check_ids(&store, "C").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the sweep pruned the expired event");
    let page = store.read(&ch("C"), 0, 10).await.unwrap();
    assert_eq!((page.first_retained, page.head), (2, 1));
}

#[tokio::test]
async fn expiry_visits_only_the_channels_that_have_something_to_prune() {
    let dir = tempfile::tempdir().unwrap();
    let hour = Duration::from_secs(3600);
    let options = SqliteOptions {
        retention: Retention {
            max_events: 2,
            max_age: Some(hour),
            idempotency_window: None,
        },
        prune_interval: Duration::from_millis(10),
        ..SqliteOptions::default()
    };
    {
        let store = SqliteStore::open(dir.path(), options).unwrap();
        for i in 0..300 {
            store
                .append(&ch(&format!("Young{i}")), body("x"))
                .await
                .unwrap();
        }
        store.append(&ch("Soon"), body("x")).await.unwrap();
    }
    // An event that expires 300 ms from now (its checksum made again, as for any row written).
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let soon = now().timestamp_millis() - 3_600_000 + 300;
    conn.execute("UPDATE events SET time = ?1 WHERE channel = 'Soon'", [soon])
        .unwrap();
    // Filed in the age index under that time, as the append would have.
    conn.execute(
        "UPDATE channels SET oldest = ?1 WHERE name = 'Soon'",
        [soon],
    )
    .unwrap();
    sum_again(&conn);
    drop(conn);

    let store = SqliteStore::open(dir.path(), options).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check_ids(&store, "Soon").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the expired event was pruned");
    // One pass over every channel at open, then the one that expired: not 301 channels
    // every 10 ms.
    let visited = store.inner.shared.visited.load(Ordering::Relaxed);
    assert!((302..=303).contains(&visited), "visited {visited}");
    assert_eq!(check_ids(&store, "Young0").await, vec![1]);
    // Count retention is applied as events are appended.
    for _ in 0..3 {
        store.append(&ch("Young0"), body("x")).await.unwrap();
    }
    assert_eq!(check_ids(&store, "Young0").await, vec![3, 4]);
}

#[tokio::test]
async fn a_shorter_retention_is_applied_on_reopen_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let total = PRUNE_CHUNK * 2 + 10;
    {
        let store = open(
            dir.path(),
            Retention {
                max_events: 100_000,
                max_age: None,
                idempotency_window: None,
            },
        );
        for _ in 0..total {
            store.append(&ch("C"), body("x")).await.unwrap();
        }
    }
    let store = open(
        dir.path(),
        Retention {
            max_events: 5,
            max_age: None,
            idempotency_window: None,
        },
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        while check_ids(&store, "C").await.len() > 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the sweep applied the new retention");
    assert_eq!(
        check_ids(&store, "C").await,
        (total - 4..=total).collect::<Vec<_>>()
    );
    // Three steps of at most PRUNE_CHUNK rows each, not one long one.
    assert_eq!(store.committed_transactions(), 3);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), ROOMY));
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    match check_open_fails(dir.path()) {
        StoreError::Incompatible(msg) => {
            let expected = format!("newer PERE (schema v99, this build knows v{SCHEMA_VERSION})");
            assert!(msg.contains(&expected), "{msg}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_foreign_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch("CREATE TABLE t (x)").unwrap();
    drop(conn);
    assert!(matches!(
        check_open_fails(dir.path()),
        StoreError::Incompatible(_)
    ));
}

#[tokio::test]
async fn unusable_paths_are_errors_naming_the_path() {
    let root = tempfile::tempdir().unwrap();

    let garbage = root.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join(DB_FILE), vec![0x5a_u8; 8192]).unwrap();
    let err = check_open_fails(&garbage);
    // A file that is no database at all is damaged, said in one line naming it.
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&garbage.join(DB_FILE).display().to_string()),
        "{err}"
    );

    let file = root.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    for dir in [file.clone(), file.join("below")] {
        let err = check_open_fails(&dir);
        assert!(matches!(err, StoreError::Backend(_)), "{err}");
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
    }
}

#[tokio::test]
async fn one_store_per_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open(dir.path(), SqliteOptions::default()).unwrap();
    let err = check_open_fails(dir.path());
    assert!(
        matches!(err, StoreError::Locked { .. }) && err.to_string().contains("in use"),
        "{err}"
    );
    first.close().await;
    drop(first);
    assert!(
        SqliteStore::open(dir.path(), SqliteOptions::default()).is_ok(),
        "the lock goes with the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_are_committed_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        durability: Durability::Full,
        retention: ROOMY,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(dir.path(), options).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(&ch(&format!("C{}", i % 4)), body("x"))
                    .await
                    .unwrap()
                    .event
                    .id
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let transactions = store.committed_transactions();
    assert!(
        transactions <= 50,
        "200 appends took {transactions} transactions"
    );
    let mut heads = 0;
    for i in 0..4 {
        heads += store.head(&ch(&format!("C{i}"))).await.unwrap();
    }
    assert_eq!(heads, 200);
}

#[tokio::test]
async fn a_failed_write_consumes_no_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), ROOMY);
    let c = ch("C");
    store.append(&c, body("1")).await.unwrap();
    // Make the database refuse one body, as a full disk would refuse everything.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.body = 'boom' BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .unwrap();
    let err = store.append(&c, body("boom")).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
    assert_eq!(store.head(&c).await.unwrap(), 1);
    assert_eq!(store.append(&c, body("2")).await.unwrap().event.id, 2);
    assert_eq!(check_ids(&store, "C").await, vec![1, 2]);
}

#[tokio::test]
async fn close_commits_what_is_queued_and_refuses_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), ROOMY);
    let c = ch("C");
    store.append(&c, body("1")).await.unwrap();
    store.close().await;
    assert!(matches!(
        store.append(&c, body("2")).await,
        Err(StoreError::Backend(_))
    ));
    assert_eq!(check_ids(&store, "C").await, vec![1], "reads still work");
    // From disk too, once the writer's connection (the last one) has closed.
    assert_eq!(store.channels().await.unwrap(), vec![c.clone()]);
    assert_eq!(store.recent(&c, 10).await.unwrap().len(), 1);
    drop(store);
    assert_eq!(check_ids(&open(dir.path(), ROOMY), "C").await, vec![1]);
}

/// A database put back from a backup holds fewer ids than were handed out: the ids file beside
/// it says how many, and the store continues above them, the skipped ids lost.
#[tokio::test]
async fn a_database_put_back_from_a_backup_continues_above_the_ids_it_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let c = ch("C");
    let store = open(dir.path(), ROOMY);
    for text in ["1", "2", "3"] {
        store.append(&c, body(text)).await.unwrap();
    }
    store.close().await;
    drop(store);
    std::fs::copy(dir.path().join(DB_FILE), backup.path().join(DB_FILE)).unwrap();

    let store = open(dir.path(), ROOMY);
    for text in ["4", "5", "6", "7"] {
        store.append(&c, body(text)).await.unwrap();
    }
    store.close().await;
    drop(store);
    std::fs::copy(backup.path().join(DB_FILE), dir.path().join(DB_FILE)).unwrap();

    let store = open(dir.path(), ROOMY);
    assert_eq!(store.head(&c).await.unwrap(), 3, "the backup's history");
    assert_eq!(store.append(&c, body("8")).await.unwrap().event.id, 8);
    assert_eq!(store.lost(&c).await.unwrap(), vec![4..=7]);
    assert_eq!(
        store.append(&ch("NEW"), body("x")).await.unwrap().event.id,
        8,
        "every channel continues above the ids handed out"
    );
    store.close().await;
    drop(store);

    // Another store's database put in its place: the same.
    let other = tempfile::tempdir().unwrap();
    let store = open(other.path(), ROOMY);
    store.append(&c, body("elsewhere")).await.unwrap();
    store.close().await;
    drop(store);
    std::fs::copy(other.path().join(DB_FILE), dir.path().join(DB_FILE)).unwrap();
    let store = open(dir.path(), ROOMY);
    assert_eq!(store.append(&c, body("9")).await.unwrap().event.id, 9);
    assert_eq!(store.lost(&c).await.unwrap(), vec![2..=8]);
}

/// A database file replaced while the server runs: nothing more is committed into the old one,
/// which nobody would open again; writes fail as a changed store until a restart.
#[tokio::test]
async fn a_database_replaced_under_the_store_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let c = ch("C");
    let store = open(dir.path(), ROOMY);
    store.append(&c, body("1")).await.unwrap();
    let other = tempfile::tempdir().unwrap();
    drop(open(other.path(), ROOMY));
    std::fs::rename(other.path().join(DB_FILE), dir.path().join(DB_FILE)).unwrap();
    assert!(matches!(
        store.append(&c, body("2")).await,
        Err(StoreError::Changed { .. })
    ));
    assert!(matches!(
        store.append(&c, body("3")).await,
        Err(StoreError::Changed { .. })
    ));
    assert!(matches!(
        store.adopt(10).await,
        Err(StoreError::Changed { .. })
    ));
}

/// The seqs of a batch's receipts (given by the store, not by SQLite's AUTOINCREMENT) follow
/// every seq ever handed out, in line order: after the newest receipts were pruned, and after a
/// reopening; and a single receipt after them continues above them.
#[tokio::test]
async fn a_batch_of_receipts_takes_seqs_never_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_events: 2,
        max_age: None,
        idempotency_window: None,
    };
    let batch = |device: &str, id: u64, count: usize| ReceiptBatch {
        channel: ch("C"),
        device: dev(device),
        time: now(),
        lines: (0..count)
            .map(|i| ReceiptLine {
                event_id: id,
                status: format!("s{i}").into(),
                key: None,
            })
            .collect(),
        unacknowledged_only: false,
    };
    let seqs = |lines: Vec<RecordedLine>| -> Vec<u64> {
        lines.into_iter().map(|line| line.receipt.seq).collect()
    };
    let c = ch("C");
    let store = open(dir.path(), retention);
    store.append(&c, body("1")).await.unwrap();
    let first = store.record_receipt(ack("C", 1, "H1")).await.unwrap();
    let first = first.0.seq;
    let batch_seqs = seqs(store.record_receipts(batch("H2", 1, 3)).await.unwrap());
    assert_eq!(batch_seqs, vec![first + 1, first + 2, first + 3]);
    let stored: Vec<u64> = store
        .receipts(&c, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(stored, vec![first, first + 1, first + 2, first + 3]);
    // Event 1 and every receipt kept are pruned: the seqs given stay given.
    store.append(&c, body("2")).await.unwrap();
    store.append(&c, body("3")).await.unwrap();
    assert!(store.receipts(&c, 1).await.unwrap().is_empty());
    let after_pruning = seqs(store.record_receipts(batch("H3", 3, 2)).await.unwrap());
    assert_eq!(after_pruning, vec![first + 4, first + 5]);
    drop(store);
    let store = open(dir.path(), retention);
    let single = store.record_receipt(ack("C", 3, "H1")).await.unwrap();
    assert_eq!(single.0.seq, first + 6);
    let again = seqs(store.record_receipts(batch("H4", 3, 2)).await.unwrap());
    assert_eq!(again, vec![first + 7, first + 8]);
}

/// Receipts of many requests committed together share their inserts: each is answered with a
/// seq of its own, stored as answered; a keyed receipt given again in the same transaction finds
/// the first (not yet inserted when it came); a cumulative receipt after them skips what they
/// acknowledged; and the seqs continue above them after a reopening.
#[tokio::test]
async fn receipts_of_one_transaction_are_inserted_together_and_read_as_answered() {
    use futures_util::future::join_all;

    let dir = tempfile::tempdir().unwrap();
    let c = ch("C");
    let store = open(dir.path(), Retention::default());
    for id in 1..=3 {
        store.append(&c, body(&id.to_string())).await.unwrap();
    }
    let before = store.committed_transactions();
    const DEVICES: usize = 50;
    let device = |d: usize| format!("D{d}");
    // Each device's four writes are queued in this order (the store takes them in order) before
    // any is answered, and the devices' writes come together: all in the first poll, which
    // tokio's budget of work per poll must not cut short.
    let answers = tokio::task::unconstrained(join_all((0..DEVICES).map(|d| {
        let device = device(d);
        let cumulative = ReceiptBatch {
            channel: ch("C"),
            device: dev(&device),
            time: now(),
            lines: (1..=3)
                .map(|id| ReceiptLine {
                    event_id: id,
                    status: "done".into(),
                    key: None,
                })
                .collect(),
            unacknowledged_only: true,
        };
        let store = &store;
        async move {
            tokio::join!(
                store.record_receipt(ack("C", 1, &device)),
                store.record_receipt_keyed(ack("C", 2, &device), "k".into()),
                store.record_receipt_keyed(ack("C", 2, &device), "k".into()),
                store.record_receipts(cumulative),
            )
        }
    })))
    .await;
    assert!(
        store.committed_transactions() - before < (DEVICES * 4) as u64 / 2,
        "the receipts were committed a few transactions at a time"
    );
    let mut answered = Vec::new();
    for (single, keyed, again, cumulative) in answers {
        let (single, keyed, again) = (single.unwrap().0, keyed.unwrap(), again.unwrap());
        assert!(keyed.new && !again.new, "the key is found the second time");
        assert_eq!(keyed.receipt.seq, again.receipt.seq);
        answered.push((single.seq, single.event_id, single.device.to_string()));
        answered.push((keyed.receipt.seq, 2, keyed.receipt.device.to_string()));
        // Events 1 and 2 are acknowledged already: the cumulative receipt records event 3.
        let lines = cumulative.unwrap();
        let ids: Vec<u64> = lines.iter().map(|line| line.receipt.event_id).collect();
        assert_eq!(ids, vec![3]);
        let receipt = &lines[0].receipt;
        answered.push((receipt.seq, receipt.event_id, receipt.device.to_string()));
    }
    answered.sort();
    let stored: Vec<(u64, u64, String)> = store
        .receipts_after(&c, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.event_id, r.device.to_string()))
        .collect();
    assert_eq!(stored, answered, "stored as answered, in seq order");
    assert_eq!(stored.len(), DEVICES * 3);
    let greatest = stored.last().unwrap().0;
    drop(store);
    let store = open(dir.path(), Retention::default());
    let next = store.record_receipt(ack("C", 3, "late")).await.unwrap();
    assert_eq!(next.0.seq, greatest + 1);
}

/// Events of many pushes committed together share their inserts: each is answered with the next
/// id, stored as answered (checksums included: a read checks them), and a keyed push given again
/// in the same transaction finds the first (not yet inserted when it came); pruning in the same
/// transaction sees them; ids continue after a reopening.
#[tokio::test]
async fn events_of_one_transaction_are_inserted_together_and_read_as_answered() {
    use futures_util::future::join_all;

    let dir = tempfile::tempdir().unwrap();
    let (c, d) = (ch("C"), ch("D"));
    let retention = Retention {
        max_events: 100,
        ..Retention::default()
    };
    let store = open(dir.path(), retention);
    let before = store.committed_transactions();
    const PUSHES: usize = 60;
    let keyed = |key: String, text: &str| NewEvent {
        idempotency_key: Some(key),
        ..body(text)
    };
    // Queued in this order before any is answered (see the receipts' test above): on each
    // channel a push, a keyed push, the same key again.
    let answers = tokio::task::unconstrained(join_all((0..PUSHES).map(|i| {
        let (store, c, d) = (&store, &c, &d);
        async move {
            tokio::join!(
                store.append(c, body(&format!("c{i}"))),
                store.append(d, keyed(format!("k{i}"), &format!("d{i}"))),
                store.append(d, keyed(format!("k{i}"), "another body, the same key")),
            )
        }
    })))
    .await;
    assert!(
        store.committed_transactions() - before < (PUSHES * 3) as u64 / 2,
        "the pushes were committed a few transactions at a time"
    );
    let (mut on_c, mut on_d) = (Vec::new(), Vec::new());
    for (plain, keyed, again) in answers {
        let (plain, keyed, again) = (plain.unwrap(), keyed.unwrap(), again.unwrap());
        assert!(plain.new && keyed.new && !again.new);
        assert_eq!(
            again.event.id, keyed.event.id,
            "the key is found the second time"
        );
        on_c.push((plain.event.id, plain.event.body.clone()));
        on_d.push((keyed.event.id, keyed.event.body.clone()));
    }
    // 60 events on C with retention 100: all kept; ids 1 to 60 as answered.
    let read = |channel: ChannelName| {
        let store = store.clone();
        async move {
            let page = store.read(&channel, 0, 1000).await.unwrap();
            assert!(page.unreadable.is_empty());
            let events: Vec<(u64, String)> =
                page.events.iter().map(|e| (e.id, e.body.clone())).collect();
            events
        }
    };
    on_c.sort();
    on_d.sort();
    assert_eq!(read(c.clone()).await, on_c);
    assert_eq!(read(d.clone()).await, on_d);
    assert_eq!(
        on_c.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>()
    );
    // Another 60 in one go: pruning, in the transactions that append them, keeps the newest 100.
    let more = tokio::task::unconstrained(join_all(
        (0..PUSHES).map(|i| store.append(&c, body(&format!("more{i}")))),
    ))
    .await;
    assert!(more.iter().all(Result::is_ok));
    let page = store.read(&c, 0, 1000).await.unwrap();
    assert_eq!(page.first_retained, 21);
    assert_eq!(page.events.len(), 100);
    assert_eq!(page.events.last().unwrap().id, 120);
    drop(store);
    let store = open(dir.path(), retention);
    let next = store.append(&c, body("after")).await.unwrap();
    assert_eq!(next.event.id, 121);
    let again = store.append(&d, keyed("k7".into(), "d7")).await.unwrap();
    assert!(
        !again.new,
        "a key stored in a shared insert is found after a reopening"
    );
}

/// The greatest id the ids file beside the database says was handed out (0 before it exists).
fn ids_file_high(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(IDS_FILE))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("high ").and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// A few commits are checkpointed together, once the first has waited `QUIET_CHECKPOINT`, not
/// each soon after it: the checkpointer writes the ids file at each checkpoint, so the file
/// tells when one happened.
#[tokio::test]
async fn a_few_commits_are_checkpointed_together_within_the_quiet_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), ROOMY);
    let c = ch("C");
    let first = Instant::now();
    store.append(&c, body("1")).await.unwrap();
    // Spaced wider than the busy gathering, fewer than a busy WAL's commits.
    const { assert!(BUSY_COMMITS > 4) };
    for text in ["2", "3", "4"] {
        tokio::time::sleep(CHECKPOINT_INTERVAL * 2).await;
        store.append(&c, body(text)).await.unwrap();
    }
    let deadline = first + QUIET_CHECKPOINT * 10;
    while ids_file_high(dir.path()) == 0 {
        assert!(Instant::now() < deadline, "never checkpointed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        first.elapsed() >= QUIET_CHECKPOINT,
        "checkpointed after {:?}, before the first commit waited {QUIET_CHECKPOINT:?}",
        first.elapsed()
    );
}
