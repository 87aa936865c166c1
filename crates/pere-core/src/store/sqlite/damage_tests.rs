//! The SQLite store's tests of damage: rows whose bytes changed on disk are found by their
//! checksum and never served, pages SQLite reports damaged still give up their readable rows,
//! older stores get checksums when upgraded, and the offline check finds and mends it. (The
//! hub over a damaged store: `tests/damaged_store.rs`.)

use std::path::Path;

use rusqlite::Connection;

use super::rows::Damage;
use super::schema::{lock_dir, SCHEMA_VERSION};
use super::*;
use crate::store::conformance::{body, ch, ROOMY};

/// A store that reads every event from disk (no recent-event cache).
fn open_uncached(dir: &Path) -> SqliteStore {
    SqliteStore::open(
        dir,
        SqliteOptions {
            retention: ROOMY,
            recent_events: 0,
            recent_bytes: 0,
            ..SqliteOptions::default()
        },
    )
    .unwrap()
}

/// Stores `count` events on channel C, event `i` with the body `event i MARK<i>`, and closes the
/// store with everything copied into the database file.
async fn stored(dir: &Path, count: u64, padding: usize) {
    let store = open_uncached(dir);
    for i in 1..=count {
        let text = format!("event {i} MARK{i:04} {}", "p".repeat(padding));
        store.append(&ch("C"), body(&text)).await.unwrap();
    }
    store.close().await;
    drop(store);
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// Changes the database file's bytes where `marker` (found exactly once) is, as a disk would.
fn damage_file(dir: &Path, marker: &str, edit: impl FnOnce(&mut Vec<u8>, usize)) {
    let path = dir.join(DB_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let found: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker.as_bytes())
        .map(|(at, _)| at)
        .collect();
    assert_eq!(found.len(), 1, "{marker} is in the file once");
    edit(&mut bytes, found[0]);
    std::fs::write(&path, bytes).unwrap();
}

/// One letter of the marker's body changed into another: still valid UTF-8.
fn flip_a_letter(dir: &Path, marker: &str) {
    damage_file(dir, marker, |bytes, at| bytes[at] ^= 0x01);
}

#[tokio::test]
async fn a_flipped_byte_in_a_body_fails_its_checksum_and_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path(), 5, 0).await;
    flip_a_letter(dir.path(), "MARK0003");

    let store = open_uncached(dir.path());
    let page = store.read(&ch("C"), 0, 10).await.unwrap();
    let ids: Vec<u64> = page.events.iter().map(|e| e.id).collect();
    assert_eq!((ids, page.unreadable), (vec![1, 2, 4, 5], vec![3]));
    assert!(matches!(
        store.event(&ch("C"), 3).await,
        Err(StoreError::EventDamaged { id: 3 })
    ));
    assert_eq!(store.event(&ch("C"), 4).await.unwrap().unwrap().id, 4);
    let recent: Vec<u64> = store
        .recent(&ch("C"), 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(recent, vec![1, 2, 4, 5]);
    let pending = store
        .unacknowledged(&ch("C"), &DeviceId::new("R1").unwrap(), 0, 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 4);
    // One damaged event, met by four reads.
    assert_eq!(
        store.damage(),
        DamageSeen {
            events: 1,
            reads: 4
        }
    );
    // A page that starts after it does not meet it.
    let later = store.read(&ch("C"), 3, 10).await.unwrap();
    assert!(later.unreadable.is_empty());
    assert_eq!(store.damage().reads, 4);
}

#[tokio::test]
async fn a_page_of_only_damaged_ids_still_moves_a_reader_on() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path(), 6, 0).await;
    for i in 2..=4 {
        flip_a_letter(dir.path(), &format!("MARK{i:04}"));
    }
    let store = open_uncached(dir.path());
    let page = store.read(&ch("C"), 1, 3).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.unreadable, vec![2, 3, 4]);
    let next = store.read(&ch("C"), 4, 3).await.unwrap();
    let ids: Vec<u64> = next.events.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![5, 6]);
    assert_eq!(store.damage().events, 3);
}

