//! Each node's inbound stream `{p}:inbox:<node>`: the wire format of its
//! entries, and the consumer that reads them through the `chat-node`
//! consumer group (so a restarted node first finishes its own pending
//! entries, then reads new ones) and acknowledges each batch only after
//! handling it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::streams::XReadResponse;
use shardchat_common::protocol::{ErrorBody, ErrorCode, PresenceEvent};
use shardchat_common::{ChannelName, MessageId};

use super::history::message_from_fields;
use super::{INBOX_GROUP, RedisCtx};
use crate::history::StoredMessage;
use crate::hub::{Event, Hub, PresenceFrame};

/// What an owner is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestKind {
    Publish { text: String, meta: String },
    Join,
    Leave,
}

/// A request from an edge to a channel's owner.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerRequest {
    pub kind: RequestKind,
    /// Unique per request (`<edge>:<n>`); also the publish dedup key.
    pub req: String,
    /// Edge id (`<node>#<incarnation>`) to answer and to record membership for.
    pub edge: String,
    pub channel: ChannelName,
    pub user: String,
    /// Wall-clock ms after which the edge has given up: the owner drops it.
    pub deadline_ms: u64,
    /// Forwards so far (a request for a channel that moved).
    pub hops: u32,
}

/// The owner's answer: a value (message id, member count) or an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub req: String,
    pub result: Result<String, ErrorBody>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InboxEntry {
    Message {
        channel: ChannelName,
        id: MessageId,
        fields: HashMap<String, String>,
        accepted_micros: u64,
    },
    Presence {
        channel: ChannelName,
        event: PresenceEvent,
        user: String,
    },
    Request(OwnerRequest),
    Ack(Ack),
    /// Operator → owner: close this channel.
    Close {
        channel: ChannelName,
        reason: String,
    },
    /// Owner → edges: the channel is closed; drop its local members.
    Closed {
        channel: ChannelName,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("malformed inbox entry: {0}")]
pub struct MalformedEntry(String);

fn field<'a>(f: &'a HashMap<String, String>, name: &str) -> Result<&'a str, MalformedEntry> {
    f.get(name).map(String::as_str).ok_or_else(|| MalformedEntry(format!("missing field {name:?}")))
}

fn channel(f: &HashMap<String, String>) -> Result<ChannelName, MalformedEntry> {
    ChannelName::new(field(f, "c")?).map_err(|e| MalformedEntry(e.to_string()))
}

impl InboxEntry {
    pub fn decode(f: HashMap<String, String>) -> Result<InboxEntry, MalformedEntry> {
        let kind = field(&f, "k")?;
        Ok(match kind {
            "msg" => InboxEntry::Message {
                channel: channel(&f)?,
                id: field(&f, "i")?
                    .parse()
                    .map_err(|e: shardchat_common::InvalidMessageId| MalformedEntry(e.to_string()))?,
                accepted_micros: f.get("t").and_then(|t| t.parse().ok()).unwrap_or(0),
                fields: f,
            },
            "pres" => InboxEntry::Presence {
                channel: channel(&f)?,
                event: match field(&f, "e")? {
                    "join" => PresenceEvent::Join,
                    "leave" => PresenceEvent::Leave,
                    other => return Err(MalformedEntry(format!("presence event {other:?}"))),
                },
                user: field(&f, "u")?.to_string(),
            },
            "pub" | "join" | "leave" => InboxEntry::Request(OwnerRequest {
                kind: match kind {
                    "pub" => RequestKind::Publish {
                        text: field(&f, "x")?.to_string(),
                        meta: f.get("m").cloned().unwrap_or_default(),
                    },
                    "join" => RequestKind::Join,
                    _ => RequestKind::Leave,
                },
                req: field(&f, "r")?.to_string(),
                edge: field(&f, "e")?.to_string(),
                channel: channel(&f)?,
                user: field(&f, "u")?.to_string(),
                deadline_ms: field(&f, "dl")?.parse().map_err(|_| MalformedEntry("deadline".into()))?,
                hops: f.get("h").and_then(|h| h.parse().ok()).unwrap_or(0),
            }),
            "ack" => InboxEntry::Ack(Ack {
                req: field(&f, "r")?.to_string(),
                result: if field(&f, "ok")? == "1" {
                    Ok(field(&f, "v")?.to_string())
                } else {
                    let code = serde_json::from_value::<ErrorCode>(serde_json::Value::String(
                        field(&f, "code")?.into(),
                    ))
                    .unwrap_or(ErrorCode::Unavailable);
                    Err(ErrorBody::new(code, f.get("msg").cloned().unwrap_or_default()))
                },
            }),
            "close" => {
                #[derive(serde::Deserialize)]
                struct Close {
                    channel: ChannelName,
                    #[serde(default)]
                    reason: String,
                }
                let c: Close =
                    serde_json::from_str(field(&f, "d")?).map_err(|e| MalformedEntry(e.to_string()))?;
                InboxEntry::Close { channel: c.channel, reason: c.reason }
            }
            "closed" => {
                InboxEntry::Closed { channel: channel(&f)?, reason: f.get("r").cloned().unwrap_or_default() }
            }
            other => return Err(MalformedEntry(format!("unknown kind {other:?}"))),
        })
    }
}

