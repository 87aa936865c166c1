//! A subscriber's memory: which events are new, which are duplicates, and which duplicates still
//! owe a receipt.
//!
//! Event ids are a channel's sequence numbers, so "seen" is one number: every id up to the last
//! one seen. A duplicate (a replay after a reconnection, or a redelivery) is never handed to the
//! application again; its receipt is sent again only when the earlier one did not get through,
//! with the same status and idempotency key.

use std::collections::BTreeMap;

/// How many failed receipts to remember; past this the oldest are forgotten (and would be shown
/// as plain duplicates). Bounded so a subscriber cut off from `/feedback` cannot grow forever.
const MAX_PENDING: usize = 10_000;

/// What to do with an event, given its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen: hand it to the application.
    New,
    /// Seen, but its receipt failed: send that receipt again (this status, this key).
    Reack(Owed),
    /// Seen and acknowledged (or not to be acknowledged): ignore it.
    Skip,
}

/// A receipt that failed in a way that may pass: what it said, and the key it was sent with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    /// The status.
    pub status: String,
    /// The idempotency key, so the server records it once however often it arrives.
    pub key: String,
}

/// The subscriber's memory of the events it has seen and the receipts it still owes.
#[derive(Debug, Default)]
pub struct Ledger {
    last_seen: Option<u64>,
    // Ids whose receipt failed in a way that may succeed later (no answer, 5xx).
    unacked: BTreeMap<u64, Owed>,
}

impl Ledger {
    /// A ledger that treats every id up to `start` (e.g. a given `Last-Event-ID`) as seen.
    pub fn new(start: Option<u64>) -> Self {
        Ledger {
            last_seen: start,
            unacked: BTreeMap::new(),
        }
    }

    /// Classifies event `id` and records it as seen.
    pub fn classify(&mut self, id: u64) -> Verdict {
        match self.last_seen {
            Some(last) if id <= last => match self.unacked.get(&id) {
                Some(owed) => Verdict::Reack(owed.clone()),
                None => Verdict::Skip,
            },
            _ => {
                self.last_seen = Some(id);
                Verdict::New
            }
        }
    }

    /// The receipt for `id` got through, or can never get through: do not send it again.
    pub fn settled(&mut self, id: u64) {
        self.unacked.remove(&id);
    }

    /// The receipt for `id` failed but may succeed later: send it again if `id` comes back.
    pub fn unsettled(&mut self, id: u64, owed: Owed) {
        self.unacked.insert(id, owed);
        if self.unacked.len() > MAX_PENDING {
            self.unacked.pop_first();
        }
    }

    /// The last id seen.
    pub fn last_seen(&self) -> Option<u64> {
        self.last_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(status: &str) -> Owed {
        Owed {
            status: status.into(),
            key: format!("key-{status}"),
        }
    }

    #[test]
    fn new_events_advance_and_replays_are_skipped() {
        let mut l = Ledger::new(None);
        assert_eq!(l.classify(1), Verdict::New);
        l.settled(1);
        assert_eq!(l.classify(2), Verdict::New);
        l.settled(2);
        assert_eq!(l.last_seen(), Some(2));
        assert_eq!(l.classify(1), Verdict::Skip);
        assert_eq!(l.classify(2), Verdict::Skip);
        // Ids may jump (pruned or other subscribers' gaps): still new.
        assert_eq!(l.classify(10), Verdict::New);
        assert_eq!(l.classify(5), Verdict::Skip);
        assert_eq!(l.last_seen(), Some(10));
    }

    #[test]
    fn a_failed_receipt_is_sent_again_once_it_succeeds() {
        let mut l = Ledger::new(None);
        assert_eq!(l.classify(1), Verdict::New);
        l.unsettled(1, owed("done"));
        assert_eq!(l.classify(2), Verdict::New);
        l.settled(2);
        assert_eq!(l.classify(1), Verdict::Reack(owed("done")));
        l.unsettled(1, owed("done"));
        assert_eq!(l.classify(1), Verdict::Reack(owed("done")));
        l.settled(1);
        assert_eq!(l.classify(1), Verdict::Skip);
        assert_eq!(l.classify(2), Verdict::Skip);
        assert_eq!(l.last_seen(), Some(2));
    }

    #[test]
    fn the_start_position_counts_as_seen() {
        let mut l = Ledger::new(Some(5));
        assert_eq!(l.classify(3), Verdict::Skip);
        assert_eq!(l.classify(5), Verdict::Skip);
        assert_eq!(l.classify(6), Verdict::New);
        assert_eq!(Ledger::new(Some(0)).classify(1), Verdict::New);
    }

    #[test]
    fn the_failed_set_is_bounded() {
        let mut l = Ledger::new(None);
        for id in 1..=(MAX_PENDING as u64 + 5) {
            assert_eq!(l.classify(id), Verdict::New);
            l.unsettled(id, owed("x"));
        }
        assert_eq!(l.unacked.len(), MAX_PENDING);
        assert_eq!(l.classify(1), Verdict::Skip);
        assert_eq!(
            l.classify(MAX_PENDING as u64 + 5),
            Verdict::Reack(owed("x"))
        );
    }
}
