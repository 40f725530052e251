//! Prometheus metrics of the operator (served on `/metrics`).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounter,
    pub failures: IntCounterVec,
    pub duration: Histogram,
    pub channels_per_node: IntGaugeVec,
    pub ring_epoch: IntGauge,
    pub ring_nodes: IntGauge,
    pub leader: IntGauge,
    /// metadata.name of each assigned ChatChannel -> owning node; the
    /// source of `channels_per_node`.
    assignments: Mutex<HashMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles =
            IntCounter::new("chat_operator_reconciles_total", "ChatChannel reconciles run").expect("metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "chat_operator_reconcile_failures_total",
                "Reconciles that did not end with Ready=True, by reason \
                 (RedisUnavailable, KubeApi, InvalidSpec, Conflict, NoNodes)",
            ),
            &["reason"],
        )
        .expect("metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new("chat_operator_reconcile_duration_seconds", "Time spent in one reconcile")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )
        .expect("metric");
        let channels_per_node = IntGaugeVec::new(
            Opts::new("chat_operator_channels", "Declared channels owned by each chat node"),
            &["node"],
        )
        .expect("metric");
        let ring_epoch =
            IntGauge::new("chat_operator_ring_epoch", "Epoch of the published ring").expect("metric");
        let ring_nodes =
            IntGauge::new("chat_operator_ring_nodes", "Chat nodes in the published ring").expect("metric");
        let leader =
            IntGauge::new("chat_operator_leader", "1 while this replica holds the lease").expect("metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(channels_per_node.clone()),
            Box::new(ring_epoch.clone()),
            Box::new(ring_nodes.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
            channels_per_node,
            ring_epoch,
            ring_nodes,
            leader,
            assignments: Mutex::new(HashMap::new()),
        }
    }

    /// Records (or with None forgets) the owner of one ChatChannel. O(1):
    /// only the two nodes concerned have their gauge moved.
    pub fn set_assignment(&self, object: &str, node: Option<&str>) {
        let mut a = self.assignments.lock().expect("metrics lock");
        let old = match node {
            Some(n) => match a.get(object) {
                Some(cur) if cur == n => return,
                _ => a.insert(object.to_string(), n.to_string()),
            },
            None => a.remove(object),
        };
        if let Some(old) = old {
            let g = self.channels_per_node.with_label_values(&[old.as_str()]);
            g.dec();
            if g.get() <= 0 {
                let _ = self.channels_per_node.remove_label_values(&[old.as_str()]);
            }
        }
        if let Some(n) = node {
            self.channels_per_node.with_label_values(&[n]).inc();
        }
    }

    /// Forgets every assignment (on losing leadership: another replica owns
    /// the numbers now).
    pub fn clear_assignments(&self) {
        self.assignments.lock().expect("metrics lock").clear();
        self.channels_per_node.reset();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_per_node_follows_assignments() {
        let m = Metrics::new();
        m.set_assignment("a", Some("n0"));
        m.set_assignment("b", Some("n0"));
        m.set_assignment("c", Some("n1"));
        assert_eq!(m.channels_per_node.with_label_values(&["n0"]).get(), 2);
        m.set_assignment("b", Some("n1"));
        m.set_assignment("a", None);
        assert_eq!(m.channels_per_node.with_label_values(&["n1"]).get(), 2);
        let text = m.render();
        assert!(text.contains("chat_operator_channels{node=\"n1\"} 2"), "{text}");
        assert!(!text.contains("node=\"n0\""), "{text}");
    }
}
