//! The edge side of fan-out: which local connections are in which channel,
//! and delivery of sequenced events to them.
//!
//! Each subscriber is in one of two states. While a join is in progress it
//! is *recovering*: live events are buffered while the node reads the
//! backlog from history. `activate` then queues the join reply, the backlog
//! and the buffered events (skipping ids already sent) and makes it *live*.
//! A live subscriber only receives messages with an id greater than the last
//! one it got, so every member sees each message exactly once, in id order,
//! with no gap between recovered and live messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::Utf8Bytes;
use shardchat_common::protocol::ServerFrame;
use shardchat_common::{ChannelName, MessageId};

use crate::clock::now_micros;
use crate::frames::{MessagePush, PresencePush, encode};
use crate::keyed_lock::{KeyedGuard, KeyedLocks};
use crate::metrics::Metrics;
use crate::session::outbound::{Outbound, SessionHandle};

/// A sequenced event of one channel, as it reaches the edge.
#[derive(Debug, Clone)]
pub enum Event {
    Message(Arc<MessagePush>),
    Presence(Arc<PresencePush>),
}

enum SubState {
    /// Joining (`resync: false`) or resynchronising after the node lost its
    /// registrations (`resync: true`): live events wait in `buffered`.
    Recovering {
        buffered: Vec<Event>,
        last: Option<MessageId>,
        resync: bool,
    },
    Live {
        last: Option<MessageId>,
    },
}

struct Subscriber {
    handle: SessionHandle,
    state: SubState,
}

#[derive(Default)]
struct LocalChannel {
    subscribers: HashMap<u64, Subscriber>,
    /// Local connections per user, for user-level presence.
    users: HashMap<Arc<str>, u32>,
}

pub struct Hub {
    channels: RwLock<HashMap<ChannelName, Arc<Mutex<LocalChannel>>>>,
    /// Serializes one user's membership changes in one channel on this node
    /// (subscribe + owner join, unsubscribe + owner leave), so the owner
    /// sees them in the order they were decided.
    membership: KeyedLocks<(ChannelName, Arc<str>)>,
    metrics: Arc<Metrics>,
    /// Events a recovering subscriber may buffer before it counts as a slow consumer.
    max_buffered: usize,
}

