//! End-to-end tests of what an operator relies on: `/metrics` (scraped and parsed, its counters
//! following pushes, receipts and refusals; protected like the admin views; its own listener),
//! `/admin/channels`, readiness and the `?wait=` answer during a real SIGTERM, and a damaged
//! database found at start.

use std::collections::BTreeMap;
use std::time::Duration;

use pere_e2e::{on_every_store, threads, Proc, StoreUnderTest, TestServer, WAIT};
use serde_json::Value;

/// One scrape: every sample, keyed by its name and labels as written (`name{a="x",b="y"}`, the
/// labels sorted), with its value.
#[derive(Debug)]
struct Scrape(BTreeMap<String, f64>);

/// Prometheus's own `Accept` header when it scrapes (2.x): OpenMetrics first.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Checks `text` against the rules of the Prometheus text format 0.0.4 that `promtool check
/// metrics` enforces: every sample belongs to a family declared once by a `# TYPE` line before
/// its samples (a histogram's family by its name without `_bucket`, `_sum`, `_count`; any other
/// by the sample's name itself, so a counter's family ends in `_total`), a `# HELP` names the
/// family of the `# TYPE` after it, a family's samples are not split by another's, and there is
/// no OpenMetrics line (`# UNIT`, `# EOF`).
fn check_prometheus_text(text: &str) {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut help: Option<String> = None;
    for line in text.lines() {
        assert!(!line.is_empty(), "no empty line in the text format");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            help = Some(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "a type of the text format: {line}"
            );
            if let Some(help) = help.take() {
                assert_eq!(help, name, "# HELP and # TYPE name the same family");
            }
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "a counter is named _total: {line}"
                );
            }
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "one # TYPE per family: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "no other metadata line: {line}");
        let name = line
            .split(['{', ' '])
            .next()
            .expect("a sample starts with its name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| {
                types
                    .get(*base)
                    .is_some_and(|t| t == "histogram" || t == "summary")
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "the sample {line:?} comes after its family's # TYPE"
        );
        if current.as_deref() != Some(family) {
            assert!(
                !finished.iter().any(|f| f == family),
                "the samples of {family} are together"
            );
            finished.extend(current.replace(family.to_owned()));
        }
    }
}

impl Scrape {
    /// Parses the text format: `# ` lines are metadata, every other line `name[{labels}] value`.
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let key = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("labels not closed in {line:?}"));
                    let mut pairs: Vec<&str> = labels.split(',').collect();
                    pairs.sort_unstable();
                    format!("{name}{{{}}}", pairs.join(","))
                }
                None => series.to_owned(),
            };
            assert!(
                key.starts_with("pere_"),
                "every metric is named pere_*: {key}"
            );
            assert!(
                samples.insert(key, value).is_none(),
                "one sample per series: {line}"
            );
        }
        Scrape(samples)
    }

    /// The value of `name` with exactly these labels (0 when the series is absent).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let mut pairs: Vec<String> =
                labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            pairs.sort_unstable();
            format!("{name}{{{}}}", pairs.join(","))
        };
        self.0.get(&key).copied().unwrap_or(0.0)
    }
}

async fn scrape_url(http: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("scrape")
}

/// A scrape as curl or promtool's pipe makes it (no OpenMetrics in `Accept`): the Prometheus
/// text format, checked by its rules, then parsed.
async fn scrape(server: &TestServer) -> Scrape {
    let response = scrape_url(&server.http, &server.url("/metrics"), None).await;
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap();
    check_prometheus_text(&text);
    Scrape::parse(&text)
}

