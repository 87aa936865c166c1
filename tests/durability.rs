//! End-to-end durability tests of the default SQLite store: SIGKILL under load loses nothing that
//! was acknowledged, a restart brings back history, receipts, presence and cursors (each channel
//! read back when first used), and retention prunes with an in-band notice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use pere_e2e::TestServer;
use rand::Rng;
use serde_json::Value;

/// What the load saw acknowledged: body -> id for pushes, and (id, device) for receipts.
#[derive(Default)]
struct Acknowledged {
    pushes: BTreeMap<String, u64>,
    receipts: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_push_or_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let base = Arc::new(Mutex::new(String::new()));
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = reqwest::Client::new();
    let progress = Arc::new(tokio::sync::Notify::new());

    let mut server = TestServer::start_in(dir.path(), &["--quiet"]).await;
    *base.lock().unwrap() = server.base.clone();

    let mut load = Vec::new();
    for publisher in 0..4 {
        let (base, acknowledged, stop, http) = (
            base.clone(),
            acknowledged.clone(),
            stop.clone(),
            http.clone(),
        );
        let progress = progress.clone();
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let url = base.lock().unwrap().clone();
                let body = format!("p{publisher}-{n}");
                n += 1;
                let Ok(response) = http
                    .post(format!("{url}/push/Crash"))
                    .body(body.clone())
                    .send()
                    .await
                else {
                    continue;
                };
                if response.status() != 200 {
                    continue;
                }
                let Ok(answer) = response.json::<Value>().await else {
                    continue;
                };
                let id = answer["id"].as_u64().unwrap();
                acknowledged.lock().unwrap().pushes.insert(body, id);
                progress.notify_waiters();
                // Every other event gets a receipt from device R1.
                if id % 2 == 0 {
                    let receipt = http
                        .post(format!("{url}/feedback/Crash"))
                        .json(&serde_json::json!({"device": "R1", "id": id, "status": "done"}))
                        .send()
                        .await;
                    if receipt.is_ok_and(|r| r.status() == 200) {
                        acknowledged.lock().unwrap().receipts.push(id);
                    }
                }
            }
        }));
    }

    let mut highest_before_kill = 0;
    for round in 0..4 {
        // Kill at a random moment: after a random number of further acknowledged pushes.
        let target =
            acknowledged.lock().unwrap().pushes.len() + rand::thread_rng().gen_range(50..400);
        tokio::time::timeout(pere_e2e::WAIT, async {
            loop {
                let notified = progress.notified();
                if acknowledged.lock().unwrap().pushes.len() >= target {
                    break;
                }
                notified.await;
            }
        })
        .await
        .expect("load makes progress");
        server.kill().await;
        let max_acked = acknowledged
            .lock()
            .unwrap()
            .pushes
            .values()
            .copied()
            .max()
            .unwrap_or(0);
        assert!(
            max_acked > highest_before_kill,
            "round {round}: the sequence moved on"
        );
        highest_before_kill = max_acked;
        server =
            TestServer::start_in(dir.path(), &["--quiet", "--retention-events", "100000"]).await;
        *base.lock().unwrap() = server.base.clone();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    // Every acknowledged push is present exactly once, under the id it was given.
    // Every retained event, a page at a time.
    let mut bodies: Vec<String> = Vec::new();
    let mut after = 0;
    loop {
        let page = server
            .get_json(&format!("/events/Crash?after={after}&limit=1000"))
            .await;
        let events = page["events"].as_array().unwrap();
        let Some(last) = events.last() else { break };
        after = last["id"].as_u64().unwrap();
        bodies.extend(
            events
                .iter()
                .map(|e| e["data"].as_str().unwrap().to_owned()),
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for body in &bodies {
        *seen.entry(body.as_str()).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a body is stored twice");
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    for (body, id) in &acknowledged.pushes {
        assert_eq!(
            seen.get(body.as_str()),
            Some(&1),
            "acknowledged push {body} (id {id}) is missing"
        );
    }
    // Ids are strictly increasing and never reused: replay them all from the start.
    let mut feed = server.feed("Crash", &[]).await;
    let ids = feed.next_ids(bodies.len()).await;
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids are not strictly increasing"
    );
    let by_id: HashMap<u64, &String> = acknowledged.pushes.iter().map(|(b, id)| (*id, b)).collect();
    assert_eq!(
        by_id.len(),
        acknowledged.pushes.len(),
        "an id was given to two acknowledged pushes"
    );

    // Every acknowledged receipt is in the ledger.
    for id in acknowledged.receipts.iter().take(300) {
        let summary = server
            .get_json(&format!("/admin/receipts/Crash/{id}"))
            .await;
        let devices: Vec<&str> = summary["acknowledged"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["device"].as_str().unwrap())
            .collect();
        assert!(devices.contains(&"R1"), "receipt for {id} lost");
    }
    // R1's device record counts every stored receipt, even those committed after the last
    // write-back of device records before a kill (folded in again at open). A receipt whose
    // answer the kill cut off may be stored too, so these are lower bounds.
    let record = &server.get_json("/admin/devices/Crash").await["R1"];
    let highest = acknowledged.receipts.iter().copied().max().unwrap();
    assert!(
        record["last_acked"].as_u64().unwrap() >= highest,
        "{record} misses receipt {highest}"
    );
    assert!(
        record["receipts"].as_u64().unwrap() >= acknowledged.receipts.len() as u64,
        "{record}"
    );

    // A subscriber resuming from the middle gets exactly what follows.
    let middle = ids[ids.len() / 2];
    let mut resumed = server
        .feed("Crash", &[("Last-Event-ID", &middle.to_string())])
        .await;
    let rest = resumed.next_ids(ids.len() - ids.len() / 2 - 1).await;
    assert_eq!(rest, ids[ids.len() / 2 + 1..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_history_receipts_presence_and_cursors() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), &[]).await;
    let mut feed = server.feed("Keep", &[("device", "H1")]).await;
    for i in 1..=5 {
        server.push("Keep", &format!("e{i}")).await;
    }
    assert_eq!(feed.next_ids(5).await, vec![1, 2, 3, 4, 5]);
    for id in 1..=3 {
        assert_eq!(server.ack("Keep", "H1", id, "rx ok").await.0, 200);
    }
    drop(feed);
    server
        .proc
        .wait_line(|l| l.contains(" FEED END>") && l.contains("H1"))
        .await;
    let before = server.get_json("/admin/devices/Keep").await;
    // A clean stop (SIGTERM) for this one; the crash test covers SIGKILL.
    let pid = server.proc.pid();
    assert!(std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
    let mut server = server;
    assert_eq!(server.proc.wait_exit().await, 0);

    let server = TestServer::start_in(dir.path(), &[]).await;
    let after = server.get_json("/admin/devices/Keep").await;
    for field in [
        "last_acked",
        "last_delivered",
        "receipts",
        "first_seen",
        "op",
    ] {
        assert_eq!(after["H1"][field], before["H1"][field], "{field}");
    }
    assert_eq!(after["H1"]["online"], false);
    assert_eq!(after["H1"]["last_acked"], 3);
    let summary = server.get_json("/admin/receipts/Keep/2").await;
    assert_eq!(summary["acknowledged"][0]["device"], "H1");
    // The sequence continues, and the device resumes after its last acknowledged event.
    assert_eq!(server.push("Keep", "e6").await, 6);
    let mut again = server.feed("Keep", &[("device", "H1")]).await;
    assert_eq!(again.next_ids(3).await, vec![4, 5, 6]);
    assert_eq!(
        server
            .get_json("/admin/events/Keep")
            .await
            .as_array()
            .unwrap()
            .len(),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_read_back_after_a_restart_continue_with_their_ids_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--retention-events", "2", "--idle-channel", "1s"];
    let server = TestServer::start_in(dir.path(), &args).await;
    for channel in 0..20 {
        for i in 1..=3 {
            server
                .push(&format!("Many{channel}"), &format!("e{i}"))
                .await;
        }
    }
    server.kill().await;

    // Nothing of them is read at open; each is read back when first used.
    let server = TestServer::start_in(dir.path(), &args).await;
    for channel in (0..20).rev() {
        let name = format!("Many{channel}");
        assert_eq!(
            server.get_json(&format!("/admin/events/{name}")).await,
            serde_json::json!(["e2", "e3"])
        );
        assert_eq!(server.push(&name, "e4").await, 4, "{name}");
        assert_eq!(
            server.get_json(&format!("/admin/events/{name}")).await,
            serde_json::json!(["e3", "e4"])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_by_count_and_age_and_tells_resuming_clients() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), &["--retention-events", "5"]).await;
    for i in 1..=10 {
        server.push("Short", &format!("e{i}")).await;
    }
    let mut feed = server.feed("Short", &[("Last-Event-ID", "2")]).await;
    let gap = feed.next().await;
    assert_eq!(gap.event, "pere-gap");
    assert_eq!(gap.id, "", "a gap notice carries no id");
    let notice: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(notice, serde_json::json!({"from": 3, "to": 5}));
    assert_eq!(feed.next_ids(5).await, vec![6, 7, 8, 9, 10]);
    // Gone before the next one opens the same data directory (dropping only starts the kill).
    server.kill().await;

    // Age: with a one-second limit, old events go while new ones stay.
    let server = TestServer::start_in(dir.path(), &["--retention-age", "1s"]).await;
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(100));
    tokio::time::timeout(pere_e2e::WAIT, async {
        loop {
            poll.tick().await;
            let events = server.get_json("/admin/events/Short").await;
            if events.as_array().unwrap().is_empty() {
                return;
            }
        }
    })
    .await
    .expect("events older than the age limit are pruned");
    assert_eq!(server.push("Short", "fresh").await, 11);
    assert_eq!(
        server.get_json("/admin/events/Short").await,
        serde_json::json!(["fresh"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_data_directory_is_a_clear_startup_error() {
    let root = tempfile::tempdir().unwrap();
    let not_a_dir = root.path().join("a-file");
    std::fs::write(&not_a_dir, "in the way").unwrap();
    let corrupt = root.path().join("corrupt");
    std::fs::create_dir(&corrupt).unwrap();
    std::fs::write(corrupt.join("pere.db"), vec![0x5a_u8; 8192]).unwrap();
    for dir in [&not_a_dir, &corrupt] {
        let path = dir.to_str().unwrap();
        let mut server = pere_e2e::Proc::start(
            "pere-server",
            &["-o", "127.0.0.1", "-p", "0", "--data-dir", path],
        );
        assert_eq!(server.wait_exit().await, 1, "{path}");
        let errors = server.errors().join("\n");
        assert!(
            errors.contains(path) && errors.contains("cannot open the store"),
            "{errors}"
        );
        assert!(!errors.contains("panicked"), "{errors}");
    }
    // A second server on a data directory in use is refused.
    let shared = root.path().join("shared");
    let _first = TestServer::start_in(&shared, &[]).await;
    let mut second = pere_e2e::Proc::start(
        "pere-server",
        &[
            "-o",
            "127.0.0.1",
            "-p",
            "0",
            "--data-dir",
            shared.to_str().unwrap(),
        ],
    );
    assert_eq!(second.wait_exit().await, 1);
    assert!(
        second
            .errors()
            .join("\n")
            .contains("in use by another PERE server"),
        "{:?}",
        second.errors()
    );
}
