//! Receive events with `pere_client::Subscriber` and return a receipt for each, with a status.
//!
//! Run against a server: `./target/release/examples/subscribe 127.0.0.1:4567 ORDERS 3` (stops
//! after 3 events; without a count it listens until interrupted).

use futures_util::StreamExt;
use pere_client::{Item, Subscriber};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:4567".to_owned());
    let channel = args.next().unwrap_or_else(|| "ORDERS".to_owned());
    let count: Option<u64> = args.next().map(|n| n.parse()).transpose()?;

    // The same device id on every run: the server expects its receipts, and resumes it where it
    // left off.
    let mut feed = Subscriber::builder(server, channel)
        .device("H0039000000001")
        .build()?;
    let mut handled = 0;
    while let Some(item) = feed.next().await {
        match item? {
            Item::Connected => println!("listening"),
            Item::Event(event) => {
                let order: serde_json::Value = event.json()?;
                event.ack("shipped").await?;
                println!("event {}: {order}, acknowledged", event.id);
                handled += 1;
                if count == Some(handled) {
                    break;
                }
            }
            Item::Gap { data, .. } => eprintln!("missed for good: {data}"),
            Item::Reconnecting(r) => {
                eprintln!("{}; reconnecting in {} ms", r.reason, r.delay.as_millis())
            }
            _ => {}
        }
    }
    Ok(())
}
