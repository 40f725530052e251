//! How server frames are encoded for the socket: the one place that turns a
//! `ServerFrame` into text. Pushes are encoded once per node (or, in
//! cluster mode, once by the channel's owner) and the same bytes are queued
//! to every member.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use shardchat_common::protocol::{ChatMessage, Presence, PresenceEvent, ServerFrame};
use shardchat_common::{ChannelName, MessageId};

/// Encodes any frame.
pub fn encode(frame: &ServerFrame) -> Utf8Bytes {
    // Frames are plain data with string keys: serialization cannot fail.
    Utf8Bytes::from(serde_json::to_string(frame).unwrap_or_default())
}

/// Bytes `message` takes serialized (as a history item), without building it.
pub fn json_len(message: &ChatMessage) -> usize {
    serialized_len(message)
}

/// Bytes a direct message takes serialized, without building it.
pub fn dm_json_len(message: &shardchat_common::protocol::DirectMessage) -> usize {
    serialized_len(message)
}

fn serialized_len<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A message push as it is queued to members: its id (for the
/// per-subscriber exactly-once filter) and the encoded frame.
#[derive(Debug)]
pub struct MessagePush {
    pub id: MessageId,
    pub frame: Utf8Bytes,
    /// Owner's accept time, µs since the Unix epoch (for the latency metric; 0 = unknown).
    pub accepted_at_micros: u64,
}

impl MessagePush {
    pub fn of(message: &ChatMessage, accepted_at_micros: u64) -> Arc<MessagePush> {
        Arc::new(MessagePush {
            id: message.id,
            frame: encode(&ServerFrame::Message(message.clone())),
            accepted_at_micros,
        })
    }
}

/// A presence push.
#[derive(Debug)]
pub struct PresencePush {
    pub presence: Presence,
    pub frame: Utf8Bytes,
}

impl PresencePush {
    pub fn new(channel: ChannelName, event: PresenceEvent, user: &str) -> Arc<PresencePush> {
        let presence = Presence { channel, event, user: user.to_string() };
        let frame = encode(&ServerFrame::Presence(presence.clone()));
        Arc::new(PresencePush { presence, frame })
    }
}

/// A message push before its id is known, in pieces: the owner sends them
/// with the message to Redis, and the commit script joins them around the
/// id that `XADD` assigns — so the push is encoded once, by the owner, and
/// member nodes queue the bytes as they are. `render` gives the same bytes
/// as [`encode`] of the `ServerFrame::Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTemplate {
    /// `{"op":"message","channel":"<c>","id":"` — the same for a whole channel.
    pub head: String,
    /// `","from":"<f>","text":"<t>","ts":` — between the id and its milliseconds.
    pub middle: String,
    /// `}` or `,"meta":{...}}` — after the milliseconds.
    pub tail: String,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

impl PushTemplate {
    pub fn head(channel: &ChannelName) -> String {
        format!("{{\"op\":\"message\",\"channel\":{},\"id\":\"", json_string(channel.as_str()))
    }

    /// `meta_json` must be a compact JSON object.
    pub fn new(channel: &ChannelName, from: &str, text: &str, meta_json: Option<&str>) -> PushTemplate {
        PushTemplate {
            head: Self::head(channel),
            middle: format!("\",\"from\":{},\"text\":{},\"ts\":", json_string(from), json_string(text)),
            tail: match meta_json {
                Some(m) => format!(",\"meta\":{m}}}"),
                None => "}".to_string(),
            },
        }
    }

    /// The push for the message once it has `id` (its `ts` is the id's milliseconds).
    pub fn render(&self, id: MessageId) -> String {
        format!("{}{}{}{}{}", self.head, id, self.middle, id.ms, self.tail)
    }
}

/// A direct-message push before its id and cursor are known, in pieces
/// the send script joins around them (like [`PushTemplate`]); `render`
/// gives the same bytes as [`encode`] of the `ServerFrame::Dm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmPushTemplate {
    /// `","from":"<f>","to":"<t>","text":"<x>","ts":` — between the cursor and the id's milliseconds.
    pub middle: String,
    /// `}` or `,"meta":{...}}`.
    pub tail: String,
}

impl DmPushTemplate {
    /// Before the id.
    pub const HEAD: &'static str = "{\"op\":\"dm\",\"id\":\"";
    /// Between the id and the cursor.
    pub const CURSOR: &'static str = "\",\"cursor\":\"";

    pub fn new(from: &str, to: &str, text: &str, meta_json: Option<&str>) -> DmPushTemplate {
        DmPushTemplate {
            middle: format!(
                "\",\"from\":{},\"to\":{},\"text\":{},\"ts\":",
                json_string(from),
                json_string(to),
                json_string(text)
            ),
            tail: match meta_json {
                Some(m) => format!(",\"meta\":{m}}}"),
                None => "}".to_string(),
            },
        }
    }

    pub fn render(&self, id: MessageId, cursor: MessageId) -> String {
        format!("{}{id}{}{cursor}{}{}{}", Self::HEAD, Self::CURSOR, self.middle, id.ms, self.tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value, json};

    #[test]
    fn a_rendered_template_is_byte_for_byte_the_serialized_push() {
        let channel = ChannelName::new("town-137:a.b_c").unwrap();
        let mut meta = Map::new();
        meta.insert("k".into(), json!({"nested": [1, "two", null], "q": "\"quoted\"\n"}));
        for (from, text, meta) in [
            ("user-42", "hello", None),
            ("u@x", "quotes \" and \\ and \n and \u{0001} and 한국어 😀", Some(meta.clone())),
            ("server", "", Some(Map::new())),
        ] {
            let id = MessageId::new(1_732_260_000_123, 7);
            let meta_json = meta.as_ref().map(|m| serde_json::to_string(m).unwrap());
            let rendered = PushTemplate::new(&channel, from, text, meta_json.as_deref()).render(id);
            let message = ChatMessage {
                channel: channel.clone(),
                id,
                from: from.into(),
                text: text.into(),
                ts: id.ms,
                meta: meta.clone(),
            };
            assert_eq!(rendered, encode(&ServerFrame::Message(message)).as_str());
            let parsed: Value = serde_json::from_str(&rendered).unwrap();
            assert_eq!(parsed["id"], json!("1732260000123-7"));
        }
    }

    #[test]
    fn a_rendered_dm_template_is_byte_for_byte_the_serialized_push() {
        use shardchat_common::protocol::DirectMessage;
        let mut meta = Map::new();
        meta.insert("gift".into(), json!({"item": "sword", "n": 2}));
        for (text, meta) in [("psst", None), ("\"quoted\"\n\u{0007} 한국어", Some(meta))] {
            let id = MessageId::new(1_732_260_000_123, 2);
            let cursor = MessageId::new(1_732_260_000_124, 0);
            let meta_json = meta.as_ref().map(|m| serde_json::to_string(m).unwrap());
            let rendered =
                DmPushTemplate::new("alice", "bob@x", text, meta_json.as_deref()).render(id, cursor);
            let dm = DirectMessage {
                id,
                cursor: Some(cursor),
                from: "alice".into(),
                to: "bob@x".into(),
                text: text.into(),
                ts: id.ms,
                meta: meta.clone(),
            };
            assert_eq!(rendered, encode(&ServerFrame::Dm(dm)).as_str());
        }
    }
}
