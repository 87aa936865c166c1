//! The server's metrics for `GET /metrics`: what the door counts (requests answered, refusals,
//! open streams), what the hub's notices tell (receipts and their latency, cut subscribers), the
//! hub's own running counts (publications, deliveries, redeliveries, lost notices, events owed
//! receipts), the store's commits and the damaged events its reads met.
//!
//! Written in either text format ([`Format`]): OpenMetrics when the scraper asks for it by name
//! (Prometheus does), the Prometheus text format 0.0.4 otherwise (curl, `promtool check
//! metrics`, a browser), each by its own rules.
//!
//! Labels come from small fixed sets (stream kinds, route names, status codes, error codes):
//! never a channel, a device or a raw path, so a scrape stays the same size however many
//! devices connect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pere_core::notice::{Heard, Observer};
use pere_core::{Hub, HubNotice, Store};
use pere_proto::StatusClass;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The text format of a scrape, chosen by its `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`): what every scraper and
    /// `promtool check metrics` reads; the default.
    Prometheus,
    /// OpenMetrics 1.0 (`application/openmetrics-text`), for a scraper that asks for it.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` names `application/openmetrics-text` with a quality at least
    /// that of plain text (Prometheus sends it first, at q=1, and `text/plain` at q=0.5); the
    /// Prometheus text format for anything else, `*/*` and no header included. A scraper that
    /// does not say it reads OpenMetrics gets the format every one of them reads.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut params = range.split(';').map(str::trim);
            let media = params.next().unwrap_or_default().to_ascii_lowercase();
            let q = params
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The media type of a scrape in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// What kind of stream a client holds open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `GET /feed/:channel`.
    Feed,
    /// `GET /receipts/:channel`.
    Receipts,
    /// `GET /presence/:channel`.
    Presence,
    /// `GET /admin/stream` (the dashboard).
    Admin,
}

