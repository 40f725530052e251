//! The channel owner: for each channel the ring gives this node, it checks
//! and sequences every message (rate limit, moderation, id assignment by
//! appending to history) and tracks membership, then hands each resulting
//! event to fan-out. One async lock per channel keeps a channel's events in
//! the order their ids say, across awaits on storage and fan-out.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{Map, Value};
use shardchat_common::protocol::{ErrorCode, PresenceEvent};
use shardchat_common::{ChannelName, RateLimit};

use crate::clock::now_micros;
use crate::directory::Directory;
use crate::error::{ChatError, ChatResult};
use crate::history::{Draft, HistoryStore, StoredMessage};
use crate::hub::{Event, PresenceFrame};
use crate::metrics::Metrics;
use crate::moderation::WordFilter;

/// Where the owner sends sequenced events: straight to the local hub in the
/// embedded mode, to every interested node's inbound stream in cluster mode.
pub trait Fanout: Send + Sync + 'static {
    fn fan_out<'a>(&'a self, channel: &'a ChannelName, event: Event) -> BoxFuture<'a, ChatResult<()>>;
}

/// A publish as the owner receives it.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    pub channel: ChannelName,
    pub from: Arc<str>,
    pub text: String,
    pub meta: Option<Map<String, Value>>,
}

#[derive(Default)]
struct OwnedChannel {
    /// user → the edge nodes where that user has at least one connection.
    members: HashMap<Arc<str>, HashSet<Arc<str>>>,
    limiter: Option<(RateLimit, DefaultDirectRateLimiter)>,
}

pub struct Owner {
    history: Arc<dyn HistoryStore>,
    fanout: Arc<dyn Fanout>,
    directory: Arc<Directory>,
    filter: Arc<WordFilter>,
    metrics: Arc<Metrics>,
    channels: Mutex<HashMap<ChannelName, Arc<tokio::sync::Mutex<OwnedChannel>>>>,
}

impl Owner {
    pub fn new(
        history: Arc<dyn HistoryStore>,
        fanout: Arc<dyn Fanout>,
        directory: Arc<Directory>,
        filter: Arc<WordFilter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { history, fanout, directory, filter, metrics, channels: Mutex::new(HashMap::new()) }
    }

    fn channel(&self, name: &ChannelName) -> Arc<tokio::sync::Mutex<OwnedChannel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let ch = channels.entry(name.clone()).or_default().clone();
        self.metrics.channels_owned.set(channels.len() as i64);
        ch
    }

    /// Validates, moderates, stores and fans out one message.
    #[tracing::instrument(level = "debug", skip_all, fields(channel = %req.channel, from = %req.from))]
    pub async fn publish(&self, req: PublishRequest) -> ChatResult<Arc<StoredMessage>> {
        let config = self.directory.resolve(&req.channel)?;
        let ch = self.channel(&req.channel);
        let mut ch = ch.lock().await;
        if let Some(limit) = config.rate_limit {
            let limiter = match &ch.limiter {
                Some((l, _)) if *l == limit => &ch.limiter,
                _ => {
                    ch.limiter = Some((limit, channel_limiter(limit)));
                    &ch.limiter
                }
            };
            if let Some((_, l)) = limiter
                && l.check().is_err()
            {
                return Err(ChatError::new(
                    ErrorCode::RateLimited,
                    "this channel's message rate limit is reached",
                ));
            }
        }
        let text = self.filter.apply(self.directory.moderation(&config), req.text)?;
        let draft = Draft {
            channel: req.channel.clone(),
            from: req.from,
            text,
            meta: req.meta,
            accepted_at_micros: now_micros(),
        };
        let stored = self.history.append(draft, config.retention).await?;
        self.metrics.published.inc();
        self.fanout.fan_out(&req.channel, Event::Message(stored.clone())).await?;
        Ok(stored)
    }

    /// Records that `user` has a connection in `channel` on node `edge`;
    /// returns the number of distinct members. Emits presence `join` when
    /// the user was not a member anywhere.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn join(&self, channel: &ChannelName, user: &str, edge: &str) -> ChatResult<usize> {
        let config = self.directory.resolve(channel)?;
        let ch = self.channel(channel);
        let mut ch = ch.lock().await;
        let is_new = !ch.members.contains_key(user);
        if is_new && ch.members.len() >= self.directory.max_members(&config) as usize {
            return Err(ChatError::new(
                ErrorCode::ChannelFull,
                format!("channel {channel} has reached its member limit"),
            ));
        }
        ch.members.entry(Arc::from(user)).or_default().insert(Arc::from(edge));
        if is_new {
            let presence = PresenceFrame::new(channel.clone(), PresenceEvent::Join, user);
            self.fanout.fan_out(channel, Event::Presence(presence)).await?;
        }
        Ok(ch.members.len())
    }

    /// Records that `user` has no connection left in `channel` on `edge`;
    /// emits presence `leave` when that was the user's last node.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn leave(&self, channel: &ChannelName, user: &str, edge: &str) -> ChatResult<()> {
        let ch = self.channel(channel);
        let mut guard = ch.lock().await;
        let gone = match guard.members.get_mut(user) {
            Some(edges) => {
                edges.remove(edge);
                edges.is_empty()
            }
            None => false,
        };
        if gone {
            guard.members.remove(user);
            let presence = PresenceFrame::new(channel.clone(), PresenceEvent::Leave, user);
            self.fanout.fan_out(channel, Event::Presence(presence)).await?;
        }
        if guard.members.is_empty() {
            drop(guard);
            self.forget_if_idle(channel, &ch);
        }
        Ok(())
    }

    fn forget_if_idle(&self, name: &ChannelName, ch: &Arc<tokio::sync::Mutex<OwnedChannel>>) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        // Only when nobody else holds or awaits this channel's state.
        if Arc::strong_count(ch) == 2
            && let Ok(state) = ch.try_lock()
            && state.members.is_empty()
        {
            drop(state);
            channels.remove(name);
            self.metrics.channels_owned.set(channels.len() as i64);
        }
    }

    /// Distinct members of `channel`, sorted.
    pub async fn members(&self, channel: &ChannelName) -> Vec<String> {
        let ch = self.channels.lock().unwrap_or_else(|p| p.into_inner()).get(channel).cloned();
        let Some(ch) = ch else { return Vec::new() };
        let mut members: Vec<String> = ch.lock().await.members.keys().map(|u| u.to_string()).collect();
        members.sort();
        members
    }

    /// Channels with members, with their member counts.
    pub async fn member_counts(&self) -> Vec<(ChannelName, usize)> {
        let channels: Vec<_> = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        let mut out = Vec::with_capacity(channels.len());
        for (name, ch) in channels {
            out.push((name, ch.lock().await.members.len()));
        }
        out
    }
}

fn channel_limiter(limit: RateLimit) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst).unwrap_or(rate);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}
