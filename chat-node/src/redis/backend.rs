//! The owner backend of the cluster mode: one Lua script call applies a
//! whole batch of channel operations (stores, trims and fans out messages;
//! changes memberships with their presence events) atomically per channel.

use std::sync::Arc;

use fred::prelude::*;
use fred::types::Value;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use shardchat_common::{ChannelName, MessageId};

use super::{RedisCtx, apply_error, unavailable};
use crate::error::{ChatError, ChatResult};
use crate::owner::backend::{ApplyError, ChannelBatch, Dedup, OpResult, OwnerBackend, PublishOp, ReadyOp};

/// How long past its deadline an edge request's dedup record is kept: long
/// enough for the edge to look it up after giving up on the ack.
const REQUEST_RECORD_GRACE_MS: u64 = 30_000;

pub struct RedisBackend {
    redis: Arc<RedisCtx>,
}

impl RedisBackend {
    pub fn new(redis: Arc<RedisCtx>) -> Self {
        Self { redis }
    }

    /// The dedup record key of `op` ('' = none) and how long it lives.
    fn dedup_key(&self, channel: &ChannelName, op: &PublishOp) -> (String, u64) {
        let keys = &self.redis.keys;
        match &op.dedup {
            Dedup::Nonce(n) => (
                keys.nonce(channel.as_str(), &op.draft.from, n),
                self.redis.settings.dedup_window.as_millis() as u64,
            ),
            Dedup::Request(r) => {
                let now = self.redis.clock.now_ms().unwrap_or(0);
                let left = op.deadline_ms.map(|d| d.saturating_sub(now)).unwrap_or(0);
                (keys.request(r), left + REQUEST_RECORD_GRACE_MS)
            }
            Dedup::None => (String::new(), 0),
        }
    }

    fn encode(&self, batches: &[ChannelBatch]) -> Vec<String> {
        let s = &self.redis.settings;
        let mut args =
            vec![s.inbox_maxlen.to_string(), s.max_dynamic_channels.to_string(), batches.len().to_string()];
        for b in batches {
            args.push(b.channel.to_string());
            args.push(b.retention.max_messages.max(1).to_string());
            args.push(b.retention.max_age_seconds.saturating_mul(1000).to_string());
            args.push(if b.dynamic { "1" } else { "0" }.to_string());
            args.push(b.max_members.to_string());
            args.push(crate::frames::PushTemplate::head(&b.channel));
            args.push(b.ops.len().to_string());
            for op in &b.ops {
                match op {
                    ReadyOp::Publish(p) => {
                        let (key, ttl) = self.dedup_key(&b.channel, p);
                        args.extend([
                            "p".to_string(),
                            p.draft.from.to_string(),
                            p.draft.text.clone(),
                            p.meta_json.clone().unwrap_or_default(),
                            key,
                            ttl.max(1).to_string(),
                            p.deadline_ms.unwrap_or(0).to_string(),
                            p.draft.accepted_at_micros.to_string(),
                            p.push.middle.clone(),
                            p.push.tail.clone(),
                        ]);
                    }
                    ReadyOp::Join { user, edge } => {
                        args.extend(["j".into(), user.to_string(), edge.to_string()])
                    }
                    ReadyOp::Leave { user, edge } => {
                        args.extend(["l".into(), user.to_string(), edge.to_string()])
                    }
                }
            }
        }
        args
    }

    /// Removes every membership a dead `edge` had in `channel`, with presence `leave`s.
    pub async fn drop_edge(&self, channel: &ChannelName, edge: &str) -> ChatResult<u64> {
        let r = &self.redis;
        r.run(
            &r.scripts.drop_edge,
            vec![channel.to_string(), edge.to_string(), r.settings.inbox_maxlen.to_string()],
        )
        .await
        .map_err(unavailable)
    }

    /// Forgets a dead edge that has nothing left (see `scripts::FORGET_EDGE`).
    pub async fn forget_edge(&self, edge: &str) -> ChatResult<bool> {
        let r = &self.redis;
        let n: i64 = r.run(&r.scripts.forget_edge, vec![edge.to_string()]).await.map_err(unavailable)?;
        Ok(n == 1)
    }

    /// Tells every node with members that `channel` is closed and forgets
    /// its memberships (history is the operator's to keep or delete).
    pub async fn close_channel(&self, channel: &ChannelName, reason: &str) -> ChatResult<u64> {
        let r = &self.redis;
        r.run(
            &r.scripts.close,
            vec![channel.to_string(), reason.to_string(), r.settings.inbox_maxlen.to_string()],
        )
        .await
        .map_err(unavailable)
    }
}

