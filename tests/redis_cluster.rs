//! PERE on a Redis Cluster, end to end: real `pere-server` nodes on a private cluster of three
//! primaries (`redis+cluster://`) serve channels whose slots lie on every primary, hear each
//! other through each channel's shard channel, and lose nothing while channels' slots move
//! between primaries under traffic.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pere_e2e::{Feed, RedisCluster, TestServer, WAIT};
use serde_json::Value;

/// Two nodes on `cluster`, with `extra` flags each.
async fn two_nodes(cluster: &RedisCluster, extra: &[&str]) -> (TestServer, TestServer) {
    (
        TestServer::start_redis(&cluster.url(), extra).await,
        TestServer::start_redis(&cluster.url(), extra).await,
    )
}

/// The port of the primary serving `channel`'s keys (default prefix).
fn primary_of(cluster: &RedisCluster, channel: &str) -> u16 {
    cluster.owner_of(cluster.slot_of(&format!("{{pere:ch:{channel}}}")))
}

/// Every retained event of `channel` on `node`, as (id, body), paging through `/events`.
async fn stored(node: &TestServer, channel: &str) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |(id, _)| *id);
        let page = node
            .get_json(&format!("/events/{channel}?after={after}&limit=1000"))
            .await;
        let events = page["events"].as_array().expect("events");
        if events.is_empty() {
            return all;
        }
        for event in events {
            let body = match &event["data"] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            all.push((event["id"].as_u64().expect("id"), body));
        }
    }
}

