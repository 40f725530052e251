//! Shared by the operator's integration tests.

#![allow(dead_code)]

pub mod fake_api;
pub mod redis;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Polls `f` every 100 ms until it yields a value; panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
