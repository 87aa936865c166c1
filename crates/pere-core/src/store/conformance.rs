//! The store conformance suite: every backend runs these same checks of the [`Store`] contract.

use std::future::Future;
use std::time::Duration;

use pere_proto::event::{now, NewEvent};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{DeviceOp, DeviceRecord, DeviceTouch, Receipt};

use crate::error::StoreError;
use crate::store::{ReceiptBatch, ReceiptLine, Retention, Store};

pub(crate) fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

pub(crate) fn dev(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

pub(crate) fn body(text: &str) -> NewEvent {
    NewEvent {
        publisher: Some(dev("P1")),
        event_type: None,
        body: text.to_owned(),
        idempotency_key: None,
    }
}

fn receipt(channel: &str, id: u64, device: &str, status: &str) -> Receipt {
    Receipt {
        seq: 0,
        channel: ch(channel),
        event_id: id,
        device: dev(device),
        status: status.into(),
        time: now(),
    }
}

pub(crate) const ROOMY: Retention = Retention {
    max_events: 1000,
    max_age: None,
    idempotency_window: None,
};

/// Runs every check, each on a fresh store made by `make`.
pub(crate) async fn run_all<S, F, Fut>(make: F)
where
    S: Store,
    F: Fn(Retention) -> Fut,
    Fut: Future<Output = S>,
{
    ids_are_per_channel_sequences(make(ROOMY).await).await;
    read_pages_and_head(make(ROOMY).await).await;
    count_retention_prunes_oldest(
        make(Retention {
            max_events: 3,
            ..ROOMY
        })
        .await,
    )
    .await;
    receipts_are_kept_and_move_cursors(make(ROOMY).await).await;
    device_touches_only_move_forward(make(ROOMY).await).await;
    concurrent_appends_get_unique_ids(make(ROOMY).await).await;
    bodies_round_trip_verbatim(make(ROOMY).await).await;
    receipt_stream_and_unacknowledged(make(ROOMY).await).await;
    memberships_fix_expected_recipients(make(ROOMY).await).await;
    devices_come_in_pages(make(ROOMY).await).await;
    make(ROOMY)
        .await
        .probe()
        .await
        .expect("a healthy store passes its probe");
    age_retention_prunes(
        make(Retention {
            max_events: 100,
            max_age: Some(Duration::from_millis(1)),
            ..ROOMY
        })
        .await,
    )
    .await;
    idempotency_keys_store_an_event_once(make(ROOMY).await).await;
    concurrent_appends_with_one_key_store_one_event(make(ROOMY).await).await;
    idempotency_keys_go_with_their_events(
        make(Retention {
            max_events: 2,
            ..ROOMY
        })
        .await,
    )
    .await;
    batches_get_consecutive_ids(make(ROOMY).await).await;
    batches_are_all_or_none(make(ROOMY).await).await;
    batches_answer_held_keys(make(ROOMY).await).await;
    concurrent_batches_never_interleave(make(ROOMY).await).await;
    let brief = Retention {
        idempotency_window: Some(BRIEF_WINDOW),
        ..ROOMY
    };
    keys_past_the_window_are_forgotten(make(brief).await).await;
    keyed_receipts_are_recorded_once(make(ROOMY).await).await;
    receipt_keys_past_the_window_are_forgotten(make(brief).await).await;
    receipt_keys_go_with_their_receipts(
        make(Retention {
            max_events: 2,
            ..ROOMY
        })
        .await,
    )
    .await;
    the_floor_keeps_ids_above_what_was_handed_out(make(ROOMY).await).await;
    receipt_batches_are_all_or_none(make(ROOMY).await).await;
    receipt_batches_answer_held_keys(make(ROOMY).await).await;
    receipt_batches_can_skip_what_was_acknowledged(make(ROOMY).await).await;
    cumulative_batches_are_all_or_none_and_in_order(make(ROOMY).await).await;
    idempotency_keys_are_per_publisher(make(ROOMY).await).await;
    batch_keys_are_per_publisher(make(ROOMY).await).await;
    receipt_keys_are_per_device(make(ROOMY).await).await;
}

fn line(event_id: u64, status: &str, key: Option<&str>) -> ReceiptLine {
    ReceiptLine {
        event_id,
        status: status.into(),
        key: key.map(str::to_owned),
    }
}

fn receipt_batch(channel: &str, device: &str, lines: Vec<ReceiptLine>) -> ReceiptBatch {
    ReceiptBatch {
        channel: ch(channel),
        device: dev(device),
        time: now(),
        lines,
        unacknowledged_only: false,
    }
}

/// A batch of receipts is recorded whole, in line order, or not at all.
async fn receipt_batches_are_all_or_none(store: impl Store) {
    let c = ch("RB");
    let unknown = store
        .record_receipts(receipt_batch("RB", "H1", vec![line(1, "ok", None)]))
        .await;
    assert!(
        matches!(unknown, Err(StoreError::UnknownEvent { id: 1 })),
        "no such channel: {unknown:?}"
    );
    for text in ["1", "2", "3"] {
        store.append(&c, body(text)).await.unwrap();
    }
    let refused = store
        .record_receipts(receipt_batch(
            "RB",
            "H1",
            vec![
                line(1, "ok", None),
                line(2, "ok", None),
                line(9, "ok", None),
            ],
        ))
        .await;
    assert!(
        matches!(refused, Err(StoreError::UnknownEvent { id: 9 })),
        "{refused:?}"
    );
    let refused = store
        .record_receipts(receipt_batch(
            "RB",
            "H1",
            vec![line(1, "ok", None), line(0, "ok", None)],
        ))
        .await;
    assert!(
        matches!(refused, Err(StoreError::UnknownEvent { id: 0 })),
        "{refused:?}"
    );
    let malformed = store
        .record_receipts(receipt_batch("RB", "H1", vec![line(1, "ok", Some("a b"))]))
        .await;
    assert!(matches!(malformed, Err(StoreError::InvalidIdempotencyKey)));
    assert_eq!(store.receipt_head(&c).await.unwrap(), 0, "nothing recorded");
    assert!(store.receipts(&c, 1).await.unwrap().is_empty());
    assert!(store.device(&c, &dev("H1")).await.unwrap().is_none());
    assert!(store
        .record_receipts(receipt_batch("RB", "H1", Vec::new()))
        .await
        .unwrap()
        .is_empty());

    let recorded = store
        .record_receipts(receipt_batch(
            "RB",
            "H1",
            vec![
                line(3, "ok", None),
                line(1, "done", None),
                line(3, "read", None),
            ],
        ))
        .await
        .unwrap();
    let shown: Vec<(usize, u64, &str, bool)> = recorded
        .iter()
        .map(|r| (r.line, r.receipt.event_id, &*r.receipt.status, r.new))
        .collect();
    assert_eq!(
        shown,
        [
            (0, 3, "ok", true),
            (1, 1, "done", true),
            (2, 3, "read", true)
        ]
    );
    let seqs: Vec<u64> = recorded.iter().map(|r| r.receipt.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in line order: {seqs:?}"
    );
    let streamed = store.receipts_after(&c, 0, 10).await.unwrap();
    assert_eq!(
        streamed,
        recorded
            .iter()
            .map(|r| r.receipt.clone())
            .collect::<Vec<_>>(),
        "the receipt stream shows them in order"
    );
    assert_eq!(store.receipts(&c, 3).await.unwrap().len(), 2);
    let record = store.device(&c, &dev("H1")).await.unwrap().unwrap();
    assert_eq!(
        (record.receipts, record.last_acked, record.last_delivered),
        (3, 3, 3)
    );
    assert_eq!(record.last_op, DeviceOp::Feedback);
    assert_eq!(
        record.last_event_id.as_deref(),
        Some("3"),
        "the last line's"
    );
}

/// Keyed lines are answered by the receipt their key holds; a key held for another receipt
/// refuses the whole batch.
async fn receipt_batches_answer_held_keys(store: impl Store) {
    let c = ch("RBK");
    for text in ["1", "2", "3"] {
        store.append(&c, body(text)).await.unwrap();
    }
    let at = |lines| receipt_batch("RBK", "H1", lines);
    let single = store
        .record_receipt_keyed(receipt("RBK", 1, "H1", "ok"), "k1".to_owned())
        .await
        .unwrap();
    let first = store
        .record_receipts(at(vec![
            line(1, "ok", Some("k1")),
            line(2, "ok", Some("k2")),
            line(2, "ok", Some("k2")),
            line(3, "ok", None),
        ]))
        .await
        .unwrap();
    assert_eq!(first.len(), 4);
    assert_eq!(
        (first[0].receipt.clone(), first[0].new),
        (single.receipt.clone(), false),
        "a key a single receipt holds"
    );
    assert!(first[1].new && first[3].new);
    assert_eq!(
        (first[2].receipt.clone(), first[2].new),
        (first[1].receipt.clone(), false),
        "a key an earlier line gave"
    );
    let head = store.receipt_head(&c).await.unwrap();
    let again = store
        .record_receipts(at(vec![
            line(2, "ok", Some("k2")),
            line(3, "ok", Some("k3")),
        ]))
        .await
        .unwrap();
    assert_eq!(
        (again[0].receipt.clone(), again[0].new),
        (first[1].receipt.clone(), false)
    );
    assert!(again[1].new && again[1].receipt.seq > head);
    let head = store.receipt_head(&c).await.unwrap();
    for (lines, held) in [
        (
            vec![line(1, "ok", None), line(2, "done", Some("k2"))],
            Some(2),
        ),
        (
            vec![line(1, "ok", None), line(3, "ok", Some("k2"))],
            Some(2),
        ),
        (
            vec![line(1, "ok", Some("k4")), line(2, "ok", Some("k4"))],
            None,
        ),
        (
            vec![line(1, "ok", Some("k5")), line(1, "no", Some("k5"))],
            None,
        ),
    ] {
        let refused = store.record_receipts(at(lines)).await;
        match refused {
            Err(StoreError::IdempotencyConflict { id, key }) => {
                assert_eq!(id, held, "{key}");
            }
            other => panic!("a conflict was expected: {other:?}"),
        }
    }
    assert_eq!(
        store.receipt_head(&c).await.unwrap(),
        head,
        "nothing recorded"
    );
    let record = store.device(&c, &dev("H1")).await.unwrap().unwrap();
    assert_eq!(record.receipts, 4, "one single and three new lines");
    // Another device's batch with H1's key, for another status: its own new receipt.
    let other_device = store
        .record_receipts(receipt_batch("RBK", "H2", vec![line(2, "no", Some("k2"))]))
        .await
        .unwrap();
    assert!(other_device[0].new, "{other_device:?}");
    assert_eq!(other_device[0].receipt.device, dev("H2"));
}

/// With `unacknowledged_only`, events the device acknowledged already, and events an earlier
/// line names, are left out (a cumulative receipt).
async fn receipt_batches_can_skip_what_was_acknowledged(store: impl Store) {
    let c = ch("RBU");
    for text in ["1", "2", "3", "4"] {
        store.append(&c, body(text)).await.unwrap();
    }
    store
        .record_receipt(receipt("RBU", 2, "H1", "ok"))
        .await
        .unwrap();
    store
        .record_receipt(receipt("RBU", 3, "H2", "ok"))
        .await
        .unwrap();
    let mut batch = receipt_batch(
        "RBU",
        "H1",
        [1, 2, 3, 3].map(|id| line(id, "rx ok", None)).into(),
    );
    batch.unacknowledged_only = true;
    let recorded = store.record_receipts(batch).await.unwrap();
    let shown: Vec<(usize, u64, bool)> = recorded
        .iter()
        .map(|r| (r.line, r.receipt.event_id, r.new))
        .collect();
    assert_eq!(shown, [(0, 1, true), (2, 3, true)]);
    let owed: Vec<u64> = store
        .unacknowledged(&c, &dev("H1"), 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(owed, [4]);
    assert_eq!(store.receipts(&c, 2).await.unwrap().len(), 1, "not twice");
}

/// A batch that records only what its device owes (a cumulative receipt) is refused whole
/// for an unknown id, and otherwise stored as the lines come: its receipts follow each other
/// in the receipt stream in line order, and the device's record counts each.
async fn cumulative_batches_are_all_or_none_and_in_order(store: impl Store) {
    let c = ch("RBC");
    for text in ["1", "2", "3", "4"] {
        store.append(&c, body(text)).await.unwrap();
    }
    store
        .record_receipt(receipt("RBC", 3, "C1", "ok"))
        .await
        .unwrap();
    let mut refused = receipt_batch("RBC", "C1", [1, 9].map(|id| line(id, "ok", None)).into());
    refused.unacknowledged_only = true;
    assert!(matches!(
        store.record_receipts(refused).await,
        Err(StoreError::UnknownEvent { id: 9 })
    ));
    assert!(
        store.receipts(&c, 1).await.unwrap().is_empty(),
        "nothing recorded"
    );
    let mut batch = receipt_batch(
        "RBC",
        "C1",
        [4, 1, 3, 2].map(|id| line(id, "ok", None)).into(),
    );
    batch.unacknowledged_only = true;
    let recorded = store.record_receipts(batch).await.unwrap();
    let shown: Vec<(usize, u64)> = recorded
        .iter()
        .map(|r| (r.line, r.receipt.event_id))
        .collect();
    assert_eq!(shown, [(0, 4), (1, 1), (3, 2)]);
    let stream: Vec<(u64, u64)> = store
        .receipts_after(&c, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.seq, r.event_id))
        .collect();
    assert_eq!(stream.len(), 4);
    assert!(stream.windows(2).all(|w| w[0].0 < w[1].0), "{stream:?}");
    let ids: Vec<u64> = stream.iter().map(|&(_, id)| id).collect();
    assert_eq!(ids, [3, 4, 1, 2]);
    let seqs: Vec<u64> = recorded.iter().map(|r| r.receipt.seq).collect();
    assert_eq!(
        seqs,
        stream[1..].iter().map(|&(seq, _)| seq).collect::<Vec<_>>()
    );
    let record = store
        .devices_named(&c, &[dev("C1")])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((record.receipts, record.last_acked), (4, 4));
}

/// After a store changed, a node adopts it with the greatest id it handed out: no id at or
/// under it is given again, on any channel, and the ids a channel skips are lost.
async fn the_floor_keeps_ids_above_what_was_handed_out(store: impl Store) {
    let (c, d, e) = (ch("FLOOR_C"), ch("FLOOR_D"), ch("FLOOR_E"));
    for text in ["a", "b", "c"] {
        store.append(&c, body(text)).await.unwrap();
    }
    assert_eq!(store.adopt(100).await.unwrap(), 100);
    assert_eq!(
        store.adopt(40).await.unwrap(),
        100,
        "a floor never goes down"
    );
    assert!(
        store.lost(&c).await.unwrap().is_empty(),
        "nothing lost before the next id"
    );
    let next = store.append(&c, body("d")).await.unwrap().event;
    assert_eq!(next.id, 101);
    assert_eq!(store.lost(&c).await.unwrap(), vec![4..=100]);
    // What the channel retained from before the floor may stay (Redis keeps it) or go with the
    // floor (memory, SQLite); nothing is numbered inside the lost ids.
    let page = store.read(&c, 0, 10).await.unwrap();
    let ids: Vec<u64> = page.events.iter().map(|e| e.id).collect();
    assert!(ids == [101] || ids == [1, 2, 3, 101], "{ids:?}");
    assert_eq!(page.head, 101);
    assert_eq!(
        store.append(&d, body("x")).await.unwrap().event.id,
        101,
        "a new channel too"
    );
    assert_eq!(store.lost(&d).await.unwrap(), vec![1..=100]);
    // A receipt for an id handed out before the change is as one for a pruned event.
    store
        .record_receipt(receipt("FLOOR_E", 50, "H1", "ok"))
        .await
        .expect("an id under the floor was handed out: its receipt is recorded");
    assert!(matches!(
        store
            .record_receipt(receipt("FLOOR_C", 200, "H1", "ok"))
            .await,
        Err(StoreError::UnknownEvent { id: 200 })
    ));
    store.reseed(&e, 100).await.unwrap();
    assert_eq!(store.head(&e).await.unwrap(), 100);
    assert_eq!(store.lost(&e).await.unwrap(), vec![1..=100]);
    store.reseed(&e, 100).await.unwrap();
    assert_eq!(
        store.lost(&e).await.unwrap(),
        vec![1..=100],
        "reseeding again changes nothing"
    );
    assert!(store.channels().await.unwrap().contains(&e));
    assert_eq!(store.append(&e, body("y")).await.unwrap().event.id, 101);
}

fn typed(key: Option<&str>, text: &str, event_type: Option<&str>) -> NewEvent {
    NewEvent {
        idempotency_key: key.map(str::to_owned),
        event_type: event_type.map(|t| pere_proto::name::EventType::new(t).unwrap()),
        ..body(text)
    }
}

fn bodies(events: &[std::sync::Arc<pere_proto::event::Event>]) -> Vec<&str> {
    events.iter().map(|e| e.body.as_str()).collect()
}

async fn batches_get_consecutive_ids(store: impl Store) {
    let c = ch("B1");
    store.append(&c, body("before")).await.unwrap();
    let batch: Vec<NewEvent> = (0..5).map(|i| body(&format!("b{i}"))).collect();
    let appended = store.append_batch(&c, batch).await.unwrap();
    assert_eq!(
        appended.iter().map(|a| a.event.id).collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6]
    );
    assert!(appended.iter().all(|a| a.new));
    assert!(
        appended
            .windows(2)
            .all(|w| w[0].event.time == w[1].event.time),
        "one time for the batch"
    );
    assert_eq!(store.head(&c).await.unwrap(), 6);
    let page = store.read(&c, 1, 10).await.unwrap();
    assert_eq!(bodies(&page.events), ["b0", "b1", "b2", "b3", "b4"]);
    assert!(
        store.append_batch(&c, Vec::new()).await.unwrap().is_empty(),
        "an empty batch stores nothing"
    );
    assert_eq!(store.append(&c, body("after")).await.unwrap().event.id, 7);
}

