//! Renders a [`Summary`] as a human table or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::latency::Percentiles;
use crate::summary::Summary;

pub fn json(s: &Summary) -> String {
    // Serializing plain structs and maps cannot fail.
    serde_json::to_string(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(x: f64) -> String {
    if x >= 100.0 { thousands(x.round() as u64) } else { format!("{x:.1}") }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter().map(|(k, v)| format!("{k} {}", thousands(*v))).collect::<Vec<_>>().join(", ")
}

fn percentiles(p: &Percentiles) -> String {
    if p.samples == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        thousands(p.p50),
        thousands(p.p90),
        thousands(p.p99),
        thousands(p.p999),
        thousands(p.max),
        thousands(p.samples)
    )
}

pub fn table(s: &Summary) -> String {
    let c = &s.config;
    let mut t = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(t, "{label:<13}{value}");
    };
    line(
        "run",
        format!(
            "{}: {} connections on {} node(s), {} channel(s), {} publisher(s)/channel, \
             {} msg/s for {} s (+{} s drain)",
            s.run_id,
            thousands(c.connections as u64),
            c.urls.len(),
            thousands(c.channels as u64),
            c.publishers_per_channel,
            rate(c.rate),
            c.duration_s,
            c.drain_s
        ),
    );
    line(
        "setup",
        format!("{} connected, {} joined in {:.2} s", s.setup.connected, s.setup.joined, s.setup.seconds),
    );
    let p = &s.sent;
    line(
        "sent",
        format!(
            "{} accepted ({} msg/s) of {} planned; {} rejected, {} unanswered, {} interrupted, {} not sent",
            thousands(p.accepted),
            rate(p.per_sec),
            thousands(p.planned),
            thousands(p.rejected),
            thousands(p.unanswered),
            thousands(p.interrupted),
            thousands(p.not_sent)
        ),
    );
    if p.retries > 0 || p.deduplicated > 0 {
        line(
            "",
            format!(
                "{} retries, {} answered as duplicates of a stored publish",
                thousands(p.retries),
                thousands(p.deduplicated)
            ),
        );
    }
    let d = &s.delivered;
    line(
        "delivered",
        format!(
            "{} ({} msg/s over {:.2} s); expected {}",
            thousands(d.count),
            rate(d.per_sec),
            d.window_s,
            thousands(d.expected)
        ),
    );
    line("latency µs", percentiles(&s.latency_us));
    line("send lag µs", percentiles(&s.send_lag_us));
    line("errors", counts(&s.errors));
    let n = &s.connections;
    line(
        "connections",
        format!(
            "{} connect failed, {} join failed, {} closed early; close codes: {}",
            n.connect_failed,
            n.join_failed,
            n.closed_early,
            counts(&n.close_codes)
        ),
    );
    if !n.failure_reasons.is_empty() {
        line("  reasons", counts(&n.failure_reasons));
    }
    if !n.closed_examples.is_empty() {
        let ex: Vec<String> = n
            .closed_examples
            .iter()
            .map(|e| {
                let role = if e.publisher { "publisher" } else { "member" };
                format!("conn {} ({role}, channel {}): {}", e.conn, e.channel, e.code)
            })
            .collect();
        line("  closed", ex.join(", "));
    }
    let r = &s.recovery;
    if r.reconnects + r.recovered_false + r.gaps > 0 {
        line(
            "recovery",
            format!(
                "{} reconnects, {} re-joins recovered:false, {} gap pushes",
                thousands(r.reconnects),
                thousands(r.recovered_false),
                thousands(r.gaps)
            ),
        );
    }
    let k = &s.correctness;
    line(
        "correctness",
        format!(
            "lost {} ({} on closed connections), excused {}, duplicated {}, out-of-order {}",
            thousands(k.lost),
            thousands(k.lost_on_closed),
            thousands(k.excused),
            thousands(k.duplicated),
            thousands(k.out_of_order)
        ),
    );
    line(
        "",
        format!(
            "unconfirmed {}, foreign {}, protocol violations {}",
            thousands(k.unconfirmed),
            thousands(k.foreign),
            thousands(k.protocol_violations)
        ),
    );
    for e in &s.lost_examples {
        line(
            "  lost",
            format!(
                "conn {} (channel {}, node {}, {} reconnects, highest {}): {} lost, first: publisher {} seq {} id {}",
                e.conn,
                e.channel,
                e.node,
                e.reconnects,
                e.highest.as_deref().unwrap_or("-"),
                e.lost,
                e.first_lost.publisher,
                e.first_lost.seq,
                e.first_lost.id.as_deref().unwrap_or("?")
            ),
        );
    }
    let verdict = if s.passed { "PASS".to_string() } else { format!("FAIL: {}", s.failures.join("; ")) };
    line("result", verdict);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(rate(12.345), "12.3");
        assert_eq!(rate(199_980.4), "199,980");
        let mut m = BTreeMap::new();
        assert_eq!(counts(&m), "none");
        m.insert("4009".to_string(), 3);
        m.insert("1006".to_string(), 1200);
        assert_eq!(counts(&m), "1006 1,200, 4009 3");
    }
}
