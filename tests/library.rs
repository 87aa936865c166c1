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
    for id in ["1", "2"] {
        let Item::Event(event) = next(&mut feed).await else {
            panic!("event {id}")
        };
        assert_eq!(event.id, id);
        let Item::Acked(acked) = next(&mut feed).await else {
            panic!("the receipt of {id}")
        };
        assert_eq!((acked.id.as_str(), acked.again), (id, false));
        assert_eq!(acked.result.unwrap().unwrap().status, "rx ok");
    }
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
