//! The live receipt ledger of one channel: its current recipients, and for each recently
//! published event who is still expected to acknowledge it. It answers "is this event fully
//! acknowledged yet?" without a store read, wakes publishers waiting for receipts, and tells the
//! receipt stream when an event completes. The store stays the source of truth; this is a
//! bounded cache of the recent past.
//!
//! Who acknowledged an event is a set of bits over the channel's device numbers (each device
//! that ever acknowledged here gets the next one), not a set of names: a bit per device and
//! event, where a set of names cost about 50 bytes per receipt (a broadcast channel of 100,000
//! devices would have held gigabytes for its 1,024 followed events).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pere_proto::name::{ChannelName, DeviceId};
use pere_proto::receipt::{Completion, Membership};
use tokio::sync::Notify;

/// How many recent events per channel are followed live. Older events' summaries come from the
/// store; only their live completion notice and synchronous waits are given up.
pub const TRACKED_EVENTS: usize = 1024;

/// What a publisher waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// Every expected recipient acknowledged.
    All,
    /// At least this many devices acknowledged.
    AtLeast(usize),
}

/// An event's live acknowledgement state. Publishing costs no allocation per recipient: the
/// expected set is the ledger's memberships, and only acknowledgements are recorded.
#[derive(Debug)]
pub(crate) struct OpenEvent {
    /// When the event was published (its time in the store).
    published: DateTime<Utc>,
    expected: usize,
    acked_expected: usize,
    acked: Acks,
    // Made only when someone waits on this event.
    changed: Option<Arc<Notify>>,
}

impl OpenEvent {
    pub(crate) fn satisfies(&self, wait: WaitFor) -> bool {
        match wait {
            WaitFor::All => self.acked_expected >= self.expected,
            WaitFor::AtLeast(n) => self.acked.count >= n,
        }
    }

    /// The notification a waiter listens to.
    pub(crate) fn changed(&mut self) -> Arc<Notify> {
        self.changed.get_or_insert_with(Default::default).clone()
    }
}

/// The devices that acknowledged one event, as bits indexed by the ledger's device numbers.
#[derive(Debug, Default)]
struct Acks {
    words: Vec<u64>,
    count: usize,
}

impl Acks {
    /// Sets `number`'s bit; false when it was set already.
    fn insert(&mut self, number: u32) -> bool {
        let (word, bit) = (number as usize / 64, 1_u64 << (number % 64));
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.count += usize::from(fresh);
        fresh
    }

    fn contains(&self, number: u32) -> bool {
        self.words
            .get(number as usize / 64)
            .is_some_and(|word| word & (1_u64 << (number % 64)) != 0)
    }

    /// The bytes held on the heap.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.words.capacity() * size_of::<u64>()
    }
}

/// The followed events by id, oldest first. Events are followed in the order of their ids
/// (nearly always: a publication relayed by another node may come late), so a new one is pushed
/// at the back and the oldest leaves from the front, and a lookup is a binary search: cheaper
/// per publish than a B-tree's node walks.
#[derive(Debug, Default)]
pub(crate) struct OpenEvents(VecDeque<(u64, OpenEvent)>);

impl OpenEvents {
    fn position(&self, id: u64) -> Result<usize, usize> {
        self.0.binary_search_by_key(&id, |(open, _)| *open)
    }

    pub(crate) fn get(&self, id: &u64) -> Option<&OpenEvent> {
        self.position(*id).ok().map(|at| &self.0[at].1)
    }

    pub(crate) fn get_mut(&mut self, id: &u64) -> Option<&mut OpenEvent> {
        self.position(*id).ok().map(|at| &mut self.0[at].1)
    }

