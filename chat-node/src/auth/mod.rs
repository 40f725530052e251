//! Who may connect, and as whom: JWT verification (or dev-mode identities),
//! the per-IP connection-attempt limit, and admin authorization for the
//! server-side REST publish. See docs/security.md.

pub mod concurrency;
pub mod jwt;
pub mod limit;
pub mod origin;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::registered;
use axum::http::{HeaderMap, header};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use shardchat_common::protocol::ErrorCode;

use crate::config::Config;
use crate::error::ChatError;
use crate::session::identity::{ConnectParams, Identity};
use concurrency::{ConcurrencyLimit, ConnectionCaps, ConnectionSlots};
use jwt::{ClaimRules, JwtVerifier, KeySources};
use limit::IpLimiter;
use origin::OriginPolicy;

/// The role that may publish through REST and use admin operations.
pub const ADMIN_ROLE: &str = "admin";

/// Shortest `--admin-token` and `--jwt-secret` accepted, in bytes (HS256
/// keys must be at least as long as the hash: RFC 7518, section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Cost of one `GET /v1/channels` in REST tokens (it reads every active channel).
pub const CHANNEL_LIST_COST: u32 = 10;

/// Counters of the security checks, on the node's registry.
pub struct SecurityMetrics {
    /// Refused connection attempts and admin requests, by reason.
    pub auth_failures: IntCounterVec,
    /// Upgrade requests refused by the per-IP connection limit.
    pub connect_rate_limited: IntCounter,
    /// Connections closed (1008) for flooding past their rate limits.
    pub rate_limit_closes: IntCounter,
    /// Sessions closed (4001) because their token expired.
    pub token_expired_closes: IntCounter,
    /// Upgrades refused (429) because the IP or user already holds its maximum of connections.
    pub connection_caps: IntCounterVec,
    /// WebSocket upgrades refused (403) for an `Origin` outside `--allowed-origins`.
    pub origin_refused: IntCounter,
    /// REST reads refused (429) by the per-IP REST limit.
    pub rest_rate_limited: IntCounter,
}

impl SecurityMetrics {
    pub fn new(registry: &Registry) -> Self {
        let m = Self {
            auth_failures: registered(
                registry,
                IntCounterVec::new(
                    Opts::new("shardchat_auth_failures_total", "Refused authentications, by reason"),
                    &["reason"],
                ),
            ),
            connect_rate_limited: registered(
                registry,
                IntCounter::new(
                    "shardchat_connect_rate_limited_total",
                    "WebSocket upgrades refused (429) by the per-IP connection limit",
                ),
            ),
            rate_limit_closes: registered(
                registry,
                IntCounter::new(
                    "shardchat_rate_limit_closes_total",
                    "Connections closed with 1008 for repeatedly exceeding their rate limits",
                ),
            ),
            token_expired_closes: registered(
                registry,
                IntCounter::new(
                    "shardchat_token_expired_closes_total",
                    "Connections closed with 4001 because their token expired mid-session",
                ),
            ),
            connection_caps: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "shardchat_connection_cap_refusals_total",
                        "WebSocket upgrades refused (429) because the client IP or user holds its maximum of open connections",
                    ),
                    &["cap"],
                ),
            ),
            origin_refused: registered(
                registry,
                IntCounter::new(
                    "shardchat_origin_refusals_total",
                    "WebSocket upgrades refused (403) for an Origin outside --allowed-origins",
                ),
            ),
            rest_rate_limited: registered(
                registry,
                IntCounter::new(
                    "shardchat_rest_rate_limited_total",
                    "REST reads refused (429) by the per-IP REST limit",
                ),
            ),
        };
        for cap in ["ip", "user"] {
            m.connection_caps.with_label_values(&[cap]);
        }
        for reason in ["missing", "invalid", "expired", "forbidden"] {
            m.auth_failures.with_label_values(&[reason]);
        }
        m
    }
}

pub struct Auth {
    verifier: Option<Arc<JwtVerifier>>,
    ip_limit: IpLimiter,
    rest_limit: IpLimiter,
    caps: ConnectionCaps,
    origins: OriginPolicy,
    trusted_proxy_hops: usize,
    admin_token: Option<String>,
    pub metrics: SecurityMetrics,
}

