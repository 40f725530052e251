//! The owner side of cluster routing: requests that reach this node's inbox
//! are queued on the local owner (or forwarded when the channel moved),
//! and each outcome goes back to the requesting edge as an ack, batched by
//! the outbox.

use std::sync::Arc;

use shardchat_common::protocol::{ErrorBody, Nonce};
use shardchat_common::redis_layout::inbox::{
    Ack, AckValue, DmRequest as WireDmRequest, OwnerRequest, RequestKind,
};
use shardchat_common::redis_layout::{conversation_id, conversation_ring_key, node_of_edge};

use super::outbox::Outbox;
use super::ring_view::RingView;
use crate::dm::{Conversations, DmRequest};
use crate::error::ChatError;
use crate::owner::{OpOutcome, Owner, PublishRequest, RequestContext, Respond};

/// Forwards allowed for one request while the ring settles.
const MAX_HOPS: u32 = 3;

pub struct OwnerServer {
    owner: Arc<Owner>,
    conversations: Arc<Conversations>,
    ring: Arc<RingView>,
    outbox: Arc<Outbox>,
}

impl OwnerServer {
    pub fn new(
        owner: Arc<Owner>,
        conversations: Arc<Conversations>,
        ring: Arc<RingView>,
        outbox: Arc<Outbox>,
    ) -> Self {
        Self { owner, conversations, ring, outbox }
    }

    /// Queues every direct message (in order) with its conversation's owner
    /// — this node, or the one it moved to.
    pub fn serve_dms(&self, requests: Vec<WireDmRequest>) {
        for r in requests {
            let ring_key = conversation_ring_key(&conversation_id(&r.from, &r.to));
            if !self.ring.is_mine(&ring_key) {
                if let Some(owner) = self.ring.owner(&ring_key)
                    && r.hops < MAX_HOPS
                {
                    self.outbox.dm(&owner, WireDmRequest { hops: r.hops + 1, ..r });
                    continue;
                }
                let error = ChatError::unavailable("conversation ownership is moving; try again");
                self.ack(&r.edge, r.req, Err(error.body()));
                continue;
            }
            let respond = self.responder(&r.edge, r.req.clone());
            let nonce = match r.nonce.map(|n| Nonce::new(&n)).transpose() {
                Ok(n) => n,
                Err(e) => {
                    respond(Err(ChatError::bad_request(e.to_string())));
                    continue;
                }
            };
            let ctx = RequestContext { request_id: Some(r.req), deadline_ms: Some(r.deadline_ms) };
            let dm = DmRequest {
                from: Arc::from(r.from.as_str()),
                to: r.to,
                text: r.text,
                meta: r.meta,
                nonce,
                system: r.system,
            };
            self.conversations.send(dm, ctx, respond);
        }
    }

    /// Queues every request (in order); never waits.
    pub fn serve(&self, requests: Vec<OwnerRequest>) {
        for r in requests {
            self.serve_one(r);
        }
    }

    fn serve_one(&self, r: OwnerRequest) {
        if !self.ring.is_mine(r.channel.as_str()) {
            if let Some(owner) = self.ring.owner(r.channel.as_str())
                && r.hops < MAX_HOPS
            {
                tracing::debug!(channel = %r.channel, %owner, "forwarding a request for a channel that moved");
                self.outbox.request(&owner, OwnerRequest { hops: r.hops + 1, ..r });
                return;
            }
            let error = ChatError::unavailable("channel ownership is moving; try again");
            return self.ack(&r.edge, r.req, Err(error.body()));
        }
        let respond = self.responder(&r.edge, r.req.clone());
        let ctx = RequestContext { request_id: Some(r.req), deadline_ms: Some(r.deadline_ms) };
        match r.kind {
            RequestKind::Publish { text, meta, nonce } => {
                let nonce = match nonce.map(|n| Nonce::new(&n)).transpose() {
                    Ok(n) => n,
                    Err(e) => return respond(Err(ChatError::bad_request(e.to_string()))),
                };
                let req = PublishRequest {
                    channel: r.channel,
                    from: Arc::from(r.user.as_str()),
                    text,
                    meta,
                    nonce,
                };
                self.owner.publish(req, ctx, respond);
            }
            RequestKind::Join => self.owner.join(&r.channel, &r.user, &r.edge, respond),
            RequestKind::Leave => self.owner.leave(&r.channel, &r.user, &r.edge, respond),
        }
    }

    fn responder(&self, edge: &str, req: String) -> Respond {
        let outbox = self.outbox.clone();
        let node = node_of_edge(edge).to_string();
        Box::new(move |outcome| {
            let result = outcome
                .map(|o| match o {
                    OpOutcome::Published(p) => AckValue { value: p.id.to_string(), duplicate: p.duplicate },
                    OpOutcome::Joined { members } => {
                        AckValue { value: members.to_string(), duplicate: false }
                    }
                    OpOutcome::Left => AckValue::default(),
                })
                .map_err(|e| e.body());
            outbox.ack(&node, Ack { req, result });
        })
    }

    fn ack(&self, edge: &str, req: String, result: Result<AckValue, ErrorBody>) {
        self.outbox.ack(node_of_edge(edge), Ack { req, result });
    }
}
