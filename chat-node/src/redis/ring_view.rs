//! The ring this node routes by: fixed from `--peers` (epoch 1), or the
//! one the operator publishes at `{p}:ring`, polled every second. A ring
//! with a lower epoch than the one held is ignored.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use fred::prelude::*;
use shardchat_common::{Ring, RingSnapshot};

use super::RedisCtx;

pub struct RingView {
    current: RwLock<Arc<Ring>>,
    node_id: Arc<str>,
}

impl RingView {
    pub fn new(initial: Ring, node_id: Arc<str>) -> Self {
        Self { current: RwLock::new(Arc::new(initial)), node_id }
    }

    pub fn get(&self) -> Arc<Ring> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Owner of `channel` under the current ring.
    pub fn owner(&self, channel: &str) -> Option<String> {
        self.get().owner(channel).map(str::to_string)
    }

    pub fn is_mine(&self, channel: &str) -> bool {
        self.get().owner(channel) == Some(&*self.node_id)
    }

    /// Installs `ring` if its epoch is newer; returns whether it did.
    pub fn offer(&self, ring: Ring) -> bool {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if ring.epoch() > current.epoch() {
            tracing::info!(epoch = ring.epoch(), nodes = ?ring.nodes(), "ring changed");
            *current = Arc::new(ring);
            true
        } else {
            false
        }
    }

    /// Follows `{p}:ring` until the process ends; `on_change` runs after each new ring.
    pub async fn follow(self: Arc<Self>, redis: Arc<RedisCtx>, on_change: impl Fn() + Send + 'static) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let raw: Option<String> = match redis.client.get(redis.keys.ring()).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the ring failed");
                    continue;
                }
            };
            let Some(raw) = raw else { continue };
            let ring = serde_json::from_str::<RingSnapshot>(&raw)
                .map_err(|e| e.to_string())
                .and_then(|s| Ring::try_from(s).map_err(|e| e.to_string()));
            match ring {
                Ok(ring) => {
                    if self.offer(ring) {
                        on_change();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring an invalid ring in Redis"),
            }
        }
    }
}
