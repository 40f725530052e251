//! The `ChatChannel` custom resource (`chat.shardchat.io/v1alpha1`).
//!
//! The schema is generated from these types; `chat-operator crd` prints it
//! and `crds/chatchannel.yaml` is the committed copy (a test fails when the
//! two drift apart).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use shardchat_common::{
    Access, ChannelConfig, ChannelName, InvalidChannelName, ModerationMode, RateLimit, Retention,
};

/// API group of every Shardchat resource.
pub const GROUP: &str = "chat.shardchat.io";
/// Finalizer the operator puts on every `ChatChannel` it has seen.
pub const FINALIZER: &str = "chat.shardchat.io/cleanup";
/// The condition type the operator maintains on every ChatChannel.
pub const READY: &str = "Ready";
/// Condition present (True) while reconciliation is paused.
pub const PAUSED: &str = "Paused";
/// Annotation that pauses reconciliation of one ChatChannel when "true".
pub const PAUSE_ANNOTATION: &str = "chat.shardchat.io/paused";

/// Regular expression of a valid channel name (the same rule as
/// `shardchat_common::channel::validate`).
pub const CHANNEL_NAME_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// Bounds enforced by the schema (and checked again by the operator, so an
/// object stored before a schema change cannot push nonsense to the nodes).
pub mod bounds {
    pub const MAX_MESSAGES: u32 = 1_000_000;
    /// 365 days.
    pub const MAX_AGE_SECONDS: u64 = 31_536_000;
    pub const MAX_MEMBERS: u32 = 1_000_000;
    pub const MAX_PER_SECOND: u32 = 100_000;
    pub const MAX_BURST: u32 = 1_000_000;
    pub const MAX_ROLES: usize = 64;
    pub const MAX_ROLE_LEN: usize = 64;
}

/// Desired state of a chat channel.
// Repeated `printcolumn(type_ = ...)` arguments are not duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "chat.shardchat.io",
    version = "v1alpha1",
    kind = "ChatChannel",
    plural = "chatchannels",
    singular = "chatchannel",
    shortname = "chch",
    namespaced,
    doc = "A chat channel declared to Shardchat: the operator assigns it to a chat node and publishes its config to Redis",
    status = "ChatChannelStatus",
    printcolumn(name = "Channel", type_ = "string", json_path = ".spec.channel", priority = 1),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.ringEpoch"),
    printcolumn(name = "Members", type_ = "integer", json_path = ".status.members"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    )
)]
#[x_kube(validation = Rule::new("has(self.channel) == has(oldSelf.channel)").message("spec.channel cannot be added or removed after creation"))]
#[serde(rename_all = "camelCase")]
pub struct ChatChannelSpec {
    /// Data-plane channel name (what clients join). Defaults to
    /// metadata.name; immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[A-Za-z0-9._:-]{1,128}$"), length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.channel is immutable"))]
    pub channel: Option<String>,

    /// How much history the owner keeps; whichever bound is hit first wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,

    /// Most distinct users joined at once (node default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_members: Option<u32>,

    /// Messages per second accepted into the channel as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,

    /// What the owner does with a message that trips the word filter
    /// (node default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<Moderation>,

    /// Who may join and publish; absent or empty lists mean everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessSpec>,

    /// What happens to the channel's data when this object is deleted:
    /// `Retain` (default) only undeclares the channel, `Delete` also drops
    /// its history and closes it on the nodes.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// History retention.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Most messages kept (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_messages: Option<u32>,
    /// Oldest message kept, in seconds (default 86400, at most 365 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub max_age_seconds: Option<u64>,
}

/// A token bucket over the whole channel.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.burst >= self.perSecond").message("rateLimit.burst must be at least rateLimit.perSecond"))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained messages per second.
    #[schemars(range(min = 1, max = 100_000))]
    pub per_second: u32,
    /// Messages accepted at once above the sustained rate.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: u32,
}

/// What the owner does with a message that trips the word filter: `off`,
/// `mask` or `reject` (node default when absent).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Moderation {
    /// Deliver as sent.
    Off,
    /// Replace flagged words with `*`.
    Mask,
    /// Refuse the message with error code `filtered`.
    Reject,
}

