//! Cluster mode: Redis Streams carry all cross-node traffic.
//!
//! * [`router`] — the edge side: routes a connection's calls to the owner
//!   the ring names (locally, or as requests on the owner's inbox) and
//!   matches the acks that come back.
//! * [`owner_server`] — the owner side: serves the requests that reach this
//!   node's inbox (or forwards them when the channel moved).
//! * [`backend`] + [`scripts`] — the owner backend: one Lua script call
//!   stores, trims and fans out a whole batch of channel operations.
//! * [`inbox`] — reading this node's inbound stream; [`outbox`] — writing
//!   batched requests and acks to other nodes' inboxes.
//! * [`history`] — reading history streams (any node can).
//! * [`clock`] — Redis's clock, which request deadlines are measured in.
//! * [`ring_view`] — the ring in use: static `--peers`, or followed in Redis.
//! * [`upkeep`] — heartbeats, dead-edge cleanup, config following, readiness.
//!
//! The layout of every key is `shardchat_common::redis_layout` and
//! docs/redis-layout.md.

pub mod backend;
pub mod clock;
pub mod dm;
pub mod history;
pub mod inbox;
pub mod outbox;
pub mod owner_server;
pub mod ring_view;
pub mod router;
pub mod scripts;
pub mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
pub use shardchat_common::redis_layout::{INBOX_GROUP, Keys};

use crate::error::ChatError;
use crate::owner::backend::ApplyError;

/// Everything the Redis parts share.
pub struct RedisCtx {
    /// Commands (pipelined on one multiplexed connection).
    pub client: Client,
    /// Blocking reads of this node's inbox, kept off the command connection.
    pub reader: Client,
    pub keys: Keys,
    pub scripts: scripts::Scripts,
    pub settings: RedisSettings,
    pub clock: clock::RedisClock,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// Extra CA certificates (PEM) trusted for `rediss://`.
    pub ca_file: Option<std::path::PathBuf>,
    pub prefix: String,
    /// Bound on every Redis command; past it the client gets `unavailable`.
    pub command_timeout: Duration,
    /// Bound on a request to a channel's owner (publish, join).
    pub request_timeout: Duration,
    /// Approximate cap of each node's inbox stream (unread entries).
    pub inbox_maxlen: u64,
    /// How long a publish nonce is remembered.
    pub dedup_window: Duration,
    /// Undeclared channels active at once, cluster-wide.
    pub max_dynamic_channels: u64,
}

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
    /// being down at start is not fatal: the clients keep retrying (with
    /// backoff) and the node reports not-ready until they get through.
    pub async fn connect(settings: RedisSettings) -> Result<Arc<RedisCtx>, ConnectError> {
        let mut config = client_config(&settings.url, settings.ca_file.as_deref())?;
        // Without this, a first connection that fails ends the client's
        // connection task for good: a node started before its Redis would
        // never connect.
        config.fail_fast = false;
        let build = |timeout: Duration, attempts: u32| {
            Builder::from_config(config.clone())
                .with_performance_config(|p| p.default_command_timeout = timeout)
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.internal_command_timeout = Duration::from_secs(2);
                    c.max_command_attempts = attempts;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
                .build()
                .map_err(|e| ConnectError::Client(e.to_string()))
        };
        // A command written before a connection broke is sent again on the
        // next one; commits carry a dedup key, so a second run stores nothing.
        let client = build(settings.command_timeout, 2)?;
        // Never for the inbox reader: Redis may have handed it entries (now
        // pending for this consumer) whose reply the broken connection lost,
        // and a re-sent `XREADGROUP >` would skip them for good. It gets the
        // error instead, and re-reads its pending entries.
        let reader = build(settings.command_timeout + Duration::from_secs(2), 1)?;
        for c in [&client, &reader] {
            // init() waits for the first connection; don't block start-up on it.
            c.connect();
        }
        Ok(Arc::new(RedisCtx {
            client,
            reader,
            keys: Keys::new(settings.prefix.clone()),
            scripts: scripts::Scripts::default(),
            settings,
            clock: clock::RedisClock::default(),
        }))
    }

    /// Runs one of our Lua scripts with the key prefix as its first argument.
    pub async fn run<R: fred::types::FromValue>(
        &self,
        script: &fred::types::scripts::Script,
        args: Vec<String>,
    ) -> Result<R, fred::error::Error> {
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(self.keys.prefix().to_string());
        argv.extend(args);
        script.evalsha_with_reload(&self.client, Vec::<String>::new(), argv).await
    }
}

impl RedisCtx {
    /// `unavailable` without sending anything while the command connection
    /// is down: a command that was never written certainly did not run, so
    /// callers can answer at once instead of waiting out the ambiguity.
    pub fn check_connected(&self) -> Result<(), ChatError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(ChatError::unavailable("storage is unavailable, try again: not connected to Redis"))
        }
    }
}

/// Any Redis failure reaches clients as `unavailable`.
pub fn unavailable(e: fred::error::Error) -> ChatError {
    tracing::debug!(error = %e, "redis command failed");
    ChatError::unavailable(format!("storage is unavailable, try again: {}", e.kind().to_str()))
}

/// Whether a failed command may still have run: a timeout or a broken
/// connection says nothing about it, while an error reply Redis sends
/// before running anything (out of memory, loading, read-only replica, …)
/// means it did not.
pub fn may_have_run(e: &fred::error::Error) -> bool {
    const REFUSED_UPFRONT: [&str; 8] =
        ["OOM", "LOADING", "BUSY", "READONLY", "NOAUTH", "NOPERM", "MASTERDOWN", "NOSCRIPT"];
    match e.kind() {
        ErrorKind::Auth | ErrorKind::Config | ErrorKind::Url | ErrorKind::Backpressure => false,
        _ => !REFUSED_UPFRONT.iter().any(|p| e.details().starts_with(p)),
    }
}

/// A failed script call as the sequencer needs to know it.
pub fn apply_error(e: fred::error::Error) -> ApplyError {
    let ambiguous = may_have_run(&e);
    let error = unavailable(e);
    if ambiguous { ApplyError::Ambiguous(error) } else { ApplyError::Refused(error) }
}
