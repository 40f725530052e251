//! A latency histogram many connection tasks record into at once.
//!
//! HDR histogram, microsecond resolution, 3 significant figures, values up to
//! one hour (larger ones are clamped). Recording goes to one of several
//! shards chosen by the caller's connection index, so tasks on different
//! worker threads rarely contend for a lock; shards are merged at the end.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

const SHARDS: usize = 32;
const MAX_US: u64 = 3_600_000_000;

pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl ShardedHistogram {
    pub fn new() -> anyhow::Result<Self> {
        let shards = (0..SHARDS)
            .map(|_| Ok(Mutex::new(Histogram::new_with_bounds(1, MAX_US, 3)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { shards })
    }

    pub fn record(&self, key: usize, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_US);
        // A poisoned shard only means another task panicked mid-record;
        // the counts are still usable.
        let mut h = self.shards[key % SHARDS].lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us);
    }

    pub fn merged(&self) -> Histogram<u64> {
        let lock = |m: &Mutex<Histogram<u64>>| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // `new` always makes SHARDS (> 0) shards.
        let mut total = lock(&self.shards[0]);
        for shard in &self.shards[1..] {
            // Same bounds everywhere, so adding cannot fail.
            let _ = total.add(lock(shard));
        }
        total
    }
}

/// The figures reported for a histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            samples: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_across_shards_and_merges() {
        let h = ShardedHistogram::new().unwrap();
        for i in 0..1000u64 {
            h.record(i as usize, Duration::from_micros(i + 1));
        }
        h.record(5, Duration::from_secs(10 * 3600)); // clamped, not dropped
        h.record(6, Duration::ZERO); // clamped to 1 µs
        let p = Percentiles::of(&h.merged());
        assert_eq!(p.samples, 1002);
        assert!((495..=505).contains(&p.p50), "{p:?}");
        assert!((985..=995).contains(&p.p99), "{p:?}");
        assert!(p.max >= MAX_US - MAX_US / 1000, "{p:?}");
    }

    #[test]
    fn empty_is_all_zero() {
        let h = ShardedHistogram::new().unwrap();
        assert_eq!(Percentiles::of(&h.merged()), Percentiles::default());
    }
}
