//! What the operator writes to Redis (see docs/redis-layout.md, "Written by
//! the operator"): the ring, channel configs and close requests.
//!
//! Every write that must be atomic is one Lua script, so a node never sees a
//! half-done change (e.g. a new config without a version bump) and a retried
//! reconcile is idempotent.
//!
//! `Store::Memory` holds the same data in process memory; the reconcile mock
//! tests use it (and its failure switch) where a Redis server is in the way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::ReconnectPolicy;

use crate::crd::DeletionPolicy;
use crate::ring::RingSnapshot;

/// Redis key names under one prefix: the layout shared with chat-node.
pub use shardchat_common::redis_layout::Keys;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis unavailable (test switch)")]
    MemoryDown,
    #[error("{key} holds invalid JSON: {source}")]
    BadJson { key: String, source: serde_json::Error },
    #[error("ring in redis kept changing under us")]
    RingContention,
    #[error(transparent)]
    Url(#[from] shardchat_common::redis_url::RedisUrlError),
    #[error("redis TLS: {0}")]
    Tls(#[from] shardchat_common::redis_url::TlsConfigError),
    #[error("{0}")]
    Batch(Arc<StoreError>),
    #[error("the config writer stopped")]
    WriterStopped,
    #[error("cannot record the ring epoch floor: {0}")]
    Floor(String),
    #[error("ring epoch {0} is above the highest epoch the operator writes ({max})", max = crate::epoch_floor::MAX_EPOCH)]
    EpochTooHigh(u64),
}

/// Sets KEYS[1] to ARGV[2] only if it currently holds ARGV[1] ('' = absent).
const CAS_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
";

/// For each (field, value) pair in ARGV: HSET KEYS[1] field value when the
/// value differs; one INCR KEYS[2] when any did. Returns 1/0 per pair.
/// One HMGET, at most one HSET and one INCR per call, however many pairs.
const PUT_CONFIGS_SCRIPT: &str = r"
local fields = {}
for i = 1, #ARGV, 2 do fields[#fields + 1] = ARGV[i] end
local current = redis.call('HMGET', KEYS[1], unpack(fields))
local changed, updates = {}, {}
for i = 1, #fields do
  local value = ARGV[2 * i]
  if current[i] == value then
    changed[i] = 0
  else
    changed[i] = 1
    updates[#updates + 1] = fields[i]
    updates[#updates + 1] = value
  end
end
if #updates > 0 then
  redis.call('HSET', KEYS[1], unpack(updates))
  redis.call('INCR', KEYS[2])
end
return changed
";

/// Most (field, value) pairs in one call of the put-configs script (Lua's
/// `unpack` takes a few thousand values at most).
pub const MAX_CONFIG_BATCH: usize = 256;
/// Most `HLEN`s in one pipeline.
const MEMBERS_PIPELINE: usize = 1000;

/// HDEL + INCR (when the field existed); with ARGV[2] = 'Delete' also
/// XADD the close request to KEYS[3] (unless ARGV[3] is '') and DEL KEYS[4].
const REMOVE_SCRIPT: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then redis.call('INCR', KEYS[2]) end
if ARGV[2] == 'Delete' then
  if ARGV[3] ~= '' then redis.call('XADD', KEYS[3], '*', 'k', 'close', 'd', ARGV[3]) end
  redis.call('DEL', KEYS[4])
end
return 1
";

/// The close request the owner receives on its inbox.
pub fn close_request(channel: &str) -> String {
    serde_json::json!({"channel": channel, "reason": "deleted"}).to_string()
}

/// In-memory stand-in for the Redis data the operator touches.
#[derive(Debug, Default)]
pub struct MemoryData {
    pub down: bool,
    pub ring: Option<String>,
    pub channels: BTreeMap<String, String>,
    pub version: i64,
    /// inbox key suffix (node) -> list of (k, d)
    pub inbox: HashMap<String, Vec<(String, String)>>,
    /// channel -> members (`HLEN {p}:users:<channel>`)
    pub members: HashMap<String, u64>,
    /// Calls of the put-configs script (one per batch).
    pub put_calls: usize,
    /// channels whose history was deleted
    pub history_deleted: Vec<String>,
}

#[derive(Clone)]
pub enum Store {
    Redis { client: Client, keys: Keys, put_configs: Arc<fred::types::scripts::Script> },
    Memory(Arc<Mutex<MemoryData>>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Redis { keys, .. } => write!(f, "Store::Redis({})", keys.prefix()),
            Store::Memory(_) => f.write_str("Store::Memory"),
        }
    }
}

impl Store {
    /// Connects to Redis in the background (reconnecting forever, also when
    /// the very first attempt fails); commands fail after `timeout` instead
    /// of hanging while Redis is away.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Store, StoreError> {
        Self::connect_with_ca(url, None, prefix, timeout).await
    }

    /// [`connect`](Self::connect), also trusting the CA certificates (PEM)
    /// in `ca_file` for `rediss://`. Only `redis://` and `rediss://` URLs are
    /// accepted (see `shardchat_common::redis_url`).
    pub async fn connect_with_ca(
        url: &str,
        ca_file: Option<&std::path::Path>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        use shardchat_common::redis_url;
        let checked = redis_url::check(url)?;
        let mut config = Config::from_url(url)?;
        // fred's default gives up for good when the first connection fails,
        // so an operator that started while Redis was down never connected.
        config.fail_fast = false;
        config.tls = if checked.tls {
            let (tls, warnings) = redis_url::client_config(ca_file)?;
            for w in warnings {
                tracing::warn!("{w}");
            }
            Some(fred::types::config::TlsConnector::from(tls).into())
        } else {
            None
        };
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        client.connect();
        // Do not fail start-up when Redis is down: reconciles report
        // RedisUnavailable and retry until it is back.
        let _ = tokio::time::timeout(timeout, client.wait_for_connect()).await;
        let put_configs = Arc::new(fred::types::scripts::Script::from_lua(PUT_CONFIGS_SCRIPT));
        Ok(Store::Redis { client, keys: Keys::new(prefix), put_configs })
    }

    pub fn memory() -> (Store, Arc<Mutex<MemoryData>>) {
        let data = Arc::new(Mutex::new(MemoryData::default()));
        (Store::Memory(data.clone()), data)
    }

    fn mem(data: &Mutex<MemoryData>) -> Result<std::sync::MutexGuard<'_, MemoryData>, StoreError> {
        let guard = data.lock().expect("memory store lock");
        if guard.down { Err(StoreError::MemoryDown) } else { Ok(guard) }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Redis { client, .. } => {
                let _: String = client.ping(None).await?;
                Ok(())
            }
            Store::Memory(d) => Self::mem(d).map(|_| ()),
        }
    }

    /// The raw `{p}:ring` value.
    pub async fn ring_raw(&self) -> Result<Option<String>, StoreError> {
        match self {
            Store::Redis { client, keys, .. } => Ok(client.get(keys.ring()).await?),
            Store::Memory(d) => Ok(Self::mem(d)?.ring.clone()),
        }
    }

    /// The parsed `{p}:ring` value.
    pub async fn ring(&self) -> Result<Option<RingSnapshot>, StoreError> {
        parse_ring(self.ring_raw().await?)
    }

    /// Replaces `{p}:ring` if it still holds `expected`. Returns false when
    /// someone else changed it meanwhile.
    pub async fn cas_ring(&self, expected: Option<&str>, new: &RingSnapshot) -> Result<bool, StoreError> {
        let new = serde_json::to_string(new).expect("ring serializes");
        match self {
            Store::Redis { client, keys, .. } => {
                let done: i64 =
                    client.eval(CAS_SCRIPT, vec![keys.ring()], vec![expected.unwrap_or(""), &new]).await?;
                Ok(done == 1)
            }
            Store::Memory(d) => {
                let mut m = Self::mem(d)?;
                if m.ring.as_deref() != expected {
                    return Ok(false);
                }
                m.ring = Some(new);
                Ok(true)
            }
        }
    }

    /// Publishes one channel config; returns whether Redis changed.
    pub async fn put_config(&self, channel: &str, json: &str) -> Result<bool, StoreError> {
        let changed = self.put_configs(&[(channel.to_string(), json.to_string())]).await?;
        Ok(changed.first().copied().unwrap_or(false))
    }

    /// Publishes many channel configs in one round trip (at most
    /// [`MAX_CONFIG_BATCH`]); returns, for each, whether Redis changed. The
    /// version is bumped once if anything changed.
    pub async fn put_configs(&self, items: &[(String, String)]) -> Result<Vec<bool>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Redis { client, keys, put_configs } => {
                let args: Vec<&str> = items.iter().flat_map(|(c, j)| [c.as_str(), j.as_str()]).collect();
                let changed: Vec<i64> = put_configs
                    .evalsha_with_reload(client, vec![keys.channels(), keys.channels_version()], args)
                    .await?;
                Ok(changed.into_iter().map(|c| c == 1).collect())
            }
            Store::Memory(d) => {
                let mut m = Self::mem(d)?;
                m.put_calls += 1;
                let mut any = false;
                let changed = items
                    .iter()
                    .map(|(channel, json)| {
                        let same = m.channels.get(channel) == Some(json);
                        if !same {
                            m.channels.insert(channel.clone(), json.clone());
                            any = true;
                        }
                        !same
                    })
                    .collect();
                if any {
                    m.version += 1;
                }
                Ok(changed)
            }
        }
    }

    /// Member counts (`HLEN {p}:users:<channel>`) of `channels`, in order,
    /// pipelined ([`MEMBERS_PIPELINE`] per round trip).
    pub async fn member_counts(&self, channels: &[String]) -> Result<Vec<u64>, StoreError> {
        match self {
            Store::Redis { client, keys, .. } => {
                let mut out = Vec::with_capacity(channels.len());
                for chunk in channels.chunks(MEMBERS_PIPELINE) {
                    let pipe = client.pipeline();
                    for c in chunk {
                        let _: () = pipe.hlen(keys.users(c)).await?;
                    }
                    let counts: Vec<i64> = pipe.all().await?;
                    out.extend(counts.into_iter().map(|n| n.max(0) as u64));
                }
                Ok(out)
            }
            Store::Memory(d) => {
                let m = Self::mem(d)?;
                Ok(channels.iter().map(|c| m.members.get(c).copied().unwrap_or(0)).collect())
            }
        }
    }

    pub async fn get_config(&self, channel: &str) -> Result<Option<String>, StoreError> {
        match self {
            Store::Redis { client, keys, .. } => Ok(client.hget(keys.channels(), channel).await?),
            Store::Memory(d) => Ok(Self::mem(d)?.channels.get(channel).cloned()),
        }
    }

    /// Undeclares a channel per `policy` (docs/redis-layout.md, "Channel
    /// deletion"). `owner` receives the close request (Delete only).
    pub async fn remove_channel(
        &self,
        channel: &str,
        policy: DeletionPolicy,
        owner: Option<&str>,
    ) -> Result<(), StoreError> {
        let policy_arg = match policy {
            DeletionPolicy::Delete => "Delete",
            DeletionPolicy::Retain => "Retain",
        };
        let close = owner.map(|_| close_request(channel)).unwrap_or_default();
        match self {
            Store::Redis { client, keys, .. } => {
                let inbox = keys.inbox(owner.unwrap_or("_"));
                let _: i64 = client
                    .eval(
                        REMOVE_SCRIPT,
                        vec![keys.channels(), keys.channels_version(), inbox, keys.history(channel)],
                        vec![channel, policy_arg, close.as_str()],
                    )
                    .await?;
                Ok(())
            }
            Store::Memory(d) => {
                let mut m = Self::mem(d)?;
                if m.channels.remove(channel).is_some() {
                    m.version += 1;
                }
                if policy == DeletionPolicy::Delete {
                    if let Some(owner) = owner {
                        m.inbox.entry(owner.to_string()).or_default().push(("close".into(), close));
                    }
                    m.history_deleted.push(channel.to_string());
                }
                Ok(())
            }
        }
    }
}

fn parse_ring(raw: Option<String>) -> Result<Option<RingSnapshot>, StoreError> {
    raw.map(|s| serde_json::from_str(&s).map_err(|source| StoreError::BadJson { key: "ring".into(), source }))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_the_layout() {
        let k = Keys::new("shardchat");
        assert_eq!(k.ring(), "shardchat:ring");
        assert_eq!(k.channels(), "shardchat:channels");
        assert_eq!(k.channels_version(), "shardchat:channels:version");
        assert_eq!(k.inbox("chat-node-1"), "shardchat:inbox:chat-node-1");
        assert_eq!(k.history("town-137"), "shardchat:history:town-137");
        assert_eq!(k.users("town-137"), "shardchat:users:town-137");
        assert_eq!(close_request("town-137"), r#"{"channel":"town-137","reason":"deleted"}"#);
    }
}
