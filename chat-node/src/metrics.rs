//! Prometheus metrics of one node, exposed at `GET /metrics`.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
    pub gaps: IntCounter,
    pub readiness_problems: IntGaugeVec,
    pub inbox_entries: IntCounter,
    pub inbox_overflows: IntCounter,
    pub owner_queued: IntGauge,
    pub owner_overloaded: IntCounter,
    pub owner_batch_ops: Histogram,
}

/// Registers `metric` (built from constant, valid options) on `registry`.
pub fn registered<C: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<C>) -> C {
    let metric = metric.expect("metric options are constant and valid");
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(None, None).expect("valid registry");
        let m = Self {
            registry: registry.clone(),
            connections: registered(
                &registry,
                IntGauge::new("shardchat_connections", "Open client WebSocket connections"),
            ),
            connections_total: registered(
                &registry,
                IntCounter::new("shardchat_connections_total", "Client WebSocket connections accepted"),
            ),
            disconnects: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new("shardchat_disconnects_total", "Client connections closed, by reason"),
                    &["reason"],
                ),
            ),
            joins: registered(
                &registry,
                IntCounter::new("shardchat_joins_total", "Successful channel joins"),
            ),
            published: registered(
                &registry,
                IntCounter::new(
                    "shardchat_messages_published_total",
                    "Messages accepted (sequenced and stored) by this node as channel owner",
                ),
            ),
            delivered: registered(
                &registry,
                IntCounter::new(
                    "shardchat_messages_delivered_total",
                    "Message pushes queued to client connections on this node",
                ),
            ),
            errors: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new("shardchat_errors_total", "Error replies and pushes sent to clients, by code"),
                    &["code"],
                ),
            ),
            slow_consumer_disconnects: registered(
                &registry,
                IntCounter::new(
                    "shardchat_slow_consumer_disconnects_total",
                    "Connections closed because their outbound queue was full",
                ),
            ),
            publish_to_deliver: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "shardchat_publish_to_deliver_seconds",
                        "Time from the owner accepting a message to its fan-out on this node",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5,
                    ]),
                ),
            ),
            channels_owned: registered(
                &registry,
                IntGauge::new(
                    "shardchat_channels_owned",
                    "Channels with members that this node owns (embedded: updated at scrape; cluster: every --node-ttl/2)",
                ),
            ),
            gaps: registered(
                &registry,
                IntCounter::new(
                    "shardchat_gaps_total",
                    "Times this node told its members of a channel that they may have missed messages (gap push, or a resync that could not prove completeness)",
                ),
            ),
            readiness_problems: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "shardchat_readiness_problem",
                        "1 while the named check keeps the node from being ready (redis, inbox); /readyz says why",
                    ),
                    &["check"],
                ),
            ),
            inbox_entries: registered(
                &registry,
                IntCounter::new(
                    "shardchat_inbox_entries_total",
                    "Entries read from this node's inbox stream",
                ),
            ),
            inbox_overflows: registered(
                &registry,
                IntCounter::new(
                    "shardchat_inbox_overflows_total",
                    "Times this node's inbox reached --inbox-maxlen unread entries (entries may have been dropped; members got a gap push)",
                ),
            ),
            owner_queued: registered(
                &registry,
                IntGauge::new(
                    "shardchat_owner_queued_operations",
                    "Channel operations (publish, join, leave) waiting in this node's owner queues",
                ),
            ),
            owner_overloaded: registered(
                &registry,
                IntCounter::new(
                    "shardchat_owner_overloaded_total",
                    "Operations refused with `unavailable` because an owner queue was full",
                ),
            ),
            owner_batch_ops: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "shardchat_owner_batch_operations",
                        "Channel operations applied per storage call (one Lua script call in cluster mode)",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
                ),
            ),
        };
        for check in ["redis", "inbox"] {
            m.readiness_problems.with_label_values(&[check]);
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