#[tokio::test]
async fn a_version_6_store_gets_checksums_on_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_uncached(dir.path());
    let keyed = NewEvent {
        idempotency_key: Some("k1".to_owned()),
        event_type: Some(pere_proto::name::EventType::new("order").unwrap()),
        ..body("keyed MARKK")
    };
    store.append(&ch("C"), keyed).await.unwrap();
    store.append(&ch("C"), body("plain MARKP")).await.unwrap();
    store.close().await;
    drop(store);
    let sums = |conn: &Connection| -> Vec<Option<i64>> {
        let mut stmt = conn
            .prepare("SELECT checksum FROM events ORDER BY id")
            .unwrap();
        let sums = stmt.query_map([], |row| row.get(0)).unwrap();
        sums.collect::<rusqlite::Result<_>>().unwrap()
    };
    // The store as v6 wrote it: no checksums, no table of damaged events.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let written = sums(&conn);
    conn.execute_batch(
        "ALTER TABLE events DROP COLUMN checksum; DROP TABLE damaged_events; DROP TABLE store; DROP TABLE lost;
         DROP INDEX channels_by_oldest; ALTER TABLE channels DROP COLUMN oldest;
         DROP INDEX receipts_by_device_key;
         CREATE UNIQUE INDEX receipts_by_key ON receipts (channel, idempotency_key) WHERE idempotency_key IS NOT NULL;
         PRAGMA user_version = 6;",
    )
    .unwrap();
    drop(conn);

    let store = open_uncached(dir.path());
    assert_eq!(check_ids(&store, "C").await, vec![1, 2]);
    store.close().await;
    drop(store);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    // The same checksums as the writer's: the migration hashes the same bytes the same way.
    assert_eq!(sums(&conn), written);
    assert!(written.iter().all(Option::is_some));
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    // And they guard the rows stored before the upgrade.
    flip_a_letter(dir.path(), "MARKK");
    let store = open_uncached(dir.path());
    assert_eq!(
        store.read(&ch("C"), 0, 10).await.unwrap().unreadable,
        vec![1]
    );
}

async fn check_ids(store: &SqliteStore, channel: &str) -> Vec<u64> {
    let page = store.read(&ch(channel), 0, 10_000).await.unwrap();
    assert!(page.unreadable.is_empty(), "{:?}", page.unreadable);
    page.events.iter().map(|e| e.id).collect()
}

/// The page holding `marker` made unreadable: its page type byte is one no b-tree page has, so
/// SQLite reports the database malformed whenever a read enters it.
fn break_page(dir: &Path, marker: &str) {
    damage_file(dir, marker, |bytes, at| {
        let page = at / 4096 * 4096;
        bytes[page] = 0x55;
    });
}

#[tokio::test]
async fn a_page_sqlite_reports_damaged_gives_up_its_neighbours_rows_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path(), 300, 200).await;
    break_page(dir.path(), "MARK0150");

    // Straight on the file: the server's open would refuse it at its integrity check.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let span = rows::read_span(&conn, &ch("C"), 100, 199).unwrap();
    let served: Vec<u64> = span.events.iter().map(|e| e.id).collect();
    let damaged: Vec<u64> = span.damaged.iter().map(|(id, _)| *id).collect();
    assert!(damaged.contains(&150), "{damaged:?}");
    assert!(span.damaged.iter().all(|(_, d)| *d == Damage::Page));
    assert!(
        damaged.windows(2).all(|w| w[1] == w[0] + 1),
        "one page: a run of ids {damaged:?}"
    );
    assert!(damaged.len() < 30, "{damaged:?}");
    let mut all: Vec<u64> = served.iter().chain(&damaged).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (100..=199).collect::<Vec<_>>(),
        "every id accounted for"
    );
}

