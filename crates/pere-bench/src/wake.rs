//! How long this machine takes to run a thread that was asleep once another thread wakes it,
//! after a given time of quiet: on a machine whose idle cores halt (many virtual machines),
//! every hand-off between threads after a pause pays it, and a server's latency with it.

use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::stats::{latency_histogram, record, Percentiles};

/// Wakes a sleeping thread `wakes` times, each after `quiet` with nothing to do, and returns the
/// percentiles (µs) of the time from the signal to the woken thread running, as JSON.
pub fn measure(wakes: u32, quiet: Duration) -> Value {
    // The time each signal was sent, taken by the woken thread: `None` while it waits.
    let signal = Arc::new((Mutex::new(None::<Instant>), Condvar::new()));
    let woken = {
        let signal = signal.clone();
        thread::spawn(move || {
            let (sent, ready) = &*signal;
            let mut latencies = latency_histogram();
            for _ in 0..wakes {
                let mut sent = sent.lock().unwrap_or_else(|e| e.into_inner());
                let at = loop {
                    if let Some(at) = sent.take() {
                        break at;
                    }
                    sent = ready.wait(sent).unwrap_or_else(|e| e.into_inner());
                };
                drop(sent);
                // The next signal may be sent now.
                ready.notify_all();
                let micros = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                record(&mut latencies, micros);
            }
            latencies
        })
    };
    for _ in 0..wakes {
        thread::sleep(quiet);
        let (sent, ready) = &*signal;
        let mut sent = sent.lock().unwrap_or_else(|e| e.into_inner());
        // Not over a signal the other thread has not taken yet.
        while sent.is_some() {
            sent = ready.wait(sent).unwrap_or_else(|e| e.into_inner());
        }
        *sent = Some(Instant::now());
        drop(sent);
        ready.notify_all();
    }
    let latencies = woken.join().unwrap_or_else(|_| latency_histogram());
    json!({
        "scenario": "wake",
        "quiet_us": u64::try_from(quiet.as_micros()).unwrap_or(u64::MAX),
        "wake_us": Percentiles::of(&latencies).json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wake_up_is_measured_however_close_they_come() {
        for quiet in [Duration::ZERO, Duration::from_millis(1)] {
            let report = measure(50, quiet);
            assert_eq!(report["wake_us"]["count"], 50, "{report}");
        }
    }
}