async fn batches_are_all_or_none(store: impl Store) {
    let c = ch("B2");
    store
        .append(&c, typed(Some("k1"), "one", None))
        .await
        .unwrap();
    let bad_key = vec![body("a"), typed(Some("bad key"), "b", None)];
    assert!(matches!(
        store.append_batch(&c, bad_key).await,
        Err(StoreError::InvalidIdempotencyKey)
    ));
    let conflict = vec![
        body("a"),
        typed(Some("k2"), "b", None),
        typed(Some("k1"), "not one", None),
    ];
    match store.append_batch(&c, conflict).await {
        Err(StoreError::IdempotencyConflict { id: Some(1), key }) => assert_eq!(key, "k1"),
        other => panic!("a conflict with a stored key: {other:?}"),
    }
    let retyped = vec![typed(Some("k1"), "one", Some("other"))];
    assert!(
        matches!(
            store.append_batch(&c, retyped).await,
            Err(StoreError::IdempotencyConflict { .. })
        ),
        "type counts"
    );
    let twice = vec![typed(Some("k3"), "x", None), typed(Some("k3"), "y", None)];
    assert!(matches!(
        store.append_batch(&c, twice).await,
        Err(StoreError::IdempotencyConflict { id: None, .. })
    ));
    assert_eq!(
        store.head(&c).await.unwrap(),
        1,
        "a refused batch stores nothing and consumes no id"
    );
    assert_eq!(store.read(&c, 0, 10).await.unwrap().events.len(), 1);
    // The keys of a refused batch were not kept.
    assert!(
        store
            .append(&c, typed(Some("k2"), "other", None))
            .await
            .unwrap()
            .new
    );
    assert_eq!(store.append(&c, body("next")).await.unwrap().event.id, 3);
}