#[tokio::test]
async fn check_finds_a_damaged_row_and_repair_sets_it_aside_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path(), 5, 0).await;
    damage_file(dir.path(), "MARK0003", |bytes, at| {
        bytes[at..at + 4].copy_from_slice(&[0xff; 4])
    });

    let found = check(dir.path(), false).unwrap();
    assert!(!found.sound());
    assert!(found.integrity.is_empty(), "{:?}", found.integrity);
    assert_eq!(found.damaged["C"], vec![(3, Damage::Checksum)]);
    assert_eq!(found.events_checked, 4);

    let repaired = check(dir.path(), true).unwrap();
    assert!(matches!(
        repaired.repair,
        Some(Repaired::SetAside { events: 1 })
    ));
    let again = check(dir.path(), false).unwrap();
    assert!(again.sound(), "{again:?}");
    assert_eq!(again.set_aside_before, 1);

    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let (raw, reason): (Vec<u8>, String) = conn
        .query_row(
            "SELECT body, reason FROM damaged_events WHERE channel = 'C' AND id = 3",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert!(raw.starts_with(b"event 3 \xff\xff\xff\xff0003"), "{raw:?}");
    assert_eq!(reason, "checksum mismatch");
    drop(conn);
    // The id stays a gap for readers, known and no longer counted as damage.
    let store = open_uncached(dir.path());
    assert_eq!(
        store.read(&ch("C"), 0, 10).await.unwrap().unreadable,
        vec![3]
    );
    assert_eq!(store.damage(), DamageSeen::default());
}

#[tokio::test]
async fn repair_rebuilds_a_file_whose_structure_is_damaged_and_keeps_it_beside() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path(), 300, 200).await;
    // A receipt, and the device record it makes (written back when the store closes).
    let store = open_uncached(dir.path());
    let receipt = Receipt {
        seq: 0,
        channel: ch("C"),
        event_id: 1,
        device: DeviceId::new("R1").unwrap(),
        status: "ok".into(),
        time: pere_proto::event::now(),
    };
    store.record_receipt(receipt).await.unwrap();
    store.close().await;
    drop(store);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(conn);
    break_page(dir.path(), "MARK0150");
    assert!(matches!(
        SqliteStore::open(dir.path(), SqliteOptions::default()),
        Err(StoreError::Damaged { .. })
    ));

    let found = check(dir.path(), false).unwrap();
    assert!(!found.integrity.is_empty());
    let repaired = check(dir.path(), true).unwrap();
    let Some(Repaired::Rebuilt {
        backup,
        events_copied,
        events_set_aside,
        ..
    }) = repaired.repair
    else {
        panic!("{repaired:?}");
    };
    assert!(backup.exists(), "the damaged file is kept");
    assert_eq!(events_copied + events_set_aside as u64, 300);
    assert!(events_set_aside > 0 && events_set_aside < 30);

    let again = check(dir.path(), false).unwrap();
    assert!(again.sound(), "{again:?}");
    let store = open_uncached(dir.path());
    let page = store.read(&ch("C"), 0, 1000).await.unwrap();
    assert_eq!(page.head, 300);
    assert_eq!(page.events.len() as u64, events_copied);
    assert!(page.unreadable.contains(&150));
    assert_eq!(store.damage(), DamageSeen::default(), "set aside: known");
    // The sequence goes on where it was; receipts and device records came along.
    assert_eq!(
        store.append(&ch("C"), body("next")).await.unwrap().event.id,
        301
    );
    let receipts = store.receipts(&ch("C"), 1).await.unwrap();
    assert_eq!(receipts.len(), 1);
    let record = store
        .device(&ch("C"), &DeviceId::new("R1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((record.last_acked, record.receipts), (1, 1));
    let (next, _) = store
        .record_receipt(Receipt {
            seq: 0,
            ..receipts[0].clone()
        })
        .await
        .unwrap();
    assert!(
        next.seq > receipts[0].seq,
        "receipt seqs are never given twice"
    );
}

#[tokio::test]
async fn no_store_opens_while_a_check_holds_the_directory_nor_a_check_runs_beside_a_store() {
    let dir = tempfile::tempdir().unwrap();
    stored(dir.path(), 1, 0).await;
    let held = lock_dir(dir.path()).unwrap();
    assert!(matches!(
        SqliteStore::open(dir.path(), SqliteOptions::default()),
        Err(StoreError::Locked { .. })
    ));
    drop(held);
    let store = open_uncached(dir.path());
    assert!(matches!(
        check(dir.path(), true),
        Err(StoreError::Locked { .. })
    ));
    drop(store);
}
