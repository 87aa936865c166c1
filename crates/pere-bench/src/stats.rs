//! Counting what arrived: the set of sequence numbers a subscriber saw (lost and duplicated
//! events), latency percentiles, and medians over repeated runs.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, to 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

/// Records `micros`, clamped into the histogram's range (a latency beyond 10 minutes is the
/// generator's overall timeout anyway).
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.max(1));
}

/// The percentiles reported for a histogram of microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median, µs.
    pub p50: u64,
    /// 90th percentile, µs.
    pub p90: u64,
    /// 99th percentile, µs.
    pub p99: u64,
    /// 99.9th percentile, µs.
    pub p999: u64,
    /// Largest, µs.
    pub max: u64,
    /// Mean, µs.
    pub mean: f64,
}

impl Percentiles {
    /// The percentiles of `h` (all zero when it is empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
                mean: 0.0,
            };
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// As JSON, in µs.
    pub fn json(&self) -> Value {
        json!({"count": self.count, "p50": self.p50, "p90": self.p90, "p99": self.p99,
               "p999": self.p999, "max": self.max, "mean": (self.mean * 10.0).round() / 10.0})
    }
}

/// `850 µs`, `12.3 ms`, `1.50 s`.
pub fn fmt_micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// The sequence numbers one subscriber received from its channel, as a bit set.
#[derive(Debug, Default, Clone)]
pub struct SeenSet {
    bits: Vec<u64>,
    distinct: u64,
    received: u64,
}

/// Sequence numbers above this are not tracked (the generator never publishes that many per
/// channel within its overall timeout; the cap bounds memory against a garbled body).
const MAX_TRACKED_SEQ: u64 = 1 << 28;

impl SeenSet {
    /// Notes one delivery of `seq`; true when it is the first.
    pub fn insert(&mut self, seq: u64) -> bool {
        self.received += 1;
        if seq >= MAX_TRACKED_SEQ {
            return false;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize((word + 1).next_power_of_two(), 0);
        }
        let mask = 1u64 << bit;
        if self.bits[word] & mask != 0 {
            return false;
        }
        self.bits[word] |= mask;
        self.distinct += 1;
        true
    }

    /// Deliveries, duplicates included.
    #[cfg(test)]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Distinct sequence numbers received.
    #[cfg(test)]
    pub fn distinct(&self) -> u64 {
        self.distinct
    }

    /// Deliveries beyond the first of each event.
    pub fn duplicated(&self) -> u64 {
        self.received - self.distinct
    }

    /// Events of `published` (those the server accepted) that never arrived.
    pub fn lost(&self, published: &SeenSet) -> u64 {
        let mut lost = 0;
        for (i, &want) in published.bits.iter().enumerate() {
            let have = self.bits.get(i).copied().unwrap_or(0);
            lost += u64::from((want & !have).count_ones());
        }
        lost
    }
}

/// The median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The smallest and largest of `values`.
pub fn spread(values: &[f64]) -> Option<(f64, f64)> {
    let finite = values.iter().copied().filter(|x| x.is_finite());
    finite.fold(None, |acc, x| match acc {
        None => Some((x, x)),
        Some((lo, hi)) => Some((lo.min(x), hi.max(x))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_sets_count_lost_and_duplicated() {
        let mut published = SeenSet::default();
        for seq in 0..200 {
            published.insert(seq);
        }
        let mut sub = SeenSet::default();
        for seq in (0..200).filter(|s| s % 10 != 3) {
            assert!(sub.insert(seq));
        }
        assert!(!sub.insert(5));
        assert!(!sub.insert(199));
        assert_eq!(
            (sub.received(), sub.distinct(), sub.duplicated()),
            (182, 180, 2)
        );
        assert_eq!(sub.lost(&published), 20);
        // An event never accepted by the server is neither expected nor lost.
        assert!(sub.insert(500));
        assert_eq!(sub.lost(&published), 20);
        assert_eq!(SeenSet::default().lost(&published), 200);
        // A garbled huge sequence number is counted as received but not tracked.
        let mut odd = SeenSet::default();
        assert!(!odd.insert(u64::MAX));
        assert_eq!((odd.received(), odd.distinct()), (1, 0));
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = latency_histogram();
        assert_eq!(Percentiles::of(&h).count, 0);
        for us in 1..=1000 {
            record(&mut h, us);
        }
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1002);
        assert!((499..=502).contains(&p.p50), "{p:?}");
        assert!((989..=992).contains(&p.p99), "{p:?}");
        assert!(p.max >= 600_000_000 && p.max < 601_000_000, "{p:?}");
        assert_eq!(p.json()["p50"], p.p50);
    }

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((1.0, 3.0)));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn micros_read_well() {
        assert_eq!(fmt_micros(850.0), "850 µs");
        assert_eq!(fmt_micros(12_300.0), "12.30 ms");
        assert_eq!(fmt_micros(1_500_000.0), "1.50 s");
    }
}
