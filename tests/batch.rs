//! End-to-end tests of batch publishing (`POST /push/:channel` with an NDJSON body) and of
//! idempotent receipts, against the real `pere-server` binary on every store.

use pere_e2e::{on_every_store, StoreUnderTest, TestServer};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");
const ENVELOPE: (&str, &str) = ("pere-batch", "envelope");

/// Posts `body` to `path` with these headers; the status, headers and JSON answer.
async fn post(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HeaderMap, Value) {
    let mut request = server.http.post(server.url(path)).body(body.to_owned());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("post");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Pushes a batch to `channel`; the status, headers and JSON answer.
async fn batch(
    server: &TestServer,
    channel: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HeaderMap, Value) {
    let mut all = vec![NDJSON];
    all.extend_from_slice(headers);
    post(server, &format!("/push/{channel}"), &all, body).await
}

/// Checks a refusal: its status and code, and that its message holds `says`.
fn check_refused((status, _, answer): &(u16, HeaderMap, Value), expected: (u16, &str), says: &str) {
    assert_eq!(
        (*status, answer["error"]["code"].as_str()),
        (expected.0, Some(expected.1)),
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

fn ids(answer: &Value) -> Vec<u64> {
    answer["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect()
}

async fn stored_ids(server: &TestServer, channel: &str) -> Vec<u64> {
    let events = server.get_json(&format!("/events/{channel}")).await;
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

async fn a_batch_reaches_a_live_subscriber_in_order_with_consecutive_ids(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    let mut feed = server.feed("C", &[("device", "H1")]).await;
    assert_eq!(server.push("C", "{\"before\":true}").await, 1);
    let lines: Vec<String> = (1..=50).map(|n| format!("{{\"n\":{n}}}")).collect();
    let body = lines.join("\r\n") + "\n";
    let (status, headers, answer) = batch(
        &server,
        "C?event=tick",
        &[
            ("content-type", "application/x-ndjson; charset=utf-8"),
            ("device", "P1"),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(ids(&answer), (2..=51).collect::<Vec<_>>());
    assert_eq!(
        (answer["channel"].as_str(), answer["replayed"].as_u64()),
        (Some("C"), Some(0))
    );
    assert_eq!(
        answer.as_object().unwrap().len(),
        4,
        "channel, ids, time, replayed: {answer}"
    );
    let time = answer["time"].as_str().unwrap();
    assert!(
        time.ends_with('Z') && time.len() == "2026-01-01T00:00:00.000Z".len(),
        "{time}"
    );

    assert_eq!(feed.next().await.data, "{\"before\":true}");
    for (n, line) in lines.iter().enumerate() {
        let event = feed.next().await;
        assert_eq!(
            (event.id.as_str(), event.event.as_str(), event.data.as_str()),
            ((n + 2).to_string().as_str(), "tick", line.as_str())
        );
    }
    let event = server.get_json("/events/C/2").await;
    assert_eq!(
        (event["device"].as_str(), event["time"].as_str()),
        (Some("P1"), Some(time)),
        "{event}"
    );
    assert_eq!(server.push("C", "{\"after\":true}").await, 52);
}

async fn envelopes_give_each_event_its_body_type_and_key(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    let mut feed = server.feed("E", &[]).await;
    let body = [
        json!({"data": {"deep": [1, {"x": null}]}, "event": "order.created", "idempotency_key": "o-1"}).to_string(),
        r#"{"text": "plain words, not JSON"}"#.to_owned(),
        r#"{"data":   [1,   2]  , "idempotency_key": "o-3"}"#.to_owned(),
    ]
    .join("\n");
    let (status, _, answer) = batch(&server, "E", &[ENVELOPE, ("event", "default")], &body).await;
    assert_eq!((status, ids(&answer)), (200, vec![1, 2, 3]), "{answer}");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = feed.next().await;
        seen.push((event.event, event.data));
    }
    assert_eq!(
        seen,
        [
            (
                "order.created".to_owned(),
                json!({"deep": [1, {"x": null}]}).to_string()
            ),
            ("default".to_owned(), "plain words, not JSON".to_owned()),
            ("default".to_owned(), "[1,   2]".to_owned()),
        ],
        "each body exactly as its JSON text or its text"
    );
    // A line's own key answers a later single push with that key.
    let (status, headers, single) = post(
        &server,
        "/push/E?event=order.created",
        &[("idempotency-key", "o-1")],
        &json!({"deep": [1, {"x": null}]}).to_string(),
    )
    .await;
    assert_eq!((status, single["id"].as_u64()), (200, Some(1)));
    assert_eq!(headers["idempotent-replayed"], "true");
    // Unknown members, both or neither of data and text, an empty text: the line is named.
    for (line, says) in [
        (r#"{"data": 1, "color": "red"}"#, "line 2: "),
        (r#"{"data": 1, "text": "a"}"#, "exactly one"),
        (r#"{"event": "x"}"#, "exactly one"),
        (r#"{"text": ""}"#, "empty"),
        (r#"{"text": "a", "event": "no spaces"}"#, "line 2: "),
        ("[1]", "not a batch envelope"),
    ] {
        let refused = batch(
            &server,
            "E",
            &[ENVELOPE],
            &format!("{{\"text\": \"fine\"}}\n{line}\n"),
        )
        .await;
        check_refused(&refused, (400, "bad_batch_line"), says);
    }
    assert_eq!(
        stored_ids(&server, "E").await,
        [1, 2, 3],
        "refused batches stored nothing"
    );
}

async fn a_batch_key_gives_each_line_its_key_and_a_retry_is_replayed(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    let mut feed = server.feed("K", &[]).await;
    let body = "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";
    let key = ("idempotency-key", "batch-7");
    let (status, _, first) = batch(&server, "K", &[key], body).await;
    assert_eq!((status, ids(&first)), (200, vec![1, 2, 3]));
    // The whole batch again: every line answered from its key, nothing stored or delivered.
    let (status, headers, again) = batch(&server, "K", &[key], body).await;
    assert_eq!(status, 200);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(
        again,
        json!({"channel": "K", "ids": [1, 2, 3], "time": first["time"], "replayed": 3})
    );
    // Line i has the key K.i: a single push with K.1 is answered by line 1's event.
    let (_, headers, single) = post(
        &server,
        "/push/K",
        &[("idempotency-key", "batch-7.1")],
        "{\"n\":2}",
    )
    .await;
    assert_eq!(
        (
            single["id"].as_u64(),
            headers["idempotent-replayed"].to_str().unwrap()
        ),
        (Some(2), "true")
    );
    // A longer retry: the known lines are replayed, the new one stored; not every line replayed.
    let (status, headers, longer) =
        batch(&server, "K", &[key], &format!("{body}{{\"n\":4}}\n")).await;
    assert_eq!(
        (status, ids(&longer), longer["replayed"].as_u64()),
        (200, vec![1, 2, 3, 4], Some(3))
    );
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(
        feed.next_ids(4).await,
        [1, 2, 3, 4],
        "each event delivered once"
    );

    // Another body under a known key: 409 for the whole batch, nothing stored.
    let conflict = batch(&server, "K", &[key], "{\"n\":1}\n{\"n\":20}\n{\"n\":3}\n").await;
    check_refused(&conflict, (409, "idempotency_conflict"), "line 2");
    let twice = batch(
        &server,
        "K",
        &[ENVELOPE],
        "{\"text\":\"a\",\"idempotency_key\":\"x\"}\n{\"text\":\"b\",\"idempotency_key\":\"x\"}",
    )
    .await;
    check_refused(&twice, (409, "idempotency_conflict"), "line 1");
    assert_eq!(stored_ids(&server, "K").await, [1, 2, 3, 4]);

    // The batch key leaves room for the line numbers.
    let long = "k".repeat(250);
    check_refused(
        &batch(&server, "K", &[("idempotency-key", &long)], "1").await,
        (400, "bad_idempotency_key"),
        "249",
    );
    let (status, _, _) = batch(&server, "K", &[("idempotency-key", &long[..249])], "1").await;
    assert_eq!(status, 200);
}

async fn batches_are_bounded_and_bad_lines_are_named(store: StoreUnderTest) {
    let server =
        TestServer::start_on(store, &["--max-batch-events", "3", "--max-body", "1000"]).await;
    check_refused(
        &batch(&server, "L", &[], "1\n2\n3\n4\n").await,
        (413, "batch_too_large"),
        "at most 3",
    );
    let (status, _, answer) = batch(&server, "L", &[], "1\n2\n3\n").await;
    assert_eq!(
        (status, ids(&answer)),
        (200, vec![1, 2, 3]),
        "a final newline is no fourth line"
    );
    let big = format!("\"{}\"", "x".repeat(1000));
    check_refused(
        &batch(&server, "L", &[], &big).await,
        (413, "body_too_large"),
        "1000",
    );
    check_refused(
        &batch(&server, "L", &[], "").await,
        (400, "empty_batch"),
        "",
    );
    check_refused(
        &batch(&server, "L", &[], "1\n\n2").await,
        (400, "bad_batch_line"),
        "line 2: empty",
    );
    check_refused(
        &batch(&server, "L", &[], "1\n2\nnot json").await,
        (400, "bad_batch_line"),
        "line 3: not a JSON value",
    );
    check_refused(
        &batch(&server, "L?wait=all", &[], "1").await,
        (400, "wait_not_supported_on_batch"),
        "?wait=",
    );
    assert_eq!(
        stored_ids(&server, "L").await,
        [1, 2, 3],
        "refused batches stored nothing"
    );
    // An empty single push is refused too: browsers never dispatch an event with empty data.
    check_refused(
        &post(&server, "/push/L", &[], "").await,
        (400, "empty_body"),
        "empty",
    );
    assert_eq!(server.get_json("/events/L").await["head"], 3);
}

async fn a_receipt_retried_with_its_key_is_one_receipt(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    let id = server.push("R", "{}").await;
    let mut receipts = server.feed_path("/receipts/R", &[]).await;
    let key = ("idempotency-key", "receipt-1");
    let form = [("device", "H1"), ("last_event_id", "1"), key];
    let (status, headers, first) = post(&server, "/feedback/R", &form, "status=rx+ok").await;
    assert_eq!(status, 200, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, again) = post(&server, "/feedback/R", &form, "status=rx+ok").await;
    assert_eq!(
        (status, &again),
        (200, &first),
        "the same receipt, time included"
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    // Another receipt under the same key is a conflict; one without a key is recorded.
    let (status, _, conflict) = post(
        &server,
        "/feedback/R",
        &[("device", "H1"), ("last_event_id", "1"), key],
        "status=done",
    )
    .await;
    assert_eq!(
        (status, conflict["error"]["code"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    let (status, _, _) = post(
        &server,
        "/feedback/R",
        &[("device", "H1"), ("last_event_id", "1")],
        "status=done",
    )
    .await;
    assert_eq!(status, 200);

    // Recorded and told once: the stream's next receipts are the first and the keyless one.
    let streamed: Vec<String> = [receipts.next().await, receipts.next().await]
        .into_iter()
        .map(|e| e.data)
        .collect();
    let statuses: Vec<Value> = streamed
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap()["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("rx ok"), json!("done")], "{streamed:?}");
    let summary = server.get_json(&format!("/admin/receipts/R/{id}")).await;
    assert_eq!(
        summary["acknowledged"].as_array().unwrap().len(),
        1,
        "{summary}"
    );
    let devices = server.get_json("/admin/devices/R").await;
    assert_eq!(devices["H1"]["receipts"], 2, "{devices}");
}

async fn idempotency_keys_are_forgotten_after_the_window(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &["--idempotency-window", "1s"]).await;
    let key = [("idempotency-key", "w")];
    let (_, _, first) = post(&server, "/push/W", &key, "{}").await;
    let (_, headers, _) = post(&server, "/push/W", &key, "{}").await;
    assert_eq!(headers["idempotent-replayed"], "true");
    // The window is the server's clock: wait until a push with the key is new again.
    let deadline = std::time::Instant::now() + pere_e2e::WAIT;
    let later = loop {
        let (status, headers, later) = post(&server, "/push/W", &key, "{}").await;
        assert_eq!(status, 200);
        if headers.get("idempotent-replayed").is_none() {
            break later;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the key was never forgotten"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        (first["id"].as_u64(), later["id"].as_u64()),
        (Some(1), Some(2))
    );
}

on_every_store!(
    a_batch_reaches_a_live_subscriber_in_order_with_consecutive_ids,
    envelopes_give_each_event_its_body_type_and_key,
    a_batch_key_gives_each_line_its_key_and_a_retry_is_replayed,
    batches_are_bounded_and_bad_lines_are_named,
    a_receipt_retried_with_its_key_is_one_receipt,
    idempotency_keys_are_forgotten_after_the_window,
);
