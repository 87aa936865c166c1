//! The client library (`pere_client`): `Publisher` and `Subscriber` against the real server
//! (receipts, waits, idempotent replays, batches), and against a scripted server for what a
//! correct server never does on cue (failed receipts, drops, gaps, resets, retried batches).

use std::time::Duration;

use futures_util::StreamExt;
use pere_client::{BatchEvent, Error, Failure, Item, Policy, Publisher, Subscriber, Wait};
use pere_e2e::scripted::FakeServer;
use pere_e2e::TestServer;

/// How long any one wait for an item may take.
const WAIT: Duration = Duration::from_secs(20);

/// Quick attempts, so a scripted failure costs milliseconds.
const FAST: Policy = Policy {
    attempts: Some(3),
    first_backoff: Duration::from_millis(10),
    growth: 1,
    jitter: Duration::ZERO,
};

/// The next item, under [`WAIT`].
async fn next(feed: &mut Subscriber) -> Item {
    tokio::time::timeout(WAIT, feed.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_waits_for_the_receipt_a_subscriber_sends() {
    let server = TestServer::start(&[]).await;
    let mut feed = Subscriber::builder(server.host_port(), "ORDERS")
        .device("H1")
        .build()
        .unwrap();
    assert!(matches!(next(&mut feed).await, Item::Connected));
    let device = tokio::spawn(async move {
        let Item::Event(event) = next(&mut feed).await else {
            panic!("an event")
        };
        let receipt = event
            .ack("shipped")
            .await
            .expect("receipt")
            .expect("the server's receipt");
        (event, receipt, feed)
    });

    let publisher = Publisher::builder(server.host_port())
        .device("P1")
        .build()
        .unwrap();
    let pushed = publisher
        .push("ORDERS", serde_json::json!({"order": 42}))
        .event_type("order")
        .wait(Wait::All, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(pushed.id(), Some(1));
    assert_eq!(pushed.satisfied(), Some(true));
    let receipts = &pushed.waited.as_ref().unwrap().receipts;
    assert_eq!(
        (
            receipts.acknowledged[0].device.as_str(),
            receipts.acknowledged[0].status.as_str()
        ),
        ("H1", "shipped")
    );
    assert!(!pushed.replayed);

    let (event, receipt, feed) = device.await.unwrap();
    assert_eq!(
        (event.id.as_str(), event.event.as_str(), event.number()),
        ("1", "order", Some(1))
    );
    assert_eq!(
        event.json::<serde_json::Value>().unwrap(),
        serde_json::json!({"order": 42})
    );
    assert_eq!((receipt.id, receipt.status.as_str()), (1, "shipped"));
    assert_eq!(feed.last_event_id().as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_is_one_event_and_another_body_is_refused_by_code() {
    let server = TestServer::start(&[]).await;
    let publisher = Publisher::builder(server.host_port()).build().unwrap();
    let first = publisher.push("C", "hello").key("order-42").await.unwrap();
    let again = publisher.push("C", "hello").key("order-42").await.unwrap();
    assert_eq!((first.id(), first.replayed), (Some(1), false));
    assert_eq!(
        (again.id(), again.replayed),
        (Some(1), true),
        "answered as the first time"
    );
    assert_eq!(
        again.answer.as_ref().unwrap().time,
        first.answer.as_ref().unwrap().time
    );
    let conflict = publisher
        .push("C", "goodbye")
        .key("order-42")
        .await
        .unwrap_err();
    assert!(matches!(conflict, Error::Refused(_)), "{conflict:?}");
    assert_eq!(conflict.code(), Some("idempotency_conflict"));
    // Nothing is sent for a name the server would refuse.
    assert!(matches!(
        publisher.push("a/b", "x").await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(
        server.get_json("/events/C").await["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_receipts_follow_each_event() {
    let server = TestServer::start(&[]).await;
    let mut feed = Subscriber::builder(server.host_port(), "C")
        .device("H1")
        .auto_ack("rx ok")
        .build()
        .unwrap();
    assert!(matches!(next(&mut feed).await, Item::Connected));
    server.push("C", "one").await;
    server.push("C", "two").await;
    // Events in order; each one's receipt once the server answered it, which may be after the
    // next event: a receipt never holds the feed up.
    let (mut events, mut acked) = (Vec::new(), Vec::new());
    while acked.len() < 2 {
        match next(&mut feed).await {
            Item::Event(event) => events.push(event.id),
            Item::Acked(receipt) => {
                assert!(!receipt.again && receipt.result.is_ok(), "{receipt:?}");
                acked.push((receipt.id, receipt.status));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(events, ["1", "2"]);
    assert_eq!(
        acked,
        [
            ("1".to_owned(), "rx ok".to_owned()),
            ("2".into(), "rx ok".into())
        ]
    );
    assert_eq!(
        server.get_json("/admin/devices/C").await["H1"]["last_acked"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_published_in_order_and_a_retried_batch_is_not_stored_twice() {
    let server = TestServer::start(&[]).await;
    let mut feed = Subscriber::builder(server.host_port(), "C")
        .device("H1")
        .build()
        .unwrap();
    assert!(matches!(next(&mut feed).await, Item::Connected));
    let publisher = Publisher::builder(server.host_port()).build().unwrap();
    let events = [
        BatchEvent::new(serde_json::json!({"n": 1})),
        BatchEvent::new("two\nlines").event_type("note"),
        BatchEvent::new("three").key("own-key"),
    ];
    let pushed = publisher
        .push_batch("C", events.clone())
        .key("batch-1")
        .await
        .unwrap();
    assert_eq!(pushed.answer.ids, [1, 2, 3]);
    assert_eq!(pushed.answer.replayed, 0);
    for (id, event_type, data) in [
        ("1", "message", r#"{"n":1}"#),
        ("2", "note", "two\nlines"),
        ("3", "message", "three"),
    ] {
        let Item::Event(event) = next(&mut feed).await else {
            panic!("event {id}")
        };
        assert_eq!(
            (event.id.as_str(), event.event.as_str(), event.data.as_str()),
            (id, event_type, data)
        );
    }
    let again = publisher
        .push_batch("C", events)
        .key("batch-1")
        .await
        .unwrap();
    assert_eq!(
        (again.answer.ids, again.answer.replayed),
        (vec![1, 2, 3], 3)
    );
    assert_eq!(
        server.get_json("/events/C").await["events"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn a_failed_receipt_keeps_its_key_and_is_sent_again_when_the_event_comes_back() {
    let mut server = FakeServer::start().await;
    let mut feed = Subscriber::builder(server.host_port(), "C")
        .device("H1")
        .receipt_retry(FAST)
        .build()
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut items = Vec::new();
        // Connected, the event, its receipt's failure, the drop, Connected, the receipt again.
        while items.len() < 5 {
            let item = next(&mut feed).await;
            if let Item::Event(event) = &item {
                let failed = event.ack("done").await;
                // The last failure is kept as it came: the server's 503 and its code.
                assert!(
                    matches!(
                        &failed,
                        Err(Error::GaveUp { attempts: 3, last: Failure::Answer(answer) })
                            if answer.code() == Some("store_unavailable")
                    ),
                    "{failed:?}"
                );
            }
            items.push(item);
        }
        items
    });
    let stream = server.expect("GET", "/feed/C").await.stream();
    stream.send("retry: 10\n\nid: 1\ndata: one\n\n");
    let mut keys = Vec::new();
    for _ in 0..3 {
        let ack = server.expect("POST", "/feedback/C").await;
        assert_eq!(ack.request.body, "status=done");
        keys.push(
            ack.request
                .header("idempotency-key")
                .expect("a key")
                .to_owned(),
        );
        ack.json(
            503,
            r#"{"error":{"code":"store_unavailable","message":"down"}}"#,
        );
    }
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key for every attempt: {keys:?}"
    );
    drop(stream);
    // Back from the last id after the server's 10 ms; the redelivered event is not handed over
    // again, but its receipt is sent again, with the same status and key.
    let feed = server.expect("GET", "/feed/C").await;
    assert_eq!(feed.request.header("last-event-id"), Some("1"));
    let stream = feed.stream();
    stream.send("id: 1\ndata: one\n\n");
    let ack = server.expect("POST", "/feedback/C").await;
    assert_eq!(
        (
            ack.request.body.as_str(),
            ack.request.header("idempotency-key")
        ),
        ("status=done", Some(keys[0].as_str()))
    );
    ack.json(
        200,
        r#"{"channel":"C","id":1,"device":"H1","status":"done","time":"2024-01-01T00:00:00.000Z"}"#,
    );
    let items = reader.await.unwrap();
    assert!(
        matches!(items[0], Item::Connected) && matches!(items[1], Item::Event(_)),
        "{items:?}"
    );
    let Item::Reconnecting(r) = &items[2] else {
        panic!("{items:?}")
    };
    assert_eq!((r.failures, r.last_event_id.as_deref()), (0, Some("1")));
    assert!(
        r.delay < Duration::from_millis(200),
        "the server's retry: {:?}",
        r.delay
    );
    assert!(matches!(items[3], Item::Connected), "{items:?}");
    let Item::Acked(acked) = &items[4] else {
        panic!("{items:?}")
    };
    assert!(
        acked.again && acked.id == "1" && acked.status == "done" && acked.result.is_ok(),
        "{acked:?}"
    );
}

#[tokio::test]
async fn gaps_resets_and_duplicates() {
    let mut server = FakeServer::start().await;
    let mut feed = Subscriber::builder(server.host_port(), "C")
        .last_event_id("4")
        .build()
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut items = Vec::new();
        while items.len() < 6 {
            items.push(next(&mut feed).await);
        }
        (items, feed.last_seen())
    });
    let request = server.expect("GET", "/feed/C").await;
    assert_eq!(request.request.header("last-event-id"), Some("4"));
    assert_eq!(
        request.request.header("device"),
        None,
        "no device: an anonymous listener"
    );
    let stream = request.stream();
    stream.send("id: 4\ndata: seen\n\nevent: pere-gap\ndata: {\"from\":5,\"to\":6}\n\nid: 7\ndata: seven\n\nid: 7\ndata: seven\n\n");
    stream.send(
        "event: pere-reset\ndata: {\"last_event_id\":7,\"head\":2}\n\nid: 1\ndata: new one\n\n",
    );
    drop(stream);
    let (items, last_seen) = reader.await.unwrap();
    assert!(matches!(items[0], Item::Connected));
    let Item::Gap {
        notice: Some(gap), ..
    } = &items[1]
    else {
        panic!("{items:?}")
    };
    assert_eq!((gap.from, gap.to), (5, 6));
    assert!(
        matches!(&items[2], Item::Event(e) if e.id == "7"),
        "4 was seen, 7 comes once: {items:?}"
    );
    assert!(
        matches!(&items[3], Item::Reset { notice: Some(r), .. } if r.head == 2),
        "{items:?}"
    );
    assert!(
        matches!(&items[4], Item::Event(e) if e.id == "1" && e.data == "new one"),
        "ids start over: {items:?}"
    );
    // An anonymous listener sends no receipts.
    let Item::Event(event) = &items[4] else {
        unreachable!()
    };
    assert!(matches!(event.ack("ok").await, Err(Error::Invalid(_))));
    let Item::Reconnecting(r) = &items[5] else {
        panic!("{items:?}")
    };
    assert_eq!(
        (r.reason.as_str(), r.last_event_id.as_deref()),
        ("the server closed the stream", Some("1"))
    );
    assert_eq!(
        last_seen,
        Some(1),
        "the ids seen before the reset are forgotten"
    );
}

#[tokio::test]
async fn a_batch_is_ndjson_envelopes_under_one_key_on_every_attempt() {
    let mut server = FakeServer::start().await;
    let publisher = Publisher::builder(server.host_port())
        .device("P1")
        .retry(FAST)
        .build()
        .unwrap();
    let sender = tokio::spawn(async move {
        let events = [
            BatchEvent::new(serde_json::json!({"n": 1})),
            BatchEvent::new("two").event_type("note"),
        ];
        let ok = publisher.push_batch("C", events).await;
        let not_a_batch_server = publisher.push_batch("C", ["x"]).await;
        (ok, not_a_batch_server)
    });
    let first = server.expect("POST", "/push/C").await;
    let request = &first.request;
    assert_eq!(request.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(request.header("pere-batch"), Some("envelope"));
    assert_eq!(request.header("device"), Some("P1"));
    assert_eq!(
        request.body,
        "{\"data\":{\"n\":1}}\n{\"text\":\"two\",\"event\":\"note\"}\n"
    );
    let (key, body) = (
        request.header("idempotency-key").unwrap().to_owned(),
        request.body.clone(),
    );
    first.json(
        503,
        r#"{"error":{"code":"store_unavailable","message":"down"}}"#,
    );
    let second = server.expect("POST", "/push/C").await;
    assert_eq!(
        (
            second.request.header("idempotency-key"),
            &second.request.body
        ),
        (Some(key.as_str()), &body)
    );
    second.json(
        200,
        r#"{"channel":"C","ids":[7,8],"time":"2024-01-01T00:00:00.000Z","replayed":0}"#,
    );
    // A server without batches would store the whole body as one event.
    server.expect("POST", "/push/C").await.json(
        200,
        r#"{"channel":"C","id":9,"time":"2024-01-01T00:00:00.000Z"}"#,
    );
    let (ok, refused) = sender.await.unwrap();
    let ok = ok.unwrap();
    assert_eq!((ok.answer.ids, ok.key), (vec![7, 8], key));
    assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
}

/// Each receipt's outcome, by event id: the id of the server's receipt, if it sent one.
type Outcomes = Vec<(u64, Result<Option<u64>, Error>)>;

/// Receives events from `feed` and acknowledges each at once, without waiting for the receipt,
/// with the status `status_of` gives its id; after the events whose ids `signal_after` names,
/// tells the test. Returns every other item and each receipt's outcome, by id.
fn acknowledge_without_waiting(
    mut feed: Subscriber,
    status_of: fn(u64) -> &'static str,
    last: u64,
    signal_after: Vec<u64>,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<u64>,
    tokio::task::JoinHandle<(Vec<String>, Outcomes)>,
) {
    let (signal, signals) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let (mut others, mut acks) = (Vec::new(), Vec::new());
        loop {
            match next(&mut feed).await {
                Item::Event(event) => {
                    let id = event.number().expect("a numeric id");
                    acks.push((id, event.ack(status_of(id))));
                    if signal_after.contains(&id) {
                        signal.send(id).unwrap();
                    }
                    if id == last {
                        break;
                    }
                }
                Item::Connected => {}
                other => others.push(format!("{other:?}")),
            }
        }
        let mut outcomes = Vec::new();
        for (id, ack) in acks {
            let outcome = tokio::time::timeout(WAIT, ack).await.expect("an outcome");
            outcomes.push((id, outcome.map(|r| r.map(|r| r.id))));
        }
        // Items the stream had to tell meanwhile (the switch to one receipt per request).
        while let Ok(Some(Ok(item))) =
            tokio::time::timeout(Duration::from_millis(50), feed.next()).await
        {
            others.push(format!("{item:?}"));
        }
        (others, outcomes)
    });
    (signals, reader)
}

/// Takes the next receipt request and checks it is the original one for `id` with `status`;
/// the test answers it.
async fn check_single(
    server: &mut FakeServer,
    id: u64,
    status: &str,
) -> pere_e2e::scripted::Exchange {
    let ack = server.expect("POST", "/feedback/C").await;
    assert_eq!(
        (
            ack.request.header("last_event_id"),
            ack.request.header("content-type"),
            ack.request.body.as_str()
        ),
        (
            Some(id.to_string().as_str()),
            Some("application/x-www-form-urlencoded"),
            format!("status={}", status.replace(' ', "+")).as_str()
        ),
        "the original receipt of {id}"
    );
    ack
}

fn stored(id: u64, status: &str) -> String {
    format!(
        r#"{{"channel":"C","id":{id},"device":"H1","status":"{status}","time":"2024-01-01T00:00:00.000Z"}}"#
    )
}

#[tokio::test]
async fn receipts_asked_for_during_a_request_go_together_cumulative_or_batched() {
    let mut server = FakeServer::start().await;
    let feed = Subscriber::builder(server.host_port(), "C")
        .device("H1")
        .receipt_retry(FAST)
        .build()
        .unwrap();
    let status_of = |id: u64| match id {
        7 => "done",
        8 => "failed",
        _ => "ok",
    };
    let (mut signals, reader) = acknowledge_without_waiting(feed, status_of, 8, vec![5, 8]);
    let stream = server.expect("GET", "/feed/C").await.stream();
    stream.send("id: 1\ndata: e1\n\n");
    // The first receipt leaves at once, alone; those of 2 to 5 wait for its answer.
    let first = check_single(&mut server, 1, "ok").await;
    let events: String = (2..=5)
        .map(|i| format!("id: {i}\ndata: e{i}\n\n"))
        .collect();
    stream.send(&events);
    assert_eq!(signals.recv().await, Some(5));
    first.json(200, &stored(1, "ok"));
    // They all say "ok" and nothing before 5 is left: one cumulative receipt.
    let upto = server.expect("POST", "/feedback/C").await;
    assert_eq!(
        upto.request.header("content-type"),
        Some("application/json")
    );
    assert_eq!(upto.request.header("device"), Some("H1"));
    assert_eq!(upto.request.header("last_event_id"), None);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&upto.request.body).unwrap(),
        serde_json::json!({"device": "H1", "upto": 5, "status": "ok"})
    );
    upto.json(
        200,
        r#"{"channel":"C","device":"H1","upto":5,"acknowledged":4,"ids":[2,3,4,5]}"#,
    );
    // Statuses that differ: a batch, in id order, each line with its own key.
    stream.send("id: 6\ndata: e6\n\n");
    let sixth = check_single(&mut server, 6, "ok").await;
    stream.send("id: 7\ndata: e7\n\nid: 8\ndata: e8\n\n");
    assert_eq!(signals.recv().await, Some(8));
    sixth.json(200, &stored(6, "ok"));
    let batch = server.expect("POST", "/feedback/C").await;
    assert_eq!(
        batch.request.header("content-type"),
        Some("application/x-ndjson")
    );
    let lines: Vec<serde_json::Value> = batch
        .request
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", batch.request.body);
    assert_eq!(
        (&lines[0]["id"], &lines[0]["status"]),
        (&7.into(), &"done".into())
    );
    assert_eq!(
        (&lines[1]["id"], &lines[1]["status"]),
        (&8.into(), &"failed".into())
    );
    assert!(lines
        .iter()
        .all(|l| l["key"].as_str().is_some_and(|k| k.len() == 32)));
    batch.json(
        200,
        r#"{"channel":"C","device":"H1","receipts":[{"id":7,"seq":9,"status":"done","replayed":false},{"id":8,"seq":10,"status":"failed","replayed":false}]}"#,
    );
    let (others, outcomes) = reader.await.unwrap();
    assert!(others.is_empty(), "{others:?}");
    let ids: Vec<(u64, Option<u64>)> = outcomes
        .into_iter()
        .map(|(id, outcome)| (id, outcome.expect("acknowledged")))
        .collect();
    // The original requests answer with the stored receipt; coalesced ones with none.
    assert_eq!(
        ids,
        [
            (1, Some(1)),
            (2, None),
            (3, None),
            (4, None),
            (5, None),
            (6, Some(6)),
            (7, None),
            (8, None)
        ]
    );
    drop(stream);
}

#[tokio::test]
async fn a_server_without_coalesced_receipts_gets_one_receipt_per_request_and_it_is_said_once() {
    let mut server = FakeServer::start().await;
    let feed = Subscriber::builder(server.host_port(), "C")
        .device("H1")
        .receipt_retry(FAST)
        .build()
        .unwrap();
    let (mut signals, reader) = acknowledge_without_waiting(feed, |_| "ok", 6, vec![3, 6]);
    let stream = server.expect("GET", "/feed/C").await.stream();
    stream.send("id: 1\ndata: a\n\n");
    let first = check_single(&mut server, 1, "ok").await;
    stream.send("id: 2\ndata: b\n\nid: 3\ndata: c\n\n");
    assert_eq!(signals.recv().await, Some(3));
    first.json(200, &stored(1, "ok"));
    // What an older PERE answers a receipt without an event id: nothing was recorded.
    server.expect("POST", "/feedback/C").await.json(
        400,
        r#"{"error":{"code":"missing_event_id","message":"a receipt needs the event id it acknowledges"}}"#,
    );
    for id in [2, 3] {
        check_single(&mut server, id, "ok")
            .await
            .json(200, &stored(id, "ok"));
    }
    // Still one by one on this connection, and not said again.
    stream.send("id: 4\ndata: d\n\n");
    let fourth = check_single(&mut server, 4, "ok").await;
    stream.send("id: 5\ndata: e\n\nid: 6\ndata: f\n\n");
    assert_eq!(signals.recv().await, Some(6));
    fourth.json(200, &stored(4, "ok"));
    for id in [5, 6] {
        check_single(&mut server, id, "ok")
            .await
            .json(200, &stored(id, "ok"));
    }
    let (others, outcomes) = reader.await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|(id, o)| matches!(o, Ok(Some(r)) if r == id)),
        "{outcomes:?}"
    );
    assert_eq!(others.len(), 1, "{others:?}");
    assert!(
        others[0].starts_with("OneByOne") && others[0].contains("missing_event_id"),
        "{others:?}"
    );
    drop(stream);
}

#[tokio::test]
async fn a_refused_batch_goes_again_one_receipt_at_a_time_each_with_its_verdict() {
    let mut server = FakeServer::start().await;
    let feed = Subscriber::builder(server.host_port(), "C")
        .device("H1")
        .receipt_retry(FAST)
        .build()
        .unwrap();
    let status_of = |id: u64| if id == 2 { "ok" } else { "late" };
    let (mut signals, reader) = acknowledge_without_waiting(feed, status_of, 3, vec![3]);
    let stream = server.expect("GET", "/feed/C").await.stream();
    stream.send("id: 1\ndata: a\n\n");
    let first = check_single(&mut server, 1, "late").await;
    stream.send("id: 2\ndata: b\n\nid: 3\ndata: c\n\n");
    assert_eq!(signals.recv().await, Some(3));
    first.json(200, &stored(1, "late"));
    let batch = server.expect("POST", "/feedback/C").await;
    assert_eq!(batch.request.body.lines().count(), 2);
    batch.json(
        404,
        r#"{"error":{"code":"unknown_event","message":"line 2: no event 3"}}"#,
    );
    check_single(&mut server, 2, "ok")
        .await
        .json(200, &stored(2, "ok"));
    check_single(&mut server, 3, "late").await.json(
        404,
        r#"{"error":{"code":"unknown_event","message":"no event 3"}}"#,
    );
    let (others, outcomes) = reader.await.unwrap();
    assert!(
        others.is_empty(),
        "a refusal of one line is not an older server: {others:?}"
    );
    assert!(matches!(outcomes[1], (2, Ok(Some(2)))), "{outcomes:?}");
    assert!(
        matches!(&outcomes[2], (3, Err(e)) if e.code() == Some("unknown_event")),
        "{outcomes:?}"
    );
    drop(stream);
}
