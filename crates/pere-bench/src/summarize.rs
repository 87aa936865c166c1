//! Markdown tables from a directory of reports laid out as `DIR/<scenario>/<server>/<rep>.json`:
//! per metric, each server's median and spread over its runs, and the median of the per-round
//! ratios of each candidate to each baseline (runs with the same `<rep>` ran back to back, so
//! their ratio cancels out what else the machine was doing then).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::stats::{median, spread};

/// Whether more or less is better, to say which way a ratio leans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
}

/// One row of a table.
#[derive(Debug, Clone, Copy)]
struct Metric {
    label: &'static str,
    pointer: &'static str,
    /// Multiplies the stored value (µs to ms: 0.001).
    scale: f64,
    decimals: usize,
    better: Better,
}

const fn m(
    label: &'static str,
    pointer: &'static str,
    scale: f64,
    decimals: usize,
    better: Better,
) -> Metric {
    Metric {
        label,
        pointer,
        scale,
        decimals,
        better,
    }
}

use Better::{Higher, Lower};

/// The rows for a report of `scenario` (the report's own `scenario` field).
fn metrics(scenario: &str) -> Vec<Metric> {
    let latency = [
        m(
            "delivery latency p50 (ms)",
            "/latency_us/p50",
            0.001,
            2,
            Lower,
        ),
        m(
            "delivery latency p99 (ms)",
            "/latency_us/p99",
            0.001,
            2,
            Lower,
        ),
        m(
            "delivery latency max (ms)",
            "/latency_us/max",
            0.001,
            1,
            Lower,
        ),
    ];
    let losses = [
        m(
            "lost events (sum over subscribers)",
            "/deliveries/lost",
            1.0,
            0,
            Lower,
        ),
        m("duplicated events", "/deliveries/duplicated", 1.0, 0, Lower),
        m(
            "feed reconnections",
            "/subscribers/reconnects",
            1.0,
            0,
            Lower,
        ),
    ];
    match scenario {
        "idle" => vec![
            m(
                "memory per connection, PSS (KiB)",
                "/server/pss_kib_per_connection",
                1.0,
                2,
                Lower,
            ),
            m(
                "memory per connection, RSS (KiB)",
                "/server/rss_kib_per_connection",
                1.0,
                2,
                Lower,
            ),
            m(
                "server PSS with all open (MiB)",
                "/server/subscribed/pss_kib",
                1.0 / 1024.0,
                1,
                Lower,
            ),
            m(
                "seconds to open all",
                "/subscribers/connect_s",
                1.0,
                2,
                Lower,
            ),
            m("subscribers refused", "/subscribers/failed", 1.0, 0, Lower),
        ],
        "fanout" => [
            &latency[..],
            &losses[..],
            &[
                m("deliveries/s", "/deliveries/per_s", 1.0, 0, Higher),
                m(
                    "server CPU per delivery (µs)",
                    "/server/cpu_us_per_delivery",
                    1.0,
                    2,
                    Lower,
                ),
                m("generator CPU (s)", "/generator/cpu_s", 1.0, 2, Lower),
            ],
        ]
        .concat(),
        "saturate" => [
            &[
                m("deliveries/s", "/deliveries/per_s", 1.0, 0, Higher),
                m(
                    "server CPU per delivery (µs)",
                    "/server/cpu_us_per_delivery",
                    1.0,
                    2,
                    Lower,
                ),
                m("pushes/s (1 channel)", "/published/per_s", 1.0, 0, Higher),
            ][..],
            &latency[..2],
            &losses[..],
            &[m("generator CPU (s)", "/generator/cpu_s", 1.0, 2, Lower)],
        ]
        .concat(),
        "receipts" => vec![
            m("receipts/s", "/receipts/per_s", 1.0, 0, Higher),
            m(
                "receipt round trip p50 (ms)",
                "/receipts/rtt_us/p50",
                0.001,
                2,
                Lower,
            ),
            m(
                "receipt round trip p99 (ms)",
                "/receipts/rtt_us/p99",
                0.001,
                2,
                Lower,
            ),
            m(
                "push → receipt answered p99 (ms)",
                "/receipts/e2e_us/p99",
                0.001,
                1,
                Lower,
            ),
            m("receipt errors", "/receipts/errors", 1.0, 0, Lower),
            m(
                "receipts dropped by the generator",
                "/receipts/dropped",
                1.0,
                0,
                Lower,
            ),
            latency[0],
            latency[1],
            losses[0],
            m(
                "server CPU per delivery+receipt (µs)",
                "/server/cpu_us_per_delivery",
                1.0,
                2,
                Lower,
            ),
            m("generator CPU (s)", "/generator/cpu_s", 1.0, 2, Lower),
        ],
        "push" => vec![
            m("pushes/s", "/published/per_s", 1.0, 0, Higher),
            m(
                "push round trip p50 (ms)",
                "/published/rtt_us/p50",
                0.001,
                2,
                Lower,
            ),
            m(
                "push round trip p99 (ms)",
                "/published/rtt_us/p99",
                0.001,
                2,
                Lower,
            ),
            m(
                "server CPU per push (µs)",
                "/server/cpu_us_per_push",
                1.0,
                2,
                Lower,
            ),
            m("push errors", "/published/errors", 1.0, 0, Lower),
        ],
        "wrk-push" => vec![
            m("pushes/s (wrk)", "/pushes_per_s", 1.0, 0, Higher),
            m(
                "push latency p50 (ms, wrk)",
                "/latency_us/p50",
                0.001,
                2,
                Lower,
            ),
            m(
                "push latency p99 (ms, wrk)",
                "/latency_us/p99",
                0.001,
                2,
                Lower,
            ),
            m(
                "server CPU per push (µs)",
                "/server/cpu_us_per_push",
                1.0,
                2,
                Lower,
            ),
            m("non-2xx or socket errors", "/errors", 1.0, 0, Lower),
        ],
        _ => vec![],
    }
}

