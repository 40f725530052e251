//! Per-channel configuration: what a `ChatChannel` declares, what the
//! operator publishes to Redis and what `chat-node --channels FILE` reads.
//! Field names are camelCase to match the Kubernetes resource.

use serde::{Deserialize, Serialize};

use crate::ChannelName;

/// Declared settings of one channel. Every field but `name` has a default,
/// so a declaration can be as short as `{"name": "town-137"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: ChannelName,
    #[serde(default)]
    pub retention: Retention,
    /// Most distinct users joined at once; `None` means the node default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_members: Option<u32>,
    /// Messages per second accepted into the channel as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// `None` means the node default (`--moderation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<ModerationMode>,
    #[serde(default)]
    pub access: Access,
}

impl ChannelConfig {
    /// The settings an undeclared (dynamically created) channel gets.
    pub fn dynamic(name: ChannelName) -> Self {
        Self {
            name,
            retention: Retention::default(),
            max_members: None,
            rate_limit: None,
            moderation: None,
            access: Access::default(),
        }
    }
}

/// How much history a channel keeps. Whichever bound is hit first wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retention {
    #[serde(default = "Retention::default_max_messages")]
    pub max_messages: u32,
    #[serde(default = "Retention::default_max_age_seconds")]
    pub max_age_seconds: u64,
}

impl Retention {
    pub const DEFAULT_MAX_MESSAGES: u32 = 1_000;
    pub const DEFAULT_MAX_AGE_SECONDS: u64 = 24 * 60 * 60;
    fn default_max_messages() -> u32 {
        Self::DEFAULT_MAX_MESSAGES
    }
    fn default_max_age_seconds() -> u64 {
        Self::DEFAULT_MAX_AGE_SECONDS
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_messages: Self::DEFAULT_MAX_MESSAGES, max_age_seconds: Self::DEFAULT_MAX_AGE_SECONDS }
    }
}

/// A token bucket: `per_second` sustained, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// What the owner does with a message that trips the word filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModerationMode {
    /// Deliver as sent.
    Off,
    /// Replace each flagged word with `*`.
    #[default]
    Mask,
    /// Refuse the message with error code `filtered`.
    Reject,
}

/// Who may join and publish. An empty role list means everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Access {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join_roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish_roles: Vec<String>,
}

impl Access {
    pub fn may_join(&self, roles: &[String]) -> bool {
        allowed(&self.join_roles, roles)
    }

    /// Publishing also requires being allowed to join.
    pub fn may_publish(&self, roles: &[String]) -> bool {
        self.may_join(roles) && allowed(&self.publish_roles, roles)
    }

    /// Whether any role list limits who may join or publish.
    pub fn is_restricted(&self) -> bool {
        !self.join_roles.is_empty() || !self.publish_roles.is_empty()
    }
}

fn allowed(required: &[String], held: &[String]) -> bool {
    required.is_empty() || required.iter().any(|r| held.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_declaration_gets_defaults() {
        let c: ChannelConfig = serde_json::from_str(r#"{"name":"town-137"}"#).unwrap();
        assert_eq!(c, ChannelConfig::dynamic(ChannelName::new("town-137").unwrap()));
    }

    #[test]
    fn unknown_fields_and_bad_names_are_rejected() {
        assert!(serde_json::from_str::<ChannelConfig>(r#"{"name":"a","colour":1}"#).is_err());
        assert!(serde_json::from_str::<ChannelConfig>(r#"{"name":"a b"}"#).is_err());
    }

    #[test]
    fn role_lists_restrict_join_and_publish() {
        let guild = Access { join_roles: vec!["guild-7".into()], publish_roles: vec!["officer".into()] };
        let member = vec!["guild-7".to_string()];
        let officer = vec!["guild-7".to_string(), "officer".to_string()];
        assert!(!guild.may_join(&[]));
        assert!(guild.may_join(&member) && !guild.may_publish(&member));
        assert!(guild.may_publish(&officer));
        assert!(Access::default().may_publish(&[]));
    }
}
