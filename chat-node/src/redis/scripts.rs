//! Lua scripts that make each owner step atomic in Redis: applying a batch
//! of channel operations (store + fan-out, membership with presence),
//! cleanup after a dead edge, closing a channel, and a consistent recovery
//! read.
//!
//! Every script receives the key prefix as `ARGV[1]` and derives its keys
//! from it exactly as `shardchat_common::redis_layout::Keys` names them
//! (see docs/redis-layout.md); this ties Shardchat to a single Redis (or a
//! primary with replicas), not Redis Cluster.

use fred::types::scripts::Script;

/// Shared helpers, prepended to scripts that fan out or change membership.
const HELPERS: &str = r#"
-- Fan-out, batched per node. emit() appends records of channel `c` to the
-- buffer of every node that has members in `c` at that moment (one buffer
-- per node, even when it has several incarnations listed); send_all()
-- writes each buffer as one `ev` entry (several when it is large), so a
-- commit of many channels costs one XADD per node, not one per channel and
-- node. A buffer keeps each channel's records in emit order. An inbox holds
-- only unread entries, so one at its cap is about to lose some: the
-- overflow flag tells its node to warn its members of a gap.
local out, out_order = {}, {}
local MAX_FIELDS = 6000
local function send_node(p, node, inbox_maxlen)
  local b = out[node]
  if #b.fields == 0 then return end
  local inbox = p .. ':inbox:' .. node
  if redis.call('XLEN', inbox) >= tonumber(inbox_maxlen) then
    redis.call('SET', p .. ':overflow:' .. node, '1')
  end
  redis.call('XADD', inbox, 'MAXLEN', '~', inbox_maxlen, '*', 'k', 'ev', unpack(b.fields))
  b.fields = {}
  b.last = nil
