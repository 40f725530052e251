//! Node lifecycle: readiness, draining on SIGTERM, and counting live
//! sessions so shutdown can wait for them within the grace period.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

pub struct Lifecycle {
    draining: watch::Sender<bool>,
    sessions: AtomicUsize,
    sessions_changed: Notify,
    /// What keeps the node from being ready, by check (`redis`, `inbox`, …).
    problems: Mutex<BTreeMap<&'static str, String>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            draining: watch::channel(false).0,
            sessions: AtomicUsize::new(0),
            sessions_changed: Notify::new(),
            problems: Mutex::new(BTreeMap::new()),
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

    /// Records (`Some`) or clears (`None`) what keeps `check` from being
    /// healthy; the node is ready while no check has a problem. Returns
    /// whether the check's state changed.
    pub fn set_problem(&self, check: &'static str, problem: Option<String>) -> bool {
        let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        match problem {
            Some(p) => problems.insert(check, p).is_none(),
            None => problems.remove(check).is_some(),
        }
    }

    /// Every current problem, by check.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        problems.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.problems.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
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
