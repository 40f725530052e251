//! Background upkeep of a node in cluster mode:
//!
//! * heartbeat `{p}:alive:<edge>` every `--node-ttl`/5 (TTL `--node-ttl`),
//!   and `{p}:nodes[<node>]` = now. A missing heartbeat key means Redis
//!   lost our state (restart): this edge registers its memberships again,
//!   recreates its consumer group and hands its members what was stored
//!   meanwhile — with a `gap` push when it cannot prove that is complete;
//! * Redis clock samples (request deadlines are stated in Redis's time);
//! * readiness: Redis reachable and the inbox reader keeping up, with the
//!   reason on `/readyz` when not;
//! * inbox overflow: a fan-out that found this node's inbox full set a
//!   flag; the node tells every local member that it may have missed messages;
//! * dead-edge cleanup every `--node-ttl`/2 for the channels this node owns:
//!   members on an edge whose heartbeat expired leave (with presence `leave`);
//! * departed nodes: the inbox of a node that left the ring and has not
//!   sent a heartbeat for a long time is deleted;
//! * channel config following: `{p}:channels` is re-read when
//!   `{p}:channels:version` moves;
//! * retained access (`{p}:access`, see `crate::directory`): read every
//!   second before the configs, and every restricted access this node knows
//!   that is missing there is written back — so a channel keeps its roles
//!   after its declaration goes, and a Redis that restarted empty gets the
//!   records back from the nodes that survived it.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::Expiration;
use shardchat_common::{Access, ChannelConfig, ChannelName, MessageId};

use super::RedisCtx;
use super::dm::RedisDms;
use super::inbox::{self, InboxHealth};
use super::ring_view::RingView;
use super::router::Router;
use crate::clock::now_ms;
use crate::directory::Directory;
use crate::dm::mailboxes::Mailboxes;
use crate::history::HistoryStore;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

pub struct Upkeep {
    pub redis: Arc<RedisCtx>,
    pub router: Arc<Router>,
    pub mailboxes: Arc<Mailboxes>,
    pub dms: Arc<RedisDms>,
    pub ring: Arc<RingView>,
    pub hub: Arc<Hub>,
    pub history: Arc<dyn HistoryStore>,
    pub directory: Arc<Directory>,
    pub node_id: Arc<str>,
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Metrics>,
    pub inbox_health: Arc<InboxHealth>,
    /// Channels declared by `--channels`, merged under the operator's.
    pub file_channels: Vec<ChannelConfig>,
    /// Heartbeat time-to-live (`--node-ttl`).
    pub node_ttl: Duration,
    /// A node that left the ring keeps its inbox this long after its last
    /// heartbeat (`--forget-nodes-after`).
    pub forget_nodes_after: Duration,
    /// Held while a resynchronisation runs.
    pub resyncing: tokio::sync::Mutex<()>,
}

impl Upkeep {
    pub fn spawn(self: Arc<Self>) {
        tokio::spawn(self.clone().heartbeat());
        tokio::spawn(self.clone().sample_clock());
        tokio::spawn(self.clone().watch_inbox());
        tokio::spawn(self.clone().sweep_dead_edges());
        tokio::spawn(self.clone().forget_departed_nodes());
        tokio::spawn(self.follow_config());
    }

    fn problem(&self, check: &'static str, problem: Option<String>) {
        let healthy = problem.is_none();
        let text = problem.clone();
        if self.lifecycle.set_problem(check, problem) {
            match text {
                Some(p) => tracing::warn!(check, problem = %p, "not ready"),
                None => tracing::info!(check, "healthy again"),
            }
        }
        self.metrics.readiness_problems.with_label_values(&[check]).set(i64::from(!healthy));
    }

