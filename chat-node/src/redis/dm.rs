//! Direct messages in cluster mode: one Lua script stores a message in its
//! conversation and both users' mailboxes and fans it out to every node
//! where either user is connected (key layout: docs/redis-layout.md).

use std::collections::BTreeMap;
use std::sync::Arc;

use fred::prelude::*;
use fred::types::Value;
use fred::types::scripts::Script;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Map;
use shardchat_common::MessageId;
use shardchat_common::protocol::{DirectMessage, DmAllow};
use shardchat_common::redis_layout::conversation_id;

use super::{RedisCtx, apply_error, unavailable};
use crate::dm::{DmDraft, DmLimits, DmStore, MAX_SYNC, MailboxRead, SendResult};
use crate::error::{ChatError, ChatResult};
use crate::frames::DmPushTemplate;
use crate::owner::backend::{ApplyError, Dedup};

/// Trims stream `h` to `max` entries and to entries newer than `min_id`,
/// remembering the newest id dropped in key `tkey`; the stream and the
/// pointer expire after `ttl` ms without a write.
const TRIM: &str = r#"
local function trim(h, tkey, max, min_id, ttl)
  local trimmed = nil
  local len = redis.call('XLEN', h)
  if len > max then
    local gone = redis.call('XRANGE', h, '-', '+', 'COUNT', len - max)
    trimmed = gone[#gone][1]
    redis.call('XTRIM', h, 'MAXLEN', '=', max)
  end
  if min_id > 0 then
    -- Only when the oldest entry is too old does the (costly, reverse)
    -- search for the newest entry to drop run.
    local first = redis.call('XRANGE', h, '-', '+', 'COUNT', 1)
    if #first > 0 and tonumber(string.match(first[1][1], '^(%d+)')) < min_id then
      local older = redis.call('XREVRANGE', h, '(' .. min_id, '-', 'COUNT', 1)
      if #older > 0 then
        trimmed = older[1][1]
        redis.call('XTRIM', h, 'MINID', min_id)
      end
    end
  end
  if trimmed then
    redis.call('SET', tkey, trimmed, 'PX', ttl)
  else
    redis.call('PEXPIRE', tkey, ttl)
  end
  redis.call('PEXPIRE', h, ttl)
end
"#;

/// ARGV: prefix, from, to, conversation, text, meta ('' = none), dedup key
/// ('' = none), dedup ttl ms, deadline ms ('0' = none), accepted µs,
/// max messages, max age ms, mailbox max, inbox maxlen, system ('1'/'0'),
/// push head, push cursor separator, push middle, push tail. Returns
/// `id:<id>`, `dup:<id>`, `exp` or `refused`.
const SEND: &str = r#"
local p, from, to, conv, text, meta = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local dkey, dttl, deadline, accepted = ARGV[7], ARGV[8], tonumber(ARGV[9]), ARGV[10]
local max_messages, max_age, mailbox_max, inbox_maxlen = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14]
local system = ARGV[15] == '1'
local head, sep, middle, tail = ARGV[16], ARGV[17], ARGV[18], ARGV[19]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if dkey ~= '' then
  local previous = redis.call('GET', dkey)
  if previous then return 'dup:' .. previous end
end
if deadline > 0 and now > deadline then return 'exp' end
if not system and redis.call('HGET', p .. ':dm-allow', to) == 'none'
   and redis.call('SISMEMBER', p .. ':dm-contacts:' .. to, from) == 0 then
  return 'refused'
