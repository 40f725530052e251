//! The channel owner: for each channel the ring gives this node it applies
//! the channel's rules (member limit, rate limit, moderation) and queues the
//! result on the [`sequencer`], which hands batches to an
//! [`OwnerBackend`](backend::OwnerBackend) that sequences, stores and fans
//! out atomically — in memory for the embedded mode, with one Lua script
//! call per batch in Redis for the cluster mode.
//!
//! Every entry point queues synchronously and answers through a callback,
//! so callers can pipeline: an edge may have many requests of one
//! connection in flight, and their order is the order they were queued.

pub mod backend;
pub mod sequencer;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value};
use shardchat_common::protocol::{ErrorCode, Nonce};
use shardchat_common::{ChannelName, RateLimit};

use crate::clock::now_micros;
use crate::directory::Directory;
use crate::error::{ChatError, ChatResult};
use crate::frames::PushTemplate;
use crate::history::Draft;
use crate::moderation::Moderator;
use backend::{Dedup, PublishOp, ReadyOp};
use sequencer::{ChannelSettings, ModerationSlot, Pending, Sequencer};
pub use sequencer::{OpOutcome, Published, Respond};

/// A publish as the owner receives it.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: ChannelName,
    pub from: Arc<str>,
    pub text: String,
    pub meta: Option<Map<String, Value>>,
    pub nonce: Option<Nonce>,
}

/// Where a request came from, as far as storage cares.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// The edge request id (`<edge>:<n>`), the dedup key when there is no nonce.
    pub request_id: Option<String>,
    /// Redis-clock ms after which the request must not be applied.
    pub deadline_ms: Option<u64>,
}

pub struct Owner {
    sequencer: Arc<Sequencer>,
    directory: Arc<Directory>,
    moderator: Arc<Moderator>,
    limiters: Mutex<HashMap<ChannelName, Arc<(RateLimit, DefaultDirectRateLimiter)>>>,
}

impl Owner {
    pub fn new(sequencer: Arc<Sequencer>, directory: Arc<Directory>, moderator: Arc<Moderator>) -> Self {
        Self { sequencer, directory, moderator, limiters: Mutex::new(HashMap::new()) }
    }

    pub fn backend(&self) -> &Arc<dyn backend::OwnerBackend> {
        self.sequencer.backend()
    }

    fn settings(&self, config: &shardchat_common::ChannelConfig) -> ChannelSettings {
        ChannelSettings {
            retention: config.retention,
            max_members: self.directory.max_members(config),
            dynamic: !self.directory.is_declared(&config.name),
        }
    }

    /// Checks the channel rate limit and moderation, then queues the publish.
    #[tracing::instrument(level = "debug", skip_all, fields(channel = %req.channel, from = %req.from))]
    pub fn publish(self: &Arc<Self>, req: PublishRequest, ctx: RequestContext, respond: Respond) {
        let config = match self.directory.resolve(&req.channel) {
            Ok(c) => c,
            Err(e) => return respond(Err(e)),
        };
        if let Some(limit) = config.rate_limit
            && let Err(e) = self.check_channel_rate(&req.channel, limit)
        {
            return respond(Err(e));
        }
        let settings = self.settings(&config);
        let mode = self.directory.moderation(&config);
        let channel = req.channel.clone();
        if !self.moderator.needs_service(mode) {
            let pending =
                self.moderator.moderate_now(mode, req.text.clone()).map(|text| ready(req, ctx, text));
            return match pending {
                Ok(op) => self.sequencer.submit(&channel, settings, Pending::Ready(op), respond),
                Err(e) => respond(Err(e)),
            };
        }
        // The external service decides in the background; the channel's later
        // operations wait behind this one, so their order is kept.
        let slot: ModerationSlot = Arc::new(Mutex::new(None));
        self.sequencer.submit(&channel, settings, Pending::Moderating(slot.clone()), respond);
        let this = self.clone();
        tokio::spawn(async move {
            let text = this.moderator.moderate(mode, req.channel.as_str(), &req.from, req.text.clone()).await;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(text.map(|text| ready(req, ctx, text)));
            this.sequencer.moderation_done(&channel);
        });
    }

