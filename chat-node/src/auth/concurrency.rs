//! Open connections per client IP and per user, at once (as opposed to the
//! attempt *rate* of [`super::limit`]). A slot is taken before the upgrade
//! and given back when its [`Slot`] guard drops, i.e. when the session ends
//! (or the upgrade never happens).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts holders per key, up to a limit (0 = unlimited).
pub struct ConcurrencyLimit<K: Eq + Hash + Clone> {
    limit: u32,
    counts: Mutex<HashMap<K, u32>>,
}

/// One held place; dropping it frees the place.
pub struct Slot<K: Eq + Hash + Clone + Send + 'static> {
    owner: Arc<ConcurrencyLimit<K>>,
    key: Option<K>,
}

impl<K: Eq + Hash + Clone + Send + 'static> ConcurrencyLimit<K> {
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self { limit, counts: Mutex::new(HashMap::new()) })
    }

    /// A slot for `key`, or `None` when `key` already holds `limit` of them.
    pub fn acquire(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        if self.limit == 0 {
            return Some(Slot { owner: self.clone(), key: None });
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot { owner: self.clone(), key: Some(key) })
    }

    /// Keys holding at least one slot (bounded by the number of open connections).
    pub fn tracked(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn held(&self, key: &K) -> u32 {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone + Send + 'static> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }
}

/// The two caps a WebSocket upgrade passes.
pub struct ConnectionCaps {
    pub per_ip: Arc<ConcurrencyLimit<IpAddr>>,
    pub per_user: Arc<ConcurrencyLimit<Arc<str>>>,
}

/// What an admitted connection holds until it ends.
pub struct ConnectionSlots {
    _ip: Slot<IpAddr>,
    _user: Slot<Arc<str>>,
}

impl ConnectionSlots {
    pub fn new(ip: Slot<IpAddr>, user: Slot<Arc<str>>) -> Self {
        Self { _ip: ip, _user: user }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_key_and_given_back_on_drop() {
        let l = ConcurrencyLimit::new(2);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert!(l.acquire(a).is_none(), "third concurrent slot");
        assert!(l.acquire(b).is_some(), "other keys are independent");
        drop(s1);
        let _s3 = l.acquire(a).expect("a freed slot can be taken again");
        assert_eq!(l.held(&a), 2);
        drop(_s2);
        drop(_s3);
        assert_eq!(l.tracked(), 0, "keys without slots are forgotten");
    }

    #[test]
    fn zero_means_unlimited() {
        let l = ConcurrencyLimit::new(0);
        let slots: Vec<_> = (0..10_000).map(|_| l.acquire(Arc::<str>::from("u")).unwrap()).collect();
        assert_eq!(slots.len(), 10_000);
        assert_eq!(l.tracked(), 0);
    }
}
