//! End-to-end tests of the command-line tools against the real server: the original demo (one
//! publisher, two subscribers, receipts in the server log), resume across a server restart with
//! nothing printed twice, and a clear failure when the server cannot be reached.

use pere_e2e::{bin_path, Proc, TestServer};

/// Starts `pere-sub` and waits until the server has its feed open.
async fn subscribe(server: &TestServer, channel: &str, device: &str, extra: &[&str]) -> Proc {
    let before = server
        .proc
        .lines()
        .iter()
        .filter(|l| l.contains(" FEED REQ>") && l.contains(device))
        .count();
    let host = server.host_port();
    let mut args = vec![host.as_str(), channel, device];
    args.extend_from_slice(extra);
    let sub = Proc::start("pere-sub", &args);
    server
        .proc
        .wait_lines(before + 1, |l| {
            l.contains(" FEED REQ>") && l.contains(device)
        })
        .await;
    sub
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_demo_publisher_two_subscribers_and_receipts() {
    let server = TestServer::start(&[]).await;
    let h1 = subscribe(&server, "CHANNEL_1", "H0039000000001", &[]).await;
    let h2 = subscribe(&server, "CHANNEL_1", "H0039000000002", &[]).await;
    h1.wait_line(|l| l.starts_with("LISTEN (device: H0039000000001), channel: CHANNEL_1"))
        .await;

    let host = server.host_port();
    let mut publisher = Proc::start(
        "pere-pub",
        &[&host, "CHANNEL_1", "--interval", "0.05", "--count", "5"],
    );
    assert_eq!(publisher.wait_exit().await, 0);
    let pushed = publisher.lines();
    assert!(
        pushed[0].starts_with("PUBLISH (device: P0039"),
        "{pushed:?}"
    );
    let events: Vec<&String> = pushed
        .iter()
        .filter(|l| l.starts_with("PUSH EVT> event: "))
        .collect();
    assert_eq!(events.len(), 5);
    // Each line ends with the id the server gave the event: 1 to 5 on a fresh channel.
    for (i, line) in events.iter().enumerate() {
        assert!(line.ends_with(&format!(", Event-Id: {}", i + 1)), "{line}");
    }
    let json = events[0]
        .trim_start_matches("PUSH EVT> event: ")
        .rsplit_once(", Event-Id: ")
        .unwrap()
        .0;
    let first: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(first["channel"], "CHANNEL_1");
    // The publisher's own counter is `pub_id`, as the original named it: an `id` in the body
    // would read as the event's id, which is the server's.
    assert_eq!(first["pub_id"], 1);
    assert!(first.get("id").is_none(), "{first}");
    let data_len = first["data"].as_str().unwrap().len();
    assert!((15..=32).contains(&data_len));

    for sub in [&h1, &h2] {
        let received = sub.wait_lines(5, |l| l.starts_with("RX EVT> id: ")).await;
        for (i, line) in received.iter().enumerate() {
            assert!(
                line.starts_with(&format!("RX EVT> id: {}, data: {{", i + 1)),
                "{line}"
            );
        }
        sub.wait_lines(5, |l| l.starts_with("TX ACK> id: ")).await;
    }
    // The server logs every receipt in the original's format.
    // pere-sub coalesces: a receipt that waits for the one in flight goes in the next request,
    // so five receipts may take fewer than five lines.
    let feedback = server
        .proc
        .wait_receipts(10, |l| {
            l.contains(" FEEDBACK> channel: CHANNEL_1") && l.ends_with("status: rx ok")
        })
        .await;
    assert!(feedback.len() <= 10, "{feedback:?}");
    let devices = server.get_json("/admin/devices/CHANNEL_1").await;
    assert_eq!(devices["H0039000000001"]["last_acked"], 5);
    assert_eq!(devices["H0039000000002"]["last_acked"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_sub_resumes_across_a_restart_and_prints_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(dir.path(), &["--retry-ms", "200"]).await;
    let port = server.host_port().rsplit(':').next().unwrap().to_owned();
    let sub = subscribe(&server, "Resume", "H1", &["--retries", "0"]).await;
    for i in 1..=3 {
        server.push("Resume", &format!("before-{i}")).await;
    }
    sub.wait_lines(3, |l| l.starts_with("TX ACK>")).await;
    server.kill().await;

    // Same port, same data: the subscriber reconnects by itself.
    let server = TestServer::start_in(dir.path(), &["-p", &port]).await;
    server
        .proc
        .wait_line(|l| l.contains(" FEED REQ>") && l.contains("H1"))
        .await;
    for i in 4..=5 {
        server.push("Resume", &format!("after-{i}")).await;
    }
    let received = sub.wait_lines(5, |l| l.starts_with("RX EVT>")).await;
    assert_eq!(
        received,
        vec![
            "RX EVT> id: 1, data: before-1",
            "RX EVT> id: 2, data: before-2",
            "RX EVT> id: 3, data: before-3",
            "RX EVT> id: 4, data: after-4",
            "RX EVT> id: 5, data: after-5",
        ]
    );
    server
        .proc
        .wait_receipts(2, |l| l.contains(" FEEDBACK> channel: Resume, device: H1"))
        .await;
    assert_eq!(
        sub.lines()
            .iter()
            .filter(|l| l.starts_with("RX EVT>"))
            .count(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_sub_follows_a_memory_server_that_lost_its_history() {
    let server = TestServer::start(&["--retry-ms", "200"]).await;
    let port = server.host_port().rsplit(':').next().unwrap().to_owned();
    let sub = subscribe(&server, "Fresh", "H1", &["--retries", "0"]).await;
    for i in 1..=3 {
        server.push("Fresh", &format!("old-{i}")).await;
    }
    sub.wait_lines(3, |l| l.starts_with("TX ACK>")).await;
    server.kill().await;

    // A memory server restarted: ids start over at 1, and pere-sub is told so.
    let server = TestServer::start_args(&["--store", "memory", "-p", &port]).await;
    server
        .proc
        .wait_line(|l| l.contains(" FEED REQ>") && l.contains("H1"))
        .await;
    server.push("Fresh", "new-1").await;
    server.push("Fresh", "new-2").await;
    let received = sub.wait_lines(5, |l| l.starts_with("RX EVT>")).await;
    assert_eq!(
        &received[3..],
        ["RX EVT> id: 1, data: new-1", "RX EVT> id: 2, data: new-2"]
    );
    assert!(
        sub.errors()
            .iter()
            .any(|l| l.starts_with("RESET> the server does not know event 3")),
        "{:?}",
        sub.errors()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_sub_gives_up_with_a_clear_message_when_the_server_is_unreachable() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut sub = Proc::start("pere-sub", &[&address, "C", "H1", "--retries", "2"]);
    assert_eq!(sub.wait_exit().await, 1);
    let errors = sub.errors().join("\n");
    assert!(
        errors.contains("cannot reach") && errors.contains("after 2 attempts"),
        "{errors}"
    );

    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &address,
            "C",
            "--retries",
            "2",
            "--retry-delay",
            "0.01",
            "--count",
            "1",
        ],
    );
    assert_eq!(publisher.wait_exit().await, 1);
    assert!(
        publisher
            .errors()
            .iter()
            .any(|l| l.starts_with("PUSH FAILED. event: ")),
        "{:?}",
        publisher.errors()
    );

    // A refused subscription (bad channel name) fails at once with the server's message.
    let server = TestServer::start(&[]).await;
    let mut refused = Proc::start("pere-sub", &[&server.host_port(), "bad channel", "H1"]);
    assert_eq!(refused.wait_exit().await, 2);
    assert!(
        refused
            .errors()
            .join("\n")
            .contains("channel may hold only"),
        "{:?}",
        refused.errors()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_sub_without_a_device_is_the_same_device_on_every_run() {
    let server = TestServer::start(&[]).await;
    let host = server.host_port();
    let config = tempfile::tempdir().unwrap();
    let start = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(bin_path("pere-sub"));
        command
            .args([host.as_str(), "C"])
            .args(extra)
            .env("XDG_CONFIG_HOME", config.path())
            .env_remove("PERE_DEVICE");
        Proc::start_with(&mut command)
    };
    let device_of = |line: &str| line["LISTEN (device: ".len()..line.find(')').unwrap()].to_owned();

    let mut first = start(&["--count", "1"]);
    let device = device_of(&first.wait_line(|l| l.starts_with("LISTEN (device: ")).await);
    assert!(
        device.len() == 14
            && device.starts_with("H0039")
            && device[5..].bytes().all(|b| b.is_ascii_digit()),
        "{device}"
    );
    let kept = config.path().join("pere").join("device-id");
    first
        .wait_line(|l| l.starts_with("device id kept in ") && l.contains(kept.to_str().unwrap()))
        .await;
    assert_eq!(std::fs::read_to_string(&kept).unwrap().trim(), device);
    server
        .proc
        .wait_line(|l| l.contains(" FEED REQ>") && l.contains(&device))
        .await;
    server.push("C", "one").await;
    assert_eq!(first.wait_exit().await, 0);

    // The second run is the same device: the channel has one recipient, and it is listening,
    // so a push that waits for every recipient is satisfied.
    let second = start(&[]);
    assert_eq!(
        device_of(
            &second
                .wait_line(|l| l.starts_with("LISTEN (device: "))
                .await
        ),
        device
    );
    server
        .proc
        .wait_lines(2, |l| l.contains(" FEED REQ>") && l.contains(&device))
        .await;
    let devices = server.get_json("/admin/devices/C").await;
    assert_eq!(
        devices.as_object().unwrap().keys().collect::<Vec<_>>(),
        [&device],
        "{devices}"
    );
    let waited = server
        .http
        .post(server.url("/push/C?wait=all&timeout=10s"))
        .body("two")
        .send()
        .await
        .unwrap();
    assert_eq!(waited.status(), 200);

    // A device argument, or PERE_DEVICE, overrides the kept one.
    let mut command = tokio::process::Command::new(bin_path("pere-sub"));
    command
        .args([host.as_str(), "C", "--count", "1"])
        .env("XDG_CONFIG_HOME", config.path())
        .env("PERE_DEVICE", "H2");
    let named = Proc::start_with(&mut command);
    let banner = named.wait_lines(2, |_| true).await;
    assert!(
        banner[0].starts_with("LISTEN (device: H2), channel: C") && banner[1].is_empty(),
        "{banner:?}"
    );
}

/// Sends SIGINT (what Ctrl-C sends) to a running tool.
fn interrupt(tool: &Proc) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &tool.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_either_tool_with_a_summary_and_status_0() {
    let server = TestServer::start(&[]).await;
    let host = server.host_port();
    let mut sub = subscribe(&server, "C", "H1", &[]).await;
    // No --count: only Ctrl-C stops these.
    let mut publisher = Proc::start(
        "pere-pub",
        &[&host, "C", "P1", "--interval", "0.02", "--wait", "all"],
    );
    sub.wait_lines(3, |l| l.starts_with("TX ACK> ")).await;
    publisher
        .wait_lines(3, |l| l.starts_with("PUSH EVT> "))
        .await;

    interrupt(&publisher);
    assert_eq!(publisher.wait_exit().await, 0, "{:?}", publisher.errors());
    let sent = publisher
        .lines()
        .iter()
        .filter(|l| l.starts_with("PUSH EVT> "))
        .count();
    let acknowledged = publisher
        .lines()
        .iter()
        .filter(|l| l.ends_with("acknowledged: 1/1"))
        .count();
    assert_eq!(
        publisher.errors(),
        [format!(
            "SUMMARY> sent: {sent}, acknowledged: {acknowledged}"
        )]
    );
    assert!(acknowledged >= 3, "{:?}", publisher.lines());

    // Every event the publisher sent has reached the subscriber and been acknowledged (the
    // publisher waited for each receipt).
    sub.wait_lines(sent, |l| l.starts_with("TX ACK> ")).await;
    interrupt(&sub);
    assert_eq!(sub.wait_exit().await, 0, "{:?}", sub.errors());
    let received = sub
        .lines()
        .iter()
        .filter(|l| l.starts_with("RX EVT> "))
        .count();
    let acked = sub
        .lines()
        .iter()
        .filter(|l| l.starts_with("TX ACK> "))
        .count();
    assert_eq!(
        sub.errors(),
        [format!(
            "SUMMARY> received: {received}, acknowledged: {acked}"
        )]
    );
    assert!(
        received >= sent && acked >= sent,
        "{received} {acked} {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pere_pub_batch_publishes_consecutive_ids() {
    let server = TestServer::start(&[]).await;
    let sub = subscribe(&server, "C", "H1", &["--count", "5"]).await;
    let mut publisher = Proc::start(
        "pere-pub",
        &[
            &server.host_port(),
            "C",
            "--count",
            "5",
            "--batch",
            "2",
            "--interval",
            "0",
        ],
    );
    assert_eq!(publisher.wait_exit().await, 0, "{:?}", publisher.errors());
    let lines = publisher.lines();
    let events: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("PUSH EVT> "))
        .collect();
    assert_eq!(events.len(), 5);
    for (i, line) in events.iter().enumerate() {
        assert!(line.ends_with(&format!(", Event-Id: {}", i + 1)), "{line}");
    }
    let received = sub.wait_lines(5, |l| l.starts_with("RX EVT> ")).await;
    assert!(
        received[4].starts_with("RX EVT> id: 5, data: {"),
        "{received:?}"
    );
}

/// An example of the workspace (built by `cargo build --examples`, as `tests/run-all.sh` does).
fn example(name: &str) -> tokio::process::Command {
    let path = bin_path("pere-server")
        .parent()
        .expect("target directory")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` first",
        path.display()
    );
    tokio::process::Command::new(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_examples_publish_and_acknowledge() {
    let server = TestServer::start(&[]).await;
    let host = server.host_port();
    let subscriber = Proc::start_with(example("subscribe").args([host.as_str(), "ORDERS", "3"]));
    subscriber.wait_line(|l| l == "listening").await;
    let mut publisher = Proc::start_with(example("publish").args([host.as_str(), "ORDERS"]));
    assert_eq!(publisher.wait_exit().await, 0, "{:?}", publisher.errors());
    assert_eq!(
        publisher.lines(),
        (1..=3)
            .map(|n| format!("order {n}: event {n}, acknowledged by H0039000000001 (shipped)"))
            .collect::<Vec<_>>()
    );
    let mut subscriber = subscriber;
    assert_eq!(subscriber.wait_exit().await, 0, "{:?}", subscriber.errors());
    assert_eq!(
        subscriber.lines()[1],
        r#"event 1: {"order":1}, acknowledged"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_example_says_who_a_wait_was_not_satisfied_by() {
    // A recipient that came once and left (a page opened for a moment): expected, never there.
    // The server caps every wait at 1 s, so the example's three waits end unsatisfied quickly.
    let server = TestServer::start(&["--max-wait", "1s"]).await;
    let registered = server
        .http
        .put(server.url("/devices/ORDERS/W0039000000009"))
        .send()
        .await
        .expect("register a recipient");
    assert_eq!(registered.status(), 200);
    let host = server.host_port();
    let mut publisher = Proc::start_with(example("publish").args([host.as_str(), "ORDERS"]));
    assert_eq!(publisher.wait_exit().await, 0, "{:?}", publisher.errors());
    let lines = publisher.lines();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for (n, line) in lines[..3].iter().enumerate() {
        let n = n + 1;
        assert!(
            line.starts_with(&format!(
                "order {n}: event {n}, acknowledged by no one; not acknowledged by every \
                 recipient (0 of 1) when the wait ended; pending (not reached): W0039000000009 \
                 (last seen "
            )),
            "{line}"
        );
        assert!(!line.contains("Some("), "no debug output: {line}");
    }
    assert!(
        lines[3].contains("--recipient-expiry") && lines[3].contains("DELETE"),
        "how to stop expecting a device: {}",
        lines[3]
    );
}
