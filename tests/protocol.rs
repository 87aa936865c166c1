//! End-to-end tests of the wire protocol against the real `pere-server` binary: publish, feed,
//! receipts, admin views, resume, bodies that try to break the framing, and bad input.

use pere_e2e::{on_every_store, StoreUnderTest, TestServer};
use serde_json::{json, Value};

async fn publish_reaches_every_subscriber_in_order_and_receipts_are_recorded(
    store: StoreUnderTest,
) {
    let server = TestServer::start_on(store, &[]).await;
    let mut h1 = server.feed("CHANNEL_1", &[("device", "H1")]).await;
    let mut w1 = server.feed_path("/feed/CHANNEL_1?device=W1", &[]).await;
    let mut anonymous = server.feed("CHANNEL_1", &[]).await;
    for i in 1..=5 {
        assert_eq!(server.push("CHANNEL_1", &format!("{{\"n\":{i}}}")).await, i);
    }
    for feed in [&mut h1, &mut w1, &mut anonymous] {
        for i in 1..=5u64 {
            let event = feed.next().await;
            assert_eq!(event.id, i.to_string());
            assert_eq!(event.data, format!("{{\"n\":{i}}}"));
        }
    }
    for i in 1..=5 {
        let (status, receipt) = server.ack("CHANNEL_1", "H1", i, "rx ok").await;
        assert_eq!(status, 200);
        assert_eq!(receipt["id"], i);
        assert_eq!(receipt["device"], "H1");
        assert_eq!(receipt["status"], "rx ok");
    }
    server.ack("CHANNEL_1", "W1", 3, "ok").await;

    let connections = server.get_json("/admin/connections").await;
    assert_eq!(connections, json!({"CHANNEL_1": 3, "total number": 3}));
    let devices = server.get_json("/admin/devices/CHANNEL_1").await;
    assert_eq!(devices["H1"]["op"], "feedback");
    assert_eq!(devices["H1"]["Last-Event-Id"], "5");
    assert_eq!(devices["H1"]["last_acked"], 5);
    assert_eq!(devices["H1"]["online"], true);
    assert_eq!(devices["W1"]["last_acked"], 3);
    assert_eq!(devices["W1"]["last_delivered"], 5);
    assert!(devices.get("anonymous").is_none() && devices.as_object().unwrap().len() == 2);

    let receipts = server.get_json("/admin/receipts/CHANNEL_1/4").await;
    assert_eq!(receipts["acknowledged"][0]["device"], "H1");
    assert_eq!(receipts["delivered"], json!(["W1"]));
    assert_eq!(receipts["pending"], json!([]));
    let events = server.get_json("/admin/events/CHANNEL_1").await;
    assert_eq!(events, json!([{"n":1},{"n":2},{"n":3},{"n":4},{"n":5}]));

    // A device that goes away is offline, and a new known device that never received shows pending.
    drop(w1);
    server
        .proc
        .wait_line(|l| l.contains(" FEED END>") && l.contains("W1"))
        .await;
    let devices = server.get_json("/admin/devices/CHANNEL_1").await;
    assert_eq!(devices["W1"]["online"], false);
    assert_eq!(devices["W1"]["op"], "feedback");
}

async fn admin_devices_keep_the_original_vocabulary_when_devices_go_offline(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    for i in 1..=3 {
        server.push("C", &format!("e{i}")).await;
    }
    // F1 resumes after 2 and acknowledges nothing; A1 acknowledges 3; R1 is only registered.
    let mut f1 = server
        .feed("C", &[("device", "F1"), ("Last-Event-ID", "2")])
        .await;
    let mut a1 = server.feed("C", &[("device", "A1")]).await;
    assert_eq!(f1.next_ids(1).await, [3]);
    assert_eq!(a1.next_ids(3).await, [1, 2, 3]);
    server.ack("C", "A1", 3, "ok").await;
    let registered = server
        .http
        .put(server.url("/devices/C/R1"))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);
    let online = server.get_json("/admin/devices/C").await;
    assert_eq!(
        (
            online["F1"]["op"].as_str(),
            online["F1"]["Last-Event-Id"].as_str()
        ),
        (Some("feed"), Some("2"))
    );
    assert_eq!(
        (
            online["A1"]["op"].as_str(),
            online["A1"]["Last-Event-Id"].as_str()
        ),
        (Some("feedback"), Some("3"))
    );
    assert_eq!(
        (
            online["F1"]["online"].as_bool(),
            online["F1"]["open_streams"].as_u64()
        ),
        (Some(true), Some(1))
    );

    drop(f1);
    drop(a1);
    server
        .proc
        .wait_lines(2, |l| l.contains(" FEED END>"))
        .await;
    let offline = server.get_json("/admin/devices/C").await;
    for (device, op, last) in [
        ("F1", "feed", Value::from("2")),
        ("A1", "feedback", Value::from("3")),
        ("R1", "feed", Value::Null),
    ] {
        let d = &offline[device];
        assert_eq!(
            (d["op"].as_str(), &d["Last-Event-Id"]),
            (Some(op), &last),
            "{device}: {d}"
        );
        assert_eq!(
            (d["online"].as_bool(), d["open_streams"].as_u64()),
            (Some(false), Some(0)),
            "{device}: {d}"
        );
        assert!(
            d["last_seen"].as_str().unwrap() >= online[device]["last_seen"].as_str().unwrap(),
            "{device}: {d}"
        );
    }
}

