//! Widely used SSE clients read feeds: Chromium's `EventSource`, Node's `eventsource`, Python's
//! `httpx-sse` and Rust's `eventsource-stream`. Each must see exactly the pushed events (the
//! opening and the keep-alive comments give no message, not even an empty one), and a resume
//! with `Last-Event-ID` must start right after it.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use pere_e2e::node::{finish, run_script, start_program, target_dir, workspace};
use pere_e2e::{TestServer, WAIT};
use tokio::process::Command;

/// Keep-alive comments every second, so each client idles through some.
const KEEP_ALIVE: &[&str] = &["--keep-alive", "1"];
/// Longer than the keep-alive interval: what the clients wait before the next push.
const IDLE: Duration = Duration::from_millis(1500);

/// The messages every client must report, as `MSG` lines: the first stream (1, 2), then the
/// stream resumed after 1 (2, 3).
fn expected(with_type: bool) -> Vec<String> {
    let kind = if with_type {
        r#", "event": "message""#
    } else {
        ""
    };
    let sep = if with_type { ": " } else { ":" };
    let sep2 = if with_type { ", " } else { "," };
    [("1", "one"), ("2", "two"), ("2", "two"), ("3", "three")]
        .iter()
        .map(|(id, data)| format!(r#"{{"id"{sep}"{id}"{kind}{sep2}"data"{sep}"{data}"}}"#))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_event_source_sees_exactly_the_events() {
    let server = TestServer::start(KEEP_ALIVE).await;
    let outcome = run_script(
        "interop-chromium",
        "client.mjs",
        &[&server.base, "eventsource", "ES"],
    )
    .await;
    outcome.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_eventsource_sees_exactly_the_events() {
    let server = TestServer::start(KEEP_ALIVE).await;
    let outcome = run_script(
        "interop-node",
        "eventsource.mjs",
        &[&server.base, "NODE", "D-node"],
    )
    .await;
    outcome.assert_passed();
    assert_eq!(outcome.tagged("MSG "), expected(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_httpx_sse_sees_exactly_the_events() {
    let server = TestServer::start(KEEP_ALIVE).await;
    let python = target_dir().join("interop-venv").join("bin").join("python");
    let mut command = Command::new(&python);
    command
        .arg(
            workspace()
                .join("tests")
                .join("interop")
                .join("httpx_sse_client.py"),
        )
        .args([&server.base, "PY", "D-py"]);
    let proc = start_program(
        command,
        "the Python environment with httpx-sse: run ./tests/run-all.sh",
    );
    let outcome = finish(proc).await;
    outcome.assert_passed();
    assert_eq!(outcome.tagged("MSG "), expected(true));
}

/// Reads `count` events from a feed with `eventsource-stream`, pushing `then` after the first
/// once the stream has idled through a keep-alive.
async fn read_events(
    server: &TestServer,
    last_event_id: Option<&str>,
    then: &str,
) -> Vec<(String, String, String)> {
    let mut request = server.http.get(server.url("/feed/RS?device=D-rust"));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.expect("feed");
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    let mut got = Vec::new();
    while got.len() < 2 {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("event");
        got.push((event.id, event.event, event.data));
        if got.len() == 1 {
            tokio::time::sleep(IDLE).await;
            server.push("RS", then).await;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_eventsource_stream_sees_exactly_the_events() {
    let server = TestServer::start(KEEP_ALIVE).await;
    server.push("RS", "one").await;
    let message = |id: &str, data: &str| (id.to_owned(), "message".to_owned(), data.to_owned());
    assert_eq!(
        read_events(&server, None, "two").await,
        [message("1", "one"), message("2", "two")]
    );
    assert_eq!(
        read_events(&server, Some("1"), "three").await,
        [message("2", "two"), message("3", "three")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_opens_with_the_retry_hint_in_the_first_events_block() {
    let server = TestServer::start(&["--retry-ms", "2500", "--keep-alive", "1"]).await;
    server.push("RAW", "one").await;
    let response = server
        .http
        .get(server.url("/feed/RAW?device=D-raw"))
        .send()
        .await
        .expect("feed");
    let mut body = response.bytes_stream();
    let mut seen = Vec::new();
    // The first event, then a keep-alive comment after it.
    while !String::from_utf8_lossy(&seen).contains("data: one\n\n: keep-alive\n") {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("bytes in time")
            .expect("open")
            .expect("chunk");
        seen.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("retry: 2500\nid: 1\ndata: one\n\n: keep-alive\n"),
        "{text:?}"
    );
    assert!(
        !text.contains("\n\n\n") && !text.contains("keep-alive\n\n"),
        "no block without data: {text:?}"
    );
}
