//! The edge side of direct messages: which local connections belong to which
//! user, and delivery of that user's mailbox pushes to them.
//!
//! A connection receives its user's direct messages live from the moment it
//! connects, each exactly once and in cursor order (a per-connection filter
//! drops anything not newer than the last cursor it got). `dm_sync` hands
//! over what the mailbox held before that: the messages after the client's
//! cursor and *before the first one pushed to this connection*, so the
//! reply and the pushes never overlap. A connection that has had no push
//! yet buffers live messages while the mailbox is read, exactly as a
//! channel join with `since` does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use shardchat_common::MessageId;

use crate::session::outbound::{Outbound, SessionHandle};

/// One pushed copy of a direct message: its mailbox cursor and frame.
#[derive(Debug, Clone)]
pub struct MailboxPush {
    pub cursor: MessageId,
    pub frame: Utf8Bytes,
}

enum State {
    Live,
    /// A `dm_sync` is reading the mailbox: pushes wait here.
    Syncing {
        buffered: Vec<MailboxPush>,
    },
}

struct Connection {
    handle: SessionHandle,
    state: State,
    /// The newest cursor queued to this connection.
    last: Option<MessageId>,
    /// The first cursor pushed to it (everything from there on was pushed).
    first: Option<MessageId>,
}

#[derive(Default)]
pub struct Mailboxes {
    users: Mutex<HashMap<Arc<str>, HashMap<u64, Connection>>>,
}

/// What a sync needs to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRange {
    /// Read everything after `since`; live pushes wait meanwhile.
    Open,
    /// Read up to (not including) this cursor: the connection got the rest as pushes.
    Before(MessageId),
}

impl Mailboxes {
    /// Registers a connection; true when it is its user's first here.
    pub fn connect(&self, handle: &SessionHandle) -> bool {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let conns = users.entry(handle.user.clone()).or_default();
        conns.insert(
            handle.id,
            Connection { handle: handle.clone(), state: State::Live, last: None, first: None },
        );
        conns.len() == 1
    }

    /// Forgets a connection; true when it was its user's last here.
    pub fn disconnect(&self, handle: &SessionHandle) -> bool {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conns) = users.get_mut(&handle.user) else { return false };
        if conns.remove(&handle.id).is_none() {
            return false;
        }
        if conns.is_empty() {
            users.remove(&handle.user);
            return true;
        }
        false
    }

    /// Whether `user` has a connection here.
    pub fn is_connected(&self, user: &str) -> bool {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).contains_key(user)
    }

    /// Users with connections here.
    pub fn users(&self) -> Vec<Arc<str>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Queues `pushes` (in cursor order) to every connection of `user`.
    pub fn deliver(&self, user: &str, pushes: &[MailboxPush]) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conns) = users.get_mut(user) else { return };
        for conn in conns.values_mut() {
            match &mut conn.state {
                State::Syncing { buffered } => buffered.extend(pushes.iter().cloned()),
                State::Live => {
                    let frames = admit(conn, pushes);
                    send(&conn.handle, frames);
                }
            }
        }
    }

    /// Tells every local connection that its mailbox may be missing messages.
    pub fn gap_all(&self, reason: &str) {
        let frame = crate::frames::encode(&shardchat_common::protocol::ServerFrame::DmGap {
            reason: reason.to_string(),
        });
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        for conn in users.values().flat_map(|c| c.values()) {
            conn.handle.send(Outbound::Frame(frame.clone()));
        }
    }

    /// Starts a `dm_sync` of connection `session` of `user`.
    pub fn begin_sync(&self, user: &str, session: u64) -> SyncRange {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = users.get_mut(user).and_then(|c| c.get_mut(&session)) else {
            return SyncRange::Open;
        };
        match conn.first {
            Some(first) => SyncRange::Before(first),
            None => {
                if matches!(conn.state, State::Live) {
                    conn.state = State::Syncing { buffered: Vec::new() };
                }
                SyncRange::Open
            }
        }
    }

    /// Ends a `dm_sync`: queues `reply`, then the pushes that waited and are
    /// newer than `read_up_to` (the newest cursor the reply carries), and
    /// goes live.
    pub fn finish_sync(
        &self,
        user: &str,
        session: u64,
        reply: Option<Utf8Bytes>,
        read_up_to: Option<MessageId>,
    ) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = users.get_mut(user).and_then(|c| c.get_mut(&session)) else { return };
        let buffered = match std::mem::replace(&mut conn.state, State::Live) {
            State::Syncing { buffered } => buffered,
            State::Live => Vec::new(),
        };
        if conn.first.is_none() {
            conn.last = conn.last.max(read_up_to);
        }
        let mut frames: Vec<Utf8Bytes> = reply.into_iter().collect();
        frames.extend(admit(conn, &buffered));
        send(&conn.handle, frames);
    }
}

