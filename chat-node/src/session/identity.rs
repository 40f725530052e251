//! Who a connection belongs to.
//!
//! With a JWT key configured the identity comes from a verified token
//! (`crate::auth`). Without one (dev mode) the node trusts `?user=<id>` and
//! optional `&roles=a,b` from the query string. See docs/security.md.

use std::sync::Arc;

use serde::Deserialize;

use crate::error::ChatError;
use shardchat_common::protocol::ErrorCode;

pub use shardchat_common::user::MAX_USER_ID_LEN;

#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    pub roles: Vec<String>,
    /// Display name from the token's `name` claim.
    pub name: Option<Arc<str>>,
    /// The token's `exp` (Unix seconds); `None` in dev mode.
    pub expires_at: Option<u64>,
}

/// Query parameters of `GET /v1/ws`.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectParams {
    pub user: Option<String>,
    pub roles: Option<String>,
    pub token: Option<String>,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Dev-mode identity from the query string.
    pub fn from_dev_params(params: &ConnectParams) -> Result<Identity, ChatError> {
        let Some(user) = params.user.as_deref() else {
            return Err(ChatError::new(
                ErrorCode::Unauthorized,
                "no identity: this node runs in dev mode, connect with ?user=<id>",
            ));
        };
        validate_user_id(user)?;
        let roles = params
            .roles
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| validate_user_id(r).map(|_| r.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Identity { user: Arc::from(user), roles, name: None, expires_at: None })
    }
}

/// User ids (and role names): 1–64 characters of `A–Z a–z 0–9 - _ . : @`.
pub fn validate_user_id(user: &str) -> Result<(), ChatError> {
    if shardchat_common::user::is_valid_user_id(user) {
        Ok(())
    } else {
        Err(ChatError::bad_request(format!(
            "invalid user id or role {:?}: use 1-{MAX_USER_ID_LEN} characters of A-Z a-z 0-9 - _ . : @",
            user.chars().take(MAX_USER_ID_LEN + 1).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(user: Option<&str>, roles: Option<&str>) -> ConnectParams {
        ConnectParams { user: user.map(Into::into), roles: roles.map(Into::into), token: None }
    }

    #[test]
    fn dev_identity() {
        let id = Identity::from_dev_params(&params(Some("user-42"), Some("mod, guild-7"))).unwrap();
        assert_eq!(&*id.user, "user-42");
        assert_eq!(id.roles, ["mod", "guild-7"]);
        assert_eq!(Identity::from_dev_params(&params(None, None)).unwrap_err().code, ErrorCode::Unauthorized);
        assert_eq!(
            Identity::from_dev_params(&params(Some("a b"), None)).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert!(Identity::from_dev_params(&params(Some(&"x".repeat(65)), None)).is_err());
    }
}
