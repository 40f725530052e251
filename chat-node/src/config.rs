//! Command-line flags of `chat-node`; every flag has a `CHAT_*` environment twin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use shardchat_common::ModerationMode;

#[derive(Debug, Clone, Parser)]
#[command(name = "chat-node", version, about = "Shardchat node: WebSocket chat gateway and channel owner")]
pub struct Config {
    /// Address for WebSocket, REST, the browser page and metrics.
    #[arg(long, env = "CHAT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// This node's id in the ring (a pod name). Defaults to $POD_NAME, else the host name.
    #[arg(long, env = "CHAT_NODE_ID")]
    pub node_id: Option<String>,

    /// Redis URL: redis://[user:pass@]host:6379[/db], or rediss://… for TLS. Absent: embedded
    /// single-node mode with in-memory history. Any other scheme is refused.
    #[arg(long, env = "CHAT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// PEM file with CA certificate(s) trusted for `rediss://`, in addition to the system roots
    /// (which also honour SSL_CERT_FILE / SSL_CERT_DIR).
    #[arg(long, env = "CHAT_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Key prefix in Redis, so several installs can share one Redis.
    #[arg(long, env = "CHAT_REDIS_PREFIX", default_value = "shardchat")]
    pub redis_prefix: String,

    /// Static ring members (node ids, comma-separated) for running several nodes without the
    /// operator. Absent in Redis mode: follow the ring the operator publishes in Redis.
    #[arg(long, env = "CHAT_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Virtual nodes per node in a `--peers` ring (the operator's ring carries its own).
    #[arg(long, env = "CHAT_VNODES", default_value_t = shardchat_common::DEFAULT_VNODES)]
    pub vnodes: u32,

    /// Bound on each Redis command; past it clients get `unavailable`.
    #[arg(long, env = "CHAT_REDIS_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    pub redis_timeout: Duration,

    /// Bound on a request to another node's channel owner (publish, join, leave).
    #[arg(long, env = "CHAT_REQUEST_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub request_timeout: Duration,

    /// A node whose heartbeat is older than this counts as dead: its members
    /// leave their channels. Heartbeats go out every fifth of it.
    #[arg(long, env = "CHAT_NODE_TTL", value_parser = parse_duration, default_value = "10s")]
    pub node_ttl: Duration,

    /// Approximate cap on each node's inbox stream (entries not read yet; read
    /// ones are deleted). A node that falls this far behind loses the oldest
    /// and tells its members (`gap` push).
    #[arg(long, env = "CHAT_INBOX_MAXLEN", default_value_t = 100_000)]
    pub inbox_maxlen: u64,

    /// Storage calls (Lua script calls in cluster mode) a channel owner keeps
    /// in flight at once. Operations that arrive meanwhile wait and go in the
    /// next call, so fewer calls in flight mean larger, cheaper batches under
    /// load at the price of a little queueing (docs/benchmarks.md).
    #[arg(long, env = "CHAT_OWNER_CALLS_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub owner_calls_in_flight: u16,

    /// The inbox of a node that left the ring is deleted once it has sent no
    /// heartbeat for this long.
    #[arg(long, env = "CHAT_FORGET_NODES_AFTER", value_parser = parse_duration, default_value = "15m")]
    pub forget_nodes_after: Duration,

    /// How long a publish's `nonce` is remembered: a publish repeating a
    /// (channel, sender, nonce) within it stores nothing and gets the first
    /// one's id. Each remembered nonce costs about 100 bytes in Redis.
    #[arg(long, env = "CHAT_DEDUP_WINDOW", value_parser = parse_duration, default_value = "5m")]
    pub dedup_window: Duration,

    /// Channels nobody declared that may be active at once (with members, or
    /// with history younger than their retention age); a join that would
    /// create one more gets `forbidden`. Cluster-wide in cluster mode.
    #[arg(long, env = "CHAT_MAX_DYNAMIC_CHANNELS", default_value_t = 10_000)]
    pub max_dynamic_channels: u64,

    /// Direct messages kept per conversation (pair of users).
    #[arg(long, env = "CHAT_DM_MAX_MESSAGES", default_value_t = 1_000)]
    pub dm_max_messages: u32,

    /// How long direct messages are kept (conversations and mailboxes, also for offline users).
    #[arg(long, env = "CHAT_DM_MAX_AGE", value_parser = parse_duration, default_value = "30d")]
    pub dm_max_age: Duration,

    /// Entries kept in each user's mailbox: how far back `dm_sync` reaches.
    #[arg(long, env = "CHAT_DM_MAILBOX_MAX", default_value_t = 10_000)]
    pub dm_mailbox_max: u32,

