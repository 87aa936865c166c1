//! Idle HTTP/2 subscribers: `-n` feed streams spread over `--connections` HTTP/2 connections
//! (prior knowledge, no TLS), held open; the server's memory per stream, to set beside `idle`'s
//! memory per HTTP/1.1 feed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::procfs::Probe;

/// `pere-bench idle-h2`.
#[derive(Debug, Args)]
pub struct IdleH2Args {
    /// The server, http://HOST:PORT; it must be on this machine.
    #[arg(short = 'u', long, default_value = "http://127.0.0.1:4567")]
    pub url: String,
    /// Feed streams to open.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub streams: usize,
    /// HTTP/2 connections the streams are spread over (the server allows
    /// --max-streams-per-connection on each, 100 by default).
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Channels; stream `i` reads channel `i % channels`.
    #[arg(short = 'c', long, default_value_t = 1)]
    pub channels: usize,
    /// Seconds to wait after the last stream is answered, before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Seconds to hold the streams after measuring, and measure again.
    #[arg(short = 'd', long, default_value_t = 2.0)]
    pub duration: f64,
    /// The server's process (repeatable), for its memory.
    #[arg(long = "server-pid", required = true)]
    pub server_pids: Vec<u32>,
    /// A label copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Overall seconds after which the run stops with status 2.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
}

/// Opens the streams, measures, holds, measures again; the report as JSON.
///
/// # Errors
/// A connection or a stream that fails to open.
pub async fn idle(target: SocketAddr, args: &IdleH2Args) -> anyhow::Result<Value> {
    let probe = Probe::new(args.server_pids.clone());
    let before = probe
        .sample()
        .ok_or_else(|| anyhow::anyhow!("no server process to measure"))?;
    let start = Instant::now();
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let tcp = TcpStream::connect(target).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tcp))
            .await?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    let answered = Arc::new(AtomicU64::new(0));
    let bytes_read = Arc::new(AtomicU64::new(0));
    let mut opening = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let mut sender = senders[i % senders.len()].clone();
        let request = Request::get(format!(
            "http://{target}/feed/h2c{}",
            i % args.channels.max(1)
        ))
        .header("device", format!("h2d{i}"))
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())?;
        let (answered, bytes_read) = (answered.clone(), bytes_read.clone());
        opening.push(tokio::spawn(async move {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            anyhow::ensure!(
                response.status() == 200,
                "a feed answered {}",
                response.status()
            );
            answered.fetch_add(1, Relaxed);
            // Read what comes (retry:, keep-alives) so flow control never holds the stream.
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                if let Some(data) = frame?.data_ref() {
                    bytes_read.fetch_add(data.len() as u64, Relaxed);
                }
            }
            Ok(())
        }));
    }
    while answered.load(Relaxed) < args.streams as u64 {
        if let Some(failed) = opening.iter().position(|t| t.is_finished()) {
            opening.swap_remove(failed).await??;
            anyhow::bail!("a stream ended before all were open");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let opened = probe.sample().unwrap_or_default();
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let held = probe.sample().unwrap_or_default();
    let per = |after: u64, before: u64| {
        ((after.saturating_sub(before) as f64) / args.streams.max(1) as f64 * 100.0).round() / 100.0
    };
    Ok(json!({
        "scenario": "idle-h2",
        "label": args.label,
        "streams": args.streams,
        "connections": senders.len(),
        "channels": args.channels,
        "open_s": (open_s * 1000.0).round() / 1000.0,
        "stream_bytes_read": bytes_read.load(Relaxed),
        "server": {
            "before": before.json(),
            "opened": opened.json(),
            "held": held.json(),
            "per_stream_kib": {
                "pss": per(opened.pss_kib, before.pss_kib),
                "rss": per(opened.rss_kib, before.rss_kib),
                "pss_held": per(held.pss_kib, before.pss_kib),
            },
        },
    }))
}
