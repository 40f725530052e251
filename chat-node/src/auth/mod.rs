//! Who may connect, and as whom: JWT verification (or dev-mode identities),
//! the per-IP connection-attempt limit, and admin authorization for the
//! server-side REST publish. See docs/security.md.

pub mod jwt;
pub mod limit;

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
use jwt::{ClaimRules, JwtVerifier, KeySources};
use limit::IpLimiter;

/// The role that may publish through REST and use admin operations.
pub const ADMIN_ROLE: &str = "admin";

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
        };
        for reason in ["missing", "invalid", "expired", "forbidden"] {
            m.auth_failures.with_label_values(&[reason]);
        }
        m
    }
}

pub struct Auth {
    verifier: Option<Arc<JwtVerifier>>,
    ip_limit: IpLimiter,
    trusted_proxy_hops: usize,
    admin_token: Option<String>,
    pub metrics: SecurityMetrics,
}

impl Auth {
    pub fn from_config(config: &Config, registry: &Registry) -> Result<Auth, String> {
        let sources = KeySources {
            secret: config.jwt_secret.clone(),
            public_keys: config.jwt_public_key.clone(),
            jwks: config.jwks_file.clone(),
        };
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
        });
    }

    /// The client's address: the TCP peer, or with `--trusted-proxy-hops N`
    /// the address the Nth trusted proxy saw (counted from the right of
    /// `X-Forwarded-For`, the only part a client cannot forge).
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        if self.trusted_proxy_hops == 0 {
            return peer.ip();
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        hops.len()
            .checked_sub(self.trusted_proxy_hops)
            .and_then(|i| hops.get(i))
            .copied()
            .unwrap_or_else(|| peer.ip())
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

    /// The identity of a WebSocket upgrade request.
    pub fn authenticate(&self, headers: &HeaderMap, params: &ConnectParams) -> Result<Identity, ChatError> {
        let result = match &self.verifier {
            None => Identity::from_dev_params(params),
            Some(v) => match bearer(headers).or(params.token.as_deref()).filter(|t| !t.is_empty()) {
                None => Err(ChatError::new(
                    ErrorCode::Unauthorized,
                    "missing token: send `Authorization: Bearer <JWT>` or `?token=<JWT>`",
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long until a token with `exp` (plus `leeway`) runs out; zero when it already has.
pub fn time_left(exp: u64, leeway: Duration) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Duration::from_secs(exp).saturating_add(leeway).saturating_sub(now)
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

    #[test]
    fn forwarded_for_counts_trusted_hops_from_the_right() {
        use clap::Parser;
        let registry = Registry::new();
        let config = Config::parse_from(["chat-node", "--trusted-proxy-hops", "1"]);
        let auth = Auth::from_config(&config, &registry).unwrap();
        let peer: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(auth.client_ip(peer, &h), peer.ip());
        h.insert("x-forwarded-for", "1.2.3.4, 198.51.100.9".parse().unwrap());
        assert_eq!(auth.client_ip(peer, &h), "198.51.100.9".parse::<IpAddr>().unwrap());
        let config = Config::parse_from(["chat-node"]);
        let auth = Auth::from_config(&config, &Registry::new()).unwrap();
        assert_eq!(auth.client_ip(peer, &h), peer.ip(), "no trusted proxy: the header is ignored");
    }

    #[test]
    fn time_left_saturates() {
        assert_eq!(time_left(0, Duration::from_secs(30)), Duration::ZERO);
        assert!(time_left(u64::MAX, Duration::ZERO) > Duration::from_secs(1 << 40));
    }
}
