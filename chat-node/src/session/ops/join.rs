//! `join`: subscribe locally, register with the owner (presence, member
//! limit), recover from `since` when asked, then go live — in an order that
//! leaves no gap and no duplicate (see `hub.rs`).

use serde_json::Value;
use shardchat_common::protocol::{ErrorCode, Reply, ServerFrame};
use shardchat_common::{ChannelName, MessageId};

use super::readable_config;
use crate::error::{ChatError, ChatResult};
use crate::session::{Session, encode};

/// Queue slots kept free for other frames when a join replays history.
const REPLY_ROOM: usize = 16;

pub async fn handle(
    session: &mut Session,
    id: Option<Value>,
    channel: ChannelName,
    since: Option<MessageId>,
) -> ChatResult<()> {
    readable_config(session, &channel)?;
    if session.joined.contains(&channel) {
        if let Some(id) = id {
            session.send_frame(&ServerFrame::Reply(Reply::ok(id)));
        }
        return Ok(());
    }
    let max = session.node.config.max_channels_per_connection;
    if session.joined.len() >= max {
        return Err(ChatError::bad_request(format!("a connection may join at most {max} channels")));
    }
    let node = session.node.clone();
    let membership = node.hub.membership_lock(&channel, &session.identity.user).await;
    node.hub.subscribe(&channel, &session.handle);
    // Joins are idempotent per (user, node) at the owner, so every join asks;
    // only the user's last local leave tells the owner (see leave.rs).
    let members = match node.cluster.join(&channel, &session.identity.user).await {
        Ok(n) => n,
        Err(e) => {
            let change = node.hub.unsubscribe(&channel, &session.handle);
            // The owner may have recorded the membership before the answer got
            // lost: undo it (a leave is idempotent and queued behind the join).
            if change.first_or_last && matches!(e.code, ErrorCode::Unavailable | ErrorCode::Timeout) {
                let leave = node.cluster.leave(&channel, &session.identity.user);
                tokio::spawn(async move {
                    if let Err(e) = leave.await {
                        tracing::debug!(error = %e, "undoing a join whose answer was lost failed");
                    }
                });
            }
            return Err(e);
        }
    };
    drop(membership);
    session.joined.insert(channel.clone());
    let (backlog, recovered) = match since {
        Some(since) => match node.history.after(&channel, since).await {
            Ok(mut r) => {
                // The replay goes through the connection's queue: never more
                // than it holds (the newest then, and the client is told).
                let room = node.config.outbound_queue.saturating_sub(REPLY_ROOM).max(1);
                if r.messages.len() > room {
                    r.messages.drain(..r.messages.len() - room);
                    r.complete = false;
                }
                (r.messages, Some(r.complete))
            }
            Err(e) => {
                session.joined.remove(&channel);
                super::leave::detach(session, &channel).await;
                return Err(e);
            }
        },
        None => (Vec::new(), None),
    };
    let reply = id
        .map(|id| encode(&ServerFrame::Reply(Reply { recovered, members: Some(members), ..Reply::ok(id) })));
    // When `since` cannot be trusted (unknown here, or older than retention),
    // live messages must not be filtered by it: ids are only comparable
    // within what this channel's history knows.
    let deliver_after = if recovered == Some(false) { None } else { since };
    node.hub.activate(&channel, session.handle.id, reply, deliver_after, backlog);
    node.metrics.joins.inc();
    Ok(())
}