    /// Direct messages one user may receive per second (burst twice that).
    #[arg(long, env = "CHAT_DM_RECIPIENT_RATE", default_value_t = 20)]
    pub dm_recipient_rate: u32,

    /// Sender name of system messages (`POST /v1/users/{user}/messages`);
    /// reserved: players cannot send as it or to it.
    #[arg(long, env = "CHAT_SYSTEM_SENDER", default_value = "system")]
    pub system_sender: String,

    /// Declared channels (YAML or JSON list of channel configs) for running without the operator.
    #[arg(long, env = "CHAT_CHANNELS")]
    pub channels: Option<PathBuf>,

    /// Whether channels nobody declared are created on first join.
    #[arg(long, env = "CHAT_DYNAMIC_CHANNELS", value_enum, default_value_t = DynamicChannels::Allow)]
    pub dynamic_channels: DynamicChannels,

    /// Roles that may join channels without a declaration (comma-separated; empty = anyone).
    /// A channel that was declared with roles keeps them after its declaration disappears.
    #[arg(long, env = "CHAT_DEFAULT_JOIN_ROLES", value_delimiter = ',')]
    pub default_join_roles: Vec<String>,

    /// Roles that may publish to channels without a declaration (comma-separated; empty = anyone).
    #[arg(long, env = "CHAT_DEFAULT_PUBLISH_ROLES", value_delimiter = ',')]
    pub default_publish_roles: Vec<String>,

    /// Word-filter mode for channels whose config does not set one.
    #[arg(long, env = "CHAT_MODERATION", value_enum, default_value_t = ModerationArg::Mask)]
    pub moderation: ModerationArg,

    /// Bearer token (at least 32 characters) that authorizes server-side publishing
    /// (`POST /v1/channels/{channel}/messages`). Without it that endpoint refuses every request.
    #[arg(long, env = "CHAT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Run without any JWT key: clients name themselves with `?user=<id>` and are TRUSTED.
    /// Without this flag a node with no key refuses to start. For trying Shardchat out only.
    #[arg(long, env = "CHAT_DEV_MODE", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub dev_mode: bool,

    /// HS256 shared secret for client JWTs (at least 32 bytes; empty is an error). With any JWT
    /// key configured, clients must present a token and dev-mode `?user=` is refused.
    #[arg(long, env = "CHAT_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file(s) with an RSA (RS256) or P-256 EC (ES256) public key for client JWTs,
    /// comma-separated for key rotation. Re-read when they change.
    #[arg(long, env = "CHAT_JWT_PUBLIC_KEY", value_delimiter = ',')]
    pub jwt_public_key: Vec<PathBuf>,

    /// JWKS file (JSON Web Key Set) with RS256/ES256 public keys, selected by `kid`.
    /// Re-read when it changes.
    #[arg(long, env = "CHAT_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Clock-skew allowance on a token's `exp` and `nbf`.
    #[arg(long, env = "CHAT_JWT_LEEWAY", value_parser = parse_duration, default_value = "30s")]
    pub jwt_leeway: Duration,

    /// Required `iss` claim, when set.
    #[arg(long, env = "CHAT_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "CHAT_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// How often key files and the moderation word list are checked for changes.
    #[arg(long, env = "CHAT_RELOAD_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub reload_interval: Duration,

    /// WebSocket connection attempts per second from one IP (token bucket rate; 0 = no limit).
    /// Generous by default: many players share an address behind carrier NAT.
    #[arg(long, env = "CHAT_CONNECT_RATE", default_value_t = 50)]
    pub connect_rate: u32,

    /// Connection attempts one IP may make in a burst (token bucket size).
    #[arg(long, env = "CHAT_CONNECT_BURST", default_value_t = 200)]
    pub connect_burst: u32,

    /// Open WebSocket connections from one IP (IPv6: one /64) at once; 0 = no limit.
    /// Generous by default: many players share an address behind carrier NAT.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: u32,

    /// Open WebSocket connections of one user id at once (on this node); 0 = no limit.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    pub max_connections_per_user: u32,

    /// Reverse proxies in front of the node that append to `X-Forwarded-For`
    /// (1 behind a typical Ingress). 0 uses the TCP peer address.
    #[arg(long, env = "CHAT_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: usize,

    /// Origins (scheme://host[:port], comma-separated) whose browser pages may open WebSockets.
    /// Empty = any origin. Requests without an `Origin` header (non-browser clients) are allowed.
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// REST reads (history, members, channel list) per second from one IP (token bucket rate;
    /// 0 = no limit). `GET /v1/channels` costs 10.
    #[arg(long, env = "CHAT_REST_RATE", default_value_t = 20)]
    pub rest_rate: u32,

