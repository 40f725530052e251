//! What an edge asks of a channel's owner. In the embedded mode the owner is
//! always this node ([`LocalCluster`]); the Redis mode routes each call to
//! the owner the ring names.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use shardchat_common::{ChannelName, MessageId};

use crate::error::ChatResult;
use crate::owner::{Owner, PublishRequest};

pub trait Cluster: Send + Sync + 'static {
    /// Sequences and stores a message; returns its id.
    fn publish(&self, req: PublishRequest) -> BoxFuture<'_, ChatResult<MessageId>>;
    /// Registers `user` (connected to this node) as a member; returns the member count.
    fn join<'a>(&'a self, channel: &'a ChannelName, user: &'a str) -> BoxFuture<'a, ChatResult<usize>>;
    /// `user`'s last connection on this node left `channel`.
    fn leave<'a>(&'a self, channel: &'a ChannelName, user: &'a str) -> BoxFuture<'a, ChatResult<()>>;
    /// Distinct members wherever they are connected, sorted.
    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>>;
    /// Channels with members and their member counts.
    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>>;
}

/// The embedded single-node cluster: this node owns every channel.
pub struct LocalCluster {
    owner: Arc<Owner>,
    node_id: Arc<str>,
}

impl LocalCluster {
    pub fn new(owner: Arc<Owner>, node_id: Arc<str>) -> Self {
        Self { owner, node_id }
    }
}

impl Cluster for LocalCluster {
    fn publish(&self, req: PublishRequest) -> BoxFuture<'_, ChatResult<MessageId>> {
        async move { Ok(self.owner.publish(req, None).await?.id()) }.boxed()
    }

    fn join<'a>(&'a self, channel: &'a ChannelName, user: &'a str) -> BoxFuture<'a, ChatResult<usize>> {
        self.owner.join(channel, user, &self.node_id).boxed()
    }

    fn leave<'a>(&'a self, channel: &'a ChannelName, user: &'a str) -> BoxFuture<'a, ChatResult<()>> {
        self.owner.leave(channel, user, &self.node_id).boxed()
    }

    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>> {
        self.owner.backend().members(channel)
    }

    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>> {
        self.owner.backend().member_counts()
    }
}
