//! The load itself: subscribers, publishers and receipt senders, and the phases of a run
//! (connect, settle, measure memory, publish, drain, measure CPU).
//!
//! Every body a publisher sends is `{"t":<ns since the run's epoch>,"seq":<n>}`: subscribers
//! compute latency from `t` (same process, same monotonic clock) and count lost and duplicated
//! events by `seq`, which works whatever ids the server gives.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::client::{connect, Client};
use crate::http;
use crate::procfs::{Probe, Sample};
use crate::receipt::{self, ReceiptStyle};
use crate::sse::{json_u64, FeedItem, FeedParser, SseItem};
use crate::stats::{latency_histogram, record, Percentiles, SeenSet};

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Open subscribers and hold them: memory per connection.
    Idle,
    /// Paced publishing to subscribers: latency, loss.
    Fanout,
    /// Unpaced publishing to subscribers: deliveries/s, CPU per delivery.
    Saturate,
    /// Paced publishing, every subscriber acknowledges every event: receipts/s.
    Receipts,
    /// Unpaced publishing, no subscribers: pushes/s.
    Push,
}

impl Scenario {
    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Fanout => "fanout",
            Scenario::Saturate => "saturate",
            Scenario::Receipts => "receipts",
            Scenario::Push => "push",
        }
    }
}

/// Everything a run needs to know, defaults resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario.
    pub scenario: Scenario,
    /// A free-form label copied into the report (e.g. `pere-memory`).
    pub label: String,
    /// The server.
    pub target: SocketAddr,
    /// Where the publishers push: the server, or another node of its cluster.
    pub publish_target: SocketAddr,
    /// Subscribers to open.
    pub subscribers: usize,
    /// Channels; subscriber `i` and event `j` go to channel `i % channels`, `j % channels`.
    pub channels: usize,
    /// Events per channel; `None`: until `duration` ends.
    pub events_per_channel: Option<u64>,
    /// Events per second per channel; `None`: as fast as the server answers.
    pub rate: Option<f64>,
    /// How long to publish (unbounded counts) or to hold (idle).
    pub duration: Duration,
    /// Keep-alive publishing connections.
    pub publishers: usize,
    /// Whether subscribers acknowledge every event.
    pub receipts: bool,
    /// Keep-alive connections that carry receipts (`shared` style).
    pub receipt_conns: usize,
    /// How receipts are sent: over shared connections, or by each device on its own.
    pub receipt_style: ReceiptStyle,
    /// `coalesced`: the least time between the starts of a device's two receipt requests.
    pub receipt_spacing: Duration,
    /// Unpaced runs: publishers wait while more than this many events per subscriber are on
    /// their way (or, with receipts, not yet acknowledged), so the server's throughput is
    /// measured rather than its slow-reader policy or the generator's queues.
    pub max_ahead: Option<u64>,
    /// Source addresses for subscribers, used in turn; empty: let the kernel choose.
    pub sources: Vec<IpAddr>,
    /// Subscribers connecting at once.
    pub connect_concurrency: usize,
    /// How long to wait for all subscribers to be answered.
    pub connect_timeout: Duration,
    /// Pause between the last subscriber answered and the memory reading.
    pub settle: Duration,
    /// How long to wait for deliveries and receipts after publishing ends.
    pub drain: Duration,
    /// Channel and device names start with this.
    pub prefix: String,
    /// Extra bytes of padding in each event body.
    pub pad: usize,
    /// Events per push request; above 1, NDJSON batches of a publisher's next events that go to
    /// one channel.
    pub batch: usize,
    /// Progress lines on stderr.
    pub progress: bool,
    /// The server's processes.
    pub probe: Probe,
    /// Reconnections allowed per subscriber (a server may close a slow feed).
    pub max_reconnects: u32,
    /// `Bearer TOKEN` for every request (`--token`); with it no request names a device: each
    /// speaks as the token's device, the only one a token lets it speak for.
    pub authorization: Option<String>,
}

impl Plan {
    /// The identity headers of a request from `device`: the token when there is one, else the
    /// device's name.
    fn identity<'a>(&'a self, device: &'a str) -> (&'static str, &'a str) {
        match &self.authorization {
            Some(bearer) => ("Authorization", bearer),
            None => ("device", device),
        }
    }

    fn channel_name(&self, channel: usize) -> String {
        format!("{}c{channel}", self.prefix)
    }

    fn host(&self) -> String {
        self.target.to_string()
    }

    /// Who a receipt of `device` comes from.
    fn receipt_sender<'a>(&'a self, device: &'a str) -> receipt::Sender<'a> {
        receipt::Sender {
            identity: self.identity(device),
            device: self.authorization.is_none().then_some(device),
        }
    }
}

