//! Per-connection rate limits: token buckets for publishes, for membership
//! changes (joins and leaves, which push presence to every member) and for
//! frames of any kind, and a strike window that closes a connection which
//! keeps hitting them.
//!
//! Every frame a client sends (text, binary, ping, pong — malformed or not)
//! takes a frame token *before* it is parsed ([`Session::admit_frame`]), so
//! garbage floods reach the 1008 close like any other flood.
//!
//! The clock is a parameter (governor's `Clock`), so tests drive the
//! buckets and the strike window with a fake clock instead of sleeping.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::ws::Message;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde_json::Value;
use shardchat_common::protocol::{ErrorCode, MAX_REQUEST_ID_LEN};

use super::Session;
use crate::config::Config;
use crate::error::ChatError;

const STRIKE_WINDOW: Duration = Duration::from_secs(10);

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct ConnectionLimits<C: Clock + Clone = DefaultClock> {
    clock: C,
    publish: Bucket<C>,
    membership: Bucket<C>,
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
            membership: bucket(config.membership_rate, config.membership_burst, &clock),
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

    /// One join or leave (each pushes presence to every member of the channel).
    pub fn admit_membership_change(&self) -> Result<(), ChatError> {
        self.membership.check().map_err(|_| {
            ChatError::new(
                ErrorCode::RateLimited,
                "joining and leaving too fast on this connection; slow down",
            )
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

impl Session {
    /// Takes a frame token for `frame` before anything looks inside it. A
    /// frame over the rate is answered `rate_limited` (with its `id` when one
    /// is cheaply found), counts a strike, and is not handled; returns whether
    /// to handle it.
    pub(super) fn admit_frame(&mut self, frame: &Result<Message, axum::Error>) -> bool {
        let text = match frame {
            Ok(Message::Text(t)) => Some(t.as_str()),
            Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_)) => None,
            Ok(Message::Close(_)) | Err(_) => return true,
        };
        match self.limits.admit_frame() {
            Ok(()) => true,
            Err(e) => {
                self.rate_limited(text.and_then(request_id), e);
                false
            }
        }
    }
}

/// The `id` of a request frame, without building the request (unknown
/// fields are skipped, not stored); `None` when there is no usable one.
pub fn request_id(text: &str) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: Option<Value>,
    }
    if !text.trim_start().starts_with('{') {
        return None;
    }
    match serde_json::from_str::<IdOnly>(text).ok()?.id? {
        v @ Value::Number(_) => Some(v),
        Value::String(s) if s.len() <= MAX_REQUEST_ID_LEN => Some(Value::String(s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn request_ids_are_found_without_parsing_the_request() {
        assert_eq!(request_id(r#"{"op":"ping","id":7}"#), Some(Value::from(7)));
        assert_eq!(request_id(r#"{"id":"a","op":{"deep":[1,2,3]}}"#), Some(Value::from("a")));
        assert_eq!(request_id(r#"{"op":"ping"}"#), None);
        assert_eq!(request_id(&format!(r#"{{"id":"{}"}}"#, "x".repeat(65))), None);
        assert_eq!(request_id(r#"{"id":{"no":1}}"#), None);
        for junk in ["", "not json", "[1]", "\u{0}", "{\"id\":1"] {
            assert_eq!(request_id(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn membership_bucket_default_is_2_per_second_burst_20() {
        let (l, clock) = limits(&[]);
        assert!((0..20).all(|_| l.admit_membership_change().is_ok()));
        assert_eq!(l.admit_membership_change().unwrap_err().code, ErrorCode::RateLimited);
        clock.advance(Duration::from_millis(500));
        assert!(l.admit_membership_change().is_ok());
        assert!(l.admit_membership_change().is_err());
    }

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
