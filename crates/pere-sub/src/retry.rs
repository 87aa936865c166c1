//! Reconnection timing: the server's `retry:` field and the delay before the next attempt.
//!
//! `eventsource-stream` (0.2) parses `retry:` but only reports it on an event that also carries
//! data, and the server sends it alone (`retry: 3000`, blank line). So the raw bytes pass through a
//! [`RetryScanner`] on their way to the parser.

use std::time::Duration;

use rand::Rng;

/// The reconnection delay until the server sets one (the WHATWG default is browser-defined; the
/// original PERE clients waited 3 s).
pub const DEFAULT_RETRY: Duration = Duration::from_millis(3000);

/// The longest line worth keeping: `retry: ` and a `u64` in decimal fit; longer lines are other fields.
const MAX_RETRY_LINE: usize = 32;

/// Watches an event stream's bytes for `retry:` lines.
#[derive(Debug, Default)]
pub struct RetryScanner {
    line: Vec<u8>,
    overlong: bool,
    after_cr: bool,
}

impl RetryScanner {
    /// Feeds the next chunk of the stream; returns the last `retry:` value (milliseconds) that a
    /// line completed in this chunk set, if any.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<u64> {
        let mut found = None;
        for &b in chunk {
            if b == b'\n' && self.after_cr {
                // The LF of a CRLF: the CR already ended the line.
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b == b'\n' || b == b'\r' {
                if !self.overlong {
                    if let Some(ms) = parse_retry(&self.line) {
                        found = Some(ms);
                    }
                }
                self.line.clear();
                self.overlong = false;
            } else if self.line.len() < MAX_RETRY_LINE {
                self.line.push(b);
            } else {
                self.overlong = true;
            }
        }
        found
    }
}

/// `retry:` with an optional space and ASCII digits only, as the WHATWG parser requires.
fn parse_retry(line: &[u8]) -> Option<u64> {
    let value = line.strip_prefix(b"retry:")?;
    let value = value.strip_prefix(b" ").unwrap_or(value);
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The wait before reconnecting: the server's `retry` plus a little jitter (up to a tenth of it, at
/// least 100 ms), so subscribers dropped together do not all come back in the same instant.
pub fn reconnect_delay(retry: Duration, rng: &mut impl Rng) -> Duration {
    let spread = (retry / 10).max(Duration::from_millis(100));
    retry + spread.mul_f64(rng.gen::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_retry_lines() {
        let mut s = RetryScanner::default();
        assert_eq!(s.feed(b"retry: 3000\n\n"), Some(3000));
        assert_eq!(s.feed(b": keep-alive\n\n"), None);
        assert_eq!(s.feed(b"retry:250\r\n\r\n"), Some(250));
        assert_eq!(s.feed(b"id: 1\ndata: retry: 5\n\n"), None);
        assert_eq!(s.feed(b"retry: 12x\n"), None);
        assert_eq!(s.feed(b"retry: \n"), None);
        assert_eq!(s.feed(b"retry: 1\nretry: 2\n"), Some(2));
    }

    #[test]
    fn lines_may_be_split_across_chunks() {
        let mut s = RetryScanner::default();
        assert_eq!(s.feed(b"id: 4\ndata: x\n\nret"), None);
        assert_eq!(s.feed(b"ry: 15"), None);
        assert_eq!(s.feed(b"00\r"), Some(1500));
        assert_eq!(s.feed(b"\nretry: 9\r"), Some(9));
        assert_eq!(s.feed(b"\n"), None);
    }

    #[test]
    fn long_lines_are_not_mistaken() {
        let mut s = RetryScanner::default();
        let mut long = b"retry: ".to_vec();
        long.extend_from_slice(&[b'1'; 100]);
        long.push(b'\n');
        assert_eq!(s.feed(&long), None);
        assert_eq!(s.feed(b"retry: 7\n"), Some(7));
    }

    #[test]
    fn the_delay_is_the_retry_plus_a_little() {
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let d = reconnect_delay(DEFAULT_RETRY, &mut rng);
            assert!(
                d >= DEFAULT_RETRY && d <= Duration::from_millis(3300),
                "{d:?}"
            );
            let d = reconnect_delay(Duration::ZERO, &mut rng);
            assert!(d <= Duration::from_millis(100), "{d:?}");
        }
    }
}
