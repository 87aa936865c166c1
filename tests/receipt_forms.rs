//! End-to-end tests of the two receipt forms beside the single one, against the real
//! `pere-server` on every store: cumulative receipts (`{"device","upto","status"}`: every event
//! the device owes up to an id) and batches of receipts (an NDJSON body, one receipt per line,
//! all or none), with what a receipt updates (waits, the receipt stream, device records, the
//! log) and the token rule (a device acknowledges only as itself).

use std::time::{SystemTime, UNIX_EPOCH};

use pere_e2e::{on_every_store, StoreUnderTest, TestServer};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

const NDJSON: (&str, &str) = ("content-type", "application/x-ndjson");
const SECRET: &str = "receipt-forms-secret-of-at-least-32-bytes";

/// Posts `body` to `/feedback/C` with these headers (and `token`, if any); the status, headers
/// and JSON answer.
async fn feedback(
    server: &TestServer,
    channel: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HeaderMap, Value) {
    let mut request = server
        .http
        .post(server.url(&format!("/feedback/{channel}")))
        .body(body.to_owned());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("feedback");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// A cumulative receipt of `device` up to `upto`; the status and JSON answer.
async fn upto(
    server: &TestServer,
    channel: &str,
    device: &str,
    upto: u64,
    status: &str,
) -> (u16, Value) {
    let body = json!({"device": device, "upto": upto, "status": status}).to_string();
    let json = ("content-type", "application/json");
    let (code, _, answer) = feedback(server, channel, &[json], &body).await;
    (code, answer)
}

/// A batch of receipts of `device`, one line per receipt; the status, headers and JSON answer.
async fn batch(
    server: &TestServer,
    channel: &str,
    device: &str,
    extra: &[(&str, &str)],
    lines: &[Value],
) -> (u16, HeaderMap, Value) {
    let body: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let mut headers = vec![NDJSON, ("device", device)];
    headers.extend_from_slice(extra);
    feedback(server, channel, &headers, &body).await
}

/// Checks a refusal: its status and code, and that its message holds `says`.
fn check_refused(status: u16, answer: &Value, expected: (u16, &str), says: &str) {
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (expected.0, Some(expected.1)),
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

/// Makes `devices` recipients of `channel`, then publishes `count` events; their ids.
async fn recipients_and_events(
    server: &TestServer,
    channel: &str,
    devices: &[&str],
    count: u64,
) -> Vec<u64> {
    for device in devices {
        let response = server
            .http
            .put(server.url(&format!("/devices/{channel}/{device}")))
            .send()
            .await
            .expect("register");
        assert_eq!(response.status(), 200);
    }
    let mut ids = Vec::new();
    for n in 1..=count {
        ids.push(server.push(channel, &format!("{{\"n\":{n}}}")).await);
    }
    ids
}

/// The next `n` receipts of a receipt stream: (event id, device, status).
async fn next_receipts(stream: &mut pere_e2e::Feed, n: usize) -> Vec<(u64, String, String)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let frame = stream.next().await;
        if frame.event != "receipt" {
            continue;
        }
        let receipt: Value = serde_json::from_str(&frame.data).unwrap();
        seen.push((
            receipt["id"].as_u64().unwrap(),
            receipt["device"].as_str().unwrap().to_owned(),
            receipt["status"].as_str().unwrap().to_owned(),
        ));
    }
    seen
}

