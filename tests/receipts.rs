//! End-to-end tests of the receipt loop with the real binaries: expected recipients, synchronous
//! waits, the receipt stream, redelivery, explicit removal and inactivity expiry.

use pere_e2e::{on_every_store, Proc, StoreUnderTest, TestServer};
use serde_json::{json, Value};

/// Starts `pere-sub` for `device` and waits until the server has its feed open.
async fn subscriber(server: &TestServer, channel: &str, device: &str, extra: &[&str]) -> Proc {
    let before = server
        .proc
        .lines()
        .iter()
        .filter(|l| l.contains(" FEED REQ>") && l.contains(device))
        .count();
    let mut args = vec![server.host_port(), channel.to_owned(), device.to_owned()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sub = Proc::start("pere-sub", &args);
    server
        .proc
        .wait_lines(before + 1, |l| {
            l.contains(" FEED REQ>") && l.contains(device)
        })
        .await;
    sub
}

fn devices(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d.as_str()
                .map_or_else(|| d["device"].as_str().unwrap().to_owned(), str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_all_names_the_offline_device_until_it_comes_back_and_acknowledges() {
    let server = TestServer::start(&[]).await;
    let receipts_path = "/receipts/Orders";
    let mut receipts = server.feed_path(receipts_path, &[]).await;

    let h1 = subscriber(&server, "Orders", "H1", &[]).await;
    let h2 = subscriber(&server, "Orders", "H2", &[]).await;
    // H3 subscribes once (so it is a recipient), then goes offline.
    let h3 = subscriber(&server, "Orders", "H3", &[]).await;
    drop(h3);
    server
        .proc
        .wait_line(|l| l.contains(" FEED END>") && l.contains("H3"))
        .await;

    let response = server
        .http
        .post(server.url("/push/Orders?wait=all&timeout=2s"))
        .header("content-type", "application/json")
        .body(r#"{"order":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        202,
        "not every recipient acknowledged in time"
    );
    let answer: Value = response.json().await.unwrap();
    let id = answer["id"].as_u64().unwrap();
    assert_eq!(answer["satisfied"], false);
    let summary = &answer["receipts"];
    assert_eq!(summary["expected"], 3);
    assert_eq!(devices(&summary["acknowledged"]), vec!["H1", "H2"]);
    assert_eq!(
        devices(&summary["pending"]),
        vec!["H3"],
        "the offline device is named"
    );
    let last_seen = summary["last_seen"].as_object().unwrap();
    assert_eq!(
        last_seen.keys().collect::<Vec<_>>(),
        ["H3"],
        "with when it was last seen: {summary}"
    );
    assert!(last_seen["H3"].as_str().unwrap().ends_with('Z'));
    assert_eq!(summary["complete"], false);

    // The receipt stream shows both receipts so far.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = receipts.next().await;
        assert_eq!(event.event, "receipt");
        let receipt: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(receipt["id"], id);
        seen.push(receipt["device"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, vec!["H1", "H2"]);
    let pending = server.get_json("/devices/Orders/H3/pending").await;
    assert_eq!(pending["pending"][0]["id"], id);

    // H3 comes back, receives the event, acknowledges: the event turns fully acknowledged.
    let h3 = subscriber(&server, "Orders", "H3", &[]).await;
    h3.wait_line(|l| l == format!("RX EVT> id: {id}, data: {{\"order\":1}}"))
        .await;
    let event = receipts.next().await;
    assert_eq!(event.event, "receipt");
    assert_eq!(
        serde_json::from_str::<Value>(&event.data).unwrap()["device"],
        "H3"
    );
    let complete = receipts.next().await;
    assert_eq!(complete.event, "complete");
    assert_eq!(
        serde_json::from_str::<Value>(&complete.data).unwrap(),
        json!({"channel": "Orders", "id": id, "expected": 3})
    );
    let view = server.get_json(&format!("/events/Orders/{id}")).await;
    assert_eq!(
        view["data"],
        json!({"order": 1}),
        "a JSON body shows as JSON"
    );
    assert_eq!(view["receipts"]["complete"], true);
    assert_eq!(
        server.get_json("/devices/Orders/H3/pending").await["pending"],
        json!([])
    );

    // A receipt stream resumed after the first receipt replays the two that follow.
    let first_seq = "1";
    let mut resumed = server
        .feed_path(receipts_path, &[("Last-Event-ID", first_seq)])
        .await;
    let replayed: Vec<String> = vec![resumed.next().await.id, resumed.next().await.id];
    assert_eq!(replayed, vec!["2", "3"]);

    // wait=N is satisfied as soon as N devices acknowledged.
    let response = server
        .http
        .post(server.url("/push/Orders?wait=2&timeout=10s"))
        .body("two")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["satisfied"], true);
    assert!(answer["receipts"]["acknowledged"].as_array().unwrap().len() >= 2);
    drop((h1, h2, h3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_event_is_redelivered_and_pere_sub_prints_it_once() {
    let server = TestServer::start(&["--ack-timeout", "1s", "--max-deliveries", "3"]).await;
    let sub = subscriber(&server, "Jobs", "H9", &["--no-ack"]).await;
    let first = server.push("Jobs", "job one").await;
    // The server sends it again twice (three sends in all), with the same id.
    server
        .proc
        .wait_line(|l| {
            l.contains(" REDELIVER>") && l.contains("device: H9") && l.ends_with("send: 3")
        })
        .await;
    // Events on a stream are ordered: once the next one is printed, the copies were handled.
    let second = server.push("Jobs", "job two").await;
    sub.wait_line(|l| l.starts_with(&format!("RX EVT> id: {second}")))
        .await;
    let printed = sub
        .lines()
        .iter()
        .filter(|l| l.starts_with(&format!("RX EVT> id: {first},")))
        .count();
    assert_eq!(printed, 1, "{:?}", sub.lines());

    // An acknowledged event is not sent again.
    let mut feed = server
        .feed(
            "Jobs",
            &[("device", "A1"), ("Last-Event-ID", &second.to_string())],
        )
        .await;
    let third = server.push("Jobs", "job three").await;
    assert_eq!(feed.next().await.id, third.to_string());
    assert_eq!(server.ack("Jobs", "A1", third, "done").await.0, 200);
    let fourth = server.push("Jobs", "job four").await;
    // Had `third` been sent again, it would come before `fourth` (1 s later, at the earliest).
    server
        .proc
        .wait_line(|l| {
            l.contains(" REDELIVER>")
                && l.contains(&format!("Event-Id: {fourth}"))
                && l.contains("A1")
        })
        .await;
    let next = feed.next().await;
    assert_eq!(next.id, fourth.to_string());
    assert_eq!(
        feed.next().await.id,
        fourth.to_string(),
        "the unacknowledged one is sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_and_expiry_change_the_expected_set_of_new_events_only() {
    let server = TestServer::start(&["--recipient-expiry", "1s"]).await;
    let http = &server.http;
    let registered = http
        .put(server.url("/devices/News/X"))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);
    let e1 = server.push("News", "one").await;
    assert_eq!(
        server.get_json(&format!("/events/News/{e1}")).await["receipts"]["expected"],
        1
    );
    assert_eq!(
        http.delete(server.url("/devices/News/X"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.delete(server.url("/devices/News/X"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let e2 = server.push("News", "two").await;
    assert_eq!(
        server.get_json(&format!("/events/News/{e2}")).await["receipts"]["expected"],
        0
    );
    let first = server.get_json(&format!("/events/News/{e1}")).await;
    assert_eq!(
        devices(&first["receipts"]["pending"]),
        vec!["X"],
        "old events keep their expected set"
    );

    // Y is registered, then idle past the expiry: it stops being expected of new events. Z keeps
    // a feed open all along: connected recipients never expire.
    let _z = server.feed("News", &[("device", "Z")]).await;
    http.put(server.url("/devices/News/Y"))
        .send()
        .await
        .unwrap();
    let e3 = server.push("News", "three").await;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(100));
    tokio::time::timeout(pere_e2e::WAIT, async {
        loop {
            poll.tick().await;
            if server.get_json("/admin/devices/News").await["Y"]["recipient"] == false {
                return;
            }
        }
    })
    .await
    .expect("Y expires");
    assert_eq!(
        server.get_json("/admin/devices/News").await["Z"]["recipient"],
        true
    );
    let e4 = server.push("News", "four").await;
    assert_eq!(
        server.get_json(&format!("/events/News/{e4}")).await["receipts"]["expected"],
        1,
        "Z only"
    );
    assert_eq!(
        devices(&server.get_json(&format!("/events/News/{e3}")).await["receipts"]["pending"]),
        vec!["Y"]
    );
}

async fn next_post(posts: &mut tokio::sync::mpsc::UnboundedReceiver<(u16, Value)>) -> (u16, Value) {
    tokio::time::timeout(pere_e2e::WAIT, posts.recv())
        .await
        .expect("a webhook POST")
        .expect("receiver alive")
}

/// A webhook receiver on loopback: answers 500 to the first POST, 200 after; hands over bodies.
async fn webhook_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<(u16, Value)>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use http_body_util::BodyExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let calls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (tx, calls) = (tx.clone(), calls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (tx, calls) = (tx.clone(), calls.clone());
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let status = if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                                500
                            } else {
                                200
                            };
                            let _ = tx.send((
                                status,
                                serde_json::from_slice(&body).unwrap_or(Value::Null),
                            ));
                            let mut response = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            ));
                            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_each_summary_retried_after_a_failure() {
    let (url, mut posts) = webhook_receiver().await;
    let server = TestServer::start(&["--receipt-webhook", &url, "--receipt-timeout", "2s"]).await;
    let mut feed = server.feed("Hooks", &[("device", "H1")]).await;
    let acked = server.push("Hooks", "acknowledged").await;
    assert_eq!(feed.next().await.id, acked.to_string());
    assert_eq!(server.ack("Hooks", "H1", acked, "done").await.0, 200);
    // The first attempt fails (500) and is retried with the same summary.
    let (status, first) = next_post(&mut posts).await;
    assert_eq!(status, 500);
    let (status, again) = next_post(&mut posts).await;
    assert_eq!(status, 200);
    assert_eq!(first, again);
    assert_eq!(again["id"], acked);
    assert_eq!(again["reason"], "complete");
    assert_eq!(again["complete"], true);
    assert_eq!(devices(&again["acknowledged"]), vec!["H1"]);
    server
        .proc
        .wait_line(|l| l.contains(" WEBHOOK>") && l.ends_with("attempt: 2, delivered"))
        .await;

    // An event nobody acknowledges is reported when its receipt timeout passes.
    let ignored = server.push("Hooks", "ignored").await;
    let (status, late) = next_post(&mut posts).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            late["id"].as_u64(),
            late["reason"].as_str(),
            late["complete"].as_bool()
        ),
        (Some(ignored), Some("timeout"), Some(false))
    );
    assert_eq!(devices(&late["delivered"]), vec!["H1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_are_streamed_and_replayed() {
    let server = TestServer::start(&[]).await;
    let mut presence = server.feed_path("/presence/Room", &[]).await;
    let first = server.feed("Room", &[("device", "P1")]).await;
    let second = server.feed("Room", &[("device", "P1")]).await;
    let online = presence.next().await;
    assert_eq!(
        (online.event.as_str(), online.id.as_str()),
        ("presence", "1")
    );
    let change: Value = serde_json::from_str(&online.data).unwrap();
    assert_eq!(
        (change["device"].as_str(), change["online"].as_bool()),
        (Some("P1"), Some(true))
    );
    assert!(change["at"].as_str().unwrap().ends_with('Z'));
    // A second stream of the same device changes nothing; the last one closing does.
    drop(first);
    server
        .proc
        .wait_line(|l| l.contains(" FEED END>") && l.contains("P1"))
        .await;
    drop(second);
    let offline = presence.next().await;
    assert_eq!(offline.id, "2");
    assert_eq!(
        serde_json::from_str::<Value>(&offline.data).unwrap()["online"],
        false
    );
    let devices = server.get_json("/admin/devices/Room").await;
    assert_eq!(
        (
            devices["P1"]["online"].as_bool(),
            devices["P1"]["op"].as_str()
        ),
        (Some(false), Some("feed"))
    );

    // A late follower replays what it missed after its position.
    let mut late = server
        .feed_path("/presence/Room", &[("Last-Event-ID", "1")])
        .await;
    assert_eq!(late.next().await.id, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_receipt_history_is_replayed_page_by_page_then_live() {
    let server = TestServer::start(&[]).await;
    let id = server.push("Ledger", "x").await;
    for n in 0..600 {
        assert_eq!(
            server.ack("Ledger", &format!("D{n}"), id, "ok").await.0,
            200
        );
    }
    let mut stream = server
        .feed_path("/receipts/Ledger", &[("Last-Event-ID", "0")])
        .await;
    let seqs = stream.next_ids(600).await;
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs.len() == 600,
        "every receipt, in order, once"
    );
    assert_eq!(server.ack("Ledger", "LIVE", id, "ok").await.0, 200);
    let live = stream.next().await;
    assert_eq!(
        serde_json::from_str::<Value>(&live.data).unwrap()["device"],
        "LIVE"
    );
    assert!(live.id.parse::<u64>().unwrap() > seqs[599]);
}

async fn live_receipts_reach_followers_in_seq_order_under_concurrent_acks(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    let (devices, events) = (16, 25);
    for device in 0..devices {
        assert_eq!(
            server
                .http
                .put(server.url(&format!("/devices/Order/D{device}")))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let mut ids = Vec::new();
    for n in 0..events {
        ids.push(server.push("Order", &format!("e{n}")).await);
    }
    let mut stream = server.feed_path("/receipts/Order", &[]).await;
    // Every device acknowledges every event, all devices at once: receipts recorded together,
    // and each event completes with whichever of its receipts comes last.
    let acks: Vec<_> = (0..devices)
        .map(|device| {
            let (http, url, ids) = (
                server.http.clone(),
                server.url("/feedback/Order"),
                ids.clone(),
            );
            tokio::spawn(async move {
                for id in ids {
                    let body = json!({"device": format!("D{device}"), "id": id, "status": "ok"});
                    assert_eq!(
                        http.post(&url).json(&body).send().await.unwrap().status(),
                        200
                    );
                }
            })
        })
        .collect();
    for ack in acks {
        ack.await.unwrap();
    }
    // A follower that resumes from the last id it saw must miss nothing: every receipt arrives,
    // in seq order, and no notice moves the last id back.
    let (mut seqs, mut completed, mut last_ids) = (Vec::new(), Vec::new(), Vec::new());
    while seqs.len() < devices * events || completed.len() < events {
        let event = stream.next().await;
        last_ids.push(event.id.parse::<u64>().unwrap());
        match event.event.as_str() {
            "receipt" => seqs.push(event.id.parse::<u64>().unwrap()),
            "complete" => completed.push(
                serde_json::from_str::<Value>(&event.data).unwrap()["id"]
                    .as_u64()
                    .unwrap(),
            ),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "receipts out of seq order: {seqs:?}"
    );
    assert!(
        last_ids.windows(2).all(|w| w[0] <= w[1]),
        "the last event id went back: {last_ids:?}"
    );
    completed.sort_unstable();
    assert_eq!(completed, ids, "every event completes once");
}

on_every_store!(live_receipts_reach_followers_in_seq_order_under_concurrent_acks);