/// What `subscribe` / `unsubscribe` tell the caller about the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserChange {
    /// The user's first connection in the channel on this node joined,
    /// or its last one left.
    pub first_or_last: bool,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, max_buffered: usize) -> Self {
        Self {
            channels: RwLock::new(HashMap::new()),
            membership: KeyedLocks::default(),
            metrics,
            max_buffered,
        }
    }

    fn channel(&self, name: &ChannelName) -> Option<Arc<Mutex<LocalChannel>>> {
        self.channels.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    fn channel_or_create(&self, name: &ChannelName) -> Arc<Mutex<LocalChannel>> {
        if let Some(c) = self.channel(name) {
            return c;
        }
        self.channels.write().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().clone()
    }

    /// Takes the lock for changing `user`'s membership of `channel` here.
    pub async fn membership_lock(
        &self,
        channel: &ChannelName,
        user: &Arc<str>,
    ) -> KeyedGuard<'_, (ChannelName, Arc<str>)> {
        self.membership.lock((channel.clone(), user.clone())).await
    }

    /// Registers `handle` in `channel`, buffering live events until `activate`.
    pub fn subscribe(&self, channel: &ChannelName, handle: &SessionHandle) -> UserChange {
        let ch = self.channel_or_create(channel);
        let mut ch = ch.lock().unwrap_or_else(|p| p.into_inner());
        ch.subscribers.insert(
            handle.id,
            Subscriber {
                handle: handle.clone(),
                state: SubState::Recovering { buffered: Vec::new(), last: None, resync: false },
            },
        );
        let count = ch.users.entry(handle.user.clone()).or_insert(0);
        *count += 1;
        UserChange { first_or_last: *count == 1 }
    }

    /// Queues `reply` (if any), then `backlog` (ids after `since`), then the
    /// events buffered since `subscribe`, and makes the subscriber live.
    pub fn activate(
        &self,
        channel: &ChannelName,
        session_id: u64,
        reply: Option<Utf8Bytes>,
        since: Option<MessageId>,
        backlog: Vec<Arc<MessagePush>>,
    ) {
        let Some(ch) = self.channel(channel) else { return };
        let mut ch = ch.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sub) = ch.subscribers.get_mut(&session_id) else { return };
        if matches!(sub.state, SubState::Recovering { resync: false, .. }) {
            self.go_live(sub, reply, since, &backlog);
        }
    }

    /// Queues `reply`, then `backlog`, then the buffered events, skipping
    /// ids at or below `last`, and makes `sub` live.
    fn go_live(
        &self,
        sub: &mut Subscriber,
        reply: Option<Utf8Bytes>,
        last: Option<MessageId>,
        backlog: &[Arc<MessagePush>],
    ) {
        let buffered = match &mut sub.state {
            SubState::Recovering { buffered, .. } => std::mem::take(buffered),
            SubState::Live { .. } => return,
        };
        let mut last = last;
        let mut frames: Vec<Utf8Bytes> = Vec::with_capacity(1 + backlog.len() + buffered.len());
        frames.extend(reply);
        let mut delivered = 0;
        let messages = backlog.iter().cloned().map(Event::Message).chain(buffered);
        for event in messages {
            if let Some(frame) = admit(&mut last, &event) {
                delivered += matches!(event, Event::Message(_)) as u64;
                frames.push(frame);
            }
        }
        sub.state = SubState::Live { last };
        if frames.is_empty() || sub.handle.send(Outbound::Batch(frames)) {
            self.metrics.delivered.inc_by(delivered);
        }
    }

    /// Starts a resynchronisation of `channel` (after this node's
    /// registrations were lost): live subscribers buffer events until
    /// [`resume`](Self::resume) hands them what they missed.
    pub fn pause(&self, channel: &ChannelName) {
        let Some(ch) = self.channel(channel) else { return };
        let mut ch = ch.lock().unwrap_or_else(|p| p.into_inner());
        for sub in ch.subscribers.values_mut() {
            if let SubState::Live { last } = sub.state {
                sub.state = SubState::Recovering { buffered: Vec::new(), last, resync: true };
            }
        }
    }

    /// Ends a resynchronisation: each paused subscriber gets the messages of
    /// `backlog` and of its buffer that it has not seen, in id order — and,
    /// first, a `gap` push when `gap` says the backlog cannot be trusted to
    /// be complete.
    pub fn resume(&self, channel: &ChannelName, backlog: &[Arc<MessagePush>], gap: Option<&str>) {
        let Some(ch) = self.channel(channel) else { return };
        let gap = gap.map(|reason| gap_frame(channel, reason));
        let mut ch = ch.lock().unwrap_or_else(|p| p.into_inner());
        for sub in ch.subscribers.values_mut() {
            if let SubState::Recovering { last, resync: true, .. } = sub.state {
                self.go_live(sub, gap.clone(), last, backlog);
            }
        }
        if gap.is_some() {
            self.metrics.gaps.inc();
        }
    }

    /// Tells every local subscriber of `channel` that it may have missed
    /// messages (`gap` push); delivery continues.
    pub fn gap(&self, channel: &ChannelName, reason: &str) {
        let Some(ch) = self.channel(channel) else { return };
        let frame = gap_frame(channel, reason);
        let ch = ch.lock().unwrap_or_else(|p| p.into_inner());
        for sub in ch.subscribers.values() {
            sub.handle.send(Outbound::Frame(frame.clone()));
        }
        self.metrics.gaps.inc();
    }

    /// Removes the subscriber; tells whether it was the user's last local connection.
    pub fn unsubscribe(&self, channel: &ChannelName, handle: &SessionHandle) -> UserChange {
        let Some(ch_arc) = self.channel(channel) else { return UserChange { first_or_last: false } };
        let mut ch = ch_arc.lock().unwrap_or_else(|p| p.into_inner());
        if ch.subscribers.remove(&handle.id).is_none() {
            return UserChange { first_or_last: false };
        }
        let last = match ch.users.get_mut(&handle.user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                ch.users.remove(&handle.user);
                true
            }
            None => false,
        };
        let empty = ch.subscribers.is_empty();
        drop(ch);
        if empty {
            let mut channels = self.channels.write().unwrap_or_else(|p| p.into_inner());
            // Re-check under the write lock: someone may have joined meanwhile.
            if channels
                .get(channel)
                .is_some_and(|c| c.lock().unwrap_or_else(|p| p.into_inner()).subscribers.is_empty())
            {
                channels.remove(channel);
            }
        }
        UserChange { first_or_last: last }
    }

    /// Delivers one sequenced event to every local subscriber of `channel`.
    pub fn deliver(&self, channel: &ChannelName, event: Event) {
        self.deliver_batch(channel, std::slice::from_ref(&event));
    }

    /// Delivers sequenced events of `channel` (in id order) to every local
    /// subscriber, as one queue item per subscriber: a burst costs each
    /// connection one wake-up and one write, not one per event.
    pub fn deliver_batch(&self, channel: &ChannelName, events: &[Event]) {
        let Some(ch) = self.channel(channel) else { return };
        let now = now_micros();
        for event in events {
            if let Event::Message(m) = event
                && m.accepted_at_micros > 0
            {
                let micros = now.saturating_sub(m.accepted_at_micros);
                self.metrics.publish_to_deliver.observe(micros as f64 / 1e6);
            }
        }
        let mut ch = ch.lock().unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        for sub in ch.subscribers.values_mut() {
            match &mut sub.state {
                SubState::Recovering { buffered, .. } => {
                    if buffered.len() + events.len() > self.max_buffered {
                        sub.handle.close(crate::session::outbound::CloseReason::SLOW_CONSUMER);
                    } else {
                        buffered.extend(events.iter().cloned());
                    }
                }
                SubState::Live { last } => {
                    let mut frames = Vec::new();
                    let mut messages = 0;
                    for event in events {
                        if let Some(frame) = admit(last, event) {
                            messages += matches!(event, Event::Message(_)) as u64;
                            frames.push(frame);
                        }
                    }
                    let item = match frames.len() {
                        0 => continue,
                        1 => Outbound::Frame(frames.swap_remove(0)),
                        _ => Outbound::Batch(frames),
                    };
                    if sub.handle.send(item) {
                        delivered += messages;
                    }
                }
            }
        }
        self.metrics.delivered.inc_by(delivered);
    }

    /// The channel was closed: every local subscriber gets a `closed` push
    /// and stops being a member.
    pub fn close_channel(&self, channel: &ChannelName, reason: &str) {
        let Some(ch) = self.channels.write().unwrap_or_else(|p| p.into_inner()).remove(channel) else {
            return;
        };
        let ch = ch.lock().unwrap_or_else(|p| p.into_inner());
        let push = encode(&ServerFrame::Closed { channel: channel.clone(), reason: reason.to_string() });
        for sub in ch.subscribers.values() {
            sub.handle.send(Outbound::Frame(push.clone()));
        }
    }

    /// Whether the connection `session_id` is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &ChannelName, session_id: u64) -> bool {
        self.channel(channel).is_some_and(|c| {
            c.lock().unwrap_or_else(|p| p.into_inner()).subscribers.contains_key(&session_id)
        })
    }

    /// Channels with at least one local subscriber.
    pub fn channels(&self) -> Vec<ChannelName> {
        self.channels.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Distinct users connected to this node in `channel`.
    pub fn local_users(&self, channel: &ChannelName) -> Vec<String> {
        match self.channel(channel) {
            Some(ch) => {
                ch.lock().unwrap_or_else(|p| p.into_inner()).users.keys().map(|u| u.to_string()).collect()
            }
            None => Vec::new(),
        }
    }
}

/// The frame to send for `event` to a subscriber whose last message id is
/// `last`, advancing `last`; `None` for a message already delivered.
fn admit(last: &mut Option<MessageId>, event: &Event) -> Option<Utf8Bytes> {
    match event {
        Event::Message(m) => {
            if last.is_some_and(|l| m.id <= l) {
                return None;
            }
            *last = Some(m.id);
            Some(m.frame.clone())
        }
        Event::Presence(p) => Some(p.frame.clone()),
    }
}

fn gap_frame(channel: &ChannelName, reason: &str) -> Utf8Bytes {
    encode(&ServerFrame::Gap { channel: channel.clone(), reason: reason.to_string() })
}
