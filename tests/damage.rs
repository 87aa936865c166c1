//! End-to-end tests of a damaged SQLite store ("the ledger never lies"): bytes of one event
//! overwritten on disk, as the issue did, are found by the event's checksum; feeds resuming
//! across it reach the head with a `pere-gap` naming it; the readers name it; `/readyz`, the
//! metrics and the log report it; `pere-server check` finds it and `--repair` sets it aside.

use std::path::Path;
use std::time::{Duration, Instant};

use pere_e2e::{Proc, TestServer};
use serde_json::Value;

/// Events published; the damaged one is in the middle.
const EVENTS: u64 = 200;
const DAMAGED: u64 = 100;

fn body(i: u64) -> String {
    // The marker is found in the file to damage exactly this event's body; the padding keeps
    // the 64 bytes overwritten inside it.
    format!("event {i} MARK{i:04} {}", "p".repeat(100))
}

/// Runs `pere-server check` on `dir` with `extra` flags; returns its exit status and stdout.
async fn check(dir: &Path, extra: &[&str]) -> (i32, Vec<String>) {
    let mut args = vec!["check", "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut check = Proc::start("pere-server", &args);
    let code = check.wait_exit().await;
    assert!(
        check.errors().is_empty() || code == 2,
        "{:?}",
        check.errors()
    );
    (code, check.lines())
}

/// Overwrites 64 bytes inside the body holding `marker` (found exactly once in the file).
fn overwrite_64_bytes(dir: &Path, marker: &str) {
    let path = dir.join("pere.db");
    let mut bytes = std::fs::read(&path).unwrap();
    let found: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker.as_bytes())
        .map(|(at, _)| at)
        .collect();
    assert_eq!(found.len(), 1, "{marker} is in the file once");
    bytes[found[0]..found[0] + 64].fill(0xff);
    std::fs::write(&path, bytes).unwrap();
}

/// Reads a feed resuming after `after` until the head; returns its ids and gaps, and how long
/// that took.
async fn resume(server: &TestServer, after: u64) -> (Vec<u64>, Vec<Value>, Duration) {
    let started = Instant::now();
    let mut feed = server
        .feed("C", &[("Last-Event-ID", &after.to_string())])
        .await;
    let (mut ids, mut gaps) = (Vec::new(), Vec::new());
    while ids.last() != Some(&EVENTS) {
        let event = feed.next().await;
        if event.event == "pere-gap" {
            gaps.push(serde_json::from_str(&event.data).unwrap());
        } else {
            ids.push(event.id.parse().unwrap());
        }
    }
    (ids, gaps, started.elapsed())
}

fn all_but_the_damaged(from: u64) -> Vec<u64> {
    (from..=EVENTS).filter(|&id| id != DAMAGED).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_event_is_passed_over_named_reported_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), &["--quiet"]).await;
    for i in 1..=EVENTS {
        assert_eq!(server.push("C", &body(i)).await, i);
    }
    server.stop().await;
    // Sound, and the check leaves every page in the database file, where the disk damages it.
    let (code, lines) = check(dir.path(), &[]).await;
    assert_eq!(code, 0, "{lines:?}");
    overwrite_64_bytes(dir.path(), &format!("MARK{DAMAGED:04}"));

    // The start-up check does not see damage inside a row: the server starts.
    let server = TestServer::start_in(dir.path(), &[]).await;
    assert_eq!(server.get_json("/readyz").await["status"], "ready");

    // A feed resuming from before the damage reaches the head at once, told of the damaged id.
    let (ids, gaps, took) = resume(&server, 90).await;
    assert_eq!(ids, all_but_the_damaged(91));
    assert_eq!(
        gaps,
        vec![serde_json::json!({"from": DAMAGED, "to": DAMAGED})]
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // So does the tool of the issue, without a reconnection.
    let mut sub = Proc::start(
        "pere-sub",
        &[
            "--last-event-id",
            "90",
            "--count",
            &all_but_the_damaged(91).len().to_string(),
            "--no-ack",
            "-q",
            &server.host_port(),
            "C",
        ],
    );
    assert_eq!(sub.wait_exit().await, 0, "{:?}", sub.errors());
    let received = sub.lines();
    assert_eq!(received.len(), all_but_the_damaged(91).len());
    assert!(received
        .iter()
        .all(|l| !l.contains(&format!("id: {DAMAGED},"))));
    assert_eq!(
        sub.errors(),
        vec![format!(
            "GAP> events {DAMAGED}..{DAMAGED} are not available on the server (pruned, or damaged in its store)"
        )]
    );

    // The readers name it.
    let page = server.get_json("/events/C?after=95&limit=10").await;
    let listed: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![96, 97, 98, 99, 101, 102, 103, 104, 105]);
    assert_eq!(page["unreadable"], serde_json::json!([DAMAGED]));
    let clean = server.get_json("/events/C?after=150&limit=10").await;
    assert!(clean.get("unreadable").is_none(), "{clean}");
    let one = server
        .http
        .get(server.url(&format!("/events/C/{DAMAGED}")))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 500);
    let error: Value = one.json().await.unwrap();
    assert_eq!(error["error"]["code"], "event_damaged");
    let bodies = server.get_json("/admin/events/C").await;
    assert_eq!(bodies.as_array().unwrap().len() as u64, EVENTS - 1);

    // Reported: degraded but serving, counted, named in the log once however often it is read.
    let ready = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        ready,
        serde_json::json!({"status": "degraded", "damaged_events": 1})
    );
    let metrics = server.get_text("/metrics").await;
    let reads: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pere_store_damaged_reads_total "))
        .expect("the damaged reads metric")
        .parse()
        .unwrap();
    assert!(reads >= 4, "{reads}");
    // A check cannot run beside the server.
    let (code, _) = check(dir.path(), &[]).await;
    assert_eq!(code, 2);
    let log = server.stop().await;
    let named: Vec<&String> = log.iter().filter(|l| l.contains("damaged store")).collect();
    assert_eq!(named.len(), 1, "{log:?}");
    assert!(
        named[0].contains("channel C, event 100 cannot be read"),
        "{}",
        named[0]
    );

    // The operator's check names it; the repair sets it aside; then the store is sound.
    let (code, lines) = check(dir.path(), &[]).await;
    assert_eq!(code, 1, "{lines:?}");
    assert!(
        lines.contains(&format!(
            "channel C: damaged events {DAMAGED} (checksum mismatch)"
        )),
        "{lines:?}"
    );
    let (code, lines) = check(dir.path(), &["--repair"]).await;
    assert_eq!(code, 0, "{lines:?}");
    let (code, lines) = check(dir.path(), &[]).await;
    assert_eq!(code, 0, "{lines:?}");

    // A clean start: ready, and a resuming feed still learns that the id is gone.
    let server = TestServer::start_in(dir.path(), &[]).await;
    let (ids, gaps, _) = resume(&server, 90).await;
    assert_eq!(ids, all_but_the_damaged(91));
    assert_eq!(
        gaps,
        vec![serde_json::json!({"from": DAMAGED, "to": DAMAGED})]
    );
    assert_eq!(
        server.get_json("/readyz").await,
        serde_json::json!({"status": "ready"})
    );
    assert_eq!(server.push("C", "after the repair").await, EVENTS + 1);
    let log = server.stop().await;
    assert!(log.iter().all(|l| !l.contains("damaged store")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_what_it_cannot_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut missing = Proc::start(
        "pere-server",
        &["check", "--data-dir", dir.path().to_str().unwrap()],
    );
    assert_eq!(missing.wait_exit().await, 2);
    let errors = missing.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("there is no store here"), "{errors:?}");
}
