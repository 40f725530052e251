//! The embedded mode's owner backend: in-memory history and membership,
//! fan-out straight into this node's hub.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use shardchat_common::protocol::PresenceEvent;
use shardchat_common::{ChannelName, Retention};

use crate::error::ChatResult;
use crate::history::memory::MemoryHistory;
use crate::history::{Draft, StoredMessage};
use crate::hub::{Event, Hub, PresenceFrame};
use crate::owner::{OwnerBackend, channel_full};

#[derive(Default)]
struct ChannelState {
    /// user → edges where the user has connections.
    members: HashMap<Arc<str>, HashSet<Arc<str>>>,
}

pub struct LocalBackend {
    history: Arc<MemoryHistory>,
    hub: Arc<Hub>,
    channels: Mutex<HashMap<ChannelName, Arc<Mutex<ChannelState>>>>,
}

impl LocalBackend {
    pub fn new(history: Arc<MemoryHistory>, hub: Arc<Hub>) -> Self {
        Self { history, hub, channels: Mutex::new(HashMap::new()) }
    }

    fn channel(&self, name: &ChannelName) -> Arc<Mutex<ChannelState>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).entry(name.clone()).or_default().clone()
    }

    fn presence(&self, channel: &ChannelName, event: PresenceEvent, user: &str) {
        self.hub.deliver(channel, Event::Presence(PresenceFrame::new(channel.clone(), event, user)));
    }
}

impl OwnerBackend for LocalBackend {
    fn commit<'a>(
        &'a self,
        draft: Draft,
        retention: Retention,
        _dedup: Option<&'a str>,
    ) -> BoxFuture<'a, ChatResult<Arc<StoredMessage>>> {
        let channel = draft.channel.clone();
        let state = self.channel(&channel);
        // Appending and delivering under the channel's lock keeps delivery in id order.
        let _guard = state.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self.history.append(draft, retention);
        self.hub.deliver(&channel, Event::Message(stored.clone()));
        futures_util::future::ready(Ok(stored)).boxed()
    }

    fn join<'a>(
        &'a self,
        channel: &'a ChannelName,
        user: &'a str,
        edge: &'a str,
        max_members: u32,
    ) -> BoxFuture<'a, ChatResult<usize>> {
        let state = self.channel(channel);
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let is_new = !state.members.contains_key(user);
        let result = if is_new && state.members.len() >= max_members as usize {
            Err(channel_full(channel))
        } else {
            state.members.entry(Arc::from(user)).or_default().insert(Arc::from(edge));
            if is_new {
                self.presence(channel, PresenceEvent::Join, user);
            }
            Ok(state.members.len())
        };
        futures_util::future::ready(result).boxed()
    }

    fn leave<'a>(
        &'a self,
        channel: &'a ChannelName,
        user: &'a str,
        edge: &'a str,
    ) -> BoxFuture<'a, ChatResult<()>> {
        let state_arc = self.channel(channel);
        let mut state = state_arc.lock().unwrap_or_else(|p| p.into_inner());
        let gone = match state.members.get_mut(user) {
            Some(edges) => {
                edges.remove(edge);
                edges.is_empty()
            }
            None => false,
        };
        if gone {
            state.members.remove(user);
            self.presence(channel, PresenceEvent::Leave, user);
        }
        if state.members.is_empty() {
            drop(state);
            let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
            if channels
                .get(channel)
                .is_some_and(|c| c.lock().unwrap_or_else(|p| p.into_inner()).members.is_empty())
            {
                channels.remove(channel);
            }
        }
        futures_util::future::ready(Ok(())).boxed()
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
