//! Publish events with `pere_client::Publisher` and wait for their return receipts.
//!
//! Run against a server: `./target/release/examples/publish 127.0.0.1:4567 ORDERS` (built by
//! the README's tour; `./target/debug/examples/` by the test command)
//!
//! Each push waits until every recipient of the channel acknowledged it, for 5 s at most. A
//! recipient is any device that subscribed (or was registered) in the last `--recipient-expiry`
//! (7 days), offline or not: a page opened once for a moment is one. When the wait ends
//! unsatisfied, the line says who was still pending and when each was last seen.

use std::time::Duration;

use pere_client::{Publisher, Pushed, Wait};

/// How long each push waits for its receipts (the server may cap it with `--max-wait`).
const WAIT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:4567".to_owned());
    let channel = args.next().unwrap_or_else(|| "ORDERS".to_owned());

    let publisher = Publisher::builder(&server)
        .device("P0039000000001")
        .build()?;
    let mut unsatisfied = false;
    for order in 1..=3 {
        // Answered once every recipient of the channel acknowledged the event, or after 5 s.
        let pushed = publisher
            .push(&channel, serde_json::json!({ "order": order }))
            .wait(Wait::All, WAIT)
            .await?;
        println!("order {order}: {}", describe(&pushed));
        unsatisfied |= pushed.satisfied() == Some(false);
    }
    if unsatisfied {
        println!(
            "a device stays a recipient for the server's --recipient-expiry (7 days by default) \
             after it was last seen; `curl -X DELETE http://{server}/devices/{channel}/DEVICE` \
             removes one now"
        );
    }
    Ok(())
}

/// What became of one push: its id, who acknowledged it and, when the wait ended unsatisfied,
/// who had it without acknowledging and who it never reached.
fn describe(pushed: &Pushed) -> String {
    let Some(id) = pushed.id() else {
        // The original PERE server answers a push with an empty 204.
        return "stored (the server gave no id)".to_owned();
    };
    let Some(receipts) = pushed.receipts() else {
        return format!("event {id}, stored (the server said nothing of receipts)");
    };
    if receipts.expected == 0 {
        return format!(
            "event {id}, expected by no recipient (no device subscribed to the channel)"
        );
    }
    let acknowledged: Vec<String> = receipts
        .acknowledged
        .iter()
        .map(|a| format!("{} ({})", a.device, a.status))
        .collect();
    let mut line = if acknowledged.is_empty() {
        format!("event {id}, acknowledged by no one")
    } else {
        format!("event {id}, acknowledged by {}", acknowledged.join(", "))
    };
    if pushed.satisfied() == Some(false) {
        let seen = |device: &String| match receipts.last_seen.get(device) {
            Some(at) => format!("{device} (last seen {at})"),
            None => format!("{device} (never seen)"),
        };
        line += &format!(
            "; not acknowledged by every recipient ({} of {}) when the wait ended",
            receipts.counts.acknowledged, receipts.expected
        );
        if !receipts.delivered.is_empty() {
            let delivered: Vec<String> = receipts.delivered.iter().map(seen).collect();
            line += &format!("; delivered, no receipt yet: {}", delivered.join(", "));
        }
        if !receipts.pending.is_empty() {
            let pending: Vec<String> = receipts.pending.iter().map(seen).collect();
            line += &format!("; pending (not reached): {}", pending.join(", "));
        }
    }
    line
}
