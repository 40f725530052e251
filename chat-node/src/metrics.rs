//! Prometheus metrics of one node, exposed at `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use shardchat_common::protocol::ErrorCode;

pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub disconnects: IntCounterVec,
    pub joins: IntCounter,
    pub published: IntCounter,
    pub delivered: IntCounter,
    pub errors: IntCounterVec,
    pub slow_consumer_disconnects: IntCounter,
    pub publish_to_deliver: Histogram,
    pub channels_owned: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(None, None).expect("valid registry");
        let m = Self {
            registry,
            connections: IntGauge::new("shardchat_connections", "Open client WebSocket connections")
                .expect("valid metric"),
            connections_total: IntCounter::new(
                "shardchat_connections_total",
                "Client WebSocket connections accepted",
            )
            .expect("valid metric"),
            disconnects: IntCounterVec::new(
                Opts::new("shardchat_disconnects_total", "Client connections closed, by reason"),
                &["reason"],
            )
            .expect("valid metric"),
            joins: IntCounter::new("shardchat_joins_total", "Successful channel joins")
                .expect("valid metric"),
            published: IntCounter::new(
                "shardchat_messages_published_total",
                "Messages accepted (sequenced and stored) by this node as channel owner",
            )
            .expect("valid metric"),
            delivered: IntCounter::new(
                "shardchat_messages_delivered_total",
                "Message pushes queued to client connections on this node",
            )
            .expect("valid metric"),
            errors: IntCounterVec::new(
                Opts::new("shardchat_errors_total", "Error replies and pushes sent to clients, by code"),
                &["code"],
            )
            .expect("valid metric"),
            slow_consumer_disconnects: IntCounter::new(
                "shardchat_slow_consumer_disconnects_total",
                "Connections closed because their outbound queue was full",
            )
            .expect("valid metric"),
            publish_to_deliver: Histogram::with_opts(
                HistogramOpts::new(
                    "shardchat_publish_to_deliver_seconds",
                    "Time from the owner accepting a message to its fan-out on this node",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5,
                ]),
            )
            .expect("valid metric"),
            channels_owned: IntGauge::new("shardchat_channels_owned", "Channels with members that this node owns (embedded: updated at scrape; cluster: every --node-ttl/2)")
                .expect("valid metric"),
        };
        for c in [
            Box::new(m.connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.connections_total.clone()),
            Box::new(m.disconnects.clone()),
            Box::new(m.joins.clone()),
            Box::new(m.published.clone()),
            Box::new(m.delivered.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.slow_consumer_disconnects.clone()),
            Box::new(m.publish_to_deliver.clone()),
            Box::new(m.channels_owned.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        // Export every error code from the start so dashboards see zeros.
        for code in ErrorCode::ALL {
            m.errors.with_label_values(&[code.as_str()]);
        }
        m
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    /// The registry, for subsystems that keep their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
