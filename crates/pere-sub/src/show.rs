//! What the user sees of each item the subscription yields, in the original subscriber's lines
//! (`RX EVT>`, `TX ACK>`) or as JSON lines, and what `--count` and the Ctrl-C summary count.

use std::cell::Cell;

use pere_client::{Acked, Error, Event, Item};
use pere_proto::wire::ReceiptJson;
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
    receipt: Option<&'a ReceiptJson>,
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
    // With `--json`, the event whose line waits for its receipt.
    held: Option<Event>,
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
            held: None,
        }
    }

    /// Shows one item; true once `--count` events are settled.
    pub fn item(&mut self, item: Item) -> bool {
        match item {
            Item::Event(event) => self.event(event),
            Item::Acked(acked) => self.acked(acked),
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
            self.held = Some(event);
        } else {
            print_json(&event, None);
        }
        if acked {
            false
        } else {
            self.settle()
        }
    }

    fn acked(&mut self, acked: Acked) -> bool {
        let Acked {
            id, status, result, ..
        } = acked;
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
                Some(receipt)
            }
            Err(err) => {
                eprintln!("TX ACK FAILED> id: {id}, reason: {}", err.reason());
                // A refusal is for good: the event is done with. Another failure is not: its
                // receipt is sent again when the event comes back.
                matches!(err, Error::Refused(_)).then_some(None)
            }
        };
        if let Some(event) = self.held.take() {
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

fn print_json(event: &Event, receipt: Option<&ReceiptJson>) {
    let id = match event.number() {
        Some(n) => n.into(),
        None if event.id.is_empty() => serde_json::Value::Null,
        None => event.id.clone().into(),
    };
    let line = JsonEvent {
        id,
        event: &event.event,
        data: &event.data,
        receipt,
    };
    // Serializing strings and numbers cannot fail.
    say!("{}", serde_json::to_string(&line).unwrap_or_default());
}
