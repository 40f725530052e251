//! Wall-clock helpers. Message timestamps and retention use wall time
//! (milliseconds since the Unix epoch) because they cross processes.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    now_micros() / 1_000
}

pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}