/// A receipt to send: the subscriber got event `id` on `channel`.
#[derive(Debug)]
struct ReceiptJob {
    channel: usize,
    device: Arc<str>,
    id: String,
    /// When the event was published, ns since the epoch (0 when unknown).
    sent_ns: u64,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubState {
    seen: SeenSet,
    /// Latencies not yet added to the shared histogram (µs).
    batch: Vec<u64>,
    last_id: Option<String>,
    ready: bool,
    failed: bool,
}

/// Latencies are added to the shared histogram this many at a time, to keep its lock cold.
const BATCH: usize = 64;

/// Receipts one device may have waiting for its connection: at 100 events/s, ten seconds of
/// a server that does not answer, then they count as dropped.
const DEVICE_QUEUE: usize = 1024;

/// Counters and histograms shared by every task of a run.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    epoch: Instant,
    stopping: AtomicBool,
    connect_permits: Arc<Semaphore>,

    ready: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    ready_per_channel: Vec<AtomicU64>,

    deliveries: AtomicU64,
    distinct: AtomicU64,
    other_events: AtomicU64,
    comments: AtomicU64,
    last_delivery_ns: AtomicU64,
    latency: Mutex<Histogram<u64>>,

    pushes_ok: AtomicU64,
    push_errors: AtomicU64,
    /// Deliveries that accepted pushes call for (pushes × ready subscribers of the channel).
    expected: AtomicU64,
    published: Vec<Mutex<SeenSet>>,
    push_rtt: Mutex<Histogram<u64>>,

    receipts_queued: AtomicU64,
    receipts_dropped: AtomicU64,
    /// Deliveries acknowledged by a receipt the server accepted (one per request, or all that
    /// a cumulative receipt covered).
    receipts_ok: AtomicU64,
    /// Deliveries whose receipt failed.
    receipt_errors: AtomicU64,
    /// Receipt requests answered 2xx.
    receipt_requests: AtomicU64,
    /// What the server's answers to cumulative receipts say they acknowledged.
    server_acknowledged: AtomicU64,
    first_receipt_ns: AtomicU64,
    last_receipt_ns: AtomicU64,
    receipt_rtt: Mutex<Histogram<u64>>,
    receipt_e2e: Mutex<Histogram<u64>>,

    /// The first few distinct error messages, with counts, for the report.
    errors: Mutex<Vec<(String, u64)>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Deliveries the accepted pushes call for that have not arrived yet or, when subscribers
    /// acknowledge, whose receipt has not been answered yet.
    fn in_flight(&self) -> u64 {
        let done = if self.plan.receipts {
            self.receipts_ok.load(Relaxed)
                + self.receipt_errors.load(Relaxed)
                + self.receipts_dropped.load(Relaxed)
        } else {
            self.distinct.load(Relaxed)
        };
        self.expected.load(Relaxed).saturating_sub(done)
    }

    fn note_error(&self, what: String) {
        let mut errors = self.errors.lock().expect("no panics while held");
        if let Some(entry) = errors.iter_mut().find(|(w, _)| *w == what) {
            entry.1 += 1;
        } else if errors.len() < 20 {
            errors.push((what, 1));
        }
    }
}

