//! The SQLite store's tests of device records: the book keeps the records of the devices acting
//! now and lets idle ones go (releasing SQLite's caches after a flood of them), stays within its
//! bound, and writes changes back once a second; receipts committed after the last write-back
//! are folded in again at open.

use std::collections::HashMap;
use std::time::Duration;

use pere_proto::event::now;
use pere_proto::receipt::DeviceOp;

use super::rows::DEVICES_THROUGH_RECEIPT;
use super::tests::{ack, open, stored_device};
use super::*;
use crate::store::conformance::{body, ch, dev, ROOMY};

fn feed_touch(channel: &str, device: &str, delivered: u64) -> DeviceTouch {
    DeviceTouch {
        channel: ch(channel),
        device: dev(device),
        op: DeviceOp::Feed,
        at: now(),
        last_event_id: None,
        delivered,
    }
}

#[tokio::test]
async fn an_idle_device_leaves_the_book_and_an_active_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), ROOMY);
    store.append(&ch("C"), body("x")).await.unwrap();
    store.record_receipt(ack("C", 1, "Idle")).await.unwrap();
    let in_book = |device: &str| {
        store
            .inner
            .shared
            .book()
            .get(&ch("C"), &dev(device))
            .is_some()
    };
    assert!(in_book("Idle"), "a change is kept until written back");
    // The active device acts every 100 ms until the idle one's record is let go (two
    // write-backs, about two seconds).
    let mut touches = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while in_book("Idle") {
            store
                .touch_device(feed_touch("C", "Active", touches))
                .await
                .unwrap();
            touches += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the idle device's record left the book");
    assert!(
        touches >= 5,
        "let go after {touches} touches, before it was written back"
    );
    assert!(
        in_book("Active"),
        "a device acting within every write-back keeps its record"
    );
    // Let go, it reads the same from disk, alone or with the channel's others, and changes
    // from what the disk holds.
    let record = store.device(&ch("C"), &dev("Idle")).await.unwrap().unwrap();
    assert_eq!((record.last_acked, record.receipts), (1, 1));
    let all = store.devices(&ch("C")).await.unwrap();
    let names: Vec<&str> = all.iter().map(|r| r.device.as_str()).collect();
    assert_eq!(names, ["Active", "Idle"]);
    let (_, record) = store.record_receipt(ack("C", 1, "Idle")).await.unwrap();
    assert_eq!((record.last_acked, record.receipts), (1, 2));
    assert!(in_book("Idle"));
}

#[tokio::test]
async fn a_thousand_devices_let_go_release_sqlites_caches_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), ROOMY);
    let book_emptied = || async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while store.inner.shared.book().len > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("every idle record left the book");
    };
    for d in 0..999 {
        store
            .touch_device(feed_touch("C", &format!("D{d}"), 0))
            .await
            .unwrap();
    }
    book_emptied().await;
    assert_eq!(
        store.memory_released(),
        0,
        "999 records let go release nothing"
    );
    store
        .touch_device(feed_touch("C", "D999", 0))
        .await
        .unwrap();
    book_emptied().await;
    assert_eq!(store.memory_released(), 1, "the thousandth does");
    // Released or not, the records read the same.
    let all = store.devices(&ch("C")).await.unwrap();
    assert_eq!(all.len(), 1000);
}

