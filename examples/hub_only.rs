//! The engine without HTTP: a `Hub` over the in-memory store, for applications that want PERE's
//! ordering, resume and receipt ledger inside their own transport.
//!
//! Run: `./target/release/examples/hub_only` (built by the README's tour)

use pere_core::{
    ChannelName, DeviceId, FeedItem, Hub, HubConfig, MemoryStore, NewEvent, Retention,
    SubscribeRequest,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let hub = Hub::new(MemoryStore::new(Retention::default()), HubConfig::default());
    let channel = ChannelName::new("CHANNEL_1")?;
    let device = DeviceId::new("H0039000000001")?;

    let mut subscription = hub
        .subscribe(
            &channel,
            SubscribeRequest {
                device: Some(device.clone()),
                ..SubscribeRequest::default()
            },
        )
        .await?;
    for text in ["first", "second\nwith two lines"] {
        let new = NewEvent {
            publisher: None,
            event_type: None,
            body: text.to_owned(),
            idempotency_key: None,
        };
        let event = hub.publish(&channel, new).await?.event;
        println!("published {} as id {}", text.escape_debug(), event.id);
    }
    for _ in 0..2 {
        if let Some(Ok(FeedItem::Event(event))) = subscription.next().await {
            // The frame is what goes on the wire, encoded once for every subscriber.
            print!("frame:\n{}", String::from_utf8_lossy(event.frame()));
            hub.acknowledge(&channel, event.id, &device, "rx ok".to_owned())
                .await?;
        }
    }
    let summary = hub.receipt_summary(&channel, 2).await?;
    let devices: Vec<&str> = summary
        .acknowledged
        .iter()
        .map(|r| r.device.as_str())
        .collect();
    println!(
        "event 2 acknowledged by {}, complete: {}",
        devices.join(", "),
        summary.complete()
    );
    Ok(())
}
