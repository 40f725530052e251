//! The moderation pipeline the channel owner runs on every message before
//! it is sequenced: the built-in word filter (`filter`), then, when
//! configured, the external moderation service (`service`).
//!
//! Both run on the owner, so messages that reach it from other nodes in
//! cluster mode are moderated the same way as local ones. The channel's
//! mode (`off`, `mask`, `reject`; node default `--moderation`) decides what
//! a flagged word does; `off` skips the whole pipeline.

pub mod filter;
pub mod service;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::metrics::registered;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use shardchat_common::ModerationMode;
use shardchat_common::protocol::ErrorCode;

use crate::config::Config;
use crate::error::{ChatError, ChatResult};
pub use filter::WordFilter;
use service::{Failure, ModerationService, ServiceMetrics, ServiceSettings, Verdict};

/// Outcome counters of the pipeline.
pub struct ModerationMetrics {
    /// One per moderated message: `allowed`, `masked`, `rejected`, or
    /// `unavailable` (service failed and the pipeline fails closed).
    pub decisions: IntCounterVec,
    /// Messages delivered without the service's verdict (fail-open).
    pub failed_open: IntCounter,
    /// Entries of the word list in force.
    pub word_list_entries: IntGauge,
    pub service: ServiceMetrics,
}

impl ModerationMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = Self {
            decisions: registered(
                registry,
                IntCounterVec::new(
                    Opts::new("shardchat_moderation_decisions_total", "Moderated messages, by decision"),
                    &["decision"],
                ),
            ),
            failed_open: registered(
                registry,
                IntCounter::new(
                    "shardchat_moderation_failed_open_total",
                    "Messages delivered without the moderation service's verdict because it failed (fail-open)",
                ),
            ),
            word_list_entries: registered(
                registry,
                IntGauge::new("shardchat_moderation_word_list_entries", "Entries in the word list in force"),
            ),
            service: ServiceMetrics::new(registry),
        };
        for d in ["allowed", "masked", "rejected", "unavailable"] {
            m.decisions.with_label_values(&[d]);
        }
        m
    }
}

pub struct Moderator {
    filter: RwLock<Arc<WordFilter>>,
    words_file: Option<PathBuf>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
    service: Option<ModerationService>,
    fail_open: bool,
    pub metrics: ModerationMetrics,
}

impl Moderator {
    pub fn from_config(config: &Config, registry: &Registry) -> Result<Moderator, String> {
        let metrics = ModerationMetrics::new(registry);
        let service = match config.moderation_service.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => Some(ModerationService::new(
                ServiceSettings {
                    url: url.to_string(),
                    timeout: config.moderation_timeout,
                    retries: config.moderation_retries,
                    backoff: config.moderation_backoff,
                    breaker_failures: config.moderation_breaker_failures,
                    breaker_open: config.moderation_breaker_open,
                },
                metrics.service.clone(),
            )?),
        };
        let (filter, stamp) = match &config.moderation_words {
            None => (WordFilter::builtin(), None),
            Some(path) => (load_words(path)?, file_stamp(path)),
        };
        metrics.word_list_entries.set(filter.len() as i64);
        Ok(Moderator {
            filter: RwLock::new(Arc::new(filter)),
            words_file: config.moderation_words.clone(),
            stamp: Mutex::new(stamp),
            service,
            fail_open: config.moderation_fail_open,
            metrics,
        })
    }

    /// The word filter in force.
    pub fn filter(&self) -> Arc<WordFilter> {
        self.filter.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads `--moderation-words` when it changed; a broken file keeps
    /// the list in force. True when the list was replaced.
    pub fn reload_if_changed(&self) -> bool {
        let Some(path) = &self.words_file else { return false };
        let now = file_stamp(path);
        {
            let mut stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *stamp == now {
                return false;
            }
            *stamp = now;
        }
        match load_words(path) {
            Ok(filter) => {
                tracing::info!(entries = filter.len(), "moderation word list reloaded");
                self.metrics.word_list_entries.set(filter.len() as i64);
                *self.filter.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(filter);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "reloading the word list failed; keeping the previous one");
                false
            }
        }
    }

    /// Polls the word-list file every `interval`.
    pub fn spawn_upkeep(self: &Arc<Self>, interval: Duration) {
        if self.words_file.is_none() {
            return;
        }
        crate::periodic::every(self, interval, |m| {
            m.reload_if_changed();
        });
    }

    /// Whether moderating a message in `mode` waits for the external service.
    pub fn needs_service(&self, mode: ModerationMode) -> bool {
        mode != ModerationMode::Off && self.service.is_some()
    }

    fn decide(&self, decision: &str) {
        self.metrics.decisions.with_label_values(&[decision]).inc();
    }

    /// The built-in filter: the checked text and whether it was masked.
    fn filter_stage(&self, mode: ModerationMode, text: String) -> ChatResult<(String, bool)> {
        self.filter().check(mode, text).inspect_err(|_| self.decide("rejected"))
    }

    /// The pipeline without the external service, for when
    /// [`needs_service`](Self::needs_service) is false: no waiting.
    pub fn moderate_now(&self, mode: ModerationMode, text: String) -> ChatResult<String> {
        if mode == ModerationMode::Off {
            return Ok(text);
        }
        let (text, masked) = self.filter_stage(mode, text)?;
        self.decide(if masked { "masked" } else { "allowed" });
        Ok(text)
    }

    /// Runs the pipeline on one message: the text to store, `filtered`, or
    /// `unavailable` when the service failed and the pipeline fails closed.
    pub async fn moderate(
        &self,
        mode: ModerationMode,
        channel: &str,
        user: &str,
        text: String,
    ) -> ChatResult<String> {
        let Some(service) = self.service.as_ref().filter(|_| mode != ModerationMode::Off) else {
            return self.moderate_now(mode, text);
        };
        let (mut text, mut masked) = self.filter_stage(mode, text)?;
        let mode_name = if mode == ModerationMode::Reject { "reject" } else { "mask" };
        match service.check(channel, user, &text, mode_name).await {
            Ok(Verdict::Allow) => {}
            Ok(Verdict::Mask(replacement)) => {
                masked |= replacement != text;
                text = replacement;
            }
            Ok(Verdict::Reject) => {
                self.decide("rejected");
                return Err(ChatError::new(ErrorCode::Filtered, "message refused by moderation"));
            }
            Err(failure) => {
                if self.fail_open {
                    tracing::debug!(?failure, "moderation service failed; delivering (fail-open)");
                    self.metrics.failed_open.inc();
                } else {
                    self.decide("unavailable");
                    return Err(ChatError::unavailable(match failure {
                        Failure::BreakerOpen => "moderation is temporarily unavailable; try again shortly",
                        Failure::Timeout | Failure::Error(_) => "moderation did not answer; try again",
                    }));
                }
            }
        }
        self.decide(if masked { "masked" } else { "allowed" });
        Ok(text)
    }
}

fn load_words(path: &std::path::Path) -> Result<WordFilter, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(WordFilter::parse(&text))
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}
