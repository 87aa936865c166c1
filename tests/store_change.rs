//! A store that changes under running nodes: a Redis that restarts without its data. No id a
//! client may have seen is handed out again, every open feed hears `pere-reset` before anything
//! newer, and every push accepted afterwards reaches every feed, on one node and on two.

use std::time::Duration;

use pere_e2e::{Feed, RedisServer, TestServer, WAIT};
use serde_json::Value;

/// Pushes `body` to `channel` on `node` until it is accepted (the node answers 503 while Redis
/// is away and while it adopts the store that came back); returns the id.
async fn push_when_accepted(node: &TestServer, channel: &str, body: &str) -> u64 {
    let accepted = tokio::time::timeout(WAIT, async {
        loop {
            let answer = node
                .http
                .post(node.url(&format!("/push/{channel}")))
                .body(body.to_owned())
                .send()
                .await
                .expect("push");
            let status = answer.status().as_u16();
            let json: Value = answer.json().await.unwrap_or(Value::Null);
            if status == 200 {
                return json["id"].as_u64().expect("id");
            }
            assert_eq!(status, 503, "{json}");
            let code = json["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(
                code == "store_unavailable" || code == "store_changed",
                "{json}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    accepted.unwrap_or_else(|_| panic!("no push accepted within {WAIT:?}"))
}

/// The next item of `feed`: a `pere-reset` whose data names `last_event_id`.
async fn expect_reset(feed: &mut Feed, last_event_id: u64) -> Value {
    let reset = feed.next().await;
    assert_eq!(reset.event, "pere-reset", "{reset:?}");
    let data: Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(data["last_event_id"], last_event_id, "{data}");
    data
}

#[tokio::test]
async fn ids_continue_above_what_a_redis_that_lost_its_data_had_handed_out() {
    let mut redis = RedisServer::start();
    let node = TestServer::start_redis(&redis.url(), &["-q"]).await;
    let mut feed = node.feed_path("/feed/RL?device=R1", &[]).await;
    for i in 1..=5 {
        assert_eq!(node.push("RL", &format!("before {i}")).await, i);
    }
    assert_eq!(feed.next_ids(5).await, vec![1, 2, 3, 4, 5]);

    // Without persistence, a restart is a Redis that lost everything.
    redis.restart();
    let mut after = Vec::new();
    for i in 1..=7 {
        after.push(push_when_accepted(&node, "RL", &format!("after {i}")).await);
    }
    assert!(
        after[0] > 5,
        "no id handed out before is given again: {after:?}"
    );
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");

    let reset = expect_reset(&mut feed, 5).await;
    assert!(reset["head"].as_u64().unwrap() >= 5, "{reset}");
    assert_eq!(
        feed.next_ids(7).await,
        after,
        "every new event reaches the open feed"
    );

    // A device resuming inside the ids the store lost is told to forget them.
    let mut resumed = node.feed("RL", &[("Last-Event-ID", "3")]).await;
    expect_reset(&mut resumed, 3).await;
    assert_eq!(resumed.next_ids(7).await, after);

    let ready = node.http.get(node.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready once the store is adopted");
    let channels = node.get_json("/admin/channels").await.to_string();
    assert!(channels.contains("\"RL\""), "listed again: {channels}");
    // A receipt for an event the lost store held is as one for a pruned event.
    let (status, answer) = node.ack("RL", "R1", 2, "ok").await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn two_nodes_never_reuse_an_id_after_redis_lost_its_data_and_every_push_reaches_both() {
    let mut redis = RedisServer::start();
    let a = TestServer::start_redis(&redis.url(), &["-q"]).await;
    let b = TestServer::start_redis(&redis.url(), &["-q"]).await;
    let mut on_a = a.feed_path("/feed/Two?device=FA", &[]).await;
    let mut on_b = b.feed_path("/feed/Two?device=FB", &[]).await;
    for i in 1..=4 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(node.push("Two", &format!("before {i}")).await, i);
    }
    assert_eq!(on_a.next_ids(4).await, vec![1, 2, 3, 4]);
    assert_eq!(on_b.next_ids(4).await, vec![1, 2, 3, 4]);

    redis.restart();
    let mut accepted = Vec::new();
    for i in 1..=20 {
        let node = if i % 2 == 0 { &a } else { &b };
        accepted.push(push_when_accepted(node, "Two", &format!("after {i}")).await);
    }
    let mut sorted = accepted.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "no id given twice: {accepted:?}");
    assert!(
        sorted[0] > 4,
        "none at or under the ids handed out before: {accepted:?}"
    );

    for feed in [&mut on_a, &mut on_b] {
        expect_reset(feed, 4).await;
        let mut heard = feed.next_ids(20).await;
        heard.sort_unstable();
        assert_eq!(
            heard, sorted,
            "every accepted push reaches both nodes' feeds"
        );
    }
}