impl Auth {
    /// Builds the checks for `config`. A node without any JWT key refuses to
    /// start unless `--dev-mode` asks for trusted `?user=` identities.
    pub fn from_config(config: &Config, registry: &Registry) -> Result<Auth, String> {
        if config.jwt_secret.as_deref() == Some("") {
            return Err("--jwt-secret (CHAT_JWT_SECRET) is set but empty; give a secret of at least \
                 32 random bytes, or unset it"
                .into());
        }
        if let Some(secret) = &config.jwt_secret
            && secret.len() < MIN_SECRET_BYTES
        {
            return Err(format!(
                "--jwt-secret is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        if let Some(token) = &config.admin_token
            && token.len() < MIN_SECRET_BYTES
        {
            return Err(format!(
                "--admin-token is {} characters; use at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                token.len()
            ));
        }
        let sources = KeySources {
            secret: config.jwt_secret.clone(),
            public_keys: config.jwt_public_key.clone(),
            jwks: config.jwks_file.clone(),
        };
        match (sources.is_empty(), config.dev_mode) {
            (true, false) => {
                return Err("no JWT key is configured (--jwt-secret, --jwt-public-key or --jwks-file); \
                     pass --dev-mode (CHAT_DEV_MODE=true) to run without authentication, trusting \
                     ?user=<id> — for trying Shardchat out only"
                    .into());
            }
            (false, true) => {
                return Err("--dev-mode cannot be combined with a JWT key: drop --dev-mode to require \
                     tokens, or drop the keys"
                    .into());
            }
            _ => {}
        }
        let verifier = if sources.is_empty() {
            None
        } else {
            let rules = ClaimRules {
                leeway: config.jwt_leeway,
                issuer: config.jwt_issuer.clone(),
                audience: config.jwt_audience.clone(),
            };
            Some(Arc::new(JwtVerifier::new(sources, rules)?))
        };
        Ok(Auth {
            verifier,
            ip_limit: IpLimiter::new(config.connect_rate, config.connect_burst),
            rest_limit: IpLimiter::new(config.rest_rate, config.rest_burst.max(CHANNEL_LIST_COST)),
            caps: ConnectionCaps {
                per_ip: ConcurrencyLimit::new(config.max_connections_per_ip),
                per_user: ConcurrencyLimit::new(config.max_connections_per_user),
            },
            origins: OriginPolicy::new(&config.allowed_origins)?,
            trusted_proxy_hops: config.trusted_proxy_hops,
            admin_token: config.admin_token.clone().filter(|t| !t.is_empty()),
            metrics: SecurityMetrics::new(registry),
        })
    }

    /// Dev mode: no key is configured, clients name themselves with `?user=`.
    pub fn is_dev_mode(&self) -> bool {
        self.verifier.is_none()
    }

    /// Slack granted on `exp`/`nbf`, also before closing an expired session.
    pub fn leeway(&self) -> Duration {
        self.verifier.as_ref().map_or(Duration::ZERO, |v| v.leeway())
    }

    /// Re-reads key files when they change and trims the per-IP table, every `interval`.
    pub fn spawn_upkeep(self: &Arc<Self>, interval: Duration) {
        crate::periodic::every(self, interval, |auth| {
            if let Some(v) = &auth.verifier {
                v.reload_if_changed();
            }
            auth.ip_limit.sweep();
            auth.rest_limit.sweep();
        });
    }

    /// The client's address: the TCP peer, or with `--trusted-proxy-hops N`
    /// the address the Nth trusted proxy saw, counted from the right of the
    /// raw `X-Forwarded-For` entries (the only part a client cannot forge).
    /// Every entry counts, parseable or not, so junk a client puts on the
    /// left cannot shift which entry is read; when the entry at that position
    /// is not an address (or the header is shorter than N), the TCP peer (the
    /// nearest proxy) is used, which only makes limits stricter.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        forwarded_client_ip(self.trusted_proxy_hops, peer, headers)
    }

    /// Whether a browser page from this `Origin` may open a WebSocket.
    pub fn admit_origin(&self, headers: &HeaderMap) -> Result<(), ChatError> {
        let origin = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("\u{0}"));
        if self.origins.admits(origin) {
            Ok(())
        } else {
            self.metrics.origin_refused.inc();
            Err(ChatError::forbidden("this page's origin may not open chat connections"))
        }
    }

    /// Takes the client IP's slot among its open connections.
    pub fn hold_ip_slot(&self, ip: IpAddr) -> Result<concurrency::Slot<IpAddr>, ChatError> {
        self.caps.per_ip.acquire(limit::canonical(ip)).ok_or_else(|| {
            self.metrics.connection_caps.with_label_values(&["ip"]).inc();
            ChatError::new(ErrorCode::RateLimited, "too many open connections from your address")
        })
    }

    /// Takes a slot among the user's open connections; with the IP slot, held for the session.
    pub fn hold_user_slot(
        &self,
        ip_slot: concurrency::Slot<IpAddr>,
        user: &Arc<str>,
    ) -> Result<ConnectionSlots, ChatError> {
        match self.caps.per_user.acquire(user.clone()) {
            Some(user_slot) => Ok(ConnectionSlots::new(ip_slot, user_slot)),
            None => {
                self.metrics.connection_caps.with_label_values(&["user"]).inc();
                Err(ChatError::new(ErrorCode::RateLimited, "too many open connections for this user"))
            }
        }
    }

    /// Counts one anonymous-or-not REST read of `cost` tokens from `ip`.
    pub fn admit_rest(&self, ip: IpAddr, cost: u32) -> Result<(), ChatError> {
        if self.rest_limit.admit_n(ip, cost) {
            Ok(())
        } else {
            self.metrics.rest_rate_limited.inc();
            Err(ChatError::new(ErrorCode::RateLimited, "too many requests from your address; slow down"))
        }
    }

    /// Who a REST read comes from: the verified `Authorization: Bearer` JWT,
    /// or `None` (anonymous) without one. A bad token is `unauthorized`, not
    /// anonymous, so a client learns its token is wrong.
    pub fn rest_identity(&self, headers: &HeaderMap) -> Result<Option<Identity>, ChatError> {
        let Some(token) = bearer(headers).filter(|t| !t.is_empty()) else { return Ok(None) };
        let Some(verifier) = &self.verifier else { return Ok(None) };
        verifier.verify(token).map(Some).inspect_err(|e| self.count_failure(e))
    }

    /// Counts one connection attempt from `ip`; `rate_limited` past the limit.
    pub fn admit_connection(&self, ip: IpAddr) -> Result<(), ChatError> {
        if self.ip_limit.admit(ip) {
            Ok(())
        } else {
            self.metrics.connect_rate_limited.inc();
            Err(ChatError::new(ErrorCode::RateLimited, "too many connection attempts from your address"))
        }
    }

    /// The identity of a WebSocket upgrade request. The token comes from
    /// `Authorization: Bearer`, the `Sec-WebSocket-Protocol` entry
    /// `bearer.<JWT>` (browsers cannot set headers, and unlike a query
    /// string it stays out of proxies' access logs), or `?token=`.
    pub fn authenticate(&self, headers: &HeaderMap, params: &ConnectParams) -> Result<Identity, ChatError> {
        let result = match &self.verifier {
            None => Identity::from_dev_params(params),
            Some(v) => match bearer(headers)
                .or_else(|| subprotocol_token(headers))
                .or(params.token.as_deref())
                .filter(|t| !t.is_empty())
            {
                None => Err(ChatError::new(
                    ErrorCode::Unauthorized,
                    "missing token: send `Authorization: Bearer <JWT>`, the WebSocket subprotocol \
                     `bearer.<JWT>` or `?token=<JWT>`",
                )),
                Some(token) => v.verify(token),
            },
        };
        if let Err(e) = &result {
            self.count_failure(e);
        }
        result
    }

    /// Server-side publishing: the static `--admin-token`, or a valid JWT
    /// carrying the `admin` role. A valid token without it is `forbidden`.
    pub fn authorize_admin(&self, headers: &HeaderMap) -> Result<(), ChatError> {
        let result = self.check_admin(headers);
        if let Err(e) = &result {
            self.count_failure(e);
        }
        result
    }

    fn check_admin(&self, headers: &HeaderMap) -> Result<(), ChatError> {
        let presented = bearer(headers).unwrap_or("");
        if let Some(expected) = &self.admin_token
            && constant_time_eq(presented.as_bytes(), expected.as_bytes())
        {
            return Ok(());
        }
        let Some(verifier) = &self.verifier else {
            return Err(ChatError::new(
                ErrorCode::Unauthorized,
                match self.admin_token {
                    Some(_) => "missing or wrong admin bearer token",
                    None => {
                        "server-side publishing is disabled on this node (no admin token or JWT key configured)"
                    }
                },
            ));
        };
        if presented.is_empty() {
            return Err(ChatError::new(ErrorCode::Unauthorized, "missing bearer token"));
        }
        let identity = verifier.verify(presented)?;
        if identity.has_role(ADMIN_ROLE) {
            Ok(())
        } else {
            Err(ChatError::forbidden(format!("server-side publishing needs the `{ADMIN_ROLE}` role")))
        }
    }

    fn count_failure(&self, e: &ChatError) {
        let reason = match e.code {
            ErrorCode::Forbidden => "forbidden",
            _ if e.message.starts_with("missing token") || e.message == "missing bearer token" => "missing",
            _ if e.message.contains("expired") => "expired",
            _ => "invalid",
        };
        self.metrics.auth_failures.with_label_values(&[reason]).inc();
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The WebSocket subprotocol clients must offer besides `bearer.<JWT>`; the
/// server selects it, so the token is never echoed back.
pub const WS_PROTOCOL: &str = "shardchat.v1";
const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// The JWT of a `Sec-WebSocket-Protocol: shardchat.v1, bearer.<JWT>` offer.
pub fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(SUBPROTOCOL_TOKEN_PREFIX))
}

/// Compares two secrets in time that depends on neither their contents nor
/// the presented one's length: both are hashed to 32 bytes first.
pub fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(presented), Sha256::digest(expected));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client IP under `hops` trusted proxies (see [`Auth::client_ip`]).
pub fn forwarded_client_ip(hops: usize, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    if hops == 0 {
        return peer.ip();
    }
    // Every raw entry of every header line, in order (lines concatenate).
    let entries: Vec<&[u8]> =
        headers.get_all("x-forwarded-for").iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).collect();
    let Some(entry) = entries.len().checked_sub(hops).and_then(|i| entries.get(i)) else {
        return peer.ip();
    };
    match std::str::from_utf8(entry).ok().and_then(parse_forwarded_entry) {
        Some(ip) => ip,
        None => {
            tracing::debug!(
                entry = %String::from_utf8_lossy(entry),
                "the trusted proxy's X-Forwarded-For entry is not an address; using the peer"
            );
            peer.ip()
        }
    }
}

