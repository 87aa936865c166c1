//! PERE on Redis with Sentinel, end to end: a real `pere-server` node on `redis+sentinel://`
//! (a primary, one replica, one sentinel, all private) follows the primary across a failover
//! made by killing it (SIGKILL). With `--redis-wait-replicas 1`, no push answered 2xx is lost
//! and no acknowledged id is given again; without it, the pushes acknowledged just before the
//! kill that the failover lost are counted (the README's loss window).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pere_e2e::{RedisSentinel, TestServer, WAIT};
use serde_json::Value;

/// What a flood of pushes got answered.
#[derive(Debug, Default)]
struct Answers {
    /// The pushes answered 2xx: (id, body), in the order answered.
    acknowledged: Mutex<Vec<(u64, String)>>,
    /// How many were answered 2xx.
    count: AtomicUsize,
    /// How many answers were refusals (5xx) or no answer.
    refused: AtomicUsize,
}

/// Pushes on `channel` through `node` from `publishers` tasks at once, each push with a key of
/// its own, until `stop`.
fn flood(
    node: &TestServer,
    channel: &str,
    publishers: usize,
    stop: Arc<AtomicBool>,
    answers: Arc<Answers>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..publishers)
        .map(|p| {
            let (http, url) = (node.http.clone(), node.url(&format!("/push/{channel}")));
            let (stop, answers) = (stop.clone(), answers.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = format!("p{p}-{n}");
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
                            answers.acknowledged.lock().unwrap().push((id, body));
                            answers.count.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            answers.refused.fetch_add(1, Ordering::Relaxed);
                            // Not a busy loop while Redis is away.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

/// Waits until `answers` holds at least `count` acknowledged pushes.
async fn acknowledged_at_least(answers: &Answers, count: usize) {
    tokio::time::timeout(WAIT, async {
        while answers.count.load(Ordering::Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("pushes acknowledged in time");
}

/// Every retained event of `channel` on `node`, id → body, paging through `/events`.
async fn stored(node: &TestServer, channel: &str) -> BTreeMap<u64, String> {
    let mut all = BTreeMap::new();
    loop {
        let after = all.keys().next_back().copied().unwrap_or(0);
        let page = node
            .get_json(&format!("/events/{channel}?after={after}&limit=1000"))
            .await;
        let events = page["events"].as_array().expect("events");
        if events.is_empty() {
            return all;
        }
        for event in events {
            let body = event["data"].as_str().expect("a text body").to_owned();
            all.insert(event["id"].as_u64().expect("id"), body);
        }
    }
}

/// Pushes `body` with `key` as its idempotency key; the status, the error code if any, and
/// the Retry-After header.
async fn push_keyed(node: &TestServer, channel: &str, key: &str, body: &str) -> (u16, Value) {
    let answer = node
        .http
        .post(node.url(&format!("/push/{channel}")))
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .expect("push");
    let status = answer.status().as_u16();
    let retry_after = answer
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut json: Value = answer.json().await.unwrap_or(Value::Null);
    json["retry_after"] = retry_after.map_or(Value::Null, Value::from);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_no_push_answered_2xx_is_lost_when_the_primary_is_killed() {
    let mut redis = RedisSentinel::start();
    let node = TestServer::start_redis(&redis.url(), &["-q", "--redis-wait-replicas", "1"]).await;
    assert_eq!(node.get_json("/readyz").await["status"], "ready");
    let (stop, answers) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Answers::default()),
    );
    let publishers = flood(&node, "Ledger", 4, stop.clone(), answers.clone());
    acknowledged_at_least(&answers, 100).await;

    redis.kill_primary();
    let took = tokio::task::block_in_place(|| redis.wait_for_failover());
    // The new primary has no replica: nothing can be confirmed, and the node says so (once a
    // connection made before the failover, which fails, is made again).
    let (status, answer) = tokio::time::timeout(WAIT, async {
        loop {
            let answer = push_keyed(&node, "Ledger", "after-the-failover", "late").await;
            if answer.1["error"]["code"] != "store_unavailable" {
                return answer;
            }
        }
    })
    .await
    .expect("an answer other than store_unavailable");
    assert_eq!(
        (
            status,
            answer["error"]["code"].as_str(),
            answer["retry_after"].as_str()
        ),
        (503, Some("not_replicated"), Some("1")),
        "{answer}"
    );
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        publisher.await.expect("a publisher");
    }

    let acknowledged: BTreeMap<u64, String> = answers
        .acknowledged
        .lock()
        .unwrap()
        .clone()
        .into_iter()
        .collect();
    assert_eq!(
        acknowledged.len(),
        answers.count.load(Ordering::Relaxed),
        "no id acknowledged twice"
    );
    let stored = stored(&node, "Ledger").await;
    for (id, body) in &acknowledged {
        assert_eq!(
            stored.get(id),
            Some(body),
            "acknowledged {id} is readable after the failover, under its own id"
        );
    }

    // The old primary back as a replica: confirmations come again, and the retry of the push
    // refused above finds it stored (or stores it), under one id.
    tokio::task::block_in_place(|| redis.restart_old_primary());
    let (status, answer) = push_keyed(&node, "Ledger", "after-the-failover", "late").await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_u64().expect("id");
    assert!(!acknowledged.contains_key(&id), "id {id} given again");
    eprintln!(
        "{} pushes acknowledged, {} refused; failover in {took:?}; none lost",
        acknowledged.len(),
        answers.refused.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_replicas_a_failover_loses_only_the_newest_pushes_acknowledged_and_the_node_follows_it(
) {
    const ROUNDS: usize = 3;
    let mut lost_in_all = (0, 0);
    for round in 1..=ROUNDS {
        let mut redis = RedisSentinel::start();
        let node = TestServer::start_redis(&redis.url(), &["-q"]).await;
        let (stop, before) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Answers::default()),
        );
        let publishers = flood(&node, "Ledger", 8, stop.clone(), before.clone());
        acknowledged_at_least(&before, 300).await;

        // Killed while the pushes go on: some are under way, some just answered.
        let killed = Instant::now();
        redis.kill_primary();
        stop.store(true, Ordering::Relaxed);
        for publisher in publishers {
            publisher.await.expect("a publisher");
        }
        let took = tokio::task::block_in_place(|| redis.wait_for_failover());
        // The node follows the new primary: pushes are acknowledged again.
        let (stop, after) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Answers::default()),
        );
        let publishers = flood(&node, "Ledger", 2, stop.clone(), after.clone());
        acknowledged_at_least(&after, 20).await;
        let back = killed.elapsed();
        stop.store(true, Ordering::Relaxed);
        for publisher in publishers {
            publisher.await.expect("a publisher");
        }

        let stored = stored(&node, "Ledger").await;
        let before = before.acknowledged.lock().unwrap().clone();
        let (kept, lost): (Vec<&(u64, String)>, Vec<&(u64, String)>) = before
            .iter()
            .partition(|(id, body)| stored.get(id) == Some(body));
        // Lost: its id names nothing now, or another event (given again after the failover).
        let reused = lost
            .iter()
            .filter(|(id, _)| stored.contains_key(id))
            .count();
        lost_in_all = (lost_in_all.0 + lost.len(), lost_in_all.1 + before.len());
        eprintln!(
            "round {round}: {} acknowledged before the kill, {} of them lost ({reused} of their \
             ids given again); failover in {took:?}, pushes acknowledged again {back:?} after \
             the kill",
            before.len(),
            lost.len()
        );
        // The node saw the ids it handed out: the promoted replica lacking them is a store that
        // changed under it, and none is given again.
        assert_eq!(reused, 0, "round {round}: ids of lost pushes given again");
        // The replica had a prefix of the primary's history: what is lost is the newest.
        let newest_kept = kept.iter().map(|(id, _)| *id).max().unwrap_or(0);
        assert!(
            lost.iter().all(|(id, _)| *id > newest_kept),
            "lost {lost:?}, yet {newest_kept} was kept"
        );
        // Acknowledged on the new primary, and no failover since: all kept.
        for (id, body) in after.acknowledged.lock().unwrap().iter() {
            assert_eq!(
                stored.get(id),
                Some(body),
                "acknowledged after the failover"
            );
        }
    }
    eprintln!(
        "{} of {} acknowledged pushes lost in {ROUNDS} failovers",
        lost_in_all.0, lost_in_all.1
    );
}
