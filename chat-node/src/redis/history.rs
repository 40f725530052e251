//! Reading channel history streams (`{p}:history:<channel>`). Any node can
//! answer history and recovery requests without asking the owner.

use std::collections::HashMap;
use std::sync::Arc;

use fred::prelude::*;
use fred::types::Value;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Map;
use shardchat_common::protocol::ChatMessage;
use shardchat_common::{ChannelName, MessageId, Retention};

use super::{RedisCtx, unavailable};
use crate::clock::now_ms;
use crate::directory::Directory;
use crate::error::ChatResult;
use crate::history::{HistoryStore, MAX_RECOVERY, MessagePush, Recovery};

pub struct RedisHistory {
    redis: Arc<RedisCtx>,
    directory: Arc<Directory>,
}

impl RedisHistory {
    pub fn new(redis: Arc<RedisCtx>, directory: Arc<Directory>) -> Self {
        Self { redis, directory }
    }

    /// Messages older than the channel's age bound are hidden on read: the
    /// stream is only trimmed by age when the next message is published.
    fn oldest_visible(&self, channel: &ChannelName) -> MessageId {
        let retention = self.directory.resolve(channel).map(|c| c.retention).unwrap_or_default();
        MessageId::new(oldest_ms(retention), 0)
    }
}

fn oldest_ms(retention: Retention) -> u64 {
    now_ms().saturating_sub(retention.max_age_seconds.saturating_mul(1000))
}

/// Builds a message from a history stream entry's id and fields.
pub fn message_from_fields(
    channel: &ChannelName,
    id: MessageId,
    fields: &HashMap<String, String>,
) -> ChatMessage {
    let meta =
        fields.get("m").filter(|m| !m.is_empty()).and_then(|m| serde_json::from_str::<Map<_, _>>(m).ok());
    ChatMessage {
        channel: channel.clone(),
        id,
        from: fields.get("f").cloned().unwrap_or_default(),
        text: fields.get("x").cloned().unwrap_or_default(),
        ts: id.ms,
        meta,
    }
}

/// Parses `[[id, [k, v, ...]], ...]` as returned by XRANGE inside a script.
fn parse_entries(value: Value) -> Vec<(MessageId, HashMap<String, String>)> {
    value
        .into_array()
        .into_iter()
        .filter_map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let id: MessageId = parts.next()?.as_string()?.parse().ok()?;
            let flat = parts.next()?.into_array();
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((kv.first()?.as_string()?, kv.get(1)?.as_string()?)))
                .collect();
            Some((id, fields))
        })
        .collect()
}

impl HistoryStore for RedisHistory {
    fn after<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: MessageId,
    ) -> BoxFuture<'a, ChatResult<Recovery>> {
        async move {
            let r = &self.redis;
            let reply: Value = r
                .run(&r.scripts.after, vec![channel.to_string(), since.to_string(), MAX_RECOVERY.to_string()])
                .await
                .map_err(unavailable)?;
            let mut parts = reply.into_array().into_iter();
            let exists = parts.next().and_then(|v| v.as_i64()).unwrap_or(0) == 1;
            if !exists {
                return Ok(Recovery { messages: Vec::new(), complete: since == MessageId::ZERO });
            }
            let id_of =
                |v: Option<Value>| v.and_then(|v| v.as_string()).and_then(|s| s.parse::<MessageId>().ok());
            let trimmed = id_of(parts.next());
            let newest = id_of(parts.next());
            // Newest first, at most the cap plus one (which tells there were more).
            let mut entries = parts.next().map(parse_entries).unwrap_or_default();
            let oldest_visible = self.oldest_visible(channel);
            let last_known = newest.max(trimmed).unwrap_or(MessageId::ZERO);
            let mut complete = since <= last_known && trimmed.is_none_or(|t| since >= t);
            if entries.len() > MAX_RECOVERY {
                entries.truncate(MAX_RECOVERY);
                complete = false;
            }
            let mut messages = Vec::with_capacity(entries.len());
            for (id, fields) in entries.into_iter().rev() {
                if id < oldest_visible {
                    complete = false; // expired after `since`
                    continue;
                }
                messages.push(MessagePush::of(&message_from_fields(channel, id, &fields), 0));
            }
            Ok(Recovery { messages, complete })
        }
        .boxed()
    }

    fn latest<'a>(
        &'a self,
        channel: &'a ChannelName,
        limit: usize,
        before: Option<MessageId>,
    ) -> BoxFuture<'a, ChatResult<Vec<ChatMessage>>> {
        async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let end = match before {
                Some(b) => format!("({b}"),
                None => "+".to_string(),
            };
            let entries: Vec<(String, HashMap<String, String>)> = self
                .redis
                .client
                .xrevrange(self.redis.keys.history(channel.as_str()), end, "-", Some(limit as u64))
                .await
                .map_err(unavailable)?;
            let oldest_visible = self.oldest_visible(channel);
            let mut messages: Vec<ChatMessage> = entries
                .into_iter()
                .filter_map(|(id, fields)| {
                    let id: MessageId = id.parse().ok()?;
                    (id >= oldest_visible).then(|| message_from_fields(channel, id, &fields))
                })
                .collect();
            messages.reverse();
            Ok(messages)
        }
        .boxed()
    }

    fn stats(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>> {
        async move {
            let r = &self.redis;
            let mut names: Vec<String> = r.client.smembers(r.keys.active()).await.map_err(unavailable)?;
            names.extend(self.directory.declared_names().iter().map(|c| c.to_string()));
            names.sort();
            names.dedup();
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let pipeline = r.client.pipeline();
            for c in &names {
                let _: () = pipeline.xlen(r.keys.history(c)).await.map_err(unavailable)?;
            }
            let lens: Vec<i64> = pipeline.all().await.map_err(unavailable)?;
            Ok(names
                .into_iter()
                .zip(lens)
                .filter(|(_, n)| *n > 0)
                .filter_map(|(c, n)| Some((ChannelName::new(&c).ok()?, n as usize)))
                .collect())
        }
        .boxed()
    }
}
