//! Which events are new, which are duplicates, and which duplicates still owe a receipt.
//!
//! Event ids are a channel's sequence numbers, so "seen" is one number: every id up to the last
//! one seen. A duplicate (a replay after a reconnection, or a redelivery) is never printed again;
//! it is acknowledged again only when its earlier receipt did not get through.

use std::collections::BTreeSet;

/// How many failed receipts to remember; past this the oldest are forgotten (and would be shown
/// as plain duplicates). Bounded so a subscriber cut off from `/feedback` cannot grow forever.
const MAX_PENDING: usize = 10_000;

/// What to do with an event, given its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen: print it and acknowledge it.
    New,
    /// Seen, but its receipt failed: acknowledge it again, silently.
    Reack,
    /// Seen and acknowledged (or not to be acknowledged): ignore it.
    Skip,
}

/// The subscriber's memory of the events it has seen and the receipts it still owes.
#[derive(Debug, Default)]
pub struct Ledger {
    last_seen: Option<u64>,
    // Ids whose receipt failed in a way that may succeed later (no answer, 5xx).
    unacked: BTreeSet<u64>,
}

impl Ledger {
    /// A ledger that treats every id up to `start` (e.g. from `--last-event-id`) as seen.
    pub fn new(start: Option<u64>) -> Self {
        Ledger {
            last_seen: start,
            unacked: BTreeSet::new(),
        }
    }

    /// Classifies event `id` and records it as seen.
    pub fn classify(&mut self, id: u64) -> Verdict {
        match self.last_seen {
            Some(last) if id <= last => {
                if self.unacked.contains(&id) {
                    Verdict::Reack
                } else {
                    Verdict::Skip
                }
            }
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
    pub fn unsettled(&mut self, id: u64) {
        self.unacked.insert(id);
        if self.unacked.len() > MAX_PENDING {
            self.unacked.pop_first();
        }
    }

    /// The last id seen.
    #[cfg(test)]
    pub fn last_seen(&self) -> Option<u64> {
        self.last_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        l.unsettled(1);
        assert_eq!(l.classify(2), Verdict::New);
        l.settled(2);
        assert_eq!(l.classify(1), Verdict::Reack);
        l.unsettled(1);
        assert_eq!(l.classify(1), Verdict::Reack);
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
            l.unsettled(id);
        }
        assert_eq!(l.unacked.len(), MAX_PENDING);
        assert_eq!(l.classify(1), Verdict::Skip);
        assert_eq!(l.classify(MAX_PENDING as u64 + 5), Verdict::Reack);
    }
}