/// Runs `plan` and returns its report as one JSON object.
///
/// # Errors
/// Never for what the server does (failures are counted in the report); only when the
/// generator itself cannot run.
pub async fn run(plan: Plan) -> anyhow::Result<Value> {
    let channels = plan.channels.max(1);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        stopping: AtomicBool::new(false),
        connect_permits: Arc::new(Semaphore::new(plan.connect_concurrency.max(1))),
        ready: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        ready_per_channel: (0..channels).map(|_| AtomicU64::new(0)).collect(),
        deliveries: AtomicU64::new(0),
        distinct: AtomicU64::new(0),
        other_events: AtomicU64::new(0),
        comments: AtomicU64::new(0),
        last_delivery_ns: AtomicU64::new(0),
        latency: Mutex::new(latency_histogram()),
        pushes_ok: AtomicU64::new(0),
        push_errors: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        published: (0..channels)
            .map(|_| Mutex::new(SeenSet::default()))
            .collect(),
        push_rtt: Mutex::new(latency_histogram()),
        receipts_queued: AtomicU64::new(0),
        receipts_dropped: AtomicU64::new(0),
        receipts_ok: AtomicU64::new(0),
        receipt_errors: AtomicU64::new(0),
        receipt_requests: AtomicU64::new(0),
        server_acknowledged: AtomicU64::new(0),
        first_receipt_ns: AtomicU64::new(u64::MAX),
        last_receipt_ns: AtomicU64::new(0),
        receipt_rtt: Mutex::new(latency_histogram()),
        receipt_e2e: Mutex::new(latency_histogram()),
        errors: Mutex::new(Vec::new()),
        plan: Plan { channels, ..plan },
    });
    let plan = &shared.plan;
    let progress = Progress::new(shared.clone());

    let memory_before = plan.probe.sample();
    // The generator's own CPU, to see how much of the machine the load itself took.
    let generator = Probe::new(vec![std::process::id()]);
    let generator_before = generator.sample();

    // Receipt senders first, so no receipt waits for one.
    let mut receipt_tasks = Vec::new();
    let mut receipt_queues = Vec::new();
    if plan.receipts && plan.subscribers > 0 && !plan.receipt_style.per_device() {
        let conns = plan.receipt_conns.max(1);
        // Bounded: a server that cannot keep up shows as dropped receipts, not generator memory.
        let capacity = (200_000 / conns).max(1024);
        for k in 0..conns {
            let (tx, rx) = mpsc::channel(capacity);
            receipt_queues.push(tx);
            receipt_tasks.push(tokio::spawn(receipt_sender(shared.clone(), k, rx)));
        }
    }

    // Subscribers.
    let connect_start = Instant::now();
    let mut states = Vec::with_capacity(plan.subscribers);
    let mut sub_tasks: Vec<JoinHandle<()>> = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        let state = Arc::new(Mutex::new(SubState::default()));
        states.push(state.clone());
        let queue = if plan.receipts && plan.receipt_style.per_device() {
            // Each device's own sender; its connection opens with its first receipt.
            let (tx, rx) = mpsc::channel(DEVICE_QUEUE);
            receipt_tasks.push(tokio::spawn(device_receipts(shared.clone(), i, rx)));
            Some(tx)
        } else {
            (!receipt_queues.is_empty()).then(|| receipt_queues[i % receipt_queues.len()].clone())
        };
        sub_tasks.push(tokio::spawn(subscriber(shared.clone(), i, state, queue)));
    }
    drop(receipt_queues);
    let connect_deadline = Instant::now() + plan.connect_timeout;
    while (shared.ready.load(Relaxed) + shared.failed.load(Relaxed)) < plan.subscribers as u64
        && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        progress.tick("connecting");
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    let ready = shared.ready.load(Relaxed);
    if plan.subscribers > 0 {
        tokio::time::sleep(plan.settle).await;
    }
    let memory_subscribed = plan.probe.sample();

    // Publishing.
    let mut publish = Value::Null;
    let mut cpu_before = None;
    let mut cpu_after = None;
    let memory_end;
    let mut generator_cpu = 0.0;
    let mut publish_start_ns = 0;
    let mut publish_s = 0.0;
    if plan.scenario == Scenario::Idle {
        let hold_until = Instant::now() + plan.duration;
        while Instant::now() < hold_until {
            tokio::time::sleep(Duration::from_millis(100).min(hold_until - Instant::now())).await;
            progress.tick("holding");
        }
        memory_end = plan.probe.sample();
    } else {
        cpu_before = plan.probe.sample();
        let generator_cpu_before = generator.sample();
        publish_start_ns = shared.now_ns();
        let start = Instant::now();
        let total = plan
            .events_per_channel
            .map_or(u64::MAX, |m| m.saturating_mul(channels as u64));
        let rate_total = plan.rate.map(|r| r * channels as f64);
        // Counted runs may overrun their schedule on a slow server, up to the drain time.
        let scheduled = match (plan.events_per_channel, rate_total) {
            (Some(_), Some(rate)) => {
                Duration::from_secs_f64(total as f64 / rate).max(plan.duration)
            }
            _ => plan.duration,
        };
        let deadline = start
            + scheduled
            + if plan.events_per_channel.is_some() {
                plan.drain
            } else {
                Duration::ZERO
            };
        let publishers: Vec<_> = (0..plan.publishers.max(1))
            .map(|k| {
                tokio::spawn(publisher(
                    shared.clone(),
                    k,
                    total,
                    rate_total,
                    start,
                    deadline,
                ))
            })
            .collect();
        for p in publishers {
            while !p.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                progress.tick("publishing");
            }
            p.await?;
        }
        publish_s = start.elapsed().as_secs_f64();

        // Drain: every accepted event delivered to every ready subscriber, every receipt answered.
        let drain_deadline = Instant::now() + plan.drain;
        loop {
            let delivered = shared.distinct.load(Relaxed) >= shared.expected.load(Relaxed);
            let acked = shared.receipts_ok.load(Relaxed) + shared.receipt_errors.load(Relaxed)
                >= shared.receipts_queued.load(Relaxed);
            if (delivered && acked) || Instant::now() >= drain_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            progress.tick("draining");
        }
        cpu_after = plan.probe.sample();
        memory_end = cpu_after;
        generator_cpu = match (generator_cpu_before, generator.sample()) {
            (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
            _ => 0.0,
        };
        publish = json!({"s": round3(publish_s)});
    }
    progress.done();

    // Stop everything.
    shared.stopping.store(true, Relaxed);
    for task in sub_tasks.iter().chain(receipt_tasks.iter()) {
        task.abort();
    }
    for task in sub_tasks.into_iter().chain(receipt_tasks) {
        let _ = task.await;
    }

    // Per-subscriber accounting.
    let mut lost = 0;
    let mut duplicated = 0;
    let mut with_loss = 0;
    let mut worst_loss = 0;
    {
        let mut latency = shared.latency.lock().expect("no panics while held");
        for (i, state) in states.iter().enumerate() {
            let mut state = state.lock().expect("no panics while held");
            for us in state.batch.drain(..) {
                record(&mut latency, us);
            }
            if !state.ready {
                continue;
            }
            let published = shared.published[i % channels]
                .lock()
                .expect("no panics while held");
            let l = state.seen.lost(&published);
            lost += l;
            with_loss += u64::from(l > 0);
            worst_loss = worst_loss.max(l);
            duplicated += state.seen.duplicated();
        }
    }

    let deliveries = shared.deliveries.load(Relaxed);
    let last_delivery = shared.last_delivery_ns.load(Relaxed);
    let delivery_s = last_delivery.saturating_sub(publish_start_ns) as f64 / 1e9;
    let pushes_ok = shared.pushes_ok.load(Relaxed);
    let receipts_ok = shared.receipts_ok.load(Relaxed);
    let receipt_span_s = shared
        .last_receipt_ns
        .load(Relaxed)
        .saturating_sub(publish_start_ns) as f64
        / 1e9;
    let per_s = |n: u64, s: f64| if s > 0.0 { round1(n as f64 / s) } else { 0.0 };

    let mut server = json!({});
    if !plan.probe.is_empty() {
        let kib_per =
            |before: Option<Sample>, after: Option<Sample>, pss: bool| match (before, after) {
                (Some(b), Some(a)) if ready > 0 => {
                    let (b, a) = if pss {
                        (b.pss_kib, a.pss_kib)
                    } else {
                        (b.rss_kib, a.rss_kib)
                    };
                    round3((a as f64 - b as f64) / ready as f64)
                }
                _ => 0.0,
            };
        let cpu_s = match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
            _ => 0.0,
        };
        let per_unit = if plan.scenario == Scenario::Push {
            pushes_ok
        } else {
            deliveries
        };
        server = json!({
            "before": memory_before.map(|s| s.json()),
            "subscribed": memory_subscribed.map(|s| s.json()),
            "end": memory_end.map(|s| s.json()),
            "pss_kib_per_connection": kib_per(memory_before, memory_subscribed, true),
            "rss_kib_per_connection": kib_per(memory_before, memory_subscribed, false),
            "cpu_s": round3(cpu_s),
            "cpu_us_per_delivery": if per_unit > 0 && plan.scenario != Scenario::Push { round3(cpu_s * 1e6 / per_unit as f64) } else { 0.0 },
            "cpu_us_per_push": if pushes_ok > 0 { round3(cpu_s * 1e6 / pushes_ok as f64) } else { 0.0 },
        });
        if plan.receipts {
            server["cpu_us_per_acknowledged_delivery"] = json!(if receipts_ok > 0 {
                round3(cpu_s * 1e6 / receipts_ok as f64)
            } else {
                0.0
            });
        }
    }

    let errors: Vec<Value> = shared
        .errors
        .lock()
        .expect("no panics while held")
        .iter()
        .map(|(what, n)| json!({"error": what, "count": n}))
        .collect();
    let histogram = |h: &Mutex<Histogram<u64>>| {
        Percentiles::of(&h.lock().expect("no panics while held")).json()
    };
    let mut report = json!({
        "scenario": plan.scenario.name(),
        "label": plan.label,
        "target": plan.host(),
        "config": {
            "subscribers": plan.subscribers,
            "channels": channels,
            "events_per_channel": plan.events_per_channel,
            "rate_per_channel": plan.rate,
            "duration_s": plan.duration.as_secs_f64(),
            "publishers": plan.publishers,
            "receipts": plan.receipts,
            "receipt_conns": plan.receipt_conns,
            "receipt_style": plan.receipt_style.name(),
            "receipt_spacing_ms": plan.receipt_spacing.as_millis() as u64,
            "max_ahead": plan.max_ahead,
            "source_addrs": plan.sources.len().max(1),
            "pad": plan.pad,
            "batch": plan.batch,
        },
        "subscribers": {
            "requested": plan.subscribers,
            "ready": ready,
            "failed": shared.failed.load(Relaxed),
            "connect_s": round3(connect_s),
            "reconnects": shared.reconnects.load(Relaxed),
            "comments": shared.comments.load(Relaxed),
        },
        "server": server,
        "errors": errors,
        "generator": {
            "cpu_s": round3(generator_cpu),
            "cpu_s_total": round3(match (generator_before, generator.sample()) {
                (Some(b), Some(a)) => a.cpu_s - b.cpu_s,
                _ => 0.0,
            }),
        },
        "elapsed_s": round3(shared.epoch.elapsed().as_secs_f64()),
    });
    if plan.scenario != Scenario::Idle {
        report["published"] = json!({
            "ok": pushes_ok,
            "errors": shared.push_errors.load(Relaxed),
            "s": publish["s"],
            "per_s": per_s(pushes_ok, publish_s),
            "rtt_us": histogram(&shared.push_rtt),
        });
    }
    if plan.subscribers > 0 && plan.scenario != Scenario::Idle {
        report["deliveries"] = json!({
            "count": deliveries,
            "expected": shared.expected.load(Relaxed),
            "distinct": shared.distinct.load(Relaxed),
            "per_s": per_s(deliveries, delivery_s),
            "lost": lost,
            "duplicated": duplicated,
            "subscribers_with_loss": with_loss,
            "worst_subscriber_lost": worst_loss,
            "other_events": shared.other_events.load(Relaxed),
        });
        report["latency_us"] = histogram(&shared.latency);
    }
    if plan.receipts {
        report["receipts"] = json!({
            "queued": shared.receipts_queued.load(Relaxed),
            "dropped": shared.receipts_dropped.load(Relaxed),
            "ok": receipts_ok,
            "errors": shared.receipt_errors.load(Relaxed),
            "requests": shared.receipt_requests.load(Relaxed),
            "server_acknowledged": shared.server_acknowledged.load(Relaxed),
            "per_s": per_s(receipts_ok, receipt_span_s),
            "rtt_us": histogram(&shared.receipt_rtt),
            "e2e_us": histogram(&shared.receipt_e2e),
        });
    }
    Ok(report)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One SSE subscriber: connects, reads events, reconnects with `Last-Event-ID` if the server