/// Role lists. A user needs one of `joinRoles` to join and, in addition,
/// one of `publishRoles` to publish. Empty lists mean everyone.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    pub join_roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    pub publish_roles: Vec<String>,
}

/// What deleting the `ChatChannel` does to the channel's data.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Undeclare the channel (config removed) but keep its history.
    #[default]
    Retain,
    /// Remove config and history and close the channel on its owner.
    Delete,
}

/// Observed state, written by the operator only.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChatChannelStatus {
    /// Data-plane channel name the operator published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Chat node (pod name) that owns the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Epoch of the ring the owner was computed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_epoch: Option<u64>,
    /// metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Approximate number of distinct members (users joined on any node),
    /// read periodically from the nodes' registry in Redis; lags by up to
    /// the operator's `--members-refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u64>,
    /// Standard conditions; the operator maintains `Ready` (and `Paused`
    /// while the pause annotation is set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The fixed set of `Ready` condition reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Config published, owner computed (`Ready=True`).
    Assigned,
    /// No chat node is in the ring (`Ready=False`).
    NoNodes,
    /// Redis could not be written (`Ready=False`).
    RedisUnavailable,
    /// The spec cannot be turned into a channel config (`Ready=False`).
    InvalidSpec,
    /// An older `ChatChannel` claims the same channel name (`Ready=False`).
    Conflict,
}

impl Reason {
    pub const ALL: [Reason; 5] =
        [Reason::Assigned, Reason::NoNodes, Reason::RedisUnavailable, Reason::InvalidSpec, Reason::Conflict];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Assigned => "Assigned",
            Reason::NoNodes => "NoNodes",
            Reason::RedisUnavailable => "RedisUnavailable",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Conflict => "Conflict",
        }
    }

    pub fn is_ready(self) -> bool {
        self == Reason::Assigned
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Why a spec cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid channel name {name:?}: {source}")]
    ChannelName { name: String, source: InvalidChannelName },
    #[error("{field} must be between {min} and {max}, got {value}")]
    OutOfRange { field: &'static str, min: u64, max: u64, value: u64 },
    #[error("rateLimit.burst ({burst}) must be at least rateLimit.perSecond ({per_second})")]
    BurstBelowRate { per_second: u32, burst: u32 },
    #[error("{field}: {reason}")]
    BadRoles { field: &'static str, reason: String },
}

impl ChatChannel {
    /// The data-plane channel name: `spec.channel`, else `metadata.name`.
    pub fn channel_name(&self) -> String {
        self.spec.channel.clone().unwrap_or_else(|| self.name_any())
    }

    /// The `Ready` condition, if any.
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.status.as_ref()?.conditions.iter().find(|c| c.type_ == READY)
    }

    /// Reason of the current `Ready` condition, if it is one of ours.
    pub fn ready_reason(&self) -> Option<Reason> {
        Reason::parse(&self.ready_condition()?.reason)
    }

    /// Whether the pause annotation is set to "true" (case-insensitive).
    pub fn is_paused(&self) -> bool {
        self.annotations().get(PAUSE_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// Whether the status carries the `Paused` condition.
    pub fn shows_paused(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == PAUSED && c.status == "True"))
    }

    /// Validates the spec and converts it into the config nodes read.
    pub fn channel_config(&self) -> Result<ChannelConfig, SpecError> {
        self.spec.to_config(&self.name_any())
    }
}

fn in_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), SpecError> {
    if (min..=max).contains(&value) { Ok(()) } else { Err(SpecError::OutOfRange { field, min, max, value }) }
}

fn check_roles(field: &'static str, roles: &[String]) -> Result<(), SpecError> {
    if roles.len() > bounds::MAX_ROLES {
        return Err(SpecError::BadRoles { field, reason: format!("at most {} roles", bounds::MAX_ROLES) });
    }
    if let Some(bad) = roles.iter().find(|r| r.is_empty() || r.len() > bounds::MAX_ROLE_LEN) {
        return Err(SpecError::BadRoles {
            field,
            reason: format!("role {bad:?} must be 1-{} characters", bounds::MAX_ROLE_LEN),
        });
    }
    Ok(())
}