async fn batches_answer_held_keys(store: impl Store) {
    let c = ch("B3");
    let first = store
        .append(&c, typed(Some("a"), "A", None))
        .await
        .unwrap()
        .event;
    let batch = vec![
        typed(Some("a"), "A", None),
        typed(Some("b"), "B", Some("t")),
        body("plain"),
        typed(Some("b"), "B", Some("t")),
    ];
    let appended = store.append_batch(&c, batch).await.unwrap();
    let seen: Vec<(u64, bool)> = appended.iter().map(|a| (a.event.id, a.new)).collect();
    assert_eq!(seen, [(first.id, false), (2, true), (3, true), (2, false)]);
    assert_eq!(
        appended[0].event.time, first.time,
        "the stored event, as first answered"
    );
    assert_eq!(store.head(&c).await.unwrap(), 3);
    // Sent again whole: every event is answered from its key, but an event without a key is new.
    let again = vec![
        typed(Some("a"), "A", None),
        typed(Some("b"), "B", Some("t")),
    ];
    let replayed = store.append_batch(&c, again).await.unwrap();
    assert_eq!(
        replayed
            .iter()
            .map(|a| (a.event.id, a.new))
            .collect::<Vec<_>>(),
        [(1, false), (2, false)]
    );
    assert_eq!(store.head(&c).await.unwrap(), 3);
    assert_eq!(
        store
            .event(&c, 2)
            .await
            .unwrap()
            .unwrap()
            .idempotency_key
            .as_deref(),
        Some("b")
    );
}