/// closes its stream, until the run stops it.
async fn subscriber(
    shared: Arc<Shared>,
    index: usize,
    state: Arc<Mutex<SubState>>,
    receipts: Option<mpsc::Sender<ReceiptJob>>,
) {
    let plan = &shared.plan;
    let channel = index % plan.channels;
    let device: Arc<str> = format!("{}d{index}", plan.prefix).into();
    let source = (!plan.sources.is_empty()).then(|| plan.sources[index % plan.sources.len()]);
    let path = format!("/feed/{}", plan.channel_name(channel));
    let host = plan.host();
    let mut buf = vec![0u8; 8192];
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut attempts: u32 = 0;
    loop {
        let is_ready = state.lock().expect("no panics while held").ready;
        if !is_ready && permit.is_none() {
            permit = shared.connect_permits.clone().acquire_owned().await.ok();
        }
        let last_id = state.lock().expect("no panics while held").last_id.clone();
        let result = async {
            let mut stream = connect(plan.target, source).await?;
            let mut headers = vec![
                ("Accept", "text/event-stream"),
                ("Cache-Control", "no-cache"),
                plan.identity(&device),
            ];
            if let Some(id) = &last_id {
                headers.push(("Last-Event-ID", id));
            }
            stream
                .write_all(&http::request("GET", &path, &host, &headers, None))
                .await?;
            let mut parser = FeedParser::new();
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(None);
                }
                let mut status = None;
                {
                    let mut st = state.lock().expect("no panics while held");
                    let st = &mut *st;
                    let fed = parser.feed(&buf[..n], &mut |item| match item {
                        FeedItem::Head(head) => status = Some(head.status),
                        FeedItem::Sse(SseItem::Event { id, data, .. }) => {
                            on_event(&shared, st, channel, id, data, &device, receipts.as_ref());
                        }
                        FeedItem::Sse(SseItem::Comment) => {
                            shared.comments.fetch_add(1, Relaxed);
                        }
                        FeedItem::Sse(SseItem::Retry) => {}
                    });
                    if let Err(err) = fed {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, err));
                    }
                    match status {
                        Some(s) if s / 100 == 2 => {
                            if !st.ready {
                                st.ready = true;
                                shared.ready.fetch_add(1, Relaxed);
                                shared.ready_per_channel[channel].fetch_add(1, Relaxed);
                            }
                            permit = None;
                        }
                        Some(s) => return Ok(Some(s)),
                        None => {}
                    }
                }
                if parser.body_done() {
                    return Ok(None);
                }
            }
        }
        .await;
        if shared.stopping.load(Relaxed) {
            return;
        }
        let (give_up, why) = match result {
            Ok(Some(status)) => (true, format!("feed answered {status}")),
            Ok(None) => (false, "feed closed by the server".to_owned()),
            Err(err) => (false, format!("feed: {err}")),
        };
        shared.note_error(why);
        attempts += 1;
        {
            let mut st = state.lock().expect("no panics while held");
            if give_up || attempts > plan.max_reconnects {
                if !st.ready && !st.failed {
                    st.failed = true;
                    shared.failed.fetch_add(1, Relaxed);
                }
                return;
            }
            if st.ready {
                shared.reconnects.fetch_add(1, Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One event arrived at a subscriber.
fn on_event(
    shared: &Shared,
    st: &mut SubState,
    channel: usize,
    id: Option<&[u8]>,
    data: &[u8],
    device: &Arc<str>,
    receipts: Option<&mpsc::Sender<ReceiptJob>>,
) {
    let now = shared.now_ns();
    let (Some(sent), Some(seq)) = (json_u64(data, b"t"), json_u64(data, b"seq")) else {
        shared.other_events.fetch_add(1, Relaxed);
        return;
    };
    shared.deliveries.fetch_add(1, Relaxed);
    shared.last_delivery_ns.fetch_max(now, Relaxed);
    if st.seen.insert(seq) {
        shared.distinct.fetch_add(1, Relaxed);
    }
    st.batch.push(now.saturating_sub(sent) / 1000);
    if st.batch.len() >= BATCH {
        let mut latency = shared.latency.lock().expect("no panics while held");
        for us in st.batch.drain(..) {
            record(&mut latency, us);
        }
    }
    let Some(id) = id else { return };
    let id = String::from_utf8_lossy(id).into_owned();
    if let Some(queue) = receipts {
        let job = ReceiptJob {
            channel,
            device: device.clone(),
            id: id.clone(),
            sent_ns: sent,
        };
        match queue.try_send(job) {
            Ok(()) => {
                shared.receipts_queued.fetch_add(1, Relaxed);
            }
            Err(_) => {
                shared.receipts_dropped.fetch_add(1, Relaxed);
            }
        }
    }
    st.last_id = Some(id);
}

/// Publisher `k` of K sends events `k, k+K, k+2K, …` (event `j` is number `j / C` of channel
/// `j % C`), each at its scheduled time when paced, back to back otherwise.
async fn publisher(
    shared: Arc<Shared>,
    k: usize,
    total: u64,
    rate_total: Option<f64>,
    start: Instant,
    deadline: Instant,
) {
    let plan = &shared.plan;
    let step = plan.publishers.max(1) as u64;
    let channels = plan.channels as u64;
    let source = plan.sources.first().copied();
    let mut client = Client::new(plan.publish_target, source);
    let host = plan.host();
    let pad = "x".repeat(plan.pad);
    let paths: Vec<String> = (0..plan.channels)
        .map(|c| format!("/push/{}", plan.channel_name(c)))
        .collect();
    let device = format!("{}p{k}", plan.prefix);
    let content_type = if plan.batch > 1 {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    let headers = [("Content-Type", content_type), plan.identity(&device)];
    let mut histogram = latency_histogram();
    let mut j = k as u64;
    let mut seqs = Vec::with_capacity(plan.batch);
    let mut body = String::new();
    while j < total {
        if let Some(rate) = rate_total {
            let at = start + Duration::from_secs_f64(j as f64 / rate);
            if at >= deadline {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
        }
        if let Some(max_ahead) = plan.max_ahead {
            let limit = max_ahead.saturating_mul(shared.ready.load(Relaxed).max(1));
            while shared.in_flight() > limit && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        let channel = (j % channels) as usize;
        let sent = shared.now_ns();
        // One event, or a batch: this publisher's next events that go to the same channel.
        seqs.clear();
        body.clear();
        while seqs.len() < plan.batch && j < total && (j % channels) as usize == channel {
            let seq = j / channels;
            if !seqs.is_empty() {
                body.push('\n');
            }
            if pad.is_empty() {
                let _ = write!(body, "{{\"t\":{sent},\"seq\":{seq}}}");
            } else {
                let _ = write!(body, "{{\"t\":{sent},\"seq\":{seq},\"pad\":\"{pad}\"}}");
            }
            seqs.push(seq);
            j += step;
        }
        let request = http::request(
            "POST",
            &paths[channel],
            &host,
            &headers,
            Some(body.as_bytes()),
        );
        let began = Instant::now();
        match client.request(&request).await {
            Ok(status) if status / 100 == 2 => {
                record(&mut histogram, began.elapsed().as_micros() as u64);
                let mut published = shared.published[channel]
                    .lock()
                    .expect("no panics while held");
                for &seq in &seqs {
                    published.insert(seq);
                }
                drop(published);
                let events = seqs.len() as u64;
                shared.pushes_ok.fetch_add(events, Relaxed);
                shared.expected.fetch_add(
                    events * shared.ready_per_channel[channel].load(Relaxed),
                    Relaxed,
                );
            }
            Ok(status) => {
                shared.push_errors.fetch_add(seqs.len() as u64, Relaxed);
                shared.note_error(format!("push answered {status}"));
            }
            Err(err) => {
                shared.push_errors.fetch_add(seqs.len() as u64, Relaxed);
                shared.note_error(format!("push: {err}"));
                // Do not spin on a server that refuses connections.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    shared
        .push_rtt
        .lock()
        .expect("no panics while held")
        .add(&histogram)
        .expect("same bounds");
}

/// Sends the receipts queued for it, one at a time on one keep-alive connection.
async fn receipt_sender(shared: Arc<Shared>, k: usize, mut queue: mpsc::Receiver<ReceiptJob>) {
    let plan = &shared.plan;
    let source = (!plan.sources.is_empty()).then(|| plan.sources[k % plan.sources.len()]);
    let mut client = Client::new(plan.target, source);
    let host = plan.host();
    let paths: Vec<String> = (0..plan.channels)
        .map(|c| format!("/feedback/{}", plan.channel_name(c)))
        .collect();
    while let Some(job) = queue.recv().await {
        let request = receipt::single(
            &paths[job.channel],
            &host,
            plan.receipt_sender(&job.device),
            &job.id,
        );
        let began = Instant::now();
        let result = client.request(&request).await;
        answered(&shared, result, began, 1, job.sent_ns);
    }
}

/// Device `index`'s receipts, on a keep-alive connection of its own opened with the first: one
/// request per delivery (`per-event`), or one in flight at a time, starting at least
/// `receipt_spacing` after the last, acknowledging every delivery that arrived meanwhile
/// (`coalesced`).
async fn device_receipts(shared: Arc<Shared>, index: usize, mut queue: mpsc::Receiver<ReceiptJob>) {
    let plan = &shared.plan;
    let source = (!plan.sources.is_empty()).then(|| plan.sources[index % plan.sources.len()]);
    let mut client = Client::new(plan.target, source);
    let host = plan.host();
    let path = format!("/feedback/{}", plan.channel_name(index % plan.channels));
    let mut waiting = Vec::new();
    let mut answer = Vec::new();
    let mut last_sent: Option<Instant> = None;
    while let Some(job) = queue.recv().await {
        let device = job.device.clone();
        let sender = plan.receipt_sender(&device);
        if plan.receipt_style == ReceiptStyle::PerEvent {
            let request = receipt::seed_form(&path, &host, sender, &job.id);
            let began = Instant::now();
            let result = client.request(&request).await;
            answered(&shared, result, began, 1, job.sent_ns);
            continue;
        }
        if let Some(at) = last_sent.map(|sent| sent + plan.receipt_spacing) {
            tokio::time::sleep_until(at.into()).await;
        }
        waiting.clear();
        waiting.push(job);
        while let Ok(more) = queue.try_recv() {
            waiting.push(more);
        }
        let covered = waiting.len() as u64;
        let newest_sent = waiting.iter().map(|j| j.sent_ns).max().unwrap_or(0);
        let Some(upto) = receipt::upto(waiting.iter().map(|j| j.id.as_str())) else {
            shared.receipt_errors.fetch_add(covered, Relaxed);
            shared.note_error("coalesced: an id that is not a number".to_owned());
            continue;
        };
        let request = receipt::cumulative(&path, &host, sender, upto);
        let began = Instant::now();
        last_sent = Some(began);
        let result = client
            .request_keeping_body(&request, Some(&mut answer))
            .await;
        if matches!(result, Ok(status) if status / 100 == 2) {
            let acknowledged = json_u64(&answer, b"acknowledged").unwrap_or(0);
            shared.server_acknowledged.fetch_add(acknowledged, Relaxed);
        }
        answered(&shared, result, began, covered, newest_sent);
    }
}

/// Counts the answer to a receipt request that acknowledged `covered` deliveries, the newest
/// published at `sent_ns`.
fn answered(
    shared: &Shared,
    result: std::io::Result<u16>,
    began: Instant,
    covered: u64,
    sent_ns: u64,
) {
    let now = shared.now_ns();
    match result {
        Ok(status) if status / 100 == 2 => {
            record(
                &mut shared.receipt_rtt.lock().expect("no panics while held"),
                began.elapsed().as_micros() as u64,
            );
            if sent_ns > 0 {
                record(
                    &mut shared.receipt_e2e.lock().expect("no panics while held"),
                    now.saturating_sub(sent_ns) / 1000,
                );
            }
            shared.receipt_requests.fetch_add(1, Relaxed);
            shared.receipts_ok.fetch_add(covered, Relaxed);
            shared.first_receipt_ns.fetch_min(now, Relaxed);
            shared.last_receipt_ns.fetch_max(now, Relaxed);
        }
        Ok(status) => {
            shared.receipt_errors.fetch_add(covered, Relaxed);
            shared.note_error(format!("receipt answered {status}"));
        }
        Err(err) => {
            shared.receipt_errors.fetch_add(covered, Relaxed);
            shared.note_error(format!("receipt: {err}"));
        }
    }
}

/// A progress line on stderr about once a second.
struct Progress {
    shared: Arc<Shared>,
    last: Mutex<Instant>,
    start: Instant,
}

impl Progress {
    fn new(shared: Arc<Shared>) -> Self {
        Progress {
            shared,
            last: Mutex::new(Instant::now()),
            start: Instant::now(),
        }
    }

    fn tick(&self, phase: &str) {
        if !self.shared.plan.progress {
            return;
        }
        let mut last = self.last.lock().expect("no panics while held");
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        *last = Instant::now();
        let s = &self.shared;
        eprintln!(
            "[{:6.1}s] {phase:<10} subscribers {}/{} (failed {}, reconnects {})  pushed {}  delivered {}/{}  receipts {}",
            self.start.elapsed().as_secs_f64(),
            s.ready.load(Relaxed),
            s.plan.subscribers,
            s.failed.load(Relaxed),
            s.reconnects.load(Relaxed),
            s.pushes_ok.load(Relaxed),
            s.distinct.load(Relaxed),
            s.expected.load(Relaxed),
            s.receipts_ok.load(Relaxed),
        );
    }

    fn done(&self) {
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(2))
            .unwrap_or(self.start);
        *self.last.lock().expect("no panics while held") = long_ago;
        self.tick("done");
    }
}