async fn a_cumulative_receipt_acknowledges_what_the_device_owes(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    let mut receipts = server.feed_path("/receipts/C", &[]).await;
    recipients_and_events(&server, "C", &["H1", "H2"], 5).await;
    let (status, _) = server.ack("C", "H1", 2, "ok").await;
    assert_eq!(status, 200);

    let (status, answer) = upto(&server, "C", "H1", 4, "rx ok").await;
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"channel": "C", "device": "H1", "upto": 4, "acknowledged": 3, "ids": [1, 3, 4]})
        ),
        "what H1 owed up to 4, its receipt for 2 aside"
    );
    assert_eq!(
        next_receipts(&mut receipts, 4).await,
        [
            (2, "H1".into(), "ok".into()),
            (1, "H1".into(), "rx ok".into()),
            (3, "H1".into(), "rx ok".into()),
            (4, "H1".into(), "rx ok".into()),
        ],
        "one entry per event acknowledged, in the receipt stream"
    );
    server
        .proc
        .wait_line(|l| {
            l.contains(" FEEDBACK> ")
                && l.contains(
                    "device: H1, Last-Event-Id: 1, 3-4, upto: 4, receipts: 3, status: rx ok",
                )
        })
        .await;
    assert_eq!(server.pending("C", "H1").await, [5]);
    assert_eq!(
        server.pending("C", "H2").await,
        [1, 2, 3, 4, 5],
        "another device's receipts are untouched"
    );

    // Again: nothing more is owed up to 4, and the answer still says so.
    let (status, answer) = upto(&server, "C", "H1", 4, "rx ok").await;
    assert_eq!(
        (status, &answer["acknowledged"], &answer["ids"]),
        (200, &json!(0), &json!([]))
    );
    // A single receipt for an event already acknowledged is recorded as it always was.
    let (status, answer) = server.ack("C", "H1", 3, "read").await;
    assert_eq!(
        (status, &answer["id"], &answer["status"]),
        (200, &json!(3), &json!("read"))
    );
    let summary = server.get_json("/admin/receipts/C/3").await;
    assert_eq!(summary["acknowledged"][0]["status"], "read", "{summary}");
    let devices = server.get_json("/admin/devices/C").await;
    assert_eq!(devices["H1"]["receipts"], 5, "{devices}");
    assert_eq!(devices["H1"]["last_acked"], 4);
    assert_eq!(devices["H1"]["op"], "feedback");

    // Beyond the channel's last id: as a single receipt for an unknown id.
    let (status, answer) = upto(&server, "C", "H1", 9, "ok").await;
    check_refused(status, &answer, (404, "unknown_event"), "9");
    // A device never expected to acknowledge anything acknowledges nothing.
    let (status, answer) = upto(&server, "C", "H9", 5, "ok").await;
    assert_eq!((status, &answer["acknowledged"]), (200, &json!(0)));
    // A receipt names one event or every one up to an id, never both.
    let (status, _, answer) = feedback(
        &server,
        "C",
        &[("content-type", "application/json")],
        r#"{"device":"H1","id":5,"upto":5}"#,
    )
    .await;
    check_refused(status, &answer, (400, "bad_event_id"), "not both");

    // The original clients' form still works, unchanged.
    let (status, _, answer) = feedback(
        &server,
        "C",
        &[("device", "H2"), ("last_event_id", "5")],
        "status=rx+ok",
    )
    .await;
    assert_eq!(
        (status, &answer["id"], &answer["status"]),
        (200, &json!(5), &json!("rx ok"))
    );
    let (status, answer) = upto(&server, "C", "H2", 5, "done").await;
    assert_eq!(
        (status, &answer["ids"]),
        (200, &json!([1, 2, 3, 4])),
        "all but the one H2 acknowledged"
    );
    let event = server.get_json("/events/C/4").await;
    assert_eq!(event["receipts"]["complete"], true, "{event}");
}

async fn a_cumulative_receipt_is_bounded_and_says_there_is_more(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &["--max-batch-events", "3"]).await;
    recipients_and_events(&server, "B", &["H1"], 7).await;
    let (status, answer) = upto(&server, "B", "H1", 7, "ok").await;
    assert_eq!(
        (status, answer),
        (
            200,
            json!({"channel": "B", "device": "H1", "upto": 7, "acknowledged": 3, "ids": [1, 2, 3], "more": true})
        ),
        "the oldest first"
    );
    let (_, answer) = upto(&server, "B", "H1", 7, "ok").await;
    assert_eq!(
        (&answer["ids"], &answer["more"]),
        (&json!([4, 5, 6]), &json!(true))
    );
    let (_, answer) = upto(&server, "B", "H1", 7, "ok").await;
    assert_eq!(answer["ids"], json!([7]));
    assert!(answer.get("more").is_none(), "{answer}");
    assert!(server.pending("B", "H1").await.is_empty());
}

