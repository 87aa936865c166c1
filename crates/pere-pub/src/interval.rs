//! Waits given on the command line: a fixed number of seconds (`0.2`) or a range to pick from at
//! random each time (`10-20`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

/// A wait between two actions, picked uniformly in `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    min: Duration,
    max: Duration,
}

impl Interval {
    /// A range of whole seconds.
    pub const fn secs(min: u64, max: u64) -> Self {
        Interval {
            min: Duration::from_secs(min),
            max: Duration::from_secs(max),
        }
    }

    /// No wait at all.
    pub const ZERO: Interval = Interval::secs(0, 0);

    /// Picks a wait.
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        if self.min == self.max {
            self.min
        } else {
            self.min + (self.max - self.min).mul_f64(rng.gen::<f64>())
        }
    }

    /// The shortest wait.
    pub fn shortest(&self) -> Duration {
        self.min
    }

    /// How much longer the longest wait is than the shortest: the random part of a wait.
    pub fn spread(&self) -> Duration {
        self.max - self.min
    }

    /// True when there is never anything to wait for.
    pub fn is_zero(&self) -> bool {
        self.max.is_zero()
    }
}

impl FromStr for Interval {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let seconds = |part: &str| -> Result<Duration, String> {
            let part = part.trim();
            let value: f64 = part
                .parse()
                .map_err(|_| format!("{part:?} is not a number of seconds"))?;
            if !value.is_finite() || value < 0.0 {
                return Err(format!("{part:?} is not a number of seconds"));
            }
            Duration::try_from_secs_f64(value).map_err(|_| format!("{part:?} seconds is too long"))
        };
        let (min, max) = match s.split_once('-') {
            Some((min, max)) => (seconds(min)?, seconds(max)?),
            None => {
                let secs = seconds(s)?;
                (secs, secs)
            }
        };
        if min > max {
            return Err(format!(
                "{s:?}: the range must go from the shorter wait to the longer"
            ));
        }
        Ok(Interval { min, max })
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min.as_secs_f64())
        } else {
            write!(f, "{}-{}", self.min.as_secs_f64(), self.max.as_secs_f64())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Interval, String> {
        s.parse()
    }

    #[test]
    fn fixed_and_ranges() {
        assert_eq!(parse("0").unwrap(), Interval::ZERO);
        assert!(parse("0").unwrap().is_zero());
        let fixed = parse("0.2").unwrap();
        assert_eq!(
            fixed.sample(&mut rand::thread_rng()),
            Duration::from_millis(200)
        );
        assert_eq!(parse("10-20").unwrap(), Interval::secs(10, 20));
        assert_eq!(parse(" 1 - 10 ").unwrap(), Interval::secs(1, 10));
        assert_eq!(parse("0.5-0.5").unwrap(), parse("0.5").unwrap());
        assert_eq!(parse("10-20").unwrap().to_string(), "10-20");
        assert_eq!(parse("0.25").unwrap().to_string(), "0.25");
        let range = parse("1-10").unwrap();
        assert_eq!(
            (range.shortest(), range.spread()),
            (Duration::from_secs(1), Duration::from_secs(9))
        );
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "", "-", "-1", "1-", "a", "1-b", "20-10", "nan", "inf", "1-2-3", "1e300",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn samples_stay_in_range() {
        let interval = Interval::secs(10, 20);
        let mut rng = rand::thread_rng();
        let (mut low, mut high) = (false, false);
        for _ in 0..10_000 {
            let d = interval.sample(&mut rng);
            assert!(
                d >= Duration::from_secs(10) && d <= Duration::from_secs(20),
                "{d:?}"
            );
            low |= d < Duration::from_secs(11);
            high |= d > Duration::from_secs(19);
        }
        assert!(low && high, "the whole range is used");
    }
}
