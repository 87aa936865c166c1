//! Clients that coalesce their receipts, end to end against the real server: under a burst the
//! Rust `Subscriber` and `pere-sub` send a few receipt requests rather than one per event, and
//! every event ends acknowledged; a quiet device still acknowledges each event at once, alone,
//! in the original form, and a busy one starts its requests the receipt spacing apart; statuses
//! that differ go as a batch; `--no-coalesce` keeps one request per receipt. (pere.js in
//! Chromium: `tests/browser.rs`.)

use std::time::Duration;

use futures_util::StreamExt;
use pere_client::{Item, Publisher, Subscriber, Via};
use pere_e2e::{Proc, TestServer};

/// How many events a burst pushes at once.
const BURST: u64 = 200;
/// The most receipt requests a burst may cost: a coalescing client needs a few (one for the
/// first event, then one for what piled up meanwhile, a few more on a loaded machine), an
/// uncoalesced one [`BURST`].
const MAX_REQUESTS: u64 = BURST / 4;
/// How long any one wait may take.
const WAIT: Duration = Duration::from_secs(20);

/// Receipt requests the server answered with 200.
async fn receipt_requests(server: &TestServer) -> u64 {
    server.answers("/feedback/{channel}", 200).await
}

/// Pushes `n` events to `channel` in one batch (one request, consecutive ids); their ids.
async fn burst(server: &TestServer, channel: &str, n: u64) -> Vec<u64> {
    let publisher = Publisher::builder(server.host_port())
        .device("P1")
        .build()
        .unwrap();
    let bodies: Vec<String> = (1..=n).map(|i| format!("event {i}")).collect();
    publisher
        .push_batch(channel, bodies)
        .await
        .expect("the batch")
        .answer
        .ids
}

/// Checks that `device` owes no receipt on `channel`: every event it was expected to
/// acknowledge is acknowledged.
async fn check_nothing_owed(server: &TestServer, channel: &str, device: &str) {
    let pending = server.pending(channel, device).await;
    assert!(pending.is_empty(), "{device} still owes {pending:?}");
}

/// The status of `device`'s receipt for event `id`, as the server's receipt view has it.
async fn receipt_status(server: &TestServer, channel: &str, id: u64, device: &str) -> String {
    let view = server
        .get_json(&format!("/admin/receipts/{channel}/{id}"))
        .await;
    view["acknowledged"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["device"] == device))
        .and_then(|r| r["status"].as_str())
        .unwrap_or_else(|| panic!("no receipt of {device} for {id}: {view}"))
        .to_owned()
}

