//! Lua scripts that make each owner step atomic in Redis: storing a
//! message and fanning it out, membership changes with their presence
//! events, cleanup after a dead edge, and a consistent recovery read.
//!
//! Every script receives the key prefix as `ARGV[1]` and derives its keys
//! from it (see docs/redis-layout.md); this ties Shardchat to a single Redis
//! (or a primary with replicas), not Redis Cluster.

use fred::types::scripts::Script;

/// Shared helpers, prepended to scripts that fan out.
const FANOUT: &str = r#"
local function inbox_of(p, edge)
  local node = string.match(edge, '^(.*)#') or edge
  return p .. ':inbox:' .. node
end
-- XADD `fields` to the inbox of every node with members in channel `c`
-- (one entry per node even when it has several incarnations listed).
local function fanout(p, c, inbox_maxlen, fields)
  local seen = {}
  for _, edge in ipairs(redis.call('HKEYS', p .. ':edges:' .. c)) do
    local inbox = inbox_of(p, edge)
    if not seen[inbox] then
      seen[inbox] = true
      redis.call('XADD', inbox, 'MAXLEN', '~', inbox_maxlen, '*', unpack(fields))
    end
  end
end
local function leave(p, c, user, edge, inbox_maxlen)
  if redis.call('SREM', p .. ':pairs:' .. c, edge .. '\t' .. user) == 0 then return 0 end
  if redis.call('HINCRBY', p .. ':edges:' .. c, edge, -1) <= 0 then
    redis.call('HDEL', p .. ':edges:' .. c, edge)
    redis.call('SREM', p .. ':edge-channels:' .. edge, c)
  end
  if redis.call('HINCRBY', p .. ':users:' .. c, user, -1) <= 0 then
    redis.call('HDEL', p .. ':users:' .. c, user)
    fanout(p, c, inbox_maxlen, {'k', 'pres', 'c', c, 'e', 'leave', 'u', user})
  end
  if redis.call('HLEN', p .. ':users:' .. c) == 0 then
    redis.call('SREM', p .. ':active', c)
  end
  return 1
end
"#;

/// ARGV: prefix, channel, from, text, meta ('' = none), max_messages,
/// min_id_ms (0 = no age bound), ttl_ms, dedup ('' = none), dedup_ttl_ms,
/// accepted_micros, inbox_maxlen. Returns the message id.
const COMMIT: &str = r#"
local p, c = ARGV[1], ARGV[2]
local dedup_key = ''
if ARGV[9] ~= '' then
  dedup_key = p .. ':dedup:' .. ARGV[9]
  local previous = redis.call('GET', dedup_key)
  if previous then return previous end
end
local h = p .. ':history:' .. c
local fields = {'f', ARGV[3], 'x', ARGV[4]}
if ARGV[5] ~= '' then
  fields[5] = 'm'
  fields[6] = ARGV[5]
