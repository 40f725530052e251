//! Direct-message ops: `dm`, `dm_history`, `dm_sync`, `dm_unread`,
//! `dm_read`, `dm_settings` (see docs/protocol.md, "Direct messages").

use serde_json::{Map, Value};
use shardchat_common::MessageId;
use shardchat_common::protocol::{DmAllow, Nonce, Reply, ServerFrame};

use super::history::clamp_limit;
use super::publish::check_content;
use crate::dm::DmRequest;
use crate::dm::mailboxes::SyncRange;
use crate::error::ChatResult;
use crate::frames::{dm_json_len, encode};
use crate::session::Session;
use crate::session::outbound::newest_within;

/// `dm`: checks the sender's side, then hands it to the conversation's owner.
pub async fn send(
    session: &mut Session,
    to: String,
    text: String,
    meta: Option<Map<String, Value>>,
    nonce: Option<Nonce>,
) -> ChatResult<Reply> {
    let from = session.identity.user.clone();
    session.node.conversations.check_addressing(&from, &to, false)?;
    check_content(&text, meta.as_ref())?;
    session.limits.admit_publish()?;
    let p = session.node.cluster.dm(DmRequest { from, to, text, meta, nonce, system: false }).await?;
    Ok(Reply { message_id: Some(p.id), duplicate: p.duplicate.then_some(true), ..Reply::ok(Value::Null) })
}

/// `dm_history`: the newest `limit` messages of the conversation with `with`, oldest first.
pub async fn history(
    session: &Session,
    with: String,
    limit: Option<u32>,
    before: Option<MessageId>,
) -> ChatResult<Reply> {
    let store = session.node.conversations.store();
    let mut messages = store.history(&session.identity.user, &with, clamp_limit(limit), before).await?;
    let keep_from = newest_within(&messages, session.handle.reply_budget(), dm_json_len);
    Ok(Reply {
        messages: Some(messages.split_off(keep_from).into()),
        truncated: (keep_from > 0).then_some(true),
        ..Reply::ok(Value::Null)
    })
}

/// `dm_sync`: the mailbox after `since` that this connection has not had
/// as pushes, queued together with the pushes that arrive meanwhile so the
/// two never overlap (see `dm::mailboxes`).
pub async fn sync(session: &Session, id: Option<Value>, since: Option<MessageId>) -> ChatResult<()> {
    let node = &session.node;
    let user = &session.identity.user;
    let before = match node.mailboxes.begin_sync(user, session.handle.id) {
        SyncRange::Open => None,
        SyncRange::Before(first) => Some(first),
    };
    let read = match node.conversations.store().mailbox(user, since, before).await {
        Ok(r) => r,
        Err(e) => {
            node.mailboxes.finish_sync(user, session.handle.id, None, None);
            return Err(e);
        }
    };
    let read_up_to = read.messages.last().and_then(|m| m.cursor);
    let mut messages = read.messages;
    // Oldest first: a reply over the budget keeps the oldest that fit and
    // says `truncated`, and the client syncs again from its `cursor`.
    let mut total = 0usize;
    let budget = session.handle.reply_budget();
    let fit = messages.iter().take_while(|m| {
        total = total.saturating_add(dm_json_len(m));
        total <= budget
    });
    let keep = fit.count();
    let truncated = keep < messages.len() || read.more;
    messages.truncate(keep);
    let cursor = messages.last().and_then(|m| m.cursor).or(since);
    let reply = id.map(|id| {
        encode(&ServerFrame::Reply(Reply {
            messages: Some(messages.into()),
            recovered: Some(read.complete),
            cursor,
            truncated: truncated.then_some(true),
            ..Reply::ok(id)
        }))
    });
    node.mailboxes.finish_sync(user, session.handle.id, reply, read_up_to);
    Ok(())
}

/// `dm_unread`: unread direct messages per conversation.
pub async fn unread(session: &Session) -> ChatResult<Reply> {
    let unread = session.node.conversations.store().unread(&session.identity.user).await?;
    Ok(Reply { unread: Some(unread), ..Reply::ok(Value::Null) })
}

/// `dm_read`: the conversation with `with` is read up to `up_to`.
pub async fn read(session: &Session, with: String, up_to: MessageId) -> ChatResult<Reply> {
    session.node.conversations.store().mark_read(&session.identity.user, &with, up_to).await?;
    Ok(Reply::ok(Value::Null))
}

/// `dm_settings`: who may send this user direct messages.
pub async fn settings(session: &Session, allow: DmAllow) -> ChatResult<Reply> {
    session.node.conversations.store().set_allow(&session.identity.user, allow).await?;
    Ok(Reply::ok(Value::Null))
}