async fn concurrent_batches_never_interleave(store: impl Store) {
    let c = ch("B4");
    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let (store, c) = (store.clone(), c.clone());
            tokio::spawn(async move {
                let batch = (0..20).map(|i| body(&format!("{t}:{i}"))).collect();
                store.append_batch(&c, batch).await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        let ids: Vec<u64> = task.await.unwrap().iter().map(|a| a.event.id).collect();
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "consecutive: {ids:?}"
        );
    }
    assert_eq!(store.head(&c).await.unwrap(), 120);
}

/// The idempotency window of the tests that let keys expire. Two appends in a row must fall
/// within it however loaded the machine (30 ms did not, on a busy SQLite run of the whole suite),
/// and each of those tests waits it out a few times.
const BRIEF_WINDOW: Duration = Duration::from_millis(250);

/// Long enough for a key to have left [`BRIEF_WINDOW`].
const PAST_THE_WINDOW: Duration = Duration::from_millis(300);

async fn keys_past_the_window_are_forgotten(store: impl Store) {
    let c = ch("W");
    let first = store.append(&c, typed(Some("w"), "1", None)).await.unwrap();
    assert!(
        !store
            .append(&c, typed(Some("w"), "1", None))
            .await
            .unwrap()
            .new,
        "within the window"
    );
    tokio::time::sleep(PAST_THE_WINDOW).await;
    let later = store.append(&c, typed(Some("w"), "1", None)).await.unwrap();
    assert!(later.new, "a key past the window is a new event");
    assert_eq!(later.event.id, first.event.id + 1);
    assert!(
        !store
            .append(&c, typed(Some("w"), "1", None))
            .await
            .unwrap()
            .new,
        "and is held again"
    );
    tokio::time::sleep(PAST_THE_WINDOW).await;
    let batch = store
        .append_batch(&c, vec![typed(Some("w"), "other body", None)])
        .await
        .unwrap();
    assert!(batch[0].new, "no conflict with a forgotten key");
}

