//! `pere-pub` against a scripted server: the original events and lines, retrying the same event,
//! giving up, refusals, stdin and `--json`, and `--follow`.

use pere_e2e::scripted::{FakeServer, Tool};

const EXE: &str = env!("CARGO_BIN_EXE_pere-pub");
const DOWN: &str = r#"{"error":{"code":"store_unavailable","message":"down"}}"#;

fn accepted(id: u64) -> String {
    format!(r#"{{"channel":"C","id":{id},"time":"2024-01-01T00:00:00.000Z"}}"#)
}

#[tokio::test]
async fn publishes_the_original_events() {
    let mut server = FakeServer::start().await;
    let host = server.host_port();
    let mut publisher = Tool::start(
        EXE,
        &[&host, "C", "P1", "--count", "2", "--interval", "0"],
        None,
    );
    assert_eq!(
        publisher.line().await,
        format!("PUBLISH (device: P1), channel: C, server: {host}")
    );
    assert_eq!(publisher.line().await, "");
    let mut keys = Vec::new();
    for id in 1..=2u64 {
        let push = server.expect("POST", "/push/C").await;
        assert_eq!(push.request.header("device"), Some("P1"));
        keys.extend(push.request.header("idempotency-key").map(str::to_owned));
        assert_eq!(
            push.request.header("content-type"),
            Some("application/json")
        );
        assert_eq!(push.request.header("event"), None);
        let body = push.request.body.clone();
        let prefix = format!(r#"{{"channel":"C","device":"P1","pub_id":{id},"time":""#);
        assert!(body.starts_with(&prefix), "{body}");
        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
        let data = event["data"].as_str().unwrap();
        assert!(
            (15..=32).contains(&data.len())
                && data
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
        push.json(200, &accepted(id));
        assert_eq!(
            publisher.line().await,
            format!("PUSH EVT> event: {body}, Event-Id: {id}")
        );
    }
    assert!(
        keys.len() == 2 && keys[0] != keys[1],
        "a fresh key per event: {keys:?}"
    );
    let (code, rest, stderr) = publisher.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert!(rest.is_empty() && stderr.is_empty(), "{rest:?} {stderr}");
}

#[tokio::test]
async fn a_failed_push_is_retried_with_the_same_event() {
    let mut server = FakeServer::start().await;
    let args = [
        &server.host_port(),
        "C",
        "P1",
        "--count",
        "1",
        "--retry-delay",
        "0",
        "-q",
    ];
    let publisher = Tool::start(EXE, &args, None);
    let first = server.expect("POST", "/push/C").await;
    let body = first.request.body.clone();
    let key = first
        .request
        .header("idempotency-key")
        .expect("an idempotency key")
        .to_owned();
    assert!(
        key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    first.json(503, DOWN);
    let second = server.expect("POST", "/push/C").await;
    assert_eq!(second.request.body, body, "the same event, not a new one");
    assert_eq!(
        second.request.header("idempotency-key"),
        Some(key.as_str()),
        "the same key: never stored twice"
    );
    second.json(200, &accepted(1));
    let (code, rest, stderr) = publisher.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert!(rest.is_empty(), "--quiet: {rest:?}");
    assert_eq!(
        stderr,
        format!("PUSH FAILED. event: {body} reason: HTTP 503 store_unavailable: down\n")
    );
}

#[tokio::test]
async fn gives_up_after_retries() {
    let mut server = FakeServer::start().await;
    let args = [
        &server.host_port(),
        "C",
        "--retries",
        "2",
        "--retry-delay",
        "0",
        "-q",
    ];
    let publisher = Tool::start(EXE, &args, None);
    server.expect("POST", "/push/C").await.json(503, DOWN);
    server.expect("POST", "/push/C").await.json(500, "oops");
    let (code, _, stderr) = publisher.finish().await;
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with("PUSH FAILED. event: {")
            && lines[0].ends_with(" reason: HTTP 503 store_unavailable: down")
    );
    assert!(
        lines[1].ends_with(" reason: HTTP 500 Internal Server Error: oops"),
        "{stderr}"
    );
    assert_eq!(
        lines[2],
        "pere-pub: giving up on event 1 after 2 failed attempts: HTTP 500 Internal Server Error: oops"
    );
}

#[tokio::test]
async fn a_refused_event_is_fatal() {
    let mut server = FakeServer::start().await;
    let publisher = Tool::start(EXE, &[&server.host_port(), "C", "--data", "x", "-q"], None);
    server.expect("POST", "/push/C").await.json(
        413,
        r#"{"error":{"code":"body_too_large","message":"too big"}}"#,
    );
    let (code, _, stderr) = publisher.finish().await;
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "PUSH FAILED. event: x reason: HTTP 413 body_too_large: too big\n\
         pere-pub: the server refused event 1: HTTP 413 body_too_large: too big\n"
    );
}

#[tokio::test]
async fn bad_names_fail_in_one_line_before_anything_starts() {
    // A server that would accept anything: nothing must reach it.
    let server = FakeServer::start().await;
    let host = server.host_port();
    for (args, what) in [
        (
            vec![host.as_str(), "a/b", "P1"],
            r#"invalid channel "a/b": "#,
        ),
        (
            vec![host.as_str(), "C", "P 1"],
            r#"invalid device id "P 1": "#,
        ),
        (
            vec![host.as_str(), "C", "P1", "--event", "a b"],
            r#"invalid event type "a b": "#,
        ),
    ] {
        let (code, stdout, stderr) = Tool::start(EXE, &args, None).finish().await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "nothing starts: {stdout:?}");
        assert!(
            stderr.starts_with(&format!("pere-pub: {what}")) && stderr.lines().count() == 1,
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn stdin_lines_and_json_output() {
    let mut server = FakeServer::start().await;
    let args = [
        &server.host_port(),
        "C",
        "P1",
        "--data",
        "-",
        "--event",
        "tick",
        "--json",
    ];
    let mut publisher = Tool::start(EXE, &args, Some("hello world\n{\"a\":1}\n"));
    let push = server.expect("POST", "/push/C").await;
    assert_eq!(push.request.body, "hello world");
    assert_eq!(
        push.request.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(push.request.header("event"), Some("tick"));
    push.json(200, &accepted(7));
    assert_eq!(
        publisher.line().await,
        r#"{"channel":"C","id":7,"time":"2024-01-01T00:00:00.000Z","body":"hello world"}"#
    );
    let push = server.expect("POST", "/push/C").await;
    assert_eq!(push.request.body, r#"{"a":1}"#);
    assert_eq!(
        push.request.header("content-type"),
        Some("application/json")
    );
    push.json(200, &accepted(8));
    assert_eq!(
        publisher.line().await,
        r#"{"channel":"C","id":8,"time":"2024-01-01T00:00:00.000Z","body":"{\"a\":1}"}"#
    );
    // End of stdin ends the run.
    let (code, rest, stderr) = publisher.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn follow_prints_receipts() {
    let mut server = FakeServer::start().await;
    let args = [
        &server.host_port(),
        "C",
        "P1",
        "--count",
        "1",
        "--follow",
        "-q",
    ];
    let mut publisher = Tool::start(EXE, &args, None);
    // The receipt stream opens first, so no receipt of the first event can be missed.
    let follow = server.expect("GET", "/receipts/C").await;
    assert_eq!(follow.request.header("accept"), Some("text/event-stream"));
    let stream = follow.stream();
    server
        .expect("POST", "/push/C")
        .await
        .json(200, &accepted(1));
    stream.send(": keep-alive\n\nid: 1\nevent: receipt\ndata: {\"channel\":\"C\",\"id\":1,\"device\":\"H1\",\"status\":\"rx ok\",\"time\":\"2024-01-01T00:00:00.000Z\"}\n\n");
    // Only receipts are shown, not the other notices of the stream.
    stream.send("id: 1\nevent: complete\ndata: {\"channel\":\"C\",\"id\":1,\"expected\":1}\n\n");
    stream.send("id: 2\nevent: receipt\ndata: {\"channel\":\"C\",\"id\":1,\"device\":\"H2\",\"status\":\"done\",\"time\":\"2024-01-01T00:00:00.000Z\"}\n\n");
    assert_eq!(
        publisher.line().await,
        "RECEIPT> id: 1, device: H1, status: rx ok"
    );
    assert_eq!(
        publisher.line().await,
        "RECEIPT> id: 1, device: H2, status: done"
    );
    // Following goes on after publishing, and resumes after a drop (after 3 s) from the last
    // receipt seen.
    drop(stream);
    let follow = server.expect("GET", "/receipts/C").await;
    assert_eq!(follow.request.header("last-event-id"), Some("2"));
    let stream = follow.stream();
    stream.send("id: 3\nevent: receipt\ndata: {\"channel\":\"C\",\"id\":2,\"device\":\"H1\",\"status\":\"rx ok\",\"time\":\"2024-01-01T00:00:00.000Z\"}\n\n");
    assert_eq!(
        publisher.line().await,
        "RECEIPT> id: 2, device: H1, status: rx ok"
    );
    let stderr = publisher.kill().await;
    assert!(stderr.is_empty(), "--quiet: {stderr}");
}

#[tokio::test]
async fn follow_failing_does_not_stop_publishing() {
    let mut server = FakeServer::start().await;
    let args = [&server.host_port(), "C", "--count", "1", "--follow", "-q"];
    let publisher = Tool::start(EXE, &args, None);
    server
        .expect("GET", "/receipts/C")
        .await
        .json(404, r#"{"error":{"code":"not_found","message":"nowhere"}}"#);
    server
        .expect("POST", "/push/C")
        .await
        .json(200, &accepted(1));
    let (code, _, stderr) = publisher.finish().await;
    assert_eq!(code, 1);
    let url = format!("http://{}/receipts/C", server.host_port());
    assert_eq!(
        stderr,
        format!("pere-pub: --follow: {url}: HTTP 404 not_found: nowhere\n")
    );
}

#[tokio::test]
async fn help_documents_every_flag() {
    let out = std::process::Command::new(EXE)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--interval",
        "--count",
        "--data",
        "--event",
        "--json",
        "--quiet",
        "--retries",
        "--retry-delay",
        "--follow",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[tokio::test]
async fn batch_sends_n_events_per_request_and_prints_each_id() {
    let mut server = FakeServer::start().await;
    let args = [
        &server.host_port(),
        "C",
        "P1",
        "--count",
        "3",
        "--batch",
        "2",
        "--interval",
        "0",
        "--event",
        "tick",
    ];
    let mut publisher = Tool::start(EXE, &args, None);
    publisher.line().await;
    publisher.line().await;
    for (events, ids) in [(2, "[1,2]"), (1, "[3]")] {
        let push = server.expect("POST", "/push/C").await;
        assert_eq!(
            push.request.header("content-type"),
            Some("application/x-ndjson")
        );
        assert_eq!(push.request.header("pere-batch"), Some("envelope"));
        assert!(push.request.header("idempotency-key").is_some());
        let lines: Vec<serde_json::Value> = push
            .request
            .body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.len(),
            events,
            "--count 3 in batches of 2: {}",
            push.request.body
        );
        for line in &lines {
            assert_eq!(line["event"], "tick");
            assert_eq!(
                line["data"]["device"], "P1",
                "the original's random event, as JSON: {line}"
            );
        }
        push.json(
            200,
            &format!(
                r#"{{"channel":"C","ids":{ids},"time":"2024-01-01T00:00:00.000Z","replayed":0}}"#
            ),
        );
    }
    for id in 1..=3 {
        let line = publisher.line().await;
        let event =
            format!(r#"PUSH EVT> event: {{"channel":"C","device":"P1","pub_id":{id},"time":"#);
        assert!(
            line.starts_with(&event) && line.ends_with(&format!("}}, Event-Id: {id}")),
            "{line}"
        );
    }
    let (code, rest, stderr) = publisher.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert!(rest.is_empty() && stderr.is_empty(), "{rest:?} {stderr}");
}

#[tokio::test]
async fn wait_asks_for_receipts_and_prints_how_many_acknowledged() {
    let mut server = FakeServer::start().await;
    let args = [
        &server.host_port(),
        "C",
        "P1",
        "--count",
        "1",
        "--data",
        "x",
        "--wait",
        "all",
        "--wait-timeout",
        "3",
    ];
    let mut publisher = Tool::start(EXE, &args, None);
    publisher.line().await;
    publisher.line().await;
    let push = server.expect("POST", "/push/C?wait=all&timeout=3s").await;
    let summary = r#"{"channel":"C","id":5,"acknowledged":[{"device":"H1","status":"ok","time":"2024-01-01T00:00:00.000Z"}],"delivered":["H2"],"pending":[],"expected":2,"complete":false,"counts":{"acknowledged":1,"delivered":1,"pending":0}}"#;
    push.json(202, &format!(r#"{{"channel":"C","id":5,"time":"2024-01-01T00:00:00.000Z","satisfied":false,"receipts":{summary}}}"#));
    assert_eq!(
        publisher.line().await,
        "PUSH EVT> event: x, Event-Id: 5, acknowledged: 1/2"
    );
    assert_eq!(publisher.finish().await.0, 0);
}
