//! What the user sees of each item the subscription yields, in the original subscriber's lines
//! (`RX EVT>`, `TX ACK>`) or as JSON lines, and what `--count` and the Ctrl-C summary count.
//!
//! Receipts are coalesced: under a burst, several `RX EVT>` lines may come before the `TX ACK>`
//! lines of their receipts, which go together in one request.

use std::cell::Cell;

use pere_client::{Acked, Error, Event, Item, Via};
use serde::Serialize;

use crate::cli::Cli;
use crate::output::say;

/// What happened so far, for the summary a Ctrl-C prints.
#[derive(Debug, Default)]
pub struct Tally {
    received: Cell<u64>,
    acknowledged: Cell<u64>,
}

impl Tally {
    /// `SUMMARY> received: N, acknowledged: M`: new events, and receipts the server took.
    pub fn summary(&self) -> String {
        format!(
            "SUMMARY> received: {}, acknowledged: {}",
            self.received.get(),
            self.acknowledged.get()
        )
    }
}

/// One `--json` line.
#[derive(Serialize)]
struct JsonEvent<'a> {
    id: serde_json::Value,
    event: &'a str,
    data: &'a str,
    receipt: Option<&'a serde_json::Value>,
}

/// Prints items as the flags say and counts settled events for `--count`.
#[derive(Debug)]
pub struct Show<'a> {
    json: bool,
    quiet: bool,
    acks: bool,
    retries: u32,
    count: Option<u64>,
    url: &'a str,
    tally: &'a Tally,
    // Events received whose receipt is settled (or that need none): what `--count` counts.
    settled: u64,
    // Events received whose receipt's outcome has not come yet.
    pending: u64,
    // With `--json`, the events whose lines wait for their receipts.
    held: Vec<Event>,
}

impl<'a> Show<'a> {
    /// For these flags; `url` is the feed's, for reconnection notices.
    pub fn new(cli: &Cli, url: &'a str, tally: &'a Tally) -> Self {
        Show {
            json: cli.json,
            quiet: cli.quiet,
            acks: !cli.no_ack,
            retries: cli.retries,
            count: cli.count,
            url,
            tally,
            settled: 0,
            pending: 0,
            held: Vec::new(),
        }
    }

    /// True when the events received are enough for `--count` once their receipts are in: the
    /// subscription should yield those receipts' outcomes before any more events.
    pub fn has_enough(&self) -> bool {
        self.count
            .is_some_and(|count| self.pending > 0 && self.settled + self.pending >= count)
    }

    /// Shows one item; true once `--count` events are settled.
    pub fn item(&mut self, item: Item) -> bool {
        match item {
            Item::Event(event) => self.event(event),
            Item::Acked(acked) => self.acked(acked),
            Item::OneByOne { reason } => {
                if !self.quiet {
                    eprintln!("pere-sub: {reason}");
                }
                false
            }
            Item::Gap {
                notice: Some(gap), ..
            } => {
                eprintln!(
                    "GAP> events {}..{} are not available on the server (pruned, or damaged in its store)",
                    gap.from, gap.to
                );
                false
            }
            Item::Gap { data, .. } => {
                eprintln!("GAP> {data}");
                false
            }
            Item::Reset {
                notice: Some(reset),
                ..
            } => {
                eprintln!(
                    "RESET> the server does not know event {}: its history ends at {}, ids start over",
                    reset.last_event_id, reset.head
                );
                false
            }
            Item::Reset { data, .. } => {
                eprintln!("RESET> {data}");
                false
            }
            Item::Reconnecting(r) => {
                if !self.quiet {
                    let notice = if r.failures == 0 {
                        r.reason
                    } else {
                        let of = if self.retries == 0 {
                            String::new()
                        } else {
                            format!(" of {}", self.retries)
                        };
                        format!(
                            "cannot reach {} (attempt {}{of}): {}",
                            self.url, r.failures, r.reason
                        )
                    };
                    let from = r
                        .last_event_id
                        .map(|id| format!(" with Last-Event-ID: {id}"))
                        .unwrap_or_default();
                    eprintln!(
                        "pere-sub: {notice}; reconnecting in {:.1} s{from}",
                        r.delay.as_secs_f64()
                    );
                }
                false
            }
            _ => false,
        }
    }

    fn event(&mut self, event: Event) -> bool {
        self.tally.received.set(self.tally.received.get() + 1);
        // Its receipt follows as the next item, unless none is sent.
        let acked = self.acks && !event.id.is_empty();
        if !self.json {
            say!("RX EVT> id: {}, data: {}", event.id, event.data);
        } else if acked {
            self.held.push(event);
        } else {
            print_json(&event, None);
        }
        if acked {
            self.pending += 1;
            false
        } else {
            self.settle()
        }
    }

    fn acked(&mut self, acked: Acked) -> bool {
        let Acked {
            id,
            status,
            again,
            via,
            result,
            ..
        } = acked;
        if !again {
            self.pending = self.pending.saturating_sub(1);
        }
        let receipt = match result {
            Ok(receipt) => {
                self.tally
                    .acknowledged
                    .set(self.tally.acknowledged.get() + 1);
                if !self.json && !self.quiet {
                    let status = receipt
                        .as_ref()
                        .map_or(status.as_str(), |r| r.status.as_str());
                    say!("TX ACK> id: {id}, status: {status}");
                }
                // The server's receipt, or what the answer to a coalesced request said of it.
                let shown = match (receipt, &via) {
                    (Some(receipt), _) => serde_json::to_value(receipt).ok(),
                    (None, Via::Batch { seq, replayed }) => Some(serde_json::json!({
                        "id": id_value(&id), "status": status, "seq": seq, "replayed": replayed,
                    })),
                    (None, Via::Cumulative { upto, .. }) => Some(serde_json::json!({
                        "id": id_value(&id), "status": status, "upto": upto,
                    })),
                    (None, _) => None,
                };
                Some(shown)
            }
            Err(err) => {
                eprintln!("TX ACK FAILED> id: {id}, reason: {}", err.reason());
                // A refusal is for good: the event is done with. Another failure is not: its
                // receipt is sent again when the event comes back.
                matches!(err, Error::Refused(_)).then_some(None)
            }
        };
        if let Some(at) = self.held.iter().position(|e| e.id == id) {
            let event = self.held.remove(at);
            print_json(&event, receipt.as_ref().and_then(Option::as_ref));
        }
        match receipt {
            Some(_) => self.settle(),
            None => false,
        }
    }

    fn settle(&mut self) -> bool {
        self.settled += 1;
        self.count.is_some_and(|count| self.settled >= count)
    }
}

/// An event id as JSON: a number when it is one, null when there is none.
fn id_value(id: &str) -> serde_json::Value {
    match id.parse::<u64>() {
        Ok(n) => n.into(),
        Err(_) if id.is_empty() => serde_json::Value::Null,
        Err(_) => id.into(),
    }
}

fn print_json(event: &Event, receipt: Option<&serde_json::Value>) {
    let line = JsonEvent {
        id: id_value(&event.id),
        event: &event.event,
        data: &event.data,
        receipt,
    };
    // Serializing strings and numbers cannot fail.
    say!("{}", serde_json::to_string(&line).unwrap_or_default());
}
