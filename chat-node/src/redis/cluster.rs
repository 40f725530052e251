//! Edge → owner routing in cluster mode. A call for a channel this node
//! owns runs locally; otherwise it becomes a request on the owner's inbox
//! stream and waits (bounded) for the owner's ack on this node's inbox.
//! Requests carry a deadline, so an owner never acts on a request the edge
//! has already answered with `unavailable`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use shardchat_common::{ChannelName, MessageId};
use tokio::sync::oneshot;

use super::RedisCtx;
use super::backend::RedisBackend;
use super::inbox::{self, Ack, InboxHandler, OwnerRequest, RequestKind};
use super::ring_view::RingView;
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::error::{ChatError, ChatResult};
use crate::owner::{Owner, OwnerBackend, PublishRequest};

/// Forwards allowed for one request while the ring settles.
const MAX_HOPS: u32 = 3;

pub struct RedisCluster {
    redis: Arc<RedisCtx>,
    owner: Arc<Owner>,
    backend: Arc<RedisBackend>,
    ring: Arc<RingView>,
    node_id: Arc<str>,
    edge_id: Arc<str>,
    pending: Mutex<HashMap<String, oneshot::Sender<Result<String, ChatError>>>>,
    next_req: AtomicU64,
}

impl RedisCluster {
    pub fn new(
        redis: Arc<RedisCtx>,
        owner: Arc<Owner>,
        backend: Arc<RedisBackend>,
        ring: Arc<RingView>,
        node_id: Arc<str>,
        edge_id: Arc<str>,
    ) -> Self {
        Self {
            redis,
            owner,
            backend,
            ring,
            node_id,
            edge_id,
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
        }
    }

    pub fn edge_id(&self) -> &Arc<str> {
        &self.edge_id
    }

    fn owner_of(&self, channel: &ChannelName) -> ChatResult<String> {
        self.ring
            .owner(channel.as_str())
            .ok_or_else(|| ChatError::unavailable("no chat nodes in the ring yet"))
    }

    /// Sends `kind` to `owner` and waits for its ack.
    async fn request(
        &self,
        owner: &str,
        kind: RequestKind,
        channel: &ChannelName,
        user: &str,
    ) -> ChatResult<String> {
        let req = format!("{}:{}", self.edge_id, self.next_req.fetch_add(1, Ordering::Relaxed));
        let timeout = self.redis.settings.request_timeout;
        let request = OwnerRequest {
            kind,
            req: req.clone(),
            edge: self.edge_id.to_string(),
            channel: channel.clone(),
            user: user.to_string(),
            deadline_ms: now_ms() + timeout.as_millis() as u64,
            hops: 0,
        };
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(req.clone(), tx);
        let outcome = async {
            inbox::send(&self.redis, owner, request.encode()).await.map_err(super::unavailable)?;
            // The owner drops requests past their deadline; wait a little
            // longer than that for an ack already on its way.
            match tokio::time::timeout(timeout + std::time::Duration::from_millis(500), rx).await {
                Ok(Ok(result)) => result,
                _ => Err(ChatError::unavailable(format!("the owner of {channel} did not answer in time"))),
            }
        }
        .await;
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&req);
        outcome
    }

    /// Serves one request addressed to this node as owner; `None` when no
    /// ack is due (forwarded, or already past its deadline).
    async fn serve_one(&self, r: OwnerRequest) -> Option<Ack> {
        if now_ms() > r.deadline_ms {
            tracing::debug!(req = %r.req, "dropping a request past its deadline");
            return None;
        }
        if !self.ring.is_mine(r.channel.as_str()) {
            match self.ring.owner(r.channel.as_str()) {
                Some(owner) if r.hops < MAX_HOPS => {
                    let forwarded = OwnerRequest { hops: r.hops + 1, ..r.clone() };
                    match inbox::send(&self.redis, &owner, forwarded.encode()).await {
                        Ok(()) => return None,
                        Err(e) => tracing::warn!(error = %e, "forwarding a request failed"),
                    }
                }
                _ => {}
            }
            return Some(Ack {
                req: r.req,
                result: Err(ChatError::unavailable("channel ownership is moving; try again").body()),
            });
        }
        let result = match r.kind {
            RequestKind::Publish { text, meta } => {
                let meta = (!meta.is_empty())
                    .then(|| serde_json::from_str::<Map<String, Value>>(&meta).ok())
                    .flatten();
                let req = PublishRequest { channel: r.channel, from: Arc::from(r.user.as_str()), text, meta };
                self.owner.publish(req, Some(&r.req)).await.map(|m| m.id().to_string())
            }
            RequestKind::Join => self.owner.join(&r.channel, &r.user, &r.edge).await.map(|n| n.to_string()),
            RequestKind::Leave => {
                self.owner.leave(&r.channel, &r.user, &r.edge).await.map(|()| String::new())
            }
        };
        Some(Ack { req: r.req, result: result.map_err(|e| e.body()) })
    }

    /// Re-sends this edge's memberships (after Redis lost them).
    pub async fn reregister(&self, memberships: Vec<(ChannelName, Vec<String>)>) {
        for (channel, users) in memberships {
            for user in users {
                if let Err(e) = self.join(&channel, &user).await {
                    tracing::warn!(%channel, %user, error = %e, "re-registering a membership failed");
                }
            }
        }
    }

    pub fn backend(&self) -> &Arc<RedisBackend> {
        &self.backend
    }
}

