//! Direct messages in the embedded mode: conversations, mailboxes, unread
//! counts and settings in memory, delivery straight to this node's
//! [`Mailboxes`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use shardchat_common::MessageId;
use shardchat_common::protocol::{DirectMessage, DmAllow};
use shardchat_common::redis_layout::conversation_id;

use super::mailboxes::{MailboxPush, Mailboxes};
use super::{DmDraft, DmLimits, DmStore, MAX_SYNC, MailboxRead, SendResult};
use crate::clock::now_ms;
use crate::error::ChatResult;
use crate::owner::backend::{ApplyError, Dedup};

/// A bounded log of direct messages: a conversation (ids) or a mailbox (cursors).
#[derive(Default)]
struct Log {
    entries: VecDeque<DirectMessage>,
    last: MessageId,
    /// The newest position retention dropped.
    trimmed: MessageId,
}

impl Log {
    fn position(m: &DirectMessage, by_cursor: bool) -> MessageId {
        if by_cursor { m.cursor.unwrap_or(m.id) } else { m.id }
    }

    fn append(&mut self, mut m: DirectMessage, by_cursor: bool, now: u64) -> MessageId {
        let pos = self.last.next_after(now);
        self.last = pos;
        if by_cursor {
            m.cursor = Some(pos);
        } else {
            m.id = pos;
            m.ts = pos.ms;
        }
        self.entries.push_back(m);
        pos
    }

    fn trim(&mut self, max: usize, max_age: Duration, now: u64, by_cursor: bool) {
        let oldest = now.saturating_sub(max_age.as_millis() as u64);
        while let Some(front) = self.entries.front() {
            if self.entries.len() > max || front.ts < oldest {
                self.trimmed = Self::position(front, by_cursor);
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }
}

#[derive(Default)]
struct State {
    conversations: HashMap<String, Log>,
    mailboxes: HashMap<String, Log>,
    unread: HashMap<String, BTreeMap<String, u64>>,
    contacts: HashMap<String, HashSet<String>>,
    contacts_only: HashSet<String>,
    /// `<conversation>|<from>|<nonce>` → (id, expiry ms).
    nonces: HashMap<String, (MessageId, u64)>,
}

pub struct MemoryDms {
    limits: DmLimits,
    dedup_window: Duration,
    mailboxes: Arc<Mailboxes>,
    state: Mutex<State>,
}

impl MemoryDms {
    pub fn new(limits: DmLimits, dedup_window: Duration, mailboxes: Arc<Mailboxes>) -> Self {
        Self { limits, dedup_window, mailboxes, state: Mutex::new(State::default()) }
    }

    fn store(&self, draft: DmDraft) -> SendResult {
        let now = now_ms();
        let conversation = conversation_id(&draft.from, &draft.to);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let nonce_key = match &draft.dedup {
            Dedup::Nonce(n) => Some(format!("{conversation}|{}|{n}", draft.from)),
            _ => None,
        };
        if let Some(key) = &nonce_key
            && let Some((id, expires)) = st.nonces.get(key)
            && *expires > now
        {
            return SendResult::Stored { id: *id, duplicate: true };
        }
        if !draft.system
            && st.contacts_only.contains(&draft.to)
            && !st.contacts.get(&draft.to).is_some_and(|c| c.contains(&*draft.from))
        {
            return SendResult::NotAccepted;
        }
        let message = DirectMessage {
            id: MessageId::ZERO,
            cursor: None,
            from: draft.from.to_string(),
            to: draft.to.clone(),
            text: draft.text.clone(),
            ts: 0,
            meta: draft.meta.clone(),
        };
        let (max, age) = (self.limits.max_messages as usize, self.limits.max_age);
        let conv = st.conversations.entry(conversation).or_default();
        let id = conv.append(message.clone(), false, now);
        conv.trim(max, age, now, false);
        let stored = DirectMessage { id, ts: id.ms, ..message };
        let mut pushes = Vec::new();
        let participants: Vec<&str> =
            if draft.system { vec![draft.to.as_str()] } else { vec![&*draft.from, draft.to.as_str()] };
        for user in participants {
            let mailbox = st.mailboxes.entry(user.to_string()).or_default();
            let cursor = mailbox.append(stored.clone(), true, now);
            mailbox.trim(self.limits.mailbox_max as usize, age, now, true);
            pushes.push((user.to_string(), cursor));
        }
        *st.unread.entry(draft.to.clone()).or_default().entry(draft.from.to_string()).or_default() += 1;
        st.contacts.entry(draft.from.to_string()).or_default().insert(draft.to.clone());
        if let Some(key) = nonce_key {
            if st.nonces.len() > 1024 && st.nonces.len().is_power_of_two() {
                st.nonces.retain(|_, (_, expires)| *expires > now);
            }
            st.nonces.insert(key, (id, now.saturating_add(self.dedup_window.as_millis() as u64)));
        }
        // Delivered under the lock: a user's pushes go out in cursor order.
        for (user, cursor) in pushes {
            let frame = Utf8Bytes::from(draft.push.render(id, cursor));
            self.mailboxes.deliver(&user, &[MailboxPush { cursor, frame }]);
        }
        SendResult::Stored { id, duplicate: false }
    }
}

fn ready<T: Send + 'static>(v: T) -> BoxFuture<'static, T> {
    futures_util::future::ready(v).boxed()
}

impl DmStore for MemoryDms {
    fn send(&self, draft: DmDraft) -> BoxFuture<'static, Result<SendResult, ApplyError>> {
        ready(Ok(self.store(draft)))
    }

    fn lookup(&self, _: &DmDraft) -> BoxFuture<'static, ChatResult<Option<MessageId>>> {
        // Storing in memory never fails ambiguously.
        ready(Ok(None))
    }

