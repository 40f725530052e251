//! Node lifecycle: readiness, draining on SIGTERM, and counting live
//! sessions so shutdown can wait for them within the grace period.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

pub struct Lifecycle {
    draining: watch::Sender<bool>,
    sessions: AtomicUsize,
    sessions_changed: Notify,
    ready: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            draining: watch::channel(false).0,
            sessions: AtomicUsize::new(0),
            sessions_changed: Notify::new(),
            ready: AtomicBool::new(true),
        }
    }
}

/// Held by each session; dropping it counts the session as gone.
pub struct SessionGuard<'a>(&'a Lifecycle);

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::SeqCst);
        self.0.sessions_changed.notify_waiters();
    }
}

impl Lifecycle {
    pub fn session(&self) -> SessionGuard<'_> {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        SessionGuard(self)
    }

    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Stops admitting clients and tells every session to close with 1012.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// A receiver that changes to `true` when draining starts.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Whether this node's dependencies are usable (e.g. Redis reachable).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining()
    }

    /// Waits until no session is left or `grace` has passed; returns how many remain.
    pub async fn wait_for_sessions(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let changed = self.sessions_changed.notified();
            let left = self.sessions();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.sessions();
            }
        }
    }
}
