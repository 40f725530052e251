//! Edge → owner routing in cluster mode. A call for a channel this node
//! owns is queued on the local owner; otherwise it becomes a request on the
//! owner's inbox (batched by the outbox) and waits for the owner's ack on
//! this node's inbox.
//!
//! Requests carry a deadline in Redis's clock, which the owner's commit
//! script enforces. An edge that hears nothing waits until that deadline has
//! certainly passed, then looks the publish's dedup record up: so its
//! answer is exact — the message id, or `unavailable` meaning not stored —
//! even when an ack was lost or late.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use futures_util::future::BoxFuture;
use shardchat_common::ChannelName;
use shardchat_common::protocol::ErrorCode;
use shardchat_common::redis_layout::inbox::{Ack, DmRequest as WireDmRequest, OwnerRequest, RequestKind};
use shardchat_common::redis_layout::{conversation_id, conversation_ring_key};
use tokio::time::Instant;

use super::RedisCtx;
use super::backend::RedisBackend;
use super::outbox::Outbox;
use super::ring_view::RingView;
use crate::cluster::{Cluster, answer, joined, left, published};
use crate::dm::Conversations;
use crate::error::{ChatError, ChatResult};
use crate::owner::{OpOutcome, Owner, PublishRequest, Published, RequestContext, Respond};

/// Margin past a request's deadline before the edge gives up on its ack.
const GIVE_UP_MARGIN: Duration = Duration::from_millis(500);

/// What a waiting call needs to finish without an ack.
enum WaitKind {
    /// Look this dedup record up after the deadline.
    Publish {
        record: String,
    },
    Join,
    Leave,
}

struct Waiter {
    respond: Respond,
    give_up_at: Instant,
    kind: WaitKind,
}

/// What a router routes to.
pub struct RouterParts {
    pub redis: Arc<RedisCtx>,
    pub owner: Arc<Owner>,
    pub backend: Arc<RedisBackend>,
    pub ring: Arc<RingView>,
    pub outbox: Arc<Outbox>,
    pub conversations: Arc<Conversations>,
}

pub struct Router {
    redis: Arc<RedisCtx>,
    owner: Arc<Owner>,
    backend: Arc<RedisBackend>,
    ring: Arc<RingView>,
    outbox: Arc<Outbox>,
    conversations: Arc<Conversations>,
    node_id: Arc<str>,
    edge_id: Arc<str>,
    pending: Mutex<HashMap<String, Waiter>>,
    next_req: AtomicU64,
}