    fn now_ms(&self) -> Option<u64> {
        Some(now_ms())
    }

    fn history(
        &self,
        a: &str,
        b: &str,
        limit: usize,
        before: Option<MessageId>,
    ) -> BoxFuture<'static, ChatResult<Vec<DirectMessage>>> {
        let now = now_ms();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let messages = match st.conversations.get_mut(&conversation_id(a, b)) {
            Some(conv) => {
                conv.trim(self.limits.max_messages as usize, self.limits.max_age, now, false);
                let end = match before {
                    Some(b) => conv.entries.partition_point(|m| m.id < b),
                    None => conv.entries.len(),
                };
                conv.entries.range(end.saturating_sub(limit)..end).cloned().collect()
            }
            None => Vec::new(),
        };
        ready(Ok(messages))
    }

    fn mailbox(
        &self,
        user: &str,
        since: Option<MessageId>,
        before: Option<MessageId>,
    ) -> BoxFuture<'static, ChatResult<MailboxRead>> {
        let now = now_ms();
        let since = since.unwrap_or(MessageId::ZERO);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let read = match st.mailboxes.get_mut(user) {
            None => MailboxRead { messages: Vec::new(), complete: since == MessageId::ZERO, more: false },
            Some(mbox) => {
                mbox.trim(self.limits.mailbox_max as usize, self.limits.max_age, now, true);
                let mut after: Vec<DirectMessage> = mbox
                    .entries
                    .iter()
                    .filter(|m| m.cursor.is_some_and(|c| c > since && before.is_none_or(|b| c < b)))
                    .take(MAX_SYNC + 1)
                    .cloned()
                    .collect();
                let more = after.len() > MAX_SYNC;
                after.truncate(MAX_SYNC);
                let complete = since >= mbox.trimmed && since <= mbox.last;
                MailboxRead { messages: after, complete, more }
            }
        };
        ready(Ok(read))
    }

    fn unread(&self, user: &str) -> BoxFuture<'static, ChatResult<BTreeMap<String, u64>>> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut unread = st.unread.get(user).cloned().unwrap_or_default();
        unread.retain(|_, n| *n > 0);
        ready(Ok(unread))
    }

    fn mark_read(&self, user: &str, with: &str, up_to: MessageId) -> BoxFuture<'static, ChatResult<()>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let left = st
            .conversations
            .get(&conversation_id(user, with))
            .map(|c| c.entries.iter().filter(|m| m.from == with && m.id > up_to).count() as u64)
            .unwrap_or(0);
        st.unread.entry(user.to_string()).or_default().insert(with.to_string(), left);
        ready(Ok(()))
    }

    fn set_allow(&self, user: &str, allow: DmAllow) -> BoxFuture<'static, ChatResult<()>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match allow {
            DmAllow::All => st.contacts_only.remove(user),
            DmAllow::None => st.contacts_only.insert(user.to_string()),
        };
        ready(Ok(()))
    }

    fn connected(&self, _: &str) -> BoxFuture<'static, ChatResult<()>> {
        ready(Ok(()))
    }

    fn disconnected(&self, _: &str) -> BoxFuture<'static, ChatResult<()>> {
        ready(Ok(()))
    }
}