impl ChatChannelSpec {
    /// Validates the spec (the same bounds as the schema) and builds the
    /// channel config; `default_name` is used when `channel` is absent.
    pub fn to_config(&self, default_name: &str) -> Result<ChannelConfig, SpecError> {
        let raw = self.channel.as_deref().unwrap_or(default_name);
        let name = ChannelName::new(raw)
            .map_err(|source| SpecError::ChannelName { name: raw.to_string(), source })?;
        let mut retention = Retention::default();
        if let Some(r) = &self.retention {
            if let Some(m) = r.max_messages {
                in_range("retention.maxMessages", m.into(), 1, bounds::MAX_MESSAGES.into())?;
                retention.max_messages = m;
            }
            if let Some(a) = r.max_age_seconds {
                in_range("retention.maxAgeSeconds", a, 1, bounds::MAX_AGE_SECONDS)?;
                retention.max_age_seconds = a;
            }
        }
        if let Some(m) = self.max_members {
            in_range("maxMembers", m.into(), 1, bounds::MAX_MEMBERS.into())?;
        }
        let rate_limit = match &self.rate_limit {
            None => None,
            Some(rl) => {
                in_range("rateLimit.perSecond", rl.per_second.into(), 1, bounds::MAX_PER_SECOND.into())?;
                in_range("rateLimit.burst", rl.burst.into(), 1, bounds::MAX_BURST.into())?;
                if rl.burst < rl.per_second {
                    return Err(SpecError::BurstBelowRate { per_second: rl.per_second, burst: rl.burst });
                }
                Some(RateLimit { per_second: rl.per_second, burst: rl.burst })
            }
        };
        let access = match &self.access {
            None => Access::default(),
            Some(a) => {
                check_roles("access.joinRoles", &a.join_roles)?;
                check_roles("access.publishRoles", &a.publish_roles)?;
                Access { join_roles: a.join_roles.clone(), publish_roles: a.publish_roles.clone() }
            }
        };
        Ok(ChannelConfig {
            name,
            retention,
            max_members: self.max_members,
            rate_limit,
            moderation: self.moderation.map(|m| match m {
                Moderation::Off => ModerationMode::Off,
                Moderation::Mask => ModerationMode::Mask,
                Moderation::Reject => ModerationMode::Reject,
            }),
            access,
        })
    }
}

