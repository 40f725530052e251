//! JWT verification: HS256 with a shared secret, RS256 and ES256 with
//! public keys from PEM files or a JWKS file (re-read when they change).
//!
//! The algorithm is pinned by the key, never chosen by the token: an HS256
//! token is only checked against the shared secret, an RS256 token only
//! against RSA keys, an ES256 token only against P-256 keys. `none` and every
//! other algorithm are refused before any signature work, which rules out
//! the classic confusion attacks (an RSA public key used as an HMAC secret,
//! or an unsigned token).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use shardchat_common::protocol::ErrorCode;

use crate::error::ChatError;
use crate::session::identity::{Identity, validate_user_id};

/// Most roles one token may carry.
pub const MAX_ROLES: usize = 32;
/// Longest display name accepted from the `name` claim, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest token accepted, in bytes (before any parsing).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where verification keys come from.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    pub secret: Option<String>,
    pub public_keys: Vec<PathBuf>,
    pub jwks: Option<PathBuf>,
}

impl KeySources {
    pub fn is_empty(&self) -> bool {
        self.secret.as_deref().is_none_or(str::is_empty) && self.public_keys.is_empty() && self.jwks.is_none()
    }

    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        self.public_keys.iter().chain(self.jwks.iter())
    }
}

/// Claim checks besides the signature.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub leeway: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys in force. Replaced as a whole on reload.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads every source. Any unreadable or unusable file is an error, so
    /// a broken rotation never silently drops keys.
    pub fn load(sources: &KeySources) -> Result<KeySet, String> {
        let mut keys = Vec::new();
        if let Some(secret) = sources.secret.as_deref().filter(|s| !s.is_empty()) {
            if secret.len() < 32 {
                tracing::warn!("--jwt-secret is shorter than 32 bytes; use a long random secret for HS256");
            }
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        for path in &sources.public_keys {
            let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            keys.push(pem_key(&pem).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        if let Some(path) = &sources.jwks {
            let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let set: JwkSet =
                serde_json::from_slice(&text).map_err(|e| format!("parsing JWKS {}: {e}", path.display()))?;
            let mut usable = 0;
            for jwk in &set.keys {
                match jwk_key(jwk) {
                    Ok(k) => {
                        usable += 1;
                        keys.push(k);
                    }
                    Err(e) => tracing::warn!(kid = ?jwk.common.key_id, "skipping JWKS key: {e}"),
                }
            }
            if usable == 0 {
                return Err(format!("JWKS {} has no usable RS256 or ES256 signing key", path.display()));
            }
        }
        Ok(KeySet { keys })
    }
}

fn pem_key(pem: &[u8]) -> Result<Key, String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key { kid: None, alg: Algorithm::RS256, key });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(Key { kid: None, alg: Algorithm::ES256, key });
    }
    Err("not an RSA or EC public key in PEM format".into())
}

fn jwk_key(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Key, String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("key is for encryption".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return Err("only RSA and P-256 EC keys are supported".into()),
    };
    match (jwk.common.key_algorithm, alg) {
        (None, _)
        | (Some(KeyAlgorithm::RS256), Algorithm::RS256)
        | (Some(KeyAlgorithm::ES256), Algorithm::ES256) => {}
        (Some(other), _) => return Err(format!("key algorithm {other:?} is not accepted")),
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(Key { kid: jwk.common.key_id.clone(), alg, key })
}

/// Roles may be given as a JSON array of strings or as one string.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Roles {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    roles: Roles,
    exp: u64,
}

/// Verifies tokens against the current key set.
pub struct JwtVerifier {
    sources: KeySources,
    rules: ClaimRules,
    keys: RwLock<Arc<KeySet>>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl JwtVerifier {
    pub fn new(sources: KeySources, rules: ClaimRules) -> Result<JwtVerifier, String> {
        let stamps = file_stamps(&sources);
        let keys = KeySet::load(&sources)?;
        Ok(JwtVerifier { sources, rules, keys: RwLock::new(Arc::new(keys)), stamps: Mutex::new(stamps) })
    }

    pub fn leeway(&self) -> Duration {
        self.rules.leeway
    }

    pub fn key_count(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Re-reads the key files when any of them changed (modification time or
    /// size). A failed reload keeps the previous keys. Returns true when the
    /// keys were replaced.
    pub fn reload_if_changed(&self) -> bool {
        let now = file_stamps(&self.sources);
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *stamps == now {
                return false;
            }
            *stamps = now;
        }
        match KeySet::load(&self.sources) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "JWT verification keys reloaded");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "reloading JWT keys failed; keeping the previous keys");
                false
            }
        }
    }

    /// Checks `token` and returns who it names. Every failure is `unauthorized`.
    pub fn verify(&self, token: &str) -> Result<Identity, ChatError> {
        let unauthorized = |m: String| ChatError::new(ErrorCode::Unauthorized, m);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(unauthorized(format!("token longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| unauthorized(format!("malformed token: {}", describe(e.kind()))))?;
        if !matches!(header.alg, Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256) {
            return Err(unauthorized(format!("token algorithm {:?} is not accepted", header.alg)));
        }
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut candidates: Vec<&Key> = keys.keys.iter().filter(|k| k.alg == header.alg).collect();
        if let Some(kid) = header.kid.as_deref()
            && candidates.iter().any(|k| k.kid.as_deref() == Some(kid))
        {
            candidates.retain(|k| k.kid.as_deref() == Some(kid));
        }
        if candidates.is_empty() {
            return Err(unauthorized(format!("no key on this node verifies {:?} tokens", header.alg)));
        }
        let validation = self.validation(header.alg);
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return identity(data.claims),
                Err(e) => {
                    let worse_than_signature = !matches!(e.kind(), ErrorKind::InvalidSignature);
                    if last.is_none() || worse_than_signature {
                        last = Some(e);
                    }
                }
            }
        }
        let e = last.map(|e| describe(e.kind())).unwrap_or_else(|| "invalid token".into());
        Err(unauthorized(e))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.rules.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        match &self.rules.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.rules.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        v
    }
}

fn identity(claims: Claims) -> Result<Identity, ChatError> {
    let unauthorized = |m: String| ChatError::new(ErrorCode::Unauthorized, m);
    validate_user_id(&claims.sub).map_err(|e| unauthorized(format!("claim `sub`: {}", e.message)))?;
    let roles = match claims.roles {
        Roles::None => Vec::new(),
        Roles::One(r) => vec![r],
        Roles::Many(r) => r,
    };
    if roles.len() > MAX_ROLES {
        return Err(unauthorized(format!("claim `roles` has more than {MAX_ROLES} entries")));
    }
    for r in &roles {
        validate_user_id(r).map_err(|e| unauthorized(format!("claim `roles`: {}", e.message)))?;
    }
    let name = match claims.name {
        Some(n) if n.chars().count() > MAX_NAME_CHARS || n.chars().any(char::is_control) => {
            return Err(unauthorized(format!(
                "claim `name` must be at most {MAX_NAME_CHARS} printable characters"
            )));
        }
        n => n.filter(|n| !n.is_empty()).map(Arc::from),
    };
    Ok(Identity { user: Arc::from(claims.sub.as_str()), roles, name, expires_at: Some(claims.exp) })
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            "token algorithm is not accepted".into()
        }
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim `{c}`"),
        ErrorKind::InvalidClaimFormat(c) => format!("claim `{c}` has the wrong type"),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::Json(_) => "claims are not valid JSON of the expected shape".into(),
        _ => "malformed token".into(),
    }
}

fn file_stamps(sources: &KeySources) -> Vec<Option<(SystemTime, u64)>> {
    sources
        .files()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}