/// The frames of `pushes` this connection has not had, advancing its filter.
fn admit(conn: &mut Connection, pushes: &[MailboxPush]) -> Vec<Utf8Bytes> {
    let mut frames = Vec::new();
    for p in pushes {
        if conn.last.is_some_and(|l| p.cursor <= l) {
            continue;
        }
        conn.last = Some(p.cursor);
        conn.first.get_or_insert(p.cursor);
        frames.push(p.frame.clone());
    }
    frames
}

fn send(handle: &SessionHandle, mut frames: Vec<Utf8Bytes>) {
    match frames.len() {
        0 => {}
        1 => {
            handle.send(Outbound::Frame(frames.swap_remove(0)));
        }
        _ => {
            handle.send(Outbound::Batch(frames));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::outbound::{OutboundReceiver, QueueLimits};

    fn conn(id: u64, user: &str) -> (SessionHandle, OutboundReceiver) {
        let (h, rx, _) = SessionHandle::new(id, Arc::from(user), QueueLimits { frames: 100, bytes: 1 << 20 });
        (h, rx)
    }

    fn push(ms: u64) -> MailboxPush {
        MailboxPush { cursor: MessageId::new(ms, 0), frame: Utf8Bytes::from(ms.to_string()) }
    }

    fn frames(rx: &mut OutboundReceiver) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            match item {
                Outbound::Frame(f) => out.push(f.to_string()),
                Outbound::Batch(fs) => out.extend(fs.iter().map(|f| f.to_string())),
            }
        }
        out
    }

    #[test]
    fn every_connection_of_a_user_gets_each_push_once_in_order() {
        let m = Mailboxes::default();
        let (a1, mut rx1) = conn(1, "alice");
        let (a2, mut rx2) = conn(2, "alice");
        assert!(m.connect(&a1));
        assert!(!m.connect(&a2));
        m.deliver("alice", &[push(1), push(2)]);
        m.deliver("alice", &[push(2), push(3)]); // a re-delivered entry
        m.deliver("bob", &[push(9)]);
        assert_eq!(frames(&mut rx1), ["1", "2", "3"]);
        assert_eq!(frames(&mut rx2), ["1", "2", "3"]);
        assert!(!m.disconnect(&a1));
        assert!(m.disconnect(&a2));
        assert!(!m.is_connected("alice"));
    }

    #[test]
    fn a_sync_before_any_push_buffers_and_never_overlaps() {
        let m = Mailboxes::default();
        let (a, mut rx) = conn(1, "alice");
        m.connect(&a);
        assert_eq!(m.begin_sync("alice", 1), SyncRange::Open);
        // While the mailbox is read: one push the read also saw, one it did not.
        m.deliver("alice", &[push(5), push(6)]);
        assert!(frames(&mut rx).is_empty(), "pushes wait during the read");
        m.finish_sync("alice", 1, Some(Utf8Bytes::from("reply")), Some(MessageId::new(5, 0)));
        assert_eq!(frames(&mut rx), ["reply", "6"]);
    }

    #[test]
    fn a_sync_after_pushes_reads_only_what_came_before_them() {
        let m = Mailboxes::default();
        let (a, mut rx) = conn(1, "alice");
        m.connect(&a);
        m.deliver("alice", &[push(7)]);
        assert_eq!(m.begin_sync("alice", 1), SyncRange::Before(MessageId::new(7, 0)));
        m.deliver("alice", &[push(8)]);
        m.finish_sync("alice", 1, Some(Utf8Bytes::from("reply")), Some(MessageId::new(3, 0)));
        assert_eq!(frames(&mut rx), ["7", "8", "reply"]);
    }
}
