//! A run's report for people: the JSON report, read back as a few lines.

use std::fmt::Write as _;

use serde_json::Value;

use crate::stats::fmt_micros;

fn num(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer).and_then(Value::as_f64).unwrap_or(0.0)
}

fn int(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

fn percentiles(v: &Value, pointer: &str) -> String {
    let p = |q: &str| fmt_micros(num(v, &format!("{pointer}/{q}")));
    format!(
        "p50 {}  p90 {}  p99 {}  max {}  (n={})",
        p("p50"),
        p("p90"),
        p("p99"),
        p("max"),
        int(v, &format!("{pointer}/count"))
    )
}

/// The report as text.
pub fn human(r: &Value) -> String {
    let mut out = String::new();
    let label = r["label"]
        .as_str()
        .filter(|l| !l.is_empty())
        .map(|l| format!("  ({l})"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "pere-bench {} against {}{label}",
        r["scenario"].as_str().unwrap_or("?"),
        r["target"].as_str().unwrap_or("?")
    );
    if int(r, "/subscribers/requested") > 0 {
        let _ = writeln!(
            out,
            "  subscribers   {} of {} answered in {:.2} s ({} failed, {} reconnects, {} comments)",
            int(r, "/subscribers/ready"),
            int(r, "/subscribers/requested"),
            num(r, "/subscribers/connect_s"),
            int(r, "/subscribers/failed"),
            int(r, "/subscribers/reconnects"),
            int(r, "/subscribers/comments"),
        );
    }
    if r["server"].get("before").is_some() && int(r, "/subscribers/ready") > 0 {
        let _ = writeln!(
            out,
            "  server memory {} → {} KiB PSS: {:.2} KiB per connection (RSS {:.2} KiB)",
            int(r, "/server/before/pss_kib"),
            int(r, "/server/subscribed/pss_kib"),
            num(r, "/server/pss_kib_per_connection"),
            num(r, "/server/rss_kib_per_connection"),
        );
    }
    if r.get("published").is_some() {
        let _ = writeln!(
            out,
            "  published     {} events in {:.2} s = {:.0}/s, {} errors",
            int(r, "/published/ok"),
            num(r, "/published/s"),
            num(r, "/published/per_s"),
            int(r, "/published/errors"),
        );
        let _ = writeln!(
            out,
            "  push RTT      {}",
            percentiles(r, "/published/rtt_us")
        );
    }
    if r.get("deliveries").is_some() {
        let _ = writeln!(
            out,
            "  delivered     {} of {} expected = {:.0}/s; lost {} (subscribers with loss {}), duplicated {}, other events {}",
            int(r, "/deliveries/count"),
            int(r, "/deliveries/expected"),
            num(r, "/deliveries/per_s"),
            int(r, "/deliveries/lost"),
            int(r, "/deliveries/subscribers_with_loss"),
            int(r, "/deliveries/duplicated"),
            int(r, "/deliveries/other_events"),
        );
        let _ = writeln!(out, "  latency       {}", percentiles(r, "/latency_us"));
    }
    if r.get("receipts").is_some() {
        let _ = writeln!(
            out,
            "  receipts      {} deliveries acknowledged by {} requests, of {} queued ({} dropped by the generator, {} errors) = {:.0}/s",
            int(r, "/receipts/ok"),
            int(r, "/receipts/requests"),
            int(r, "/receipts/queued"),
            int(r, "/receipts/dropped"),
            int(r, "/receipts/errors"),
            num(r, "/receipts/per_s"),
        );
        let _ = writeln!(
            out,
            "  receipt RTT   {}",
            percentiles(r, "/receipts/rtt_us")
        );
        let _ = writeln!(
            out,
            "  push→receipt  {}",
            percentiles(r, "/receipts/e2e_us")
        );
    }
    if r["server"].get("cpu_s").is_some() && r["scenario"] != "idle" {
        let per = if r["scenario"] == "push" {
            format!("{:.2} µs per push", num(r, "/server/cpu_us_per_push"))
        } else if r.get("receipts").is_some() {
            format!(
                "{:.2} µs per delivery, {:.2} µs per acknowledged delivery",
                num(r, "/server/cpu_us_per_delivery"),
                num(r, "/server/cpu_us_per_acknowledged_delivery")
            )
        } else {
            format!(
                "{:.2} µs per delivery",
                num(r, "/server/cpu_us_per_delivery")
            )
        };
        let _ = writeln!(
            out,
            "  server CPU    {:.2} s = {per}",
            num(r, "/server/cpu_s")
        );
    }
    if r["scenario"] != "idle" {
        let _ = writeln!(
            out,
            "  generator CPU {:.2} s while publishing and draining",
            num(r, "/generator/cpu_s")
        );
    }
    if let Some(errors) = r["errors"].as_array().filter(|e| !e.is_empty()) {
        let _ = writeln!(out, "  errors:");
        for e in errors {
            let _ = writeln!(
                out,
                "    {} × {}",
                int(e, "/count"),
                e["error"].as_str().unwrap_or("?")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fanout_report_reads_as_text() {
        let r = json!({
            "scenario": "fanout", "label": "pere", "target": "127.0.0.1:1",
            "subscribers": {"requested": 10, "ready": 10, "failed": 0, "connect_s": 0.1, "reconnects": 0, "comments": 0},
            "server": {"before": {"pss_kib": 1}, "subscribed": {"pss_kib": 11}, "pss_kib_per_connection": 1.0,
                       "rss_kib_per_connection": 1.0, "cpu_s": 0.5, "cpu_us_per_delivery": 5.0},
            "published": {"ok": 100, "errors": 0, "s": 1.0, "per_s": 100.0, "rtt_us": {"p50": 300, "count": 100}},
            "deliveries": {"count": 1000, "expected": 1000, "per_s": 1000.0, "lost": 0},
            "latency_us": {"p50": 400, "p99": 2500, "max": 1_200_000, "count": 1000},
            "errors": [{"error": "feed closed by the server", "count": 2}],
        });
        let text = human(&r);
        assert!(
            text.contains("pere-bench fanout against 127.0.0.1:1  (pere)"),
            "{text}"
        );
        assert!(text.contains("10 of 10 answered"), "{text}");
        assert!(text.contains("1.00 KiB per connection"), "{text}");
        assert!(text.contains("p50 400 µs"), "{text}");
        assert!(text.contains("p99 2.50 ms"), "{text}");
        assert!(text.contains("max 1.20 s"), "{text}");
        assert!(text.contains("5.00 µs per delivery"), "{text}");
        assert!(text.contains("2 × feed closed by the server"), "{text}");
    }
}
