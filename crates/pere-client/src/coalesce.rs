//! Coalescing receipts: which receipt request goes next. A subscriber keeps at most one receipt
//! request in flight; the receipts asked for meanwhile wait here and leave together in the next
//! one: one cumulative receipt (`{"upto":N,"status":S}`) when that says exactly what they say, a
//! batch (NDJSON, a line each) otherwise, and the original one-receipt request when only one
//! waits, so a quiet device acknowledges at once, as before.
//!
//! A [`Coalescer`] is a pure state machine, without I/O or clock: it is told what the subscriber
//! received and what the application acknowledged, hands out the next [`Request`], and is told
//! how that request ended.
//!
//! **When a cumulative receipt is safe.** "Up to N with status S" acknowledges, on the server,
//! every event up to N that the device owes, so it is sent only when that is what the device
//! means:
//! - every receipt waiting has the status S, and N is the highest of their ids;
//! - every event up to N that this subscriber received is acknowledged, in flight, waiting with
//!   status S, or owed with status S (its receipt failed; the cumulative one settles it);
//! - the ids it received run without a hole from the first one up to N: no `pere-gap`, no id that
//!   was skipped (a hole is an event the device never saw; once there is one, only batches go);
//! - N is not above the last id received.
//!
//! Events before the first one this subscriber received are not known here; a cumulative receipt
//! covers those the device still owes (see "Coalescing receipts" in the project's decisions).

use std::collections::BTreeMap;
use std::mem;

/// The most receipts in one batch: the server takes up to `--max-batch-events` lines (1,000 by
/// default); the rest wait for the next request.
pub const MAX_BATCH_LINES: usize = 500;
/// The most bytes of lines in one batch: half the server's default `--max-body` (64 KiB), so a
/// batch of long statuses is never refused for its size.
pub const MAX_BATCH_BYTES: usize = 32 * 1024;
/// How many received events without a settled receipt are remembered. An application that leaves
/// more than this unacknowledged loses the oldest from view, and with them the right to send
/// cumulative receipts (batches still go): bounded so a listener that never acknowledges does not
/// grow forever.
const MAX_OPEN: usize = 10_000;

/// One receipt the application (or the subscriber) asked for, with whoever waits for its outcome.
#[derive(Debug)]
pub struct Asked<W> {
    /// The event's id, as the feed gave it.
    pub id: String,
    /// The status.
    pub status: String,
    /// Its idempotency key: the same on every attempt, in whatever request it goes.
    pub key: String,
    /// Who hears how it went.
    pub waiter: W,
    // Sent in a request of its own: it was in a coalesced request the server refused.
    alone: bool,
}

impl<W> Asked<W> {
    /// A receipt for event `id` with `status`, sent with `key`.
    pub fn new(id: impl Into<String>, status: impl Into<String>, key: String, waiter: W) -> Self {
        Asked {
            id: id.into(),
            status: status.into(),
            key,
            waiter,
            alone: false,
        }
    }

    /// The id as a number; `None` for an id that is not one (such a receipt always goes alone).
    pub fn number(&self) -> Option<u64> {
        self.id.parse().ok()
    }
}

/// The next receipt request.
#[derive(Debug)]
pub enum Request<W> {
    /// One receipt, in the original form.
    Single(Asked<W>),
    /// Several, one NDJSON line each, ids ascending.
    Batch(Vec<Asked<W>>),
    /// Everything the device owes up to `upto`, with `status`.
    Cumulative {
        /// N.
        upto: u64,
        /// S.
        status: String,
        /// The receipts it stands for.
        receipts: Vec<Asked<W>>,
        /// Events whose receipt failed earlier with the same status: settled by this one too.
        owed: Vec<u64>,
    },
}

impl<W> Request<W> {
    /// The receipts the request stands for.
    pub fn into_receipts(self) -> Vec<Asked<W>> {
        match self {
            Request::Single(one) => vec![one],
            Request::Batch(all) | Request::Cumulative { receipts: all, .. } => all,
        }
    }
}

/// A received event whose receipt is neither waiting, in flight nor settled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Open {
    /// The application has not acknowledged it yet.
    Unasked,
    /// Its receipt, with this status, failed in a way that may pass.
    Owed(String),
}

