//! Redis's clock, as this node estimates it. Request deadlines are stated
//! in it and the commit script checks them against `TIME`, so a deadline
//! means the same thing on every node whatever their own clocks say: an
//! edge that gave up on a request knows the owner can no longer store it.
//!
//! The estimate is a `TIME` round trip mapped onto this process's
//! monotonic clock, refreshed every few seconds; its uncertainty is half
//! the round trip.

use std::sync::Mutex;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    redis_ms: u64,
    uncertainty: Duration,
}

#[derive(Default)]
pub struct RedisClock {
    sample: Mutex<Option<Sample>>,
}

impl RedisClock {
    /// Redis's time now, in ms since the Unix epoch; `None` before the first
    /// successful sample.
    pub fn now_ms(&self) -> Option<u64> {
        let s = (*self.sample.lock().unwrap_or_else(|p| p.into_inner()))?;
        Some(s.redis_ms + s.at.elapsed().as_millis() as u64)
    }

    /// How far off [`now_ms`](Self::now_ms) may be.
    pub fn uncertainty(&self) -> Duration {
        self.sample.lock().unwrap_or_else(|p| p.into_inner()).map(|s| s.uncertainty).unwrap_or_default()
    }

    /// Takes a sample with `TIME`. A sample with a better (smaller) round
    /// trip than the current one, or any sample once the current one is old,
    /// replaces it.
    pub async fn sample(&self, client: &Client) -> Result<(), fred::error::Error> {
        let sent = Instant::now();
        let time = CustomCommand::new_static("TIME", ClusterHash::Random, false);
        let reply: Vec<String> = client.custom(time, Vec::<String>::new()).await?;
        let (secs, micros) = match reply.as_slice() {
            [s, us, ..] => (s.parse::<u64>().unwrap_or(0), us.parse::<u64>().unwrap_or(0)),
            _ => (0, 0),
        };
        if secs == 0 {
            return Err(fred::error::Error::new(fred::error::ErrorKind::Parse, "unexpected TIME reply"));
        }
        let received = Instant::now();
        let rtt = received - sent;
        let sample = Sample {
            at: sent + rtt / 2,
            redis_ms: secs * 1000 + micros / 1000,
            uncertainty: rtt / 2 + Duration::from_millis(1),
        };
        let mut current = self.sample.lock().unwrap_or_else(|p| p.into_inner());
        let replace = match *current {
            None => true,
            Some(c) => sample.uncertainty <= c.uncertainty || c.at.elapsed() > Duration::from_secs(30),
        };
        if replace {
            *current = Some(sample);
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn set_for_test(&self, redis_ms: u64) {
        *self.sample.lock().unwrap() =
            Some(Sample { at: Instant::now(), redis_ms, uncertainty: Duration::from_millis(1) });
    }
}
