//! A scripted round trip through an embedded PERE server: start the server inside this process on
//! a free port, subscribe a device, publish an event, send the device's return receipt, and ask
//! the server who acknowledged what.
//!
//! Run: `./target/release/examples/round_trip` (built by the README's tour)

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use pere_core::MemoryStore;
use pere_server::{retention, run, AppState, Config};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // 1. The server, embedded: any `Store` works; memory keeps the example free of files.
    let mut config = Config::defaults();
    config.quiet = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    // Loopback only: the protected mode (no token key) is enough here.
    let mode = config.mode()?;
    let state = AppState::new(MemoryStore::new(retention(&config)), config, mode);
    let shutdown = state.shutdown.clone();
    let server = tokio::spawn(run(listener, state));
    println!("server on {base}");

    // 2. A device subscribes. A 200 answer means it is registered: nothing published after
    //    this point can be missed.
    let http = reqwest::Client::new();
    let feed = http
        .get(format!("{base}/feed/ORDERS"))
        .header("device", "H0039000000001")
        .send()
        .await?;
    let mut events = feed.bytes_stream().eventsource();

    // 3. A publisher pushes an event; the answer carries its id.
    let accepted: Value = http
        .post(format!("{base}/push/ORDERS"))
        .header("device", "P0039000000001")
        .json(&json!({"order": 42, "action": "ship"}))
        .send()
        .await?
        .json()
        .await?;
    println!("pushed: {accepted}");

    // 4. The device receives it and returns a receipt with the status of its local work.
    let event = loop {
        let event = events.next().await.ok_or("feed ended")??;
        if !event.data.is_empty() {
            break event;
        }
    };
    println!("received id {}: {}", event.id, event.data);
    let receipt: Value = http
        .post(format!("{base}/feedback/ORDERS"))
        .json(&json!({"device": "H0039000000001", "id": event.id.parse::<u64>()?, "status": "shipped"}))
        .send()
        .await?
        .json()
        .await?;
    println!("receipt: {receipt}");

    // 5. The ledger: who acknowledged event 1, with what status.
    let summary: Value = http
        .get(format!("{base}/events/ORDERS/{}", event.id))
        .send()
        .await?
        .json()
        .await?;
    println!("summary: {}", summary["receipts"]);

    shutdown.cancel();
    drop(events);
    server.await??;
    Ok(())
}