/// Reads the script's results for `batches` (see `scripts::APPLY`).
fn decode(batches: &[ChannelBatch], reply: Value) -> Result<Vec<Vec<OpResult>>, ApplyError> {
    let bad = |what: &str| {
        ApplyError::Refused(ChatError::unavailable(format!("unexpected reply from Redis: {what}")))
    };
    let per_channel = reply.into_array();
    if per_channel.len() != batches.len() {
        return Err(bad("wrong number of channels"));
    }
    batches
        .iter()
        .zip(per_channel)
        .map(|(b, results)| {
            let results = results.into_array();
            if results.len() != b.ops.len() {
                return Err(bad("wrong number of results"));
            }
            b.ops
                .iter()
                .zip(results)
                .map(|(op, r)| match op {
                    ReadyOp::Publish(p) => {
                        let s = r.as_string().ok_or_else(|| bad("publish result"))?;
                        let parse = |id: &str| id.parse::<MessageId>().map_err(|_| bad("message id"));
                        if let Some(id) = s.strip_prefix("id:") {
                            Ok(OpResult::Published { id: parse(id)?, duplicate: false })
                        } else if let Some(id) = s.strip_prefix("dup:") {
                            // A request record means Redis ran this very command before
                            // (re-sent after a reconnect): for the client it is the first store.
                            let duplicate = matches!(p.dedup, Dedup::Nonce(_));
                            Ok(OpResult::Published { id: parse(id)?, duplicate })
                        } else if s == "exp" {
                            Ok(OpResult::Expired)
                        } else {
                            Err(bad("publish result"))
                        }
                    }
                    ReadyOp::Join { .. } => match r.as_i64() {
                        Some(-1) => Ok(OpResult::Full),
                        Some(-2) => Ok(OpResult::TooManyChannels),
                        Some(n) if n >= 0 => Ok(OpResult::Joined { members: n as usize }),
                        _ => Err(bad("join result")),
                    },
                    ReadyOp::Leave { .. } => Ok(OpResult::Left),
                })
                .collect()
        })
        .collect()
}

impl OwnerBackend for RedisBackend {
    fn apply(
        &self,
        batches: Arc<Vec<ChannelBatch>>,
    ) -> BoxFuture<'static, Result<Vec<Vec<OpResult>>, ApplyError>> {
        let args = self.encode(&batches);
        let redis = self.redis.clone();
        async move {
            redis.check_connected().map_err(ApplyError::Refused)?;
            let reply: Value = redis.run(&redis.scripts.apply, args).await.map_err(apply_error)?;
            decode(&batches, reply)
        }
        .boxed()
    }

    fn lookup(
        &self,
        channel: &ChannelName,
        op: &PublishOp,
    ) -> BoxFuture<'static, ChatResult<Option<MessageId>>> {
        let (key, _) = self.dedup_key(channel, op);
        let redis = self.redis.clone();
        async move {
            if key.is_empty() {
                return Ok(None);
            }
            redis.check_connected()?;
            let id: Option<String> = redis.client.get(key).await.map_err(unavailable)?;
            Ok(id.and_then(|id| id.parse().ok()))
        }
        .boxed()
    }

    fn now_ms(&self) -> Option<u64> {
        self.redis.clock.now_ms()
    }

    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>> {
        async move {
            let mut users: Vec<String> = self
                .redis
                .client
                .hkeys(self.redis.keys.users(channel.as_str()))
                .await
                .map_err(unavailable)?;
            users.sort();
            Ok(users)
        }
        .boxed()
    }

    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>> {
        async move {
            let r = &self.redis;
            let active: Vec<String> = r.client.smembers(r.keys.active()).await.map_err(unavailable)?;
            let pipeline = r.client.pipeline();
            for c in &active {
                let _: () = pipeline.hlen(r.keys.users(c)).await.map_err(unavailable)?;
            }
            let counts: Vec<i64> =
                if active.is_empty() { Vec::new() } else { pipeline.all().await.map_err(unavailable)? };
            Ok(active
                .into_iter()
                .zip(counts)
                .filter_map(|(c, n)| Some((ChannelName::new(&c).ok()?, n.max(0) as usize)))
                .filter(|(_, n)| *n > 0)
                .collect())
        }
        .boxed()
    }
}