impl OwnerRequest {
    pub fn encode(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            (
                "k",
                match self.kind {
                    RequestKind::Publish { .. } => "pub",
                    RequestKind::Join => "join",
                    RequestKind::Leave => "leave",
                }
                .to_string(),
            ),
            ("r", self.req.clone()),
            ("e", self.edge.clone()),
            ("c", self.channel.to_string()),
            ("u", self.user.clone()),
            ("dl", self.deadline_ms.to_string()),
            ("h", self.hops.to_string()),
        ];
        if let RequestKind::Publish { text, meta } = &self.kind {
            f.push(("x", text.clone()));
            if !meta.is_empty() {
                f.push(("m", meta.clone()));
            }
        }
        f
    }
}

impl Ack {
    pub fn encode(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![("k", "ack".to_string()), ("r", self.req.clone())];
        match &self.result {
            Ok(v) => {
                f.push(("ok", "1".into()));
                f.push(("v", v.clone()));
            }
            Err(e) => {
                f.push(("ok", "0".into()));
                f.push(("code", e.code.as_str().into()));
                f.push(("msg", e.message.clone()));
            }
        }
        f
    }
}

/// XADDs `fields` to `node`'s inbox (capped, approximately).
pub async fn send(
    redis: &RedisCtx,
    node: &str,
    fields: Vec<(&'static str, String)>,
) -> Result<(), fred::error::Error> {
    let cap = ("MAXLEN", "~", redis.settings.inbox_maxlen as i64);
    let _: String = redis.client.xadd(redis.keys.inbox(node), false, cap, "*", fields).await?;
    Ok(())
}

/// Where the consumer hands what it reads.
pub trait InboxHandler: Send + Sync + 'static {
    /// Serves owner requests of one channel, in order.
    fn serve(&self, requests: Vec<OwnerRequest>) -> futures_util::future::BoxFuture<'_, ()>;
    fn ack(&self, ack: Ack);
    fn close(&self, channel: ChannelName, reason: String) -> futures_util::future::BoxFuture<'_, ()>;
}

