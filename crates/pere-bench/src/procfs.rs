//! The server's footprint from `/proc`: resident memory (RSS and PSS) and CPU time, summed over
//! the given processes and all their descendants (nginx's master and workers).
//!
//! PSS (`/proc/PID/smaps_rollup`) splits each shared page between the processes that map it, so
//! summing it over a master and its forked workers does not count shared pages twice, as an RSS
//! sum would.

use std::collections::BTreeSet;
use std::fs;

use serde_json::{json, Value};

/// One look at the server's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Processes summed.
    pub processes: usize,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Proportional set, KiB.
    pub pss_kib: u64,
    /// User plus system CPU time, seconds.
    pub cpu_s: f64,
}

impl Sample {
    /// As JSON.
    pub fn json(&self) -> Value {
        json!({"processes": self.processes, "rss_kib": self.rss_kib, "pss_kib": self.pss_kib,
               "cpu_s": (self.cpu_s * 1000.0).round() / 1000.0})
    }
}

/// The processes to watch.
#[derive(Debug, Clone)]
pub struct Probe {
    roots: Vec<u32>,
    ticks_per_s: f64,
}

impl Probe {
    /// Watches `pids` and their descendants.
    pub fn new(pids: Vec<u32>) -> Self {
        // SAFETY: sysconf has no preconditions.
        #[allow(unsafe_code)]
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Probe {
            roots: pids,
            ticks_per_s: if ticks > 0 { ticks as f64 } else { 100.0 },
        }
    }

    /// True when no process was given: nothing to measure.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Sums memory and CPU over the processes now alive. `None` without processes to watch.
    pub fn sample(&self) -> Option<Sample> {
        if self.roots.is_empty() {
            return None;
        }
        let mut sample = Sample::default();
        for pid in with_descendants(&self.roots) {
            let Some(ticks) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| cpu_ticks(&s))
            else {
                continue;
            };
            sample.processes += 1;
            sample.cpu_s += ticks as f64 / self.ticks_per_s;
            let (rss, pss) = memory_kib(pid);
            sample.rss_kib += rss;
            sample.pss_kib += pss;
        }
        Some(sample)
    }
}

/// `pids` and every process whose parent is among them, transitively.
fn with_descendants(pids: &[u32]) -> BTreeSet<u32> {
    let mut set: BTreeSet<u32> = pids.iter().copied().collect();
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            Some((
                pid,
                parent_pid(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?,
            ))
        })
        .collect();
    loop {
        let before = set.len();
        for &(pid, ppid) in &parents {
            if set.contains(&ppid) {
                set.insert(pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces and parens).
fn fields_after_comm(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat[close + 1..].split_whitespace().collect())
}

/// Field 4 of `/proc/PID/stat`.
fn parent_pid(stat: &str) -> Option<u32> {
    fields_after_comm(stat)?.get(1)?.parse().ok()
}

/// Fields 14 and 15 of `/proc/PID/stat`: user and system time, in clock ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let fields = fields_after_comm(stat)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// RSS and PSS in KiB, from `smaps_rollup` (PSS falls back to RSS from `status` without it).
fn memory_kib(pid: u32) -> (u64, u64) {
    if let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        if let (Some(rss), Some(pss)) = (kib_field(&rollup, "Rss:"), kib_field(&rollup, "Pss:")) {
            return (rss, pss);
        }
    }
    let rss = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| kib_field(&s, "VmRSS:"))
        .unwrap_or(0);
    (rss, rss)
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "4242 (nginx: worker (x) ) S 4241 4241 4241 0 -1 4194624 100 0 0 0 250 75 0 0 20 0 1 0 5 1000 50";
        assert_eq!(parent_pid(stat), Some(4241));
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn kib_fields_are_read() {
        let rollup = "55d0-7ff [rollup]\nRss:               12345 kB\nPss:                6789 kB\nPss_Anon:  1 kB\n";
        assert_eq!(kib_field(rollup, "Rss:"), Some(12345));
        assert_eq!(kib_field(rollup, "Pss:"), Some(6789));
        assert_eq!(kib_field(rollup, "Swap:"), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let probe = Probe::new(vec![std::process::id()]);
        let sample = probe.sample().unwrap();
        assert!(sample.processes >= 1);
        assert!(sample.rss_kib > 0 && sample.pss_kib > 0, "{sample:?}");
        assert!(Probe::new(vec![]).sample().is_none());
    }
}