/// `198.51.100.7`, `198.51.100.7:4711`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    entry
        .parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip())
        .or_else(|| entry.strip_prefix('[').and_then(|r| r.strip_suffix(']')).and_then(|r| r.parse().ok()))
}

/// How long until a token with `exp` (plus `leeway`) runs out; zero when it already has.
pub fn time_left(exp: u64, leeway: Duration) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Duration::from_secs(exp).saturating_add(leeway).saturating_sub(now)
}

/// Longest a session waits for its token to expire before the deadline is
/// treated as "never" (a token valid for centuries is as good as unlimited).
pub const MAX_SESSION_DEADLINE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// When a session with a token that expires at `exp` must end: `now` plus
/// [`time_left`], capped so that no `exp` (up to `u64::MAX`) overflows the
/// clock; `None` (dev mode) gets the cap.
pub fn session_deadline(
    now: tokio::time::Instant,
    exp: Option<u64>,
    leeway: Duration,
) -> tokio::time::Instant {
    let left = exp.map_or(MAX_SESSION_DEADLINE, |exp| time_left(exp, leeway).min(MAX_SESSION_DEADLINE));
    now.checked_add(left).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_counts_trusted_hops_from_the_right() {
        use clap::Parser;
        let registry = Registry::new();
        let config = Config::parse_from(["chat-node", "--dev-mode", "--trusted-proxy-hops", "1"]);
        let auth = Auth::from_config(&config, &registry).unwrap();
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(auth.client_ip(peer, &HeaderMap::new()), peer.ip());
        assert_eq!(auth.client_ip(peer, &xff(&["1.2.3.4, 198.51.100.9"])), ip("198.51.100.9"));
        let config = Config::parse_from(["chat-node", "--dev-mode"]);
        let auth = Auth::from_config(&config, &Registry::new()).unwrap();
        assert_eq!(
            auth.client_ip(peer, &xff(&["1.2.3.4, 198.51.100.9"])),
            peer.ip(),
            "no trusted proxy: the header is ignored"
        );
    }

    #[test]
    fn spoofed_and_unparseable_forwarded_for_entries_still_count_as_hops() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let one = |values: &[&str]| forwarded_client_ip(1, peer, &xff(values));
        let two = |values: &[&str]| forwarded_client_ip(2, peer, &xff(values));
        // The client forges entries on the left; the proxy appends the real one.
        assert_eq!(one(&["203.0.113.66, 198.51.100.9"]), ip("198.51.100.9"));
        // Junk the client sent used to be dropped before counting, so with two
        // trusted hops the forged address became "the client". Now the junk is
        // one more entry and the count lands on what the outer proxy saw.
        assert_eq!(two(&["203.0.113.66, garbage, 198.51.100.9, 10.0.0.9"]), ip("198.51.100.9"));
        assert_eq!(two(&["203.0.113.66, , 198.51.100.9, 10.0.0.9"]), ip("198.51.100.9"));
        // A forged header line is the same as forged entries.
        assert_eq!(one(&["203.0.113.66", "198.51.100.9"]), ip("198.51.100.9"));
        // The entry at the trusted position is not an address: the peer, never
        // a neighbouring (forgeable) entry.
        assert_eq!(one(&["198.51.100.9, unknown"]), peer.ip());
        assert_eq!(two(&["garbage, 10.0.0.9"]), peer.ip());
        // Fewer entries than trusted hops: the peer.
        assert_eq!(two(&["198.51.100.9"]), peer.ip());
        // Ports and bracketed IPv6, as some proxies write them.
        assert_eq!(one(&["198.51.100.9:4711"]), ip("198.51.100.9"));
        assert_eq!(one(&["[2001:db8::7]:443"]), ip("2001:db8::7"));
        assert_eq!(one(&["[2001:db8::7]"]), ip("2001:db8::7"));
        assert_eq!(one(&[" 2001:db8::7 "]), ip("2001:db8::7"));
        // Bytes that are not text are an entry too.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", axum::http::HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.9").unwrap());
        assert_eq!(forwarded_client_ip(1, peer, &h), ip("198.51.100.9"));
        assert_eq!(forwarded_client_ip(2, peer, &h), peer.ip());
    }

    #[test]
    fn time_left_saturates() {
        assert_eq!(time_left(0, Duration::from_secs(30)), Duration::ZERO);
        assert!(time_left(u64::MAX, Duration::ZERO) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn session_deadlines_never_overflow() {
        let now = tokio::time::Instant::now();
        for exp in [Some(u64::MAX), Some(u64::MAX / 2), Some(i64::MAX as u64), None] {
            let d = session_deadline(now, exp, Duration::from_secs(u64::MAX / 4));
            assert_eq!(d, now + MAX_SESSION_DEADLINE, "{exp:?}");
        }
        assert_eq!(session_deadline(now, Some(0), Duration::ZERO), now, "expired: now");
    }

    #[test]
    fn admin_token_comparison_does_not_depend_on_length() {
        let token = b"a-long-admin-token-of-32-bytes!!";
        assert!(constant_time_eq(token, token));
        assert!(!constant_time_eq(b"a-long-admin-token-of-32-bytes!?", token));
        assert!(!constant_time_eq(b"", token));
        assert!(!constant_time_eq(b"a-long-admin-token-of-32-bytes!!-and-more", token));
    }

    #[test]
    fn keys_or_explicit_dev_mode_are_required() {
        use clap::Parser;
        let auth = |args: &[&str]| {
            let config = Config::parse_from([&["chat-node"], args].concat());
            Auth::from_config(&config, &Registry::new()).map(|a| a.is_dev_mode())
        };
        let err = auth(&[]).unwrap_err();
        assert!(err.contains("--dev-mode"), "{err}");
        assert_eq!(auth(&["--dev-mode"]), Ok(true));
        let secret = "0123456789abcdef0123456789abcdef";
        assert_eq!(auth(&["--jwt-secret", secret]), Ok(false));
        assert!(
            auth(&["--jwt-secret", ""]).unwrap_err().contains("empty"),
            "empty is an error, not dev mode"
        );
        assert!(auth(&["--jwt-secret", "short"]).unwrap_err().contains("at least 32"));
        assert!(auth(&["--dev-mode", "--jwt-secret", secret]).unwrap_err().contains("cannot be combined"));
        // An admin token alone does not make the node authenticate clients.
        assert!(auth(&["--admin-token", secret]).unwrap_err().contains("--dev-mode"));
        assert!(auth(&["--dev-mode", "--admin-token", "short"]).unwrap_err().contains("at least 32"));
        assert_eq!(auth(&["--dev-mode", "--admin-token", secret]), Ok(true));
    }
}
