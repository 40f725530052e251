//! Channel history: where the owner stores sequenced messages and where any
//! node reads them back (history requests and `since` recovery).
//!
//! The embedded mode keeps it in memory ([`memory::MemoryHistory`]); the
//! Redis mode keeps one stream per channel. Both assign ids, apply retention
//! by count and age, and answer the same three questions.

pub mod memory;

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use shardchat_common::protocol::{ChatMessage, ServerFrame};
use shardchat_common::{ChannelName, MessageId};

use crate::error::ChatResult;

/// A message the owner has accepted and wants stored: everything but its id.
#[derive(Debug, Clone)]
pub struct Draft {
    pub channel: ChannelName,
    pub from: Arc<str>,
    pub text: String,
    pub meta: Option<Map<String, Value>>,
    /// Wall-clock acceptance time in microseconds (for latency metrics).
    pub accepted_at_micros: u64,
}

/// A stored message with its push frame serialized once for every recipient.
#[derive(Debug)]
pub struct StoredMessage {
    pub message: ChatMessage,
    pub push: Utf8Bytes,
    pub accepted_at_micros: u64,
}

impl StoredMessage {
    pub fn new(message: ChatMessage, accepted_at_micros: u64) -> Arc<Self> {
        let frame = ServerFrame::Message(message);
        let push = serde_json::to_string(&frame).unwrap_or_default();
        let ServerFrame::Message(message) = frame else { unreachable!("constructed as a message above") };
        Arc::new(Self { message, push: Utf8Bytes::from(push), accepted_at_micros })
    }

    pub fn id(&self) -> MessageId {
        self.message.id
    }

    pub fn from_draft(draft: Draft, id: MessageId, ts: u64) -> Arc<Self> {
        Self::new(
            ChatMessage {
                channel: draft.channel,
                id,
                from: draft.from.to_string(),
                text: draft.text,
                ts,
                meta: draft.meta,
            },
            draft.accepted_at_micros,
        )
    }
}

/// The answer to "everything after `since`".
#[derive(Debug, Default)]
pub struct Recovery {
    /// Retained messages with an id greater than `since`, oldest first.
    pub messages: Vec<Arc<StoredMessage>>,
    /// False when retention may already have dropped messages after `since`
    /// (or `since` is unknown to this history), so the list may have a gap.
    pub complete: bool,
}

/// Reading history back. Writing is the owner backend's job, because it
/// must be atomic with fan-out.
pub trait HistoryStore: Send + Sync + 'static {
    /// Every retained message with an id greater than `since`, oldest first.
    fn after<'a>(&'a self, channel: &'a ChannelName, since: MessageId)
    -> BoxFuture<'a, ChatResult<Recovery>>;

    /// The newest `limit` messages (with an id below `before` when given), oldest first.
    fn latest<'a>(
        &'a self,
        channel: &'a ChannelName,
        limit: usize,
        before: Option<MessageId>,
    ) -> BoxFuture<'a, ChatResult<Vec<Arc<StoredMessage>>>>;

    /// Number of retained messages per channel, for `GET /v1/channels`.
    fn stats(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>>;
}
