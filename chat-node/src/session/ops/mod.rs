//! One file per request op, as the protocol lists them.

mod dm;
mod history;
mod join;
pub mod leave;
mod ping;
pub mod publish;

pub use history::clamp_limit;
pub use publish::check_content;
use serde_json::Value;
use shardchat_common::protocol::{Reply, Request};
use std::sync::Arc;

use super::Session;
use crate::error::{ChatError, ChatResult};
use shardchat_common::ChannelConfig;
use shardchat_common::ChannelName;

/// Handles one request. `Ok(None)` means nothing (more) to send: either the
/// request had no `id`, or the op queued its own reply.
pub async fn handle(session: &mut Session, id: Option<Value>, request: Request) -> ChatResult<Option<Reply>> {
    let reply = match request {
        Request::Join { channel, since } => {
            return join::handle(session, id, channel, since).await.map(|()| None);
        }
        Request::Leave { channel } => leave::handle(session, channel).await?,
        Request::Publish { channel, text, meta, nonce } => {
            publish::start(session, channel, text, meta, nonce)?.await?
        }
        Request::History { channel, limit, before } => {
            history::handle(session, channel, limit, before).await?
        }
        Request::Ping => ping::handle(),
        Request::Dm { to, text, meta, nonce } => dm::send(session, to, text, meta, nonce).await?,
        Request::DmHistory { with, limit, before } => dm::history(session, with, limit, before).await?,
        Request::DmSync { since } => return dm::sync(session, id, since).await.map(|()| None),
        Request::DmUnread => dm::unread(session).await?,
        Request::DmRead { with, up_to } => dm::read(session, with, up_to).await?,
        Request::DmSettings { allow } => dm::settings(session, allow).await?,
    };
    Ok(id.map(|id| Reply { id, ..reply }))
}

/// The channel's config, if this connection may read it (join access).
fn readable_config(session: &Session, channel: &ChannelName) -> ChatResult<Arc<ChannelConfig>> {
    let config = session.node.directory.resolve(channel)?;
    if !config.access.may_join(&session.identity.roles) {
        return Err(ChatError::forbidden(format!("your roles do not allow joining {channel}")));
    }
    Ok(config)
}
