//! The owner backend of the cluster mode: each step is one Lua script
//! (one round trip) that stores, trims and fans out atomically.

use std::sync::Arc;

use fred::prelude::*;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use shardchat_common::{ChannelName, MessageId, Retention};

use super::{RedisCtx, unavailable};
use crate::clock::now_ms;
use crate::error::{ChatError, ChatResult};
use crate::history::{Draft, StoredMessage};
use crate::owner::{OwnerBackend, channel_full};

/// How long a publish's dedup record lives: longer than any retry.
const DEDUP_TTL_MS: u64 = 10 * 60 * 1000;

pub struct RedisBackend {
    redis: Arc<RedisCtx>,
}

impl RedisBackend {
    pub fn new(redis: Arc<RedisCtx>) -> Self {
        Self { redis }
    }

    /// Removes every membership a dead `edge` had in `channel`, with presence `leave`s.
    pub async fn drop_edge(&self, channel: &ChannelName, edge: &str) -> ChatResult<u64> {
        let r = &self.redis;
        r.run(
            &r.scripts.drop_edge,
            vec![channel.to_string(), edge.to_string(), r.settings.inbox_maxlen.to_string()],
        )
        .await
    }
}

impl RedisBackend {
    /// Tells every node with members that `channel` is closed and forgets
    /// its memberships (history is the operator's to keep or delete).
    pub async fn close_channel(&self, channel: &ChannelName, reason: &str) -> ChatResult<u64> {
        let r = &self.redis;
        r.run(
            &r.scripts.close,
            vec![channel.to_string(), reason.to_string(), r.settings.inbox_maxlen.to_string()],
        )
        .await
    }
}

impl OwnerBackend for RedisBackend {
    fn commit<'a>(
        &'a self,
        draft: Draft,
        retention: Retention,
        dedup: Option<&'a str>,
    ) -> BoxFuture<'a, ChatResult<Arc<StoredMessage>>> {
        async move {
            let r = &self.redis;
            let meta = match &draft.meta {
                Some(m) => serde_json::to_string(m).unwrap_or_default(),
                None => String::new(),
            };
            let max_age_ms = retention.max_age_seconds.saturating_mul(1000);
            let min_id_ms = now_ms().saturating_sub(max_age_ms);
            let id: String = r
                .run(
                    &r.scripts.commit,
                    vec![
                        draft.channel.to_string(),
                        draft.from.to_string(),
                        draft.text.clone(),
                        meta,
                        retention.max_messages.max(1).to_string(),
                        min_id_ms.to_string(),
                        max_age_ms.max(1000).to_string(),
                        dedup.unwrap_or("").to_string(),
                        DEDUP_TTL_MS.to_string(),
                        draft.accepted_at_micros.to_string(),
                        r.settings.inbox_maxlen.to_string(),
                    ],
                )
                .await?;
            let id: MessageId =
                id.parse().map_err(|e| ChatError::unavailable(format!("unexpected id from Redis: {e}")))?;
            Ok(StoredMessage::from_draft(draft, id, id.ms))
        }
        .boxed()
    }

    fn join<'a>(
        &'a self,
        channel: &'a ChannelName,
        user: &'a str,
        edge: &'a str,
        max_members: u32,
    ) -> BoxFuture<'a, ChatResult<usize>> {
        async move {
            let r = &self.redis;
            let n: i64 = r
                .run(
                    &r.scripts.join,
                    vec![
                        channel.to_string(),
                        user.to_string(),
                        edge.to_string(),
                        max_members.to_string(),
                        r.settings.inbox_maxlen.to_string(),
                    ],
                )
                .await?;
            if n < 0 { Err(channel_full(channel)) } else { Ok(n as usize) }
        }
        .boxed()
    }

    fn leave<'a>(
        &'a self,
        channel: &'a ChannelName,
        user: &'a str,
        edge: &'a str,
    ) -> BoxFuture<'a, ChatResult<()>> {
        async move {
            let r = &self.redis;
            let _: i64 = r
                .run(
                    &r.scripts.leave,
                    vec![
                        channel.to_string(),
                        user.to_string(),
                        edge.to_string(),
                        r.settings.inbox_maxlen.to_string(),
                    ],
                )
                .await?;
            Ok(())
        }
        .boxed()
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