/// One scenario's reports: server → rep → report.
type Runs = BTreeMap<String, BTreeMap<String, Value>>;

/// Reads `dir` and returns the Markdown tables, one per scenario directory, in name order.
/// Servers whose name starts with `baseline` are the baselines of the ratio columns; the others
/// are the candidates.
///
/// # Errors
/// When the directory cannot be read or a report is not JSON.
pub fn summarize(dir: &Path, baseline: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut scenarios: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    scenarios.sort_by_key(|e| e.file_name());
    for scenario in scenarios {
        let mut runs = Runs::new();
        for server in std::fs::read_dir(scenario.path())?
            .flatten()
            .filter(|e| e.path().is_dir())
        {
            let mut reps = BTreeMap::new();
            for file in std::fs::read_dir(server.path())?.flatten() {
                let path = file.path();
                if path.extension().is_some_and(|x| x == "json") {
                    let text = std::fs::read_to_string(&path)?;
                    let value: Value = serde_json::from_str(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    let rep = path
                        .file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned();
                    reps.insert(rep, value);
                }
            }
            if !reps.is_empty() {
                runs.insert(server.file_name().to_string_lossy().into_owned(), reps);
            }
        }
        if !runs.is_empty() {
            table(
                &mut out,
                &scenario.file_name().to_string_lossy(),
                &runs,
                baseline,
            );
        }
    }
    Ok(out)
}

fn fmt(x: f64, decimals: usize) -> String {
    if x.abs() >= 10_000.0 && decimals <= 1 {
        // Thousands separated, for throughput figures.
        let s = format!("{:.0}", x);
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("{sign}{grouped}")
    } else {
        format!("{x:.decimals$}")
    }
}

fn table(out: &mut String, title: &str, runs: &Runs, baseline: &str) {
    let kind = runs
        .values()
        .flat_map(|reps| reps.values())
        .find_map(|r| r["scenario"].as_str())
        .unwrap_or("?");
    // Candidates first, then baselines.
    let mut servers: Vec<&String> = runs.keys().collect();
    servers.sort_by_key(|s| (s.starts_with(baseline), s.as_str()));
    let candidates: Vec<&String> = servers
        .iter()
        .copied()
        .filter(|s| !s.starts_with(baseline))
        .collect();
    let baselines: Vec<&String> = servers
        .iter()
        .copied()
        .filter(|s| s.starts_with(baseline))
        .collect();

    let _ = writeln!(out, "### {title}\n");
    if let Some(config) = runs
        .values()
        .flat_map(|reps| reps.values())
        .find_map(|r| r.get("config"))
    {
        let _ = writeln!(out, "Setup: {}.\n", describe(kind, config));
    }
    let mut header = String::from("| metric |");
    let mut rule = String::from("| --- |");
    for s in &servers {
        let n = runs[*s].len();
        let _ = write!(header, " {s} (n={n}) |");
        rule.push_str(" ---: |");
    }
    for c in &candidates {
        for b in &baselines {
            let _ = write!(header, " {c} / {b} |");
            rule.push_str(" ---: |");
        }
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for metric in metrics(kind) {
        let value = |r: &Value| {
            r.pointer(metric.pointer)
                .and_then(Value::as_f64)
                .map(|x| x * metric.scale)
        };
        let mut row = format!("| {} |", metric.label);
        for s in &servers {
            let values: Vec<f64> = runs[*s].values().filter_map(value).collect();
            match (median(&values), spread(&values)) {
                (Some(mid), Some((lo, hi))) if values.len() > 1 => {
                    let _ = write!(
                        row,
                        " {} ({}–{}) |",
                        fmt(mid, metric.decimals),
                        fmt(lo, metric.decimals),
                        fmt(hi, metric.decimals)
                    );
                }
                (Some(mid), _) => {
                    let _ = write!(row, " {} |", fmt(mid, metric.decimals));
                }
                _ => row.push_str(" – |"),
            }
        }
        for c in &candidates {
            for b in &baselines {
                let ratios: Vec<f64> = runs[*c]
                    .iter()
                    .filter_map(|(rep, r)| {
                        let (x, y) = (value(r)?, value(runs[*b].get(rep)?)?);
                        (y != 0.0).then_some(x / y)
                    })
                    .collect();
                match median(&ratios) {
                    Some(ratio) => {
                        let lean = match (metric.better, ratio) {
                            (_, r) if (r - 1.0).abs() < 0.05 => "",
                            (Lower, r) if r < 1.0 => " ✓",
                            (Higher, r) if r > 1.0 => " ✓",
                            _ => " ✗",
                        };
                        let _ = write!(row, " {ratio:.2}×{lean} |");
                    }
                    None => row.push_str(" – |"),
                }
            }
        }
        let _ = writeln!(out, "{row}");
    }
    // Errors seen in any run, so a surprising figure can be traced.
    let mut notes = Vec::new();
    for s in &servers {
        for (rep, r) in &runs[*s] {
            for e in r["errors"].as_array().into_iter().flatten() {
                notes.push(format!(
                    "{s} run {rep}: {} × {}",
                    e["count"].as_u64().unwrap_or(0),
                    e["error"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\nErrors and closed feeds seen:\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    let _ = writeln!(out);
}

fn describe(kind: &str, config: &Value) -> String {
    let n = config["subscribers"].as_u64().unwrap_or(0);
    let channels = config["channels"].as_u64().unwrap_or(1);
    let rate = config["rate_per_channel"].as_f64();
    let duration = config["duration_s"].as_f64().unwrap_or(0.0);
    let publishers = config["publishers"].as_u64().unwrap_or(0);
    match kind {
        "idle" => format!("{n} subscribers on {channels} channel(s), held open {duration:.0} s"),
        "wrk-push" => format!(
            "wrk, {} connections, {} threads, {duration:.0} s, POST /push/<ch>, no subscribers",
            config["connections"].as_u64().unwrap_or(0),
            config["threads"].as_u64().unwrap_or(0)
        ),
        "push" => format!("{publishers} keep-alive connections, {duration:.0} s, no subscribers"),
        _ => {
            let pace = match rate {
                Some(r) => format!("{r} events/s per channel"),
                None => format!(
                    "unpaced (at most {} events per subscriber in flight)",
                    config["max_ahead"].as_u64().unwrap_or(0)
                ),
            };
            let events = config["events_per_channel"]
                .as_u64()
                .map(|e| format!(", {e} events per channel"))
                .unwrap_or_default();
            let receipts = if config["receipts"].as_bool() == Some(true) {
                format!(
                    ", a receipt per event per subscriber over {} connections",
                    config["receipt_conns"].as_u64().unwrap_or(0)
                )
            } else {
                String::new()
            };
            format!("{channels} channel(s) × {n} subscribers, {pace}{events}, {duration:.0} s, {publishers} publishing connections{receipts}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, scenario: &str, server: &str, rep: &str, value: Value) {
        let path = dir.join(scenario).join(server);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join(format!("{rep}.json")), value.to_string()).unwrap();
    }

    #[test]
    fn tables_give_medians_spreads_and_per_round_ratios() {
        let dir = std::env::temp_dir().join(format!("pere-bench-summary-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let idle = |kib: f64| {
            json!({"scenario": "idle", "config": {"subscribers": 100, "duration_s": 5.0},
                                      "server": {"pss_kib_per_connection": kib}, "errors": []})
        };
        for (rep, pere, nchan) in [("1", 10.0, 5.0), ("2", 12.0, 4.0), ("3", 30.0, 10.0)] {
            write(&dir, "1-idle", "pere-memory", rep, idle(pere));
            write(&dir, "1-idle", "nchan-w1", rep, idle(nchan));
        }
        write(
            &dir,
            "2-wrk",
            "pere-memory",
            "1",
            json!({"scenario": "wrk-push", "pushes_per_s": 20000.0,
            "config": {"connections": 50, "threads": 2, "duration_s": 10.0}, "errors": [{"error": "boom", "count": 2}]}),
        );
        write(
            &dir,
            "2-wrk",
            "nchan-w1",
            "1",
            json!({"scenario": "wrk-push", "pushes_per_s": 10000.0}),
        );
        let text = summarize(&dir, "nchan").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(text.contains("### 1-idle"), "{text}");
        assert!(
            text.contains(
                "| metric | pere-memory (n=3) | nchan-w1 (n=3) | pere-memory / nchan-w1 |"
            ),
            "{text}"
        );
        // Medians 12 and 5; per-round ratios 2, 3, 3: median 3, and more memory is worse.
        assert!(text.contains("| memory per connection, PSS (KiB) | 12.00 (10.00–30.00) | 5.00 (4.00–10.00) | 3.00× ✗ |"), "{text}");
        assert!(
            text.contains("| pushes/s (wrk) | 20,000 | 10,000 | 2.00× ✓ |"),
            "{text}"
        );
        assert!(
            text.contains("wrk, 50 connections, 2 threads, 10 s"),
            "{text}"
        );
        assert!(text.contains("- pere-memory run 1: 2 × boom"), "{text}");
        // A metric absent from the reports shows as a dash.
        assert!(
            text.contains("| memory per connection, RSS (KiB) | – | – | – |"),
            "{text}"
        );
    }

    #[test]
    fn big_numbers_get_separators() {
        assert_eq!(fmt(1_234_567.4, 0), "1,234,567");
        assert_eq!(fmt(-12_345.0, 0), "-12,345");
        assert_eq!(fmt(999.0, 0), "999");
        assert_eq!(fmt(12.346, 2), "12.35");
    }
}
