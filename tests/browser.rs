//! pere.js and the subscriber page in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/browser/*.mjs`), against the real server. Each test leaves screenshots under
//! `target/test-artefacts/TEST/`.

use pere_e2e::node::{finish, run_script, start_script};
use pere_e2e::TestServer;

/// The status of `device`'s receipt for event `id` of `channel`, as the server's receipt view
/// has it (`None` when it has none).
async fn receipt_status(
    server: &TestServer,
    channel: &str,
    id: u64,
    device: &str,
) -> Option<String> {
    let view = server
        .get_json(&format!("/admin/receipts/{channel}/{id}"))
        .await;
    let acknowledged = view["acknowledged"]
        .as_array()
        .expect("a list of receipts")
        .clone();
    acknowledged
        .iter()
        .find(|r| r["device"] == device)
        .map(|r| r["status"].as_str().expect("a status").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_pushed_event_acknowledges_it_and_publishes() {
    let server = TestServer::start(&[]).await;
    let outcome = run_script(
        "page",
        "page.mjs",
        &[&server.base, "PAGE", "W0039000000001"],
    )
    .await;
    outcome.assert_tagged("ACKED ", &["1", "2"]);
    for id in [1, 2] {
        assert_eq!(
            receipt_status(&server, "PAGE", id, "W0039000000001")
                .await
                .as_deref(),
            Some("ok"),
            "event {id}"
        );
    }
    let event = server.get_json("/events/PAGE/2").await;
    assert_eq!(
        event["device"], "W0039000000001",
        "the page publishes as its device: {event}"
    );
    assert_eq!(event["data"]["text"], "published from the page", "{event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_takes_a_token_from_its_address_and_speaks_as_its_device() {
    const SECRET: &str = "browser-test-secret-of-at-least-32-bytes";
    let server = TestServer::start(&["--jwt-secret", SECRET]).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": "W-token", "exp": exp, "pere": {"publish": ["TOK"], "subscribe": ["TOK"], "admin": true}});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    let token =
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token");
    let outcome = run_script(
        "page-token",
        "page.mjs",
        &[&server.base, "TOK", "W-token", &token],
    )
    .await;
    outcome.assert_tagged("ACKED ", &["1", "2"]);
    let admin = reqwest::Client::new();
    let view = admin
        .get(server.url("/admin/receipts/TOK/2"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("receipts");
    let view: serde_json::Value = view.json().await.expect("JSON");
    assert_eq!(view["acknowledged"][0]["device"], "W-token", "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_publishes_with_idempotency_keys_and_receives_typed_events() {
    let server = TestServer::start(&[]).await;
    let outcome = run_script("publish", "client.mjs", &[&server.base, "publish", "PUB"]).await;
    outcome.assert_passed();
    let events = server.get_json("/events/PUB").await;
    assert_eq!(
        events["head"], 3,
        "the replayed publish stored nothing: {events}"
    );
    assert_eq!(
        receipt_status(&server, "PUB", 3, "W-pub").await.as_deref(),
        Some("ok")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_gives_a_redelivered_event_to_the_application_once() {
    let server = TestServer::start(&["--ack-timeout", "1s"]).await;
    let outcome = run_script("dedupe", "client.mjs", &[&server.base, "dedupe", "DUP"]).await;
    outcome.assert_passed();
    assert_eq!(outcome.tagged("DUPLICATES ").len(), 1);
    server
        .proc
        .wait_line(|l| l.contains("REDELIVER>") && l.contains("W-dup"))
        .await;
    assert_eq!(
        receipt_status(&server, "DUP", 1, "W-dup").await.as_deref(),
        Some("done by the app")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_resumes_from_the_last_id_it_saw_when_the_server_drops_the_stream() {
    let dir = tempfile::tempdir().expect("data directory");
    let server = TestServer::start_in(dir.path(), &["--retry-ms", "200"]).await;
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let mut script = start_script("resume", "client.mjs", &[&server.base, "resume", "RES"]);
    script.wait_line(|l| l == "RESTART").await;
    server.kill().await;
    let server = TestServer::start_in(dir.path(), &["--retry-ms", "200", "-p", &port]).await;
    script.tell("restarted").await;
    finish(script).await.assert_passed();
    server
        .proc
        .wait_line(|l| l.contains("FEED REQ> device: W-resume, channel: RES, Last-Event-Id: 1"))
        .await;
    assert_eq!(
        receipt_status(&server, "RES", 2, "W-resume")
            .await
            .as_deref(),
        Some("ok")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_starts_over_on_pere_reset() {
    let server = TestServer::start(&["--retry-ms", "200"]).await;
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let mut script = start_script("reset", "client.mjs", &[&server.base, "reset", "RST"]);
    script.wait_line(|l| l == "RESTART").await;
    server.kill().await;
    // A memory store restarts empty: the browser's Last-Event-ID 1 is an id it never gave.
    let server = TestServer::start(&["--retry-ms", "200", "-p", &port]).await;
    script.tell("restarted").await;
    finish(script).await.assert_passed();
    assert_eq!(
        receipt_status(&server, "RST", 1, "W-reset")
            .await
            .as_deref(),
        Some("ok"),
        "the new event 1"
    );
}

/// pere.js under a burst: a few receipt requests (the server counts them), every event
/// acknowledged; then a lone event, acknowledged at once, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_acknowledges_a_burst_in_a_few_requests_and_a_lone_event_at_once() {
    let server = TestServer::start(&[]).await;
    let outcome = run_script(
        "coalesce-burst",
        "coalesce.mjs",
        &[&server.base, "burst", "COB"],
    )
    .await;
    outcome.assert_passed();
    assert!(server.pending("COB", "W-burst").await.is_empty());
    let requests = server.answers("/feedback/{channel}", 200).await;
    println!(
        "pere.js: {requests} receipt requests for 201 events: {:?}",
        outcome.tagged("REQUESTS ")
    );
    assert!(
        requests <= 51,
        "{requests} receipt requests for 201 events: {:?}",
        outcome.tagged("REQUESTS ")
    );
    assert_eq!(
        receipt_status(&server, "COB", 200, "W-burst")
            .await
            .as_deref(),
        Some("ok")
    );
}

/// pere.js with a status per event, acknowledged without waiting: batches, each event with its
/// own status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_sends_statuses_that_differ_as_batches() {
    let server = TestServer::start(&[]).await;
    let outcome = run_script(
        "coalesce-statuses",
        "coalesce.mjs",
        &[&server.base, "statuses", "COS"],
    )
    .await;
    outcome.assert_passed();
    for id in 1..=60 {
        let want = if id % 3 == 0 { "failed" } else { "done" };
        assert_eq!(
            receipt_status(&server, "COS", id, "W-statuses")
                .await
                .as_deref(),
            Some(want),
            "event {id}"
        );
    }
    assert!(server.answers("/feedback/{channel}", 200).await < 30);
}

/// pere.js with a receipt spacing: a first receipt at once, the next one the spacing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_spaces_the_receipt_requests_of_a_busy_device() {
    let server = TestServer::start(&[]).await;
    let outcome = run_script(
        "coalesce-spaced",
        "coalesce.mjs",
        &[&server.base, "spaced", "COP"],
    )
    .await;
    outcome.assert_passed();
    assert!(server.pending("COP", "W-spaced").await.is_empty());
    assert_eq!(server.answers("/feedback/{channel}", 200).await, 2);
}

/// pere.js facing a server that refuses the coalesced forms as an older PERE does: every
/// receipt goes alone and gets through, and the page hears it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_js_sends_receipts_one_by_one_to_a_server_without_the_coalesced_forms() {
    let server = TestServer::start(&[]).await;
    let outcome = run_script(
        "coalesce-older",
        "coalesce.mjs",
        &[&server.base, "older", "COO"],
    )
    .await;
    outcome.assert_tagged("NOTICES ", &["receipts_one_by_one"]);
    assert!(server.pending("COO", "W-older").await.is_empty());
    // The server saw only the original form: one request per receipt.
    assert_eq!(server.answers("/feedback/{channel}", 200).await, 30);
}

/// The README's first pere.js snippet, read from README.md, runs as written in a page of the
/// server: it subscribes, publishes, receives its event and acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_snippet_runs_as_written_in_a_page_of_the_server() {
    let server = TestServer::start(&[]).await;
    let outcome = run_script("readme-same", "readme.mjs", &["same", &server.base]).await;
    outcome.assert_tagged("RECEIVED ", &["1"]);
    server
        .proc
        .wait_line(|l| l.contains("FEEDBACK> channel: CHANNEL_1") && l.ends_with("status: ok"))
        .await;
}

/// The README's second snippet runs as written in a page of another origin, which the server
/// allows with `--allow-origin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_snippet_runs_from_another_origin_the_server_allows() {
    let mut script = start_script("readme-cross", "readme.mjs", &["cross"]);
    let origin = script.wait_line(|l| l.starts_with("ORIGIN ")).await;
    let origin = origin.trim_start_matches("ORIGIN ").to_owned();
    let server = TestServer::start(&["--allow-origin", &origin]).await;
    script.tell(&server.base).await;
    let outcome = finish(script).await;
    outcome.assert_tagged("RECEIVED ", &["1"]);
    server
        .proc
        .wait_line(|l| l.contains("FEEDBACK> channel: CHANNEL_1"))
        .await;
    assert!(
        !server.proc.errors().iter().any(|l| l.contains("CORS>")),
        "an allowed origin is not refused: {:?}",
        server.proc.errors()
    );
}

/// A page whose origin the server does not allow gets a CORS error only; the server says which
/// origin it refused and what to give, for a page of another port and for a `file://` page
/// (origin `null`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_origin_is_named_in_the_log_with_what_to_give() {
    let server = TestServer::start(&[]).await;
    let mut script = start_script("readme-refused", "readme.mjs", &["refused", &server.base]);
    let opened = script.wait_line(|l| l.starts_with("OPENED ")).await;
    let origin = opened.trim_start_matches("OPENED ");
    // The server read the requests before the browser refused the page their answers.
    let refused = format!(
        "CORS> GET /pere.js: origin {origin} is not allowed: start the server with --allow-origin {origin}"
    );
    server.proc.wait_error_line(|l| l.contains(&refused)).await;
    let null = "CORS> GET /pere.js: origin null (a page opened from a file:// or a sandboxed frame) is not allowed";
    server.proc.wait_error_line(|l| l.contains(null)).await;
    script.tell("seen").await;
    finish(script).await.assert_passed();
    // The server's own pages send an Origin too (a POST): never called refused.
    let own = server
        .http
        .post(server.url("/push/OWN"))
        .header("origin", &server.base)
        .body("x")
        .send()
        .await
        .expect("push");
    assert_eq!(own.status(), 200);
    server.push("OWN", "after").await;
    server
        .proc
        .wait_line(|l| l.contains("PUSH EVT> channel: OWN") && l.ends_with("data: after"))
        .await;
    assert!(
        !server
            .proc
            .errors()
            .iter()
            .any(|l| l.contains("CORS>") && l.contains("/push/OWN")),
        "{:?}",
        server.proc.errors()
    );
}
