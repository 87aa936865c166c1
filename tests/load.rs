//! End-to-end tests under concurrency: subscribers joining while publishers push (no gap, no
//! duplicate), and a stalled subscriber that must neither grow the server's memory nor slow
//! the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pere_e2e::{on_every_store, StoreUnderTest, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn subscribers_joining_during_concurrent_publishing_see_no_gap_and_no_duplicate(
    store: StoreUnderTest,
) {
    let server = std::sync::Arc::new(TestServer::start_on(store, &["--quiet"]).await);
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 150;
    let total = PUBLISHERS * EACH;
    // The highest id a publisher has been answered with: a position that surely exists.
    let published = std::sync::Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (server, published) = (server.clone(), published.clone());
        publishers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let id = server.push("Busy", &format!("p{p}-{i}")).await;
                published.fetch_max(id, Ordering::Relaxed);
            }
        }));
    }
    let mut feeds = Vec::new();
    for k in 0..12u64 {
        // Half resume from a position already published, half from the start.
        let start = if k % 2 == 1 {
            published.load(Ordering::Relaxed)
        } else {
            0
        };
        let headers: Vec<(&str, String)> = if start > 0 {
            vec![("Last-Event-ID", start.to_string())]
        } else {
            vec![]
        };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        feeds.push((start, server.feed("Busy", &headers).await));
    }
    for p in publishers {
        p.await.unwrap();
    }
    for (start, mut feed) in feeds {
        let ids = feed.next_ids((total - start) as usize).await;
        let expected: Vec<u64> = (start + 1..=total).collect();
        assert_eq!(ids, expected, "feed from {start}");
    }
}

async fn a_stalled_subscriber_is_cut_without_growing_memory_or_slowing_others(
    store: StoreUnderTest,
) {
    let server = TestServer::start_on(
        store,
        &[
            "--quiet",
            "--subscriber-buffer",
            "32",
            "--retention-events",
            "50",
            "--max-body",
            "65536",
        ],
    )
    .await;
    // A subscriber that sends its request and then never reads a byte.
    let address = server.host_port();
    let mut stalled = TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(b"GET /feed/Wide HTTP/1.1\r\nHost: localhost\r\ndevice: STALLED\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    stalled.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut healthy = server.feed("Wide", &[("device", "HEALTHY")]).await;
    let before = server.rss_kib();

    // 64 MiB of events through the channel: far more than socket buffers and queues can hold.
    let body = "x".repeat(32 * 1024);
    for i in 1..=2048u64 {
        assert_eq!(server.push("Wide", &body).await, i);
        let event = healthy.next().await;
        assert_eq!(event.id, i.to_string());
    }
    let after = server.rss_kib();
    assert!(
        after < before + 32 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );

    // The stalled one was cut: only the healthy feed remains on the channel.
    let connections = server.get_json("/admin/connections").await;
    assert_eq!(connections["Wide"], 1, "{connections}");
    let devices = server.get_json("/admin/devices/Wide").await;
    assert!(devices["STALLED"]["last_delivered"].as_u64().unwrap() < 2048);
    // Its socket was closed by the server once it had drained what the kernel buffered.
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        let mut sink = vec![0u8; 1 << 20];
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the stalled subscriber's connection was not closed"
    );
}

/// A feed whose client reads nothing until a burst far larger than the socket's buffers was
/// published: what the socket did not take at once is written as it drains, every frame whole
/// and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_read_late_gets_every_frame_whole_and_in_order() {
    let server = TestServer::start(&[
        "--quiet",
        "--subscriber-buffer",
        "1024",
        "--max-body",
        "65536",
    ])
    .await;
    let mut late = server.raw_get("/feed/Burst?device=LATE").await;
    let mut head = [0u8; 12];
    late.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // 16 MiB, in events of different lengths, so that writes stop at every place in a frame.
    let bodies: Vec<String> = (0..512usize)
        .map(|i| format!("{i}:{}", "y".repeat(16 * 1024 + (i * 97) % 32_000)))
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(server.push("Burst", body).await, i as u64 + 1);
    }
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let expected_end = format!("id: {}\n", bodies.len());
    while !String::from_utf8_lossy(&received).contains(&expected_end)
        || !received.ends_with(b"\n\n")
    {
        let n = tokio::time::timeout(pere_e2e::WAIT, late.read(&mut chunk))
            .await
            .expect("the rest in time")
            .unwrap();
        assert!(n > 0, "closed after {} bytes", received.len());
        received.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(received).unwrap();
    let events: Vec<(String, String)> = text
        .split("\n\n")
        .filter_map(|frame| {
            let id = frame.lines().find_map(|l| l.strip_prefix("id: "))?;
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((id.to_string(), data.to_string()))
        })
        .collect();
    assert_eq!(events.len(), bodies.len());
    for (i, ((id, data), body)) in events.iter().zip(&bodies).enumerate() {
        assert_eq!(*id, (i + 1).to_string());
        assert!(data == body, "event {} arrived altered", i + 1);
    }
}

on_every_store!(
    subscribers_joining_during_concurrent_publishing_see_no_gap_and_no_duplicate,
    a_stalled_subscriber_is_cut_without_growing_memory_or_slowing_others,
);

/// `pere-bench witness`, the fan-out benchmark's second witness, counts every delivery of a
/// short paced run and reports latencies from its own clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fan_out_witness_counts_every_delivery() {
    let server = TestServer::start(&["--quiet"]).await;
    let output = tokio::process::Command::new(pere_e2e::bin_path("pere-bench"))
        .args([
            "witness",
            "-u",
            &server.url(""),
            "-n",
            "5",
            "-r",
            "50",
            "-d",
            "0.4",
        ])
        .output();
    let output = tokio::time::timeout(pere_e2e::WAIT, output)
        .await
        .expect("the witness finished in time")
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["published"]["ok"], 20, "{report}");
    assert_eq!(report["deliveries"]["expected"], 100, "{report}");
    assert_eq!(report["deliveries"]["lost"], 0, "{report}");
    assert!(
        report["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
