//! Reading this node's inbound stream `{p}:inbox:<node>` through the
//! `chat-node` consumer group: a restarted node first finishes its own
//! pending entries, then reads new ones.
//!
//! The reader never waits for owner work: fan-out events go straight to
//! the hub (one queue item per member per read), acks to the router,
//! requests onto the owner's per-channel queues. Then the entries are
//! acknowledged and deleted, so an inbox holds only what its node has not
//! handled yet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use fred::prelude::*;
use fred::types::Value;
use shardchat_common::ChannelName;
use shardchat_common::redis_layout::inbox::{FannedEvent, InboxEntry};
use tokio::time::Instant;

use super::backend::RedisBackend;
use super::owner_server::OwnerServer;
use super::router::Router;
use super::{INBOX_GROUP, RedisCtx};
use crate::dm::mailboxes::{MailboxPush, Mailboxes};
use crate::frames::{MessagePush, PresencePush};
use crate::hub::{Event, Hub};
use crate::metrics::Metrics;

/// Entries read at once.
const READ_COUNT: u64 = 1024;
/// How long one blocking read waits for new entries.
const BLOCK_MS: u64 = 1_000;

/// One entry as read: `None` fields when the entry was deleted after it was
/// delivered (a pending entry that trimming removed).
#[derive(Debug, Clone, PartialEq)]
pub struct RawEntry {
    pub id: String,
    pub fields: Option<Vec<(String, String)>>,
}

/// Parses an `XREADGROUP` reply for `key` (RESP2 arrays or RESP3 maps),
/// tolerating deleted entries (`[id, nil]`).
pub fn parse_read(reply: Value, key: &str) -> Vec<RawEntry> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Null => return Vec::new(),
        Value::Map(map) => map.inner().into_iter().map(|(k, v)| (Value::from(k), v)).collect(),
        other => other
            .into_array()
            .into_iter()
            .filter_map(|s| {
                let mut kv = s.into_array().into_iter();
                Some((kv.next()?, kv.next()?))
            })
            .collect(),
    };
    streams
        .into_iter()
        .filter(|(k, _)| k.as_str().as_deref() == Some(key))
        .flat_map(|(_, entries)| entries.into_array())
        .filter_map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let id = parts.next()?.as_string()?;
            let fields = match parts.next() {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.into_array()
                        .chunks(2)
                        .filter_map(|kv| Some((kv.first()?.as_string()?, kv.get(1)?.as_string()?)))
                        .collect(),
                ),
            };
            Some(RawEntry { id, fields })
        })
        .collect()
}

/// What the reader has seen lately, for readiness.
#[derive(Default)]
pub struct InboxHealth {
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

impl InboxHealth {
    fn ok(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.last_ok = Some(Instant::now());
        s.last_error = None;
    }

    fn failed(&self, error: String) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(error);
    }

    /// Why the reader is not keeping up, when it has not completed a read
    /// for longer than `allowed`.
    pub fn problem(&self, allowed: Duration) -> Option<String> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.last_ok {
            Some(t) if t.elapsed() <= allowed => None,
            _ => Some(match &s.last_error {
                Some(e) => format!("inbox reader stuck: {e}"),
                None => "inbox reader has not read yet".to_string(),
            }),
        }
    }
}

/// Where the reader hands what it reads.
pub struct InboxTargets {
    pub hub: Arc<Hub>,
    pub mailboxes: Arc<Mailboxes>,
    pub router: Arc<Router>,
    pub owner_server: Arc<OwnerServer>,
    pub backend: Arc<RedisBackend>,
    pub metrics: Arc<Metrics>,
}

