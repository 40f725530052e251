//! `join`: subscribe locally, register with the owner (presence, member
//! limit), recover from `since` when asked, then go live — in an order that
//! leaves no gap and no duplicate (see `hub.rs`).

use serde_json::Value;
use shardchat_common::protocol::{ErrorCode, Reply, ServerFrame};
use shardchat_common::{ChannelName, MessageId};

use super::readable_config;
use crate::error::{ChatError, ChatResult};
use crate::session::outbound::newest_within;
use crate::session::{Session, encode};

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
    session.limits.admit_membership_change()?;
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
            // The replay goes through the connection's queue: a backlog past
            // half of it (in bytes or in frames) keeps its newest messages and
            // says `recovered: false`, as when retention dropped the rest.
            Ok(mut r) => {
                let by_bytes = newest_within(&r.messages, session.handle.reply_budget(), |m| m.frame.len());
                let by_frames = r.messages.len().saturating_sub(session.handle.reply_frames());
                match by_bytes.max(by_frames) {
                    0 => (r.messages, Some(r.complete)),
                    keep_from => (r.messages.split_off(keep_from), Some(false)),
                }
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
