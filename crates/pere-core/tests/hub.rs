//! Unit tests of the hub over the memory store: order, resume, the seam under concurrent
//! publishing, slow subscribers, device cursors, gap notices, receipt summaries, idempotent
//! publishing, the sequencer's bounded wait for a missing id, observers and the receipt follow,
//! presence shared through a store.

use std::sync::Arc;
use std::time::Duration;

use pere_core::hub::{GAP_WAIT, IDLE_CHANNEL, KEEP_INCOMPLETE};
use pere_core::store::Store as _;
use pere_core::{
    ChannelName, CutReason, DeviceId, FeedItem, Hub, HubConfig, HubNotice, MemoryStore, NewEvent,
    ReceiptFollow, ReceiptItem, Retention, StoreError, SubscribeRequest, Subscription, WaitFor,
};
use pere_proto::event::{now, Event};
use pere_proto::receipt::ReceiptSummary;
use tokio::time::timeout;

fn ch(name: &str) -> ChannelName {
    ChannelName::new(name).unwrap()
}

fn dev(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

fn text(body: &str) -> NewEvent {
    NewEvent {
        publisher: None,
        event_type: None,
        body: body.to_owned(),
        idempotency_key: None,
    }
}

fn hub_with(retention: Retention, config: HubConfig) -> Arc<Hub<MemoryStore>> {
    Hub::new(MemoryStore::new(retention), config)
}

/// A hub whose store keeps a channel's last 100 events.
fn hub_keeping_100(config: HubConfig) -> Arc<Hub<MemoryStore>> {
    hub_with(
        Retention {
            max_events: 100,
            max_age: None,
            idempotency_window: None,
        },
        config,
    )
}

fn hub() -> Arc<Hub<MemoryStore>> {
    hub_with(
        Retention {
            max_events: 100_000,
            max_age: None,
            idempotency_window: None,
        },
        HubConfig::default(),
    )
}

fn from(id: Option<u64>, device: Option<&str>) -> SubscribeRequest {
    SubscribeRequest {
        device: device.map(dev),
        last_event_id: id,
        last_event_id_raw: None,
    }
}

async fn next_id(sub: &mut Subscription<MemoryStore>) -> u64 {
    match timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("no item within 5 s")
    {
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
        let event = hub.publish(&c, text(&format!("e{i}"))).await.unwrap().event;
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

#[tokio::test]
async fn what_is_ready_is_taken_without_waiting_a_replayed_page_then_live_events() {
    let config = HubConfig {
        replay_page: 3,
        ..HubConfig::default()
    };
    let hub = hub_keeping_100(config);
    let c = ch("Ready");
    for _ in 0..5 {
        hub.publish(&c, text("x")).await.unwrap();
    }
    let mut sub = hub.subscribe(&c, from(Some(0), None)).await.unwrap();
    assert!(sub.try_next().is_none(), "no page read yet");
    assert_eq!(next_id(&mut sub).await, 1);
    let ready = |sub: &mut Subscription<MemoryStore>| match sub.try_next() {
        Some(FeedItem::Event(e)) => Some(e.id),
        None => None,
        other => panic!("expected an event, got {other:?}"),
    };
    assert_eq!((ready(&mut sub), ready(&mut sub)), (Some(2), Some(3)));
    assert_eq!(ready(&mut sub), None, "the next page is read by next()");
    assert_eq!(next_id(&mut sub).await, 4);
    assert_eq!(ready(&mut sub), Some(5));
    hub.publish(&c, text("live")).await.unwrap();
    assert_eq!(ready(&mut sub), Some(6), "live once replay is done");
    assert_eq!(ready(&mut sub), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_and_no_duplicate_at_the_seam_under_concurrent_publishing() {
    // Room for every event: this test reads only after publishing ends.
    let config = HubConfig {
        subscriber_buffer: 2048,
        replay_page: 16,
        ..HubConfig::default()
    };
    let hub = hub_with(
        Retention {
            max_events: 100_000,
            max_age: None,
            idempotency_window: None,
        },
        config,
    );
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
        let start = if k % 2 == 0 {
            None
        } else {
            Some((k * 7).min(head))
        };
        subscribers.push((start, hub.subscribe(&c, from(start, None)).await.unwrap()));
        tokio::task::yield_now().await;
    }
    for p in publishers {
        p.await.unwrap();
    }
    for (start, mut sub) in subscribers {
        let mut expected = start.unwrap_or(0) + 1;
        while expected <= total {
            assert_eq!(
                next_id(&mut sub).await,
                expected,
                "subscriber from {start:?}"
            );
            expected += 1;
        }
        assert!(sub.try_next().is_none(), "nothing after the last event");
    }
}

#[tokio::test]
async fn a_stalled_subscriber_is_cut_and_the_others_are_not_slowed() {
    let config = HubConfig {
        subscriber_buffer: 4,
        ..HubConfig::default()
    };
    let hub = hub_with(
        Retention {
            max_events: 1000,
            max_age: None,
            idempotency_window: None,
        },
        config,
    );
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

/// The next item's kind and how long after `since` it came (on the paused clock).
async fn next_after(
    sub: &mut Subscription<MemoryStore>,
    since: tokio::time::Instant,
) -> (String, Duration) {
    let item = timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("an item within a minute");
    let kind = match item {
        Some(Ok(FeedItem::KeepAlive)) => "keep-alive".to_owned(),
        Some(Ok(FeedItem::Event(e))) => format!("event {}", e.id),
        other => format!("{other:?}"),
    };
    (kind, since.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_quiet_feed_hears_keep_alives_within_the_period_and_not_more_often() {
    let every = Duration::from_secs(10);
    let hub = hub_keeping_100(HubConfig {
        keep_alive: Some(every),
        ..HubConfig::default()
    });
    let c = ch("Quiet");
    let opened = tokio::time::Instant::now();
    let mut sub = hub.subscribe(&c, from(None, Some("K1"))).await.unwrap();
    // Never later than the period after the opening, never sooner than half of it.
    let (kind, after) = next_after(&mut sub, opened).await;
    assert_eq!(kind, "keep-alive");
    assert!(after >= every / 2 && after <= every, "{after:?}");
    // Quiet on: one a period.
    let since = tokio::time::Instant::now();
    assert_eq!(
        next_after(&mut sub, since).await,
        ("keep-alive".into(), every)
    );
    // An event pushes the next one back: it comes after half to one period of silence.
    tokio::time::advance(every / 5).await;
    hub.publish(&c, text("x")).await.unwrap();
    let published = tokio::time::Instant::now();
    assert_eq!(next_after(&mut sub, published).await.0, "event 1");
    let (kind, after) = next_after(&mut sub, published).await;
    assert_eq!(kind, "keep-alive");
    assert!(after >= every / 2 && after <= every, "{after:?}");

    // Without the setting, none: a hub embedded elsewhere writes no comments.
    let silent = hub_keeping_100(HubConfig::default());
    let mut sub = silent.subscribe(&c, from(None, None)).await.unwrap();
    assert!(timeout(every * 3, sub.next()).await.is_err());
}

#[tokio::test]
async fn ending_the_feeds_ends_every_feed_and_the_ones_that_open_after() {
    let hub = hub();
    let c = ch("Stopping");
    let mut open = hub.subscribe(&c, from(None, Some("S1"))).await.unwrap();
    hub.publish(&c, text("queued")).await.unwrap();
    hub.end_feeds();
    // What was queued is read, then the end, which is no lag.
    assert_eq!(next_id(&mut open).await, 1);
    assert!(open.next().await.is_none());
    assert_eq!(open.cut_reason(), Some(CutReason::Stopping));
    assert!(!open.lagged());
    // A publish afterwards queues nothing and cuts no one for lagging.
    let mut notices = hub.observe(16);
    hub.publish(&c, text("after")).await.unwrap();
    while let Ok(notice) = notices.try_recv() {
        assert!(
            !matches!(notice, HubNotice::SubscriberCut { .. }),
            "{notice:?}"
        );
    }
    // A feed opening now, on this channel or one not loaded yet, ends at once.
    for channel in [c, ch("Later")] {
        let mut late = hub.subscribe(&channel, from(None, None)).await.unwrap();
        let ended = timeout(Duration::from_secs(5), async {
            while late.next().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "{channel} still open");
        assert_eq!(late.cut_reason(), Some(CutReason::Stopping));
    }
    assert_eq!(hub.connections(), vec![]);
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
    let hub = hub_with(
        Retention {
            max_events: 3,
            max_age: None,
            idempotency_window: None,
        },
        HubConfig::default(),
    );
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
    let event = hub.publish(&c, text("x")).await.unwrap().event;
    assert_eq!(next_id(&mut h1).await, event.id);
    assert_eq!(next_id(&mut h2).await, event.id);
    hub.acknowledge(&c, event.id, &dev("H1"), "rx ok".into())
        .await
        .unwrap();
    let summary: ReceiptSummary = hub.receipt_summary(&c, event.id).await.unwrap();
    assert_eq!(summary.acknowledged.len(), 1);
    assert_eq!(summary.acknowledged[0].device, dev("H1"));
    assert_eq!(&*summary.acknowledged[0].status, "rx ok");
    assert_eq!(summary.delivered, vec![dev("H2")]);
    assert_eq!(summary.pending, vec![dev("H3")]);
    assert!(matches!(
        hub.receipt_summary(&c, 2).await,
        Err(StoreError::UnknownEvent { id: 2 })
    ));
    assert!(matches!(
        hub.acknowledge(&c, 9, &dev("H1"), "ok".into()).await,
        Err(StoreError::UnknownEvent { id: 9 })
    ));
    let devices = hub.devices(&c).await.unwrap();
    let online: Vec<(String, usize)> = devices
        .iter()
        .map(|d| (d.record.device.to_string(), d.open_streams))
        .collect();
    assert_eq!(
        online,
        vec![("H1".into(), 1), ("H2".into(), 1), ("H3".into(), 0)]
    );
}

fn keyed(key: &str, body: &str) -> NewEvent {
    NewEvent {
        idempotency_key: Some(key.to_owned()),
        ..text(body)
    }
}

#[tokio::test]
async fn publishing_a_known_key_again_changes_nothing() {
    let hub = hub();
    let c = ch("C");
    let mut sub = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    let first = hub.publish(&c, keyed("K", "x")).await.unwrap();
    assert!(first.new);
    assert_eq!(next_id(&mut sub).await, first.event.id);
    hub.acknowledge(&c, first.event.id, &dev("H1"), "ok".into())
        .await
        .unwrap();
    let mut notices = hub.observe(16);

    let again = hub.publish(&c, keyed("K", "y")).await.unwrap();
    assert!(!again.new);
    assert_eq!(
        (again.event.id, again.event.body.as_str()),
        (first.event.id, "x")
    );
    assert!(hub
        .receipt_summary(&c, first.event.id)
        .await
        .unwrap()
        .complete());
    // The ledger was not made to follow it afresh: its acknowledgement stands.
    assert!(hub
        .wait_for_receipts(&c, first.event.id, WaitFor::All, Duration::ZERO)
        .await
        .unwrap());
    assert!(sub.try_next().is_none(), "delivered once");
    assert!(notices.try_recv().is_err(), "nobody is told of it");
}

#[tokio::test(start_paused = true)]
async fn events_behind_a_missing_id_wait_for_it_at_most_gap_wait() {
    let hub = hub();
    let c = ch("Gap");
    let mut sub = hub.subscribe(&c, from(None, None)).await.unwrap();
    // Three events stored, 2 never applied: as if its publisher died between append and apply.
    let mut stored = Vec::new();
    for i in 1..=3 {
        stored.push(
            hub.store()
                .append(&c, text(&format!("e{i}")))
                .await
                .unwrap()
                .event,
        );
    }
    hub.apply_published(&c, stored[0].clone()).await.unwrap();
    hub.apply_published(&c, stored[2].clone()).await.unwrap();
    assert_eq!(next_id(&mut sub).await, 1);
    tokio::time::advance(GAP_WAIT - Duration::from_millis(1)).await;
    assert!(sub.try_next().is_none(), "3 waits for 2");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(next_id(&mut sub).await, 2, "read from the store");
    assert_eq!(next_id(&mut sub).await, 3);
    // Applied late, it is not delivered again.
    hub.apply_published(&c, stored[1].clone()).await.unwrap();
    assert!(sub.try_next().is_none());

    // An id the store does not have is skipped.
    let lost = ch("Lost");
    let mut sub = hub.subscribe(&lost, from(None, None)).await.unwrap();
    let event = |id| Arc::new(Event::new(lost.clone(), id, now(), text("x")));
    hub.apply_published(&lost, event(1)).await.unwrap();
    hub.apply_published(&lost, event(3)).await.unwrap();
    assert_eq!(next_id(&mut sub).await, 1);
    tokio::time::advance(GAP_WAIT).await;
    assert_eq!(next_id(&mut sub).await, 3);
    hub.apply_published(&lost, event(4)).await.unwrap();
    assert_eq!(next_id(&mut sub).await, 4, "in order again, no wait");
}

#[tokio::test]
async fn every_observer_hears_and_a_full_one_loses_notices_counted() {
    let hub = hub();
    let c = ch("C");
    let (mut a, mut b, small) = (hub.observe(100), hub.observe(100), hub.observe(1));
    for _ in 0..3 {
        hub.publish(&c, text("x")).await.unwrap();
    }
    for rx in [&mut a, &mut b] {
        for id in 1..=3 {
            match rx.try_recv().unwrap() {
                HubNotice::Published { event, expected } => {
                    assert_eq!((&event.channel, event.id, expected), (&c, id, 0));
                }
                other => panic!("expected a publication, got {other:?}"),
            }
        }
    }
    assert_eq!(hub.dropped_notices(), 2, "the small one took one of three");
    // A gone observer is no loss.
    drop(small);
    hub.publish(&c, text("x")).await.unwrap();
    assert_eq!(hub.dropped_notices(), 2);
}

#[tokio::test]
async fn notices_cover_receipts_completions_presence_membership_and_cuts() {
    let config = HubConfig {
        subscriber_buffer: 1,
        ..HubConfig::default()
    };
    let hub = hub_keeping_100(config);
    let c = ch("C");
    let h1 = dev("H1");
    let mut notices = hub.observe(100);
    let mut sub = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    let event = hub.publish(&c, text("x")).await.unwrap().event;
    assert_eq!(next_id(&mut sub).await, event.id);
    hub.acknowledge(&c, event.id, &h1, "ok".into())
        .await
        .unwrap();
    hub.publish(&c, text("y")).await.unwrap();
    hub.publish(&c, text("z")).await.unwrap();
    drop(sub);
    hub.unregister(&c, &h1).await.unwrap();
    let mut seen = Vec::new();
    while let Ok(notice) = notices.try_recv() {
        seen.push(notice);
    }
    let kinds: Vec<String> = seen
        .iter()
        .map(|n| match n {
            HubNotice::Published { event, expected } => {
                format!("published {}/{expected}", event.id)
            }
            HubNotice::Receipt { receipt: r, .. } => {
                format!("receipt {} {} {}", r.event_id, r.device, r.status)
            }
            HubNotice::Completed {
                event_id, expected, ..
            } => format!("completed {event_id}/{expected}"),
            HubNotice::Presence { change, .. } => {
                format!("presence {} {}", change.device, change.online)
            }
            HubNotice::Membership(m) => format!("membership {} {:?}", m.device, m.left_after),
            HubNotice::SubscriberCut {
                device, event_id, ..
            } => format!("cut {device:?} {event_id}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "membership H1 None",
            "presence H1 true",
            "published 1/1",
            "receipt 1 H1 ok",
            "completed 1/1",
            "published 2/1",
            // A publication is told before the event is released, so before the cut it causes.
            "published 3/1",
            "cut Some(\"H1\") 3",
            "presence H1 false",
            "membership H1 Some(3)",
        ]
    );
}

async fn next_receipt(follow: &mut ReceiptFollow<MemoryStore>) -> ReceiptItem {
    match timeout(Duration::from_secs(5), follow.next())
        .await
        .expect("no receipt item within 5 s")
    {
        Some(Ok(item)) => item,
        other => panic!("expected a receipt item, got {other:?}"),
    }
}

fn seq_of(item: &ReceiptItem) -> u64 {
    match item {
        ReceiptItem::Receipt(r) => r.seq,
        other => panic!("expected a receipt, got {other:?}"),
    }
}

#[tokio::test]
async fn the_receipt_follow_replays_page_by_page_then_goes_live_and_resumes() {
    let hub = hub();
    let c = ch("R");
    let (h1, h2) = (dev("H1"), dev("H2"));
    hub.register(&c, &h1).await.unwrap();
    hub.register(&c, &h2).await.unwrap();
    for _ in 0..300 {
        hub.publish(&c, text("x")).await.unwrap();
    }
    for id in 1..=300 {
        hub.acknowledge(&c, id, &h1, "ok".into()).await.unwrap();
        hub.acknowledge(&c, id, &h2, "ok".into()).await.unwrap();
    }
    // More than two pages of history, in order, once; completions are not replayed.
    let mut follow = hub.follow_receipts(&c, Some(0)).await.unwrap();
    let mut seqs = Vec::new();
    for _ in 0..600 {
        seqs.push(seq_of(&next_receipt(&mut follow).await));
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in seq order");
    // Then live: a receipt, and the completion after the receipt that caused it.
    let id = hub.publish(&c, text("live")).await.unwrap().event.id;
    let (first, _) = hub.acknowledge(&c, id, &h1, "ok".into()).await.unwrap();
    let (last, _) = hub.acknowledge(&c, id, &h2, "done".into()).await.unwrap();
    assert_eq!(seq_of(&next_receipt(&mut follow).await), first.seq);
    assert_eq!(seq_of(&next_receipt(&mut follow).await), last.seq);
    assert_eq!(
        next_receipt(&mut follow).await,
        ReceiptItem::Completed {
            channel: c.clone(),
            event_id: id,
            expected: 2
        }
    );
    // Resumed from a seq: what follows it, nothing before.
    let mut resumed = hub.follow_receipts(&c, Some(seqs[299])).await.unwrap();
    assert_eq!(seq_of(&next_receipt(&mut resumed).await), seqs[300]);
    // No position: live receipts only.
    let mut live = hub.follow_receipts(&c, None).await.unwrap();
    let (newest, _) = hub.acknowledge(&c, 1, &h1, "again".into()).await.unwrap();
    assert_eq!(seq_of(&next_receipt(&mut live).await), newest.seq);
}

#[tokio::test]
async fn a_receipt_follower_that_falls_behind_the_live_notices_ends_as_lagged() {
    let hub = hub();
    let c = ch("R");
    hub.register(&c, &dev("H1")).await.unwrap();
    let mut follow = hub.follow_receipts(&c, None).await.unwrap();
    // Receipts alone never put a follower behind (it reads them from the store); completions,
    // which are live only, do once more wait than the channel keeps.
    for _ in 0..pere_core::follow::COMPLETION_BUFFER + 10 {
        let id = hub.publish(&c, text("x")).await.unwrap().event.id;
        hub.acknowledge(&c, id, &dev("H1"), "ok".into())
            .await
            .unwrap();
    }
    assert!(timeout(Duration::from_secs(5), follow.next())
        .await
        .unwrap()
        .is_none());
    assert!(follow.lagged());
}

/// Touches `c` the way an anonymous client can: follows its receipts and presence, publishes once.
async fn check_touch(hub: &Arc<Hub<MemoryStore>>, c: &ChannelName) {
    drop(hub.follow_receipts(c, None).await.unwrap());
    drop(hub.follow_presence(c, 0).await.unwrap());
    hub.publish(c, text("x")).await.unwrap();
}

/// Lets the hub's unloading task run `periods` times (a quarter of `IDLE_CHANNEL` each).
async fn check_idle_for(periods: u32) {
    for _ in 0..periods {
        tokio::time::advance(IDLE_CHANNEL / 4).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn idle_channels_leave_memory_and_used_ones_stay() {
    let hub = hub();
    for i in 0..100 {
        check_touch(&hub, &ch(&format!("T{i}"))).await;
    }
    let watched = ch("Watched");
    let sub = hub.subscribe(&watched, from(None, None)).await.unwrap();
    let followed = ch("Followed");
    let follow = hub.follow_receipts(&followed, None).await.unwrap();
    let presence = ch("Presence");
    let presence_follow = hub.follow_presence(&presence, 0).await.unwrap();
    // An event that waits for a receipt keeps its channel loaded, so its completion is heard.
    let owed = ch("Owed");
    hub.register(&owed, &dev("H1")).await.unwrap();
    hub.publish(&owed, text("x")).await.unwrap();
    assert_eq!(hub.loaded_channels(), 104);

    check_idle_for(3).await;
    assert_eq!(hub.loaded_channels(), 104, "not idle long enough yet");
    check_idle_for(3).await;
    assert_eq!(
        hub.loaded_channels(),
        4,
        "the idle ones went; a feed, two followers and an owed event keep theirs"
    );
    drop((sub, follow, presence_follow));
    check_idle_for(3).await;
    assert_eq!(
        hub.loaded_channels(),
        4,
        "idle time counts from the end of the last use"
    );
    check_idle_for(3).await;
    assert_eq!(
        hub.loaded_channels(),
        1,
        "only the owed event's channel is left"
    );
    let keep = u32::try_from(KEEP_INCOMPLETE.as_secs() / (IDLE_CHANNEL.as_secs() / 4)).unwrap();
    check_idle_for(keep).await;
    assert_eq!(
        hub.loaded_channels(),
        0,
        "an owed event holds its channel for a bounded time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_channel_loaded_again_keeps_its_ids_recipients_resume_and_presence_numbering() {
    let hub = hub();
    let c = ch("Again");
    let (h1, h2) = (dev("H1"), dev("H2"));
    hub.register(&c, &h1).await.unwrap();
    let sub = hub.subscribe(&c, from(None, Some("H2"))).await.unwrap();
    drop(sub);
    for i in 1..=3 {
        hub.publish(&c, text(&format!("e{i}"))).await.unwrap();
    }
    for id in 1..=3 {
        hub.acknowledge(&c, id, &h2, "ok".into()).await.unwrap();
    }
    hub.acknowledge(&c, 1, &h1, "ok".into()).await.unwrap();
    let presence_before = {
        let mut follow = hub.follow_presence(&c, 0).await.unwrap();
        let mut last = 0;
        for _ in 0..2 {
            last = follow.next().await.unwrap().seq;
        }
        last
    };
    check_idle_for(KEEP_INCOMPLETE.as_secs() as u32 / 15 + 6).await;
    assert_eq!(hub.loaded_channels(), 0);

    assert_eq!(
        hub.publish(&c, text("e4")).await.unwrap().event.id,
        4,
        "ids continue"
    );
    let summary = hub.receipt_summary(&c, 4).await.unwrap();
    assert_eq!(
        summary.expected, 2,
        "both recipients are expected of an event after the reload"
    );
    // H1 resumes from its last acknowledged event.
    let mut sub = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    for expected in 2..=4 {
        assert_eq!(next_id(&mut sub).await, expected);
    }
    // The ledger follows new events again: the last receipt completes event 4, live.
    let mut follow = hub.follow_receipts(&c, None).await.unwrap();
    hub.acknowledge(&c, 4, &h2, "ok".into()).await.unwrap();
    hub.acknowledge(&c, 4, &h1, "ok".into()).await.unwrap();
    next_receipt(&mut follow).await;
    next_receipt(&mut follow).await;
    assert_eq!(
        next_receipt(&mut follow).await,
        ReceiptItem::Completed {
            channel: c.clone(),
            event_id: 4,
            expected: 2
        }
    );
    assert!(hub
        .wait_for_receipts(&c, 4, WaitFor::All, Duration::from_secs(1))
        .await
        .unwrap());
    // An event from before the unload is judged from the store.
    assert!(!hub
        .wait_for_receipts(&c, 2, WaitFor::All, Duration::from_secs(1))
        .await
        .unwrap());
    assert!(hub
        .wait_for_receipts(&c, 1, WaitFor::All, Duration::from_secs(1))
        .await
        .unwrap());
    // Presence numbering continues above what the channel gave out before.
    let mut presence = hub.follow_presence(&c, presence_before).await.unwrap();
    let change = presence.next().await.unwrap();
    assert!(change.seq > presence_before && change.online, "{change:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_acknowledged_at_once_reach_a_follower_in_seq_order_each_event_completing_once() {
    let hub = hub();
    let c = ch("Order");
    const DEVICES: usize = 4;
    const EVENTS: u64 = 50;
    let devices: Vec<DeviceId> = (0..DEVICES).map(|i| dev(&format!("D{i}"))).collect();
    for device in &devices {
        hub.register(&c, device).await.unwrap();
    }
    let mut follow = hub.follow_receipts(&c, None).await.unwrap();
    for _ in 0..EVENTS {
        hub.publish(&c, text("x")).await.unwrap();
    }
    let acks: Vec<_> = devices
        .iter()
        .map(|device| {
            let (hub, c, device) = (hub.clone(), c.clone(), device.clone());
            tokio::spawn(async move {
                for id in 1..=EVENTS {
                    hub.acknowledge(&c, id, &device, "ok".into()).await.unwrap();
                }
            })
        })
        .collect();
    for ack in acks {
        ack.await.unwrap();
    }
    let (mut seqs, mut completed) = (Vec::new(), Vec::new());
    while seqs.len() < DEVICES * EVENTS as usize || completed.len() < EVENTS as usize {
        match next_receipt(&mut follow).await {
            ReceiptItem::Receipt(r) => seqs.push(r.seq),
            ReceiptItem::Completed {
                event_id, expected, ..
            } => {
                assert_eq!(expected, DEVICES);
                completed.push(event_id);
            }
        }
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "receipts out of seq order: {seqs:?}"
    );
    completed.sort_unstable();
    assert_eq!(
        completed,
        (1..=EVENTS).collect::<Vec<_>>(),
        "every event completes once"
    );
}

#[tokio::test]
async fn the_hub_counts_deliveries_and_events_owed_receipts_and_lists_channels() {
    let hub = hub();
    let c = ch("Counted");
    let mut device = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    let mut listener = hub.subscribe(&c, from(None, None)).await.unwrap();
    for i in 1..=3 {
        hub.publish(&c, text(&format!("e{i}"))).await.unwrap();
    }
    for sub in [&mut device, &mut listener] {
        for i in 1..=3 {
            assert_eq!(next_id(sub).await, i);
        }
    }
    assert_eq!(hub.deliveries(), 6, "three events, two queues");
    assert_eq!(hub.incomplete_events(), 3, "H1 owes three receipts");
    // A replay counts what it hands over.
    let mut late = hub.subscribe(&c, from(Some(1), None)).await.unwrap();
    assert_eq!((next_id(&mut late).await, next_id(&mut late).await), (2, 3));
    assert_eq!(hub.deliveries(), 8);
    for id in 1..=3 {
        hub.acknowledge(&c, id, &dev("H1"), "ok".to_owned())
            .await
            .unwrap();
    }
    assert_eq!(hub.incomplete_events(), 0);
    assert_eq!(hub.redeliveries(), 0);

    hub.publish(&ch("Other"), text("x")).await.unwrap();
    let all = hub.channels_page(None, 10).await.unwrap();
    let names: Vec<&str> = all.iter().map(|v| v.channel.as_str()).collect();
    assert_eq!(names, ["Counted", "Other"]);
    let counted = &all[0];
    assert_eq!(
        (
            counted.head,
            counted.retained,
            counted.recipients,
            counted.open_streams
        ),
        (3, 3, 1, 3)
    );
    let after = hub.channels_page(Some(&c), 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].channel, ch("Other"));
    assert_eq!(hub.channels_page(None, 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn shared_presence_hands_out_stream_counts_and_takes_numbered_changes() {
    use pere_proto::presence::PresenceChange;

    let hub = hub();
    hub.share_presence();
    let c = ch("Shared");
    let first = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    let second = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    assert_eq!(hub.presence_updates(), vec![(c.clone(), dev("H1"), 2)]);
    assert!(
        hub.presence_updates().is_empty(),
        "each change handed out once"
    );
    drop(first);
    drop(second);
    assert_eq!(hub.presence_updates(), vec![(c.clone(), dev("H1"), 0)]);

    // The hub numbers nothing itself: the follower hears only what the store numbered.
    let mut follow = hub.follow_presence(&c, 0).await.unwrap();
    let change = |seq, online| PresenceChange {
        seq,
        device: dev("H1"),
        online,
        at: now(),
    };
    assert!(hub.apply_presence(&c, change(7, true)).await.unwrap());
    assert!(
        !hub.apply_presence(&c, change(7, true)).await.unwrap(),
        "heard twice, applied once"
    );
    assert!(hub.apply_presence(&c, change(8, false)).await.unwrap());
    let heard = timeout(Duration::from_secs(5), follow.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((heard.seq, heard.online), (7, true));
    let heard = timeout(Duration::from_secs(5), follow.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((heard.seq, heard.online), (8, false));
}

#[tokio::test]
async fn a_presence_follower_behind_the_changes_kept_ends_as_lagged() {
    use pere_core::follow::PRESENCE_HISTORY;
    use pere_proto::presence::PresenceChange;

    let hub = hub();
    hub.share_presence();
    let c = ch("Busy");
    let mut behind = hub.follow_presence(&c, 0).await.unwrap();
    // Numbered by a store, so not consecutive here: one more than is kept.
    for i in 1..=PRESENCE_HISTORY as u64 + 1 {
        let change = PresenceChange {
            seq: 2 * i,
            device: dev("H1"),
            online: i % 2 == 1,
            at: now(),
        };
        assert!(hub.apply_presence(&c, change).await.unwrap());
    }
    assert!(behind.next().await.is_none());
    assert!(behind.lagged());
    let mut fresh = hub.follow_presence(&c, 0).await.unwrap();
    assert_eq!(
        fresh.next().await.map(|change| change.seq),
        Some(4),
        "a new follower starts with the oldest change kept"
    );
    assert!(!fresh.lagged());
}

async fn next_item(sub: &mut Subscription<MemoryStore>) -> FeedItem {
    match timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("no item within 5 s")
    {
        Some(Ok(item)) => item,
        other => panic!("expected an item, got {other:?}"),
    }
}

/// The store loses everything under a running node (a Redis restarted without its data): the
/// node adopts it above the ids it handed out, an open feed hears pere-reset before anything
/// newer, no id is given twice, and a feed resuming inside the lost ids is reset too.
#[tokio::test]
async fn a_store_that_lost_everything_is_adopted_above_the_ids_handed_out() {
    let hub = hub();
    let c = ch("C");
    let mut sub = hub.subscribe(&c, from(None, Some("H1"))).await.unwrap();
    for i in 1..=5 {
        hub.publish(&c, text(&format!("before {i}"))).await.unwrap();
        assert_eq!(next_id(&mut sub).await, i);
    }
    hub.store().lose_everything();
    assert!(matches!(
        hub.publish(&c, text("refused")).await,
        Err(StoreError::Changed { .. })
    ));
    timeout(Duration::from_secs(5), async {
        while hub.adopting_store() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the store is adopted within 5 s");
    match next_item(&mut sub).await {
        FeedItem::Reset { requested, head } => assert_eq!((requested, head), (5, 5)),
        other => panic!("expected a reset first, got {other:?}"),
    }
    let next = hub.publish(&c, text("after")).await.unwrap().event;
    assert_eq!(next.id, 6, "ids continue above the ones handed out");
    assert_eq!(next_id(&mut sub).await, 6);
    // The device is still expected: the node wrote its recipients back.
    let summary = hub.receipt_summary(&c, 6).await.unwrap();
    assert_eq!(summary.expected, 1);
    // A receipt for an event the store lost is taken as one for a pruned event.
    hub.acknowledge(&c, 3, &dev("H1"), "ok".into())
        .await
        .unwrap();
    // A feed that saw id 3 before the loss must forget it.
    let mut late = hub.subscribe(&c, from(Some(3), Some("H2"))).await.unwrap();
    match next_item(&mut late).await {
        FeedItem::Reset { requested, head } => assert_eq!((requested, head), (3, 6)),
        other => panic!("expected a reset, got {other:?}"),
    }
    assert_eq!(next_id(&mut late).await, 6);
    // A channel nobody had loaded: its ids continue above the node's high water too.
    assert_eq!(
        hub.publish(&ch("OTHER"), text("x")).await.unwrap().event.id,
        6
    );
}

/// The ids a cumulative receipt acknowledged.
fn acked(cumulative: &pere_core::Cumulative) -> Vec<u64> {
    cumulative.receipts.iter().map(|r| r.event_id).collect()
}

#[tokio::test]
async fn a_cumulative_receipt_acknowledges_what_the_device_owes_and_nothing_else() {
    let hub = hub();
    let c = ch("C");
    for device in ["A", "B"] {
        hub.register(&c, &dev(device)).await.unwrap();
    }
    for n in 1..=5 {
        hub.publish(&c, text(&n.to_string())).await.unwrap();
    }
    hub.acknowledge(&c, 2, &dev("A"), "ok".into())
        .await
        .unwrap();
    let mut completions = hub.observe(64);
    let upto = hub
        .acknowledge_upto(&c, &dev("A"), 4, "rx ok".into(), 100)
        .await
        .unwrap();
    assert_eq!((acked(&upto), upto.more), (vec![1, 3, 4], false));
    assert!(upto.receipts.iter().all(|r| &*r.status == "rx ok"));
    assert!(
        hub.wait_for_receipts(&c, 4, WaitFor::AtLeast(1), Duration::ZERO)
            .await
            .unwrap(),
        "the ledger has them"
    );
    let again = hub
        .acknowledge_upto(&c, &dev("A"), 4, "rx ok".into(), 100)
        .await
        .unwrap();
    assert!(again.receipts.is_empty(), "nothing more is owed up to 4");
    let b = hub
        .acknowledge_upto(&c, &dev("B"), 5, "ok".into(), 100)
        .await
        .unwrap();
    assert_eq!(acked(&b), [1, 2, 3, 4, 5]);
    let a = hub
        .acknowledge_upto(&c, &dev("A"), 5, "ok".into(), 100)
        .await
        .unwrap();
    assert_eq!(acked(&a), [5]);
    // Every event is complete now: its completion was told as a single receipt tells it.
    let mut completed = Vec::new();
    while let Ok(notice) = completions.try_recv() {
        if let HubNotice::Completed { event_id, .. } = notice {
            completed.push(event_id);
        }
    }
    completed.sort_unstable();
    assert_eq!(completed, [1, 2, 3, 4, 5]);
    assert!(matches!(
        hub.acknowledge_upto(&c, &dev("A"), 6, "ok".into(), 100)
            .await,
        Err(StoreError::UnknownEvent { id: 6 })
    ));
    assert!(matches!(
        hub.acknowledge_upto(&c, &dev("A"), 0, "ok".into(), 100)
            .await,
        Err(StoreError::UnknownEvent { id: 0 })
    ));
    let stranger = hub
        .acknowledge_upto(&c, &dev("Z"), 5, "ok".into(), 100)
        .await
        .unwrap();
    assert!(stranger.receipts.is_empty(), "never a recipient");
}

#[tokio::test]
async fn a_cumulative_receipt_finds_in_the_store_what_the_ledger_does_not_follow() {
    let store = MemoryStore::new(Retention {
        max_events: 100_000,
        max_age: None,
        idempotency_window: None,
    });
    let first = Hub::new(store.clone(), HubConfig::default());
    let c = ch("C");
    let d = dev("D");
    // D is expected of 1-2 and of 5 on: it left between.
    first.register(&c, &d).await.unwrap();
    for n in 1..=2 {
        first.publish(&c, text(&n.to_string())).await.unwrap();
    }
    first.unregister(&c, &d).await.unwrap();
    for n in 3..=4 {
        first.publish(&c, text(&n.to_string())).await.unwrap();
    }
    first.register(&c, &d).await.unwrap();
    for n in 5..=7 {
        first.publish(&c, text(&n.to_string())).await.unwrap();
    }
    first.acknowledge(&c, 6, &d, "ok".into()).await.unwrap();
    // Another node on the same store: its ledger follows none of these events.
    let other = Hub::new(store, HubConfig::default());
    let oldest = other
        .acknowledge_upto(&c, &d, 7, "ok".into(), 2)
        .await
        .unwrap();
    assert_eq!((acked(&oldest), oldest.more), (vec![1, 2], true));
    let rest = other
        .acknowledge_upto(&c, &d, 7, "ok".into(), 2)
        .await
        .unwrap();
    assert_eq!((acked(&rest), rest.more), (vec![5, 7], false));
    // Events published since are the ledger's: a mix of both.
    other.publish(&c, text("8")).await.unwrap();
    let latest = other
        .acknowledge_upto(&c, &d, 8, "ok".into(), 10)
        .await
        .unwrap();
    assert_eq!(acked(&latest), [8]);
    let pending: Vec<u64> = other
        .store()
        .unacknowledged(&c, &d, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        pending,
        [3, 4],
        "events D was never expected to acknowledge"
    );
}
