//! Per-connection rate limits: token buckets for publishes and for frames
//! of any kind, and a strike window that closes a connection which keeps
//! hitting them.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use shardchat_common::protocol::ErrorCode;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::ChatError;

const STRIKE_WINDOW: Duration = Duration::from_secs(10);

pub struct ConnectionLimits {
    publish: DefaultDirectRateLimiter,
    frames: DefaultDirectRateLimiter,
    strikes: u32,
    window_start: Instant,
    strikes_to_close: u32,
}

fn bucket(rate: u32, burst: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

impl ConnectionLimits {
    pub fn new(config: &Config) -> Self {
        Self {
            publish: bucket(config.publish_rate, config.publish_burst),
            frames: bucket(config.frame_rate, config.frame_rate.saturating_mul(2)),
            strikes: 0,
            window_start: Instant::now(),
            strikes_to_close: config.flood_close_after.max(1),
        }
    }

    pub fn admit_frame(&self) -> Result<(), ChatError> {
        self.frames.check().map_err(|_| {
            ChatError::new(ErrorCode::RateLimited, "too many requests on this connection; slow down")
        })
    }

    pub fn admit_publish(&self) -> Result<(), ChatError> {
        self.publish.check().map_err(|_| {
            ChatError::new(ErrorCode::RateLimited, "publishing too fast on this connection; slow down")
        })
    }

    /// Counts one rate-limited request; true when the connection should be closed.
    pub fn strike(&mut self) -> bool {
        if self.window_start.elapsed() > STRIKE_WINDOW {
            self.window_start = Instant::now();
            self.strikes = 0;
        }
        self.strikes += 1;
        self.strikes >= self.strikes_to_close
    }
}