/// Creates the consumer group (and the stream) if missing.
pub async fn ensure_group(redis: &RedisCtx, node: &str) -> Result<(), fred::error::Error> {
    match redis.client.xgroup_create::<(), _, _, _>(redis.keys.inbox(node), INBOX_GROUP, "0", true).await {
        Ok(()) => Ok(()),
        Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads this node's inbox until the process ends.
pub async fn consume(redis: Arc<RedisCtx>, node: Arc<str>, targets: InboxTargets, health: Arc<InboxHealth>) {
    let key = redis.keys.inbox(&node);
    let (acks, pending_acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(acknowledge(redis.clone(), key.clone(), pending_acks, health.clone()));
    // First our own pending entries (left by a previous run), then new ones.
    let mut cursor = "0".to_string();
    let mut backoff = Duration::from_millis(100);
    loop {
        let block = (cursor == ">").then_some(BLOCK_MS);
        let read = redis
            .reader
            .xreadgroup::<Value, _, _, _, _>(
                INBOX_GROUP,
                &*node,
                Some(READ_COUNT),
                block,
                false,
                key.as_str(),
                cursor.as_str(),
            )
            .await;
        let entries = match read {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                parse_read(reply, &key)
            }
            Err(e) => {
                health.failed(e.to_string());
                if e.details().contains("NOGROUP") {
                    tracing::info!("inbox consumer group missing (Redis restarted?); recreating it");
                    if let Err(e) = ensure_group(&redis, &node).await {
                        tracing::warn!(error = %e, "cannot create the inbox consumer group");
                    }
                } else {
                    tracing::warn!(error = %e, "reading the inbox failed; retrying");
                }
                // Redis may have handed us entries whose reply was lost with
                // the error: they are pending for this consumer now, and only
                // a read from 0 returns them (handling is idempotent).
                cursor = "0".into();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if entries.is_empty() {
            health.ok();
            if cursor != ">" {
                tracing::debug!("pending inbox entries done");
                cursor = ">".into();
            }
            continue;
        }
        if cursor != ">"
            && let Some(last) = entries.last()
        {
            cursor = last.id.clone();
        }
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        targets.metrics.inbox_entries.inc_by(ids.len() as u64);
        handle(&targets, entries);
        // Acknowledged (and deleted) behind the reader's back, in order, so the
        // next read does not wait for it. Unacknowledged entries are read again
        // after a restart; handling is idempotent.
        if acks.send(ids).is_err() {
            return;
        }
        health.ok();
    }
}

/// Acknowledges and deletes handled entries, in read order; what queued up
/// while one call was in flight goes in the next call.
async fn acknowledge(
    redis: Arc<RedisCtx>,
    key: String,
    mut handled: tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    health: Arc<InboxHealth>,
) {
    while let Some(mut ids) = handled.recv().await {
        while ids.len() < 4 * READ_COUNT as usize {
            match handled.try_recv() {
                Ok(more) => ids.extend(more),
                Err(_) => break,
            }
        }
        let mut args = Vec::with_capacity(ids.len() + 1);
        args.push(INBOX_GROUP.to_string());
        args.extend(ids);
        if let Err(e) = redis
            .scripts
            .ack_and_trim
            .evalsha_with_reload::<i64, _, _>(&redis.client, key.as_str(), args)
            .await
        {
            tracing::warn!(error = %e, "acknowledging inbox entries failed");
            health.failed(e.to_string());
        }
    }
}

/// Dispatches one read, keeping each channel's events in stream order.
fn handle(t: &InboxTargets, entries: Vec<RawEntry>) {
    // Events per channel, delivered together: one queue item per member.
    let mut events: Vec<(ChannelName, Vec<Event>)> = Vec::new();
    let mut index: HashMap<ChannelName, usize> = HashMap::new();
    let mut push = |channel: ChannelName, new: &mut dyn Iterator<Item = Event>| {
        let i = *index.entry(channel.clone()).or_insert_with(|| {
            events.push((channel, Vec::new()));
            events.len() - 1
        });
        events[i].1.extend(new);
    };
    let mut closed = Vec::new();
    for entry in entries {
        let Some(fields) = entry.fields else {
            tracing::debug!(entry = %entry.id, "skipping a pending inbox entry that was deleted");
            continue;
        };
        match InboxEntry::decode(&fields) {
            Ok(InboxEntry::Events(sections)) => {
                for section in sections {
                    let channel = section.channel;
                    let mut new = section.events.into_iter().map(|e| match e {
                        FannedEvent::Message(m) => Event::Message(Arc::new(MessagePush {
                            id: m.id,
                            frame: Utf8Bytes::from(m.push),
                            accepted_at_micros: m.accepted_micros,
                        })),
                        FannedEvent::Presence { event, user } => {
                            Event::Presence(PresencePush::new(channel.clone(), event, &user))
                        }
                    });
                    push(channel.clone(), &mut new);
                }
            }
            Ok(InboxEntry::Acks(acks)) => t.router.acks(acks),
            Ok(InboxEntry::Requests(requests)) => t.owner_server.serve(requests),
            Ok(InboxEntry::DmRequests(requests)) => t.owner_server.serve_dms(requests),
            Ok(InboxEntry::Dms(deliveries)) => {
                for d in deliveries {
                    let push = MailboxPush { cursor: d.cursor, frame: Utf8Bytes::from(d.push) };
                    t.mailboxes.deliver(&d.user, &[push]);
                }
            }
            Ok(InboxEntry::Close { channel, reason }) => {
                let backend = t.backend.clone();
                tokio::spawn(async move {
                    match backend.close_channel(&channel, &reason).await {
                        Ok(n) => tracing::info!(%channel, %reason, memberships = n, "channel closed"),
                        Err(e) => tracing::warn!(%channel, error = %e, "closing a channel failed"),
                    }
                });
            }
            Ok(InboxEntry::Closed { channel, reason }) => closed.push((channel, reason)),
            Err(e) => tracing::warn!(entry = %entry.id, error = %e, "skipping a malformed inbox entry"),
        }
    }
    for (channel, events) in events {
        t.hub.deliver_batch(&channel, &events);
    }
    // After the channel's last events of this read.
    for (channel, reason) in closed {
        t.hub.close_channel(&channel, &reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::from(v)
    }

    #[test]
    fn reads_are_parsed_and_deleted_entries_are_tolerated() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("p:inbox:n0"),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), Value::Array(vec![s("k"), s("pres"), s("c"), s("a")])]),
                // A pending entry whose data trimming removed.
                Value::Array(vec![s("2-0"), Value::Null]),
                Value::Array(vec![
                    s("3-0"),
                    Value::Array(vec![s("k"), s("msgs"), s("i"), s("3-0"), s("i"), s("3-1")]),
                ]),
            ]),
        ])]);
        let entries = parse_read(reply, "p:inbox:n0");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].fields.as_ref().unwrap()[0], ("k".to_string(), "pres".to_string()));
        assert_eq!(entries[1], RawEntry { id: "2-0".into(), fields: None });
        let third = entries[2].fields.as_ref().unwrap();
        assert_eq!(third.len(), 3, "repeated field names are kept in order");
        assert!(parse_read(Value::Null, "p:inbox:n0").is_empty());
    }
}
