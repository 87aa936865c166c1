//! `pere-sub` against a scripted server: the exact lines, the receipts it sends, resuming without
//! duplicates, re-acknowledging what failed, gaps, refusals and giving up.

use std::time::Instant;

use pere_e2e::scripted::{FakeServer, Tool};

const EXE: &str = env!("CARGO_BIN_EXE_pere-sub");

fn receipt(id: u64, device: &str, status: &str) -> String {
    format!(
        r#"{{"channel":"C","id":{id},"device":"{device}","status":"{status}","time":"2024-01-01T00:00:00.000Z"}}"#
    )
}

/// Takes the next receipt request, checks it is the original subscriber's, answers 200.
async fn expect_receipt(server: &mut FakeServer, id: u64) {
    let ack = server.expect("POST", "/feedback/C").await;
    assert_eq!(ack.request.header("device"), Some("H1"));
    assert_eq!(
        ack.request.header("last_event_id"),
        Some(id.to_string().as_str())
    );
    assert_eq!(
        ack.request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(ack.request.body, "status=rx+ok");
    ack.json(200, &receipt(id, "H1", "rx ok"));
}

#[tokio::test]
async fn prints_acknowledges_and_resumes_without_duplicates() {
    let mut server = FakeServer::start().await;
    let host = server.host_port();
    let mut sub = Tool::start(EXE, &[&host, "C", "H1", "--count", "3"], None);
    assert_eq!(
        sub.line().await,
        format!("LISTEN (device: H1), channel: C, server: {host}")
    );
    assert_eq!(sub.line().await, "");

    let feed = server.expect("GET", "/feed/C").await;
    assert_eq!(feed.request.header("device"), Some("H1"));
    assert_eq!(feed.request.header("accept"), Some("text/event-stream"));
    assert_eq!(feed.request.header("last-event-id"), None);
    let stream = feed.stream();
    stream.send("retry: 50\n\n: keep-alive\n\nid: 1\ndata: one\n\n");
    expect_receipt(&mut server, 1).await;
    assert_eq!(sub.line().await, "RX EVT> id: 1, data: one");
    assert_eq!(sub.line().await, "TX ACK> id: 1, status: rx ok");
    stream.send("id: 2\ndata: {\"n\":2}\n\n");
    expect_receipt(&mut server, 2).await;
    assert_eq!(sub.line().await, r#"RX EVT> id: 2, data: {"n":2}"#);
    assert_eq!(sub.line().await, "TX ACK> id: 2, status: rx ok");
    drop(stream);

    // Back after the server's 50 ms, from the last id; a replayed event is neither shown nor
    // acknowledged again, and the gap is reported on stderr only.
    let feed = server.expect("GET", "/feed/C").await;
    assert_eq!(feed.request.header("last-event-id"), Some("2"));
    let stream = feed.stream();
    stream.send("id: 1\ndata: one\n\nid: 2\ndata: {\"n\":2}\n\nevent: pere-gap\ndata: {\"from\":3,\"to\":4}\n\nid: 5\ndata: five\n\n");
    expect_receipt(&mut server, 5).await;
    assert_eq!(sub.line().await, "RX EVT> id: 5, data: five");
    assert_eq!(sub.line().await, "TX ACK> id: 5, status: rx ok");

    let (code, rest, stderr) = sub.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        stderr.contains(
            "GAP> events 3..4 are not available on the server (pruned, or damaged in its store)\n"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_failed_receipt_is_sent_again_when_the_event_comes_back() {
    let mut server = FakeServer::start().await;
    let mut sub = Tool::start(
        EXE,
        &[&server.host_port(), "C", "H1", "--count", "1", "--quiet"],
        None,
    );
    let stream = server.expect("GET", "/feed/C").await.stream();
    stream.send("retry: 10\n\nid: 1\ndata: one\n\n");
    // The first delivery: every attempt at its receipt fails.
    for _ in 0..3 {
        server.expect("POST", "/feedback/C").await.json(
            503,
            r#"{"error":{"code":"store_unavailable","message":"down"}}"#,
        );
    }
    assert_eq!(sub.line().await, "RX EVT> id: 1, data: one");
    drop(stream);
    // Redelivered: acknowledged again, silently, and that completes --count 1.
    let feed = server.expect("GET", "/feed/C").await;
    assert_eq!(feed.request.header("last-event-id"), Some("1"));
    let stream = feed.stream();
    stream.send("id: 1\ndata: one\n\n");
    expect_receipt(&mut server, 1).await;
    let (code, rest, stderr) = sub.finish().await;
    drop(stream);
    assert_eq!(code, 0, "{stderr}");
    assert!(rest.is_empty(), "the event is shown once: {rest:?}");
    assert!(
        stderr.contains("TX ACK FAILED> id: 1, reason: HTTP 503 store_unavailable: down"),
        "{stderr}"
    );
}

#[tokio::test]
async fn json_lines_carry_the_receipt() {
    let mut server = FakeServer::start().await;
    let mut sub = Tool::start(
        EXE,
        &[&server.host_port(), "C", "H1", "--count", "2", "--json"],
        None,
    );
    let stream = server.expect("GET", "/feed/C").await.stream();
    stream.send("id: 7\nevent: tick\ndata: a\ndata: b\n\n");
    expect_receipt(&mut server, 7).await;
    let line: serde_json::Value = serde_json::from_str(&sub.line().await).unwrap();
    let expected = format!(
        r#"{{"id":7,"event":"tick","data":"a\nb","receipt":{}}}"#,
        receipt(7, "H1", "rx ok")
    );
    assert_eq!(
        line,
        serde_json::from_str::<serde_json::Value>(&expected).unwrap()
    );
    // Without a receipt body (the original server answered an empty 200), receipt is null.
    stream.send("id: 8\ndata: c\n\n");
    server.expect("POST", "/feedback/C").await.json(200, "");
    assert_eq!(
        sub.line().await,
        r#"{"id":8,"event":"message","data":"c","receipt":null}"#
    );
    assert_eq!(sub.finish().await.0, 0);
}

#[tokio::test]
async fn no_ack_sends_no_receipts() {
    let mut server = FakeServer::start().await;
    let mut sub = Tool::start(
        EXE,
        &[
            &server.host_port(),
            "C",
            "H1",
            "--count",
            "2",
            "--no-ack",
            "-q",
        ],
        None,
    );
    let stream = server.expect("GET", "/feed/C").await.stream();
    stream.send("id: 1\ndata: one\n\nid: 2\ndata: two\n\n");
    assert_eq!(sub.line().await, "RX EVT> id: 1, data: one");
    assert_eq!(sub.line().await, "RX EVT> id: 2, data: two");
    assert_eq!(sub.finish().await.0, 0);
}

#[tokio::test]
async fn the_start_position_is_sent_and_respected() {
    let mut server = FakeServer::start().await;
    let mut sub = Tool::start(
        EXE,
        &[
            &server.host_port(),
            "C",
            "H1",
            "--count",
            "1",
            "--last-event-id",
            "4",
            "-q",
        ],
        None,
    );
    let feed = server.expect("GET", "/feed/C").await;
    assert_eq!(feed.request.header("last-event-id"), Some("4"));
    let stream = feed.stream();
    stream.send("id: 4\ndata: old\n\nid: 5\ndata: new\n\n");
    expect_receipt(&mut server, 5).await;
    assert_eq!(sub.line().await, "RX EVT> id: 5, data: new");
    assert_eq!(sub.finish().await.0, 0);
}

#[tokio::test]
async fn a_refused_subscription_is_fatal() {
    let mut server = FakeServer::start().await;
    let sub = Tool::start(EXE, &[&server.host_port(), "C", "H1", "-q"], None);
    server.expect("GET", "/feed/C").await.json(
        400,
        r#"{"error":{"code":"bad_channel","message":"no such name"}}"#,
    );
    let (code, _, stderr) = sub.finish().await;
    assert_eq!(code, 2);
    let url = format!("http://{}/feed/C", server.host_port());
    assert_eq!(
        stderr,
        format!("pere-sub: the server refused {url}: HTTP 400 bad_channel: no such name\n")
    );
}

#[tokio::test]
async fn gives_up_after_retries_using_the_servers_retry() {
    let mut server = FakeServer::start().await;
    let started = Instant::now();
    let sub = Tool::start(
        EXE,
        &[&server.host_port(), "C", "H1", "--retries", "2"],
        None,
    );
    server
        .expect("GET", "/feed/C")
        .await
        .stream()
        .send("retry: 20\n\n");
    let down = r#"{"error":{"code":"store_unavailable","message":"down"}}"#;
    server.expect("GET", "/feed/C").await.json(503, down);
    server.expect("GET", "/feed/C").await.json(503, down);
    let (code, _, stderr) = sub.finish().await;
    assert_eq!(code, 1);
    let url = format!("http://{}/feed/C", server.host_port());
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!("pere-sub: cannot reach {url} after 2 attempts: HTTP 503 store_unavailable: down")
    );
    // Three connections, each after ~20 ms (plus jitter of at most 100 ms), not the default 3 s.
    assert!(
        started.elapsed().as_millis() < 2500,
        "{:?}",
        started.elapsed()
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
        "--status",
        "--count",
        "--last-event-id",
        "--no-ack",
        "--no-coalesce",
        "--json",
        "--quiet",
        "--retries",
        "--idle-timeout",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
