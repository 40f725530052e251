//! Background upkeep tied to an object's lifetime.

use std::sync::{Arc, Weak};
use std::time::Duration;

/// Runs `task` on `target` every `interval` (at least 100 ms), starting one
/// interval from now, until `target` is dropped.
pub fn every<T: Send + Sync + 'static>(
    target: &Arc<T>,
    interval: Duration,
    task: impl Fn(&T) + Send + 'static,
) {
    let target: Weak<T> = Arc::downgrade(target);
    let interval = interval.max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(target) = target.upgrade() else { return };
            task(&target);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn runs_until_the_target_is_dropped() {
        let target = Arc::new(AtomicUsize::new(0));
        every(&target, Duration::from_millis(100), |n| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(target.load(Ordering::SeqCst), 3);
        let weak = Arc::downgrade(&target);
        drop(target);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(weak.upgrade().is_none(), "the task holds no strong reference");
    }
}
