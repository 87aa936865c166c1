//! Scale-out on Redis, end to end: several real `pere-server` nodes on one private
//! `redis-server` share one id sequence per channel, see each other's events and receipts,
//! survive the death of a node and an outage of Redis; over TLS (`rediss://`) as well, with a
//! CA of the Redis server's own and client certificates.

use std::time::Duration;

use pere_e2e::redis_server::TLS_PASSWORD;
use pere_e2e::{RedisServer, TestServer, WAIT};
use serde_json::Value;

/// Two nodes on `redis`, with `extra` flags each.
async fn two_nodes(redis: &RedisServer, extra: &[&str]) -> (TestServer, TestServer) {
    (
        TestServer::start_redis(&redis.url(), extra).await,
        TestServer::start_redis(&redis.url(), extra).await,
    )
}

/// Polls `check` until it gives something, for at most [`WAIT`]: what another node registers
/// shows at its next heartbeat, not at once.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let found = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(found) = check().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("waited {WAIT:?} for {what}"))
}

async fn status_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn push_answer(node: &TestServer, path: &str, body: &str) -> (u16, Value) {
    status_of(
        node.http
            .post(node.url(path))
            .body(body.to_owned())
            .send()
            .await
            .expect("push"),
    )
    .await
}

/// The first push to `Shared`, made on `a`, reaches `on_b`, a feed held on the other node.
async fn first_push_crosses(a: &TestServer, on_b: &mut pere_e2e::Feed) {
    assert_eq!(a.push("Shared", "from A").await, 1);
    let first = on_b.next().await;
    assert_eq!(
        (first.id.as_str(), first.data.as_str()),
        ("1", "from A"),
        "published on A, received on B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_on_both_nodes_make_one_gap_free_sequence_seen_alike_on_both() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["-q"]).await;
    let mut on_a = a.feed("Shared", &[]).await;
    let mut on_b = b.feed("Shared", &[]).await;

    first_push_crosses(&a, &mut on_b).await;
    assert_eq!(on_a.next().await.id, "1");

    // 100 pushes on each node at once.
    let mut pushes = Vec::new();
    for i in 0..100 {
        for (name, node) in [("a", &a), ("b", &b)] {
            let (http, url) = (node.http.clone(), node.url("/push/Shared"));
            pushes.push(tokio::spawn(async move {
                let response = http
                    .post(url)
                    .body(format!("{name}{i}"))
                    .send()
                    .await
                    .expect("push");
                assert_eq!(response.status(), 200);
                response.json::<Value>().await.unwrap()["id"]
                    .as_u64()
                    .unwrap()
            }));
        }
    }
    let mut ids = Vec::new();
    for push in pushes {
        ids.push(push.await.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(
        ids,
        (2..=201).collect::<Vec<u64>>(),
        "no id shared, none skipped"
    );

    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for _ in 0..200 {
        let (x, y) = (on_a.next().await, on_b.next().await);
        seen_a.push((x.id, x.data));
        seen_b.push((y.id, y.data));
    }
    let expected: Vec<String> = (2..=201).map(|i: u64| i.to_string()).collect();
    assert_eq!(
        seen_a.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        expected,
        "in id order, no gap"
    );
    assert_eq!(
        seen_a, seen_b,
        "both nodes delivered the same events in the same order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_posted_on_one_node_completes_a_wait_held_on_the_other_and_shows_in_its_views() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["--redis-node-ttl", "3s"]).await;
    // H1 listens on B, which makes it a recipient of the channel.
    let mut h1 = b.feed("Orders", &[("device", "H1")]).await;

    let waiting = {
        let (http, url) = (a.http.clone(), a.url("/push/Orders?wait=all&timeout=15s"));
        tokio::spawn(async move {
            status_of(http.post(url).body("order 1").send().await.expect("push")).await
        })
    };
    let event = h1.next().await;
    assert_eq!(event.data, "order 1");
    let id: u64 = event.id.parse().unwrap();
    let (status, _) = b.ack("Orders", "H1", id, "rx ok").await;
    assert_eq!(status, 200);

    let (status, answer) = waiting.await.unwrap();
    assert_eq!(
        status, 200,
        "the wait on A was satisfied by the receipt posted on B: {answer}"
    );
    assert_eq!(answer["satisfied"], true);
    assert_eq!(answer["receipts"]["acknowledged"][0]["device"], "H1");

    let summary = a.get_json(&format!("/admin/receipts/Orders/{id}")).await;
    assert_eq!(summary["complete"], true, "{summary}");
    let devices = a.get_json("/admin/devices/Orders").await;
    assert_eq!(devices["H1"]["op"], "feedback");
    assert_eq!(devices["H1"]["last_acked"], id);
    // The stream H1 holds on B counts on A too, once B's registration shows it.
    eventually("A to count H1's stream on B", || async {
        let devices = a.get_json("/admin/devices/Orders").await;
        (devices["H1"]["open_streams"] == 1 && devices["H1"]["online"] == true).then_some(())
    })
    .await;
    eventually("A's connections to add up B's", || async {
        let connections = a.get_json("/admin/connections").await;
        (connections["Orders"] == 1 && connections["total number"] == 1).then_some(())
    })
    .await;
    let channels = a.get_json("/admin/channels").await;
    assert_eq!(
        channels["channels"][0]["open_streams"], 1,
        "A's channel list counts the stream held on B: {channels}"
    );
}

/// Pushes `body` on A, holding the answer until every recipient acknowledged it.
fn waiting_push(a: &TestServer, body: &'static str) -> tokio::task::JoinHandle<(u16, Value)> {
    let (http, url) = (a.http.clone(), a.url("/push/Orders?wait=all&timeout=15s"));
    tokio::spawn(
        async move { status_of(http.post(url).body(body).send().await.expect("push")).await },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_and_batched_receipts_posted_on_one_node_complete_waits_held_on_the_other() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["--redis-node-ttl", "3s"]).await;
    let mut h1 = b.feed("Orders", &[("device", "H1")]).await;
    let first = waiting_push(&a, "order 1");
    assert_eq!(h1.next_ids(1).await, [1]);
    let second = waiting_push(&a, "order 2");
    assert_eq!(h1.next_ids(1).await, [2]);
    let cumulative = b
        .http
        .post(b.url("/feedback/Orders"))
        .json(&serde_json::json!({"device": "H1", "upto": 2, "status": "rx ok"}))
        .send()
        .await
        .expect("feedback");
    let (status, answer) = status_of(cumulative).await;
    assert_eq!((status, &answer["ids"]), (200, &serde_json::json!([1, 2])));
    for waiting in [first, second] {
        let (status, answer) = waiting.await.unwrap();
        assert_eq!(
            status, 200,
            "satisfied on A by B's cumulative receipt: {answer}"
        );
    }

    let third = waiting_push(&a, "order 3");
    assert_eq!(h1.next_ids(1).await, [3]);
    let batch = b
        .http
        .post(b.url("/feedback/Orders"))
        .header("content-type", "application/x-ndjson")
        .header("device", "H1")
        .body("{\"id\":3,\"status\":\"done\"}\n")
        .send()
        .await
        .expect("feedback");
    assert_eq!(status_of(batch).await.0, 200);
    let (status, answer) = third.await.unwrap();
    assert_eq!(status, 200, "satisfied on A by B's batch: {answer}");
    assert_eq!(answer["receipts"]["acknowledged"][0]["status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_resumes_by_last_event_id_on_the_other_node() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["-q"]).await;
    let mut first = a.feed("Resume", &[("device", "R1")]).await;
    for i in 1..=3 {
        a.push("Resume", &format!("e{i}")).await;
    }
    assert_eq!(first.next_ids(3).await, vec![1, 2, 3]);
    drop(first);
    a.push("Resume", "e4").await;
    b.push("Resume", "e5").await;

    let mut resumed = b
        .feed("Resume", &[("device", "R1"), ("Last-Event-ID", "3")])
        .await;
    let four = resumed.next().await;
    assert_eq!((four.id.as_str(), four.data.as_str()), ("4", "e4"));
    assert_eq!(resumed.next().await.id, "5");
    a.push("Resume", "e6").await;
    assert_eq!(
        resumed.next().await.id,
        "6",
        "live after the replay, from the other node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_killed_node_resume_on_the_other_and_its_presence_expires() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["--redis-node-ttl", "3s"]).await;
    let mut h1 = a.feed("Fleet", &[("device", "H1")]).await;
    for i in 1..=3 {
        b.push("Fleet", &format!("e{i}")).await;
    }
    assert_eq!(h1.next_ids(3).await, vec![1, 2, 3]);
    eventually("B to count H1's stream on A", || async {
        let devices = b.get_json("/admin/devices/Fleet").await;
        (devices["H1"]["open_streams"] == 1).then_some(())
    })
    .await;

    a.kill().await;
    drop(h1);
    // Published while H1 has no stream at all.
    b.push("Fleet", "e4").await;
    b.push("Fleet", "e5").await;
    eventually("the dead node's stream to stop counting", || async {
        let devices = b.get_json("/admin/devices/Fleet").await;
        (devices["H1"]["open_streams"] == 0 && devices["H1"]["online"] == false).then_some(())
    })
    .await;
    let connections = b.get_json("/admin/connections").await;
    assert_eq!(connections["total number"], 0, "{connections}");

    let mut again = b
        .feed("Fleet", &[("device", "H1"), ("Last-Event-ID", "3")])
        .await;
    assert_eq!(again.next_ids(2).await, vec![4, 5], "nothing missed");
    b.push("Fleet", "e6").await;
    assert_eq!(again.next_ids(1).await, vec![6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_503_then_service_resumes_and_nothing_acknowledged_is_lost() {
    // Every write on disk before Redis answers it.
    let mut redis = RedisServer::start_with(true);
    let node = TestServer::start_redis(&redis.url(), &["-q"]).await;
    let mut feed = node.feed("Outage", &[]).await;
    let mut acknowledged = Vec::new();
    for i in 1..=3 {
        acknowledged.push(node.push("Outage", &format!("before {i}")).await);
    }
    assert_eq!(feed.next_ids(3).await, vec![1, 2, 3]);

    redis.kill();
    let (status, answer) = push_answer(&node, "/push/Outage", "during").await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "store_unavailable");
    let (status, answer) = node.ack("Outage", "H1", 1, "ok").await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (503, Some("store_unavailable"))
    );
    let ready = node.http.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while Redis is away");

    redis.restart();
    let id = eventually("pushes to be accepted again", || async {
        let (status, answer) = push_answer(&node, "/push/Outage", "after").await;
        (status == 200).then(|| answer["id"].as_u64().unwrap())
    })
    .await;
    acknowledged.push(id);
    assert_eq!(id, 4, "the outage consumed no id");
    let ready = node.http.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let event = feed.next().await;
    assert_eq!(
        (event.id.as_str(), event.data.as_str()),
        ("4", "after"),
        "the feed stayed open through the outage"
    );

    let stored = node.get_json("/events/Outage").await;
    let ids: Vec<u64> = stored["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, acknowledged, "every acknowledged push is kept");
    let (status, _) = node.ack("Outage", "H1", 1, "ok").await;
    assert_eq!(status, 200);
}

/// A webhook receiver on loopback that answers 200 and hands over each body.
async fn webhook_sink() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use http_body_util::BodyExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
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

async fn next_post(posts: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(WAIT, posts.recv())
        .await
        .expect("a webhook post in time")
        .expect("sink open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_reports_each_event_once_for_the_whole_cluster() {
    let redis = RedisServer::start();
    let (url, mut posts) = webhook_sink().await;
    let (a, b) = two_nodes(&redis, &["-q", "--receipt-webhook", &url]).await;
    let mut h1 = b.feed("Hooks", &[("device", "H1")]).await;
    // Both nodes follow every event and see every receipt; one report leaves the cluster.
    for i in 1..=3u64 {
        assert_eq!(a.push("Hooks", &format!("e{i}")).await, i);
        assert_eq!(h1.next().await.id, i.to_string());
        assert_eq!(b.ack("Hooks", "H1", i, "done").await.0, 200);
    }
    let mut reported = Vec::new();
    for _ in 0..3 {
        let post = next_post(&mut posts).await;
        assert_eq!(post["reason"], "complete");
        reported.push(post["id"].as_u64().unwrap());
    }
    // A last event, reported after any duplicate of the first three would have been.
    assert_eq!(b.push("Hooks", "e4").await, 4);
    assert_eq!(h1.next().await.id, "4");
    assert_eq!(a.ack("Hooks", "H1", 4, "done").await.0, 200);
    reported.push(next_post(&mut posts).await["id"].as_u64().unwrap());
    reported.sort_unstable();
    assert_eq!(reported, vec![1, 2, 3, 4], "each event reported once");
}

/// How many nodes' buses listen on `channel`'s bus (its shard channel, default prefix), as
/// Redis counts them.
fn bus_listeners(redis: &RedisServer, channel: &str) -> Option<u64> {
    let bus = format!("{{pere:ch:{channel}}}:bus");
    let answer = redis.cli(&["PUBSUB", "SHARDNUMSUB", &bus]);
    answer.lines().nth(1)?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_over_tls_share_events_through_the_bus_and_never_show_the_password() {
    // No plain port: every connection of the nodes, the bus's Pub/Sub included, is TLS.
    let redis = RedisServer::start_tls(false);
    let url = redis.url();
    assert!(url.starts_with("rediss://") && url.contains(TLS_PASSWORD));
    let ca = redis.ca_file();
    let (a, b) = two_nodes(&redis, &["-q", "--redis-ca", ca.to_str().unwrap()]).await;
    let mut on_a = a.feed("Shared", &[]).await;
    let mut on_b = b.feed("Shared", &[]).await;
    // Both buses hear the channel, so what follows travels by Pub/Sub, not by a catch-up.
    eventually("both buses to hear Shared", || async {
        (bus_listeners(&redis, "Shared") == Some(2)).then_some(())
    })
    .await;

    first_push_crosses(&a, &mut on_b).await;
    assert_eq!(b.push("Shared", "from B").await, 2);
    assert_eq!(on_a.next_ids(2).await, vec![1, 2]);
    assert_eq!(on_b.next().await.data, "from B");

    for node in [&a, &b] {
        let banner = &node.proc.lines()[0];
        assert!(banner.contains("rediss://:***@127.0.0.1:"), "{banner}");
        let everything = [node.proc.lines(), node.proc.errors()].concat().join("\n");
        assert!(!everything.contains(TLS_PASSWORD), "{everything}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_presents_its_client_certificate_to_a_redis_that_asks_for_one() {
    let redis = RedisServer::start_tls(true);
    let (ca, cert, key) = (
        redis.ca_file(),
        redis.client_cert_file(),
        redis.client_key_file(),
    );
    let node = TestServer::start_redis(
        &redis.url(),
        &[
            "-q",
            "--redis-ca",
            ca.to_str().unwrap(),
            "--redis-cert",
            cert.to_str().unwrap(),
            "--redis-key",
            key.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(node.get_json("/readyz").await["status"], "ready");
    let mut feed = node.feed("Certified", &[]).await;
    assert_eq!(node.push("Certified", "hello").await, 1);
    assert_eq!(feed.next().await.data, "hello");
    assert!(
        redis.cli(&["XLEN", "{pere:ch:Certified}:ev"]).trim() == "1",
        "the event is in Redis"
    );
}

const SECRET: &str = "cluster-secret-of-at-least-32-bytes-012345";

/// A token for `sub` signed with `secret`, valid for a minute, with the given rights.
fn token(secret: &str, sub: &str, publish: &[&str], subscribe: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let claims = serde_json::json!({
        "sub": sub,
        "exp": exp,
        "pere": {"publish": publish, "subscribe": subscribe, "admin": false},
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_the_cluster_key_works_on_every_node() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["-q", "--jwt-secret", SECRET]).await;
    let publisher = format!("Bearer {}", token(SECRET, "erp", &["Secure"], &[]));
    let device = format!("Bearer {}", token(SECRET, "D1", &[], &["Secure"]));

    // The device's token opens its feed on B; the publisher's pushes on A.
    let mut feed = b
        .feed("Secure", &[("authorization", device.as_str())])
        .await;
    let pushed = a
        .http
        .post(a.url("/push/Secure"))
        .header("authorization", &publisher)
        .body("for D1")
        .send()
        .await
        .expect("push");
    assert_eq!(pushed.status(), 200, "the publisher's token is good on A");
    let event = feed.next().await;
    assert_eq!(event.data, "for D1");

    // Its receipt on A, with the same token it subscribed with on B.
    let ack = |node: &TestServer, authorization: String, device: &str| {
        node.http
            .post(node.url("/feedback/Secure"))
            .header("authorization", authorization)
            .json(&serde_json::json!({"device": device, "id": 1, "status": "rx ok"}))
            .send()
    };
    let acked = ack(&a, device.clone(), "D1").await.expect("feedback");
    assert_eq!(acked.status(), 200, "the device's token is good on A too");
    let forged = ack(&b, device.clone(), "D2").await.expect("feedback");
    assert_eq!(
        forged.status(),
        403,
        "a receipt for another device is refused on every node"
    );

    // A token signed with another key is refused by both nodes.
    let stranger = format!(
        "Bearer {}",
        token(
            "some-other-secret-of-at-least-32-bytes-xx",
            "erp",
            &["Secure"],
            &[]
        )
    );
    for node in [&a, &b] {
        let refused = node
            .http
            .post(node.url("/push/Secure"))
            .header("authorization", &stranger)
            .body("x")
            .send()
            .await
            .expect("push");
        assert_eq!(refused.status(), 401);
    }
}

/// The next change on a presence stream: (id, device, online).
async fn next_presence(stream: &mut pere_e2e::Feed) -> (String, String, bool) {
    let event = stream.next().await;
    assert_eq!(event.event, "presence", "{event:?}");
    let change: Value = serde_json::from_str(&event.data).expect("presence JSON");
    (
        event.id,
        change["device"].as_str().expect("device").to_owned(),
        change["online"].as_bool().expect("online"),
    )
}

/// `device`'s (online, open_streams) in `node`'s `/admin/devices/:channel`.
async fn device_state(node: &TestServer, channel: &str, device: &str) -> (bool, u64) {
    let devices = node.get_json(&format!("/admin/devices/{channel}")).await;
    (
        devices[device]["online"].as_bool().unwrap_or(false),
        devices[device]["open_streams"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_node_shows_online_on_the_other_node_s_presence_stream_and_devices() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["-q", "--redis-node-ttl", "3s"]).await;
    let mut on_b = b.feed_path("/presence/Room", &[]).await;
    let mut on_a = a.feed_path("/presence/Room", &[]).await;

    let h1 = a.feed("Room", &[("device", "H1")]).await;
    let online = next_presence(&mut on_b).await;
    assert_eq!(
        online,
        ("1".into(), "H1".into(), true),
        "B heard A's stream"
    );
    assert_eq!(
        next_presence(&mut on_a).await,
        online,
        "both nodes number the change alike"
    );
    // Counted in the same script that announced it: B's views agree as soon as it hears.
    assert_eq!(device_state(&b, "Room", "H1").await, (true, 1));
    let mut dashboard = b.feed_path("/admin/stream?channel=Room", &[]).await;
    // Its channel list counts A's feed once A's registration shows it; its devices at once.
    let mut devices = None;
    let mut room_feeds = 0;
    while devices.is_none() || room_feeds == 0 {
        let event = dashboard.next().await;
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        match event.event.as_str() {
            "devices" => devices = Some(data),
            "channels" => {
                for channel in data["channels"].as_array().into_iter().flatten() {
                    if channel["channel"] == "Room" {
                        room_feeds = channel["open_streams"].as_u64().unwrap_or(0);
                    }
                }
            }
            "channel" if data["channel"] == "Room" => {
                room_feeds = data["open_streams"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    assert_eq!(room_feeds, 1, "B's dashboard lists the feed held on A");
    let devices = devices.unwrap();
    assert_eq!(
        (
            &devices["devices"][0]["device"],
            &devices["devices"][0]["online"],
            &devices["devices"][0]["open_streams"]
        ),
        (&Value::from("H1"), &Value::from(true), &Value::from(1)),
        "B's dashboard counts A's stream: {devices}"
    );
    drop(dashboard);

    drop(h1);
    let offline = next_presence(&mut on_b).await;
    assert_eq!(offline, ("2".into(), "H1".into(), false));
    assert_eq!(next_presence(&mut on_a).await, offline);
    assert_eq!(device_state(&b, "Room", "H1").await, (false, 0));

    // The history is the cluster's: a late follower on B replays from A's change on.
    let mut late = b
        .feed_path("/presence/Room", &[("Last-Event-ID", "1")])
        .await;
    assert_eq!(next_presence(&mut late).await, offline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_streams_on_two_nodes_goes_offline_once_when_the_last_one_closes() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["-q", "--redis-node-ttl", "3s"]).await;
    let mut on_a = a.feed_path("/presence/Room", &[]).await;
    let mut on_b = b.feed_path("/presence/Room", &[]).await;

    let h1_on_a = a.feed("Room", &[("device", "H1")]).await;
    assert_eq!(next_presence(&mut on_a).await.1, "H1");
    let h1_on_b = b.feed("Room", &[("device", "H1")]).await;
    eventually("both of H1's streams to count", || async {
        (device_state(&a, "Room", "H1").await == (true, 2)).then_some(())
    })
    .await;

    drop(h1_on_a);
    eventually("A's stream of H1 to stop counting", || async {
        (device_state(&b, "Room", "H1").await == (true, 1)).then_some(())
    })
    .await;
    // A change after that one: had H1 gone offline, its change would come first.
    let h2 = a.feed("Room", &[("device", "H2")]).await;
    assert_eq!(
        next_presence(&mut on_a).await,
        ("2".into(), "H2".into(), true),
        "H1 stayed online on B"
    );

    drop(h1_on_b);
    assert_eq!(
        next_presence(&mut on_a).await,
        ("3".into(), "H1".into(), false)
    );
    drop(h2);
    assert_eq!(
        next_presence(&mut on_a).await,
        ("4".into(), "H2".into(), false),
        "H1 went offline once"
    );
    let mut seen_on_b = Vec::new();
    for _ in 0..4 {
        seen_on_b.push(next_presence(&mut on_b).await);
    }
    assert_eq!(
        seen_on_b,
        vec![
            ("1".into(), "H1".into(), true),
            ("2".into(), "H2".into(), true),
            ("3".into(), "H1".into(), false),
            ("4".into(), "H2".into(), false),
        ],
        "B saw the same changes in the same order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_devices_go_offline_on_the_surviving_node_within_the_ttl() {
    const TTL: Duration = Duration::from_secs(3);
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["-q", "--redis-node-ttl", "3s"]).await;
    let mut on_b = b.feed_path("/presence/Fleet", &[]).await;
    // H1 only on A; H2 on both, so it outlives A.
    let h1 = a.feed("Fleet", &[("device", "H1")]).await;
    let h2_on_a = a.feed("Fleet", &[("device", "H2")]).await;
    let _h2_on_b = b.feed("Fleet", &[("device", "H2")]).await;
    let mut online = [
        next_presence(&mut on_b).await,
        next_presence(&mut on_b).await,
    ];
    online.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        (online[0].1.as_str(), online[0].2, online[1].1.as_str()),
        ("H1", true, "H2")
    );
    eventually("both of H2's streams to count on B", || async {
        (device_state(&b, "Fleet", "H2").await == (true, 2)).then_some(())
    })
    .await;

    let killed = std::time::Instant::now();
    a.kill().await;
    // The connections die with A; B learns nothing from them.
    drop((h1, h2_on_a));
    let (_, device, now_online) = next_presence(&mut on_b).await;
    let took = killed.elapsed();
    assert_eq!((device.as_str(), now_online), ("H1", false));
    // The TTL counts from A's last heartbeat, before the kill; the slack is for a busy machine.
    assert!(
        took < TTL + Duration::from_secs(2),
        "offline {took:?} after the kill"
    );
    assert_eq!(device_state(&b, "Fleet", "H1").await, (false, 0));
    assert_eq!(
        device_state(&b, "Fleet", "H2").await,
        (true, 1),
        "H2 stays online on B"
    );
    // The next change is B's own, not a second offline of H1 or one of H2.
    let _h3 = b.feed("Fleet", &[("device", "H3")]).await;
    assert_eq!(next_presence(&mut on_b).await.1, "H3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipient_expiry_keeps_a_recipient_connected_to_another_node() {
    let redis = RedisServer::start();
    // Only A expires recipients, after a second idle.
    let a = TestServer::start_redis(&redis.url(), &["-q", "--recipient-expiry", "1s"]).await;
    let b = TestServer::start_redis(&redis.url(), &["-q"]).await;
    let _h1 = b.feed("Room", &[("device", "H1")]).await;
    eventually("A to see H1's stream on B", || async {
        (device_state(&a, "Room", "H1").await == (true, 1)).then_some(())
    })
    .await;
    // Y is a recipient with no stream, seen after H1: once A has expired it, A has judged H1 too.
    let registered = a.http.put(a.url("/devices/Room/Y")).send().await.unwrap();
    assert_eq!(registered.status(), 200);
    eventually("A to expire the idle recipient Y", || async {
        let devices = a.get_json("/admin/devices/Room").await;
        (devices["Y"]["recipient"] == false).then_some(())
    })
    .await;
    let devices = a.get_json("/admin/devices/Room").await;
    assert_eq!(
        devices["H1"]["recipient"], true,
        "H1 is connected, to B: {devices}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changed_during_a_redis_outage_is_written_when_redis_returns() {
    let mut redis = RedisServer::start_with(true);
    let node = TestServer::start_redis(&redis.url(), &["-q", "--redis-node-ttl", "3s"]).await;
    let mut presence = node.feed_path("/presence/Room", &[]).await;
    let h1 = node.feed("Room", &[("device", "H1")]).await;
    assert_eq!(
        next_presence(&mut presence).await,
        ("1".into(), "H1".into(), true)
    );

    redis.kill();
    // Closed while Redis is away: the node cannot write it now.
    drop(h1);
    redis.restart();
    assert_eq!(
        next_presence(&mut presence).await,
        ("2".into(), "H1".into(), false),
        "the presence stream stayed open and heard the change once Redis was back"
    );
    assert_eq!(device_state(&node, "Room", "H1").await, (false, 0));
}

/// Runs `redis-cli` against `redis`; its output, one value a line.
fn redis_cli(redis: &RedisServer, args: &[&str]) -> Vec<String> {
    let port = redis.port().to_string();
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port])
        .args(args)
        .output()
        .expect("redis-cli runs (it comes with redis-server)");
    assert!(output.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_registration_lapsed_registers_again_without_its_devices_going_offline() {
    let redis = RedisServer::start();
    let node = TestServer::start_redis(&redis.url(), &["-q", "--redis-node-ttl", "1s"]).await;
    let mut presence = node.feed_path("/presence/Room", &[]).await;
    let _h1 = node.feed("Room", &[("device", "H1")]).await;
    assert_eq!(
        next_presence(&mut presence).await,
        ("1".into(), "H1".into(), true)
    );
    let before = redis_cli(&redis, &["ZRANGE", "pere:nodes", "0", "-1"]);
    assert_eq!(before.len(), 1, "{before:?}");
    // As if its heartbeats had not reached Redis for longer than the TTL.
    redis_cli(&redis, &["ZADD", "pere:nodes", "1", &before[0]]);
    let renamed = before[0].trim_end_matches(".0").to_owned() + ".1";
    eventually(
        "the node to register under a new name, the old one swept",
        || async {
            (redis_cli(&redis, &["ZRANGE", "pere:nodes", "0", "-1"]) == [renamed.clone()])
                .then_some(())
        },
    )
    .await;
    assert_eq!(device_state(&node, "Room", "H1").await, (true, 1));
    // Had H1 gone offline and back meanwhile, those changes would come before this one.
    let _h2 = node.feed("Room", &[("device", "H2")]).await;
    assert_eq!(
        next_presence(&mut presence).await,
        ("2".into(), "H2".into(), true)
    );
}
