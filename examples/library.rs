//! The README's *The Rust library* example, as the README has it (tests/readme.rs holds the two
//! the same), in a program: publish (waiting for receipts), publish a batch, then subscribe and
//! acknowledge each event until interrupted.
//!
//! Run against a server on 127.0.0.1:4567: `./target/release/examples/library` (built by the
//! README's tour).

// The README's lines as they are there, comments aligned by hand.
#[rustfmt::skip]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // The README's example, from here...
    use std::time::Duration;
    use futures_util::StreamExt;
    use pere_client::{Item, Publisher, Subscriber, Wait};

    let publisher = Publisher::builder("127.0.0.1:4567").device("P0039000000001").build()?;
    let pushed = publisher.push("ORDERS", serde_json::json!({"order": 42}))
        .wait(Wait::All, Duration::from_secs(5))   // optional: answer once every recipient acknowledged
        .await?;
    if pushed.satisfied() == Some(false) {          // not all within 5 s: the receipts say who
        let pending = pushed.receipts().map(|r| r.pending.join(", ")).unwrap_or_default();
        println!("not acknowledged by all; not reached yet: {pending}");
    }
    publisher.push_batch("ORDERS", ["a", "b", "c"]).await?;   // one request, consecutive ids

    let mut feed = Subscriber::builder("127.0.0.1:4567", "ORDERS").device("H0039000000001").build()?;
    while let Some(item) = feed.next().await {
        if let Item::Event(event) = item? {        // also Connected, Gap, Reset, Reconnecting, Acked
            event.ack("shipped").await?;           // the return receipt, with its status
        }
    }
    // ...to here.
    Ok(())
}