async fn resume_by_last_event_id_header_query_and_device_cursor(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    for i in 1..=6 {
        server.push("C", &format!("e{i}")).await;
    }
    let mut by_header = server.feed("C", &[("Last-Event-ID", "4")]).await;
    assert_eq!(by_header.next_ids(2).await, vec![5, 6]);
    let mut by_query = server.feed_path("/feed/C?lastEventId=2", &[]).await;
    assert_eq!(by_query.next_ids(4).await, vec![3, 4, 5, 6]);

    // A device known on the channel resumes after the last event it acknowledged.
    let mut first = server.feed("C", &[("device", "H7")]).await;
    assert_eq!(first.next_ids(6).await, vec![1, 2, 3, 4, 5, 6]);
    server.ack("C", "H7", 3, "rx ok").await;
    drop(first);
    let mut reloaded = server.feed_path("/feed/C?device=H7", &[]).await;
    server.push("C", "e7").await;
    assert_eq!(reloaded.next_ids(4).await, vec![4, 5, 6, 7]);

    // An id the server never gave (an original PERE timestamp) replays the retained history.
    let mut old_client = server
        .feed("C", &[("Last-Event-ID", "2014-12-01T15:01:45.025Z")])
        .await;
    assert_eq!(old_client.next_ids(1).await, vec![1]);
    // So does an id beyond the channel's history, after a notice that ids start over.
    let mut from_the_future = server.feed("C", &[("Last-Event-ID", "99")]).await;
    let reset = from_the_future.next().await;
    assert_eq!(
        (reset.event.as_str(), reset.id.as_str()),
        ("pere-reset", "")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&reset.data).unwrap(),
        json!({"last_event_id": 99, "head": 7})
    );
    assert_eq!(from_the_future.next_ids(1).await, vec![1]);
}

async fn bodies_arrive_verbatim_and_cannot_forge_events(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    let mut feed = server.feed("C", &[]).await;
    let bodies = [
        "line one\nline two\n\nline four",
        "ünïcødé ✓ 🍐 日本語",
        "x\n\nid: 999\nevent: admin\ndata: forged\n\n",
        "  leading spaces",
        "{\"json\": [1, 2, 3]}",
    ];
    for body in bodies {
        server.push("C", body).await;
    }
    for (i, body) in bodies.iter().enumerate() {
        let event = feed.next().await;
        assert_eq!(event.id, (i + 1).to_string(), "body {body:?}");
        assert_eq!(event.event, "message");
        assert_eq!(event.data, *body);
    }
    // CR and CRLF line breaks arrive as LF: all an SSE client can deliver.
    server.push("C", "a\r\nb\rc").await;
    assert_eq!(feed.next().await.data, "a\nb\nc");
    // A typed event keeps its type.
    let response = server
        .http
        .post(server.url("/push/C?event=order.created"))
        .body("typed")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let event = feed.next().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("order.created", "typed")
    );
}

