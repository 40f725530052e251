//! The embedded mode's owner backend: in-memory history and membership,
//! fan-out straight into this node's hub.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use shardchat_common::protocol::PresenceEvent;
use shardchat_common::redis_layout::nonce_field;
use shardchat_common::{ChannelName, MessageId};

use crate::clock::now_ms;
use crate::error::ChatResult;
use crate::frames::PresencePush;
use crate::history::memory::MemoryHistory;
use crate::hub::{Event, Hub};
use crate::owner::backend::{ApplyError, ChannelBatch, Dedup, OpResult, OwnerBackend, PublishOp, ReadyOp};

#[derive(Default)]
struct ChannelState {
    /// user → edges where the user has connections.
    members: HashMap<Arc<str>, HashSet<Arc<str>>>,
}

/// Limits the embedded backend enforces.
#[derive(Debug, Clone, Copy)]
pub struct LocalLimits {
    /// How long a publish nonce is remembered.
    pub dedup_window: Duration,
    /// Undeclared channels active at once (within their retention age).
    pub max_dynamic_channels: usize,
}

pub struct LocalBackend {
    history: Arc<MemoryHistory>,
    hub: Arc<Hub>,
    limits: LocalLimits,
    channels: Mutex<HashMap<ChannelName, Arc<Mutex<ChannelState>>>>,
    /// `<channel>|<user>|<nonce>` → (id, expiry ms).
    nonces: Mutex<HashMap<String, (MessageId, u64)>>,
    /// Undeclared channel → when it stops counting against the cap (ms).
    dynamic: Mutex<HashMap<ChannelName, u64>>,
}

impl LocalBackend {
    pub fn new(history: Arc<MemoryHistory>, hub: Arc<Hub>, limits: LocalLimits) -> Self {
        Self {
            history,
            hub,
            limits,
            channels: Mutex::new(HashMap::new()),
            nonces: Mutex::new(HashMap::new()),
            dynamic: Mutex::new(HashMap::new()),
        }
    }

    fn channel(&self, name: &ChannelName) -> Arc<Mutex<ChannelState>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().clone()
    }

    /// Records activity on an undeclared channel; false when it would be one too many.
    fn admit_dynamic(&self, batch: &ChannelBatch, now: u64) -> bool {
        let mut dynamic = self.dynamic.lock().unwrap_or_else(|p| p.into_inner());
        let until = now.saturating_add(batch.retention.max_age_seconds.saturating_mul(1000));
        if let Some(t) = dynamic.get_mut(&batch.channel) {
            *t = (*t).max(until);
            return true;
        }
        dynamic.retain(|_, t| *t > now);
        if dynamic.len() >= self.limits.max_dynamic_channels {
            return false;
        }
        dynamic.insert(batch.channel.clone(), until);
        true
    }

    fn publish(&self, batch: &ChannelBatch, op: &PublishOp, now: u64, events: &mut Vec<Event>) -> OpResult {
        let key = match &op.dedup {
            Dedup::Nonce(n) => Some(nonce_field(batch.channel.as_str(), &op.draft.from, n)),
            _ => None,
        };
        if let Some(key) = &key {
            let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((id, expires)) = nonces.get(key)
                && *expires > now
            {
                return OpResult::Published { id: *id, duplicate: true };
            }
            if nonces.len() > 1024 && nonces.len().is_power_of_two() {
                nonces.retain(|_, (_, expires)| *expires > now);
            }
        }
        let stored = self.history.append(op.draft.clone(), batch.retention);
        if let Some(key) = key {
            let expires = now.saturating_add(self.limits.dedup_window.as_millis() as u64);
            self.nonces.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (stored.id(), expires));
        }
        events.push(Event::Message(stored.push.clone()));
        OpResult::Published { id: stored.id(), duplicate: false }
    }

    fn apply_channel(&self, batch: &ChannelBatch) -> Vec<OpResult> {
        let now = now_ms();
        let state = self.channel(&batch.channel);
        // Storing and delivering under the channel's lock keeps delivery in id order.
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(batch.ops.len());
        if batch.dynamic && !state.members.is_empty() {
            self.admit_dynamic(batch, now); // keeps an active channel counted
        }
        for op in &batch.ops {
            results.push(match op {
                ReadyOp::Publish(p) => self.publish(batch, p, now, &mut events),
                ReadyOp::Join { user, edge } => {
                    let is_new = !state.members.contains_key(user);
                    if batch.dynamic && state.members.is_empty() && !self.admit_dynamic(batch, now) {
                        OpResult::TooManyChannels
                    } else if is_new && state.members.len() >= batch.max_members as usize {
                        OpResult::Full
                    } else {
                        state.members.entry(user.clone()).or_default().insert(edge.clone());
                        if is_new {
                            events.push(presence(&batch.channel, PresenceEvent::Join, user));
                        }
                        OpResult::Joined { members: state.members.len() }
                    }
                }
                ReadyOp::Leave { user, edge } => {
                    let gone = match state.members.get_mut(user) {
                        Some(edges) => {
                            edges.remove(edge);
                            edges.is_empty()
                        }
                        None => false,
                    };
                    if gone {
                        state.members.remove(user);
                        events.push(presence(&batch.channel, PresenceEvent::Leave, user));
                    }
                    OpResult::Left
                }
            });
        }
        if !events.is_empty() {
            self.hub.deliver_batch(&batch.channel, &events);
        }
        let empty = state.members.is_empty();
        drop(state);
        if empty {
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            if channels
                .get(&batch.channel)
                .is_some_and(|c| c.lock().unwrap_or_else(|p| p.into_inner()).members.is_empty())
            {
                channels.remove(&batch.channel);
            }
        }
        results
    }
}

fn presence(channel: &ChannelName, event: PresenceEvent, user: &str) -> Event {
    Event::Presence(PresencePush::new(channel.clone(), event, user))
}

impl OwnerBackend for LocalBackend {
    fn apply(
        &self,
        batches: Arc<Vec<ChannelBatch>>,
    ) -> BoxFuture<'static, Result<Vec<Vec<OpResult>>, ApplyError>> {
        let results = batches.iter().map(|b| self.apply_channel(b)).collect();
        futures_util::future::ready(Ok(results)).boxed()
    }

    fn lookup(&self, _: &ChannelName, _: &PublishOp) -> BoxFuture<'static, ChatResult<Option<MessageId>>> {
        // Applying in memory never fails ambiguously.
        futures_util::future::ready(Ok(None)).boxed()
    }

    fn now_ms(&self) -> Option<u64> {
        Some(now_ms())
    }

    fn members<'a>(&'a self, channel: &'a ChannelName) -> BoxFuture<'a, ChatResult<Vec<String>>> {
        let state = self.channels.lock().unwrap_or_else(|p| p.into_inner()).get(channel).cloned();
        let mut members: Vec<String> = match state {
            Some(s) => {
                s.lock().unwrap_or_else(|p| p.into_inner()).members.keys().map(|u| u.to_string()).collect()
            }
            None => Vec::new(),
        };
        members.sort();
        futures_util::future::ready(Ok(members)).boxed()
    }

    fn member_counts(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>> {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let counts = channels
            .iter()
            .map(|(n, s)| (n.clone(), s.lock().unwrap_or_else(|p| p.into_inner()).members.len()))
            .filter(|(_, n)| *n > 0)
            .collect();
        futures_util::future::ready(Ok(counts)).boxed()
    }
}
