//! Per-connection rate limits: token buckets for publishes and for frames
//! of any kind, and a strike window that closes a connection which keeps
//! hitting them.
//!
//! The clock is a parameter (governor's `Clock`), so tests drive the
//! buckets and the strike window with a fake clock instead of sleeping.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use shardchat_common::protocol::ErrorCode;

use crate::config::Config;
use crate::error::ChatError;

const STRIKE_WINDOW: Duration = Duration::from_secs(10);

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct ConnectionLimits<C: Clock + Clone = DefaultClock> {
    clock: C,
    publish: Bucket<C>,
    frames: Bucket<C>,
    strikes: u32,
    window_start: C::Instant,
    strikes_to_close: u32,
}

fn bucket<C: Clock + Clone>(rate: u32, burst: u32, clock: &C) -> Bucket<C> {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), clock.clone())
}

impl ConnectionLimits<DefaultClock> {
    pub fn new(config: &Config) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> ConnectionLimits<C> {
    pub fn with_clock(config: &Config, clock: C) -> Self {
        Self {
            publish: bucket(config.publish_rate, config.publish_burst, &clock),
            frames: bucket(config.frame_rate, config.frame_rate.saturating_mul(2), &clock),
            strikes: 0,
            window_start: clock.now(),
            strikes_to_close: config.flood_close_after.max(1),
            clock,
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
        let now = self.clock.now();
        if Duration::from(now.duration_since(self.window_start)) > STRIKE_WINDOW {
            self.window_start = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        self.strikes >= self.strikes_to_close
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use governor::clock::FakeRelativeClock;

    fn limits(args: &[&str]) -> (ConnectionLimits<FakeRelativeClock>, FakeRelativeClock) {
        let config = Config::parse_from([&["chat-node"], args].concat());
        let clock = FakeRelativeClock::default();
        (ConnectionLimits::with_clock(&config, clock.clone()), clock)
    }

    #[test]
    fn publish_bucket_default_is_10_per_second_burst_20() {
        let (l, clock) = limits(&[]);
        assert!((0..20).all(|_| l.admit_publish().is_ok()), "the burst");
        let e = l.admit_publish().unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        clock.advance(Duration::from_millis(99));
        assert!(l.admit_publish().is_err(), "not a full token yet");
        clock.advance(Duration::from_millis(1));
        assert!(l.admit_publish().is_ok(), "one token per 100 ms");
        assert!(l.admit_publish().is_err());
        clock.advance(Duration::from_secs(2));
        assert!((0..20).all(|_| l.admit_publish().is_ok()), "refilled to the burst, no more");
        assert!(l.admit_publish().is_err());
    }

    #[test]
    fn frame_bucket_bursts_twice_the_rate() {
        let (l, clock) = limits(&["--frame-rate", "5"]);
        assert!((0..10).all(|_| l.admit_frame().is_ok()));
        assert!(l.admit_frame().is_err());
        clock.advance(Duration::from_millis(200));
        assert!(l.admit_frame().is_ok());
    }

    #[test]
    fn strikes_close_only_within_the_window() {
        let (mut l, clock) = limits(&["--flood-close-after", "3"]);
        assert!(!l.strike() && !l.strike());
        clock.advance(STRIKE_WINDOW + Duration::from_millis(1));
        assert!(!l.strike(), "the window restarted");
        assert!(!l.strike());
        assert!(l.strike(), "third strike within one window");
    }
}