/// Creates the consumer group (and the stream) if missing.
pub async fn ensure_group(redis: &RedisCtx, node: &str) -> Result<(), fred::error::Error> {
    match redis.client.xgroup_create::<(), _, _, _>(redis.keys.inbox(node), INBOX_GROUP, "0", true).await {
        Ok(()) => Ok(()),
        Err(e) if e.details().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads this node's inbox forever.
pub async fn consume(redis: Arc<RedisCtx>, node: Arc<str>, hub: Arc<Hub>, handler: Arc<dyn InboxHandler>) {
    let key = redis.keys.inbox(&node);
    // First our own pending entries (left by a previous run), then new ones.
    let mut cursor = "0".to_string();
    let mut backoff = Duration::from_millis(100);
    loop {
        let block = (cursor == ">").then_some(1_000);
        let read: Result<XReadResponse<String, String, String, String>, _> = redis
            .reader
            .xreadgroup::<fred::types::Value, _, _, _, _>(
                INBOX_GROUP,
                &*node,
                Some(512),
                block,
                false,
                key.as_str(),
                cursor.as_str(),
            )
            .await
            .and_then(|v| {
                // A blocking read that timed out answers nil: no entries, not an error.
                if v.is_null() { Ok(XReadResponse::default()) } else { v.into_xread_response() }
            });
        let entries = match read {
            Ok(mut r) => {
                backoff = Duration::from_millis(100);
                r.remove(&key).unwrap_or_default()
            }
            Err(e) => {
                if e.details().contains("NOGROUP") {
                    tracing::info!("inbox consumer group missing (Redis restarted?); recreating it");
                    if let Err(e) = ensure_group(&redis, &node).await {
                        tracing::warn!(error = %e, "cannot create the inbox consumer group");
                    }
                    cursor = "0".into();
                } else {
                    tracing::warn!(error = %e, "reading the inbox failed; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if entries.is_empty() {
            if cursor != ">" {
                tracing::debug!("pending inbox entries done");
                cursor = ">".into();
            }
            continue;
        }
        if cursor != ">"
            && let Some((last, _)) = entries.last()
        {
            cursor = last.clone();
        }
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        handle_batch(&hub, handler.as_ref(), entries).await;
        if let Err(e) = redis.client.xack::<i64, _, _, _>(key.as_str(), INBOX_GROUP, ids).await {
            // Unacknowledged entries are read again after a restart; handling is idempotent.
            tracing::warn!(error = %e, "acknowledging inbox entries failed");
        }
    }
}

async fn handle_batch(
    hub: &Hub,
    handler: &dyn InboxHandler,
    entries: Vec<(String, HashMap<String, String>)>,
) {
    let mut requests: HashMap<ChannelName, Vec<OwnerRequest>> = HashMap::new();
    let mut closes = Vec::new();
    for (id, fields) in entries {
        match InboxEntry::decode(fields) {
            Ok(InboxEntry::Message { channel, id, fields, accepted_micros }) => {
                let message = message_from_fields(&channel, id, &fields);
                hub.deliver(&channel, Event::Message(StoredMessage::new(message, accepted_micros)));
            }
            Ok(InboxEntry::Presence { channel, event, user }) => {
                hub.deliver(&channel, Event::Presence(PresenceFrame::new(channel.clone(), event, &user)));
            }
            Ok(InboxEntry::Ack(ack)) => handler.ack(ack),
            Ok(InboxEntry::Request(r)) => requests.entry(r.channel.clone()).or_default().push(r),
            Ok(InboxEntry::Close { channel, reason }) => closes.push((channel, reason)),
            Ok(InboxEntry::Closed { channel, reason }) => hub.close_channel(&channel, &reason),
            Err(e) => tracing::warn!(entry = %id, error = %e, "skipping a malformed inbox entry"),
        }
    }
    futures_util::future::join_all(requests.into_values().map(|reqs| handler.serve(reqs))).await;
    for (channel, reason) in closes {
        handler.close(channel, reason).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_map(f: Vec<(&'static str, String)>) -> HashMap<String, String> {
        f.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn requests_and_acks_round_trip() {
        let req = OwnerRequest {
            kind: RequestKind::Publish { text: "hi".into(), meta: "{\"a\":1}".into() },
            req: "n#1:7".into(),
            edge: "n#1".into(),
            channel: ChannelName::new("town-137").unwrap(),
            user: "u".into(),
            deadline_ms: 42,
            hops: 1,
        };
        assert_eq!(InboxEntry::decode(to_map(req.encode())).unwrap(), InboxEntry::Request(req));
        let ok = Ack { req: "r".into(), result: Ok("5-0".into()) };
        assert_eq!(InboxEntry::decode(to_map(ok.encode())).unwrap(), InboxEntry::Ack(ok));
        let err = Ack { req: "r".into(), result: Err(ErrorBody::new(ErrorCode::ChannelFull, "full")) };
        assert_eq!(InboxEntry::decode(to_map(err.encode())).unwrap(), InboxEntry::Ack(err));
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        for f in [
            vec![],
            vec![("k", "msg".to_string())],
            vec![("k", "msg".into()), ("c", "bad name".into()), ("i", "1-0".into())],
            vec![("k", "msg".into()), ("c", "ok".into()), ("i", "x".into())],
            vec![("k", "pres".into()), ("c", "ok".into()), ("e", "dance".into()), ("u", "u".into())],
            vec![("k", "close".into()), ("d", "{".into())],
            vec![("k", "zzz".into())],
        ] {
            assert!(InboxEntry::decode(to_map(f)).is_err());
        }
    }
}
