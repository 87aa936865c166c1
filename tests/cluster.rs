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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_on_both_nodes_make_one_gap_free_sequence_seen_alike_on_both() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, &["-q"]).await;
    let mut on_a = a.feed("Shared", &[]).await;
    let mut on_b = b.feed("Shared", &[]).await;

    assert_eq!(a.push("Shared", "from A").await, 1);
    let first = on_b.next().await;
    assert_eq!(
        (first.id.as_str(), first.data.as_str()),
        ("1", "from A"),
        "published on A, received on B"
    );
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

/// How many nodes' buses listen on the default prefix's bus channel, as Redis counts them.
fn bus_listeners(redis: &RedisServer) -> Option<u64> {
    let answer = redis.cli(&["PUBSUB", "NUMSUB", "pere:bus"]);
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
    // Both buses subscribed, so what follows travels by Pub/Sub, not by a catch-up.
    eventually("both buses to subscribe", || async {
        (bus_listeners(&redis) == Some(2)).then_some(())
    })
    .await;
    let mut on_a = a.feed("Shared", &[]).await;
    let mut on_b = b.feed("Shared", &[]).await;

    assert_eq!(a.push("Shared", "from A").await, 1);
    let first = on_b.next().await;
    assert_eq!(
        (first.id.as_str(), first.data.as_str()),
        ("1", "from A"),
        "published on A, received on B"
    );
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