/// The receipts of one subscriber: those waiting, whether one request is in flight, and what a
/// cumulative receipt would cover.
#[derive(Debug)]
pub struct Coalescer<W> {
    // In the order asked.
    queue: Vec<Asked<W>>,
    in_flight: bool,
    // False: every receipt alone, always (the original subscriber's way).
    coalesce: bool,
    // The server refused a coalesced form it does not know: one receipt per request until the
    // feed reconnects.
    one_by_one: bool,
    open: BTreeMap<u64, Open>,
    last_received: Option<u64>,
    // Every id from the first received up to the last one arrived.
    unbroken: bool,
}

impl<W> Default for Coalescer<W> {
    fn default() -> Self {
        Coalescer::new(true)
    }
}

impl<W> Coalescer<W> {
    /// A coalescer; `coalesce: false` sends every receipt in a request of its own, one at a time.
    pub fn new(coalesce: bool) -> Self {
        Coalescer {
            queue: Vec::new(),
            in_flight: false,
            coalesce,
            one_by_one: false,
            open: BTreeMap::new(),
            last_received: None,
            unbroken: true,
        }
    }

    /// Event `id` was handed to the application: its receipt is owed until asked for.
    pub fn received(&mut self, id: u64) {
        if self
            .last_received
            .is_some_and(|last| last.checked_add(1) != Some(id))
        {
            self.unbroken = false;
        }
        self.last_received = Some(id);
        self.open(id, Open::Unasked);
    }

    /// `pere-reset`: the ids received so far belong to a history the server no longer has.
    pub fn forget(&mut self) {
        self.open.clear();
        self.last_received = None;
        self.unbroken = true;
    }

    /// A new feed connection: it may reach a server that takes coalesced receipts again.
    pub fn reconnected(&mut self) {
        self.one_by_one = false;
    }

    /// From now until the feed reconnects, one receipt per request. True when it was not so.
    pub fn one_by_one(&mut self) -> bool {
        !mem::replace(&mut self.one_by_one, true)
    }

    /// Whether receipts go together now (coalescing asked for, and not refused by the server).
    pub fn merges(&self) -> bool {
        self.coalesce && !self.one_by_one
    }

    /// The application acknowledged an event: the receipt waits for the next request.
    pub fn ask(&mut self, asked: Asked<W>) {
        if let Some(id) = asked.number() {
            self.open.remove(&id);
        }
        self.queue.push(asked);
    }

    /// True when nothing waits and no request is in flight.
    pub fn is_idle(&self) -> bool {
        !self.in_flight && self.queue.is_empty()
    }

    /// The next request, now in flight; `None` while one is in flight or nothing waits.
    pub fn next_request(&mut self) -> Option<Request<W>> {
        if self.in_flight || self.queue.is_empty() {
            return None;
        }
        self.in_flight = true;
        if let Some(i) = self
            .queue
            .iter()
            .position(|a| a.alone || a.number().is_none())
        {
            return Some(Request::Single(self.queue.remove(i)));
        }
        if !self.coalesce || self.one_by_one || self.queue.len() == 1 {
            return Some(Request::Single(self.queue.remove(0)));
        }
        if let Some(cumulative) = self.cumulative() {
            return Some(cumulative);
        }
        self.queue.sort_by_key(Asked::number);
        let (mut lines, mut bytes) = (0, 0);
        for asked in &self.queue {
            let size = line_size(asked);
            if lines > 0 && (lines == MAX_BATCH_LINES || bytes + size > MAX_BATCH_BYTES) {
                break;
            }
            lines += 1;
            bytes += size;
        }
        let rest = self.queue.split_off(lines);
        let mut batch = mem::replace(&mut self.queue, rest);
        if batch.len() == 1 {
            return batch.pop().map(Request::Single);
        }
        Some(Request::Batch(batch))
    }

    /// The request in flight ended (however it went, once its outcome is noted).
    pub fn done(&mut self) {
        self.in_flight = false;
    }

    /// The receipt of `id`, with `status`, failed in a way that may pass: the device still owes
    /// it.
    pub fn owe(&mut self, id: u64, status: &str) {
        self.open(id, Open::Owed(status.to_owned()));
    }