/// The ids a feed delivers until it has delivered `last`.
async fn ids_until(feed: &mut Feed, last: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.last().is_none_or(|&id| id < last) {
        let event = feed.next().await;
        if let Ok(id) = event.id.parse() {
            ids.push(id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_three_primaries_serve_twenty_channels_and_a_receipt_on_one_completes_a_wait_on_the_other(
) {
    const CHANNELS: usize = 20;
    let cluster = RedisCluster::start(3);
    let (a, b) = two_nodes(&cluster, &["-q"]).await;
    assert_eq!(a.get_json("/readyz").await["status"], "ready");
    let names: Vec<String> = (0..CHANNELS).map(|i| format!("Spread{i}")).collect();
    let primaries: HashSet<u16> = names.iter().map(|c| primary_of(&cluster, c)).collect();
    assert_eq!(primaries.len(), 3, "the channels lie on every primary");

    for (i, channel) in names.iter().enumerate() {
        let device = format!("H{i}");
        // The device listens on B, which makes it a recipient of the channel.
        let mut on_b = b.feed(channel, &[("device", &device)]).await;
        let mut on_a = a.feed(channel, &[]).await;
        let waiting = {
            let url = a.url(&format!("/push/{channel}?wait=all&timeout=15s"));
            let http = a.http.clone();
            tokio::spawn(async move {
                let response = http.post(url).body("order").send().await.expect("push");
                let status = response.status().as_u16();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            })
        };
        let event = on_b.next().await;
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            ("1", "order"),
            "{channel}"
        );
        assert_eq!(on_a.next().await.id, "1", "{channel}: A's own feed");
        let (status, _) = b.ack(channel, &device, 1, "rx ok").await;
        assert_eq!(status, 200, "{channel}");
        let (status, answer) = waiting.await.expect("the waiting push");
        assert_eq!(
            (status, &answer["satisfied"]),
            (200, &Value::Bool(true)),
            "{channel}: the receipt posted on B satisfied the wait held on A: {answer}"
        );
        // And the other way: pushed on B, heard on A.
        assert_eq!(b.push(channel, "from B").await, 2, "{channel}");
        let event = on_a.next().await;
        assert_eq!((event.id.as_str(), event.data.as_str()), ("2", "from B"));
        assert_eq!(on_b.next().await.id, "2");
    }
    let listed = a.get_json("/admin/channels?limit=100").await;
    let listed = listed["channels"].as_array().expect("channels").len();
    assert_eq!(listed, CHANNELS, "the set of channels is the cluster's");
}

/// What the publishers got answered: the events acknowledged (2xx) per channel, by id.
type Acknowledged = Arc<Mutex<BTreeMap<String, BTreeMap<u64, String>>>>;

/// Pushes on `channel` through `node` until `stop`, each push with a key of its own and tried
/// again (same key) until it is answered 2xx or `stop` comes; notes what was acknowledged.
fn publisher(
    node: &TestServer,
    channel: &str,
    tag: &str,
    stop: Arc<AtomicBool>,
    acknowledged: Acknowledged,
) -> tokio::task::JoinHandle<usize> {
    let (http, url) = (node.http.clone(), node.url(&format!("/push/{channel}")));
    let (channel, tag) = (channel.to_owned(), tag.to_owned());
    tokio::spawn(async move {
        let mut refused = 0;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let body = format!("{tag}-{n}");
            loop {
                let answer = http
                    .post(&url)
                    .header("idempotency-key", &body)
                    .body(body.clone())
                    .send()
                    .await;
                match answer {
                    Ok(answer) if answer.status().is_success() => {
                        let json: Value = answer.json().await.expect("push answer");
                        let id = json["id"].as_u64().expect("id");
                        let mut acknowledged = acknowledged.lock().unwrap();
                        let previous = acknowledged
                            .entry(channel.clone())
                            .or_default()
                            .insert(id, body.clone());
                        assert!(
                            previous.as_ref().is_none_or(|p| *p == body),
                            "{channel}: id {id} given to {previous:?} and {body}"
                        );
                        break;
                    }
                    _ => refused += 1,
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            // A steady trickle rather than a flood: moves happen between pushes.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        refused
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_channels_between_primaries_under_traffic_loses_no_acknowledged_push_and_no_feed_misses_an_event(
) {
    let cluster = Arc::new(RedisCluster::start(3));
    let (a, b) = two_nodes(&cluster, &["-q"]).await;
    let channels = ["Moving0", "Moving1", "Moving2", "Moving3"];
    let mut feeds = Vec::new();
    for channel in channels {
        feeds.push((channel, a.feed(channel, &[]).await));
        feeds.push((channel, b.feed(channel, &[]).await));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Acknowledged = Arc::default();
    let mut publishers = Vec::new();
    for channel in channels {
        for (tag, node) in [("a", &a), ("b", &b)] {
            let tag = format!("{tag}-{channel}");
            publishers.push(publisher(
                node,
                channel,
                &tag,
                stop.clone(),
                acknowledged.clone(),
            ));
        }
    }
    let count = |acknowledged: &Acknowledged| -> usize {
        acknowledged
            .lock()
            .unwrap()
            .values()
            .map(BTreeMap::len)
            .sum()
    };
    let traffic = |at_least: usize| {
        let acknowledged = acknowledged.clone();
        async move {
            tokio::time::timeout(WAIT, async {
                while count(&acknowledged) < at_least {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("pushes acknowledged in time");
        }
    };
    traffic(40).await;

    // Each channel's slot goes to the next primary, twice round, while the pushes go on.
    let ports = cluster.ports();
    let slots: Vec<u16> = channels
        .iter()
        .map(|channel| cluster.slot_of(&format!("{{pere:ch:{channel}}}")))
        .collect();
    for slot in slots.iter().chain(&slots).copied() {
        let before = count(&acknowledged);
        let cluster = cluster.clone();
        let ports = ports.clone();
        let moved = tokio::task::spawn_blocking(move || {
            let from = cluster.owner_of(slot);
            let at = ports.iter().position(|&p| p == from).expect("a primary");
            let to = ports[(at + 1) % ports.len()];
            cluster.move_slot(slot, to);
            (from, to, cluster.owner_of(slot))
        })
        .await
        .expect("the move");
        assert_eq!(
            moved.1, moved.2,
            "slot {slot} moved from {} to {}",
            moved.0, moved.1
        );
        // Pushes acknowledged after each move, on its channel among the others.
        traffic(before + 8).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for publisher in publishers {
        refused += publisher.await.expect("a publisher");
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    for channel in channels {
        let stored = stored(&a, channel).await;
        let ids: Vec<u64> = stored.iter().map(|(id, _)| *id).collect();
        let head = ids.len() as u64;
        assert_eq!(
            ids,
            (1..=head).collect::<Vec<u64>>(),
            "{channel}: one gap-free sequence, nothing lost"
        );
        let stored: BTreeMap<u64, String> = stored.into_iter().collect();
        for (id, body) in &acknowledged[channel] {
            assert_eq!(
                stored.get(id),
                Some(body),
                "{channel}: acknowledged {id} is stored"
            );
        }
        let bodies: HashSet<&String> = stored.values().collect();
        assert_eq!(
            bodies.len(),
            stored.len(),
            "{channel}: each push stored once"
        );
        for (name, feed) in feeds.iter_mut().filter(|(name, _)| *name == channel) {
            assert_eq!(
                ids_until(feed, head).await,
                ids,
                "{name}: every event, in order, on both nodes"
            );
        }
    }
    let total: usize = acknowledged.values().map(BTreeMap::len).sum();
    eprintln!("{total} pushes acknowledged, {refused} answers refused while slots moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_primary_is_answered_503_until_it_is_back_then_its_channels_are_served_again() {
    let mut cluster = RedisCluster::start(3);
    let node = TestServer::start_redis(&cluster.url(), &["-q"]).await;
    let ready = |node: &TestServer| {
        let (http, url) = (node.http.clone(), node.url("/readyz"));
        async move {
            http.get(url)
                .send()
                .await
                .expect("readyz")
                .status()
                .as_u16()
        }
    };
    assert_eq!(ready(&node).await, 200);
    let channel = "Stopped";
    assert_eq!(node.push(channel, "before").await, 1);
    let primary = primary_of(&cluster, channel);

    cluster.kill_node(primary);
    let stopped = std::time::Instant::now();
    let answer = node
        .http
        .post(node.url(&format!("/push/{channel}")))
        .body("while stopped")
        .send()
        .await
        .expect("push");
    let status = answer.status().as_u16();
    let json: Value = answer.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{json}"
    );
    let answered_in = stopped.elapsed();
    assert!(
        answered_in < Duration::from_secs(6),
        "answered in {answered_in:?}"
    );
    // Once the other primaries call it failed, the cluster refuses every command (by default),
    // the probe's write too.
    tokio::time::timeout(WAIT, async {
        while ready(&node).await != 503 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("not ready once the cluster refuses commands");

    tokio::task::block_in_place(|| cluster.restart_node(primary));
    // Served again; what the stopped primary held is gone with it (nothing on disk), yet the
    // node saw id 1 handed out: the channel continues above it (store identity).
    let id = tokio::time::timeout(WAIT, async {
        loop {
            let answer = node
                .http
                .post(node.url(&format!("/push/{channel}")))
                .body("after")
                .send()
                .await
                .expect("push");
            if answer.status().is_success() {
                let json: Value = answer.json().await.expect("push answer");
                return json["id"].as_u64().expect("id");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("pushes accepted again");
    assert_eq!(id, 2, "no id given twice");
    assert_eq!(ready(&node).await, 200);
    eprintln!("a push to the stopped primary's channel was answered 503 in {answered_in:?}");
}