    /// REST reads one IP may make in a burst (token bucket size).
    #[arg(long, env = "CHAT_REST_BURST", default_value_t = 40)]
    pub rest_burst: u32,

    /// Word list for the built-in filter (one entry per line; see docs/security.md).
    /// Re-read when it changes. Absent: the built-in English and Korean lists.
    #[arg(long, env = "CHAT_MODERATION_WORDS")]
    pub moderation_words: Option<PathBuf>,

    /// External moderation service (gRPC, `proto/moderation.proto`), e.g. http://moderation:50051.
    #[arg(long, env = "CHAT_MODERATION_SERVICE")]
    pub moderation_service: Option<String>,

    /// Deadline of one call to the moderation service.
    #[arg(long, env = "CHAT_MODERATION_TIMEOUT", value_parser = parse_duration, default_value = "200ms")]
    pub moderation_timeout: Duration,

    /// Retries after a failed or timed-out moderation call (so at most 1 + this many calls).
    #[arg(long, env = "CHAT_MODERATION_RETRIES", default_value_t = 1)]
    pub moderation_retries: u32,

    /// Wait before the first retry; doubles for each further retry.
    #[arg(long, env = "CHAT_MODERATION_BACKOFF", value_parser = parse_duration, default_value = "20ms")]
    pub moderation_backoff: Duration,

    /// When the moderation service fails (error, timeout, circuit open): deliver the
    /// message with only the built-in filter applied (`true`) or refuse it with
    /// `unavailable` (`false`, the default).
    #[arg(long, env = "CHAT_MODERATION_FAIL_OPEN", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    pub moderation_fail_open: bool,

    /// Consecutive failed calls that open the moderation circuit breaker.
    #[arg(long, env = "CHAT_MODERATION_BREAKER_FAILURES", default_value_t = 5)]
    pub moderation_breaker_failures: u32,

    /// How long the open breaker skips the service before letting a probe call through
    /// (doubling, up to 8 times this, while probes keep failing).
    #[arg(long, env = "CHAT_MODERATION_BREAKER_OPEN", value_parser = parse_duration, default_value = "5s")]
    pub moderation_breaker_open: Duration,

    /// Interval between server pings on each WebSocket.
    #[arg(long, env = "CHAT_PING_INTERVAL", value_parser = parse_duration, default_value = "20s")]
    pub ping_interval: Duration,

    /// Close a connection after this long without any frame or pong from the client.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,

    /// Largest WebSocket frame/message accepted from a client; larger closes with 1009.
    #[arg(long, env = "CHAT_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    pub max_frame_bytes: usize,

    /// Frames queued towards one client before it counts as a slow consumer and is closed (4009).
    #[arg(long, env = "CHAT_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Bytes queued towards one client before it counts as a slow consumer and is closed (4009).
    /// One reply (a history page, a join backlog) holds at most half of this.
    #[arg(long, env = "CHAT_OUTBOUND_QUEUE_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// On SIGTERM: how long to wait for clients to go after sending them close 1012.
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "10s")]
    pub shutdown_grace: Duration,

    /// Publishes per second one connection may make (token bucket rate).
    #[arg(long, env = "CHAT_PUBLISH_RATE", default_value_t = 10)]
    pub publish_rate: u32,

    /// Publishes one connection may make in a burst (token bucket size).
    #[arg(long, env = "CHAT_PUBLISH_BURST", default_value_t = 20)]
    pub publish_burst: u32,

    /// Frames of any kind per second one connection may send (token bucket rate; burst is twice this).
    #[arg(long, env = "CHAT_FRAME_RATE", default_value_t = 100)]
    pub frame_rate: u32,

    /// Joins and leaves per second one connection may make (token bucket rate): each one
    /// pushes presence to every member of the channel.
    #[arg(long, env = "CHAT_MEMBERSHIP_RATE", default_value_t = 2)]
    pub membership_rate: u32,

    /// Joins and leaves one connection may make in a burst (token bucket size).
    #[arg(long, env = "CHAT_MEMBERSHIP_BURST", default_value_t = 20)]
    pub membership_burst: u32,

    /// Close a connection (1008) after this many rate-limited requests within 10 seconds.
    #[arg(long, env = "CHAT_FLOOD_CLOSE_AFTER", default_value_t = 50)]
    pub flood_close_after: u32,

    /// Publishes of one connection that may wait for their owner at once
    /// (pipelining); while that many are in flight the connection is not read.
    #[arg(long, env = "CHAT_MAX_INFLIGHT_PUBLISHES", default_value_t = 128)]
    pub max_inflight_publishes: usize,

    /// Channels one connection may be joined to at once.
    #[arg(long, env = "CHAT_MAX_CHANNELS_PER_CONNECTION", default_value_t = 64)]
    pub max_channels_per_connection: usize,

    /// Distinct users per channel when its config does not say.
    #[arg(long, env = "CHAT_MAX_MEMBERS", default_value_t = 10_000)]
    pub max_members: u32,

    /// Log format.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DynamicChannels {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModerationArg {
    Off,
    Mask,
    Reject,
}

