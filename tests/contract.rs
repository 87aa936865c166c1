//! The contract, against the real server: `GET /openapi.json` is the document in the repository,
//! and schemathesis (installed by `tests/run-all.sh`) drives a live server from it, with tokens off
//! and on: no 5xx, and every answer's status, content type, headers and body as documented. The
//! SSE streams are documented but not fuzzed (they never end).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use pere_e2e::{bin_path, TestServer};

/// The longest one schemathesis run may take; a bounded number of examples per operation keeps
/// it near 30 s on two shared cores.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// What every answer is checked for; `negative_data_rejection`: every request the document
/// calls invalid is refused (4xx), so the document never allows what the server refuses nor the
/// server take what the document forbids.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,\
                      negative_data_rejection";

/// Schemathesis's `st`: `PERE_SCHEMATHESIS`, else the virtual environment `tests/run-all.sh`
/// makes in the target directory.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("PERE_SCHEMATHESIS") {
        return path.into();
    }
    let server = bin_path("pere-server");
    let target = server
        .parent()
        .and_then(|profile| profile.parent())
        .expect("target directory");
    let st = target.join("schemathesis").join("bin").join("st");
    assert!(
        st.exists(),
        "{} is missing: ./tests/run-all.sh installs schemathesis",
        st.display()
    );
    st
}

/// Runs schemathesis against `server` with `checks` and `extra` arguments; panics with its report unless every
/// check passed, and checks the server survived it without a panic.
async fn fuzz(server: &TestServer, max_examples: u32, checks: &str, extra: &[&str]) {
    let work = tempfile::tempdir().expect("temporary directory");
    let examples = max_examples.to_string();
    let schema = server.url("/openapi.json");
    let mut command = tokio::process::Command::new(schemathesis());
    command
        .args([
            "run",
            &schema,
            "--checks",
            checks,
            "--max-examples",
            &examples,
        ])
        .args([
            "--phases",
            "examples,coverage,fuzzing",
            "--exclude-path-regex",
            "^/(feed/|receipts/|presence/|admin/stream)",
        ])
        // One worker: CPython 3.11 can fail to parse source in two threads at once, which
        // hypothesis does to describe its strategies.
        .args([
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
        ])
        .args(extra)
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran past {RUN_LIMIT:?}"))
        .expect("schemathesis starts");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found answers that break the contract ({}):\n{report}\n{}\nserver stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        server.proc.errors().join("\n")
    );
    assert!(
        report.contains("passed"),
        "schemathesis tested nothing:\n{report}"
    );
    let panics: Vec<String> = server
        .proc
        .errors()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(
        panics.is_empty(),
        "the server panicked under schemathesis:\n{}",
        panics.join("\n")
    );
    assert_eq!(
        server.get_json("/health").await["status"],
        "ok",
        "the server still answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_one_in_the_repository() {
    let server = TestServer::start(&["--open"]).await;
    let response = server
        .http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: serde_json::Value = response.json().await.expect("JSON");
    let kept: serde_json::Value =
        serde_json::from_str(include_str!("../crates/pere-server/assets/openapi.json"))
            .expect("the kept document");
    assert_eq!(served, kept);
    assert_eq!(served["openapi"], "3.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_public_when_tokens_are_on() {
    let server =
        TestServer::start(&["--jwt-secret", "0123456789abcdef0123456789abcdef-contract"]).await;
    let response = server
        .http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        response.status(),
        200,
        "a client generator reads it before it has a token"
    );
    let refused = server
        .http
        .get(server.url("/admin/connections"))
        .send()
        .await
        .expect("get");
    assert_eq!(refused.status(), 401, "while the rest needs one");
}

/// URL libraries (and clients generated from the document) escape `:` in a path segment: the
/// escaped name is the name, in routing, in tokens and in what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_escaped_in_the_path_are_the_names() {
    let server = TestServer::start(&["--open"]).await;
    let pushed = server
        .http
        .post(server.url("/push/orders%3Aeu"))
        .body("hello")
        .send()
        .await
        .expect("push");
    assert_eq!(pushed.status(), 200);
    let pushed: serde_json::Value = pushed.json().await.expect("JSON");
    assert_eq!(pushed["channel"], "orders:eu");
    let events = server.get_json("/events/orders:eu").await;
    assert_eq!(events["events"][0]["data"], "hello");
    let registered = server
        .http
        .put(server.url("/devices/orders%3Aeu/D%3A1"))
        .send()
        .await
        .expect("put");
    assert_eq!(registered.status(), 200);
    let registered: serde_json::Value = registered.json().await.expect("JSON");
    assert_eq!(
        (
            registered["channel"].as_str(),
            registered["device"].as_str()
        ),
        (Some("orders:eu"), Some("D:1"))
    );
    // Only name characters are unescaped: a slash stays inside its segment, and is refused there.
    let slash = server
        .http
        .post(server.url("/push/a%2Fb"))
        .body("x")
        .send()
        .await
        .expect("push");
    assert_eq!(slash.status(), 400);
    let slash: serde_json::Value = slash.json().await.expect("JSON");
    assert_eq!(slash["error"]["code"], "bad_channel");
}

/// Whether the document's schema at `pointer` (a JSON pointer into it) takes `value`.
fn document_takes(pointer: &str, value: &serde_json::Value) -> bool {
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../crates/pere-server/assets/openapi.json"))
            .expect("the kept document");
    let schema = doc
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema at {pointer}"))
        .clone();
    // The document is the root, so the schema's references resolve.
    doc["x-checked"] = schema;
    doc["$ref"] = serde_json::json!("#/x-checked");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&doc)
        .unwrap_or_else(|err| panic!("the schema at {pointer}: {err}"))
        .is_valid(value)
}