/// The next item of `feed`, under [`WAIT`].
async fn next(feed: &mut Subscriber) -> Item {
    tokio::time::timeout(WAIT, feed.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_acknowledges_a_burst_in_a_few_requests_and_a_lone_event_at_once() {
    let server = TestServer::start(&[]).await;
    let mut feed = Subscriber::builder(server.host_port(), "Burst")
        .device("H1")
        .auto_ack("rx ok")
        .build()
        .unwrap();
    assert!(matches!(next(&mut feed).await, Item::Connected));
    let ids = burst(&server, "Burst", BURST).await;
    assert_eq!(ids, (1..=BURST).collect::<Vec<_>>());

    let (mut events, mut acked, mut forms) = (Vec::new(), Vec::new(), Vec::new());
    while acked.len() < BURST as usize {
        match next(&mut feed).await {
            Item::Event(event) => events.push(event.number().unwrap()),
            Item::Acked(receipt) => {
                assert!(receipt.result.is_ok(), "{receipt:?}");
                acked.push(receipt.id.parse::<u64>().unwrap());
                forms.push(receipt.via);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(events, ids, "each event once, in order");
    acked.sort_unstable();
    assert_eq!(acked, ids, "each receipt's outcome once");
    let requests = receipt_requests(&server).await;
    println!("{BURST} events acknowledged in {requests} receipt requests");
    assert!(
        (1..=MAX_REQUESTS).contains(&requests),
        "{requests} receipt requests for {BURST} events"
    );
    assert!(
        forms
            .iter()
            .any(|via| matches!(via, Via::Cumulative { .. })),
        "one status, nothing skipped: cumulative receipts: {forms:?}"
    );
    check_nothing_owed(&server, "Burst", "H1").await;
    assert_eq!(receipt_status(&server, "Burst", BURST, "H1").await, "rx ok");

    // Quiet again: the next event's receipt leaves at once, alone, in the original form, and
    // answers with the stored receipt.
    let lone = server.push("Burst", "lone").await;
    let Item::Event(event) = next(&mut feed).await else {
        panic!("the lone event")
    };
    assert_eq!(event.number(), Some(lone));
    let Item::Acked(receipt) = next(&mut feed).await else {
        panic!("its receipt")
    };
    assert_eq!((receipt.id.parse(), &receipt.via), (Ok(lone), &Via::Single));
    let stored = receipt.result.unwrap().expect("the stored receipt");
    assert_eq!((stored.id, stored.status.as_str()), (lone, "rx ok"));
    server
        .proc
        .wait_line(|l| {
            l.contains(&format!(
                "FEEDBACK> channel: Burst, device: H1, Last-Event-Id: {lone}, status: rx ok"
            ))
        })
        .await;
    assert_eq!(receipt_requests(&server).await, requests + 1);
}

/// Pushes one event to `channel` and waits until `feed` has it and its receipt went; returns
/// how long that took from the push's answer.
async fn push_and_ack(server: &TestServer, feed: &mut Subscriber, channel: &str) -> Duration {
    let id = server.push(channel, "one").await;
    let pushed = tokio::time::Instant::now();
    loop {
        match next(feed).await {
            Item::Event(event) => assert_eq!(event.number(), Some(id)),
            Item::Acked(receipt) if receipt.id == id.to_string() => {
                assert!(receipt.result.is_ok(), "{receipt:?}");
                return pushed.elapsed();
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_device_spaces_its_receipt_requests_and_a_quiet_one_acknowledges_at_once() {
    const SPACING: Duration = Duration::from_secs(2);
    let server = TestServer::start(&[]).await;
    let mut feed = Subscriber::builder(server.host_port(), "Spaced")
        .device("H6")
        .auto_ack("ok")
        .receipt_spacing(SPACING)
        .build()
        .unwrap();
    assert!(matches!(next(&mut feed).await, Item::Connected));
    // A device that never sent a receipt sends at once (a loopback round trip, far below the
    // spacing whatever the machine's load).
    let first = push_and_ack(&server, &mut feed, "Spaced").await;
    assert!(first < SPACING / 2, "the first receipt took {first:?}");
    // Right behind it, the next waits out the spacing from the first request's start, less at
    // most that request's round trip.
    let second = push_and_ack(&server, &mut feed, "Spaced").await;
    assert!(
        second >= SPACING - first.max(Duration::from_millis(500)),
        "the second receipt left after {second:?}"
    );
    // Quiet for a spacing: at once again.
    tokio::time::sleep(SPACING).await;
    let third = push_and_ack(&server, &mut feed, "Spaced").await;
    assert!(
        third < SPACING / 2,
        "after a quiet spell the receipt took {third:?}"
    );
    assert_eq!(receipt_requests(&server).await, 3);
    check_nothing_owed(&server, "Spaced", "H6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_that_differ_per_event_go_as_batches_and_each_is_recorded() {
    let server = TestServer::start(&[]).await;
    let mut feed = Subscriber::builder(server.host_port(), "Mixed")
        .device("H2")
        .build()
        .unwrap();
    assert!(matches!(next(&mut feed).await, Item::Connected));
    const EVENTS: u64 = 60;
    let ids = burst(&server, "Mixed", EVENTS).await;
    let status = |id: u64| {
        if id.is_multiple_of(3) {
            "failed"
        } else {
            "done"
        }
    };
    // The application acknowledges each event as it handles it, without waiting for the
    // receipt: what piles up meanwhile goes together.
    let mut acks = Vec::new();
    while acks.len() < EVENTS as usize {
        if let Item::Event(event) = next(&mut feed).await {
            let id = event.number().unwrap();
            acks.push((id, event.ack(status(id))));
        }
    }
    let mut coalesced = 0;
    for (id, ack) in acks {
        let outcome = tokio::time::timeout(WAIT, ack).await.expect("in time");
        match outcome.unwrap_or_else(|e| panic!("the receipt of {id}: {e}")) {
            Some(stored) => assert_eq!(stored.status, status(id)),
            // Its request carried other receipts: the answer does not repeat each.
            None => coalesced += 1,
        }
    }
    let requests = receipt_requests(&server).await;
    println!("{EVENTS} receipts with two statuses in {requests} requests");
    assert!(
        coalesced > 0 && requests < EVENTS / 2,
        "{requests} requests"
    );
    // Each event has its own status, not one of a neighbour's.
    for id in ids {
        assert_eq!(receipt_status(&server, "Mixed", id, "H2").await, status(id));
    }
    check_nothing_owed(&server, "Mixed", "H2").await;
    // A batch's line names its statuses.
    server
        .proc
        .wait_line(|l| {
            l.contains("FEEDBACK> channel: Mixed, device: H2")
                && (l.contains("status: done | failed") || l.contains("status: failed | done"))
        })
        .await;
}

/// Starts `pere-sub` on `channel` as `device` and waits until the server has its feed open.
async fn pere_sub(server: &TestServer, channel: &str, device: &str, extra: &[&str]) -> Proc {
    let host = server.host_port();
    let mut args = vec![host.as_str(), channel, device];
    args.extend_from_slice(extra);
    let sub = Proc::start("pere-sub", &args);
    server
        .proc
        .wait_line(|l| l.contains(&format!("FEED REQ> device: {device}, channel: {channel}")))
        .await;
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_sub_acknowledges_a_burst_in_a_few_requests_and_prints_every_line() {
    let server = TestServer::start(&[]).await;
    let count = BURST.to_string();
    let mut sub = pere_sub(&server, "SubBurst", "H3", &["--count", &count]).await;
    burst(&server, "SubBurst", BURST).await;
    assert_eq!(sub.wait_exit().await, 0, "{:?}", sub.errors());
    let lines = sub.lines();
    let tagged = |tag: &str| -> Vec<u64> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(tag))
            .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
            .collect()
    };
    let received = tagged("RX EVT> id: ");
    let mut acked = tagged("TX ACK> id: ");
    assert_eq!(received, (1..=BURST).collect::<Vec<_>>(), "{lines:?}");
    acked.sort_unstable();
    assert_eq!(acked, received, "a TX ACK> line for each event");
    let requests = receipt_requests(&server).await;
    println!("pere-sub: {BURST} events acknowledged in {requests} receipt requests");
    assert!(
        (1..=MAX_REQUESTS).contains(&requests),
        "{requests} receipt requests for {BURST} events"
    );
    check_nothing_owed(&server, "SubBurst", "H3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_sub_stops_at_its_count_without_showing_or_acknowledging_more() {
    let server = TestServer::start(&[]).await;
    let mut sub = pere_sub(&server, "SubCount", "H4", &["--count", "5", "--json"]).await;
    burst(&server, "SubCount", 50).await;
    assert_eq!(sub.wait_exit().await, 0, "{:?}", sub.errors());
    let lines = sub.lines();
    assert_eq!(
        lines.len(),
        5,
        "five events, each with its receipt: {lines:?}"
    );
    for (line, id) in lines.iter().zip(1u64..) {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(json["id"], id, "{line}");
        assert_eq!(json["receipt"]["status"], "rx ok", "{line}");
    }
    // What it did not show, it did not acknowledge: the next run gets it.
    let device = server.get_json("/admin/devices/SubCount").await;
    assert_eq!(device["H4"]["last_acked"], 5, "{device}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_sub_without_coalescing_sends_one_original_receipt_per_event() {
    let server = TestServer::start(&[]).await;
    const EVENTS: u64 = 20;
    let count = EVENTS.to_string();
    let mut sub = pere_sub(
        &server,
        "OneEach",
        "H5",
        &["--count", &count, "--no-coalesce", "-q"],
    )
    .await;
    burst(&server, "OneEach", EVENTS).await;
    assert_eq!(sub.wait_exit().await, 0, "{:?}", sub.errors());
    assert_eq!(receipt_requests(&server).await, EVENTS);
    let lines = server
        .proc
        .wait_lines(EVENTS as usize, |l| {
            l.contains("FEEDBACK> channel: OneEach, device: H5")
        })
        .await;
    for (line, id) in lines.iter().zip(1..=EVENTS) {
        assert!(
            line.ends_with(&format!("Last-Event-Id: {id}, status: rx ok")),
            "the original receipt of {id}: {line}"
        );
    }
    check_nothing_owed(&server, "OneEach", "H5").await;
}