    fn check_channel_rate(&self, channel: &ChannelName, limit: RateLimit) -> ChatResult<()> {
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
            let entry =
                limiters.entry(channel.clone()).or_insert_with(|| Arc::new((limit, channel_limiter(limit))));
            if entry.0 != limit {
                *entry = Arc::new((limit, channel_limiter(limit)));
            }
            entry.clone()
        };
        limiter.1.check().map_err(|_| {
            ChatError::new(ErrorCode::RateLimited, "this channel's message rate limit is reached")
        })
    }

    /// Queues a membership of `user` on `edge` (member limit, presence `join`).
    #[tracing::instrument(level = "debug", skip(self, respond))]
    pub fn join(&self, channel: &ChannelName, user: &str, edge: &str, respond: Respond) {
        match self.directory.resolve(channel) {
            Ok(config) => self.sequencer.submit(
                channel,
                self.settings(&config),
                Pending::Ready(ReadyOp::Join { user: Arc::from(user), edge: Arc::from(edge) }),
                respond,
            ),
            Err(e) => respond(Err(e)),
        }
    }

    /// Queues the end of `user`'s membership on `edge` (presence `leave` when it was the last).
    #[tracing::instrument(level = "debug", skip(self, respond))]
    pub fn leave(&self, channel: &ChannelName, user: &str, edge: &str, respond: Respond) {
        // A leave must go through even when the channel's config vanished meanwhile.
        let config = self
            .directory
            .resolve(channel)
            .unwrap_or_else(|_| Arc::new(shardchat_common::ChannelConfig::dynamic(channel.clone())));
        self.sequencer.submit(
            channel,
            self.settings(&config),
            Pending::Ready(ReadyOp::Leave { user: Arc::from(user), edge: Arc::from(edge) }),
            respond,
        );
    }

    /// Forgets per-channel state of channels this node no longer owns.
    pub fn retain_channels(&self, still_owned: impl Fn(&ChannelName) -> bool) {
        self.limiters.lock().unwrap_or_else(|p| p.into_inner()).retain(|c, _| still_owned(c));
    }
}

/// The op for `req` once moderation produced `text`.
fn ready(req: PublishRequest, ctx: RequestContext, text: String) -> ReadyOp {
    let meta_json = req.meta.as_ref().map(|m| serde_json::to_string(m).unwrap_or_else(|_| "{}".into()));
    let push = PushTemplate::new(&req.channel, &req.from, &text, meta_json.as_deref());
    let dedup = match (&req.nonce, ctx.request_id) {
        (Some(n), _) => Dedup::Nonce(n.as_str().to_string()),
        (None, Some(r)) => Dedup::Request(r),
        (None, None) => Dedup::None,
    };
    ReadyOp::Publish(Box::new(PublishOp {
        draft: Draft {
            channel: req.channel,
            from: req.from,
            text,
            meta: req.meta,
            accepted_at_micros: now_micros(),
        },
        meta_json,
        push,
        dedup,
        deadline_ms: ctx.deadline_ms,
    }))
}

fn channel_limiter(limit: RateLimit) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst).unwrap_or(rate);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

/// The error a full channel gets.
pub fn channel_full(channel: &ChannelName) -> ChatError {
    ChatError::new(ErrorCode::ChannelFull, format!("channel {channel} has reached its member limit"))
}

/// The error a join to one undeclared channel too many gets.
pub fn too_many_channels(channel: &ChannelName) -> ChatError {
    ChatError::forbidden(format!(
        "channel {channel} is not declared and this installation's limit of channels created on demand is reached; declare it with a ChatChannel"
    ))
}
