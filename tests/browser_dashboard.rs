//! The dashboard in a real browser (Debian's Chromium driven by playwright-core,
//! `tests/browser/dashboard.mjs`) beside a device page, against the real server. Each test leaves
//! screenshots under `target/test-artefacts/TEST/`.

use std::time::{SystemTime, UNIX_EPOCH};

use pere_e2e::node::run_script;
use pere_e2e::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_device_online_its_receipt_and_the_device_offline() {
    let server = TestServer::start(&[]).await;
    let outcome = run_script(
        "dashboard",
        "dashboard.mjs",
        &[&server.base, "DASH", "W-dash"],
    )
    .await;
    outcome.assert_tagged("ONLINE ", &["W-dash"]);
    assert_eq!(outcome.tagged("ACKED "), ["1"]);
    assert_eq!(outcome.tagged("FAILED "), ["1"]);
    assert_eq!(outcome.tagged("OFFLINE "), ["W-dash"]);
    // What the grid showed is what the server keeps, classed as the metrics class it.
    let view = server.get_json("/admin/receipts/DASH/1").await;
    let class_of = |device: &str| {
        view["acknowledged"]
            .as_array()
            .expect("receipts")
            .iter()
            .find(|a| a["device"] == device)
            .map(|a| a["class"].clone())
    };
    assert_eq!(class_of("W-dash"), Some("ok".into()), "{view}");
    assert_eq!(class_of("W-failing"), Some("failed".into()), "{view}");
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for line in [
        r#"pere_receipts_total{status_class="ok"} 1"#,
        r#"pere_receipts_total{status_class="failed"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    server
        .proc
        .wait_line(|l| l.contains("FEED END>") && l.contains("DASH admin stream"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_takes_an_admin_token_from_its_address() {
    const SECRET: &str = "dashboard-test-secret-of-at-least-32-bytes";
    let server = TestServer::start(&["--jwt-secret", SECRET]).await;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let token = |sub: &str, grants: serde_json::Value| {
        let claims = serde_json::json!({"sub": sub, "exp": exp, "pere": grants});
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token")
    };
    let admin = token(
        "ops",
        serde_json::json!({"publish": ["SEC"], "admin": true}),
    );
    let device = token("W-sec", serde_json::json!({"subscribe": ["SEC"]}));
    let outcome = run_script(
        "dashboard-token",
        "dashboard.mjs",
        &[&server.base, "SEC", "W-sec", &admin, &device],
    )
    .await;
    outcome.assert_tagged("OFFLINE ", &["W-sec"]);
    assert_eq!(outcome.tagged("ACKED "), ["1"]);
    // The page's stream carried the token in its query, which the log never shows.
    server
        .proc
        .wait_line(|l| l.contains("FEED END>") && l.contains("SEC admin stream"))
        .await;
    assert!(server
        .proc
        .lines()
        .iter()
        .chain(server.proc.errors().iter())
        .all(|l| !l.contains("eyJ")));
}