impl StreamKind {
    fn label(self) -> &'static str {
        match self {
            StreamKind::Feed => "feed",
            StreamKind::Receipts => "receipts",
            StreamKind::Presence => "presence",
            StreamKind::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusClassLabel {
    status_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Every metric of the server, and the registry that writes them out.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    // Counts read from elsewhere are brought up to date under this lock at each scrape, so two
    // scrapes at once cannot add the same difference twice.
    scrape: Mutex<()>,
    streams: Family<KindLabel, Gauge>,
    streams_all: Gauge,
    connections: Gauge,
    published: Counter,
    deliveries: Counter,
    /// The receipt counters of [`StatusClass::ALL`], in its order, taken from their family
    /// once: a lookup by label for each receipt was a tenth of what a coalesced receipt cost.
    receipts: [Counter; 3],
    receipt_latency: Histogram,
    pending: Gauge,
    cuts: Counter,
    redeliveries: Counter,
    refused: Family<CodeLabel, Counter>,
    http: Family<HttpLabels, Counter>,
    commit_duration: Histogram,
    commit_writes: Histogram,
    webhook_attempts: Family<OutcomeLabel, Counter>,
    webhook_drops: Counter,
    notices_dropped: Counter,
    damaged_reads: Counter,
}

impl Metrics {
    /// Every metric at zero, registered under the `pere_` prefix.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("pere");
        let streams = Family::<KindLabel, Gauge>::default();
        registry.register(
            "open_streams",
            "Streams open now, by kind (feed, receipts, presence)",
            streams.clone(),
        );
        // Every kind, whatever it is, so a dashboard needs no sum.
        let streams_all = Gauge::default();
        registry.register(
            "open_streams_all",
            "Streams open now, every kind",
            streams_all.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now (streams and short requests)",
            connections.clone(),
        );
        let published = Counter::default();
        registry.register(
            "events_published",
            "Events published (a replayed idempotent push is not counted)",
            published.clone(),
        );
        let deliveries = Counter::default();
        registry.register(
            "deliveries",
            "Events handed to subscriber streams: live ones once per subscriber, replayed ones once per stream",
            deliveries.clone(),
        );
        let receipts = Family::<StatusClassLabel, Counter>::default();
        registry.register(
            "receipts",
            "Receipts recorded, by what their status says (ok, failed, other)",
            receipts.clone(),
        );
        // 1 ms to about 9 hours: a phone that acknowledges when it wakes up is still on the scale.
        let receipt_latency = Histogram::new(exponential_buckets(0.001, 4.0, 13));
        registry.register_with_unit(
            "receipt_latency",
            "Time from an event's publication to each receipt for it",
            Unit::Seconds,
            receipt_latency.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "events_pending_receipts",
            "Events still owed receipts by their expected recipients (among those followed live)",
            pending.clone(),
        );
        let cuts = Counter::default();
        registry.register(
            "subscriber_cuts",
            "Streams ended because the subscriber fell too far behind",
            cuts.clone(),
        );
        let redeliveries = Counter::default();
        registry.register(
            "redeliveries",
            "Events sent again because their receipt was overdue",
            redeliveries.clone(),
        );
        let refused = Family::<CodeLabel, Counter>::default();
        registry.register(
            "refused_requests",
            "Requests answered with an error, by error code",
            refused.clone(),
        );
        let http = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_responses",
            "HTTP answers, by route and status",
            http.clone(),
        );
        // 50 µs to about 3 s.
        let commit_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        registry.register_with_unit(
            "store_commit_duration",
            "Time from the start of a store write batch to the end of its commit (SQLite)",
            Unit::Seconds,
            commit_duration.clone(),
        );
        let commit_writes = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "store_commit_writes",
            "Writes committed together in one store transaction (SQLite group commit)",
            commit_writes.clone(),
        );
        let webhook_attempts = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_attempts",
            "Receipt webhook POSTs, by outcome (delivered, failed)",
            webhook_attempts.clone(),
        );
        let webhook_drops = Counter::default();
        registry.register(
            "webhook_drops",
            "Receipt summaries given up after every webhook attempt failed",
            webhook_drops.clone(),
        );
        let notices_dropped = Counter::default();
        registry.register(
            "observer_notices_dropped",
            "Hub notices lost by observers (webhook, metrics) that had no room for them",
            notices_dropped.clone(),
        );
        let damaged_reads = Counter::default();
        registry.register(
            "store_damaged_reads",
            "Damaged events met by store reads and left out (each time one is met; /readyz counts each once)",
            damaged_reads.clone(),
        );
        // Present from the first scrape, at zero: an alert on a rate needs the series to exist.
        for kind in [
            StreamKind::Feed,
            StreamKind::Receipts,
            StreamKind::Presence,
            StreamKind::Admin,
        ] {
            let _ = streams.get_or_create(&KindLabel { kind: kind.label() });
        }
        let receipts = StatusClass::ALL.map(|class| {
            receipts
                .get_or_create(&StatusClassLabel {
                    status_class: class.as_str(),
                })
                .clone()
        });
        for outcome in ["delivered", "failed"] {
            let _ = webhook_attempts.get_or_create(&OutcomeLabel { outcome });
        }
        Arc::new(Metrics {
            registry,
            scrape: Mutex::new(()),
            streams,
            streams_all,
            connections,
            published,
            deliveries,
            receipts,
            receipt_latency,
            pending,
            cuts,
            redeliveries,
            refused,
            http,
            commit_duration,
            commit_writes,
            webhook_attempts,
            webhook_drops,
            notices_dropped,
            damaged_reads,
        })
    }

    /// Counts a stream of `kind` open until the returned guard is dropped.
    pub fn open_stream(&self, kind: StreamKind) -> OpenStream {
        let gauge = self
            .streams
            .get_or_create_owned(&KindLabel { kind: kind.label() });
        gauge.inc();
        self.streams_all.inc();
        OpenStream {
            gauge,
            all: self.streams_all.clone(),
        }
    }

    /// Counts an answer of `route` (a path template from [`crate::route::Route::template`]) with `status`.
    pub fn answered(&self, route: &'static str, status: u16) {
        self.http.get_or_create(&HttpLabels { route, status }).inc();
    }

    /// Counts a request refused with error `code`.
    pub fn refused(&self, code: &'static str) {
        self.refused.get_or_create(&CodeLabel { code }).inc();
    }

    /// Counts a store commit of `writes` writes that took `duration`.
    pub fn committed(&self, duration: Duration, writes: usize) {
        self.commit_duration.observe(duration.as_secs_f64());
        self.commit_writes.observe(writes as f64);
    }

    /// Counts a webhook POST, delivered or not.
    pub fn webhook_attempt(&self, delivered: bool) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.webhook_attempts
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a receipt summary the webhook gave up on.
    pub fn webhook_dropped(&self) {
        self.webhook_drops.inc();
    }

    /// Hears `hub`'s notices (receipts, cut subscribers) as the hub applies them. Counting is
    /// a few additions, done on the spot: a task woken for each receipt cost more than the
    /// counting (a receipt is the request devices send most).
    pub fn observe<S: Store>(self: &Arc<Self>, hub: &Hub<S>) {
        hub.add_observer(self.clone());
    }

    fn note(&self, notice: &HubNotice) {
        match notice {
            HubNotice::Receipt { receipt, published } => {
                let class = status_class(&receipt.status);
                let at = StatusClass::ALL.iter().position(|c| *c == class);
                if let Some(counter) = at.and_then(|at| self.receipts.get(at)) {
                    counter.inc();
                }
                if let Some(at) = published {
                    let latency = (receipt.time - *at).to_std().unwrap_or_default();
                    self.receipt_latency.observe(latency.as_secs_f64());
                }
            }
            HubNotice::SubscriberCut { .. } => {
                self.cuts.inc();
            }
            HubNotice::Published { .. }
            | HubNotice::Completed { .. }
            | HubNotice::Presence { .. }
            | HubNotice::Membership(_) => {}
        }
    }

    /// The metrics in OpenMetrics, with the counts kept elsewhere brought up to date:
    /// `connections` is the number of client connections open now.
    pub fn render<S: Store>(&self, hub: &Hub<S>, connections: usize) -> String {
        self.render_in(hub, connections, Format::OpenMetrics)
    }

    /// The metrics in `format`, as [`Metrics::render`] makes them.
    pub fn render_in<S: Store>(&self, hub: &Hub<S>, connections: usize, format: Format) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        catch_up(&self.published, hub.published());
        catch_up(&self.deliveries, hub.deliveries());
        catch_up(&self.redeliveries, hub.redeliveries());
        catch_up(&self.notices_dropped, hub.dropped_notices());
        catch_up(&self.damaged_reads, hub.store().damage().reads);
        self.pending
            .set(i64::try_from(hub.incomplete_events()).unwrap_or(i64::MAX));
        self.connections
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => prometheus_text(&out),
        }
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text (prometheus-client writes only the
/// latter). They differ, for what this server writes, in three ways: a counter's family is named
/// with its samples' `_total` in its `# HELP` and `# TYPE` lines (OpenMetrics names it without,
/// which a 0.0.4 parser reads as a family with no samples beside samples of no family), and
/// there is no `# UNIT` line and no `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's `# HELP` comes before its `# TYPE`, which says whether it is a counter.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(held) = help.replace(rest) {
                push_line(&mut out, "# HELP ", held);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let total = kind == "counter" && !name.ends_with("_total");
            let suffix = if total { "_total" } else { "" };
            if let Some(held) = help.take() {
                let text = held.strip_prefix(name).unwrap_or(held);
                out.push_str("# HELP ");
                out.push_str(name);
                out.push_str(suffix);
                push_line(&mut out, "", text);
            }
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            push_line(&mut out, "", kind);
            continue;
        }
        if let Some(held) = help.take() {
            push_line(&mut out, "# HELP ", held);
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        push_line(&mut out, "", line);
    }
    if let Some(held) = help {
        push_line(&mut out, "# HELP ", held);
    }
    out
}