    async fn heartbeat(self: Arc<Self>) {
        let edge = self.router.edge_id().clone();
        let key = self.redis.keys.alive(&edge);
        let mut first = true;
        // Wall time of the last heartbeat that found our state intact.
        let mut last_intact_ms = now_ms();
        let mut tick = tokio::time::interval(self.node_ttl / 5);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let previous: Result<Option<String>, _> = self
                .redis
                .client
                .set(&key, "1", Some(Expiration::PX(self.node_ttl.as_millis() as i64)), None, true)
                .await;
            match previous {
                Ok(previous) => {
                    let _: Result<i64, _> =
                        self.redis.client.hset(self.redis.keys.nodes(), (&*self.node_id, now_ms())).await;
                    if first {
                        self.retire_old_incarnations().await;
                        if let Err(e) = inbox::ensure_group(&self.redis, &self.node_id).await {
                            tracing::warn!(error = %e, "creating the inbox consumer group failed");
                            continue;
                        }
                        first = false;
                    } else if previous.is_none() {
                        tracing::warn!(
                            "this node's heartbeat vanished from Redis (restart?); re-registering"
                        );
                        if let Err(e) = inbox::ensure_group(&self.redis, &self.node_id).await {
                            tracing::warn!(error = %e, "creating the inbox consumer group failed");
                        }
                        tokio::spawn(self.clone().resync(last_intact_ms));
                    }
                    last_intact_ms = now_ms();
                    self.problem("redis", None);
                }
                Err(e) => self.problem("redis", Some(format!("Redis unreachable: {e}"))),
            }
        }
    }

    /// Keeps the Redis clock estimate fresh: quickly until the first sample, then every few seconds.
    async fn sample_clock(self: Arc<Self>) {
        loop {
            let wait = match self.redis.clock.sample(&self.redis.client).await {
                Ok(()) => Duration::from_secs(5),
                Err(e) => {
                    tracing::debug!(error = %e, "sampling Redis's clock failed");
                    Duration::from_millis(200)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Readiness of the inbox reader, and overflow of the inbox.
    async fn watch_inbox(self: Arc<Self>) {
        let allowed = self.redis.settings.command_timeout + Duration::from_secs(5);
        let overflow = self.redis.keys.overflow(&self.node_id);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.problem("inbox", self.inbox_health.problem(allowed));
            if self.dms.take_registration_failure() {
                tracing::info!("registering this node's users for direct messages again");
                self.dms.reregister(&self.mailboxes.users()).await;
            }
            match self.redis.client.getdel::<Option<String>, _>(&overflow).await {
                Ok(Some(_)) => {
                    tracing::warn!(
                        "this node's inbox overflowed (it fell behind); telling its members they may have missed messages"
                    );
                    self.metrics.inbox_overflows.inc();
                    for channel in self.hub.channels() {
                        self.hub
                            .gap(&channel, "this node fell behind and some messages may have been dropped");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "checking the inbox overflow flag failed"),
            }
        }
    }

    /// Registers this edge's memberships again and hands every local
    /// subscriber what was stored meanwhile (messages since `since_ms`), in
    /// order, without duplicates: subscribers buffer live events while the
    /// gap is read from history, exactly as a join with `since` does. When
    /// the history cannot vouch for completeness (Redis lost it, or the read
    /// failed), subscribers get a `gap` push first.
    ///
    /// Channels are handled concurrently, each on its own: a registration
    /// that fails (Redis or the owner not back yet) is retried with backoff
    /// until it succeeds, and only then is the history read — a message
    /// stored before the registration landed is in that read, one stored
    /// after it is fanned out to this node. Runs beside the heartbeat (never
    /// holding it up); resyncs never overlap.
    async fn resync(self: Arc<Self>, since_ms: u64) {
        let _one_at_a_time = self.resyncing.lock().await;
        let channels = self.hub.channels();
        for c in &channels {
            self.hub.pause(c);
        }
        self.dms.reregister(&self.mailboxes.users()).await;
        self.mailboxes.gap_all("Redis lost data; direct messages sent meanwhile may be missing");
        let since = MessageId::new(since_ms.saturating_sub(self.node_ttl.as_millis() as u64), 0);
        let each = channels.iter().map(|channel| self.resync_channel(channel, since));
        futures_util::future::join_all(each).await;
        tracing::info!(channels = channels.len(), "resynchronised after Redis lost this node's state");
    }

    async fn resync_channel(&self, channel: &ChannelName, since: MessageId) {
        let mut users = self.hub.local_users(channel);
        let mut wait = Duration::from_millis(100);
        loop {
            users = self.router.reregister(channel, users).await;
            if users.is_empty() {
                break;
            }
            tracing::warn!(%channel, failed = users.len(), "re-registering memberships failed; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            // Users who left meanwhile need no registration.
            let still: std::collections::HashSet<String> =
                self.hub.local_users(channel).into_iter().collect();
            users.retain(|u| still.contains(u));
        }
        match self.history.after(channel, since).await {
            Ok(recovery) if recovery.complete => self.hub.resume(channel, &recovery.messages, None),
            Ok(recovery) => self.hub.resume(
                channel,
                &recovery.messages,
                Some("Redis lost data; messages sent meanwhile may be missing"),
            ),
            Err(e) => {
                tracing::warn!(%channel, error = %e, "reading history while resynchronising failed");
                self.hub.resume(channel, &[], Some("history could not be read after Redis restarted"));
            }
        }
    }

    /// A restarted node gets a new incarnation; its old one is dead now.
    async fn retire_old_incarnations(&self) {
        let edges: Vec<String> =
            self.redis.client.smembers(self.redis.keys.edges()).await.unwrap_or_default();
        let mine = format!("{}#", self.node_id);
        for old in edges.iter().filter(|e| e.starts_with(&mine) && **e != **self.router.edge_id()) {
            let _: Result<i64, _> = self.redis.client.del(self.redis.keys.alive(old)).await;
        }
    }

    async fn sweep_dead_edges(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.node_ttl / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep_once().await {
                tracing::debug!(error = %e, "dead-edge sweep failed");
            }
        }
    }

    async fn sweep_once(&self) -> Result<(), fred::error::Error> {
        let r = &self.redis;
        let active: Vec<String> = r.client.smembers(r.keys.active()).await?;
        let owned = active.iter().filter(|c| self.ring.is_mine(c)).count();
        self.metrics.channels_owned.set(owned as i64);
        let edges: Vec<String> = r.client.smembers(r.keys.edges()).await?;
        for edge in edges.iter().filter(|e| **e != **self.router.edge_id()) {
            let alive: i64 = r.client.exists(r.keys.alive(edge)).await?;
            if alive == 1 {
                continue;
            }
            // Its users' direct-message fan-out: one node (the ring's owner of
            // the edge id) cleans it up.
            let has_users: i64 = r.client.exists(r.keys.edge_users(edge)).await?;
            if has_users == 1 && self.ring.is_mine(&format!("edge:{edge}")) {
                match self.dms.drop_edge(edge).await {
                    Ok(Some(n)) => {
                        tracing::info!(%edge, users = n, "removed the direct-message routes of a dead node")
                    }
                    Ok(None) => continue, // its heartbeat is back
                    Err(e) => tracing::warn!(%edge, error = %e, "cleaning up a dead node's users failed"),
                }
            }
            let channels: Vec<String> = r.client.smembers(r.keys.edge_channels(edge)).await?;
            if channels.is_empty() {
                if has_users == 0 {
                    let _ = self.router.backend().forget_edge(edge).await;
                }
                continue;
            }
            for c in channels.iter().filter_map(|c| ChannelName::new(c).ok()) {
                if self.ring.is_mine(c.as_str()) {
                    match self.router.backend().drop_edge(&c, edge).await {
                        Ok(n) if n > 0 => {
                            tracing::info!(channel = %c, %edge, members = n, "removed members of a dead node")
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(channel = %c, %edge, error = %e, "cleaning up a dead node failed")
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes the inbox of every node that is not in the ring and has not
    /// sent a heartbeat for `forget_nodes_after`.
    async fn forget_departed_nodes(self: Arc<Self>) {
        let period = (self.forget_nodes_after / 2).clamp(Duration::from_millis(500), Duration::from_secs(60));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = &self.redis;
            let nodes: std::collections::HashMap<String, u64> = match r.client.hgetall(r.keys.nodes()).await {
                Ok(n) => n,
                Err(_) => continue,
            };
            let ring = self.ring.get();
            let now = now_ms();
            for (node, last) in nodes {
                let departed = now.saturating_sub(last) > self.forget_nodes_after.as_millis() as u64;
                if departed && !ring.contains(&node) && node != *self.node_id {
                    tracing::info!(%node, "deleting the inbox of a node that left the ring");
                    let _: Result<i64, _> = r.client.del((r.keys.inbox(&node), r.keys.overflow(&node))).await;
                    let _: Result<i64, _> = r.client.hdel(r.keys.nodes(), node.as_str()).await;
                }
            }
        }
    }

    async fn follow_config(self: Arc<Self>) {
        let mut seen: Option<String> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Retained access first, so a node never serves a channel as
            // public before it knows that channel used to be restricted.
            let Ok(records) = self.read_access().await else { continue };
            self.directory.retain_access(records.iter().map(|(n, a)| (n.clone(), a.clone())));
            let version: Option<String> =
                match self.redis.client.get(self.redis.keys.channels_version()).await {
                    Ok(v) => v,
                    Err(_) => continue,
                };
            match version {
                Some(version) if seen.as_ref() != Some(&version) && self.load_configs(&version).await => {
                    seen = Some(version);
                }
                // Never published (or Redis restarted empty): keep what we
                // have; a node that has nothing yet goes on with its file.
                // Forget the version seen: a republished counter starts over.
                None => {
                    seen = None;
                    if !self.directory.is_loaded() {
                        tracing::info!("no channel configs in Redis; using the declared file channels only");
                        self.directory.replace_all(self.file_channels.clone());
                    }
                }
                _ => {}
            }
            if let Err(e) = self.write_access(&records).await {
                tracing::debug!(error = %e, "writing retained channel access failed");
            }
        }
    }

    /// Reads `{p}:channels` into the directory; false when it could not.
    async fn load_configs(&self, version: &str) -> bool {
        let raw: std::collections::HashMap<String, String> =
            match self.redis.client.hgetall(self.redis.keys.channels()).await {
                Ok(v) => v,
                Err(_) => return false,
            };
        let mut configs = self.file_channels.clone();
        for (name, json) in raw {
            match serde_json::from_str::<ChannelConfig>(&json) {
                Ok(c) if c.name.as_str() == name => {
                    configs.retain(|f| f.name != c.name);
                    configs.push(c);
                }
                Ok(_) => {
                    tracing::warn!(channel = %name, "ignoring a channel config whose name does not match its field")
                }
                Err(e) => {
                    tracing::warn!(channel = %name, error = %e, "ignoring an invalid channel config")
                }
            }
        }
        tracing::info!(version = %version, channels = configs.len(), "channel configs updated");
        self.directory.replace_all(configs);
        true
    }

    /// `{p}:access`: channel → the access JSON it keeps without a declaration.
    async fn read_access(&self) -> Result<Vec<(ChannelName, Access)>, fred::error::Error> {
        let raw: std::collections::HashMap<String, String> =
            self.redis.client.hgetall(self.redis.keys.access()).await?;
        Ok(raw
            .into_iter()
            .filter_map(|(name, json)| {
                let name = ChannelName::new(&name).ok()?;
                match serde_json::from_str::<Access>(&json) {
                    Ok(a) => Some((name, a)),
                    Err(e) => {
                        tracing::warn!(channel = %name, error = %e, "ignoring an invalid retained access record");
                        None
                    }
                }
            })
            .collect())
    }

    /// Writes the restricted access this node knows that `{p}:access` lacks
    /// (or holds differently), and drops records of channels now declared public.
    async fn write_access(&self, stored: &[(ChannelName, Access)]) -> Result<(), fred::error::Error> {
        let key = self.redis.keys.access();
        let stored: std::collections::HashMap<&ChannelName, &Access> =
            stored.iter().map(|(n, a)| (n, a)).collect();
        for (name, access) in self.directory.restricted_access() {
            if stored.get(&name) != Some(&&access) {
                let json = serde_json::to_string(&access).unwrap_or_default();
                let _: i64 = self.redis.client.hset(&key, (name.as_str(), json)).await?;
            }
        }
        for name in self.directory.declared_public().iter().filter(|n| stored.contains_key(n)) {
            let _: i64 = self.redis.client.hdel(&key, name.as_str()).await?;
        }
        Ok(())
    }
}