impl From<ModerationArg> for ModerationMode {
    fn from(m: ModerationArg) -> Self {
        match m {
            ModerationArg::Off => ModerationMode::Off,
            ModerationArg::Mask => ModerationMode::Mask,
            ModerationArg::Reject => ModerationMode::Reject,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The node id: `--node-id`, else `$POD_NAME`, else the host name, else `chat-node`.
    pub fn resolved_node_id(&self) -> String {
        self.node_id
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "chat-node".to_string())
    }
}

/// Smallest `--outbound-queue-bytes`: a few of the largest message pushes
/// (2,000 characters that JSON-escape to 6 bytes each, plus 1 KiB of meta).
pub const MIN_OUTBOUND_QUEUE_BYTES: usize = 64 * 1024;

/// Longest duration any flag accepts. Bounding it here keeps every later
/// `Instant + Duration` and `Duration + Duration` far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `250ms`, `20s`, `5m`, `1h`, `30d` or a bare number of seconds, up to [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 20s, 5m"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m, h or d")),
    };
    let too_long = || format!("duration {s:?} is too long: at most {} days", MAX_DURATION.as_secs() / 86_400);
    let millis = n.checked_mul(millis_per_unit).ok_or_else(too_long)?;
    let d = Duration::from_millis(millis);
    if d > MAX_DURATION { Err(too_long()) } else { Ok(d) }
}

impl Config {
    /// Checks what clap cannot: values that would make the node misbehave.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, d) in [
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
            ("--node-ttl", self.node_ttl),
            ("--reload-interval", self.reload_interval),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be greater than zero"));
            }
        }
        if self.outbound_queue == 0 {
            return Err("--outbound-queue must be at least 1".into());
        }
        if self.outbound_queue_bytes < MIN_OUTBOUND_QUEUE_BYTES {
            return Err(format!(
                "--outbound-queue-bytes must be at least {MIN_OUTBOUND_QUEUE_BYTES} (a few of the largest pushes)"
            ));
        }
        for role in self.default_join_roles.iter().chain(&self.default_publish_roles) {
            crate::session::identity::validate_user_id(role)
                .map_err(|e| format!("--default-join-roles / --default-publish-roles: {}", e.message))?;
        }
        for origin in &self.allowed_origins {
            crate::auth::origin::parse_origin(origin).map_err(|e| format!("--allowed-origins: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn huge_durations_are_errors_not_overflows() {
        // 307445734561825861 minutes overflows u64 milliseconds (it used to
        // overflow `n * 60` seconds too, a panic in debug builds).
        assert!(parse_duration("307445734561825861m").unwrap_err().contains("too long"));
        assert!(parse_duration("18446744073709551615h").unwrap_err().contains("too long"));
        assert!(parse_duration("18446744073709551615").unwrap_err().contains("too long"));
        assert!(parse_duration("99999999999999999999999s").is_err(), "does not fit u64");
        assert!(parse_duration("366d").is_err());
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert!(parse_duration("8761h").is_err());
    }

    #[test]
    fn validation_refuses_values_that_would_break_the_node() {
        let check = |args: &[&str]| Config::parse_from([&["chat-node"], args].concat()).validate();
        assert_eq!(check(&[]), Ok(()));
        assert!(check(&["--ping-interval", "0s"]).unwrap_err().contains("--ping-interval"));
        assert!(check(&["--reload-interval", "0ms"]).is_err());
        assert!(check(&["--outbound-queue-bytes", "100"]).is_err());
        assert!(check(&["--default-join-roles", "bad role"]).is_err());
        assert!(check(&["--allowed-origins", "not an origin"]).is_err());
        assert_eq!(check(&["--allowed-origins", "https://play.example.com,http://localhost:8080"]), Ok(()));
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::parse_from(["chat-node"]);
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.ping_interval, Duration::from_secs(20));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_frame_bytes, 16 * 1024);
        assert!(c.redis_url.is_none());
        assert!(!c.dev_mode, "dev mode is never the default");
        assert_eq!(c.outbound_queue_bytes, 2 * 1024 * 1024);
        assert_eq!((c.max_connections_per_ip, c.max_connections_per_user), (1000, 16));
        assert_eq!((c.membership_rate, c.membership_burst), (2, 20));
        assert_eq!((c.rest_rate, c.rest_burst), (20, 40));
        assert!(c.default_join_roles.is_empty() && c.allowed_origins.is_empty());
    }
}
