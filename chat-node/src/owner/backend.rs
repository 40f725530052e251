//! What the owner asks of its storage: apply a batch of channel operations
//! atomically per channel — in memory for the embedded mode, one Lua
//! script call in Redis for the cluster mode.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use shardchat_common::{ChannelName, MessageId, Retention};

use crate::error::{ChatError, ChatResult};
use crate::frames::PushTemplate;
use crate::history::Draft;

/// How a retried publish is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dedup {
    /// The client's nonce: `(channel, sender, nonce)` is remembered for the dedup window.
    Nonce(String),
    /// The edge request id (`<edge>:<n>`), remembered briefly: makes a
    /// command that Redis runs twice (client re-send after a reconnect)
    /// store once, and lets the edge find out after a timeout whether it was stored.
    Request(String),
    /// Nothing to recognise (embedded mode without a nonce).
    None,
}

/// A publish that passed the channel's rules and moderation, ready to store.
#[derive(Debug, Clone)]
pub struct PublishOp {
    pub draft: Draft,
    /// `draft.meta` as compact JSON, once.
    pub meta_json: Option<String>,
    /// The push frame around the id (`draft.text` after moderation).
    pub push: PushTemplate,
    pub dedup: Dedup,
    /// Redis-clock ms after which the op must not be applied (cluster mode).
    pub deadline_ms: Option<u64>,
}

/// One operation on a channel, in the order the owner received it.
#[derive(Debug, Clone)]
pub enum ReadyOp {
    Publish(Box<PublishOp>),
    Join { user: Arc<str>, edge: Arc<str> },
    Leave { user: Arc<str>, edge: Arc<str> },
}

/// Consecutive operations on one channel, with the channel's settings.
#[derive(Debug, Clone)]
pub struct ChannelBatch {
    pub channel: ChannelName,
    pub retention: Retention,
    pub max_members: u32,
    /// No ChatChannel declares the channel: a first join counts against
    /// `--max-dynamic-channels`.
    pub dynamic: bool,
    pub ops: Vec<ReadyOp>,
}

/// What happened to one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    /// Stored with this id, or (`duplicate`) recognised as already stored.
    Published {
        id: MessageId,
        duplicate: bool,
    },
    /// Its deadline had passed: nothing stored.
    Expired,
    Joined {
        members: usize,
    },
    /// A new member would exceed `max_members`.
    Full,
    /// A first member of a new undeclared channel would exceed the dynamic-channel cap.
    TooManyChannels,
    Left,
}

/// Why a whole batch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    /// Definitely not applied (e.g. Redis answered with an error).
    #[error("{0}")]
    Refused(ChatError),
    /// Maybe applied (timeout, connection lost mid-command): the owner finds
    /// out through the dedup records after the ops' deadlines.
    #[error("{0}")]
    Ambiguous(ChatError),
}

/// Sequencing, storage, membership and fan-out of owned channels.
pub trait OwnerBackend: Send + Sync + 'static {
    /// Applies every batch; each channel's ops atomically and in order. A
    /// publish gets the next id, is stored with the channel's retention and
    /// fanned out to every edge with members; a join records `(user, edge)`
    /// and fans out presence when the user is new anywhere; a leave the
    /// reverse. Returns one result per op, batch by batch.
    fn apply(
        &self,
        batches: Arc<Vec<ChannelBatch>>,
    ) -> BoxFuture<'static, Result<Vec<Vec<OpResult>>, ApplyError>>;

    /// After an ambiguous failure, once `op`'s deadline has passed: the id
    /// it was stored under, or `None` when it was not stored.
    fn lookup(
        &self,
        channel: &ChannelName,
        op: &PublishOp,
    ) -> BoxFuture<'static, ChatResult<Option<MessageId>>>;

    /// The clock deadlines are measured in (Redis's, in cluster mode), in
    /// ms since the Unix epoch; `None` while unknown.
    fn now_ms(&self) -> Option<u64>;

    /// Distinct members, sorted.
    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>>;

    /// Channels with members, and how many.
    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>>;
}