fn keyed_receipt(id: u64, device: &str, status: &str) -> Receipt {
    receipt("RK", id, device, status)
}

async fn keyed_receipts_are_recorded_once(store: impl Store) {
    let c = ch("RK");
    assert!(matches!(
        store
            .record_receipt_keyed(keyed_receipt(1, "H1", "ok"), "r1".to_owned())
            .await,
        Err(StoreError::UnknownEvent { id: 1 })
    ));
    store.append(&c, body("1")).await.unwrap();
    store.append(&c, body("2")).await.unwrap();
    let first = store
        .record_receipt_keyed(keyed_receipt(1, "H1", "ok"), "r1".to_owned())
        .await
        .unwrap();
    assert!(first.new);
    assert_eq!(first.record.receipts, 1);
    let again = store
        .record_receipt_keyed(keyed_receipt(1, "H1", "ok"), "r1".to_owned())
        .await
        .unwrap();
    assert!(!again.new, "the same key twice records one receipt");
    assert_eq!(
        again.receipt, first.receipt,
        "the stored receipt, seq and time included"
    );
    assert_eq!(
        again.record.receipts, 1,
        "nothing applied to the device again"
    );
    // The caller compares: the store answers the stored receipt whatever the retry says.
    let other = store
        .record_receipt_keyed(keyed_receipt(2, "H1", "done"), "r1".to_owned())
        .await
        .unwrap();
    assert_eq!((other.new, other.receipt.event_id), (false, 1));
    assert_eq!(store.receipts(&c, 1).await.unwrap().len(), 1);
    assert_eq!(store.receipt_head(&c).await.unwrap(), first.receipt.seq);
    let second = store
        .record_receipt_keyed(keyed_receipt(2, "H1", "ok"), "r2".to_owned())
        .await
        .unwrap();
    assert!(second.new);
    assert!(
        store
            .record_receipt_keyed(keyed_receipt(2, "H1", "ok"), "r 3".to_owned())
            .await
            .is_err(),
        "a bad key"
    );
    // Receipt keys and event keys are apart.
    assert!(
        store
            .append(&c, typed(Some("r1"), "3", None))
            .await
            .unwrap()
            .new
    );
    let (plain, _) = store
        .record_receipt(keyed_receipt(2, "H1", "ok"))
        .await
        .unwrap();
    assert!(
        plain.seq > second.receipt.seq,
        "a receipt without a key is always recorded"
    );
}

async fn receipt_keys_past_the_window_are_forgotten(store: impl Store) {
    let c = ch("RK");
    store.append(&c, body("1")).await.unwrap();
    let first = store
        .record_receipt_keyed(keyed_receipt(1, "H1", "ok"), "w".to_owned())
        .await
        .unwrap();
    tokio::time::sleep(PAST_THE_WINDOW).await;
    let later = store
        .record_receipt_keyed(keyed_receipt(1, "H1", "ok"), "w".to_owned())
        .await
        .unwrap();
    assert!(later.new, "a key past the window is a new receipt");
    assert!(later.receipt.seq > first.receipt.seq);
}

/// With no window (`--idempotency-window 0`) a receipt key lives as long as its receipt: once
/// retention has pruned the receipt (its event and the receipt stream's oldest entries), the key
/// is free again.
pub(crate) async fn receipt_keys_go_with_their_receipts(store: impl Store) {
    let c = ch("RG");
    let at = |id, status: &str| receipt("RG", id, "H1", status);
    store.append(&c, body("1")).await.unwrap();
    let first = store
        .record_receipt_keyed(at(1, "ok"), "once".to_owned())
        .await
        .unwrap();
    assert!(first.new);
    let again = store
        .record_receipt_keyed(at(1, "ok"), "once".to_owned())
        .await
        .unwrap();
    assert!(!again.new, "held while its receipt is retained");
    for text in ["2", "3"] {
        store.append(&c, body(text)).await.unwrap();
    }
    for status in ["a", "b"] {
        store.record_receipt(at(3, status)).await.unwrap();
    }
    let later = store
        .record_receipt_keyed(at(3, "ok"), "once".to_owned())
        .await
        .unwrap();
    assert!(later.new, "the key left with its receipt");
    assert_eq!(later.receipt.event_id, 3);
}

fn keyed(key: &str, text: &str) -> NewEvent {
    NewEvent {
        idempotency_key: Some(key.to_owned()),
        ..body(text)
    }
}

async fn idempotency_keys_store_an_event_once(store: impl Store) {
    let c = ch("K");
    let first = store.append(&c, keyed("order-1", "a")).await.unwrap();
    assert!(first.new);
    let again = store.append(&c, keyed("order-1", "b")).await.unwrap();
    assert!(!again.new, "the same key twice stores one event");
    assert_eq!(
        (again.event.id, again.event.time),
        (first.event.id, first.event.time)
    );
    assert_eq!(
        again.event.body, "a",
        "the stored event, not the second one"
    );
    assert_eq!(again.event.idempotency_key.as_deref(), Some("order-1"));
    let other = store.append(&c, keyed("order-2", "c")).await.unwrap();
    assert!(other.new);
    assert_eq!(
        other.event.id,
        first.event.id + 1,
        "a repeated key consumed no id"
    );
    for _ in 0..2 {
        assert!(
            store.append(&c, body("no key")).await.unwrap().new,
            "an event without a key is always new"
        );
    }
    assert_eq!(store.head(&c).await.unwrap(), 4);
    let read = store.event(&c, first.event.id).await.unwrap().unwrap();
    assert_eq!(
        read.idempotency_key.as_deref(),
        Some("order-1"),
        "the key is stored with its event"
    );
    assert!(
        store
            .append(&ch("K2"), keyed("order-1", "d"))
            .await
            .unwrap()
            .new,
        "keys are per channel"
    );
    for bad in ["", "with space", "tab\t", "é", &"k".repeat(256)] {
        assert!(
            matches!(
                store.append(&c, keyed(bad, "x")).await,
                Err(StoreError::InvalidIdempotencyKey)
            ),
            "{bad:?} refused"
        );
    }
    assert_eq!(
        store.head(&c).await.unwrap(),
        4,
        "a refused key consumes no id"
    );
    assert!(
        store
            .append(&c, keyed(&"~".repeat(255), "x"))
            .await
            .unwrap()
            .new
    );
}

