//! Cluster mode: Redis Streams carry all cross-node traffic.
//!
//! * [`backend`] — the owner backend: Lua scripts that store, trim and fan
//!   out atomically, and keep membership.
//! * [`history`] — reading history streams (any node can).
//! * [`inbox`] — each node's inbound stream: wire format and consumer loop.
//! * [`cluster`] — edge → owner routing over inbound streams, with replies.
//! * [`ring_view`] — the ring in use: static `--peers`, or followed in Redis.
//! * [`upkeep`] — heartbeats, dead-edge cleanup, config following, readiness.
//!
//! The layout of every key is documented in docs/redis-layout.md.

pub mod backend;
pub mod cluster;
pub mod history;
pub mod inbox;
pub mod ring_view;
pub mod scripts;
pub mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;

use crate::error::ChatError;

/// Everything the Redis parts share.
pub struct RedisCtx {
    /// Commands (pipelined on one multiplexed connection).
    pub client: Client,
    /// Blocking reads of this node's inbox, kept off the command connection.
    pub reader: Client,
    pub keys: Keys,
    pub scripts: scripts::Scripts,
    pub settings: RedisSettings,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Extra CA certificates (PEM) trusted for `rediss://`.
    pub ca_file: Option<std::path::PathBuf>,
    pub prefix: String,
    /// Bound on every Redis command; past it the client gets `unavailable`.
    pub command_timeout: Duration,
    /// Bound on a request to another node's owner (publish, join).
    pub request_timeout: Duration,
    /// Approximate cap of each node's inbox stream.
    pub inbox_maxlen: u64,
}

/// Key names; see docs/redis-layout.md.
#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn ring(&self) -> String {
        format!("{}:ring", self.prefix)
    }
    pub fn channels(&self) -> String {
        format!("{}:channels", self.prefix)
    }
    pub fn channels_version(&self) -> String {
        format!("{}:channels:version", self.prefix)
    }
    pub fn history(&self, channel: &str) -> String {
        format!("{}:history:{channel}", self.prefix)
    }
    pub fn users(&self, channel: &str) -> String {
        format!("{}:users:{channel}", self.prefix)
    }
    pub fn inbox(&self, node: &str) -> String {
        format!("{}:inbox:{node}", self.prefix)
    }
    pub fn alive(&self, edge: &str) -> String {
        format!("{}:alive:{edge}", self.prefix)
    }
    pub fn edges(&self) -> String {
        format!("{}:edges", self.prefix)
    }
    pub fn edge_channels(&self, edge: &str) -> String {
        format!("{}:edge-channels:{edge}", self.prefix)
    }
    pub fn active(&self) -> String {
        format!("{}:active", self.prefix)
    }
    pub fn access(&self) -> String {
        format!("{}:access", self.prefix)
    }
}

/// Consumer group every node uses on its own inbox.
pub const INBOX_GROUP: &str = "chat-node";

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
    #[error("Redis TLS: {0}")]
    Tls(#[from] shardchat_common::redis_url::TlsConfigError),
    #[error("Redis client: {0}")]
    Client(String),
}

/// The fred config for `url`: only `redis://` and `rediss://` are accepted;
/// `rediss://` verifies the server against the system roots and `ca_file`.
pub fn client_config(url: &str, ca_file: Option<&std::path::Path>) -> Result<Config, ConnectError> {
    use shardchat_common::redis_url;
    let checked = redis_url::check(url).map_err(|e| ConnectError::Url(e.to_string()))?;
    let mut config = Config::from_url(url)
        .map_err(|e| ConnectError::Url(format!("{}: {}", redis_url::redact(url), e.details())))?;
    config.tls = if checked.tls {
        let (tls, warnings) = redis_url::client_config(ca_file)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        Some(fred::types::config::TlsConnector::from(tls).into())
    } else {
        if ca_file.is_some() {
            tracing::warn!("--redis-ca-file is ignored: the Redis URL is redis://, not rediss://");
        }
        None
    };
    Ok(config)
}

impl RedisCtx {
    /// Creates the clients and starts connecting in the background; Redis
    /// being down at start is not fatal (the node reports not-ready).
    pub async fn connect(settings: RedisSettings) -> Result<Arc<RedisCtx>, ConnectError> {
        let config = client_config(&settings.url, settings.ca_file.as_deref())?;
        let build = |timeout: Duration| {
            Builder::from_config(config.clone())
                .with_performance_config(|p| p.default_command_timeout = timeout)
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.internal_command_timeout = Duration::from_secs(2);
                    c.max_command_attempts = 2;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
                .build()
                .map_err(|e| ConnectError::Client(e.to_string()))
        };
        let client = build(settings.command_timeout)?;
        let reader = build(settings.command_timeout + Duration::from_secs(2))?;
        for c in [&client, &reader] {
            // init() waits for the first connection; don't block start-up on it.
            c.connect();
        }
        Ok(Arc::new(RedisCtx {
            client,
            reader,
            keys: Keys { prefix: settings.prefix.clone() },
            scripts: scripts::Scripts::default(),
            settings,
        }))
    }
}

impl RedisCtx {
    /// Runs one of our Lua scripts with the key prefix as its first argument.
    pub async fn run<R: fred::types::FromValue>(
        &self,
        script: &fred::types::scripts::Script,
        args: Vec<String>,
    ) -> Result<R, ChatError> {
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(self.keys.prefix.clone());
        argv.extend(args);
        script.evalsha_with_reload(&self.client, Vec::<String>::new(), argv).await.map_err(unavailable)
    }
}

/// Any Redis failure reaches clients as `unavailable`.
pub fn unavailable(e: fred::error::Error) -> ChatError {
    tracing::debug!(error = %e, "redis command failed");
    ChatError::unavailable(format!("storage is unavailable, try again: {}", e.kind().to_str()))
}