end
local function emit(p, c, inbox_maxlen, records)
  if #records == 0 then return end
  local seen = {}
  for _, edge in ipairs(redis.call('HKEYS', p .. ':edges:' .. c)) do
    local node = string.match(edge, '^(.*)#') or edge
    if not seen[node] then
      seen[node] = true
      local b = out[node]
      if not b then
        b = {fields = {}, last = nil}
        out[node] = b
        out_order[#out_order + 1] = node
      end
      if #b.fields + #records + 2 > MAX_FIELDS then send_node(p, node, inbox_maxlen) end
      local f = b.fields
      if b.last ~= c then
        f[#f + 1] = 'c'
        f[#f + 1] = c
        b.last = c
      end
      for r = 1, #records do f[#f + 1] = records[r] end
    end
  end
end
local function send_all(p, inbox_maxlen)
  for _, node in ipairs(out_order) do send_node(p, node, inbox_maxlen) end
end
-- One entry of another kind to every node with members in `c`, at once.
local function fanout(p, c, inbox_maxlen, fields)
  local seen = {}
  for _, edge in ipairs(redis.call('HKEYS', p .. ':edges:' .. c)) do
    local node = string.match(edge, '^(.*)#') or edge
    if not seen[node] then
      seen[node] = true
      if out[node] then send_node(p, node, inbox_maxlen) end
      local inbox = p .. ':inbox:' .. node
      if redis.call('XLEN', inbox) >= tonumber(inbox_maxlen) then
        redis.call('SET', p .. ':overflow:' .. node, '1')
      end
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
    emit(p, c, inbox_maxlen, {'e', 'leave', 'u', user})
  end
  if redis.call('HLEN', p .. ':users:' .. c) == 0 then
    redis.call('SREM', p .. ':active', c)
  end
  return 1
end
"#;

/// Applies operations of several channels; each channel's in order.
///
/// ARGV: prefix, inbox_maxlen, max_dynamic_channels, channel count; then per
/// channel: name, max_messages, max_age_ms, dynamic ('1'/'0'), max_members,
/// push head, op count; then per op its kind and fields:
/// * `p` (publish): from, text, meta ('' = none), dedup key ('' = none),
///   dedup ttl ms, deadline ms ('0' = none), accepted µs, push middle, push tail
/// * `j` (join) / `l` (leave): user, edge
///
/// Returns per channel a list of results: publish `id:<id>`, `dup:<id>`
/// (the dedup key was there) or `exp` (past its deadline, not stored); join
/// the member count, -1 (channel full) or -2 (too many dynamic channels);
/// leave 1 or 0.
const APPLY: &str = r#"
local p, inbox_maxlen, max_dynamic = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dyn_key = p .. ':dynamic'
local results_of = {}
local i = 5
for ci = 1, tonumber(ARGV[4]) do
  local c, max_messages, max_age = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local dynamic, max_members, head, n = ARGV[i + 3] == '1', tonumber(ARGV[i + 4]), ARGV[i + 5], tonumber(ARGV[i + 6])
  i = i + 7
  local h = p .. ':history:' .. c
  local users = p .. ':users:' .. c
  local pending = {}
  local function flush()
    emit(p, c, inbox_maxlen, pending)
    pending = {}
  end
  local stored = false
  local member_ops = false
  local results = {}
  for oi = 1, n do
    local kind = ARGV[i]
    if kind == 'p' then
      local from, text, meta, dkey = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
      local dttl, deadline, accepted = ARGV[i + 5], tonumber(ARGV[i + 6]), ARGV[i + 7]
      local middle, tail = ARGV[i + 8], ARGV[i + 9]
      i = i + 10
      local previous = false
      if dkey ~= '' then previous = redis.call('GET', dkey) end
      if previous then
        results[oi] = 'dup:' .. previous
      elseif deadline > 0 and now > deadline then
        results[oi] = 'exp'
      else
        local id
        if meta ~= '' then
          id = redis.call('XADD', h, '*', 'f', from, 'x', text, 'm', meta)
        else
          id = redis.call('XADD', h, '*', 'f', from, 'x', text)
        end
        if dkey ~= '' then redis.call('SET', dkey, id, 'PX', dttl) end
        local ms = string.match(id, '^(%d+)')
        local k = #pending
        pending[k + 1] = 'i'
        pending[k + 2] = id
        pending[k + 3] = 't'
        pending[k + 4] = accepted
        pending[k + 5] = 'p'
        pending[k + 6] = head .. id .. middle .. ms .. tail
        stored = true
        results[oi] = 'id:' .. id
      end
    else
      local user, edge = ARGV[i + 1], ARGV[i + 2]
      i = i + 3
      -- Messages before a membership change reach the nodes that had members then.
      flush()
      member_ops = true
      if kind == 'j' then
        local pair = edge .. '\t' .. user
        if redis.call('SISMEMBER', p .. ':pairs:' .. c, pair) == 1 then
          results[oi] = redis.call('HLEN', users)
        else
          local is_new = redis.call('HEXISTS', users, user) == 0
          local count = redis.call('HLEN', users)
          local admitted = true
          if dynamic and count == 0 then
            local score = redis.call('ZSCORE', dyn_key, c)
            if not score or tonumber(score) <= now then
              redis.call('ZREMRANGEBYSCORE', dyn_key, '-inf', now)
              admitted = redis.call('ZCARD', dyn_key) < max_dynamic
            end
          end
          if not admitted then
            results[oi] = -2
          elseif is_new and count >= max_members then
            results[oi] = -1
          else
            redis.call('SADD', p .. ':pairs:' .. c, pair)
            redis.call('HINCRBY', p .. ':edges:' .. c, edge, 1)
            redis.call('HINCRBY', users, user, 1)
            redis.call('SADD', p .. ':edge-channels:' .. edge, c)
            redis.call('SADD', p .. ':edges', edge)
            redis.call('SADD', p .. ':active', c)
            if is_new then
              emit(p, c, inbox_maxlen, {'e', 'join', 'u', user})
            end
            results[oi] = redis.call('HLEN', users)
          end
        end
      else
        results[oi] = leave(p, c, user, edge, inbox_maxlen)
      end
    end
  end
  flush()
  if stored then
    -- Trim by count and age, remembering the newest id dropped so that
    -- recovery can tell whether it has a gap.
    local trimmed = nil
    local len = redis.call('XLEN', h)
    if len > max_messages then
      local gone = redis.call('XRANGE', h, '-', '+', 'COUNT', len - max_messages)
      trimmed = gone[#gone][1]
      redis.call('XTRIM', h, 'MAXLEN', '=', max_messages)
    end
    local min_id = now - max_age
    if max_age > 0 and min_id > 0 then
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
    local tkey = p .. ':trimmed:' .. c
    local ttl = math.max(max_age, 1000)
    if trimmed then
      redis.call('SET', tkey, trimmed, 'PX', ttl)
    else
      redis.call('PEXPIRE', tkey, ttl)
    end
    redis.call('PEXPIRE', h, ttl)
  end
  if dynamic then
    -- The score moves forward at most once a second: it may run up to a
    -- second late (the channel counts a little longer), never early. Only
    -- a stale score or a membership change needs the member count.
    local until_ms = now + math.max(max_age, 1000)
    local score = redis.call('ZSCORE', dyn_key, c)
    local fresh = score and tonumber(score) >= until_ms
    if not fresh or member_ops then
      if redis.call('HLEN', users) > 0 then
        if not fresh then redis.call('ZADD', dyn_key, until_ms + 1000, c) end
      elseif not stored then
        -- The last member left and nothing was stored: only the history keeps it counted.
        if redis.call('EXISTS', h) == 0 then redis.call('ZREM', dyn_key, c) end
      end
    end
  end
  results_of[ci] = results
end
send_all(p, inbox_maxlen)
return results_of
"#;

/// Removes every member that `edge` had in `channel` (the edge is dead).
/// ARGV: prefix, channel, edge, inbox_maxlen. Returns how many pairs went.
///
/// The heartbeat is checked here, atomically with the removal, not only by
/// the sweep that found it missing: an edge whose heartbeat came back since
/// (Redis restarted, the edge is re-registering its members) keeps every
/// membership. Removing them after the edge re-registered would leave its
/// members subscribed locally and silently cut off.
const DROP_EDGE: &str = r#"
local p, c, edge = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', p .. ':alive:' .. edge) == 1 then return 0 end
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
send_all(p, ARGV[4])
return removed
"#;

/// Forgets a dead edge that has no channels and no direct-message users
/// left. ARGV: prefix, edge. Returns 1 when it went; 0 when it still has
/// some or its heartbeat is back (a re-registering edge adds them again).
const FORGET_EDGE: &str = r#"
local p, edge = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. ':alive:' .. edge) == 1 then return 0 end
if redis.call('SCARD', p .. ':edge-channels:' .. edge) > 0 then return 0 end
if redis.call('EXISTS', p .. ':edge-users:' .. edge) == 1 then return 0 end
return redis.call('SREM', p .. ':edges', edge)
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
redis.call('ZREM', p .. ':dynamic', c)
return #members
"#;

/// ARGV: prefix, channel, since, cap. Returns `{exists, trimmed id or '',
/// newest id or '', newest entries after since (at most cap + 1), newest first}`.
const AFTER: &str = r#"
local p, c = ARGV[1], ARGV[2]
local h = p .. ':history:' .. c
if redis.call('EXISTS', h) == 0 then return {0, '', '', {}} end
local trimmed = redis.call('GET', p .. ':trimmed:' .. c) or ''
local newest = redis.call('XREVRANGE', h, '+', '-', 'COUNT', 1)
local newest_id = ''
if #newest > 0 then newest_id = newest[1][1] end
return {1, trimmed, newest_id, redis.call('XREVRANGE', h, '+', '(' .. ARGV[3], 'COUNT', tonumber(ARGV[4]) + 1)}
"#;

/// Acknowledges inbox entries and deletes everything up to the last of
/// them: an inbox holds only what its node has not handled yet.
/// KEYS: the inbox. ARGV: group, ids...
const ACK_AND_TRIM: &str = r#"
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[#ARGV])
redis.call('XDEL', KEYS[1], ARGV[#ARGV])
return n
"#;

pub struct Scripts {
    pub apply: Script,
    pub drop_edge: Script,
    pub forget_edge: Script,
    pub close: Script,
    pub after: Script,
    pub ack_and_trim: Script,
}

/// The shebang makes Redis check memory *before* a writing script runs: on a
/// full Redis the whole script is refused (`OOM`), never stopped halfway
/// with some of its writes done.
const WRITES: &str = "#!lua";
/// Deleting handled inbox entries must work on a full Redis: it frees memory.
const FREES_MEMORY: &str = "#!lua flags=allow-oom";
const READS_ONLY: &str = "#!lua flags=no-writes";

impl Default for Scripts {
    fn default() -> Self {
        let with_helpers = |body: &str| Script::from_lua(format!("{WRITES}\n{HELPERS}\n{body}"));
        Self {
            apply: with_helpers(APPLY),
            drop_edge: with_helpers(DROP_EDGE),
            forget_edge: Script::from_lua(format!("{FREES_MEMORY}\n{FORGET_EDGE}")),
            close: with_helpers(CLOSE),
            after: Script::from_lua(format!("{READS_ONLY}\n{AFTER}")),
            ack_and_trim: Script::from_lua(format!("{FREES_MEMORY}\n{ACK_AND_TRIM}")),
        }
    }
}

/// The Lua scripts' text, for the test that checks their key names
/// against `shardchat_common::redis_layout::Keys`.
#[cfg(test)]
pub(crate) fn all_sources() -> String {
    [HELPERS, APPLY, DROP_EDGE, FORGET_EDGE, CLOSE, AFTER].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardchat_common::redis_layout::Keys;

    #[test]
    fn scripts_name_keys_as_the_shared_layout_does() {
        // Every key pattern the scripts build (`p .. ':<kind>:'`, `p .. ':<kind>'`)
        // must be one the shared layout defines.
        let k = Keys::new("P");
        let layout = [
            k.dm("C"),
            k.dm_trimmed("C"),
            k.mailbox("U"),
            k.mailbox_trimmed("U"),
            k.dm_unread("U"),
            k.dm_contacts("U"),
            k.dm_allow(),
            k.user_edges("U"),
            k.edge_users("E"),
            k.alive("E"),
            k.history("C"),
            k.trimmed("C"),
            k.users("C"),
            k.channel_edges("C"),
            k.pairs("C"),
            k.inbox("N"),
            k.overflow("N"),
            k.edge_channels("E"),
            k.edges(),
            k.active(),
            k.dynamic(),
        ];
        let sources = all_sources() + &super::super::dm::all_sources();
        let mut found = 0;
        for (at, _) in sources.match_indices("p .. ':") {
            let rest = &sources[at + "p .. ':".len()..];
            let name: String = rest.chars().take_while(|c| *c != '\'').collect();
            let full = format!("P:{name}");
            assert!(
                layout.iter().any(|key| key == &full || key.starts_with(&full) && full.ends_with(':')),
                "the scripts build key {full:?}, which redis_layout::Keys does not define"
            );
            found += 1;
        }
        assert!(found >= 10, "expected the scripts to build keys from the prefix");
    }
}
