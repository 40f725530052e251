//! Client of the external moderation service (gRPC, `proto/moderation.proto`).
//!
//! Every call has a deadline; failed or timed-out calls are retried a
//! bounded number of times with doubling backoff; a circuit breaker
//! (`failsafe`, consecutive failures, exponential open periods) stops
//! calling a service that keeps failing and lets a probe through after the
//! open period. The worst case a message waits is therefore
//! `(1 + retries) × timeout + backoff × (2^retries − 1)`, and zero while
//! the breaker is open.

use std::time::{Duration, Instant};

use crate::metrics::registered;
use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use failsafe::{Instrument, StateMachine};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use tonic::transport::{Channel, Endpoint};

use shardchat_common::protocol::MAX_TEXT_CHARS;

/// Generated protobuf and gRPC types.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("shardchat.moderation.v1");
}

use pb::moderation_client::ModerationClient;

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub url: String,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
}

/// What the service decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Mask(String),
    Reject,
}

/// Why no verdict could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The last call failed (transport error, gRPC status, invalid answer).
    Error(String),
    /// The last call ran past its deadline.
    Timeout,
    /// The breaker is open: the service was not called.
    BreakerOpen,
}

/// Per-call results, breaker state and latency of the service.
#[derive(Clone)]
pub struct ServiceMetrics {
    /// One per call attempt (`ok`, `error`, `timeout`), plus `breaker_open`
    /// for each message that skipped the service.
    pub calls: IntCounterVec,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGauge,
    pub breaker_opened: prometheus::IntCounter,
    pub latency: Histogram,
}

impl ServiceMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = Self {
            calls: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shardchat_moderation_service_calls_total",
                        "Calls to the moderation service, by result",
                    ),
                    &["result"],
                ),
            ),
            breaker_state: registered(
                registry,
                IntGauge::new(
                    "shardchat_moderation_breaker_state",
                    "Moderation service circuit breaker: 0 closed, 1 open, 2 half-open",
                ),
            ),
            breaker_opened: registered(
                registry,
                prometheus::IntCounter::new(
                    "shardchat_moderation_breaker_opened_total",
                    "Times the moderation circuit breaker opened",
                ),
            ),
            latency: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "shardchat_moderation_service_seconds",
                        "Latency of moderation service calls (each attempt)",
                    )
                    .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
                ),
            ),
        };
        for r in ["ok", "error", "timeout", "breaker_open"] {
            m.calls.with_label_values(&[r]);
        }
        m
    }
}

/// Feeds breaker transitions into the metrics.
#[derive(Clone)]
struct BreakerMetrics(ServiceMetrics);

impl std::fmt::Debug for BreakerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BreakerMetrics")
    }
}

impl Instrument for BreakerMetrics {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        tracing::warn!("moderation service circuit breaker opened");
        self.0.breaker_state.set(1);
        self.0.breaker_opened.inc();
    }
    fn on_half_open(&self) {
        self.0.breaker_state.set(2);
    }
    fn on_closed(&self) {
        if self.0.breaker_state.get() != 0 {
            tracing::info!("moderation service circuit breaker closed");
        }
        self.0.breaker_state.set(0);
    }
}

/// Open periods of the breaker: `start`, doubling up to `max`. (failsafe's
/// own exponential backoff insists on whole seconds; chat wants less.)
#[derive(Debug, Clone)]
struct Doubling {
    next: Duration,
    max: Duration,
}

impl Iterator for Doubling {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        Some(d)
    }
}

type Breaker = StateMachine<ConsecutiveFailures<Doubling>, BreakerMetrics>;

pub struct ModerationService {
    client: ModerationClient<Channel>,
    settings: ServiceSettings,
    breaker: Breaker,
    metrics: ServiceMetrics,
}

