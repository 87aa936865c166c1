//! The damage readers meet ([`DamageBook`]): events the store holds but cannot serve, counted
//! for `/readyz` and the metrics, and each named once in the log, one line per run of ids.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use pere_proto::name::ChannelName;

use super::rows::Damage;
use crate::store::DamageSeen;

/// Runs of damaged ids remembered at most, all channels together: enough for any damage a
/// store survives, few enough that a file damaged throughout cannot grow the process. Past it,
/// a run not remembered is named and counted again when met again.
const NAMED_RUNS: usize = 10_000;

/// The damage met by the store's reads since it was opened.
#[derive(Debug, Default)]
pub(super) struct DamageBook {
    named: Mutex<Named>,
    /// Distinct damaged events named so far.
    events: AtomicU64,
    /// Damaged events met by reads (left out or named instead of served).
    reads: AtomicU64,
}

#[derive(Debug, Default)]
struct Named {
    /// Per channel, the runs of damaged ids named in the log: first id → last id.
    runs: HashMap<ChannelName, BTreeMap<u64, u64>>,
    count: usize,
    /// Ids that a repair (`pere-server check --repair`) set aside: gone, and known to be, so
    /// readers pass them over without counting or naming them again.
    set_aside: HashMap<ChannelName, BTreeSet<u64>>,
}

impl Named {
    fn is_named(&self, channel: &ChannelName, id: u64) -> bool {
        self.runs.get(channel).is_some_and(|runs| {
            runs.range(..=id)
                .next_back()
                .is_some_and(|(_, &last)| last >= id)
        })
    }

    fn name(&mut self, channel: &ChannelName, first: u64, last: u64) {
        if self.count >= NAMED_RUNS {
            return;
        }
        let runs = self.runs.entry(channel.clone()).or_default();
        runs.insert(first, last);
        self.count += 1;
    }
}

impl DamageBook {
    /// A book that knows the ids a repair set aside.
    pub(super) fn new(set_aside: HashMap<ChannelName, BTreeSet<u64>>) -> Self {
        DamageBook {
            named: Mutex::new(Named {
                set_aside,
                ..Named::default()
            }),
            ..DamageBook::default()
        }
    }

    /// Notes the damaged ids (ascending) one read of `channel` met: counts them, and names in
    /// the log those never named before, one warning per run of consecutive ids.
    pub(super) fn note(&self, channel: &ChannelName, damaged: &[(u64, Damage)]) {
        // The way nearly every read goes: nothing to lock.
        if damaged.is_empty() {
            return;
        }
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        let set_aside = named.set_aside.get(channel);
        let met: Vec<(u64, Damage)> = damaged
            .iter()
            .copied()
            .filter(|(id, _)| !set_aside.is_some_and(|ids| ids.contains(id)))
            .collect();
        self.reads.fetch_add(met.len() as u64, Ordering::Relaxed);
        let mut runs: Vec<(u64, u64, Damage)> = Vec::new();
        for (id, damage) in met {
            if named.is_named(channel, id) {
                continue;
            }
            match runs.last_mut() {
                Some((_, last, _)) if *last + 1 == id => *last = id,
                _ => runs.push((id, id, damage)),
            }
        }
        for (first, last, damage) in runs {
            named.name(channel, first, last);
            self.events.fetch_add(last - first + 1, Ordering::Relaxed);
            let (ids, it) = if first == last {
                (format!("event {first} cannot be read"), "it")
            } else {
                (format!("events {first}-{last} cannot be read"), "them")
            };
            tracing::warn!(
                "damaged store: channel {channel}, {ids} ({damage}); never sent, a feed resuming across gets a pere-gap instead; `pere-server check --repair` sets {it} aside"
            );
        }
    }

    /// What has been met so far.
    pub(super) fn seen(&self) -> DamageSeen {
        DamageSeen {
            events: self.events.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> ChannelName {
        ChannelName::new("C").unwrap()
    }

    #[test]
    fn each_damaged_id_is_counted_once_and_every_read_of_it_is_counted() {
        let book = DamageBook::default();
        let met = [
            (5, Damage::Checksum),
            (6, Damage::Checksum),
            (9, Damage::Page),
        ];
        book.note(&channel(), &met);
        book.note(&channel(), &met[..2]);
        book.note(&channel(), &[(7, Damage::Lost)]);
        assert_eq!(
            book.seen(),
            DamageSeen {
                events: 4,
                reads: 6
            }
        );
    }

    #[test]
    fn ids_set_aside_by_a_repair_are_neither_counted_nor_named() {
        let aside = HashMap::from([(channel(), BTreeSet::from([5]))]);
        let book = DamageBook::new(aside);
        book.note(&channel(), &[(5, Damage::Lost), (6, Damage::Checksum)]);
        assert_eq!(
            book.seen(),
            DamageSeen {
                events: 1,
                reads: 1
            }
        );
    }
}