async fn every_old_client_feedback_form_is_accepted(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    let id = server.push("C", "{}").await;
    let id_text = id.to_string();
    // (headers, form body, expected status)
    type Form<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let forms: [Form; 3] = [
        (
            vec![("device", "H0039000000001"), ("last_event_id", &id_text)],
            "status=rx+ok",
            "rx ok",
        ),
        (
            vec![("device", "W0039000000002"), ("Last-Event-ID", &id_text)],
            "status=ok",
            "ok",
        ),
        (
            vec![
                ("device", "H0039000000003"),
                ("last_event_id", &id_text),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "status=done%21",
            "done!",
        ),
    ];
    for (headers, body, expected) in forms {
        let mut request = server
            .http
            .post(server.url("/feedback/C"))
            .body(body.to_owned());
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let receipt: Value = response.json().await.unwrap();
        assert_eq!(receipt["status"], expected);
        assert_eq!(receipt["id"], id);
    }
    let (status, receipt) = server.ack("C", "J1", id, "processed").await;
    assert_eq!((status, receipt["device"].as_str()), (200, Some("J1")));
    let summary = server.get_json(&format!("/admin/receipts/C/{id}")).await;
    assert_eq!(summary["counts"]["acknowledged"], 4);
    server
        .proc
        .wait_line(|l| {
            l.contains(" FEEDBACK> channel: C, device: H0039000000001")
                && l.ends_with("status: rx ok")
        })
        .await;
}

/// Sends a request and returns the status and the error code of the JSON answer.
async fn error_of(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("errors are JSON");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn bad_input_gets_a_clear_answer_and_the_server_stays_up(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &["--max-body", "4096"]).await;
    let http = &server.http;
    let url = |p: &str| server.url(p);
    let id = server.push("C", "x").await;
    let cases = [
        (
            http.post(url("/push/bad%20name")).body("x"),
            400,
            "bad_channel",
        ),
        (
            http.post(url(&format!("/push/{}", "c".repeat(129))))
                .body("x"),
            400,
            "bad_channel",
        ),
        (
            http.post(url("/push/C"))
                .header("device", "bad device!")
                .body("x"),
            400,
            "bad_device",
        ),
        (
            http.post(url("/push/C?event=bad%0Atype")).body("x"),
            400,
            "bad_event_type",
        ),
        (
            http.post(url("/push/C")).body("x".repeat(5000)),
            413,
            "body_too_large",
        ),
        (
            http.post(url("/push/C")).body(vec![0xff, 0xfe, 0x00]),
            400,
            "body_not_utf8",
        ),
        (
            http.post(url("/push/C"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "invalid_json",
        ),
        (http.get(url("/feed/bad%2Fname")), 400, "bad_channel"),
        (
            http.post(url("/feedback/C"))
                .header("last_event_id", id.to_string())
                .body("status=ok"),
            400,
            "missing_device",
        ),
        (
            http.post(url("/feedback/C"))
                .header("device", "H1")
                .body("status=ok"),
            400,
            "missing_event_id",
        ),
        (
            http.post(url("/feedback/C"))
                .header("device", "H1")
                .header("last_event_id", "abc")
                .body("status=ok"),
            400,
            "bad_event_id",
        ),
        (
            http.post(url("/feedback/C"))
                .header("device", "H1")
                .header("last_event_id", "99")
                .body("status=ok"),
            404,
            "unknown_event",
        ),
        (
            http.post(url("/feedback/NEVER"))
                .header("device", "H1")
                .header("last_event_id", "1")
                .body("status=ok"),
            404,
            "unknown_event",
        ),
        (
            http.post(url("/feedback/C"))
                .header("content-type", "application/json")
                .body("[1"),
            400,
            "invalid_json",
        ),
        (
            http.post(url("/feedback/C"))
                .json(&json!({"device": "H1", "id": id, "status": "s".repeat(2000)})),
            400,
            "status_too_long",
        ),
        (http.get(url("/admin/receipts/C/99")), 404, "unknown_event"),
        (http.get(url("/admin/receipts/C/x")), 400, "bad_event_id"),
        (http.get(url("/admin/events/C?limit=-1")), 400, "bad_limit"),
        (http.get(url("/push/C")), 405, "method_not_allowed"),
        (http.get(url("/nowhere")), 404, "not_found"),
    ];
    for (request, status, code) in cases {
        let description = format!("{request:?}");
        assert_eq!(
            error_of(request).await,
            (status, code.to_owned()),
            "{description}"
        );
    }
    // Still up and still right.
    assert_eq!(server.push("C", "still here").await, id + 1);
}

async fn feed_headers_root_banner_page_and_cors(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &["--allow-origin", "https://app.example"]).await;
    let response = server.http.get(server.url("/feed/C")).send().await.unwrap();
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    drop(response);

    let banner = server.get_json("/").await;
    assert_eq!(banner, json!({"message": "PERE server up and running"}));
    let page = server
        .http
        .get(server.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(
        page.headers()["vary"],
        "Accept",
        "the page and the banner share a URL"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("from '/pere.js'"),
        "the page is built on pere.js"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads nothing from elsewhere"
    );
    let page = server.get_text("/subscriber.html").await;
    assert_eq!(page, html);

    // pere.js: public, a module, revalidated with its ETag.
    let script = server
        .http
        .get(server.url("/pere.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(script.headers()["cache-control"], "no-cache");
    let etag = script.headers()["etag"].clone();
    let source = script.text().await.unwrap();
    assert!(
        source.contains("new this.EventSource(")
            && source.contains("/feedback/")
            && source.contains("export function subscribe")
    );
    let cached = server
        .http
        .get(server.url("/pere.js"))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    assert_eq!(cached.headers()["etag"], etag);
    assert!(cached.text().await.unwrap().is_empty());

    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/feedback/C"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "device, last-event-id")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("device") && allowed.contains("last-event-id"));
    let foreign = server
        .http
        .get(server.url("/"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(foreign
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

/// Pushes `body` on `channel` with these headers; the status, headers and JSON answer.
async fn push_with(
    server: &TestServer,
    channel: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = server
        .http
        .post(server.url(&format!("/push/{channel}")))
        .body(body.to_owned());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("push");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn a_repeated_idempotency_key_answers_as_the_first_time_and_stores_nothing(
    store: StoreUnderTest,
) {
    let server = TestServer::start_on(store, &[]).await;
    let mut feed = server.feed("C", &[("device", "H1")]).await;
    let key = [("idempotency-key", "order-42"), ("event", "order")];
    let (status, headers, first) = push_with(&server, "C", &key, "{\"n\":1}").await;
    assert_eq!(status, 200);
    assert!(headers.get("idempotent-replayed").is_none());
    let (status, headers, again) = push_with(&server, "C", &key, "{\"n\":1}").await;
    assert_eq!(status, 200);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again, first, "the same id and time as the first answer");
    // Another key, and no key at all, are new events.
    let (_, _, other) = push_with(
        &server,
        "C",
        &[("idempotency-key", "order-43")],
        "{\"n\":1}",
    )
    .await;
    assert_eq!(other["id"], 2);
    assert_eq!(server.push("C", "plain").await, 3);

    let events = server.get_json("/events/C").await;
    let ids: Vec<u64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3], "the replay stored nothing: {events}");
    // Delivered once: the feed's next events are 1, 2 and 3, with no copy of 1 between.
    assert_eq!(feed.next_ids(3).await, [1, 2, 3]);

    // The same key with another body, or another type, is a conflict; the first event stands.
    let (status, _, conflict) = push_with(&server, "C", &key, "{\"n\":2}").await;
    assert_eq!(status, 409);
    assert_eq!(conflict["error"]["code"], "idempotency_conflict");
    let (status, _, _) = push_with(
        &server,
        "C",
        &[("idempotency-key", "order-42")],
        "{\"n\":1}",
    )
    .await;
    assert_eq!(status, 409, "same body, no type");
    // Keys are per channel.
    let (status, headers, elsewhere) = push_with(&server, "D", &key, "{\"n\":1}").await;
    assert_eq!((status, elsewhere["id"].as_u64()), (200, Some(1)));
    assert!(headers.get("idempotent-replayed").is_none());

    // Keys are 1 to 255 visible ASCII characters.
    for bad in ["", "with space", &"k".repeat(256), "caf\u{e9}"] {
        let mut request = server.http.post(server.url("/push/C")).body("x");
        request = request.header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
        );
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "key {bad:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_idempotency_key");
    }
    let (status, _, _) =
        push_with(&server, "C", &[("idempotency-key", &"k".repeat(255))], "x").await;
    assert_eq!(status, 200);
    assert_eq!(
        server.get_json("/events/C").await["head"],
        4,
        "refused pushes stored nothing"
    );
}

on_every_store!(
    health_and_readiness_answer,
    publish_reaches_every_subscriber_in_order_and_receipts_are_recorded,
    a_repeated_idempotency_key_answers_as_the_first_time_and_stores_nothing,
    admin_devices_keep_the_original_vocabulary_when_devices_go_offline,
    resume_by_last_event_id_header_query_and_device_cursor,
    bodies_arrive_verbatim_and_cannot_forge_events,
    every_old_client_feedback_form_is_accepted,
    bad_input_gets_a_clear_answer_and_the_server_stays_up,
    feed_headers_root_banner_page_and_cors,
);

/// Reads from a raw connection until the server closes it.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    tokio::time::timeout(pere_e2e::WAIT, stream.read_to_end(&mut all))
        .await
        .expect("closed in time")
        .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

/// Reads one answer with a `Content-Length` body from a kept-alive connection: its status line
/// and body.
async fn read_one_answer(stream: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let head_end = loop {
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(pere_e2e::WAIT, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no length: {head}"));
    let mut body = seen[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed in a body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), length, "nothing was sent beyond the answer");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A kept-alive connection is served request after request, with the client pausing between
/// them (the server then holds only the socket): heads split across pauses, a body the server
/// refused before reading it and that arrives after the answer, receipts, and a feed last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_is_served_across_pauses_whatever_comes_next() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(&["-q"]).await;
    let mut conn = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    let push = b"POST /push/Kept HTTP/1.1\r\nHost: localhost\r\ndevice: P1\r\nContent-Length: 3\r\n\r\none";
    conn.write_all(push).await.unwrap();
    let (status, body) = read_one_answer(&mut conn).await;
    assert!(status.contains(" 200 "), "{status} {body}");

    // The next head in two pieces, the second after the first was surely read.
    conn.write_all(b"POST /feedback/Kept HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let health = server.http.get(server.url("/health")).send().await.unwrap();
    assert!(health.status().is_success());
    conn.write_all(
        b"alhost\r\ndevice: H1\r\nlast_event_id: 1\r\nContent-Length: 12\r\n\r\nstatus=rx+ok",
    )
    .await
    .unwrap();
    let (status, body) = read_one_answer(&mut conn).await;
    assert!(status.contains(" 200 "), "{status} {body}");
    assert!(body.contains("\"rx ok\""), "{body}");

    // Refused at its head (a bad channel name), its body unread by the handler: the body is
    // skipped, and the request after it is read as one.
    conn.write_all(
        b"POST /push/bad%20name HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let (status, body) = read_one_answer(&mut conn).await;
    assert!(status.contains(" 400 "), "{status} {body}");
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_one_answer(&mut conn).await;
    assert!(status.contains(" 200 "), "{status} {body}");

    // Receipts one after another, each after the last answer.
    for id in 2..=4 {
        server.push("Kept", "more").await;
        let receipt = format!("POST /feedback/Kept HTTP/1.1\r\nHost: localhost\r\ndevice: H1\r\nlast_event_id: {id}\r\nContent-Length: 9\r\n\r\nstatus=ok");
        conn.write_all(receipt.as_bytes()).await.unwrap();
        let (status, body) = read_one_answer(&mut conn).await;
        let receipt: Value = serde_json::from_str(&body).unwrap();
        assert!(
            status.contains(" 200 ") && receipt["id"] == id,
            "{status} {body}"
        );
    }
    let devices = server.get_json("/admin/devices/Kept").await;
    assert_eq!(devices["H1"]["last_acked"], 4, "{devices}");

    // Last, a feed on the same connection: it hears the channel from the start.
    conn.write_all(b"GET /feed/Kept HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: 0\r\n\r\n")
        .await
        .unwrap();
    let text = pere_e2e::read_until(&mut conn, |s| s.contains("id: 4\n")).await;
    assert!(
        text.contains("text/event-stream") && text.contains("data: one"),
        "{text}"
    );

    // Refused at its head with its body not sent yet: the server may give up on the body and
    // close, or skip it when it comes; it never reads the body as the start of a request.
    let mut late = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    late.write_all(
        b"POST /push/bad%20name HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, body) = read_one_answer(&mut late).await;
    assert!(status.contains(" 400 "), "{status} {body}");
    let sent = late
        .write_all(b"helloGET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let after = pere_e2e::read_until(&mut late, |s| s.contains("\r\n\r\n")).await;
    assert!(
        after.is_empty() || after.starts_with("HTTP/1.1 200 "),
        "{sent:?}: {after}"
    );
}

/// The answers on one connection, read one after the other (the server may send several in one
/// write when the client sent their requests back to back).
struct Answers {
    conn: tokio::net::TcpStream,
    seen: Vec<u8>,
}

impl Answers {
    /// A new connection to `server`, nothing read yet.
    async fn connect(server: &TestServer) -> Self {
        let conn = tokio::net::TcpStream::connect(server.host_port())
            .await
            .unwrap();
        Answers {
            conn,
            seen: Vec::new(),
        }
    }

    /// The next answer's head (lowercased) and body.
    async fn next(&mut self) -> (String, String) {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(at) = self.seen.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.seen[..at + 4]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or_else(|| panic!("no length: {head}"));
                if self.seen.len() >= at + 4 + length {
                    let body = String::from_utf8_lossy(&self.seen[at + 4..at + 4 + length]);
                    let body = body.into_owned();
                    self.seen.drain(..at + 4 + length);
                    return (head, body);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(pere_e2e::WAIT, self.conn.read(&mut chunk))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&self.seen));
            self.seen.extend_from_slice(&chunk[..n]);
        }
    }

    /// The answer (`head`) said the connection ends, and it did.
    async fn closed(&mut self, head: &str) {
        use tokio::io::AsyncReadExt;
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        let mut after = [0u8; 64];
        let closed = tokio::time::timeout(pere_e2e::WAIT, self.conn.read(&mut after))
            .await
            .expect("closed in time");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.conn.write_all(bytes).await.unwrap();
    }
}

/// A receipt whose head the server read before it was told to stop is read to its end and
/// answered, on a connection that then closes; the server still exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_begun_before_a_shutdown_is_answered() {
    let mut server = TestServer::start(&[]).await;
    server.push("Stopping", "e1").await;
    let mut answers = Answers::connect(&server).await;
    let body = "status=done";
    let receipt = format!(
        "POST /feedback/Stopping HTTP/1.1\r\nHost: localhost\r\ndevice: S1\r\nlast_event_id: 1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (head_part, body_part) = receipt.split_at(receipt.len() - 4);
    answers.send(head_part.as_bytes()).await;
    // Its head surely read, as in the test below: the server answered another request since.
    let health = server.http.get(server.url("/health")).send().await.unwrap();
    assert!(health.status().is_success());
    server.terminate();
    server.proc.wait_line(|l| l.contains("shutting down")).await;
    answers.send(body_part.as_bytes()).await;
    let (head, body) = answers.next().await;
    assert!(
        head.starts_with("http/1.1 200 ") && head.contains("\r\nconnection: close\r\n"),
        "{head}{body}"
    );
    let acknowledged: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(
        (&acknowledged["id"], &acknowledged["status"]),
        (&json!(1), &json!("done"))
    );
    assert_eq!(server.proc.wait_exit().await, 0);
}

/// Receipts on a plain connection are answered whatever their framing: sent back to back, split
/// between head and body, chunked, over the body limit, refused at the door with their body, or
/// asking to close; each answer complete (its length and date) and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_answered_in_order_whatever_their_framing() {
    let server = TestServer::start(&["-q", "--max-body", "200"]).await;
    for n in 1..=6 {
        server.push("Framed", &format!("e{n}")).await;
    }
    let mut answers = Answers::connect(&server).await;
    let receipt = |id: u64, status: &str| {
        let body = format!("status={status}");
        format!(
            "POST /feedback/Framed HTTP/1.1\r\nHost: localhost\r\ndevice: F1\r\nlast_event_id: {id}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let acknowledged = |head: &str, body: &str, id: u64| {
        let receipt: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{head}{body}"));
        assert!(
            head.starts_with("http/1.1 200 ") && head.contains("\r\ndate: ") && receipt["id"] == id,
            "{head}{body}"
        );
    };

    // Three receipts and a health check in one write: four answers, in order.
    let pipelined = [receipt(1, "a"), receipt(2, "b"), receipt(3, "c")].concat()
        + "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    answers.send(pipelined.as_bytes()).await;
    for id in 1..=3 {
        let (head, body) = answers.next().await;
        acknowledged(&head, &body, id);
    }
    let (head, body) = answers.next().await;
    assert!(
        head.starts_with("http/1.1 200 ") && body.contains("ok"),
        "{head}{body}"
    );

    // Its head first, its body once the head was surely read.
    let split = receipt(4, "d");
    let (head_part, body_part) = split.split_at(split.len() - 4);
    answers.send(head_part.as_bytes()).await;
    let health = server.http.get(server.url("/health")).send().await.unwrap();
    assert!(health.status().is_success());
    answers.send(body_part.as_bytes()).await;
    let (head, body) = answers.next().await;
    acknowledged(&head, &body, 4);

    // Chunked, then a cumulative one in JSON right behind it.
    let cumulative = r#"{"device":"F1","upto":6,"status":"all"}"#;
    let chunked = format!(
        "POST /feedback/Framed HTTP/1.1\r\nHost: localhost\r\ndevice: F1\r\nlast_event_id: 5\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nstatus=e\r\n0\r\n\r\n\
         POST /feedback/Framed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{cumulative}",
        cumulative.len()
    );
    answers.send(chunked.as_bytes()).await;
    let (head, body) = answers.next().await;
    acknowledged(&head, &body, 5);
    let (head, body) = answers.next().await;
    assert!(head.starts_with("http/1.1 200 "), "{head}{body}");
    let upto: Value = serde_json::from_str(&body).unwrap();
    // F1 never held a feed, so no event waits for its receipt: nothing owed, nothing taken.
    assert_eq!(
        (&upto["upto"], &upto["acknowledged"]),
        (&json!(6), &json!(0)),
        "{body}"
    );

    // Refused at the door with its body: the request after it is read as one.
    answers
        .send(b"POST /feedback/bad%20name HTTP/1.1\r\nHost: localhost\r\ndevice: F1\r\nContent-Length: 11\r\n\r\nstatus=lost")
        .await;
    let (head, body) = answers.next().await;
    assert!(head.starts_with("http/1.1 400 "), "{head}{body}");
    answers.send(receipt(6, "again").as_bytes()).await;
    let (head, body) = answers.next().await;
    acknowledged(&head, &body, 6);

    // Asked to close: the answer says so, and the connection ends after it.
    let closing = receipt(1, "z").replace(
        "Host: localhost\r\n",
        "Host: localhost\r\nConnection: close\r\n",
    );
    answers.send(closing.as_bytes()).await;
    let (head, body) = answers.next().await;
    acknowledged(&head, &body, 1);
    answers.closed(&head).await;

    // Over the body limit: refused, and the connection ends after the answer.
    let mut answers = Answers::connect(&server).await;
    let large = format!(
        "POST /feedback/Framed HTTP/1.1\r\nHost: localhost\r\ndevice: F1\r\nContent-Length: 300\r\n\r\n{}",
        "x".repeat(300)
    );
    answers.send(large.as_bytes()).await;
    let (head, body) = answers.next().await;
    assert!(
        head.starts_with("http/1.1 413 ") && body.contains("body_too_large"),
        "{head}{body}"
    );
    answers.closed(&head).await;

    let devices = server.get_json("/admin/devices/Framed").await;
    assert_eq!(devices["F1"]["last_acked"], 6, "{devices}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_work_on_a_dedicated_connection_and_after_other_requests_on_the_same_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&["--allow-origin", "https://app.example"]).await;
    server.push("Raw", "one").await;

    // A connection that opens with a feed request.
    let mut dedicated = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    dedicated
        .write_all(b"GET /feed/Raw HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example\r\ndevice: R1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: one\n\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(pere_e2e::WAIT, dedicated.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("content-type: text/event-stream"));
    assert!(text.contains("access-control-allow-origin: https://app.example"));
    // The retry hint opens the first event's block: no block without data (see tests/interop.rs).
    assert!(
        text.contains("\r\n\r\nretry: 3000\nid: 1\ndata: one\n\n"),
        "{text}"
    );

    // A bad feed request on such a connection gets the JSON error, then the connection closes.
    let mut bad = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    bad.write_all(b"GET /feed/bad%20name HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut bad).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\"code\": \"bad_channel\""), "{answer}");

    // A feed after another request on a keep-alive connection is served too.
    let mut reused = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    reused
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\nGET /feed/Raw HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: one") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(pere_e2e::WAIT, reused.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("\"status\": \"ok\""), "{text}");
    assert!(text.contains("text/event-stream"), "{text}");
    // The same opening through hyper (chunked): the retry hint, no blank line, then the event.
    assert!(
        text.contains("retry: 3000\n\r\n") && !text.contains("retry: 3000\n\n"),
        "{text}"
    );

    // Connections that close before a complete request cost nothing and break nothing.
    drop(
        tokio::net::TcpStream::connect(server.host_port())
            .await
            .unwrap(),
    );
    let mut half = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    half.write_all(b"GET /feed/Raw HTT").await.unwrap();
    drop(half);
    assert_eq!(server.push("Raw", "two").await, 2);
}

/// Opens `request` on a new plain connection and reads until `until` shows up.
async fn raw_stream(server: &TestServer, request: &str, until: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    pere_e2e::read_until(&mut conn, |s| s.contains(until)).await
}

#[tokio::test]
async fn receipt_and_presence_streams_are_served_like_dedicated_feeds_and_resume() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(&["--allow-origin", "https://app.example"]).await;
    let _online = server.feed("Rs", &[("device", "H1")]).await;
    for id in 1..=2 {
        server.push("Rs", "one").await;
        assert_eq!(server.ack("Rs", "H1", id, "ok").await.0, 200);
    }

    // A receipt stream on a connection of its own: written by the stream loop, so not chunked,
    // and the connection is the answer's end.
    let mut dedicated = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    dedicated
        .write_all(b"GET /receipts/Rs HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example\r\nLast-Event-ID: 0\r\n\r\n")
        .await
        .unwrap();
    let text = pere_e2e::read_until(&mut dedicated, |s| s.contains("id: 2\n")).await;
    let lower = text.to_lowercase();
    assert!(lower.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(lower.contains("content-type: text/event-stream"), "{text}");
    assert!(lower.contains("access-control-allow-origin: https://app.example"));
    assert!(lower.contains("connection: close") && !lower.contains("chunked"));
    assert!(
        text.contains("\r\n\r\nretry: 3000\nid: 1\nevent: receipt\n"),
        "{text}"
    );
    // Live receipts follow on the same stream.
    server.push("Rs", "three").await;
    assert_eq!(server.ack("Rs", "H1", 3, "ok").await.0, 200);
    let live = pere_e2e::read_until(&mut dedicated, |s| s.contains("id: 3\n")).await;
    assert!(live.contains("id: 3\nevent: receipt\n"), "{live}");

    // Resumed after the second receipt: the third comes first.
    let resumed = raw_stream(
        &server,
        "GET /receipts/Rs HTTP/1.1\r\nHost: localhost\r\nLast-Event-ID: 2\r\n\r\n",
        "id: 3\n",
    )
    .await;
    assert!(
        resumed.contains("retry: 3000\nid: 3\nevent: receipt\n"),
        "{resumed}"
    );

    // After another request on a kept-alive connection (by hyper, when it follows at once in
    // the same spell; by the loop after a pause): the same stream, resumed from the query.
    let mut reused = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    reused
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_one_answer(&mut reused).await;
    assert!(status.contains(" 200 "), "{status}");
    reused
        .write_all(b"GET /receipts/Rs?lastEventId=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let text = pere_e2e::read_until(&mut reused, |s| s.contains("id: 3\n")).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("retry: 3000\n"), "{text}");
    assert!(text.contains("id: 2\nevent: receipt\n"), "{text}");
    assert!(!text.contains("id: 1\n"), "{text}");

    // Presence the same way: H1 came online when its feed opened.
    let presence = raw_stream(
        &server,
        "GET /presence/Rs HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "event: presence\n",
    )
    .await;
    assert!(!presence.to_lowercase().contains("chunked"), "{presence}");
    assert!(presence.contains("\r\n\r\nretry: 3000\nid: "), "{presence}");
    assert!(presence.contains("\"device\":\"H1\""), "{presence}");

    // A bad channel gets the JSON error, then the connection closes.
    let mut bad = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    bad.write_all(b"GET /receipts/bad%20name HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut bad).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\"code\": \"bad_channel\""), "{answer}");
}

/// Sends `requests` on one new connection and reads until `until` shows up in what comes back.
async fn exchange(server: &TestServer, requests: &str, until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    stream.write_all(requests.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(until) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(pere_e2e::WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before {until:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_on_either_kind_of_connection_pass_the_same_door() {
    let server = TestServer::start(&["--log-level", "debug"]).await;
    server.push("Door", "one").await;
    let health = "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let feed = |device: &str| {
        format!("GET /feed/Door HTTP/1.1\r\nHost: localhost\r\ndevice: {device}\r\n\r\n")
    };

    // Let in: a feed that opens its connection, and one after another request on a kept-alive one.
    exchange(&server, &feed("First1"), "data: one").await;
    exchange(&server, &format!("{health}{}", feed("Later1")), "data: one").await;
    for device in ["First1", "Later1"] {
        let request = format!(" REQUEST> GET /feed/Door, device: {device}");
        server.proc.wait_line(|l| l.contains(&request)).await;
        server
            .proc
            .wait_line(|l| l.contains(" FEED REQ> ") && l.contains(&format!("device: {device},")))
            .await;
    }

    // Refused: the same bad device on both kinds of connection, with the same answer and line.
    let first = exchange(&server, &feed("bad/first"), "bad_device").await;
    let later = exchange(
        &server,
        &format!("{health}{}", feed("bad/later")),
        "bad_device",
    )
    .await;
    assert!(first.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{first}");
    let later_answer = &later[later.rfind("HTTP/1.1 ").unwrap()..];
    assert!(
        later_answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{later}"
    );
    let refusals = server
        .proc
        .wait_lines(2, |l| {
            l.contains(" REFUSED> GET /feed/Door: 400 bad_device")
        })
        .await;
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    // Every line starts with its time.
    for line in server.proc.lines().iter().skip(1) {
        assert!(chrono_like(line), "{line}");
    }
}

/// Whether a log line starts with an ISO-8601 UTC time with milliseconds.
fn chrono_like(line: &str) -> bool {
    let stamp = line.split(' ').next().unwrap_or_default();
    stamp.len() == 24
        && stamp.ends_with('Z')
        && stamp.as_bytes()[10] == b'T'
        && stamp[..4].parse::<u32>().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_with_ids_and_times_and_one_shape_everywhere() {
    let server = TestServer::start(&[]).await;
    for body in [r#"{"n":1}"#, "plain text", r#"{"n":3}"#] {
        server.push("List", body).await;
    }
    let page = server.get_json("/events/List?after=1&limit=1").await;
    assert_eq!(page["channel"], "List");
    assert_eq!(page["head"], 3);
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], 2);
    assert_eq!(
        events[0]["data"], "plain text",
        "a body that is not JSON is a string"
    );
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z'));
    let all = server.get_json("/events/List").await;
    assert_eq!(
        all["events"][0]["data"],
        json!({"n": 1}),
        "a JSON body is JSON"
    );
    // The same event looks the same in the one-event view, and the original view stays a list.
    let one = server.get_json("/events/List/1").await;
    for key in ["channel", "id", "time", "data"] {
        assert_eq!(one[key], all["events"][0][key], "{key}");
    }
    assert_eq!(
        server.get_json("/admin/events/List").await,
        json!([{"n": 1}, "plain text", {"n": 3}])
    );
    assert_eq!(
        server
            .http
            .get(server.url("/events/List?after=x"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_shows_each_push_before_any_receipt_for_it() {
    let server = TestServer::start(&[]).await;
    let mut feed = server.feed("Order", &[("device", "Fast1")]).await;
    let publisher = {
        let server_url = server.url("/push/Order");
        let http = server.http.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                http.post(&server_url)
                    .body(format!("{{\"n\":{i}}}"))
                    .send()
                    .await
                    .unwrap();
            }
        })
    };
    // Each event is acknowledged the moment it arrives, racing the push's own answer.
    for _ in 0..40 {
        let event = feed.next().await;
        let id: u64 = event.id.parse().unwrap();
        assert_eq!(server.ack("Order", "Fast1", id, "ok").await.0, 200);
    }
    publisher.await.unwrap();
    let feedback = server
        .proc
        .wait_lines(40, |l| l.contains(" FEEDBACK> channel: Order"))
        .await;
    assert_eq!(feedback.len(), 40);
    let lines = server.proc.lines();
    for id in 1..=40 {
        let push = lines.iter().position(|l| {
            l.contains(" PUSH EVT> channel: Order") && l.contains(&format!("Event-Id: {id},"))
        });
        let ack = lines.iter().position(|l| {
            l.contains(" FEEDBACK> channel: Order") && l.contains(&format!("Last-Event-Id: {id},"))
        });
        assert!(
            push.unwrap() < ack.unwrap(),
            "event {id}: push line {push:?}, receipt line {ack:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_tag_and_the_facts() {
    let server = TestServer::start(&["--log-format", "json"]).await;
    let id = server.push("Json", "hello").await;
    let line = server.proc.wait_line(|l| l.contains("PUSH EVT>")).await;
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["tag"], "PUSH EVT>");
    assert_eq!(entry["channel"], "Json");
    assert_eq!(entry["id"], id);
    assert_eq!(entry["level"], "INFO");
    assert!(entry["timestamp"].is_string(), "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_device_views_come_in_pages_that_link_to_the_next() {
    let server = TestServer::start(&[]).await;
    for device in ["E", "A", "C", "B", "D"] {
        let put = server
            .http
            .put(server.url(&format!("/devices/Paged/{device}")))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
    }
    let mut path = "/admin/devices/Paged?limit=2".to_owned();
    let mut seen = Vec::new();
    loop {
        let response = server.http.get(server.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let next = response
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let page: Value = response.json().await.unwrap();
        let ids: Vec<String> = page.as_object().unwrap().keys().cloned().collect();
        assert!(ids.len() <= 2, "{ids:?}");
        seen.extend(ids);
        let Some(next) = next else { break };
        assert!(next.ends_with("; rel=\"next\""), "{next}");
        path = next[1..next.find('>').unwrap()].to_owned();
    }
    assert_eq!(seen, ["A", "B", "C", "D", "E"]);
    // The first page of the original endpoint keeps the original shape: devices by id.
    assert_eq!(
        server.get_json("/admin/devices/Paged").await["C"]["recipient"],
        true
    );
}

async fn health_and_readiness_answer(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    assert_eq!(server.get_json("/healthz").await, json!({"status": "ok"}));
    assert_eq!(server.get_json("/readyz").await, json!({"status": "ready"}));
    assert_eq!(
        server.get_json("/health").await,
        json!({"status": "ok"}),
        "the original's check stays"
    );
}

/// Receipt and presence streams on the dedicated loop get keep-alive comments too (their own
/// timer: the hub's keep-alives are for feeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_receipt_and_presence_streams_get_keep_alive_comments() {
    let server = TestServer::start(&["--keep-alive", "1"]).await;
    for path in ["/receipts/Quiet", "/presence/Quiet"] {
        let mut stream = server.raw_get(path).await;
        let seen = pere_e2e::read_until(&mut stream, |s| s.contains(": keep-alive\n")).await;
        assert!(seen.starts_with("HTTP/1.1 200"), "{path}: {seen}");
        assert!(seen.contains(": keep-alive\n"), "{path}: {seen}");
    }
}

/// A feed that carries nothing gets a keep-alive comment every `--keep-alive` seconds, whether
/// or not an event went out on it before (writes push the comment back; they do not stop it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_feed_gets_keep_alive_comments_before_and_after_events() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start(&["--keep-alive", "1"]).await;
    let mut feed = tokio::net::TcpStream::connect(server.host_port())
        .await
        .unwrap();
    feed.write_all(b"GET /feed/Quiet?device=K1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let opening = pere_e2e::read_until(&mut feed, |s| s.contains(": keep-alive\n")).await;
    assert!(opening.contains(": keep-alive\n"), "{opening}");

    server.push("Quiet", "{\"n\":1}").await;
    let after = pere_e2e::read_until(&mut feed, |s| {
        s.split_once("data: {\"n\":1}\n\n")
            .is_some_and(|(_, rest)| rest.contains(": keep-alive\n"))
    })
    .await;
    let (_, rest) = after
        .split_once("data: {\"n\":1}\n\n")
        .unwrap_or_else(|| panic!("no event: {after}"));
    assert!(rest.contains(": keep-alive\n"), "{after}");
    // One comment per quiet interval, not a stream of them.
    assert!(rest.matches(": keep-alive").count() <= 2, "{after}");
}