impl InboxHandler for RedisCluster {
    fn serve(&self, requests: Vec<OwnerRequest>) -> BoxFuture<'_, ()> {
        async move {
            for r in requests {
                let edge_node = r.edge.split('#').next().unwrap_or(&r.edge).to_string();
                if let Some(ack) = self.serve_one(r).await
                    && let Err(e) = inbox::send(&self.redis, &edge_node, ack.encode()).await
                {
                    tracing::warn!(error = %e, "sending an ack failed");
                }
            }
        }
        .boxed()
    }

    fn ack(&self, ack: Ack) {
        let waiter = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&ack.req);
        if let Some(tx) = waiter {
            let _ = tx.send(ack.result.map_err(ChatError::from));
        }
    }

    fn close(&self, channel: ChannelName, reason: String) -> BoxFuture<'_, ()> {
        async move {
            match self.backend.close_channel(&channel, &reason).await {
                Ok(n) => tracing::info!(%channel, %reason, memberships = n, "channel closed"),
                Err(e) => tracing::warn!(%channel, error = %e, "closing a channel failed"),
            }
        }
        .boxed()
    }
}

impl Cluster for RedisCluster {
    fn publish(&self, req: PublishRequest) -> BoxFuture<'_, ChatResult<MessageId>> {
        async move {
            let owner = self.owner_of(&req.channel)?;
            if owner == *self.node_id {
                return Ok(self.owner.publish(req, None).await?.id());
            }
            let meta =
                req.meta.as_ref().map(|m| serde_json::to_string(m).unwrap_or_default()).unwrap_or_default();
            let kind = RequestKind::Publish { text: req.text, meta };
            let id = self.request(&owner, kind, &req.channel, &req.from).await?;
            id.parse().map_err(|_| ChatError::unavailable("owner answered with a malformed id"))
        }
        .boxed()
    }

    fn join<'a>(&'a self, channel: &'a ChannelName, user: &'a str) -> BoxFuture<'a, ChatResult<usize>> {
        async move {
            let owner = self.owner_of(channel)?;
            if owner == *self.node_id {
                return self.owner.join(channel, user, &self.edge_id).await;
            }
            let n = self.request(&owner, RequestKind::Join, channel, user).await?;
            n.parse().map_err(|_| ChatError::unavailable("owner answered with a malformed count"))
        }
        .boxed()
    }

    fn leave<'a>(&'a self, channel: &'a ChannelName, user: &'a str) -> BoxFuture<'a, ChatResult<()>> {
        async move {
            let owner = self.owner_of(channel)?;
            if owner == *self.node_id {
                return self.owner.leave(channel, user, &self.edge_id).await;
            }
            self.request(&owner, RequestKind::Leave, channel, user).await.map(|_| ())
        }
        .boxed()
    }

    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>> {
        self.backend.members(channel)
    }

    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>> {
        self.backend.member_counts()
    }
}
