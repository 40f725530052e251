//! Channel history: where the owner stores sequenced messages and where any
//! node reads them back (history requests and `since` recovery).
//!
//! The embedded mode keeps it in memory ([`memory::MemoryHistory`]); the
//! Redis mode keeps one stream per channel. Both assign ids, apply retention
//! by count and age, and answer the same three questions.

pub mod memory;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use shardchat_common::protocol::ChatMessage;
use shardchat_common::{ChannelName, MessageId};

use crate::error::ChatResult;
pub use crate::frames::MessagePush;

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

/// A stored message with its push frame encoded once for every recipient.
#[derive(Debug)]
pub struct StoredMessage {
    pub message: ChatMessage,
    pub push: Arc<MessagePush>,
}

impl StoredMessage {
    pub fn new(message: ChatMessage, accepted_at_micros: u64) -> Arc<Self> {
        let push = MessagePush::of(&message, accepted_at_micros);
        Arc::new(Self { message, push })
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
    pub messages: Vec<Arc<MessagePush>>,
    /// False when the list may have a gap: retention may already have
    /// dropped messages after `since`, `since` is unknown to this history,
    /// or there were more than [`MAX_RECOVERY`] to hand over.
    pub complete: bool,
}

/// Most messages a `join` with `since` replays; past it the join reports
/// `recovered: false` and replays the newest ones.
pub const MAX_RECOVERY: usize = 10_000;

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
    ) -> BoxFuture<'a, ChatResult<Vec<ChatMessage>>>;

    /// Number of retained messages per channel, for `GET /v1/channels`.
    fn stats(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>>;
}