    /// A cumulative receipt settled these owed receipts.
    pub fn settle_owed(&mut self, ids: &[u64]) {
        for id in ids {
            self.open.remove(id);
        }
    }

    /// The server refused a coalesced request: its receipts go again, each in a request of its
    /// own (so each gets the server's own verdict), before anything else.
    pub fn again_alone(&mut self, receipts: Vec<Asked<W>>) {
        let mut front: Vec<Asked<W>> = receipts
            .into_iter()
            .map(|mut asked| {
                asked.alone = true;
                asked
            })
            .collect();
        front.append(&mut self.queue);
        self.queue = front;
    }

    fn open(&mut self, id: u64, open: Open) {
        self.open.insert(id, open);
        if self.open.len() > MAX_OPEN {
            // Forgotten, so no longer vouched for.
            self.open.pop_first();
            self.unbroken = false;
        }
    }

    /// Every waiting receipt as one cumulative request, when that is safe (see the module docs).
    fn cumulative(&mut self) -> Option<Request<W>> {
        if !self.unbroken {
            return None;
        }
        let status = &self.queue.first()?.status;
        if self.queue.iter().any(|a| &a.status != status) {
            return None;
        }
        let upto = self.queue.iter().filter_map(Asked::number).max()?;
        if self.last_received.is_none_or(|last| upto > last) {
            return None;
        }
        let mut owed = Vec::new();
        for (&id, open) in self.open.range(..=upto) {
            match open {
                Open::Owed(s) if s == status => owed.push(id),
                _ => return None,
            }
        }
        let status = status.clone();
        Some(Request::Cumulative {
            upto,
            status,
            receipts: mem::take(&mut self.queue),
            owed,
        })
    }
}