end
local fields = {'f', from, 't', to, 'x', text}
if meta ~= '' then fields[7] = 'm'; fields[8] = meta end
local min_id = now - max_age
local h = p .. ':dm:' .. conv
local id = redis.call('XADD', h, '*', unpack(fields))
trim(h, p .. ':dm-trimmed:' .. conv, max_messages, min_id, max_age)
if dkey ~= '' then redis.call('SET', dkey, id, 'PX', dttl) end
local ms = string.match(id, '^(%d+)')
local participants = {to}
if not system then participants[2] = from end
-- node -> list of {user, cursor, push}
local per_node, order = {}, {}
for _, user in ipairs(participants) do
  local mbox = p .. ':mbox:' .. user
  local cursor = redis.call('XADD', mbox, '*', 'i', id, unpack(fields))
  trim(mbox, p .. ':mbox-trimmed:' .. user, mailbox_max, min_id, max_age)
  local push = head .. id .. sep .. cursor .. middle .. ms .. tail
  for _, edge in ipairs(redis.call('HKEYS', p .. ':user-edges:' .. user)) do
    local node = string.match(edge, '^(.*)#') or edge
    if not per_node[node] then per_node[node] = {'k', 'dm'}; order[#order + 1] = node end
    local e = per_node[node]
    local already = false
    for k = 3, #e, 6 do if e[k + 1] == user then already = true end end
    if not already then
      e[#e + 1] = 'u'; e[#e + 1] = user; e[#e + 1] = 'c'; e[#e + 1] = cursor; e[#e + 1] = 'p'; e[#e + 1] = push
    end
  end
end
redis.call('HINCRBY', p .. ':dm-unread:' .. to, from, 1)
if not system then redis.call('SADD', p .. ':dm-contacts:' .. from, to) end
for _, node in ipairs(order) do
  local inbox = p .. ':inbox:' .. node
  if redis.call('XLEN', inbox) >= tonumber(inbox_maxlen) then
    redis.call('SET', p .. ':overflow:' .. node, '1')
  end
  redis.call('XADD', inbox, 'MAXLEN', '~', inbox_maxlen, '*', unpack(per_node[node]))
end
return 'id:' .. id
"#;

/// ARGV: prefix, user, since, before ('' = none), cap. Returns `{exists,
/// trimmed or '', newest or '', the oldest entries in (since, before), at most cap + 1}`.
const MAILBOX_AFTER: &str = r#"
local p, user = ARGV[1], ARGV[2]
local h = p .. ':mbox:' .. user
if redis.call('EXISTS', h) == 0 then return {0, '', '', {}} end
local trimmed = redis.call('GET', p .. ':mbox-trimmed:' .. user) or ''
local newest = redis.call('XREVRANGE', h, '+', '-', 'COUNT', 1)
local newest_id = ''
if #newest > 0 then newest_id = newest[1][1] end
local upper = '+'
if ARGV[4] ~= '' then upper = '(' .. ARGV[4] end
return {1, trimmed, newest_id, redis.call('XRANGE', h, '(' .. ARGV[3], upper, 'COUNT', tonumber(ARGV[5]) + 1)}
"#;

/// ARGV: prefix, user, with, conversation, up_to. Sets `user`'s unread count
/// from `with` to the messages from `with` after `up_to`.
const MARK_READ: &str = r#"
local p, user, with = ARGV[1], ARGV[2], ARGV[3]
local n = 0
for _, e in ipairs(redis.call('XRANGE', p .. ':dm:' .. ARGV[4], '(' .. ARGV[5], '+')) do
  local f = e[2]
  for k = 1, #f, 2 do
    if f[k] == 'f' and f[k + 1] == with then n = n + 1 end
  end
end
if n == 0 then redis.call('HDEL', p .. ':dm-unread:' .. user, with)
else redis.call('HSET', p .. ':dm-unread:' .. user, with, n) end
return n
"#;

/// ARGV: prefix, edge. Removes a dead edge from the fan-out lists of its
/// users; returns how many users it had, or -1 when the edge's heartbeat is
/// there (checked atomically with the removal: an edge whose heartbeat came
/// back is re-registering its users and keeps every route).
const DROP_EDGE: &str = r#"
local p, edge = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. ':alive:' .. edge) == 1 then return -1 end
local users = redis.call('SMEMBERS', p .. ':edge-users:' .. edge)
for _, u in ipairs(users) do redis.call('HDEL', p .. ':user-edges:' .. u, edge) end
redis.call('DEL', p .. ':edge-users:' .. edge)
return #users
"#;

pub struct DmScripts {
    send: Script,
    mailbox_after: Script,
    mark_read: Script,
    drop_edge: Script,
}

impl Default for DmScripts {
    fn default() -> Self {
        Self {
            send: Script::from_lua(format!("#!lua\n{TRIM}\n{SEND}")),
            mailbox_after: Script::from_lua(format!("#!lua flags=no-writes\n{MAILBOX_AFTER}")),
            mark_read: Script::from_lua(format!("#!lua\n{MARK_READ}")),
            drop_edge: Script::from_lua(format!("#!lua flags=allow-oom\n{DROP_EDGE}")),
        }
    }
}

pub struct RedisDms {
    redis: Arc<RedisCtx>,
    scripts: DmScripts,
    limits: DmLimits,
    edge_id: Arc<str>,
    /// A registration failed (Redis unreachable): upkeep registers every local user again.
    registration_failed: Arc<std::sync::atomic::AtomicBool>,
}

/// How long past its deadline a request's dedup record is kept.
const REQUEST_RECORD_GRACE_MS: u64 = 30_000;

impl RedisDms {
    pub fn new(redis: Arc<RedisCtx>, limits: DmLimits, edge_id: Arc<str>) -> Self {
        Self {
            redis,
            scripts: DmScripts::default(),
            limits,
            edge_id,
            registration_failed: Default::default(),
        }
    }

    /// Whether a registration failed since the last call.
    pub fn take_registration_failure(&self) -> bool {
        self.registration_failed.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// The dedup record of `draft` ('' = none) and how long it lives.
    fn dedup_key(&self, draft: &DmDraft) -> (String, u64) {
        let keys = &self.redis.keys;
        match &draft.dedup {
            Dedup::Nonce(n) => (
                keys.dm_nonce(&conversation_id(&draft.from, &draft.to), &draft.from, n),
                self.redis.settings.dedup_window.as_millis() as u64,
            ),
            Dedup::Request(r) => {
                let now = self.redis.clock.now_ms().unwrap_or(0);
                let left = draft.deadline_ms.map(|d| d.saturating_sub(now)).unwrap_or(0);
                (keys.request(r), left + REQUEST_RECORD_GRACE_MS)
            }
            Dedup::None => (String::new(), 0),
        }
    }

    /// Re-registers every local user for fan-out (after Redis lost its data).
    pub async fn reregister(&self, users: &[Arc<str>]) {
        for u in users {
            if let Err(e) = self.connected(u).await {
                tracing::warn!(user = %u, error = %e, "re-registering a user for direct messages failed");
            }
        }
    }

    /// Removes a dead edge from the fan-out lists of its users; `None`
    /// when its heartbeat is back (it keeps them).
    pub async fn drop_edge(&self, edge: &str) -> Result<Option<usize>, fred::error::Error> {
        let n: i64 = self.redis.run(&self.scripts.drop_edge, vec![edge.to_string()]).await?;
        Ok(usize::try_from(n).ok())
    }
}

/// A mailbox or conversation entry as a direct message.
fn message_of(
    id: MessageId,
    cursor: Option<MessageId>,
    fields: &[(String, String)],
) -> Option<DirectMessage> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let id = match cursor {
        Some(_) => get("i")?.parse().ok()?,
        None => id,
    };
    Some(DirectMessage {
        id,
        cursor,
        from: get("f")?.to_string(),
        to: get("t")?.to_string(),
        text: get("x").unwrap_or_default().to_string(),
        ts: id.ms,
        meta: get("m").filter(|m| !m.is_empty()).and_then(|m| serde_json::from_str::<Map<_, _>>(m).ok()),
    })
}

fn parse_entries(value: Value) -> Vec<(MessageId, Vec<(String, String)>)> {
    value
        .into_array()
        .into_iter()
        .filter_map(|entry| {
            let mut parts = entry.into_array().into_iter();
            let id: MessageId = parts.next()?.as_string()?.parse().ok()?;
            let flat = parts.next()?.into_array();
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((kv.first()?.as_string()?, kv.get(1)?.as_string()?)))
                .collect();
            Some((id, fields))
        })
        .collect()
}

