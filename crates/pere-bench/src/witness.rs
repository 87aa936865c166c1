//! A second witness for paced fan-out latency: the same measurement as `fanout` (one channel,
//! paced pushes carrying their send time, latency = arrival − send time on one clock), taken
//! with none of `pere-bench`'s own client code: subscribers are `reqwest` streams parsed by
//! `eventsource-stream`, the publisher is a `reqwest` client. Where the two generators disagree
//! on a server, the difference is the generator's, not the server's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// `pere-bench witness`.
#[derive(Debug, Args)]
pub struct WitnessArgs {
    /// The server, http://HOST:PORT; it must be on this machine.
    #[arg(short = 'u', long, default_value = "http://127.0.0.1:4567")]
    pub url: String,
    /// Subscribers, all on one channel.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Events per second.
    #[arg(short = 'r', long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Publishing connections; publisher k sends events k, k+K, … each at its scheduled time,
    /// or at once when it falls behind. With one, each push waits for the last answer, and a
    /// server that answers late delays the sends (its backlog then stays out of the latency).
    #[arg(short = 'k', long, default_value_t = 1)]
    pub publishers: usize,
    /// The channel (a fresh one per run keeps runs apart).
    #[arg(long, default_value = "witness")]
    pub channel: String,
    /// Seconds to wait for the last deliveries after publishing ends.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Stop after this many seconds whatever happens.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
}

/// Runs the scenario against `target` and returns its report.
pub async fn run(target: SocketAddr, args: &WitnessArgs) -> anyhow::Result<Value> {
    let base = format!("http://{target}");
    let epoch = Instant::now();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.subscribers + 4)
        .build()?;
    let feed_url = format!("{base}/feed/{}", args.channel);
    let received = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let response = client
            .get(&feed_url)
            .header("Accept", "text/event-stream")
            .header("device", format!("witness{i}"))
            .send()
            .await?
            .error_for_status()?;
        let received = received.clone();
        let mut stopped = stopped.clone();
        subscribers.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds");
            let mut events = response.bytes_stream().eventsource();
            loop {
                let event = tokio::select! {
                    _ = stopped.changed() => break,
                    event = events.next() => match event {
                        Some(Ok(event)) => event,
                        _ => break,
                    },
                };
                let arrived = epoch.elapsed().as_micros() as u64;
                let Ok(body) = serde_json::from_str::<Value>(&event.data) else {
                    continue;
                };
                let Some(sent) = body["t"].as_u64() else {
                    continue;
                };
                let _ = latencies.record(arrived.saturating_sub(sent).max(1));
                received.fetch_add(1, Relaxed);
            }
            latencies
        }));
    }

    let push_url = format!("{base}/push/{}", args.channel);
    let events = (args.rate * args.duration).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let publishers = args.publishers.max(1) as u64;
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let start = tokio::time::Instant::now();
    let mut sending = Vec::new();
    for k in 0..publishers {
        let (push_url, accepted) = (push_url.clone(), accepted.clone());
        sending.push(tokio::spawn(async move {
            // A client each: its own keep-alive connection.
            let publisher = reqwest::Client::new();
            for seq in (k..events).step_by(publishers as usize) {
                tokio::time::sleep_until(start + interval.mul_f64(seq as f64)).await;
                let body = json!({"t": epoch.elapsed().as_micros() as u64, "seq": seq}).to_string();
                let answer = publisher
                    .post(&push_url)
                    .header("Content-Type", "application/json")
                    .header("device", "witness-publisher")
                    .body(body)
                    .send()
                    .await;
                if answer.is_ok_and(|a| a.status().is_success()) {
                    accepted.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    for publisher in sending {
        publisher.await?;
    }
    let accepted = accepted.load(Relaxed);
    let published_s = started.elapsed().as_secs_f64();
    let expected = accepted * args.subscribers as u64;
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    while received.load(Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    let mut latencies =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    for subscriber in subscribers {
        if let Ok(histogram) = subscriber.await {
            latencies.add(histogram)?;
        }
    }
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "scenario": "witness",
        "subscribers": args.subscribers,
        "publishers": publishers,
        "published": {"ok": accepted, "s": published_s},
        "deliveries": {
            "expected": expected,
            "count": received.load(Relaxed),
            "lost": expected.saturating_sub(received.load(Relaxed)),
        },
        "latency_ms": {
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": latencies.max() as f64 / 1000.0,
        },
    }))
}