/// The CRD as YAML, exactly as committed in `crds/chatchannel.yaml`.
pub fn crd_yaml() -> String {
    let crd = ChatChannel::crd();
    let body = serde_saphyr::to_string(&crd).expect("the CRD serializes to YAML");
    format!(
        "# Generated by `chat-operator crd` from operator/src/crd.rs; do not edit.\n\
         # Regenerate with: cargo run -p chat-operator -- crd > crds/chatchannel.yaml\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_json(v: serde_json::Value) -> ChatChannelSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn minimal_spec_defaults_to_metadata_name_and_retain() {
        let s = spec_json(serde_json::json!({}));
        assert_eq!(s.deletion_policy, DeletionPolicy::Retain);
        let c = s.to_config("town-137").unwrap();
        assert_eq!(c, ChannelConfig::dynamic(ChannelName::new("town-137").unwrap()));
    }

    #[test]
    fn full_spec_maps_to_channel_config_json() {
        let s = spec_json(serde_json::json!({
            "channel": "guild:42",
            "retention": {"maxMessages": 50, "maxAgeSeconds": 3600},
            "maxMembers": 500,
            "rateLimit": {"perSecond": 5, "burst": 20},
            "moderation": "reject",
            "access": {"joinRoles": ["guild-42"], "publishRoles": ["officer"]},
            "deletionPolicy": "Delete"
        }));
        let c = s.to_config("ignored").unwrap();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::json!({
                "name": "guild:42",
                "retention": {"maxMessages": 50, "maxAgeSeconds": 3600},
                "maxMembers": 500,
                "rateLimit": {"perSecond": 5, "burst": 20},
                "moderation": "reject",
                "access": {"joinRoles": ["guild-42"], "publishRoles": ["officer"]}
            })
        );
    }

    #[test]
    fn invalid_specs_are_reported() {
        let bad_name = spec_json(serde_json::json!({"channel": "town 137"}));
        assert!(matches!(bad_name.to_config("x"), Err(SpecError::ChannelName { .. })));
        // metadata.name may hold characters a channel name cannot (none today,
        // but a too-long name is possible): still InvalidSpec, not a panic.
        let s = spec_json(serde_json::json!({}));
        assert!(s.to_config(&"a".repeat(129)).is_err());
        let burst = spec_json(serde_json::json!({"rateLimit": {"perSecond": 10, "burst": 5}}));
        assert!(matches!(burst.to_config("x"), Err(SpecError::BurstBelowRate { .. })));
        let zero = spec_json(serde_json::json!({"retention": {"maxMessages": 0}}));
        assert!(matches!(zero.to_config("x"), Err(SpecError::OutOfRange { .. })));
        let roles = spec_json(serde_json::json!({"access": {"joinRoles": [""]}}));
        assert!(matches!(roles.to_config("x"), Err(SpecError::BadRoles { .. })));
    }

    #[test]
    fn pattern_matches_the_common_channel_rule() {
        // The schema pattern is a regex; check it by hand against the rule
        // in shardchat-common for every printable ASCII character.
        for c in (0x20u8..0x7f).map(char::from) {
            let in_pattern = c.is_ascii_alphanumeric() || "._:-".contains(c);
            assert_eq!(in_pattern, shardchat_common::channel::validate(&c.to_string()).is_ok(), "{c:?}");
        }
        assert_eq!(CHANNEL_NAME_PATTERN, "^[A-Za-z0-9._:-]{1,128}$");
        assert_eq!(shardchat_common::channel::MAX_CHANNEL_NAME_LEN, 128);
    }

    #[test]
    fn crd_has_the_promised_surface() {
        let crd = serde_json::to_value(ChatChannel::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "chatchannels.chat.shardchat.io");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["chch"]));
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert!(v["subresources"]["status"].is_object());
        let cols: Vec<(String, i64)> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_string(), c["priority"].as_i64().unwrap_or(0)))
            .collect();
        for (name, prio) in [
            ("Node", 0),
            ("Ready", 0),
            ("Reason", 0),
            ("Epoch", 0),
            ("Members", 0),
            ("Age", 0),
            ("Channel", 1),
        ] {
            assert!(cols.contains(&(name.to_string(), prio)), "{name} missing in {cols:?}");
        }
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let channel = &spec["properties"]["channel"];
        assert_eq!(channel["pattern"], CHANNEL_NAME_PATTERN);
        assert_eq!(channel["maxLength"], 128);
        let text = serde_json::to_string(spec).unwrap();
        assert!(text.contains("self == oldSelf"), "immutability rule missing");
        assert!(text.contains("self.burst >= self.perSecond"));
        assert_eq!(spec["properties"]["moderation"]["enum"], serde_json::json!(["off", "mask", "reject"]));
        assert_eq!(spec["properties"]["deletionPolicy"]["default"], "Retain");
        assert_eq!(spec["properties"]["retention"]["properties"]["maxMessages"]["maximum"], 1_000_000.0);
    }

    #[test]
    fn examples_are_valid_chatchannels() {
        for (file, text) in [
            ("town-137.yaml", include_str!("../../examples/town-137.yaml")),
            ("guild.yaml", include_str!("../../examples/guild.yaml")),
            ("global-moderated.yaml", include_str!("../../examples/global-moderated.yaml")),
        ] {
            let c: ChatChannel = serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let config = c.channel_config().unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(!config.name.as_str().is_empty());
        }
        let guild: ChatChannel = serde_saphyr::from_str(include_str!("../../examples/guild.yaml")).unwrap();
        assert_eq!(guild.channel_name(), "guild:42");
        assert_eq!(guild.spec.deletion_policy, DeletionPolicy::Retain);
    }

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let committed = include_str!("../../crds/chatchannel.yaml");
        assert!(
            committed == crd_yaml(),
            "crds/chatchannel.yaml is out of date with operator/src/crd.rs; regenerate it with\n\n    \
             cargo run -p chat-operator -- crd > crds/chatchannel.yaml\n"
        );
    }
}