end
local id = redis.call('XADD', h, '*', unpack(fields))
-- Trim by count and age, remembering the newest id dropped so that
-- recovery can tell whether it has a gap.
local trimmed = nil
local maxlen = tonumber(ARGV[6])
local len = redis.call('XLEN', h)
if len > maxlen then
  local gone = redis.call('XRANGE', h, '-', '+', 'COUNT', len - maxlen)
  trimmed = gone[#gone][1]
  redis.call('XTRIM', h, 'MAXLEN', '=', maxlen)
end
if tonumber(ARGV[7]) > 0 then
  local older = redis.call('XREVRANGE', h, '(' .. ARGV[7], '-', 'COUNT', 1)
  if #older > 0 then
    trimmed = older[1][1]
    redis.call('XTRIM', h, 'MINID', ARGV[7])
  end
end
local tkey = p .. ':trimmed:' .. c
if trimmed then redis.call('SET', tkey, trimmed) end
redis.call('PEXPIRE', h, ARGV[8])
if redis.call('EXISTS', tkey) == 1 then redis.call('PEXPIRE', tkey, ARGV[8]) end
if dedup_key ~= '' then redis.call('SET', dedup_key, id, 'PX', ARGV[10]) end
local event = {'k', 'msg', 'c', c, 'i', id, 'f', ARGV[3], 'x', ARGV[4], 't', ARGV[11]}
if ARGV[5] ~= '' then
  event[13] = 'm'
  event[14] = ARGV[5]
end
fanout(p, c, ARGV[12], event)
return id
"#;

/// ARGV: prefix, channel, user, edge, max_members, inbox_maxlen.
/// Returns the member count, or -1 when the channel is full.
const JOIN: &str = r#"
local p, c, user, edge = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local users = p .. ':users:' .. c
if redis.call('SISMEMBER', p .. ':pairs:' .. c, edge .. '\t' .. user) == 1 then
  return redis.call('HLEN', users)
end
local is_new = redis.call('HEXISTS', users, user) == 0
if is_new and redis.call('HLEN', users) >= tonumber(ARGV[5]) then return -1 end
redis.call('SADD', p .. ':pairs:' .. c, edge .. '\t' .. user)
redis.call('HINCRBY', p .. ':edges:' .. c, edge, 1)
redis.call('HINCRBY', users, user, 1)
redis.call('SADD', p .. ':edge-channels:' .. edge, c)
redis.call('SADD', p .. ':edges', edge)
redis.call('SADD', p .. ':active', c)
if is_new then
  fanout(p, c, ARGV[6], {'k', 'pres', 'c', c, 'e', 'join', 'u', user})
end
return redis.call('HLEN', users)
"#;

/// ARGV: prefix, channel, user, edge, inbox_maxlen. Returns 1 when the pair was a member.
const LEAVE: &str = r#"
return leave(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"#;

/// Removes every member that `edge` had in `channel` (the edge is dead).
/// ARGV: prefix, channel, edge, inbox_maxlen. Returns how many pairs went.
const DROP_EDGE: &str = r#"
local p, c, edge = ARGV[1], ARGV[2], ARGV[3]
local prefix = edge .. '\t'
local removed = 0
for _, pair in ipairs(redis.call('SMEMBERS', p .. ':pairs:' .. c)) do
  if string.sub(pair, 1, #prefix) == prefix then
    removed = removed + leave(p, c, string.sub(pair, #prefix + 1), edge, ARGV[4])
  end
end
redis.call('SREM', p .. ':edge-channels:' .. edge, c)
if redis.call('SCARD', p .. ':edge-channels:' .. edge) == 0 then
  redis.call('SREM', p .. ':edges', edge)
end
return removed
"#;

/// Closes a channel: tells every node with members, then forgets all of
/// its memberships. ARGV: prefix, channel, reason, inbox_maxlen. Returns
/// how many memberships went.
const CLOSE: &str = r#"
local p, c = ARGV[1], ARGV[2]
fanout(p, c, ARGV[4], {'k', 'closed', 'c', c, 'r', ARGV[3]})
local pairs_key = p .. ':pairs:' .. c
local members = redis.call('SMEMBERS', pairs_key)
for _, pair in ipairs(members) do
  local edge = string.match(pair, '^([^\t]*)\t')
  if edge then redis.call('SREM', p .. ':edge-channels:' .. edge, c) end
end
redis.call('DEL', pairs_key, p .. ':users:' .. c, p .. ':edges:' .. c)
redis.call('SREM', p .. ':active', c)
return #members
"#;

/// ARGV: prefix, channel, since, count. Returns
/// `{exists, trimmed id or '', newest id or '', entries after since}`.
const AFTER: &str = r#"
local p, c = ARGV[1], ARGV[2]
local h = p .. ':history:' .. c
if redis.call('EXISTS', h) == 0 then return {0, '', '', {}} end
local trimmed = redis.call('GET', p .. ':trimmed:' .. c) or ''
local newest = redis.call('XREVRANGE', h, '+', '-', 'COUNT', 1)
local newest_id = ''
if #newest > 0 then newest_id = newest[1][1] end
return {1, trimmed, newest_id, redis.call('XRANGE', h, '(' .. ARGV[3], '+', 'COUNT', ARGV[4])}
"#;

pub struct Scripts {
    pub commit: Script,
    pub join: Script,
    pub leave: Script,
    pub drop_edge: Script,
    pub close: Script,
    pub after: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        let with_helpers = |body: &str| Script::from_lua(format!("{FANOUT}\n{body}"));
        Self {
            commit: with_helpers(COMMIT),
            join: with_helpers(JOIN),
            leave: with_helpers(LEAVE),
            drop_edge: with_helpers(DROP_EDGE),
            close: with_helpers(CLOSE),
            after: Script::from_lua(AFTER),
        }
    }
}