fn push_line(out: &mut String, prefix: &str, text: &str) {
    out.push_str(prefix);
    out.push_str(text);
    out.push('\n');
}

/// Raises `counter` to `total`, a count kept elsewhere that only grows.
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// An open stream's place in [`Metrics`]; dropping it counts the stream closed.
#[derive(Debug)]
pub struct OpenStream {
    gauge: Gauge,
    all: Gauge,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.dec();
        self.all.dec();
    }
}

/// The class of `status`, as [`StatusClass::of`] says, remembered for the last status this
/// thread classified: the receipts of one request, and of a device's many, share theirs.
fn status_class(status: &str) -> StatusClass {
    thread_local! {
        static LAST: std::cell::RefCell<(String, StatusClass)> =
            const { std::cell::RefCell::new((String::new(), StatusClass::Other)) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != status {
            // The text's room kept: statuses that take turns allocate nothing.
            last.0.clear();
            last.0.push_str(status);
            last.1 = StatusClass::of(status);
        }
        last.1
    })
}

impl Observer for Metrics {
    fn hears_publications(&self) -> bool {
        // Publications are counted by the hub (see `render_in`).
        false
    }

    fn notice(&self, notice: &HubNotice) -> Heard {
        self.note(notice);
        Heard::Taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_for_a_scraper_that_asks_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        for plain in [
            None,
            Some("*/*"),
            Some("text/plain; version=0.0.4"),
            Some("text/html,*/*;q=0.8"),
            Some("text/plain, application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0"),
        ] {
            assert_eq!(Format::negotiate(plain), Format::Prometheus, "{plain:?}");
        }
    }

    #[test]
    fn the_prometheus_text_names_counters_with_total_and_has_no_openmetrics_lines() {
        let metrics = Metrics::new();
        let hub = Hub::new(pere_core::MemoryStore::default(), Default::default());
        let text = metrics.render_in(&hub, 3, Format::Prometheus);
        assert!(text.contains(
            "# HELP pere_events_published_total Events published (a replayed idempotent push is not counted).\n# TYPE pere_events_published_total counter\npere_events_published_total 0\n"
        ), "{text}");
        assert!(text.contains("# TYPE pere_receipt_latency_seconds histogram\n"));
        assert!(text.contains("\npere_open_connections 3\n"));
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
        let open = metrics.render_in(&hub, 3, Format::OpenMetrics);
        assert!(
            open.contains("# TYPE pere_events_published counter\n") && open.ends_with("# EOF\n")
        );
    }

    #[test]
    fn a_remembered_status_class_is_the_class_of_the_status_asked() {
        for status in [
            "ok", "ok", "not ok", "", "queued", "rx ok", "rx ok", "failed",
        ] {
            assert_eq!(status_class(status), StatusClass::of(status), "{status}");
        }
    }

    #[test]
    fn open_streams_are_counted_until_dropped() {
        let metrics = Metrics::new();
        let feed = metrics.open_stream(StreamKind::Feed);
        let _receipts = metrics.open_stream(StreamKind::Receipts);
        assert_eq!(metrics.streams_all.get(), 2);
        drop(feed);
        assert_eq!(metrics.streams_all.get(), 1);
        assert_eq!(
            metrics
                .streams
                .get_or_create(&KindLabel { kind: "feed" })
                .get(),
            0
        );
    }
}
