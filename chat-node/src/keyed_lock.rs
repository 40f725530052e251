//! Async locks per key, created on demand and dropped when unused.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

pub struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self { locks: Mutex::new(HashMap::new()) }
    }
}

/// Holds the lock of one key; the key's entry goes away with the last holder.
pub struct KeyedGuard<'a, K: Eq + Hash + Clone> {
    owner: &'a KeyedLocks<K>,
    key: K,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// Waits for the lock of `key` (FIFO among waiters).
    pub async fn lock(&self, key: K) -> KeyedGuard<'_, K> {
        let mutex =
            self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default().clone();
        let guard = mutex.lock_owned().await;
        KeyedGuard { owner: self, key, guard: Some(guard) }
    }

    /// Keys currently locked or awaited (for tests).
    pub fn len(&self) -> usize {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Eq + Hash + Clone> Drop for KeyedGuard<'_, K> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.owner.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map still refers to it: nobody holds or waits for it.
        if locks.get(&self.key).is_some_and(|m| Arc::strong_count(m) == 1) {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_is_serialized_other_keys_are_not_and_entries_go_away() {
        let locks = Arc::new(KeyedLocks::<u32>::default());
        let first = locks.lock(1).await;
        // Another key is free.
        drop(locks.lock(2).await);
        let l = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l.lock(1).await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the same key waits");
        drop(first);
        waiter.await.unwrap();
        assert!(locks.is_empty(), "unused entries are removed");
    }
}