#[tokio::test]
async fn device_records_kept_in_memory_are_bounded_and_the_rest_read_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        device_records: 100,
        retention: ROOMY,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(dir.path(), options).unwrap();
    for c in 0..10 {
        store
            .append(&ch(&format!("C{c}")), body("x"))
            .await
            .unwrap();
        for d in 0..100 {
            store
                .record_receipt(ack(&format!("C{c}"), 1, &format!("D{d}")))
                .await
                .unwrap();
        }
    }
    // Written back within a second, then the least recently changed are let go.
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.inner.shared.book().len > 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the book was trimmed");
    let kept: Vec<String> = {
        let book = store.inner.shared.book();
        assert_eq!(
            book.len,
            book.records.values().map(HashMap::len).sum::<usize>()
        );
        book.records.keys().map(|c| c.to_string()).collect()
    };
    assert!(
        !kept.contains(&"C0".to_owned()),
        "the oldest went first: {kept:?}"
    );
    // Dropped or kept, every record reads the same, one at a time or by channel.
    for c in ["C0", "C9"] {
        let record = store.device(&ch(c), &dev("D5")).await.unwrap().unwrap();
        assert_eq!((record.last_acked, record.receipts), (1, 1));
        let all = store.devices(&ch(c)).await.unwrap();
        assert_eq!(all.len(), 100);
        assert!(all.iter().all(|r| r.receipts == 1));
        let page = store
            .devices_page(&ch(c), Some(&all[9].device), 10)
            .await
            .unwrap();
        assert_eq!(page, all[10..20].to_vec());
    }
    // A dropped record changes from what the disk holds, and is kept again.
    let (_, record) = store.record_receipt(ack("C0", 1, "D5")).await.unwrap();
    assert_eq!(record.receipts, 2);
    drop(store);
    let store = open(dir.path(), ROOMY);
    assert_eq!(
        store
            .device(&ch("C0"), &dev("D5"))
            .await
            .unwrap()
            .unwrap()
            .receipts,
        2
    );
    assert_eq!(
        store
            .device(&ch("C0"), &dev("D6"))
            .await
            .unwrap()
            .unwrap()
            .receipts,
        1
    );
}

fn devices_through(dir: &Path) -> u64 {
    let conn = Connection::open(dir.join(DB_FILE)).unwrap();
    conn.query_row(
        "SELECT value FROM state WHERE key = ?1",
        [DEVICES_THROUGH_RECEIPT],
        |row| row.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn device_records_are_written_back_and_later_receipts_folded_in_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), ROOMY);
    let c = ch("C");
    for n in 1..=3 {
        store.append(&c, body(&n.to_string())).await.unwrap();
    }
    store.record_receipt(ack("C", 1, "H1")).await.unwrap();
    let (second, _) = store.record_receipt(ack("C", 2, "H1")).await.unwrap();
    // Readers see a record before it is written back.
    assert_eq!(
        store
            .device(&c, &dev("H1"))
            .await
            .unwrap()
            .unwrap()
            .receipts,
        2
    );
    assert_eq!(store.devices(&c).await.unwrap()[0].receipts, 2);
    drop(store);
    assert_eq!(
        stored_device(dir.path(), "H1"),
        Some((2, 2)),
        "written back at close"
    );
    assert_eq!(devices_through(dir.path()), second.seq);

    // Receipts committed after the last write-back, then a crash: stored, not folded in.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    for device in ["H1", "H2"] {
        conn.execute(
            "INSERT INTO receipts (channel, event_id, device, status, time) VALUES ('C', 3, ?1, 'ok', 0)",
            [device],
        )
        .unwrap();
    }
    let last: u64 = conn
        .query_row("SELECT MAX(seq) FROM receipts", [], |row| row.get(0))
        .unwrap();
    drop(conn);

    let store = open(dir.path(), ROOMY);
    let h1 = store.device(&c, &dev("H1")).await.unwrap().unwrap();
    assert_eq!((h1.last_acked, h1.receipts), (3, 3));
    let h2 = store.device(&c, &dev("H2")).await.unwrap().unwrap();
    assert_eq!(
        (h2.last_acked, h2.receipts, h2.last_op),
        (3, 1, DeviceOp::Feedback)
    );
    assert_eq!(devices_through(dir.path()), last);
    // Folded in once: a second open changes nothing.
    drop(store);
    let store = open(dir.path(), ROOMY);
    assert_eq!(
        store
            .device(&c, &dev("H1"))
            .await
            .unwrap()
            .unwrap()
            .receipts,
        3
    );
}