impl Router {
    pub fn new(parts: RouterParts, node_id: Arc<str>, edge_id: Arc<str>) -> Arc<Router> {
        let RouterParts { redis, owner, backend, ring, outbox, conversations } = parts;
        let router = Arc::new(Router {
            redis,
            owner,
            backend,
            ring,
            outbox: outbox.clone(),
            conversations,
            node_id,
            edge_id,
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&router);
        outbox.on_refused(Arc::new(move |ids, error| {
            if let Some(router) = weak.upgrade() {
                router.fail(ids, error);
            }
        }));
        router
    }

    pub fn edge_id(&self) -> &Arc<str> {
        &self.edge_id
    }

    pub fn backend(&self) -> &Arc<RedisBackend> {
        &self.backend
    }

    fn owner_of(&self, channel: &ChannelName) -> ChatResult<String> {
        self.ring
            .owner(channel.as_str())
            .ok_or_else(|| ChatError::unavailable("no chat nodes in the ring yet"))
    }

    /// A request id and its deadline (Redis clock), or `unavailable` while
    /// this node does not know Redis's time (Redis unreachable since start).
    fn context(&self) -> ChatResult<RequestContext> {
        let now = self.redis.clock.now_ms().ok_or_else(|| {
            ChatError::unavailable("storage is unavailable, try again: no contact with Redis yet")
        })?;
        let req = format!("{}:{}", self.edge_id, self.next_req.fetch_add(1, Ordering::Relaxed));
        let timeout = self.redis.settings.request_timeout.as_millis() as u64;
        Ok(RequestContext { request_id: Some(req), deadline_ms: Some(now + timeout) })
    }

    /// Routes one call: to the local owner, or as a request to a remote one.
    fn route(
        &self,
        channel: &ChannelName,
        kind: RequestKind,
        user: &str,
        local: impl FnOnce(RequestContext, Respond),
        respond: Respond,
    ) {
        let (owner, ctx) = match self.owner_of(channel).and_then(|o| Ok((o, self.context()?))) {
            Ok(v) => v,
            Err(e) => return respond(Err(e)),
        };
        if owner == *self.node_id {
            return local(ctx, respond);
        }
        let (Some(req), Some(deadline_ms)) = (ctx.request_id, ctx.deadline_ms) else {
            return respond(Err(ChatError::unavailable("no request context")));
        };
        let wait = match &kind {
            RequestKind::Publish { nonce, .. } => WaitKind::Publish {
                record: match nonce {
                    Some(n) => self.redis.keys.nonce(channel.as_str(), user, n),
                    None => self.redis.keys.request(&req),
                },
            },
            RequestKind::Join => WaitKind::Join,
            RequestKind::Leave => WaitKind::Leave,
        };
        self.await_ack(&req, wait, respond);
        let request = OwnerRequest {
            req,
            edge: self.edge_id.to_string(),
            channel: channel.clone(),
            user: user.to_string(),
            deadline_ms,
            hops: 0,
            kind,
        };
        self.outbox.request(&owner, request);
    }

    /// Keeps `respond` until the ack of request `req` comes, or its deadline passes.
    fn await_ack(&self, req: &str, kind: WaitKind, respond: Respond) {
        let give_up_at = Instant::now()
            + self.redis.settings.request_timeout
            + self.redis.clock.uncertainty()
            + GIVE_UP_MARGIN;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(req.to_string(), Waiter { respond, give_up_at, kind });
    }

    /// Routes a direct message to its conversation's owner.
    fn route_dm(&self, dm: crate::dm::DmRequest, respond: Respond) {
        let conversation = conversation_id(&dm.from, &dm.to);
        let owner = match self.ring.owner(&conversation_ring_key(&conversation)) {
            Some(o) => o,
            None => return respond(Err(ChatError::unavailable("no chat nodes in the ring yet"))),
        };
        let ctx = match self.context() {
            Ok(c) => c,
            Err(e) => return respond(Err(e)),
        };
        if owner == *self.node_id {
            return self.conversations.send(dm, ctx, respond);
        }
        let (Some(req), Some(deadline_ms)) = (ctx.request_id, ctx.deadline_ms) else {
            return respond(Err(ChatError::unavailable("no request context")));
        };
        let record = match &dm.nonce {
            Some(n) => self.redis.keys.dm_nonce(&conversation, &dm.from, n.as_str()),
            None => self.redis.keys.request(&req),
        };
        self.await_ack(&req, WaitKind::Publish { record }, respond);
        let request = WireDmRequest {
            req,
            edge: self.edge_id.to_string(),
            from: dm.from.to_string(),
            to: dm.to,
            text: dm.text,
            meta: dm.meta,
            nonce: dm.nonce.map(|n| n.as_str().to_string()),
            system: dm.system,
            deadline_ms,
            hops: 0,
        };
        self.outbox.dm(&owner, request);
    }

    /// Acks from owners, read from this node's inbox.
    pub fn acks(&self, acks: Vec<Ack>) {
        let mut done = Vec::with_capacity(acks.len());
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for ack in acks {
                if let Some(w) = pending.remove(&ack.req) {
                    done.push((w, ack));
                }
            }
        }
        for (w, ack) in done {
            let outcome = match ack.result {
                Err(e) => Err(ChatError::from(e)),
                Ok(v) => match w.kind {
                    WaitKind::Publish { .. } => v
                        .value
                        .parse()
                        .map(|id| OpOutcome::Published(Published { id, duplicate: v.duplicate }))
                        .map_err(|_| ChatError::unavailable("the owner answered with a malformed id")),
                    WaitKind::Join => v
                        .value
                        .parse()
                        .map(|members| OpOutcome::Joined { members })
                        .map_err(|_| ChatError::unavailable("the owner answered with a malformed count")),
                    WaitKind::Leave => Ok(OpOutcome::Left),
                },
            };
            (w.respond)(outcome);
        }
    }

    /// Requests that certainly never reached their owner.
    fn fail(&self, ids: Vec<String>, error: ChatError) {
        let failed: Vec<Waiter> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            ids.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for w in failed {
            (w.respond)(Err(error.clone()));
        }
    }

