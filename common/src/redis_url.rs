//! Which Redis URLs the binaries accept, and (feature `redis-tls`) the TLS
//! client configuration for `rediss://`.
//!
//! Only the two schemes Shardchat can honour are accepted: `redis://`
//! (plain TCP) and `rediss://` (TLS). Everything else — Sentinel, Cluster,
//! Unix sockets, typos such as `rediss:/host` or `redis-tls://` — is refused
//! at start-up with a clear message instead of being connected to in some
//! other way than the URL says. `rediss://` verifies the server certificate
//! against the system roots (which honour `SSL_CERT_FILE`/`SSL_CERT_DIR`)
//! plus an optional CA file.

/// A Redis URL that passed [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss://`: TLS with certificate verification.
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisUrlError {
    #[error("Redis URL {0:?} has no scheme; use redis://host:6379 or rediss://host:6379")]
    NoScheme(String),
    #[error(
        "Redis URL scheme {0:?} is not supported: use redis:// (plain TCP) or rediss:// (TLS); \
         Sentinel, Cluster and Unix-socket URLs are not supported"
    )]
    Scheme(String),
    #[error("Redis URL {0:?} names no host")]
    NoHost(String),
}

/// Checks the scheme (and that there is a host) of a Redis URL. The URL is
/// never echoed back with its credentials.
pub fn check(url: &str) -> Result<RedisUrl, RedisUrlError> {
    let redacted = redact(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(RedisUrlError::NoScheme(redacted));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "redis" => false,
        "rediss" => true,
        other => return Err(RedisUrlError::Scheme(other.to_string())),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() || host.starts_with(':') {
        return Err(RedisUrlError::NoHost(redacted));
    }
    Ok(RedisUrl { tls })
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "***".into() };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(feature = "redis-tls")]
pub use tls::{TlsConfigError, client_config};

#[cfg(feature = "redis-tls")]
mod tls {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::{ClientConfig, RootCertStore};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[derive(Debug, thiserror::Error)]
    pub enum TlsConfigError {
        #[error("reading CA certificates from {path}: {message}")]
        CaFile { path: String, message: String },
        #[error("{path} holds no CA certificate")]
        EmptyCaFile { path: String },
        #[error("no trusted CA certificate: the system has none and no CA file was given")]
        NoRoots,
        #[error("TLS setup: {0}")]
        Rustls(String),
    }

    /// A rustls client config (ring provider, TLS 1.2 and 1.3) trusting the
    /// system roots and the certificates in `ca_file`, plus warnings for the
    /// caller to log (a partly unreadable system store is not fatal).
    pub fn client_config(ca_file: Option<&Path>) -> Result<(ClientConfig, Vec<String>), TlsConfigError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let warnings = native.errors.iter().map(|e| format!("loading system CA certificates: {e}")).collect();
        let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_file {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsConfigError::CaFile { path: shown.clone(), message: e.to_string() })?;
            if certs.is_empty() {
                return Err(TlsConfigError::EmptyCaFile { path: shown });
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| TlsConfigError::CaFile { path: shown.clone(), message: e.to_string() })?;
            }
        }
        if roots.is_empty() {
            return Err(TlsConfigError::NoRoots);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok((config, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_schemes_we_honour_are_accepted() {
        assert_eq!(check("redis://127.0.0.1:6379"), Ok(RedisUrl { tls: false }));
        assert_eq!(check("redis://:pw@redis.internal:6379/0"), Ok(RedisUrl { tls: false }));
        assert_eq!(check("REDISS://redis.internal"), Ok(RedisUrl { tls: true }));
        assert_eq!(check("rediss://user:pw@redis.internal:6380/1"), Ok(RedisUrl { tls: true }));
        for bad in [
            "redis-sentinel://h:26379",
            "rediss-cluster://h:6379",
            "redis+unix:///tmp/redis.sock",
            "valkeys://h",
            "http://h:6379",
            "redis-tls://h",
        ] {
            assert!(matches!(check(bad), Err(RedisUrlError::Scheme(_))), "{bad}");
        }
        assert!(matches!(check("127.0.0.1:6379"), Err(RedisUrlError::NoScheme(_))));
        assert!(matches!(check("rediss:/h"), Err(RedisUrlError::NoScheme(_))));
        assert!(matches!(check("redis://"), Err(RedisUrlError::NoHost(_))));
        assert!(matches!(check("redis://:pw@:6379"), Err(RedisUrlError::NoHost(_))));
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("rediss://u:s3cret@h:6379/0"), "rediss://u:***@h:6379/0");
        assert_eq!(redact("redis://:s3cret@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        let e = check("oops://:s3cret@h").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
        let e = check(":s3cret@h").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