impl DmStore for RedisDms {
    fn send(&self, draft: DmDraft) -> BoxFuture<'static, Result<SendResult, ApplyError>> {
        let (dkey, ttl) = self.dedup_key(&draft);
        let args = vec![
            draft.from.to_string(),
            draft.to.clone(),
            conversation_id(&draft.from, &draft.to),
            draft.text.clone(),
            draft.meta_json.clone().unwrap_or_default(),
            dkey,
            ttl.max(1).to_string(),
            draft.deadline_ms.unwrap_or(0).to_string(),
            draft.accepted_at_micros.to_string(),
            self.limits.max_messages.max(1).to_string(),
            (self.limits.max_age.as_millis() as u64).max(1000).to_string(),
            self.limits.mailbox_max.max(1).to_string(),
            self.redis.settings.inbox_maxlen.to_string(),
            if draft.system { "1" } else { "0" }.to_string(),
            DmPushTemplate::HEAD.to_string(),
            DmPushTemplate::CURSOR.to_string(),
            draft.push.middle.clone(),
            draft.push.tail.clone(),
        ];
        let redis = self.redis.clone();
        let script = self.scripts.send.clone();
        let nonce = matches!(draft.dedup, Dedup::Nonce(_));
        async move {
            redis.check_connected().map_err(ApplyError::Refused)?;
            let reply: String = redis.run(&script, args).await.map_err(apply_error)?;
            let bad = || {
                ApplyError::Refused(ChatError::unavailable(format!("unexpected reply from Redis: {reply}")))
            };
            if let Some(id) = reply.strip_prefix("id:") {
                Ok(SendResult::Stored { id: id.parse().map_err(|_| bad())?, duplicate: false })
            } else if let Some(id) = reply.strip_prefix("dup:") {
                Ok(SendResult::Stored { id: id.parse().map_err(|_| bad())?, duplicate: nonce })
            } else if reply == "exp" {
                Ok(SendResult::Expired)
            } else if reply == "refused" {
                Ok(SendResult::NotAccepted)
            } else {
                Err(bad())
            }
        }
        .boxed()
    }

    fn lookup(&self, draft: &DmDraft) -> BoxFuture<'static, ChatResult<Option<MessageId>>> {
        let (key, _) = self.dedup_key(draft);
        let redis = self.redis.clone();
        async move {
            if key.is_empty() {
                return Ok(None);
            }
            redis.check_connected()?;
            let id: Option<String> = redis.client.get(key).await.map_err(unavailable)?;
            Ok(id.and_then(|id| id.parse().ok()))
        }
        .boxed()
    }

    fn now_ms(&self) -> Option<u64> {
        self.redis.clock.now_ms()
    }

    fn history(
        &self,
        a: &str,
        b: &str,
        limit: usize,
        before: Option<MessageId>,
    ) -> BoxFuture<'static, ChatResult<Vec<DirectMessage>>> {
        let key = self.redis.keys.dm(&conversation_id(a, b));
        let redis = self.redis.clone();
        async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let end = before.map(|b| format!("({b}")).unwrap_or_else(|| "+".into());
            let entries: Vec<(String, Vec<(String, String)>)> =
                redis.client.xrevrange(key, end, "-", Some(limit as u64)).await.map_err(unavailable)?;
            let mut messages: Vec<DirectMessage> = entries
                .into_iter()
                .filter_map(|(id, fields)| message_of(id.parse().ok()?, None, &fields))
                .collect();
            messages.reverse();
            Ok(messages)
        }
        .boxed()
    }

    fn mailbox(
        &self,
        user: &str,
        since: Option<MessageId>,
        before: Option<MessageId>,
    ) -> BoxFuture<'static, ChatResult<MailboxRead>> {
        let since = since.unwrap_or(MessageId::ZERO);
        let args = vec![
            user.to_string(),
            since.to_string(),
            before.map(|b| b.to_string()).unwrap_or_default(),
            MAX_SYNC.to_string(),
        ];
        let redis = self.redis.clone();
        let script = self.scripts.mailbox_after.clone();
        async move {
            let reply: Value = redis.run(&script, args).await.map_err(unavailable)?;
            let mut parts = reply.into_array().into_iter();
            if parts.next().and_then(|v| v.as_i64()).unwrap_or(0) != 1 {
                return Ok(MailboxRead {
                    messages: Vec::new(),
                    complete: since == MessageId::ZERO,
                    more: false,
                });
            }
            let id_of =
                |v: Option<Value>| v.and_then(|v| v.as_string()).and_then(|s| s.parse::<MessageId>().ok());
            let trimmed = id_of(parts.next());
            let newest = id_of(parts.next());
            let mut entries = parts.next().map(parse_entries).unwrap_or_default();
            let last_known = newest.max(trimmed).unwrap_or(MessageId::ZERO);
            let complete = since <= last_known && trimmed.is_none_or(|t| since >= t);
            let more = entries.len() > MAX_SYNC;
            entries.truncate(MAX_SYNC);
            let messages =
                entries.into_iter().filter_map(|(cursor, f)| message_of(cursor, Some(cursor), &f)).collect();
            Ok(MailboxRead { messages, complete, more })
        }
        .boxed()
    }

    fn unread(&self, user: &str) -> BoxFuture<'static, ChatResult<BTreeMap<String, u64>>> {
        let key = self.redis.keys.dm_unread(user);
        let redis = self.redis.clone();
        async move {
            let counts: std::collections::HashMap<String, u64> =
                redis.client.hgetall(key).await.map_err(unavailable)?;
            Ok(counts.into_iter().filter(|(_, n)| *n > 0).collect())
        }
        .boxed()
    }

    fn mark_read(&self, user: &str, with: &str, up_to: MessageId) -> BoxFuture<'static, ChatResult<()>> {
        let args = vec![user.to_string(), with.to_string(), conversation_id(user, with), up_to.to_string()];
        let redis = self.redis.clone();
        let script = self.scripts.mark_read.clone();
        async move {
            let _: i64 = redis.run(&script, args).await.map_err(unavailable)?;
            Ok(())
        }
        .boxed()
    }

    fn set_allow(&self, user: &str, allow: DmAllow) -> BoxFuture<'static, ChatResult<()>> {
        let (key, user) = (self.redis.keys.dm_allow(), user.to_string());
        let redis = self.redis.clone();
        async move {
            let _: i64 = match allow {
                DmAllow::All => redis.client.hdel(key, user).await,
                DmAllow::None => redis.client.hset(key, (user, "none")).await,
            }
            .map_err(unavailable)?;
            Ok(())
        }
        .boxed()
    }

    fn connected(&self, user: &str) -> BoxFuture<'static, ChatResult<()>> {
        let r = self.redis.clone();
        let (user, edge) = (user.to_string(), self.edge_id.to_string());
        let failed = self.registration_failed.clone();
        async move {
            let on_error = |e: fred::error::Error| {
                failed.store(true, std::sync::atomic::Ordering::Release);
                unavailable(e)
            };
            let pipeline = r.client.pipeline();
            let _: () =
                pipeline.hset(r.keys.user_edges(&user), (edge.as_str(), 1)).await.map_err(on_error)?;
            let _: () = pipeline.sadd(r.keys.edge_users(&edge), user.as_str()).await.map_err(on_error)?;
            let _: () = pipeline.sadd(r.keys.edges(), edge.as_str()).await.map_err(on_error)?;
            let _: Vec<Value> = pipeline.all().await.map_err(on_error)?;
            Ok(())
        }
        .boxed()
    }

    fn disconnected(&self, user: &str) -> BoxFuture<'static, ChatResult<()>> {
        let r = self.redis.clone();
        let (user, edge) = (user.to_string(), self.edge_id.to_string());
        async move {
            let pipeline = r.client.pipeline();
            let _: () = pipeline.hdel(r.keys.user_edges(&user), edge.as_str()).await.map_err(unavailable)?;
            let _: () = pipeline.srem(r.keys.edge_users(&edge), user.as_str()).await.map_err(unavailable)?;
            let _: Vec<Value> = pipeline.all().await.map_err(unavailable)?;
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
pub(crate) fn all_sources() -> String {
    [TRIM, SEND, MAILBOX_AFTER, MARK_READ, DROP_EDGE].concat()
}