/// Scrapes until `done` holds (counts fed by the hub's notices follow a moment later), or fails
/// after [`WAIT`] showing the last scrape.
async fn scrape_until(server: &TestServer, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let mut last = None;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            every.tick().await;
            let now = scrape(server).await;
            if done(&now) {
                return now;
            }
            last = Some(now);
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("metrics never showed {what}: {last:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_openmetrics_to_a_scraper_that_asks_and_prometheus_text_otherwise() {
    let server = TestServer::start(&[]).await;
    server.push("Formats", "one").await;
    let get = |accept: Option<&'static str>| {
        let mut request = server.http.get(server.url("/metrics"));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        async move {
            let response = request.send().await.expect("scrape");
            assert_eq!(response.status(), 200);
            let kind = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            (kind, response.text().await.unwrap())
        }
    };

    let (kind, open) = get(Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(
        kind,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        open.ends_with("# EOF\n"),
        "an OpenMetrics scrape ends with # EOF"
    );
    assert!(
        open.contains("# TYPE pere_events_published counter\n")
            && open.contains("\npere_events_published_total 1\n")
            && open.contains("# UNIT pere_receipt_latency_seconds seconds\n"),
        "OpenMetrics names a counter's family without _total, and has units: {open}"
    );

    for accept in [
        None,
        Some("*/*"),
        Some("text/plain;version=0.0.4"),
        Some("text/plain;q=1, application/openmetrics-text;q=0.5"),
    ] {
        let (kind, text) = get(accept).await;
        assert_eq!(
            kind, "text/plain; version=0.0.4; charset=utf-8",
            "Accept: {accept:?}"
        );
        check_prometheus_text(&text);
        assert!(
            text.contains("# TYPE pere_events_published_total counter\n")
                && text.contains("\npere_events_published_total 1\n"),
            "{text}"
        );
        // The same samples as OpenMetrics's.
        assert_eq!(
            Scrape::parse(&text).get("pere_events_published_total", &[]),
            Scrape::parse(&open).get("pere_events_published_total", &[])
        );
    }
}

async fn metrics_follow_streams_pushes_receipts_and_refusals(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    let before = scrape(&server).await;
    assert_eq!(before.get("pere_open_streams_all", &[]), 0.0);
    assert_eq!(before.get("pere_events_published_total", &[]), 0.0);

    let mut feed = server.feed("Metered", &[("device", "M1")]).await;
    let mut listener = server.feed("Metered", &[]).await;
    let opened = scrape(&server).await;
    assert_eq!(opened.get("pere_open_streams", &[("kind", "feed")]), 2.0);
    assert_eq!(opened.get("pere_open_streams_all", &[]), 2.0);
    assert!(
        opened.get("pere_open_connections", &[]) >= 3.0,
        "two feeds and the scrape"
    );

    for i in 1..=3 {
        server.push("Metered", &format!("e{i}")).await;
    }
    assert_eq!(feed.next_ids(3).await, vec![1, 2, 3]);
    assert_eq!(listener.next_ids(3).await, vec![1, 2, 3]);
    let pushed = scrape_until(&server, "three publications", |s| {
        s.get("pere_events_published_total", &[]) == 3.0
    })
    .await;
    assert_eq!(
        pushed.get("pere_deliveries_total", &[]),
        6.0,
        "three events to two feeds"
    );
    assert_eq!(
        pushed.get("pere_events_pending_receipts", &[]),
        3.0,
        "M1 owes three receipts"
    );
    assert_eq!(
        pushed.get(
            "pere_http_responses_total",
            &[("route", "/push/{channel}"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        pushed.get(
            "pere_http_responses_total",
            &[("route", "/feed/{channel}"), ("status", "200")]
        ),
        2.0
    );

    assert_eq!(server.ack("Metered", "M1", 1, "ok").await.0, 200);
    // The original clients' status: a success, as "ok" is.
    assert_eq!(server.ack("Metered", "M1", 2, "rx ok").await.0, 200);
    assert_eq!(
        server.ack("Metered", "M1", 3, "display failed").await.0,
        200
    );
    assert_eq!(server.ack("Metered", "M1", 99, "ok").await.0, 404);
    let wrong = server
        .http
        .get(server.url("/push/Metered"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 405);
    assert_eq!(
        server
            .http
            .get(server.url("/no/such/thing"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let acked = scrape_until(&server, "three receipts", |s| {
        s.get("pere_receipts_total", &[("status_class", "ok")]) == 2.0
            && s.get("pere_receipts_total", &[("status_class", "failed")]) == 1.0
            && s.get("pere_receipts_total", &[("status_class", "other")]) == 0.0
    })
    .await;
    assert_eq!(acked.get("pere_receipt_latency_seconds_count", &[]), 3.0);
    assert!(acked.get("pere_receipt_latency_seconds_sum", &[]) > 0.0);
    assert_eq!(
        acked.get("pere_receipt_latency_seconds_bucket", &[("le", "+Inf")]),
        3.0
    );
    assert_eq!(acked.get("pere_events_pending_receipts", &[]), 0.0);
    assert_eq!(
        acked.get("pere_refused_requests_total", &[("code", "unknown_event")]),
        1.0
    );
    assert_eq!(
        acked.get(
            "pere_refused_requests_total",
            &[("code", "method_not_allowed")]
        ),
        1.0
    );
    assert_eq!(
        acked.get("pere_refused_requests_total", &[("code", "not_found")]),
        1.0
    );
    assert_eq!(
        acked.get(
            "pere_http_responses_total",
            &[("route", "/feedback/{channel}"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        acked.get(
            "pere_http_responses_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(
        acked
            .0
            .keys()
            .all(|k| !k.contains("Metered") && !k.contains("M1") && !k.contains("/no/such")),
        "no channel, device or path in a label"
    );
    if store == StoreUnderTest::Sqlite {
        assert!(acked.get("pere_store_commit_writes_count", &[]) >= 1.0);
        assert!(
            acked.get("pere_store_commit_writes_sum", &[]) >= 7.0,
            "3 pushes and 3 receipts at least, and more"
        );
        assert!(acked.get("pere_store_commit_duration_seconds_count", &[]) >= 1.0);
    }

    drop(feed);
    drop(listener);
    scrape_until(&server, "the feeds closed", |s| {
        s.get("pere_open_streams", &[("kind", "feed")]) == 0.0
    })
    .await;
}

on_every_store!(
    metrics_follow_streams_pushes_receipts_and_refusals,
    admin_channels_come_in_pages
);

const SECRET: &str = "test-secret-of-at-least-32-bytes-0123456789";

fn mint(extra: &[&str]) -> String {
    let mut args = vec!["token", "--jwt-secret", SECRET, "--ttl", "1h"];
    args.extend_from_slice(extra);
    let out = std::process::Command::new(pere_e2e::bin_path("pere-server"))
        .args(&args)
        .output()
        .expect("token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_claim_but_not_on_their_own_listener() {
    let server = TestServer::start_args(&[
        "--store",
        "memory",
        "--jwt-secret",
        SECRET,
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .await;
    let line = server
        .proc
        .wait_line(|l| l.contains("metrics on http://"))
        .await;
    let metrics_url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let main_url = server.url("/metrics");
    let http = &server.http;

    assert_eq!(scrape_url(http, &main_url, None).await.status(), 401);
    let device = mint(&["--sub", "D1", "--subscribe", "*", "--publish", "*"]);
    assert_eq!(
        scrape_url(http, &main_url, Some(&device)).await.status(),
        403
    );
    let admin = mint(&["--sub", "ops", "--admin"]);
    let scraped = scrape_url(http, &main_url, Some(&admin)).await;
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.unwrap();
    let with_token = Scrape::parse(&text);
    assert_eq!(
        with_token.get("pere_refused_requests_total", &[("code", "missing_token")]),
        1.0
    );
    assert_eq!(
        with_token.get("pere_refused_requests_total", &[("code", "forbidden")]),
        1.0
    );

    // The separate listener: no token, and nothing but the metrics.
    let open = scrape_url(http, &metrics_url, None).await;
    assert_eq!(open.status(), 200);
    let open = open.text().await.unwrap();
    check_prometheus_text(&open);
    let open = Scrape::parse(&open);
    // It answers Prometheus in OpenMetrics, as the main port does.
    let asked = http
        .get(&metrics_url)
        .header("accept", PROMETHEUS_ACCEPT)
        .send()
        .await
        .unwrap();
    assert!(asked.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert_eq!(
        open.get(
            "pere_http_responses_total",
            &[("route", "/metrics"), ("status", "200")]
        ),
        1.0
    );
    let base = metrics_url.trim_end_matches("/metrics");
    for path in ["/admin/channels", "/push/C", "/"] {
        assert_eq!(
            http.get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            404,
            "{path}"
        );
    }
    assert_eq!(http.post(&metrics_url).send().await.unwrap().status(), 405);
}

async fn admin_channels_come_in_pages(store: StoreUnderTest) {
    let server = TestServer::start_on(store, &[]).await;
    for (channel, events) in [("A", 3), ("B", 1), ("C", 2), ("D", 1), ("E", 5)] {
        for i in 0..events {
            server.push(channel, &format!("{channel}{i}")).await;
        }
    }
    for device in ["R1", "R2"] {
        let put = server
            .http
            .put(server.url(&format!("/devices/C/{device}")))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
    }
    let _feed = server.feed("E", &[("device", "F1")]).await;

    let mut seen = Vec::new();
    let mut path = "/admin/channels?limit=2".to_owned();
    loop {
        let response = server.http.get(server.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let next = response
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let page: Value = response.json().await.unwrap();
        let channels = page["channels"].as_array().unwrap().clone();
        assert!(channels.len() <= 2, "{channels:?}");
        seen.extend(channels);
        let Some(next) = next else { break };
        assert!(next.ends_with("; rel=\"next\""), "{next}");
        path = next[1..next.find('>').unwrap()].to_owned();
    }
    let names: Vec<&str> = seen
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A", "B", "C", "D", "E"]);
    let c = &seen[2];
    assert_eq!(
        (
            c["head"].as_u64(),
            c["retained"].as_u64(),
            c["recipients"].as_u64()
        ),
        (Some(2), Some(2), Some(2))
    );
    assert_eq!(c["open_streams"], 0);
    let e = &seen[4];
    assert_eq!(
        (
            e["head"].as_u64(),
            e["open_streams"].as_u64(),
            e["recipients"].as_u64()
        ),
        (Some(5), Some(1), Some(1))
    );

    let all = server.get_json("/admin/channels").await;
    assert_eq!(all["channels"].as_array().unwrap().len(), 5);
    let bad = server
        .http
        .get(server.url("/admin/channels?limit=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

/// Starts a push that waits for every recipient's receipt (one recipient, R1, never answers),
/// once the server has applied it; returns the pending request.
async fn held_push(server: &TestServer) -> tokio::task::JoinHandle<reqwest::Response> {
    let put = server
        .http
        .put(server.url("/devices/Held/R1"))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let request = server
        .http
        .post(server.url("/push/Held?wait=all&timeout=60s"))
        .body("waiting");
    let pending = tokio::spawn(async move {
        request
            .send()
            .await
            .expect("an answer, not a dropped connection")
    });
    server
        .proc
        .wait_line(|l| l.contains("PUSH EVT>") && l.contains("Held"))
        .await;
    pending
}

async fn check_waited_answer(pending: tokio::task::JoinHandle<reqwest::Response>) {
    let answer = tokio::time::timeout(WAIT, pending)
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(answer.status(), 202, "stored, receipts still pending");
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["satisfied"], false);
    assert_eq!(
        body["receipts"]["pending"],
        serde_json::json!(["R1"]),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_readiness_fails_first_and_waiting_pushes_get_their_answer() {
    let mut server =
        TestServer::start_on(StoreUnderTest::Sqlite, &["--shutdown-grace", "3s"]).await;
    assert_eq!(server.get_json("/readyz").await["status"], "ready");
    let pending = held_push(&server).await;
    let mut feed = server.feed("Held", &[]).await;
    server.terminate();
    // Unready while the listener still answers, so a load balancer sees the 503.
    let mut every = tokio::time::interval(Duration::from_millis(20));
    let unready = tokio::time::timeout(WAIT, async {
        loop {
            every.tick().await;
            let response = server
                .http
                .get(server.url("/readyz"))
                .send()
                .await
                .expect("still listening");
            if response.status() == 503 {
                return response.json::<Value>().await.unwrap();
            }
            assert_eq!(response.status(), 200);
        }
    })
    .await
    .expect("readiness turned 503");
    assert_eq!(unready["reason"], "shutting_down");
    // Still serving during the grace period.
    assert_eq!(server.get_json("/healthz").await["status"], "ok");
    check_waited_answer(pending).await;
    feed.until_end().await;
    assert_eq!(server.proc.wait_exit().await, 0);
}

/// On SIGTERM every stream of the dedicated HTTP/1.1 loop ends promptly, whatever it follows: a
/// feed (the hub ends it), a receipt stream and a presence stream (each its own shutdown wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_feeds_receipt_and_presence_streams_all_end() {
    use tokio::io::AsyncReadExt;
    let mut server = TestServer::start(&["--shutdown-timeout", "10"]).await;
    let mut streams = Vec::new();
    for path in ["/feed/Ends?device=E1", "/receipts/Ends", "/presence/Ends"] {
        let mut stream = server.raw_get(path).await;
        let head = pere_e2e::read_until(&mut stream, |s| s.contains("\r\n\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        streams.push(stream);
    }
    server.terminate();
    for mut stream in streams {
        let closed = tokio::time::timeout(WAIT, async {
            let mut chunk = [0u8; 1024];
            while stream.read(&mut chunk).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        assert!(closed.is_ok(), "a stream still open after {WAIT:?}");
    }
    assert_eq!(server.proc.wait_exit().await, 0);
    let ended: Vec<String> = server
        .proc
        .lines()
        .into_iter()
        .filter(|l| l.contains("FEED END>") && l.contains("reason: server shutting down"))
        .collect();
    assert_eq!(ended.len(), 3, "{ended:?}");
    assert!(
        !server
            .proc
            .errors()
            .iter()
            .any(|l| l.contains("still open")),
        "{:?}",
        server.proc.errors()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_grace_period_a_waiting_push_is_still_answered() {
    let mut server = TestServer::start(&[]).await;
    let pending = held_push(&server).await;
    server.terminate();
    check_waited_answer(pending).await;
    assert_eq!(server.proc.wait_exit().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_reported_at_start_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(dir.path(), &[]).await;
    let body = "x".repeat(2000);
    for _ in 0..100 {
        server.push("Bulky", &body).await;
    }
    // The checkpointer copies the log into the database file within a second of the commits.
    let db = dir.path().join("pere.db");
    let mut every = tokio::time::interval(Duration::from_millis(50));
    tokio::time::timeout(WAIT, async {
        while std::fs::metadata(&db).unwrap().len() < 16 * 4096 {
            every.tick().await;
        }
    })
    .await
    .expect("the events reached the database file");
    server.terminate();
    assert_eq!(server.proc.wait_exit().await, 0);

    // Every page after the first (the header and the schema) overwritten: the tables' pages;
    // and no log left to read newer copies of them from.
    let mut bytes = std::fs::read(&db).unwrap();
    for log in ["pere.db-wal", "pere.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(log));
    }
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i % 251) as u8;
    }
    std::fs::write(&db, &bytes).unwrap();

    let dir_arg = dir.path().to_str().unwrap();
    let mut again = Proc::start(
        "pere-server",
        &["-o", "127.0.0.1", "-p", "0", "--data-dir", dir_arg],
    );
    assert_ne!(again.wait_exit().await, 0, "a damaged store is not served");
    let errors = again.errors();
    assert_eq!(errors.len(), 1, "one line: {errors:?}");
    assert!(
        errors[0].contains("pere.db is damaged") && errors[0].contains("backup"),
        "{}",
        errors[0]
    );
    assert!(
        again.lines().iter().all(|l| !l.contains("listening on")),
        "never listened"
    );
}

/// Voluntary context switches of each of `pid`'s threads named `name`, summed.
fn wake_ups(pid: u32, name: &str) -> u64 {
    threads(pid)
        .into_iter()
        .filter(|thread| thread.name == name)
        .filter_map(|thread| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", thread.tid)).ok()
        })
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_server_log_sleeps_and_a_line_still_comes_at_once() {
    let server = TestServer::start(&[]).await;
    let pid = server.proc.pid();
    // The window is what is measured here, not a wait for something to happen: a writer that
    // woke every 20 ms would wake about 50 times in it, one that sleeps until a line comes not
    // at all (a few allowed for the lines of the start still being written).
    let before = wake_ups(pid, "pere-log-out") + wake_ups(pid, "pere-log-err");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let quiet = wake_ups(pid, "pere-log-out") + wake_ups(pid, "pere-log-err") - before;
    assert!(
        quiet <= 5,
        "the log's threads woke {quiet} times in a quiet second"
    );
    let id = server.push("quiet", r#"{"n":1}"#).await;
    let line = server
        .proc
        .wait_line(|l| l.contains("PUSH EVT>") && l.contains("channel: quiet"))
        .await;
    assert!(line.contains(&format!("Event-Id: {id}")), "{line}");
}

/// The server binary allocates with jemalloc and reads its built-in settings: the background
/// thread that hands freed memory back (`background_thread:true`) runs. Without the settings,
/// or with glibc's allocator, no such thread exists.
#[tokio::test]
async fn freed_memory_is_handed_back_by_the_allocators_own_thread() {
    let server = TestServer::start(&[]).await;
    let pid = server.proc.pid();
    server.push("memory", r#"{"n":1}"#).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !threads(pid).iter().any(|t| t.name == "jemalloc_bg_thd") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no thread of jemalloc's in the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The SQLite store's checkpointer is woken by the first commit after it went to sleep, then
/// looks at the count of commits on its own time: a channel pushing paced events wakes it a
/// few times, not once an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_pushes_do_not_wake_the_checkpointer_each_time() {
    const PUSHES: u64 = 100;
    let server = TestServer::start_on(StoreUnderTest::Sqlite, &[]).await;
    let pid = server.proc.pid();
    // The thread's name as the kernel keeps it: 15 characters.
    let checkpointer = "pere-sqlite-che";
    server.push("paced", r#"{"n":0}"#).await;
    let before = wake_ups(pid, checkpointer);
    for n in 1..=PUSHES {
        server.push("paced", &format!(r#"{{"n":{n}}}"#)).await;
        // The pace of the pushes, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let woke = wake_ups(pid, checkpointer) - before;
    assert!(
        woke < PUSHES / 2,
        "the checkpointer woke {woke} times for {PUSHES} paced pushes"
    );
}