/// What the document and the server each say of requests a newcomer sent: the document's
/// schema refuses each value, and the server refuses the request with the code the document
/// lists (schemathesis's `negative_data_rejection` holds the rest of the document so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_refuses_what_the_server_refuses() {
    let server = TestServer::start(&["--open"]).await;
    let id = server.push("C1", "one").await;
    let push_body = "/paths/~1push~1{channel}/post/requestBody";
    let cases: Vec<(&str, &str, serde_json::Value, reqwest::RequestBuilder, &str)> = vec![
        (
            "an empty push",
            "/paths/~1push~1{channel}/post/requestBody/content/text~1plain/schema",
            serde_json::json!(""),
            server
                .http
                .post(server.url("/push/C1"))
                .header("content-type", "text/plain"),
            "empty_body",
        ),
        (
            "a receipt for ?id=abc",
            "/components/parameters/idQuery/schema",
            serde_json::json!("abc"),
            server
                .http
                .post(server.url("/feedback/C1?id=abc&device=D1")),
            "bad_event_id",
        ),
        (
            "a receipt with last_event_id: abc",
            "/components/parameters/lastEventIdUnderscoreHeader/schema",
            serde_json::json!("abc"),
            server
                .http
                .post(server.url("/feedback/C1"))
                .header("device", "D1")
                .header("last_event_id", "abc")
                .body("status=ok"),
            "bad_event_id",
        ),
        (
            "a JSON receipt for id \"abc\"",
            "/components/schemas/FeedbackRequest",
            serde_json::json!({"device": "D1", "id": "abc"}),
            server
                .http
                .post(server.url("/feedback/C1"))
                .json(&serde_json::json!({"device": "D1", "id": "abc"})),
            "bad_event_id",
        ),
        (
            "?timeout=abc without ?wait=",
            "/components/parameters/timeout/schema",
            serde_json::json!("abc"),
            server
                .http
                .post(server.url("/push/C1?timeout=abc"))
                .body("x"),
            "bad_timeout",
        ),
        (
            "an empty event header beside a good ?event=",
            "/components/parameters/eventHeader/schema",
            serde_json::json!(""),
            server
                .http
                .post(server.url("/push/C1?event=ok"))
                .header("event", "")
                .body("x"),
            "bad_event_type",
        ),
        (
            "an empty ?device= beside a good device header",
            "/components/parameters/deviceQuery/schema",
            serde_json::json!(""),
            server
                .http
                .post(server.url("/push/C1?device="))
                .header("device", "P1")
                .body("x"),
            "bad_device",
        ),
        (
            "Pere-Batch: envelop",
            "/components/parameters/batchForm/schema",
            serde_json::json!("envelop"),
            server
                .http
                .post(server.url("/push/C1"))
                .header("content-type", "application/x-ndjson")
                .header("pere-batch", "envelop")
                .body("{\"data\":1}\n"),
            "bad_batch_form",
        ),
    ];
    assert_eq!(
        server.get_json(&format!("/events/C1/{id}")).await["id"],
        id,
        "the event receipts would name exists"
    );
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../crates/pere-server/assets/openapi.json"))
            .expect("the kept document");
    assert_eq!(
        doc.pointer(&format!("{push_body}/required")),
        Some(&serde_json::json!(true)),
        "a push needs a body"
    );
    for (what, pointer, value, request, code) in cases {
        assert!(
            !document_takes(pointer, &value),
            "{what}: the document takes {value} at {pointer}"
        );
        let answer = request.send().await.expect("an answer");
        assert_eq!(answer.status(), 400, "{what}");
        let body: serde_json::Value = answer.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
    }
    // What the document takes, the server takes.
    assert!(document_takes(
        "/components/schemas/FeedbackRequest",
        &serde_json::json!({"device": "D1", "id": id})
    ));
    let receipt = server
        .http
        .post(server.url(&format!("/feedback/C1?id={id}&device=D1")))
        .send()
        .await
        .expect("an answer");
    assert_eq!(receipt.status(), 200);
}

/// A `?timeout=` too long for any clock is refused, as any bad timeout is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_wait_is_a_bad_timeout() {
    let server = TestServer::start(&["--open"]).await;
    let url = server.url("/push/C1?wait=all&timeout=99999999999999999d");
    let response = server
        .http
        .post(url)
        .body("x")
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "bad_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_every_answer_as_documented() {
    // A short --max-wait bounds how long a fuzzed `?wait=` holds its answer.
    let server = TestServer::start(&["--open", "--max-wait", "1s"]).await;
    fuzz(&server, 30, CHECKS, &[]).await;
}

/// With tokens on, an admin token that may publish and subscribe everywhere reaches every
/// operation; schemathesis also checks that each protected one refuses a request without it or
/// with a made-up one (`ignored_auth`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_every_answer_as_documented_with_tokens() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef-contract";
    let minted = tokio::process::Command::new(bin_path("pere-server"))
        .args([
            "token",
            "--sub",
            "H0039000000001",
            "--admin",
            "--publish",
            "*",
            "--subscribe",
            "*",
        ])
        .args(["--jwt-secret", SECRET])
        .output()
        .await
        .expect("pere-server token");
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let token = String::from_utf8(minted.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned();
    let server = TestServer::start(&["--jwt-secret", SECRET, "--max-wait", "1s"]).await;
    let bearer = format!("Authorization: Bearer {token}");
    fuzz(
        &server,
        10,
        &format!("{CHECKS},ignored_auth"),
        &["-H", &bearer],
    )
    .await;
}
