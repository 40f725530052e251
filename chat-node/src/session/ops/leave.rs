//! `leave`, and the same cleanup for every channel when a connection ends.

use serde_json::Value;
use shardchat_common::ChannelName;
use shardchat_common::protocol::{ErrorCode, Reply};

use crate::error::{ChatError, ChatResult};
use crate::session::Session;

pub async fn handle(session: &mut Session, channel: ChannelName) -> ChatResult<Reply> {
    if !session.joined.contains(&channel) {
        return Err(ChatError::new(ErrorCode::NotJoined, format!("not joined to {channel}")));
    }
    session.limits.admit_membership_change()?;
    session.joined.remove(&channel);
    detach(session, &channel).await;
    Ok(Reply::ok(Value::Null))
}

/// Removes the connection from `channel`'s local subscribers and, when it
/// was the user's last connection here, tells the owner (presence `leave`).
pub async fn detach(session: &Session, channel: &ChannelName) {
    let _membership = session.node.hub.membership_lock(channel, &session.identity.user).await;
    let change = session.node.hub.unsubscribe(channel, &session.handle);
    if change.first_or_last
        && let Err(e) = session.node.cluster.leave(channel, &session.identity.user).await
    {
        tracing::warn!(%channel, error = %e, "could not tell the owner about a leave");
    }
}