async fn a_wait_all_push_completes_by_a_cumulative_receipt(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    // H1 listens, which makes it a recipient of the channel.
    let mut feed = server.feed("W", &[("device", "H1")]).await;
    assert_eq!(server.push("W", "first").await, 1);
    let waiting = {
        let (http, url) = (
            server.http.clone(),
            server.url("/push/W?wait=all&timeout=20s"),
        );
        tokio::spawn(async move {
            let response = http.post(url).body("second").send().await.expect("push");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    assert_eq!(feed.next_ids(2).await, [1, 2]);
    let (status, answer) = upto(&server, "W", "H1", 2, "rx ok").await;
    assert_eq!((status, &answer["ids"]), (200, &json!([1, 2])));
    let (status, answer) = waiting.await.unwrap();
    assert_eq!(status, 200, "satisfied by the cumulative receipt: {answer}");
    assert_eq!(answer["satisfied"], true);
    assert_eq!(answer["receipts"]["acknowledged"][0]["device"], "H1");
    assert_eq!(answer["receipts"]["acknowledged"][0]["status"], "rx ok");
}

async fn a_batch_is_all_or_none_and_names_its_line(store: StoreUnderTest) {
    let server =
        TestServer::start_on(store, &["--max-batch-events", "4", "--max-body", "4096"]).await;
    let mut receipts = server.feed_path("/receipts/N", &[]).await;
    recipients_and_events(&server, "N", &["H1"], 3).await;

    let (status, _, answer) = batch(
        &server,
        "N",
        "H1",
        &[],
        &[
            json!({"id": 1}),
            json!({"id": 2, "status": "done"}),
            json!({"id": 9}),
        ],
    )
    .await;
    check_refused(status, &answer, (404, "unknown_event"), "line 3");
    let (status, _, answer) = feedback(
        &server,
        "N",
        &[NDJSON, ("device", "H1")],
        "{\"id\":1}\n{\"id\":2}\n{\"id\":3,\"stauts\":\"ok\"}\n",
    )
    .await;
    check_refused(status, &answer, (400, "bad_batch_line"), "line 3");
    assert_eq!(
        server.pending("N", "H1").await,
        [1, 2, 3],
        "nothing recorded"
    );
    assert!(server.get_json("/admin/receipts/N/1").await["acknowledged"]
        .as_array()
        .unwrap()
        .is_empty());

    let (status, headers, answer) = batch(
        &server,
        "N",
        "H1",
        &[],
        &[
            json!({"id": 3, "status": "read"}),
            json!({"id": 1, "status": "failed: no room"}),
            json!({"id": 2}),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(headers.get("idempotent-replayed").is_none());
    let seqs: Vec<u64> = answer["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in line order: {seqs:?}"
    );
    assert_eq!(
        answer,
        json!({"channel": "N", "device": "H1", "receipts": [
            {"id": 3, "seq": seqs[0], "status": "read", "replayed": false},
            {"id": 1, "seq": seqs[1], "status": "failed: no room", "replayed": false},
            {"id": 2, "seq": seqs[2], "status": "ok", "replayed": false},
        ]})
    );
    assert_eq!(
        next_receipts(&mut receipts, 3).await,
        [
            (3, "H1".into(), "read".into()),
            (1, "H1".into(), "failed: no room".into()),
            (2, "H1".into(), "ok".into()),
        ]
    );
    server
        .proc
        .wait_line(|l| {
            l.contains(" FEEDBACK> ")
                && l.contains(
                    "device: H1, Last-Event-Id: 3, 1-2, receipts: 3, status: read | failed: no room | ok",
                )
        })
        .await;
    assert!(server.pending("N", "H1").await.is_empty());
    let devices = server.get_json("/admin/devices/N").await;
    assert_eq!(
        (&devices["H1"]["receipts"], &devices["H1"]["last_acked"]),
        (&json!(3), &json!(3))
    );

    // The limits and codes of batch publishing.
    let (status, _, answer) = feedback(&server, "N", &[NDJSON, ("device", "H1")], "").await;
    check_refused(
        status,
        &answer,
        (400, "empty_batch"),
        "one receipt per line",
    );
    let five = [1, 2, 3, 1, 2].map(|id| json!({"id": id}));
    let (status, _, answer) = batch(&server, "N", "H1", &[], &five).await;
    check_refused(
        status,
        &answer,
        (413, "batch_too_large"),
        "at most 4 receipts",
    );
    let long = json!({"id": 1, "status": "x".repeat(5000)});
    let (status, _, answer) = batch(&server, "N", "H1", &[], &[long]).await;
    check_refused(status, &answer, (413, "body_too_large"), "4096");
    let (status, _, answer) = feedback(&server, "N", &[NDJSON], "{\"id\":1}\n").await;
    check_refused(status, &answer, (400, "missing_device"), "device");
    assert_eq!(
        server.get_json("/admin/devices/N").await["H1"]["receipts"],
        3,
        "no refused batch recorded anything"
    );
}

async fn a_batch_with_keys_is_replayed_idempotently(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    recipients_and_events(&server, "K", &["H1"], 3).await;
    let lines = [
        json!({"id": 1, "status": "ok", "key": "k1"}),
        json!({"id": 2, "status": "ok", "key": "k2"}),
    ];
    let (status, headers, first) = batch(&server, "K", "H1", &[], &lines).await;
    assert_eq!(status, 200, "{first}");
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, again) = batch(&server, "K", "H1", &[], &lines).await;
    assert_eq!(status, 200);
    assert_eq!(headers["idempotent-replayed"], "true");
    let replayed: Vec<Value> = first["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["replayed"] = json!(true);
            r
        })
        .collect();
    assert_eq!(
        again["receipts"],
        json!(replayed),
        "the stored receipts, seqs included"
    );
    // A key of a batch line is a receipt key like any: the single form finds it too.
    let (status, headers, single) = feedback(
        &server,
        "K",
        &[
            ("device", "H1"),
            ("last_event_id", "1"),
            ("idempotency-key", "k1"),
        ],
        "status=ok",
    )
    .await;
    assert_eq!((status, &single["id"]), (200, &json!(1)));
    assert_eq!(headers["idempotent-replayed"], "true");
    // A key held for another receipt refuses the whole batch, naming the line.
    let (status, _, answer) = batch(
        &server,
        "K",
        "H1",
        &[],
        &[
            json!({"id": 3}),
            json!({"id": 2, "status": "other", "key": "k2"}),
        ],
    )
    .await;
    check_refused(status, &answer, (409, "idempotency_conflict"), "line 2");
    assert_eq!(server.pending("K", "H1").await, [3], "nothing recorded");
    // A batch key K gives line i the key K.i: a retry is replayed whole.
    let batch_key = [("idempotency-key", "B")];
    let lines = [json!({"id": 3}), json!({"id": 1, "status": "read"})];
    let (status, _, first) = batch(&server, "K", "H1", &batch_key, &lines).await;
    assert_eq!(status, 200, "{first}");
    let (_, headers, again) = batch(&server, "K", "H1", &batch_key, &lines).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again["receipts"][1]["seq"], first["receipts"][1]["seq"]);
    assert_eq!(
        server.get_json("/admin/devices/K").await["H1"]["receipts"],
        4,
        "each receipt recorded once"
    );
}

/// A token for `sub`, allowed to publish and subscribe on every channel.
fn token(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": sub,
        "exp": now + 600,
        "pere": {"publish": ["*"], "subscribe": ["*"], "admin": true},
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn a_token_acknowledges_only_for_its_own_device(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &["--jwt-secret", SECRET]).await;
    let bearer = format!("Bearer {}", token("H1"));
    let auth = ("authorization", bearer.as_str());
    let json = ("content-type", "application/json");
    for n in 1..=2 {
        let response = server
            .http
            .post(server.url("/push/T"))
            .header(auth.0, auth.1)
            .body(format!("{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let (status, _, answer) = feedback(
        &server,
        "T",
        &[auth, json],
        r#"{"device":"H2","upto":2,"status":"ok"}"#,
    )
    .await;
    check_refused(status, &answer, (403, "device_mismatch"), "H2");
    let (status, _, answer) = feedback(
        &server,
        "T",
        &[auth, NDJSON, ("device", "H2")],
        "{\"id\":1}\n",
    )
    .await;
    check_refused(status, &answer, (403, "device_mismatch"), "H2");
    // The token's own device: named, or taken from the token.
    let (status, _, answer) =
        feedback(&server, "T", &[auth, json], r#"{"upto":2,"status":"ok"}"#).await;
    assert_eq!((status, &answer["device"]), (200, &json!("H1")), "{answer}");
    let (status, _, answer) = feedback(&server, "T", &[auth, NDJSON], "{\"id\":1}\n").await;
    assert_eq!((status, &answer["device"]), (200, &json!("H1")), "{answer}");
}

/// After a restart the ledger follows nothing yet: what the device owes comes from the store,
/// with the memberships that say which events expected it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_cumulative_receipt_finds_in_the_store_what_is_owed() {
    let dir = tempfile::tempdir().expect("temporary data directory");
    let server = TestServer::start_in(dir.path(), &[]).await;
    recipients_and_events(&server, "R", &["H1"], 2).await;
    // H1 leaves and comes back: events 3 and 4 never expected it.
    let removed = server
        .http
        .delete(server.url("/devices/R/H1"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    for n in 3..=4 {
        server.push("R", &n.to_string()).await;
    }
    recipients_and_events(&server, "R", &["H1"], 2).await;
    let (status, _) = server.ack("R", "H1", 6, "ok").await;
    assert_eq!(status, 200);
    server.stop().await;

    let server = TestServer::start_in(dir.path(), &[]).await;
    let (status, answer) = upto(&server, "R", "H1", 6, "rx ok").await;
    assert_eq!(
        (status, &answer["ids"]),
        (200, &json!([1, 2, 5])),
        "{answer}"
    );
    assert!(server.pending("R", "H1").await.is_empty());
}

on_every_store!(
    a_cumulative_receipt_acknowledges_what_the_device_owes,
    a_cumulative_receipt_is_bounded_and_says_there_is_more,
    a_wait_all_push_completes_by_a_cumulative_receipt,
    a_batch_is_all_or_none_and_names_its_line,
    a_batch_with_keys_is_replayed_idempotently,
    a_token_acknowledges_only_for_its_own_device,
);
