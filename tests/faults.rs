//! Storage faults of the SQLite store that the fault table in the README promises an answer to:
//! a full disk (pushes and receipts refused with 503, nothing acknowledged lost, nothing refused
//! half recorded, service back once space returns) and a truncated database file (the server refuses to start, with one clear line).
//! The others are in `durability.rs` (crash, SIGKILL under load), `damage.rs` (a damaged page),
//! `cluster.rs`, `redis_cluster.rs`, `redis_sentinel.rs` and `store_change.rs` (Redis).

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pere_e2e::{Proc, TestServer, WAIT};
use serde_json::Value;

/// A file system of its own, `size` large, mounted on `dir` until dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` when this user may not mount (the test command runs as root; see the README).
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        mounted.status.success().then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left of the disk with a file of its own; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5a_u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.flush();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A disk of 16 MiB for a test, or `None` when this user may not mount one (the test then
/// passes, saying it skipped); root must be able to.
fn small_disk() -> Option<SmallDisk> {
    let disk = SmallDisk::mount("16m");
    if disk.is_none() {
        assert!(!is_root(), "root could not mount a tmpfs");
        eprintln!("skipped: mounting a small disk needs root (the test command runs as root)");
    }
    disk
}

/// Tries `attempt` every 100 ms until it gives a value, as a write refused for a full disk is
/// accepted again once space returns; for at most [`WAIT`].
async fn once_space_returns<T, F: std::future::Future<Output = Option<T>>>(
    mut attempt: impl FnMut() -> F,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(value) = attempt().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("writes accepted once space returns")
}

/// The ids of the events `channel` holds, oldest first.
async fn stored_ids(server: &TestServer, channel: &str) -> Vec<u64> {
    let stored = server
        .get_json(&format!("/events/{channel}?limit=100000"))
        .await;
    stored["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_u64().expect("an id"))
        .collect()
}

/// Sends twenty writes at once (`write(name)`, each with a name of its own), round after round
/// until some are refused (the log may still have room from before). Returns the names and
/// answers of those accepted, and the names of those refused, each refusal checked to be 503
/// `store_unavailable`.
async fn together_until_refused<F, Fut>(write: F) -> (Vec<(String, Value)>, Vec<String>)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = (u16, Value, bool)>,
{
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    for round in 0..500 {
        let answers = futures_util::future::join_all((0..20).map(|i| {
            let name = format!("{round}-{i}");
            let answer = write(name.clone());
            async move { (name, answer.await) }
        }))
        .await;
        for (name, (code, answer, _)) in answers {
            if code == 200 {
                accepted.push((name, answer));
            } else {
                assert_eq!(
                    (code, answer["error"]["code"].as_str()),
                    (503, Some("store_unavailable")),
                    "{answer}"
                );
                refused.push(name);
            }
        }
        if !refused.is_empty() {
            return (accepted, refused);
        }
    }
    panic!("nothing refused once the disk is full");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

async fn push_answer(server: &TestServer, channel: &str, body: &str) -> (u16, Value) {
    let answer = server
        .http
        .post(server.url(&format!("/push/{channel}")))
        .body(body.to_owned())
        .send()
        .await
        .expect("push");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

async fn readiness(server: &TestServer) -> u16 {
    let answer = server.http.get(server.url("/readyz")).send().await.unwrap();
    answer.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_pushes_with_503_and_service_resumes_when_space_returns() {
    let Some(disk) = small_disk() else {
        return;
    };
    let server = TestServer::start_in(disk.path(), &["-q", "--max-body", "65536"]).await;
    let mut feed = server.feed("Full", &[]).await;
    let body = "x".repeat(60_000);
    let mut acknowledged = vec![];
    for _ in 0..3 {
        acknowledged.push(server.push("Full", &body).await);
    }
    assert_eq!(feed.next_ids(3).await, acknowledged);

    let filler = disk.fill();
    // The log may still have room from before: pushes go on until it has none.
    let mut refused = None;
    for _ in 0..2_000 {
        match push_answer(&server, "Full", &body).await {
            (200, answer) => acknowledged.push(answer["id"].as_u64().unwrap()),
            (status, answer) => {
                refused = Some((status, answer));
                break;
            }
        }
    }
    let (status, answer) = refused.expect("a push refused once the disk is full");
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{answer}"
    );
    let health = server.http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the server itself answers");

    std::fs::remove_file(filler).unwrap();
    let id = once_space_returns(|| async {
        let (code, answer) = push_answer(&server, "Full", "after").await;
        (code == 200).then(|| answer["id"].as_u64().unwrap())
    })
    .await;
    assert_eq!(
        id,
        acknowledged.last().unwrap() + 1,
        "refused pushes used no id"
    );
    acknowledged.push(id);
    assert_eq!(readiness(&server).await, 200);

    let mut heard = feed.next_ids(acknowledged.len() - 3).await;
    heard.splice(0..0, acknowledged[..3].iter().copied());
    assert_eq!(
        heard, acknowledged,
        "the open feed heard every acknowledged push"
    );
    let ids = stored_ids(&server, "Full").await;
    assert_eq!(ids, acknowledged, "every acknowledged push is stored");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_database_stops_the_server_at_start_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), &["-q"]).await;
    let body = format!("{{\"order\":1,\"pad\":\"{}\"}}", "p".repeat(80));
    let lines: String = (0..400).map(|_| format!("{body}\n")).collect();
    for _ in 0..5 {
        let batch = server
            .http
            .post(server.url("/push/Cut"))
            .header("content-type", "application/x-ndjson")
            .body(lines.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(batch.status(), 200);
    }
    server.stop().await;
    // The offline check copies the log into the database file, as a backup tool would see it.
    let path = dir.path().to_str().unwrap();
    let mut check = Proc::start("pere-server", &["check", "--data-dir", path]);
    assert_eq!(check.wait_exit().await, 0, "{:?}", check.errors());

    let db = dir.path().join("pere.db");
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size > 64 * 1024, "{size}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(size / 2)
        .unwrap();

    let mut again = Proc::start(
        "pere-server",
        &["-o", "127.0.0.1", "-p", "0", "--data-dir", path],
    );
    assert_eq!(again.wait_exit().await, 1);
    let errors = again.errors();
    assert_eq!(errors.len(), 1, "one line: {errors:?}");
    assert!(
        errors[0].contains("cannot open the store") && errors[0].contains("damaged"),
        "{errors:?}"
    );
}

/// Sends `request` (a push or a receipt) with idempotency key `key`: the status, the answer,
/// and whether it was a replay.
async fn keyed(request: reqwest::RequestBuilder, key: &str) -> (u16, Value, bool) {
    let answer = request
        .header("idempotency-key", key)
        .send()
        .await
        .expect("post");
    let code = answer.status().as_u16();
    let replayed = answer.headers().contains_key("idempotent-replayed");
    (code, answer.json().await.unwrap_or(Value::Null), replayed)
}

/// A keyed JSON receipt on the full disk's channel, keyed by its device.
async fn keyed_ack(server: &TestServer, device: &str, id: u64, status: &str) -> (u16, Value, bool) {
    let receipt = serde_json::json!({"device": device, "id": id, "status": status});
    let request = server
        .http
        .post(server.url("/feedback/Acks"))
        .json(&receipt);
    keyed(request, &format!("key-of-{device}")).await
}

/// The receipts' side of a full disk: the writer holds a transaction's receipts and inserts them
/// together before it commits, so a commit that fails must leave none of them behind, and the
/// sequence must go on without reusing what a failed commit had handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_receipts_with_503_and_each_is_recorded_once_when_space_returns() {
    let Some(disk) = small_disk() else {
        return;
    };
    let server = TestServer::start_in(disk.path(), &["-q"]).await;
    let event = server.push("Acks", r#"{"n":1}"#).await;
    // Long statuses fill the log sooner.
    let status = "s".repeat(900);
    let (code, answer) = server.ack("Acks", "D0", event, &status).await;
    assert_eq!(code, 200, "{answer}");
    let mut recorded = vec!["D0".to_owned()];

    let filler = disk.fill();
    // Twenty devices at once, so that their receipts share the transactions that fail.
    let (accepted, refused) = together_until_refused(|name| {
        let (server, status) = (&server, &status);
        async move { keyed_ack(server, &format!("D{name}"), event, status).await }
    })
    .await;
    recorded.extend(accepted.into_iter().map(|(name, _)| format!("D{name}")));
    let refused: Vec<String> = refused.iter().map(|name| format!("D{name}")).collect();

    std::fs::remove_file(filler).unwrap();
    // Each refused receipt sent again with its key is new: its key was not kept.
    let first_refused = refused[0].clone();
    for device in refused {
        let replayed = once_space_returns(|| async {
            let (code, _, replayed) = keyed_ack(&server, &device, event, &status).await;
            (code == 200).then_some(replayed)
        })
        .await;
        assert!(
            !replayed,
            "{device}'s receipt was refused, so nothing replays it"
        );
        recorded.push(device);
    }
    // Once recorded, its key replays it.
    let (code, answer, replayed) = keyed_ack(&server, &first_refused, event, &status).await;
    assert_eq!((code, replayed), (200, true), "{answer}");

    // The ledger: each recorded receipt once, and none of the refused attempts.
    let summary = server
        .get_json(&format!("/admin/receipts/Acks/{event}"))
        .await;
    let mut acknowledged: Vec<String> = summary["acknowledged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["device"].as_str().unwrap().to_owned())
        .collect();
    acknowledged.sort();
    let mut expected = recorded.clone();
    expected.sort();
    assert_eq!(acknowledged, expected);

    // The receipt stream from its start: each once, seqs rising.
    let mut stream = server
        .feed_path("/receipts/Acks", &[("Last-Event-ID", "0")])
        .await;
    let mut streamed = Vec::new();
    let mut seqs = Vec::new();
    while streamed.len() < recorded.len() {
        let item = stream.next().await;
        if item.event != "receipt" {
            continue;
        }
        let receipt: Value = serde_json::from_str(&item.data).unwrap();
        streamed.push(receipt["device"].as_str().unwrap().to_owned());
        seqs.push(item.id.parse::<u64>().unwrap());
    }
    streamed.sort();
    assert_eq!(streamed, expected);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    server.kill().await;
}

/// A keyed push to the full disk's channel.
async fn keyed_push(server: &TestServer, key: &str, body: &str) -> (u16, Value, bool) {
    let request = server
        .http
        .post(server.url("/push/Together"))
        .body(body.to_owned());
    keyed(request, key).await
}

/// The pushes' side of the same: keyed pushes sent together share the transactions that fail,
/// and what a failed commit held is gone: no event stored, no id used, no key remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_pushes_sent_together_and_keeps_nothing_of_them() {
    let Some(disk) = small_disk() else {
        return;
    };
    let server = TestServer::start_in(disk.path(), &["-q", "--max-body", "65536"]).await;
    let mut feed = server.feed("Together", &[]).await;
    let body = "x".repeat(30_000);
    let (_, first, _) = keyed_push(&server, "k-first", &body).await;
    let mut acknowledged = vec![first["id"].as_u64().unwrap()];

    let filler = disk.fill();
    // Twenty keyed pushes at once, so that they share the transactions that fail.
    let (accepted, refused) = together_until_refused(|name| {
        let (server, body) = (&server, &body);
        async move { keyed_push(server, &format!("k-{name}"), body).await }
    })
    .await;
    acknowledged.extend(
        accepted
            .iter()
            .map(|(_, answer)| answer["id"].as_u64().unwrap()),
    );
    let refused: Vec<String> = refused.iter().map(|name| format!("k-{name}")).collect();

    std::fs::remove_file(filler).unwrap();
    // Each refused push sent again with its key is new: its key was not kept.
    for key in &refused {
        let (id, replayed) = once_space_returns(|| async {
            let (code, answer, replayed) = keyed_push(&server, key, "after").await;
            (code == 200).then(|| (answer["id"].as_u64().unwrap(), replayed))
        })
        .await;
        assert!(!replayed, "{key} was refused, so nothing replays it");
        acknowledged.push(id);
    }
    // An acknowledged push's key still replays it.
    let (code, answer, replayed) = keyed_push(&server, "k-first", &body).await;
    assert_eq!((code, replayed), (200, true), "{answer}");
    assert_eq!(answer["id"].as_u64(), Some(acknowledged[0]));

    acknowledged.sort_unstable();
    let expected: Vec<u64> = (1..=acknowledged.len() as u64).collect();
    assert_eq!(acknowledged, expected, "refused pushes used no id");
    let ids = stored_ids(&server, "Together").await;
    assert_eq!(
        ids, acknowledged,
        "exactly the acknowledged pushes are stored"
    );
    assert_eq!(
        feed.next_ids(acknowledged.len()).await,
        acknowledged,
        "the open feed heard each acknowledged push once, in order"
    );
    server.kill().await;
}