    /// Finishes calls whose ack did not come in time; runs until the process ends.
    pub async fn give_up_late_calls(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let late: Vec<Waiter> = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let ids: Vec<String> =
                    pending.iter().filter(|(_, w)| w.give_up_at <= now).map(|(id, _)| id.clone()).collect();
                ids.iter().filter_map(|id| pending.remove(id)).collect()
            };
            if late.is_empty() {
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move { this.finish_late(late).await });
        }
    }

    /// The owner can no longer act on these requests: a publish was stored
    /// exactly when its dedup record exists.
    async fn finish_late(&self, late: Vec<Waiter>) {
        let records: Vec<&str> = late
            .iter()
            .filter_map(|w| match &w.kind {
                WaitKind::Publish { record } => Some(record.as_str()),
                _ => None,
            })
            .collect();
        let found: Result<Vec<Option<String>>, _> = if records.is_empty() {
            Ok(Vec::new())
        } else {
            let pipeline = self.redis.client.pipeline();
            for r in &records {
                let _: Result<(), _> = pipeline.get(*r).await;
            }
            pipeline.all().await
        };
        let mut found = found.map(|v| v.into_iter());
        for w in late {
            let outcome = match w.kind {
                WaitKind::Publish { .. } => match found.as_mut() {
                    Ok(values) => match values.next().flatten().and_then(|id| id.parse().ok()) {
                        Some(id) => Ok(OpOutcome::Published(Published { id, duplicate: false })),
                        None => Err(ChatError::unavailable(
                            "the channel's owner did not answer in time; the message was not stored",
                        )),
                    },
                    Err(e) => Err(ChatError::new(
                        ErrorCode::Timeout,
                        format!(
                            "the channel's owner did not answer and Redis could not be asked whether the message was stored ({}); retry with the same nonce",
                            e.kind().to_str()
                        ),
                    )),
                },
                WaitKind::Join | WaitKind::Leave => {
                    Err(ChatError::unavailable("the channel's owner did not answer in time"))
                }
            };
            (w.respond)(outcome);
        }
    }

    /// Re-sends this edge's memberships of `channel` (after Redis lost
    /// them); returns the users whose registration failed.
    pub async fn reregister(&self, channel: &ChannelName, users: Vec<String>) -> Vec<String> {
        let calls = users.into_iter().map(|user| {
            let call = self.join(channel, &user);
            async move {
                match call.await {
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(%channel, %user, error = %e, "re-registering a membership failed");
                        Some(user)
                    }
                }
            }
        });
        futures_util::future::join_all(calls).await.into_iter().flatten().collect()
    }
}

impl Cluster for Router {
    fn publish(&self, req: PublishRequest) -> BoxFuture<'static, ChatResult<Published>> {
        let kind = RequestKind::Publish {
            text: req.text.clone(),
            meta: req.meta.clone(),
            nonce: req.nonce.as_ref().map(|n| n.as_str().to_string()),
        };
        let channel = req.channel.clone();
        let user = req.from.clone();
        let owner = self.owner.clone();
        published(answer(|respond| {
            self.route(&channel, kind, &user, move |ctx, respond| owner.publish(req, ctx, respond), respond)
        }))
    }

    fn join(&self, channel: &ChannelName, user: &str) -> BoxFuture<'static, ChatResult<usize>> {
        let edge = self.edge_id.clone();
        joined(answer(|respond| {
            self.route(
                channel,
                RequestKind::Join,
                user,
                |_, respond| self.owner.join(channel, user, &edge, respond),
                respond,
            )
        }))
    }

    fn leave(&self, channel: &ChannelName, user: &str) -> BoxFuture<'static, ChatResult<()>> {
        let edge = self.edge_id.clone();
        left(answer(|respond| {
            self.route(
                channel,
                RequestKind::Leave,
                user,
                |_, respond| self.owner.leave(channel, user, &edge, respond),
                respond,
            )
        }))
    }

    fn dm(&self, req: crate::dm::DmRequest) -> BoxFuture<'static, ChatResult<Published>> {
        published(answer(|respond| self.route_dm(req, respond)))
    }

    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>> {
        use crate::owner::backend::OwnerBackend;
        self.backend.members(channel)
    }

    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>> {
        use crate::owner::backend::OwnerBackend;
        self.backend.member_counts()
    }
}
