//! Unit tests of the hub over the memory store: order, resume, the seam under concurrent
//! publishing, slow subscribers, device cursors, gap notices and receipt summaries.

use std::sync::Arc;
use std::time::Duration;

use pere_core::hub::ReceiptSummary;
use pere_core::store::Store as _;
use pere_core::{
    ChannelName, DeviceId, FeedItem, Hub, HubConfig, MemoryStore, NewEvent, Retention, StoreError, SubscribeRequest,
    Subscription,
};
use tokio::time::timeout;

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn dev(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

fn text(body: &str) -> NewEvent {
    NewEvent { publisher: None, event_type: None, body: body.to_owned() }
}

fn hub_with(retention: Retention, config: HubConfig) -> Arc<Hub<MemoryStore>> {
    Hub::new(MemoryStore::new(retention), config)
}

fn hub() -> Arc<Hub<MemoryStore>> {
    hub_with(Retention { max_events: 100_000, max_age: None }, HubConfig::default())
}

fn from(id: Option<u64>, device: Option<&str>) -> SubscribeRequest {
    SubscribeRequest { device: device.map(dev), last_event_id: id, last_event_id_raw: None }
}

async fn next_id(sub: &mut Subscription<MemoryStore>) -> u64 {
    match timeout(Duration::from_secs(5), sub.next()).await.expect("no item within 5 s") {
        Some(Ok(FeedItem::Event(e))) => e.id,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn live_events_arrive_in_order() {
    let hub = hub();
    let c = ch("C");
    let mut a = hub.subscribe(&c, from(None, None)).await.unwrap();
    let mut b = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    for i in 1..=3 {
        let event = hub.publish(&c, text(&format!("e{i}"))).await.unwrap();
        assert_eq!(event.id, i);
    }
    for sub in [&mut a, &mut b] {
        for i in 1..=3 {
            assert_eq!(next_id(sub).await, i);
        }
    }
    assert_eq!(hub.connections(), vec![(c.clone(), 2)]);
    drop(a);
    assert_eq!(hub.connections(), vec![(c, 1)]);
}

#[tokio::test]
async fn resume_replays_then_goes_live() {
    let hub = hub();
    let c = ch("C");
    for _ in 0..5 {
        hub.publish(&c, text("x")).await.unwrap();
    }
    let mut sub = hub.subscribe(&c, from(Some(2), None)).await.unwrap();
    hub.publish(&c, text("live")).await.unwrap();
    for expected in 3..=6 {
        assert_eq!(next_id(&mut sub).await, expected);
    }
    // A position beyond the head belongs to a forgotten history: say so, start from the beginning.
    let mut stale = hub.subscribe(&c, from(Some(99), None)).await.unwrap();
    match stale.next().await {
        Some(Ok(FeedItem::Reset { requested, head })) => assert_eq!((requested, head), (99, 6)),
        other => panic!("expected a reset notice, got {other:?}"),
    }
    assert_eq!(next_id(&mut stale).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_and_no_duplicate_at_the_seam_under_concurrent_publishing() {
    // Room for every event: this test reads only after publishing ends.
    let config = HubConfig { subscriber_buffer: 2048, replay_page: 16, ..HubConfig::default() };
    let hub = hub_with(Retention { max_events: 100_000, max_age: None }, config);
    let c = ch("Seam");
    const PUBLISHERS: u64 = 4;
    const EACH: u64 = 300;
    let total = PUBLISHERS * EACH;
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let (hub, c) = (hub.clone(), c.clone());
        publishers.push(tokio::spawn(async move {
            for _ in 0..EACH {
                hub.publish(&c, text("x")).await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    // Subscribers join while publishing is under way, each from a different position.
    let mut subscribers = Vec::new();
    for k in 0..20u64 {
        let head = hub.store().head(&c).await.unwrap();
        let start = if k % 2 == 0 { None } else { Some((k * 7).min(head)) };
        subscribers.push((start, hub.subscribe(&c, from(start, None)).await.unwrap()));
        tokio::task::yield_now().await;
    }
    for p in publishers {
        p.await.unwrap();
    }
    for (start, mut sub) in subscribers {
        let mut expected = start.unwrap_or(0) + 1;
        while expected <= total {
            assert_eq!(next_id(&mut sub).await, expected, "subscriber from {start:?}");
            expected += 1;
        }
        assert!(sub.try_next_live().is_none(), "nothing after the last event");
    }
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_and_the_others_are_not_slowed() {
    let config = HubConfig { subscriber_buffer: 4, ..HubConfig::default() };
    let hub = hub_with(Retention { max_events: 1000, max_age: None }, config);
    let c = ch("C");
    let mut stalled = hub.subscribe(&c, from(None, None)).await.unwrap();
    let mut reader = hub.subscribe(&c, from(None, None)).await.unwrap();
    for i in 1..=20 {
        hub.publish(&c, text("x")).await.unwrap();
        assert_eq!(next_id(&mut reader).await, i);
    }
    // The stalled one gets what was queued, then its stream ends; it lost nothing for good:
    // resuming from its last id replays the rest.
    let mut last = 0;
    while let Some(item) = stalled.next().await {
        if let Ok(FeedItem::Event(e)) = item {
            last = e.id;
        }
    }
    assert_eq!(last, 4);
    assert!(stalled.lagged());
    let mut resumed = hub.subscribe(&c, from(Some(last), None)).await.unwrap();
    for expected in 5..=20 {
        assert_eq!(next_id(&mut resumed).await, expected);
    }
    assert_eq!(hub.connections(), vec![(c, 2)]);
}

#[tokio::test]
async fn a_known_device_resumes_after_its_last_acknowledged_event() {
    let hub = hub();
    let c = ch("C");
    let h1 = dev("H1");
    let mut first = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    for _ in 0..5 {
        hub.publish(&c, text("x")).await.unwrap();
    }
    for i in 1..=3 {
        assert_eq!(next_id(&mut first).await, i);
        hub.acknowledge(&c, i, &h1, "rx ok".into()).await.unwrap();
    }
    drop(first);
    let mut again = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    assert_eq!(next_id(&mut again).await, 4);
    // An unknown device gets the whole retained history.
    let mut newcomer = hub.subscribe(&c, from(None, Some("H2"))).await.unwrap();
    assert_eq!(next_id(&mut newcomer).await, 1);
}

#[tokio::test]
async fn a_resume_into_pruned_history_is_told_of_the_gap() {
    let hub = hub_with(Retention { max_events: 3, max_age: None }, HubConfig::default());
    let c = ch("C");
    for _ in 0..6 {
        hub.publish(&c, text("x")).await.unwrap();
    }
    let mut sub = hub.subscribe(&c, from(Some(1), None)).await.unwrap();
    match sub.next().await {
        Some(Ok(FeedItem::Gap { from, to })) => assert_eq!((from, to), (2, 3)),
        other => panic!("expected a gap notice, got {other:?}"),
    }
    for expected in 4..=6 {
        assert_eq!(next_id(&mut sub).await, expected);
    }
    // From the beginning there is nothing to be told: the client asked for what is retained.
    let mut fresh = hub.subscribe(&c, from(None, None)).await.unwrap();
    assert_eq!(next_id(&mut fresh).await, 4);
}

#[tokio::test]
async fn receipt_summary_splits_acknowledged_delivered_and_pending() {
    let hub = hub();
    let c = ch("C");
    let mut h1 = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    let mut h2 = hub.subscribe(&c, from(None, Some("H2"))).await.unwrap();
    let h3 = hub.subscribe(&c, from(None, Some("H3"))).await.unwrap();
    drop(h3);
    let event = hub.publish(&c, text("x")).await.unwrap();
    assert_eq!(next_id(&mut h1).await, event.id);
    assert_eq!(next_id(&mut h2).await, event.id);
    hub.acknowledge(&c, event.id, &dev("H1"), "rx ok".into()).await.unwrap();
    let summary: ReceiptSummary = hub.receipt_summary(&c, event.id).await.unwrap();
    assert_eq!(summary.acknowledged.len(), 1);
    assert_eq!(summary.acknowledged[0].device, dev("H1"));
    assert_eq!(summary.acknowledged[0].status, "rx ok");
    assert_eq!(summary.delivered, vec![dev("H2")]);
    assert_eq!(summary.pending, vec![dev("H3")]);
    assert!(matches!(hub.receipt_summary(&c, 2).await, Err(StoreError::UnknownEvent { id: 2 })));
    assert!(matches!(
        hub.acknowledge(&c, 9, &dev("H1"), "ok".into()).await,
        Err(StoreError::UnknownEvent { id: 9 })
    ));
    let devices = hub.devices(&c).await.unwrap();
    let online: Vec<(String, usize)> =
        devices.iter().map(|d| (d.record.device.to_string(), d.open_streams)).collect();
    assert_eq!(online, vec![("H1".into(), 1), ("H2".into(), 1), ("H3".into(), 0)]);
}
