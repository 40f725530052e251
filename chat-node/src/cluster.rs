//! What an edge asks of a channel's owner. In the embedded mode the owner is
//! always this node ([`LocalCluster`]); the Redis mode routes each call to
//! the owner the ring names (`redis::router`).
//!
//! Calls queue their request *before* they return, and the returned future
//! only waits for the answer: a connection can have several publishes in
//! flight, and they are applied in the order the calls were made.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use shardchat_common::ChannelName;
use tokio::sync::oneshot;

use crate::dm::{Conversations, DmRequest};
use crate::error::{ChatError, ChatResult};
use crate::owner::{OpOutcome, Owner, PublishRequest, Published, RequestContext, Respond};

pub trait Cluster: Send + Sync + 'static {
    /// Queues a message for sequencing and storage; resolves to its id.
    fn publish(&self, req: PublishRequest) -> BoxFuture<'static, ChatResult<Published>>;
    /// Queues the membership of `user` (connected to this node); resolves to the member count.
    fn join(&self, channel: &ChannelName, user: &str) -> BoxFuture<'static, ChatResult<usize>>;
    /// `user`'s last connection on this node left `channel`.
    fn leave(&self, channel: &ChannelName, user: &str) -> BoxFuture<'static, ChatResult<()>>;
    /// Queues a direct message with its conversation's owner; resolves to its id.
    fn dm(&self, req: DmRequest) -> BoxFuture<'static, ChatResult<Published>>;
    /// Distinct members wherever they are connected, sorted.
    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>>;
    /// Channels with members and their member counts.
    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>>;
}

/// Calls `queue` with a responder and returns the future of its answer.
pub fn answer(queue: impl FnOnce(Respond)) -> BoxFuture<'static, ChatResult<OpOutcome>> {
    let (tx, rx) = oneshot::channel();
    queue(Box::new(move |outcome| {
        let _ = tx.send(outcome);
    }));
    async move { rx.await.unwrap_or_else(|_| Err(ChatError::unavailable("the owner stopped"))) }.boxed()
}

/// The answer of a publish.
pub fn published(
    outcome: BoxFuture<'static, ChatResult<OpOutcome>>,
) -> BoxFuture<'static, ChatResult<Published>> {
    async move {
        match outcome.await? {
            OpOutcome::Published(p) => Ok(p),
            other => Err(ChatError::unavailable(format!("unexpected answer to a publish: {other:?}"))),
        }
    }
    .boxed()
}

/// The answer of a join.
pub fn joined(outcome: BoxFuture<'static, ChatResult<OpOutcome>>) -> BoxFuture<'static, ChatResult<usize>> {
    async move {
        match outcome.await? {
            OpOutcome::Joined { members } => Ok(members),
            other => Err(ChatError::unavailable(format!("unexpected answer to a join: {other:?}"))),
        }
    }
    .boxed()
}

/// The answer of a leave.
pub fn left(outcome: BoxFuture<'static, ChatResult<OpOutcome>>) -> BoxFuture<'static, ChatResult<()>> {
    async move { outcome.await.map(|_| ()) }.boxed()
}

/// The embedded single-node cluster: this node owns every channel.
pub struct LocalCluster {
    owner: Arc<Owner>,
    conversations: Arc<Conversations>,
    node_id: Arc<str>,
}

impl LocalCluster {
    pub fn new(owner: Arc<Owner>, conversations: Arc<Conversations>, node_id: Arc<str>) -> Self {
        Self { owner, conversations, node_id }
    }
}

impl Cluster for LocalCluster {
    fn publish(&self, req: PublishRequest) -> BoxFuture<'static, ChatResult<Published>> {
        published(answer(|respond| self.owner.publish(req, RequestContext::default(), respond)))
    }

    fn join(&self, channel: &ChannelName, user: &str) -> BoxFuture<'static, ChatResult<usize>> {
        joined(answer(|respond| self.owner.join(channel, user, &self.node_id, respond)))
    }

    fn leave(&self, channel: &ChannelName, user: &str) -> BoxFuture<'static, ChatResult<()>> {
        left(answer(|respond| self.owner.leave(channel, user, &self.node_id, respond)))
    }

    fn dm(&self, req: DmRequest) -> BoxFuture<'static, ChatResult<Published>> {
        published(answer(|respond| self.conversations.send(req, RequestContext::default(), respond)))
    }

    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>> {
        self.owner.backend().members(channel)
    }

    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>> {
        self.owner.backend().member_counts()
    }
}
