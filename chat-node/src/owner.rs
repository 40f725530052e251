//! The channel owner: for each channel the ring gives this node it applies
//! the channel's rules (member limit, rate limit, moderation) and hands the
//! result to an [`OwnerBackend`], which sequences, stores and fans out
//! atomically — in memory for the embedded mode, with Lua scripts in Redis
//! for the cluster mode.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value};
use shardchat_common::protocol::ErrorCode;
use shardchat_common::{ChannelName, RateLimit, Retention};

use crate::clock::now_micros;
use crate::directory::Directory;
use crate::error::{ChatError, ChatResult};
use crate::history::{Draft, StoredMessage};
use crate::metrics::Metrics;
use crate::moderation::Moderator;

/// Sequencing, storage, membership and fan-out of owned channels. Each call
/// is atomic: a message's id order is the order edges receive it in.
pub trait OwnerBackend: Send + Sync + 'static {
    /// Assigns the next id, stores the message with `retention`, and fans it
    /// out to every edge with members in the channel. A `dedup` key makes a
    /// retried commit return the first one's message instead of storing twice.
    fn commit<'a>(
        &'a self,
        draft: Draft,
        retention: Retention,
        dedup: Option<&'a str>,
    ) -> BoxFuture<'a, ChatResult<Arc<StoredMessage>>>;

    /// Records that `user` has connections on `edge`; refuses with
    /// `channel_full` when the user is new and `max_members` are there.
    /// Fans out presence `join` when the user was not a member anywhere.
    /// Returns the number of distinct members.
    fn join<'a>(
        &'a self,
        channel: &'a ChannelName,
        user: &'a str,
        edge: &'a str,
        max_members: u32,
    ) -> BoxFuture<'a, ChatResult<usize>>;

    /// Records that `user` has no connection left on `edge`; fans out
    /// presence `leave` when that was the user's last edge.
    fn leave<'a>(
        &'a self,
        channel: &'a ChannelName,
        user: &'a str,
        edge: &'a str,
    ) -> BoxFuture<'a, ChatResult<()>>;

    /// Distinct members, sorted.
    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>>;

    /// Channels with members, and how many.
    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>>;
}

/// A publish as the owner receives it.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: ChannelName,
    pub from: Arc<str>,
    pub text: String,
    pub meta: Option<Map<String, Value>>,
}

pub struct Owner {
    backend: Arc<dyn OwnerBackend>,
    directory: Arc<Directory>,
    moderator: Arc<Moderator>,
    metrics: Arc<Metrics>,
    limiters: Mutex<HashMap<ChannelName, Arc<(RateLimit, DefaultDirectRateLimiter)>>>,
}

impl Owner {
    pub fn new(
        backend: Arc<dyn OwnerBackend>,
        directory: Arc<Directory>,
        moderator: Arc<Moderator>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { backend, directory, moderator, metrics, limiters: Mutex::new(HashMap::new()) }
    }

    pub fn backend(&self) -> &Arc<dyn OwnerBackend> {
        &self.backend
    }

    /// Checks the channel rate limit and moderation, then commits.
    #[tracing::instrument(level = "debug", skip_all, fields(channel = %req.channel, from = %req.from))]
    pub async fn publish(&self, req: PublishRequest, dedup: Option<&str>) -> ChatResult<Arc<StoredMessage>> {
        let config = self.directory.resolve(&req.channel)?;
        if let Some(limit) = config.rate_limit {
            self.check_channel_rate(&req.channel, limit)?;
        }
        let mode = self.directory.moderation(&config);
        let text = self.moderator.moderate(mode, req.channel.as_str(), &req.from, req.text).await?;
        let draft = Draft {
            channel: req.channel,
            from: req.from,
            text,
            meta: req.meta,
            accepted_at_micros: now_micros(),
        };
        let stored = self.backend.commit(draft, config.retention, dedup).await?;
        self.metrics.published.inc();
        Ok(stored)
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

    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn join(&self, channel: &ChannelName, user: &str, edge: &str) -> ChatResult<usize> {
        let config = self.directory.resolve(channel)?;
        self.backend.join(channel, user, edge, self.directory.max_members(&config)).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn leave(&self, channel: &ChannelName, user: &str, edge: &str) -> ChatResult<()> {
        self.backend.leave(channel, user, edge).await
    }

    /// Forgets per-channel state of channels this node no longer owns.
    pub fn retain_channels(&self, still_owned: impl Fn(&ChannelName) -> bool) {
        self.limiters.lock().unwrap_or_else(|p| p.into_inner()).retain(|c, _| still_owned(c));
    }
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
