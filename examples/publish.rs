//! Publish events with `pere_client::Publisher` and wait for their return receipts.
//!
//! Run against a server: `cargo run --example publish -- 127.0.0.1:4567 ORDERS`

use std::time::Duration;

use pere_client::{Publisher, Wait};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:4567".to_owned());
    let channel = args.next().unwrap_or_else(|| "ORDERS".to_owned());

    let publisher = Publisher::builder(server)
        .device("P0039000000001")
        .build()?;
    for order in 1..=3 {
        // Answered once every recipient of the channel acknowledged the event, or after 5 s.
        let pushed = publisher
            .push(&channel, serde_json::json!({ "order": order }))
            .wait(Wait::All, Duration::from_secs(5))
            .await?;
        let id = pushed.id();
        let acknowledged: Vec<String> = pushed
            .waited
            .into_iter()
            .flat_map(|w| w.receipts.acknowledged)
            .map(|a| format!("{} ({})", a.device, a.status))
            .collect();
        println!(
            "order {order}: event {id:?}, acknowledged by {}",
            acknowledged.join(", ")
        );
    }
    Ok(())
}
