//! `publish`: checks the sender's side of the rules, then hands the message
//! to the channel owner, which moderates, sequences and fans it out.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use shardchat_common::ChannelName;
use shardchat_common::protocol::{ErrorCode, MAX_META_BYTES, MAX_META_DEPTH, MAX_TEXT_CHARS, Nonce, Reply};

use crate::error::{ChatError, ChatResult};
use crate::owner::PublishRequest;
use crate::session::Session;

/// Checks the sender's side of the rules and queues the publish with the
/// owner; the returned future resolves to the reply. The message's place in
/// the channel is taken when this returns, so a connection can pipeline
/// publishes and they keep their order.
pub fn start(
    session: &mut Session,
    channel: ChannelName,
    text: String,
    meta: Option<Map<String, Value>>,
    nonce: Option<Nonce>,
) -> ChatResult<BoxFuture<'static, ChatResult<Reply>>> {
    if !session.joined.contains(&channel) || !session.node.hub.is_subscribed(&channel, session.handle.id) {
        // (not subscribed any more: the channel was closed under us)
        session.joined.remove(&channel);
        return Err(ChatError::new(ErrorCode::NotJoined, format!("join {channel} before publishing to it")));
    }
    let config = session.node.directory.resolve(&channel)?;
    if !config.access.may_publish(&session.identity.roles) {
        return Err(ChatError::forbidden(format!("your roles do not allow publishing to {channel}")));
    }
    check_content(&text, meta.as_ref())?;
    session.limits.admit_publish()?;
    let req = PublishRequest { channel, from: session.identity.user.clone(), text, meta, nonce };
    let published = session.node.cluster.publish(req);
    Ok(async move {
        let p = published.await?;
        Ok(Reply { message_id: Some(p.id), duplicate: p.duplicate.then_some(true), ..Reply::ok(Value::Null) })
    }
    .boxed())
}

/// Size and shape rules for a message, shared by WebSocket and REST publishing.
pub fn check_content(text: &str, meta: Option<&Map<String, Value>>) -> ChatResult<()> {
    if text.is_empty() {
        return Err(ChatError::bad_request("`text` must not be empty"));
    }
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(ChatError::new(
            ErrorCode::TooLarge,
            format!("text has {chars} characters; the limit is {MAX_TEXT_CHARS}"),
        ));
    }
    if let Some(meta) = meta {
        if depth(meta) > MAX_META_DEPTH {
            return Err(ChatError::bad_request(format!(
                "`meta` is nested deeper than {MAX_META_DEPTH} levels"
            )));
        }
        let size = serde_json::to_vec(meta).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > MAX_META_BYTES {
            return Err(ChatError::new(
                ErrorCode::TooLarge,
                format!("meta is {size} bytes as JSON; the limit is {MAX_META_BYTES}"),
            ));
        }
    }
    Ok(())
}

fn depth(map: &Map<String, Value>) -> usize {
    fn value_depth(v: &Value) -> usize {
        match v {
            Value::Object(m) => depth(m),
            Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    1 + map.values().map(value_depth).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_rules() {
        assert!(check_content("hi", None).is_ok());
        assert_eq!(check_content("", None).unwrap_err().code, ErrorCode::BadRequest);
        assert!(check_content(&"가".repeat(2000), None).is_ok());
        assert_eq!(check_content(&"가".repeat(2001), None).unwrap_err().code, ErrorCode::TooLarge);
        let big = json!({"k": "x".repeat(1100)});
        assert_eq!(check_content("hi", big.as_object()).unwrap_err().code, ErrorCode::TooLarge);
        let deep = json!({"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}});
        assert_eq!(check_content("hi", deep.as_object()).unwrap_err().code, ErrorCode::BadRequest);
        assert!(check_content("hi", json!({"a":{"b":[1,2]}}).as_object()).is_ok());
    }
}
