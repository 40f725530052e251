//! `history`: the newest `limit` messages (before `before`), oldest first.

use serde_json::Value;
use shardchat_common::protocol::{DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, Reply};
use shardchat_common::{ChannelName, MessageId};

use super::readable_config;
use crate::error::ChatResult;
use crate::frames::json_len;
use crate::session::Session;
use crate::session::outbound::newest_within;

pub async fn handle(
    session: &Session,
    channel: ChannelName,
    limit: Option<u32>,
    before: Option<MessageId>,
) -> ChatResult<Reply> {
    readable_config(session, &channel)?;
    let limit = clamp_limit(limit);
    let mut messages = session.node.history.latest(&channel, limit, before).await?;
    // Sized as the messages will be serialized, before the reply is built: a
    // page of large messages is cut to the newest that fit.
    let keep_from = newest_within(&messages, session.handle.reply_budget(), json_len);
    Ok(Reply {
        messages: Some(messages.split_off(keep_from).into()),
        truncated: (keep_from > 0).then_some(true),
        ..Reply::ok(Value::Null)
    })
}

/// `limit` defaults to 50 and is capped at 1,000.
pub fn clamp_limit(limit: Option<u32>) -> usize {
    limit.map(|l| l as usize).unwrap_or(DEFAULT_HISTORY_LIMIT).min(MAX_HISTORY_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_default_to_50_and_are_capped_at_1000() {
        assert_eq!(clamp_limit(None), 50);
        assert_eq!(clamp_limit(Some(7)), 7);
        assert_eq!(clamp_limit(Some(1_000)), 1_000);
        assert_eq!(clamp_limit(Some(u32::MAX)), 1_000);
    }
}