async fn concurrent_appends_with_one_key_store_one_event(store: impl Store) {
    let c = ch("KC");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, c) = (store.clone(), c.clone());
            tokio::spawn(async move { store.append(&c, keyed("once", "x")).await.unwrap() })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        let appended = task.await.unwrap();
        assert_eq!(appended.event.id, 1);
        new += usize::from(appended.new);
    }
    assert_eq!(new, 1);
    assert_eq!(store.head(&c).await.unwrap(), 1);
}

async fn idempotency_keys_go_with_their_events(store: impl Store) {
    let c = ch("KP");
    store.append(&c, keyed("k1", "1")).await.unwrap();
    store.append(&c, body("2")).await.unwrap();
    store.append(&c, body("3")).await.unwrap();
    assert_eq!(store.read(&c, 0, 10).await.unwrap().first_retained, 2);
    // Pruned with its event: the key may be used again.
    let again = store.append(&c, keyed("k1", "4")).await.unwrap();
    assert!(again.new);
    assert_eq!(again.event.id, 4);
}

async fn ids_are_per_channel_sequences(store: impl Store) {
    let (a, b) = (ch("A"), ch("B"));
    assert_eq!(store.head(&a).await.unwrap(), 0);
    for expected in 1..=3 {
        assert_eq!(
            store.append(&a, body("x")).await.unwrap().event.id,
            expected
        );
    }
    assert_eq!(store.append(&b, body("y")).await.unwrap().event.id, 1);
    assert_eq!(store.head(&a).await.unwrap(), 3);
    assert_eq!(store.head(&b).await.unwrap(), 1);
    assert_eq!(store.channels().await.unwrap(), vec![a, b]);
}