/// About the bytes of one batch line: `{"id":N,"status":"S","key":"K"}` and its newline (a status
/// with characters JSON escapes takes more, well within the margin of [`MAX_BATCH_BYTES`]).
fn line_size<W>(asked: &Asked<W>) -> usize {
    32 + asked.id.len() + asked.status.len() + asked.key.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt for `id` whose waiter is its id, so a test sees who is in which request.
    fn asked(id: u64, status: &str) -> Asked<u64> {
        Asked::new(id.to_string(), status, format!("k{id}"), id)
    }

    /// A request in one line: `single 3`, `batch 1,2`, `upto 5 ok for 4,5 owed 2`.
    fn show(request: Option<Request<u64>>) -> String {
        let ids = |all: &[Asked<u64>]| {
            all.iter()
                .map(|a| a.waiter.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match request {
            None => "none".into(),
            Some(Request::Single(one)) => format!("single {}", one.id),
            Some(Request::Batch(all)) => format!("batch {}", ids(&all)),
            Some(Request::Cumulative {
                upto,
                status,
                receipts,
                owed,
            }) => {
                let owed: Vec<String> = owed.iter().map(u64::to_string).collect();
                format!(
                    "upto {upto} {status} for {} owed {}",
                    ids(&receipts),
                    owed.join(",")
                )
            }
        }
    }

    /// Receives `ids`, acknowledges them with `status`, in that order.
    fn receive_and_ask(c: &mut Coalescer<u64>, ids: &[u64], status: &str) {
        for &id in ids {
            c.received(id);
        }
        for &id in ids {
            c.ask(asked(id, status));
        }
    }

    /// Takes the next request and ends it at once.
    fn next_done(c: &mut Coalescer<u64>) -> String {
        let request = show(c.next_request());
        c.done();
        request
    }

    #[test]
    fn a_quiet_device_sends_each_receipt_at_once_alone() {
        let mut c = Coalescer::default();
        c.received(1);
        c.ask(asked(1, "ok"));
        assert_eq!(show(c.next_request()), "single 1");
        assert!(!c.is_idle());
        c.done();
        assert!(c.is_idle());
        c.received(2);
        c.ask(asked(2, "ok"));
        assert_eq!(next_done(&mut c), "single 2");
        assert_eq!(next_done(&mut c), "none");
    }

    #[test]
    fn one_request_in_flight_and_the_rest_in_one_cumulative_receipt() {
        let mut c = Coalescer::default();
        receive_and_ask(&mut c, &[1], "ok");
        assert_eq!(show(c.next_request()), "single 1");
        receive_and_ask(&mut c, &[2, 3, 4, 5], "ok");
        assert_eq!(show(c.next_request()), "none", "one in flight at a time");
        c.done();
        assert_eq!(next_done(&mut c), "upto 5 ok for 2,3,4,5 owed ");
        assert!(c.is_idle());
    }

    #[test]
    fn statuses_that_differ_go_as_a_batch_in_id_order() {
        let mut c = Coalescer::default();
        for id in 1..=4 {
            c.received(id);
        }
        c.ask(asked(3, "ok"));
        c.ask(asked(1, "ok"));
        c.ask(asked(2, "failed"));
        c.ask(asked(4, "ok"));
        assert_eq!(next_done(&mut c), "batch 1,2,3,4");
    }

    #[test]
    fn an_event_received_and_not_yet_acknowledged_below_n_forbids_a_cumulative_receipt() {
        let mut c = Coalescer::default();
        for id in 1..=3 {
            c.received(id);
        }
        // 1 is still being worked on: "upto 3" would acknowledge it too.
        c.ask(asked(2, "ok"));
        c.ask(asked(3, "ok"));
        assert_eq!(next_done(&mut c), "batch 2,3");
        c.ask(asked(1, "ok"));
        assert_eq!(next_done(&mut c), "single 1");
        // Once everything below is settled, cumulative again.
        receive_and_ask(&mut c, &[4, 5], "ok");
        assert_eq!(next_done(&mut c), "upto 5 ok for 4,5 owed ");
        // An event above N that is still open does not matter.
        for id in 6..=8 {
            c.received(id);
        }
        c.ask(asked(6, "ok"));
        c.ask(asked(7, "ok"));
        assert_eq!(next_done(&mut c), "upto 7 ok for 6,7 owed ");
    }

    #[test]
    fn a_hole_in_the_ids_received_leaves_only_batches() {
        let mut c = Coalescer::default();
        receive_and_ask(&mut c, &[10, 11], "ok");
        assert_eq!(
            next_done(&mut c),
            "upto 11 ok for 10,11 owed ",
            "from the first id"
        );
        // 12 and 13 never arrived (a gap, an event not listened to).
        receive_and_ask(&mut c, &[14, 15], "ok");
        assert_eq!(next_done(&mut c), "batch 14,15");
        receive_and_ask(&mut c, &[16, 17], "ok");
        assert_eq!(next_done(&mut c), "batch 16,17", "for good");
        // Ids that start over (pere-reset) start a new run.
        c.forget();
        receive_and_ask(&mut c, &[1, 2], "ok");
        assert_eq!(next_done(&mut c), "upto 2 ok for 1,2 owed ");
    }

    #[test]
    fn a_failed_receipt_is_owed_and_settled_by_a_cumulative_receipt_of_its_status() {
        let mut c = Coalescer::default();
        receive_and_ask(&mut c, &[1], "ok");
        assert_eq!(next_done(&mut c), "single 1");
        c.owe(1, "ok");
        receive_and_ask(&mut c, &[2, 3], "ok");
        assert_eq!(next_done(&mut c), "upto 3 ok for 2,3 owed 1");
        c.settle_owed(&[1]);
        // Owed with another status: a cumulative receipt would change it.
        receive_and_ask(&mut c, &[4], "ok");
        assert_eq!(next_done(&mut c), "single 4");
        c.owe(4, "failed");
        receive_and_ask(&mut c, &[5, 6], "ok");
        assert_eq!(next_done(&mut c), "batch 5,6");
        // Sent again (its event came back): no longer owed.
        c.ask(asked(4, "failed"));
        assert_eq!(next_done(&mut c), "single 4");
        receive_and_ask(&mut c, &[7, 8], "ok");
        assert_eq!(next_done(&mut c), "upto 8 ok for 7,8 owed ");
    }

    #[test]
    fn a_refused_coalesced_request_goes_again_one_receipt_at_a_time() {
        let mut c = Coalescer::default();
        receive_and_ask(&mut c, &[1, 2, 3], "ok");
        let Some(request) = c.next_request() else {
            panic!("a request")
        };
        receive_and_ask(&mut c, &[4], "ok");
        c.done();
        c.again_alone(request.into_receipts());
        assert_eq!(next_done(&mut c), "single 1");
        assert_eq!(next_done(&mut c), "single 2");
        assert_eq!(next_done(&mut c), "single 3");
        assert_eq!(next_done(&mut c), "single 4");
    }

    #[test]
    fn one_by_one_until_the_feed_reconnects() {
        let mut c = Coalescer::default();
        assert!(c.one_by_one());
        assert!(!c.one_by_one(), "said once");
        receive_and_ask(&mut c, &[1, 2], "ok");
        assert_eq!(next_done(&mut c), "single 1");
        assert_eq!(next_done(&mut c), "single 2");
        c.reconnected();
        receive_and_ask(&mut c, &[3, 4], "ok");
        assert_eq!(next_done(&mut c), "upto 4 ok for 3,4 owed ");
    }

    #[test]
    fn without_coalescing_every_receipt_goes_alone_in_the_order_asked() {
        let mut c = Coalescer::new(false);
        receive_and_ask(&mut c, &[1], "ok");
        assert_eq!(show(c.next_request()), "single 1");
        c.ask(asked(3, "ok"));
        receive_and_ask(&mut c, &[2], "ok");
        c.done();
        assert_eq!(next_done(&mut c), "single 3");
        assert_eq!(next_done(&mut c), "single 2");
        c.reconnected();
        receive_and_ask(&mut c, &[4, 5], "ok");
        assert_eq!(next_done(&mut c), "single 4");
    }

    #[test]
    fn ids_that_are_not_numbers_go_alone() {
        let mut c = Coalescer::default();
        c.received(1);
        c.ask(Asked::new("1400000000-1", "ok", "k".into(), 0));
        c.ask(asked(1, "ok"));
        assert_eq!(next_done(&mut c), "single 1400000000-1");
        assert_eq!(next_done(&mut c), "single 1");
    }

    #[test]
    fn a_cumulative_receipt_never_reaches_past_the_last_id_received() {
        let mut c = Coalescer::default();
        receive_and_ask(&mut c, &[1, 2], "ok");
        assert_eq!(next_done(&mut c), "upto 2 ok for 1,2 owed ");
        c.forget();
        // Late receipts of the old history, above what the new one has received.
        c.received(1);
        c.ask(asked(1, "ok"));
        c.ask(asked(2, "ok"));
        assert_eq!(next_done(&mut c), "batch 1,2");
    }

    #[test]
    fn batches_are_bounded_and_the_rest_follows() {
        let mut c = Coalescer::default();
        let n = MAX_BATCH_LINES as u64 + 10;
        for id in 1..=n {
            c.received(id);
        }
        for id in 1..=n {
            c.ask(asked(id, if id % 2 == 0 { "ok" } else { "other" }));
        }
        let Some(Request::Batch(first)) = c.next_request() else {
            panic!("a batch")
        };
        c.done();
        assert_eq!(first.len(), MAX_BATCH_LINES);
        assert_eq!(
            next_done(&mut c),
            format!(
                "batch {}",
                (501..=n)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        );
        // Long statuses: bounded by bytes.
        let long = "x".repeat(1000);
        for id in n + 1..=n + 100 {
            c.received(id);
            c.ask(asked(id, &format!("{long}{}", id % 2)));
        }
        let Some(Request::Batch(some)) = c.next_request() else {
            panic!("a batch")
        };
        let bytes: usize = some.iter().map(line_size).sum();
        assert!(
            some.len() < 100 && bytes <= MAX_BATCH_BYTES,
            "{}",
            some.len()
        );
    }

    #[test]
    fn too_many_open_events_forbid_cumulative_receipts() {
        let mut c = Coalescer::default();
        let last = MAX_OPEN as u64 + 1;
        for id in 1..=last {
            c.received(id);
        }
        assert_eq!(c.open.len(), MAX_OPEN);
        // Event 1 is no longer in view: "upto" would acknowledge it unseen.
        for id in 2..=last {
            c.ask(asked(id, "ok"));
        }
        assert!(show(c.next_request()).starts_with("batch 2,3,"));
    }
}