impl ModerationService {
    /// Builds the client; the connection is made lazily (and re-made after
    /// failures) by the channel, so a service that is down at start is fine.
    pub fn new(settings: ServiceSettings, metrics: ServiceMetrics) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(settings.url.clone())
            .map_err(|e| format!("invalid --moderation-service URL {:?}: {e}", settings.url))?
            .connect_timeout(settings.timeout.max(Duration::from_millis(10)))
            .tcp_nodelay(true);
        let client = ModerationClient::new(endpoint.connect_lazy());
        let open = settings.breaker_open.max(Duration::from_millis(1));
        let policy =
            consecutive_failures(settings.breaker_failures.max(1), Doubling { next: open, max: open * 8 });
        let breaker = failsafe::Config::new()
            .failure_policy(policy)
            .instrument(BreakerMetrics(metrics.clone()))
            .build();
        Ok(Self { client, settings, breaker, metrics })
    }

    /// Asks the service about one message, with retries, within the breaker.
    pub async fn check(&self, channel: &str, user: &str, text: &str, mode: &str) -> Result<Verdict, Failure> {
        let request = pb::CheckRequest {
            channel: channel.to_string(),
            user: user.to_string(),
            text: text.to_string(),
            mode: mode.to_string(),
        };
        let mut last = Failure::BreakerOpen;
        for attempt in 0..=self.settings.retries {
            if attempt > 0 {
                let wait = self.settings.backoff.saturating_mul(1 << (attempt - 1).min(16));
                tokio::time::sleep(wait).await;
            }
            if !self.breaker.is_call_permitted() {
                self.metrics.calls.with_label_values(&["breaker_open"]).inc();
                // A failure before this one is the more useful report.
                return Err(if attempt == 0 { Failure::BreakerOpen } else { last });
            }
            let started = Instant::now();
            let mut client = self.client.clone();
            let result = tokio::time::timeout(self.settings.timeout, client.check(request.clone())).await;
            self.metrics.latency.observe(started.elapsed().as_secs_f64());
            let outcome = match result {
                Err(_) => Err(Failure::Timeout),
                Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => Err(Failure::Timeout),
                Ok(Err(status)) => Err(Failure::Error(format!("{}: {}", status.code(), status.message()))),
                Ok(Ok(response)) => verdict(response.into_inner()),
            };
            match outcome {
                Ok(v) => {
                    self.breaker.on_success();
                    self.metrics.calls.with_label_values(&["ok"]).inc();
                    return Ok(v);
                }
                Err(f) => {
                    self.breaker.on_error();
                    let label = if f == Failure::Timeout { "timeout" } else { "error" };
                    self.metrics.calls.with_label_values(&[label]).inc();
                    tracing::debug!(attempt, failure = ?f, "moderation service call failed");
                    last = f;
                }
            }
        }
        Err(last)
    }
}

fn verdict(r: pb::CheckResponse) -> Result<Verdict, Failure> {
    match pb::Verdict::try_from(r.verdict) {
        Ok(pb::Verdict::Allow) => Ok(Verdict::Allow),
        Ok(pb::Verdict::Reject) => {
            if !r.reason.is_empty() {
                tracing::debug!(reason = %r.reason, "moderation service rejected a message");
            }
            Ok(Verdict::Reject)
        }
        Ok(pb::Verdict::Mask) => {
            let chars = r.text.chars().count();
            if r.text.is_empty() || chars > MAX_TEXT_CHARS {
                Err(Failure::Error(format!("MASK verdict with a replacement of {chars} characters")))
            } else {
                Ok(Verdict::Mask(r.text))
            }
        }
        Ok(pb::Verdict::Unspecified) | Err(_) => {
            Err(Failure::Error(format!("unknown verdict {}", r.verdict)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_open_periods_double_up_to_the_cap() {
        let d = Doubling { next: Duration::from_millis(100), max: Duration::from_millis(800) };
        let got: Vec<u128> = d.take(6).map(|d| d.as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 800, 800]);
    }

    #[test]
    fn invalid_answers_are_failures() {
        let mask = |text: &str| pb::CheckResponse {
            verdict: pb::Verdict::Mask as i32,
            text: text.into(),
            reason: String::new(),
        };
        assert_eq!(verdict(mask("ok")), Ok(Verdict::Mask("ok".into())));
        assert!(verdict(mask("")).is_err());
        assert!(verdict(mask(&"x".repeat(MAX_TEXT_CHARS + 1))).is_err());
        let unknown = pb::CheckResponse { verdict: 42, ..Default::default() };
        assert!(verdict(unknown).is_err());
        assert!(verdict(pb::CheckResponse::default()).is_err(), "UNSPECIFIED");
    }
}