async fn read_pages_and_head(store: impl Store) {
    let c = ch("C");
    let empty = store.read(&c, 0, 10).await.unwrap();
    assert!(empty.events.is_empty());
    assert_eq!((empty.head, empty.first_retained), (0, 1));
    for i in 1..=5 {
        store.append(&c, body(&format!("e{i}"))).await.unwrap();
    }
    let page = store.read(&c, 1, 2).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(page.events[0].body, "e2");
    assert_eq!((page.head, page.first_retained), (5, 1));
    assert!(store.read(&c, 5, 10).await.unwrap().events.is_empty());
    // Only the bounds, as the channel list reads them.
    let bounds = store.read(&c, u64::MAX, 0).await.unwrap();
    assert_eq!(
        (bounds.events.len(), bounds.head, bounds.first_retained),
        (0, 5, 1)
    );
    let recent = store.recent(&c, 2).await.unwrap();
    assert_eq!(recent.iter().map(|e| e.id).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(store.event(&c, 3).await.unwrap().unwrap().body, "e3");
    assert!(store.event(&c, 6).await.unwrap().is_none());
}

async fn count_retention_prunes_oldest(store: impl Store) {
    let c = ch("C");
    for _ in 0..5 {
        store.append(&c, body("x")).await.unwrap();
    }
    let page = store.read(&c, 0, 100).await.unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(page.first_retained, 3);
    // A receipt for a pruned (but once published) event is accepted; one for a future id is not.
    store
        .record_receipt(receipt("C", 1, "H1", "late"))
        .await
        .unwrap();
    assert!(matches!(
        store.record_receipt(receipt("C", 6, "H1", "ok")).await,
        Err(StoreError::UnknownEvent { id: 6 })
    ));
}

async fn receipts_are_kept_and_move_cursors(store: impl Store) {
    let c = ch("R");
    assert!(matches!(
        store.record_receipt(receipt("R", 1, "H1", "ok")).await,
        Err(StoreError::UnknownEvent { id: 1 })
    ));
    store.append(&c, body("1")).await.unwrap();
    store.append(&c, body("2")).await.unwrap();
    assert!(matches!(
        store.record_receipt(receipt("R", 0, "H1", "ok")).await,
        Err(StoreError::UnknownEvent { id: 0 })
    ));
    store
        .record_receipt(receipt("R", 2, "H1", "rx ok"))
        .await
        .unwrap();
    store
        .record_receipt(receipt("R", 2, "H1", "done"))
        .await
        .unwrap();
    let (_, record) = store
        .record_receipt(receipt("R", 1, "H1", "late"))
        .await
        .unwrap();
    assert_eq!(record.last_acked, 2, "the ack cursor never moves back");
    assert_eq!(record.receipts, 3);
    assert_eq!(record.last_op, DeviceOp::Feedback);
    let statuses: Vec<String> = store
        .receipts(&c, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.status.to_string())
        .collect();
    assert_eq!(statuses, vec!["rx ok", "done"]);
    assert_eq!(store.devices(&c).await.unwrap().len(), 1);
}

async fn device_touches_only_move_forward(store: impl Store) {
    let c = ch("D");
    let touch = |op, delivered| DeviceTouch {
        channel: c.clone(),
        device: dev("H1"),
        op,
        at: now(),
        last_event_id: Some("7".to_owned()),
        delivered,
    };
    let first = store.touch_device(touch(DeviceOp::Feed, 0)).await.unwrap();
    assert_eq!(first.last_op, DeviceOp::Feed);
    // Going offline keeps the original's `op` and `Last-Event-Id`; it moves `last_seen`.
    let offline = DeviceTouch {
        last_event_id: None,
        ..touch(DeviceOp::Disconnect, 9)
    };
    let gone = store.touch_device(offline).await.unwrap();
    assert_eq!(
        (gone.last_op, gone.last_event_id.as_deref()),
        (DeviceOp::Feed, Some("7"))
    );
    assert!(gone.last_seen >= first.last_seen);
    let record = store.touch_device(touch(DeviceOp::Feed, 4)).await.unwrap();
    assert_eq!(record.last_delivered, 9);
    assert_eq!(record.first_seen, first.first_seen);
    let again = store.device(&c, &dev("H1")).await.unwrap().unwrap();
    assert_eq!(again, record);
    assert!(store.device(&c, &dev("nobody")).await.unwrap().is_none());
    let named = store
        .devices_named(&c, &[dev("nobody"), dev("H1")])
        .await
        .unwrap();
    assert_eq!(named, vec![record], "only those that have a record");
    assert!(store.devices_named(&c, &[]).await.unwrap().is_empty());
}

async fn concurrent_appends_get_unique_ids(store: impl Store) {
    let c = ch("P");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, c) = (store.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..50 {
                ids.push(store.append(&c, body("x")).await.unwrap().event.id);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
}

async fn bodies_round_trip_verbatim(store: impl Store) {
    let c = ch("V");
    let text = "line 1\r\nline 2\n\n  ünïcødé 🍐\n";
    let typed = NewEvent {
        publisher: None,
        event_type: Some(pere_proto::name::EventType::new("order.created").unwrap()),
        body: text.to_owned(),
        idempotency_key: None,
    };
    let sent = store.append(&c, typed).await.unwrap().event;
    let read = store.event(&c, sent.id).await.unwrap().unwrap();
    assert_eq!(read.body, text);
    assert_eq!(read.time, sent.time);
    assert_eq!(read.publisher, None);
    assert_eq!(
        read.event_type.as_ref().map(|t| t.as_str()),
        Some("order.created")
    );
    assert_eq!(read.frame(), sent.frame());
}

async fn age_retention_prunes(store: impl Store) {
    let c = ch("Age");
    store.append(&c, body("old")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.append(&c, body("new")).await.unwrap();
    let page = store.read(&c, 0, 10).await.unwrap();
    assert_eq!(
        page.events
            .iter()
            .map(|e| e.body.as_str())
            .collect::<Vec<_>>(),
        vec!["new"]
    );
    assert_eq!(page.first_retained, 2);
}

async fn receipt_stream_and_unacknowledged(store: impl Store) {
    let c = ch("S");
    for i in 1..=4 {
        store.append(&c, body(&format!("e{i}"))).await.unwrap();
    }
    assert_eq!(store.receipt_head(&c).await.unwrap(), 0);
    let mut seqs = Vec::new();
    for (id, device) in [(1, "A"), (2, "A"), (2, "B"), (4, "A")] {
        let head = store.receipt_head(&c).await.unwrap();
        let (stored, _) = store
            .record_receipt(receipt("S", id, device, "ok"))
            .await
            .unwrap();
        assert_eq!((stored.event_id, stored.device.as_str()), (id, device));
        assert!(
            stored.seq > head,
            "a new receipt is beyond the head read before it"
        );
        assert_eq!(store.receipt_head(&c).await.unwrap(), stored.seq);
        seqs.push(stored.seq);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "receipt seqs increase: {seqs:?}"
    );
    let after_first: Vec<u64> = store
        .receipts_after(&c, seqs[0], 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(after_first, seqs[1..].to_vec());
    assert_eq!(
        store.receipts_after(&c, seqs[1], 1).await.unwrap()[0].seq,
        seqs[2]
    );
    let ids = |events: Vec<std::sync::Arc<pere_proto::event::Event>>| {
        events.iter().map(|e| e.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store.unacknowledged(&c, &dev("A"), 0, 10).await.unwrap()),
        vec![3]
    );
    assert_eq!(
        ids(store.unacknowledged(&c, &dev("B"), 0, 10).await.unwrap()),
        vec![1, 3, 4]
    );
    assert_eq!(
        ids(store.unacknowledged(&c, &dev("B"), 1, 1).await.unwrap()),
        vec![3]
    );
}

async fn memberships_fix_expected_recipients(store: impl Store) {
    let c = ch("M");
    store.append(&c, body("before")).await.unwrap();
    let joined = store.add_recipient(&c, &dev("A"), now()).await.unwrap();
    assert_eq!((joined.joined_after, joined.left_after), (1, None));
    assert_eq!(
        store.add_recipient(&c, &dev("A"), now()).await.unwrap(),
        joined,
        "adding twice keeps the membership"
    );
    store.append(&c, body("for A")).await.unwrap();
    let left = store
        .remove_recipient(&c, &dev("A"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left.left_after, Some(2));
    assert!(store
        .remove_recipient(&c, &dev("A"))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .remove_recipient(&c, &dev("nobody"))
        .await
        .unwrap()
        .is_none());
    store.append(&c, body("after")).await.unwrap();
    let back = store.add_recipient(&c, &dev("A"), now()).await.unwrap();
    assert_eq!(back.joined_after, 3);
    let all = store.memberships(&c).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(!all[0].expects(1) && all[0].expects(2) && !all[0].expects(3));
    assert!(all[1].expects(4) && !all[1].expects(3));
}

async fn devices_come_in_pages(store: impl Store) {
    let c = ch("P");
    for name in ["d", "b", "a", "c", "e"] {
        store.add_recipient(&c, &dev(name), now()).await.unwrap();
        store
            .touch_device(DeviceTouch {
                channel: c.clone(),
                device: dev(name),
                op: DeviceOp::Feed,
                at: now(),
                last_event_id: None,
                delivered: 0,
            })
            .await
            .unwrap();
    }
    let names = |records: Vec<DeviceRecord>| {
        records
            .into_iter()
            .map(|r| r.device.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(store.devices_page(&c, None, 2).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(store.devices_page(&c, Some(&dev("b")), 2).await.unwrap()),
        ["c", "d"]
    );
    assert_eq!(
        names(store.devices_page(&c, Some(&dev("d")), 2).await.unwrap()),
        ["e"]
    );
    assert!(store
        .devices_page(&c, Some(&dev("e")), 2)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .devices_page(&ch("Nobody"), None, 2)
        .await
        .unwrap()
        .is_empty());
}

fn published_by(publisher: Option<&str>, key: &str, text: &str) -> NewEvent {
    NewEvent {
        publisher: publisher.map(dev),
        ..keyed(key, text)
    }
}

/// Keys are per publisher: a key one device holds is another's to use for an event of its own,
/// an anonymous publisher's keys are a scope of their own, and each retry finds its own event.
async fn idempotency_keys_are_per_publisher(store: impl Store) {
    let c = ch("KD");
    let mine = store
        .append(&c, published_by(Some("PA"), "order-9", "of A"))
        .await
        .unwrap();
    let theirs = store
        .append(&c, published_by(Some("PB"), "order-9", "of A"))
        .await
        .unwrap();
    assert!(
        theirs.new,
        "another publisher's key is not held for this one"
    );
    assert_eq!(theirs.event.id, mine.event.id + 1);
    assert_eq!(theirs.event.publisher, Some(dev("PB")));
    let anonymous = store
        .append(&c, published_by(None, "order-9", "of nobody"))
        .await
        .unwrap();
    assert!(
        anonymous.new,
        "anonymous publishers have a scope of their own"
    );
    assert_eq!(store.head(&c).await.unwrap(), 3);
    for (publisher, first) in [
        (Some("PA"), &mine),
        (Some("PB"), &theirs),
        (None, &anonymous),
    ] {
        let again = store
            .append(&c, published_by(publisher, "order-9", "retried"))
            .await
            .unwrap();
        assert!(!again.new, "{publisher:?} retried");
        assert_eq!(
            (
                again.event.id,
                again.event.publisher.clone(),
                again.event.body.as_str()
            ),
            (
                first.event.id,
                first.event.publisher.clone(),
                first.event.body.as_str()
            ),
            "{publisher:?} finds its own event"
        );
    }
    assert_eq!(store.head(&c).await.unwrap(), 3, "retries store nothing");
}

/// A batch's keyed events are looked up in their own publisher's scope, as single appends are.
async fn batch_keys_are_per_publisher(store: impl Store) {
    let c = ch("KB");
    let held = store
        .append(&c, published_by(Some("PA"), "a-1", "of A"))
        .await
        .unwrap()
        .event;
    let batch = vec![
        published_by(Some("PB"), "a-1", "of A"),
        published_by(Some("PB"), "b-1", "of B"),
        published_by(Some("PC"), "b-1", "of B"),
    ];
    let appended = store.append_batch(&c, batch).await.unwrap();
    let seen: Vec<(u64, bool)> = appended.iter().map(|a| (a.event.id, a.new)).collect();
    assert_eq!(
        seen,
        [(2, true), (3, true), (4, true)],
        "another's key, and one key of two publishers in one batch, are new events"
    );
    assert!(appended
        .iter()
        .all(|a| a.event.publisher != Some(dev("PA"))));
    // A's own batch with its key finds its event; with another body the whole batch is refused.
    let own = store
        .append_batch(&c, vec![published_by(Some("PA"), "a-1", "of A")])
        .await
        .unwrap();
    assert_eq!((own[0].event.id, own[0].new), (held.id, false));
    let conflict = store
        .append_batch(&c, vec![published_by(Some("PB"), "a-1", "changed")])
        .await;
    assert!(
        matches!(
            conflict,
            Err(StoreError::IdempotencyConflict { id: Some(2), .. })
        ),
        "B's own key with another body names B's own event: {conflict:?}"
    );
    assert_eq!(store.head(&c).await.unwrap(), 4);
}

/// Receipt keys are per device: one device's key is another's to use, and each retry, single or
/// in a batch, finds its own device's receipt.
async fn receipt_keys_are_per_device(store: impl Store) {
    let c = ch("RD");
    store.append(&c, body("1")).await.unwrap();
    let at = |device: &str, status: &str| receipt("RD", 1, device, status);
    let mine = store
        .record_receipt_keyed(at("HA", "shipped"), "r-1".to_owned())
        .await
        .unwrap();
    let theirs = store
        .record_receipt_keyed(at("HB", "ok"), "r-1".to_owned())
        .await
        .unwrap();
    assert!(theirs.new, "another device's key is not held for this one");
    assert_eq!(
        (theirs.receipt.device.as_str(), &*theirs.receipt.status),
        ("HB", "ok")
    );
    assert_eq!(theirs.record.device, dev("HB"));
    for first in [&mine, &theirs] {
        let again = store
            .record_receipt_keyed(
                at(first.receipt.device.as_str(), "retried"),
                "r-1".to_owned(),
            )
            .await
            .unwrap();
        assert_eq!(
            (again.receipt.clone(), again.new),
            (first.receipt.clone(), false)
        );
    }
    let batch = |device: &str, status: &str| {
        receipt_batch("RD", device, vec![line(1, status, Some("r-1"))])
    };
    let third = store.record_receipts(batch("HC", "ok")).await.unwrap();
    assert!(third[0].new, "a batch line with another device's key");
    assert_eq!(third[0].receipt.device, dev("HC"));
    let own = store.record_receipts(batch("HB", "ok")).await.unwrap();
    assert_eq!(
        (own[0].receipt.clone(), own[0].new),
        (theirs.receipt.clone(), false)
    );
    let conflict = store.record_receipts(batch("HB", "failed")).await;
    assert!(
        matches!(
            conflict,
            Err(StoreError::IdempotencyConflict { id: Some(1), .. })
        ),
        "{conflict:?}"
    );
    assert_eq!(store.receipts(&c, 1).await.unwrap().len(), 3);
}