    /// Adds `open` unless `id` is followed already; says whether it was added.
    fn insert(&mut self, id: u64, open: OpenEvent) -> bool {
        match self.0.back() {
            Some((newest, _)) if *newest >= id => match self.position(id) {
                Ok(_) => false,
                Err(at) => {
                    self.0.insert(at, (id, open));
                    true
                }
            },
            _ => {
                self.0.push_back((id, open));
                true
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    fn pop_oldest(&mut self) -> Option<OpenEvent> {
        self.0.pop_front().map(|(_, open)| open)
    }

    fn oldest(&self) -> Option<u64> {
        self.0.front().map(|(id, _)| *id)
    }

    fn values(&self) -> impl Iterator<Item = &OpenEvent> {
        self.0.iter().map(|(_, open)| open)
    }
}

/// A current recipient, as the ledger knows it: of its membership, only what the ledger cannot
/// tell otherwise (the channel is the ledger's, the device the map's key, and a current
/// membership has not ended). A recipient is kept for every device of a loaded channel, idle
/// or not: the whole membership took twice the room (96 bytes an entry, not 48).
#[derive(Debug)]
struct Recipient {
    /// The channel's last id when the device became a recipient.
    joined_after: u64,
    /// When it became a recipient.
    since: DateTime<Utc>,
    /// An id up to which the device owes nothing (every event up to it that expects the device
    /// has its receipt), as a cumulative receipt found: the next one starts above it. Only
    /// ever true of the past, since an event's recipients are fixed when it is published.
    acked_through: u64,
}

impl Recipient {
    /// Whether it is expected to acknowledge event `id` (as [`Membership::expects`]).
    fn expects(&self, id: u64) -> bool {
        id > self.joined_after
    }
}

/// Which events one device is expected to acknowledge: after it joined, as a current
/// recipient, and within each of its ended memberships still in the ledger (rarely any).
struct Expectation {
    /// As a current recipient: its `joined_after`.
    current: Option<u64>,
    departed: Vec<Membership>,
}

impl Expectation {
    /// Whether the device is expected to acknowledge event `id` (as [`Recipient::expects`]
    /// and [`Membership::expects`]).
    fn of(&self, id: u64) -> bool {
        self.current.is_some_and(|joined_after| id > joined_after)
            || self.departed.iter().any(|m| m.expects(id))
    }
}

/// One channel's live ledger.
#[derive(Debug)]
pub(crate) struct ChannelLedger {
    channel: ChannelName,
    /// Current recipients.
    recipients: HashMap<DeviceId, Recipient, ahash::RandomState>,
    /// Memberships that ended while events they were expected for are still followed.
    departed: Vec<Membership>,
    /// The highest `joined_after` among current recipients: an event with a greater id expects
    /// all of them, which spares a scan per publish.
    latest_join: u64,
    pub(crate) open: OpenEvents,
    /// How many of `open` still wait for an expected recipient: asked of every idle channel
    /// by the hub's unloading, so counted rather than searched for.
    incomplete: usize,
    /// Each device that acknowledged an event here, numbered in order of its first receipt.
    numbers: HashMap<DeviceId, u32, ahash::RandomState>,
}

impl ChannelLedger {
    /// A ledger over the current memberships of `channel`.
    pub(crate) fn new(channel: ChannelName, current: impl IntoIterator<Item = Membership>) -> Self {
        let mut ledger = ChannelLedger {
            channel,
            recipients: HashMap::default(),
            departed: Vec::new(),
            latest_join: 0,
            open: OpenEvents::default(),
            incomplete: 0,
            numbers: HashMap::default(),
        };
        for membership in current {
            ledger.join(membership);
        }
        ledger
    }

    /// The current membership of `device`, if it is a recipient.
    pub(crate) fn recipient(&self, device: &DeviceId) -> Option<Membership> {
        let recipient = self.recipients.get(device)?;
        Some(self.membership(device, recipient))
    }

    /// Whether `device` is a current recipient.
    pub(crate) fn is_recipient(&self, device: &DeviceId) -> bool {
        self.recipients.contains_key(device)
    }

    fn membership(&self, device: &DeviceId, recipient: &Recipient) -> Membership {
        Membership {
            channel: self.channel.clone(),
            device: device.clone(),
            joined_after: recipient.joined_after,
            left_after: None,
            since: recipient.since,
        }
    }

    /// Every current recipient's membership.
    pub(crate) fn recipients(&self) -> impl Iterator<Item = Membership> + '_ {
        self.recipients
            .iter()
            .map(|(device, recipient)| self.membership(device, recipient))
    }

    /// Records a new current membership (one that ended goes to [`ChannelLedger::leave`]).
    pub(crate) fn join(&mut self, membership: Membership) {
        debug_assert!(membership.is_current() && membership.channel == self.channel);
        self.latest_join = self.latest_join.max(membership.joined_after);
        match self.recipients.get_mut(&membership.device) {
            // What the device owes up to a point stays true of it.
            Some(known) => {
                known.joined_after = membership.joined_after;
                known.since = membership.since;
            }
            None => {
                let recipient = Recipient {
                    joined_after: membership.joined_after,
                    since: membership.since,
                    acked_through: 0,
                };
                self.recipients.insert(membership.device, recipient);
            }
        }
    }

    /// Records that a membership ended; events it was expected for keep expecting it.
    pub(crate) fn leave(&mut self, ended: Option<Membership>, device: &DeviceId) {
        self.recipients.remove(device);
        if let Some(ended) = ended {
            self.departed.push(ended);
        }
    }

    fn expects(&self, device: &DeviceId, id: u64) -> bool {
        self.recipients.get(device).is_some_and(|r| r.expects(id))
            || self
                .departed
                .iter()
                .any(|m| &m.device == device && m.expects(id))
    }

    /// What `device`'s memberships say of the events it is expected to acknowledge, looked up
    /// once for many events (as [`ChannelLedger::expects`] says of one).
    fn expectation(&self, device: &DeviceId) -> Expectation {
        Expectation {
            current: self.recipients.get(device).map(|r| r.joined_after),
            departed: self
                .departed
                .iter()
                .filter(|m| &m.device == device)
                .cloned()
                .collect(),
        }
    }

    /// Starts following event `id`, published at `published`, expected of the current recipients
    /// that joined before it.
    /// Returns how many recipients it expects, or `None` when it is followed already (an event
    /// applied twice keeps its acknowledgements).
    pub(crate) fn track(&mut self, id: u64, published: DateTime<Utc>) -> Option<usize> {
        let expected = if id > self.latest_join {
            self.recipients.len()
        } else {
            self.recipients.values().filter(|r| r.expects(id)).count()
        };
        let open = OpenEvent {
            published,
            expected,
            acked_expected: 0,
            acked: Acks::default(),
            changed: None,
        };
        if !self.open.insert(id, open) {
            return None;
        }
        self.incomplete += usize::from(expected > 0);
        while self.open.len() > TRACKED_EVENTS {
            if let Some(gone) = self.open.pop_oldest() {
                self.incomplete -= usize::from(gone.acked_expected < gone.expected);
            }
        }
        if let Some(oldest) = self.open.oldest() {
            self.departed
                .retain(|m| m.left_after.is_some_and(|left| left >= oldest));
        }
        Some(expected)
    }

    /// Records that `device` acknowledged `id`; returns the completion if this receipt completed
    /// it. (The hub records every receipt through [`ChannelLedger::acknowledge_all`].)
    #[cfg(test)]
    pub(crate) fn acknowledge(&mut self, id: u64, device: &DeviceId) -> Option<Completion> {
        let expected = self.expects(device, id);
        self.acknowledge_one(id, device, expected, &mut None, &mut None)
            .0
    }

    /// Records that `device` acknowledged each of `ids` (one receipt, or a batch's, or a
    /// cumulative receipt's), its memberships and number looked up once: for each id, in
    /// order, the completion it caused and when the event was published, if it is followed.
    pub(crate) fn acknowledge_all(
        &mut self,
        device: &DeviceId,
        ids: impl IntoIterator<Item = u64>,
    ) -> Vec<(Option<Completion>, Option<DateTime<Utc>>)> {
        let expectation = self.expectation(device);
        let mut number = None;
        let mut next = None;
        ids.into_iter()
            .map(|id| {
                let expected = expectation.of(id);
                self.acknowledge_one(id, device, expected, &mut number, &mut next)
            })
            .collect()
    }

    /// Records `device`'s receipt of `id` (`expected` of it or not), numbering the device the
    /// first time (`number` keeps its number across calls); returns the completion it caused
    /// and when the event was published, if it is followed. `next` is where the event after the
    /// last one acknowledged is followed: a cumulative receipt's ids come one after another, so
    /// the next is most often found there without a search.
    fn acknowledge_one(
        &mut self,
        id: u64,
        device: &DeviceId,
        expected: bool,
        number: &mut Option<u32>,
        next: &mut Option<usize>,
    ) -> (Option<Completion>, Option<DateTime<Utc>>) {
        let found = match *next {
            Some(at) if self.open.0.get(at).is_some_and(|(open, _)| *open == id) => Ok(at),
            _ => self.open.position(id),
        };
        let Ok(at) = found else {
            return (None, None);
        };
        *next = Some(at + 1);
        let number = match *number {
            Some(known) => known,
            None => *number.insert(self.number_of(device)),
        };
        let open = &mut self.open.0[at].1;
        let published = Some(open.published);
        if !open.acked.insert(number) {
            return (None, published);
        }
        if let Some(changed) = &open.changed {
            changed.notify_waiters();
        }
        if !expected {
            return (None, published);
        }
        open.acked_expected += 1;
        let completed = open.acked_expected == open.expected;
        self.incomplete -= usize::from(completed);
        let completion = completed.then_some(Completion {
            event_id: id,
            expected: open.expected,
        });
        (completion, published)
    }

    /// `device`'s number on this channel, given at its first receipt (its name is copied
    /// then only).
    fn number_of(&mut self, device: &DeviceId) -> u32 {
        if let Some(&number) = self.numbers.get(device) {
            return number;
        }
        let number = u32::try_from(self.numbers.len()).unwrap_or(u32::MAX);
        self.numbers.insert(device.clone(), number);
        number
    }

    /// When a followed event was published.
    #[cfg(test)]
    pub(crate) fn published_at(&self, id: u64) -> Option<DateTime<Utc>> {
        self.open.get(&id).map(|open| open.published)
    }

    /// Whether some followed event still waits for a receipt from an expected recipient.
    /// How many followed events still wait for receipts.
    pub(crate) fn incomplete_count(&self) -> usize {
        self.incomplete
    }

    pub(crate) fn incomplete(&self) -> bool {
        debug_assert_eq!(
            self.incomplete,
            self.open
                .values()
                .filter(|o| o.acked_expected < o.expected)
                .count()
        );
        self.incomplete > 0
    }

    /// Whether `device` still owes a receipt for `id` (false for events no longer followed).
    pub(crate) fn owes(&self, id: u64, device: &DeviceId) -> bool {
        let acked = |open: &OpenEvent| {
            self.numbers
                .get(device)
                .is_some_and(|&number| open.acked.contains(number))
        };
        self.open.get(&id).is_some_and(|open| !acked(open)) && self.expects(device, id)
    }

    /// The devices expected to acknowledge `id`, when it is followed (`None` when not: ask the
    /// store's memberships).
    pub(crate) fn expected_of(&self, id: u64) -> Option<Vec<DeviceId>> {
        self.open.get(&id)?;
        let current = self
            .recipients
            .iter()
            .filter(|(_, r)| r.expects(id))
            .map(|(device, _)| device);
        let departed = self
            .departed
            .iter()
            .filter(|m| m.expects(id))
            .map(|m| &m.device);
        let mut expected: Vec<DeviceId> = current.chain(departed).cloned().collect();
        expected.sort();
        expected.dedup();
        Some(expected)
    }

    /// The bytes the followed events' acknowledgements hold, with the device numbers.
    #[cfg(test)]
    fn ack_bytes(&self) -> usize {
        let numbers = self.numbers.capacity() * (size_of::<DeviceId>() + size_of::<u32>() + 1)
            + self.numbers.keys().map(|d| d.as_str().len()).sum::<usize>();
        numbers
            + self
                .open
                .values()
                .map(|o| o.acked.heap_bytes())
                .sum::<usize>()
    }

    /// An id up to which `device` owes nothing, as far as this ledger knows (0: nothing known).
    pub(crate) fn acked_through(&self, device: &DeviceId) -> u64 {
        self.recipients.get(device).map_or(0, |r| r.acked_through)
    }

    /// Notes that `device` owes nothing up to `id` (kept while it is a current recipient).
    pub(crate) fn note_acked_through(&mut self, device: &DeviceId, id: u64) {
        if let Some(recipient) = self.recipients.get_mut(device) {
            recipient.acked_through = recipient.acked_through.max(id);
        }
    }

    /// For the followed events with ids in `(after, upto]`: those `device` owes a receipt, and
    /// every one followed, both ascending. Where the second list holds every id of the range,
    /// the ledger alone knows what the device owes there.
    pub(crate) fn owed_between(
        &self,
        device: &DeviceId,
        after: u64,
        upto: u64,
    ) -> (Vec<u64>, Vec<u64>) {
        let start = self.open.0.partition_point(|(id, _)| *id <= after);
        let end = self
            .open
            .0
            .partition_point(|(id, _)| *id <= upto)
            .max(start);
        // The device's number and memberships once, not once per event.
        let number = self.numbers.get(device).copied();
        let expectation = self.expectation(device);
        let mut owed = Vec::with_capacity(end - start);
        let mut followed = Vec::with_capacity(end - start);
        for (id, open) in self.open.0.range(start..end) {
            followed.push(*id);
            let acked = number.is_some_and(|number| open.acked.contains(number));
            if !acked && expectation.of(*id) {
                owed.push(*id);
            }
        }
        (owed, followed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> ChannelName {
        ChannelName::new("C").unwrap()
    }

    fn member(device: &str, joined_after: u64) -> Membership {
        Membership {
            channel: channel(),
            device: DeviceId::new(device).unwrap(),
            joined_after,
            left_after: None,
            since: pere_proto::event::now(),
        }
    }

    #[test]
    fn a_recipient_entry_stays_compact() {
        // Kept for every device of a loaded channel: see `Recipient`.
        assert!(size_of::<(DeviceId, Recipient)>() <= 48);
        let joined = member("A", 3);
        let mut ledger = ChannelLedger::new(channel(), [joined.clone()]);
        let a = DeviceId::new("A").unwrap();
        // What the ledger keeps of it gives the whole membership back.
        assert_eq!(ledger.recipient(&a), Some(joined));
        ledger.join(member("A", 7));
        assert_eq!(ledger.recipient(&a).map(|m| m.joined_after), Some(7));
        assert!(ledger.is_recipient(&a));
        assert_eq!(ledger.recipients().count(), 1);
    }

    #[test]
    fn completes_when_every_expected_recipient_acknowledged() {
        let mut ledger = ChannelLedger::new(
            channel(),
            [member("A", 0), member("B", 0), member("Late", 5)],
        );
        assert_eq!(ledger.track(3, Utc::now()), Some(2));
        let (a, b, late) = (
            DeviceId::new("A").unwrap(),
            DeviceId::new("B").unwrap(),
            DeviceId::new("Late").unwrap(),
        );
        assert!(ledger.owes(3, &a) && !ledger.owes(3, &late));
        assert!(ledger.incomplete());
        assert_eq!(
            ledger.acknowledge(3, &late),
            None,
            "not expected: no completion"
        );
        assert!(ledger.open.get(&3).unwrap().satisfies(WaitFor::AtLeast(1)));
        assert_eq!(ledger.acknowledge(3, &a), None);
        assert_eq!(
            ledger.acknowledge(3, &a),
            None,
            "a second receipt changes nothing"
        );
        assert_eq!(
            ledger.acknowledge(3, &b),
            Some(Completion {
                event_id: 3,
                expected: 2
            })
        );
        assert!(ledger.open.get(&3).unwrap().satisfies(WaitFor::All));
        assert!(!ledger.incomplete());
        assert_eq!(ledger.acknowledge(99, &a), None);
    }

    #[test]
    fn a_departed_recipient_is_still_expected_of_earlier_events() {
        let mut ledger = ChannelLedger::new(channel(), [member("A", 0)]);
        let a = DeviceId::new("A").unwrap();
        assert_eq!(ledger.track(1, Utc::now()), Some(1));
        let mut ended = member("A", 0);
        ended.left_after = Some(1);
        ledger.leave(Some(ended), &a);
        assert_eq!(ledger.track(2, Utc::now()), Some(0));
        assert!(ledger.owes(1, &a) && !ledger.owes(2, &a));
        assert_eq!(
            ledger.acknowledge(1, &a),
            Some(Completion {
                event_id: 1,
                expected: 1
            })
        );
    }

    #[test]
    fn many_receipts_of_one_device_count_as_each_would_alone() {
        // B left after event 2 and joined again after 3: expected of 1 and 2, not of 3, of 4.
        let mut ledger = ChannelLedger::new(channel(), [member("A", 0), member("B", 0)]);
        let (a, b) = (DeviceId::new("A").unwrap(), DeviceId::new("B").unwrap());
        for id in [1, 2] {
            ledger.track(id, Utc::now());
        }
        let mut ended = member("B", 0);
        ended.left_after = Some(2);
        ledger.leave(Some(ended), &b);
        ledger.track(3, Utc::now());
        ledger.join(member("B", 3));
        ledger.track(4, Utc::now());
        ledger.acknowledge(1, &a);
        let outcomes = ledger.acknowledge_all(&b, [1, 2, 3, 4, 2, 9]);
        let completed: Vec<Option<u64>> = outcomes
            .iter()
            .map(|(done, _)| done.map(|c| c.event_id))
            .collect();
        assert_eq!(
            completed,
            [Some(1), None, None, None, None, None],
            "1 completes (A had acknowledged it); 2, 4 wait for A; 3 never expected B; \
             2 again and 9 (not followed) change nothing"
        );
        let published: Vec<bool> = outcomes.iter().map(|(_, at)| at.is_some()).collect();
        assert_eq!(published, [true, true, true, true, true, false]);
        assert!(!ledger.owes(2, &b) && !ledger.owes(4, &b) && ledger.owes(4, &a));
        assert_eq!(ledger.open.get(&3).unwrap().acked_expected, 0);
        assert_eq!(ledger.acknowledge_all(&a, [2, 3]), {
            let done = |event_id, expected| Some(Completion { event_id, expected });
            let at = |id| ledger.published_at(id);
            vec![(done(2, 2), at(2)), (done(3, 1), at(3))]
        });
    }

    #[test]
    fn follows_events_that_come_out_of_order_once_each() {
        let mut ledger = ChannelLedger::new(channel(), [member("A", 0)]);
        for id in [1, 4, 2] {
            assert_eq!(ledger.track(id, Utc::now()), Some(1), "event {id}");
        }
        assert_eq!(ledger.track(2, Utc::now()), None, "followed already");
        assert_eq!(ledger.track(4, Utc::now()), None, "followed already");
        let ids: Vec<u64> = ledger.open.0.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 4]);
        assert_eq!(ledger.incomplete_count(), 3);
        let a = DeviceId::new("A").unwrap();
        assert!(ledger.acknowledge(2, &a).is_some());
        assert!(ledger.owes(4, &a) && !ledger.owes(2, &a) && !ledger.owes(3, &a));
    }

    #[test]
    fn an_acknowledgement_costs_a_bit_per_device_and_event() {
        const DEVICES: usize = 10_000;
        let devices: Vec<DeviceId> = (0..DEVICES)
            .map(|i| DeviceId::new(&format!("H{i:013}")).unwrap())
            .collect();
        let mut ledger =
            ChannelLedger::new(channel(), devices.iter().map(|d| member(d.as_str(), 0)));
        for id in 1..=64 {
            ledger.track(id, Utc::now());
            for device in &devices {
                ledger.acknowledge(id, device);
            }
        }
        assert!(!ledger.incomplete());
        assert!(!ledger.owes(64, &devices[9_999]));
        let numbers = DEVICES * 64;
        let bits = 64 * DEVICES / 8;
        assert!(
            ledger.ack_bytes() <= numbers + bits + bits / 8,
            "{} bytes",
            ledger.ack_bytes()
        );
    }

    /// The figure in `bench/OPTIMISATIONS.md`: a broadcast channel of 100,000 devices that
    /// acknowledged each of its 1,024 followed events (`cargo test --release -p pere-core
    /// ledger_at_broadcast_scale -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, run by hand in release"]
    fn ledger_at_broadcast_scale() {
        let devices: Vec<DeviceId> = (0..100_000)
            .map(|i| DeviceId::new(&format!("H{i:013}")).unwrap())
            .collect();
        let mut ledger =
            ChannelLedger::new(channel(), devices.iter().map(|d| member(d.as_str(), 0)));
        for id in 1..=TRACKED_EVENTS as u64 {
            ledger.track(id, Utc::now());
            for device in &devices {
                ledger.acknowledge(id, device);
            }
        }
        let mib = ledger.ack_bytes() as f64 / f64::from(1 << 20);
        println!("acknowledgements of 1,024 events x 100,000 devices: {mib:.1} MiB");
        assert!(mib <= 50.0);
    }

    #[test]
    fn says_what_a_device_owes_in_a_range_and_what_it_follows() {
        let mut ledger = ChannelLedger::new(channel(), [member("A", 2)]);
        let a = DeviceId::new("A").unwrap();
        for id in [2, 3, 4, 6] {
            ledger.track(id, Utc::now());
        }
        ledger.acknowledge(4, &a);
        let (owed, followed) = ledger.owed_between(&a, 1, 6);
        assert_eq!(owed, [3, 6], "2 is before A joined, 4 acknowledged");
        assert_eq!(followed, [2, 3, 4, 6], "5 is not followed");
        assert_eq!(ledger.owed_between(&a, 3, 4), (vec![], vec![4]));
        assert_eq!(ledger.acked_through(&a), 0);
        ledger.note_acked_through(&a, 4);
        ledger.note_acked_through(&a, 3);
        ledger.join(member("A", 2));
        assert_eq!(
            ledger.acked_through(&a),
            4,
            "only ever raised, kept across a join"
        );
        ledger.leave(None, &a);
        assert_eq!(ledger.acked_through(&a), 0, "forgotten with the recipient");
    }

    #[test]
    fn follows_a_bounded_number_of_events() {
        let mut ledger = ChannelLedger::new(channel(), []);
        for id in 1..=(TRACKED_EVENTS as u64 + 10) {
            ledger.track(id, Utc::now());
        }
        assert_eq!(ledger.open.len(), TRACKED_EVENTS);
        assert_eq!(ledger.open.oldest(), Some(11));
    }
}
