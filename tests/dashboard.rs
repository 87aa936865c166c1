//! End-to-end tests of the dashboard's stream of admin events (`GET /admin/stream`) and of how
//! the page and the stream are protected. The page itself is tested in a browser
//! (`tests/browser_dashboard.rs`).

use std::time::{SystemTime, UNIX_EPOCH};

use pere_e2e::{Feed, TestServer, WAIT};
use pere_proto::wire::{
    ChannelStreamsJson, DashboardChannels, DashboardDevices, DashboardEvent, DashboardGrid,
    DashboardHello, DashboardReceipt, DashboardStats,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

/// Reads the stream until an event of type `kind` whose data satisfies `matches`.
/// Fails after [`WAIT`]: the stream's `stats` never let it fall silent.
async fn until<T: DeserializeOwned>(
    stream: &mut Feed,
    kind: &str,
    matches: impl Fn(&T) -> bool,
) -> T {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let event = stream.next().await;
            seen.push(format!("{}: {}", event.event, event.data));
            if event.event != kind {
                continue;
            }
            let data: T = serde_json::from_str(&event.data)
                .unwrap_or_else(|e| panic!("{kind}: {e}: {}", event.data));
            if matches(&data) {
                return data;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no such {kind} within {WAIT:?}; seen:\n{}", seen.join("\n")))
}

/// A test on an event's data.
type Matcher = Box<dyn Fn(&Value) -> bool>;

/// Reads the stream until each `(kind, matches)` has been seen, in any order (what one tick sends
/// and what the next does may come either way); returns the data that matched each. Fails after
/// [`WAIT`].
async fn until_all(stream: &mut Feed, wanted: Vec<(&str, Matcher)>) -> Vec<Value> {
    let mut found: Vec<Option<Value>> = vec![None; wanted.len()];
    let mut seen = Vec::new();
    let done = tokio::time::timeout(WAIT, async {
        while found.iter().any(Option::is_none) {
            let event = stream.next().await;
            seen.push(format!("{}: {}", event.event, event.data));
            let data: Value = serde_json::from_str(&event.data).expect("JSON data");
            for ((kind, matches), slot) in wanted.iter().zip(found.iter_mut()) {
                if slot.is_none() && event.event == *kind && matches(&data) {
                    *slot = Some(data.clone());
                }
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "not all seen within {WAIT:?}; seen:\n{}",
        seen.join("\n")
    );
    found.into_iter().flatten().collect()
}

/// The next event, which must be of type `kind`.
async fn next<T: DeserializeOwned>(stream: &mut Feed, kind: &str) -> T {
    let event = stream.next().await;
    assert_eq!(event.event, kind, "{event:?}");
    serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("{kind}: {e}: {}", event.data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_s_stream_shows_presence_events_receipts_and_throughput_live() {
    let server = TestServer::start(&[]).await;
    // History before the dashboard opens: in the first grid, with its receipt.
    server
        .http
        .put(server.url("/devices/C/OLD"))
        .send()
        .await
        .unwrap();
    let first = server.push("C", "one").await;
    server.ack("C", "OLD", first, "seen").await;

    let mut stream = server.feed_path("/admin/stream?channel=C", &[]).await;
    let hello: DashboardHello = next(&mut stream, "hello").await;
    assert_eq!(hello.channel.as_deref(), Some("C"));
    let channels: DashboardChannels = next(&mut stream, "channels").await;
    assert_eq!(channels.total, 0, "no feed is open yet");
    let devices: DashboardDevices = next(&mut stream, "devices").await;
    assert_eq!(
        devices
            .devices
            .iter()
            .map(|d| d.device.as_str())
            .collect::<Vec<_>>(),
        ["OLD"]
    );
    assert!(!devices.devices[0].online);
    let grid: DashboardGrid = next(&mut stream, "grid").await;
    assert_eq!(grid.head, first);
    assert_eq!(grid.events.len(), 1);
    assert_eq!(grid.events[0].recipients, ["OLD"]);
    assert_eq!(grid.events[0].acknowledged[0].status, "seen");

    // A device comes online: its channel gets a feed, the device shows online.
    let mut feed = server.feed("C", &[("device", "D1")]).await;
    until_all(
        &mut stream,
        vec![
            (
                "device",
                Box::new(|d| d["device"] == "D1" && d["online"] == true && d["recipient"] == true),
            ),
            (
                "channel",
                Box::new(|c| c["channel"] == "C" && c["open_streams"] == 1),
            ),
        ],
    )
    .await;

    // An event: a row expecting both recipients; delivered to D1; then D1's receipt.
    let id = server.push("C", "two").await;
    // A new device gets the retained history first.
    assert_eq!(feed.next_ids(2).await, [first, id]);
    let seen = until_all(
        &mut stream,
        vec![
            ("event", Box::new(move |e| e["id"] == id)),
            (
                "device",
                Box::new(move |d| d["device"] == "D1" && d["last_delivered"] == id),
            ),
        ],
    )
    .await;
    let row: DashboardEvent = serde_json::from_value(seen[0].clone()).unwrap();
    assert_eq!(
        (row.expected, row.recipients.clone()),
        (2, vec!["D1".to_owned(), "OLD".to_owned()]),
        "{row:?}"
    );
    assert!(row.acknowledged.is_empty());
    let (status, _) = server.ack("C", "D1", id, "done").await;
    assert_eq!(status, 200);
    let receipt: DashboardReceipt =
        until(&mut stream, "receipt", |r: &DashboardReceipt| r.id == id).await;
    assert_eq!(
        (receipt.device.as_str(), receipt.status.as_str()),
        ("D1", "done")
    );
    let stats: DashboardStats = until(&mut stream, "stats", |s: &DashboardStats| {
        s.channel_receipts == Some(1)
    })
    .await;
    assert!(
        stats.latency_p50_ms.is_some(),
        "the receipt was timed: {stats:?}"
    );

    // The device goes away: offline, and its channel has no feed left.
    drop(feed);
    until_all(
        &mut stream,
        vec![
            (
                "device",
                Box::new(move |d| {
                    d["device"] == "D1" && d["online"] == false && d["last_acked"] == id
                }),
            ),
            (
                "channel",
                Box::new(|c| c["channel"] == "C" && c["open_streams"] == 0),
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_channel_lists_the_channels_with_open_feeds() {
    let server = TestServer::start(&[]).await;
    let _a = server.feed("A", &[]).await;
    let mut stream = server.feed_path("/admin/stream", &[]).await;
    let hello: DashboardHello = next(&mut stream, "hello").await;
    assert_eq!(hello.channel, None);
    let channels: DashboardChannels = next(&mut stream, "channels").await;
    assert_eq!(
        channels.channels,
        [ChannelStreamsJson {
            channel: "A".into(),
            open_streams: 1
        }]
    );
    let b = server.feed("B", &[("device", "D1")]).await;
    until(&mut stream, "channel", |c: &ChannelStreamsJson| {
        c.channel == "B" && c.open_streams == 1
    })
    .await;
    server.push("B", "x").await;
    until(&mut stream, "stats", |s: &DashboardStats| {
        s.events == 1 && s.channel_events.is_none()
    })
    .await;
    drop(b);
    until(&mut stream, "channel", |c: &ChannelStreamsJson| {
        c.channel == "B" && c.open_streams == 0
    })
    .await;
    // A bad channel name is refused like anywhere else.
    let bad = server
        .http
        .get(server.url("/admin/stream?channel=no%20way"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

const SECRET: &str = "test-secret-of-at-least-32-bytes-0123456789";

fn token(sub: &str, admin: bool) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({"sub": sub, "exp": exp, "pere": {"subscribe": ["*"], "admin": admin}});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_public_and_its_stream_needs_an_admin_token() {
    let server = TestServer::start(&["--jwt-secret", SECRET]).await;
    let page = server
        .http
        .get(server.url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains("from '/pere.js'") && html.contains("watch("),
        "the page reads its stream through pere.js"
    );
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "nothing is fetched from elsewhere"
    );

    let anonymous = server
        .http
        .get(server.url("/admin/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let path = format!("/admin/stream?access_token={}", token("D1", false));
    let device = server.http.get(server.url(&path)).send().await.unwrap();
    assert_eq!(device.status(), 403);
    let body: serde_json::Value = device.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    let mut admin = server
        .feed_path(
            &format!(
                "/admin/stream?channel=C&access_token={}",
                token("ops", true)
            ),
            &[],
        )
        .await;
    let hello: DashboardHello = next(&mut admin, "hello").await;
    assert_eq!(hello.channel.as_deref(), Some("C"));
    // The token never reaches the log.
    server
        .proc
        .wait_line(|l| l.contains("REFUSED> GET /admin/stream: 403 forbidden"))
        .await;
    assert!(server.proc.lines().iter().all(|l| !l.contains("eyJ")));
}
