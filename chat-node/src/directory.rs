//! Which channels exist and with what settings: declared ones (from
//! `--channels FILE` now, from the operator through Redis in cluster mode)
//! and the node-level policy for undeclared ones.
//!
//! Access fails closed:
//!
//! * A channel without a declaration gets the node-wide default access
//!   (`--default-join-roles`, `--default-publish-roles`; empty = anyone).
//! * A channel that was declared with role lists keeps them after its
//!   declaration disappears (a ChatChannel deleted with the `Retain` policy,
//!   Redis losing the configs): its *retained access* wins over the default
//!   until a new declaration replaces it. In cluster mode the retained
//!   access is shared through Redis (`{p}:access`, see `redis::upkeep`), so
//!   a node that starts later knows it too.
//! * While a node that reads its configs from Redis has not read them yet
//!   (*loading*), channels without a declaration are `unavailable` instead
//!   of getting the default, and `/readyz` reports not ready.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use shardchat_common::{Access, ChannelConfig, ChannelName, ModerationMode};

use crate::config::DynamicChannels;
use crate::error::{ChatError, ChatResult};

pub struct Directory {
    declared: RwLock<HashMap<ChannelName, Arc<ChannelConfig>>>,
    /// Access of restricted channels that are no longer declared.
    retained: RwLock<HashMap<ChannelName, Access>>,
    loaded: AtomicBool,
    dynamic: DynamicChannels,
    default_moderation: ModerationMode,
    default_max_members: u32,
    default_access: Access,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryFileError {
    #[error("reading channel declarations from {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parsing channel declarations in {path}: {message}")]
    Parse { path: String, message: String },
    #[error("channel {0} is declared twice")]
    Duplicate(String),
}

impl Directory {
    pub fn new(
        dynamic: DynamicChannels,
        default_moderation: ModerationMode,
        default_max_members: u32,
    ) -> Self {
        Self {
            declared: RwLock::new(HashMap::new()),
            retained: RwLock::new(HashMap::new()),
            loaded: AtomicBool::new(true),
            dynamic,
            default_moderation,
            default_max_members,
            default_access: Access::default(),
        }
    }

    /// The access of channels without a declaration (and without retained access).
    pub fn with_default_access(mut self, access: Access) -> Self {
        self.default_access = access;
        self
    }

    /// Reads a YAML (or JSON) list of channel configs.
    pub fn load_file(path: &Path) -> Result<Vec<ChannelConfig>, DirectoryFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| DirectoryFileError::Read { path: p.clone(), source })?;
        let configs: Vec<ChannelConfig> = serde_saphyr::from_str(&text)
            .map_err(|e| DirectoryFileError::Parse { path: p, message: e.to_string() })?;
        let mut seen = std::collections::HashSet::new();
        for c in &configs {
            if !seen.insert(c.name.clone()) {
                return Err(DirectoryFileError::Duplicate(c.name.to_string()));
            }
        }
        Ok(configs)
    }

    /// Marks the declarations as not read yet: until [`replace_all`](Self::replace_all),
    /// channels without a declaration are `unavailable`.
    pub fn set_loading(&self) {
        self.loaded.store(false, Ordering::SeqCst);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    /// Replaces every declaration at once (and ends loading). Restricted
    /// channels that lose their declaration keep their access as retained
    /// access; a new declaration supersedes retained access.
    pub fn replace_all(&self, configs: Vec<ChannelConfig>) {
        let map: HashMap<ChannelName, Arc<ChannelConfig>> =
            configs.into_iter().map(|c| (c.name.clone(), Arc::new(c))).collect();
        let mut declared = self.declared.write().unwrap_or_else(|p| p.into_inner());
        let mut retained = self.retained.write().unwrap_or_else(|p| p.into_inner());
        for (name, old) in declared.iter() {
            if !map.contains_key(name) && old.access.is_restricted() {
                tracing::info!(channel = %name, "declaration removed; the channel keeps its role restrictions");
                retained.insert(name.clone(), old.access.clone());
            }
        }
        for name in map.keys() {
            retained.remove(name);
        }
        *declared = map;
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// Adds retained access learnt elsewhere (another node, via Redis) for
    /// channels that are not declared here; declarations win.
    pub fn retain_access(&self, records: impl IntoIterator<Item = (ChannelName, Access)>) {
        let declared = self.declared.read().unwrap_or_else(|p| p.into_inner());
        let mut retained = self.retained.write().unwrap_or_else(|p| p.into_inner());
        for (name, access) in records {
            if access.is_restricted() && !declared.contains_key(&name) {
                retained.insert(name, access);
            }
        }
    }

    /// Every restricted access this node knows: declared and retained.
    pub fn restricted_access(&self) -> HashMap<ChannelName, Access> {
        let declared = self.declared.read().unwrap_or_else(|p| p.into_inner());
        let mut all = self.retained.read().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, c) in declared.iter().filter(|(_, c)| c.access.is_restricted()) {
            all.insert(name.clone(), c.access.clone());
        }
        all
    }

    /// Declared channels whose access is public (a restricted record of
    /// theirs elsewhere is stale).
    pub fn declared_public(&self) -> Vec<ChannelName> {
        let declared = self.declared.read().unwrap_or_else(|p| p.into_inner());
        declared.iter().filter(|(_, c)| !c.access.is_restricted()).map(|(n, _)| n.clone()).collect()
    }

    /// The settings of `channel`, or `not_found` when it is undeclared and
    /// dynamic channels are denied, or `unavailable` while loading.
    pub fn resolve(&self, channel: &ChannelName) -> ChatResult<Arc<ChannelConfig>> {
        if let Some(c) = self.declared.read().unwrap_or_else(|p| p.into_inner()).get(channel) {
            return Ok(c.clone());
        }
        if !self.is_loaded() {
            return Err(ChatError::unavailable(format!(
                "the configuration of {channel} is still loading; try again in a moment"
            )));
        }
        match self.dynamic {
            DynamicChannels::Allow => {
                let retained = self.retained.read().unwrap_or_else(|p| p.into_inner()).get(channel).cloned();
                let mut config = ChannelConfig::dynamic(channel.clone());
                config.access = retained.unwrap_or_else(|| self.default_access.clone());
                Ok(Arc::new(config))
            }
            DynamicChannels::Deny => Err(ChatError::not_found(format!(
                "channel {channel} is not declared and this node does not create channels on demand"
            ))),
        }
    }

    pub fn is_declared(&self, channel: &ChannelName) -> bool {
        self.declared.read().unwrap_or_else(|p| p.into_inner()).contains_key(channel)
    }

    pub fn declared_names(&self) -> Vec<ChannelName> {
        self.declared.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    pub fn moderation(&self, config: &ChannelConfig) -> ModerationMode {
        config.moderation.unwrap_or(self.default_moderation)
    }

    pub fn max_members(&self, config: &ChannelConfig) -> u32 {
        config.max_members.unwrap_or(self.default_max_members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardchat_common::protocol::ErrorCode;

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn guild() -> ChannelConfig {
        let mut c = ChannelConfig::dynamic(name("guild-7"));
        c.access = Access { join_roles: vec!["guild-7".into()], publish_roles: vec![] };
        c
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn deny_mode_only_knows_declared_channels() {
        let d = Directory::new(DynamicChannels::Deny, ModerationMode::Mask, 100);
        d.replace_all(vec![ChannelConfig::dynamic(name("town-137"))]);
        assert!(d.resolve(&name("town-137")).is_ok());
        assert_eq!(d.resolve(&name("elsewhere")).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn undeclared_channels_get_the_default_access() {
        let d = Directory::new(DynamicChannels::Allow, ModerationMode::Mask, 100);
        assert!(d.resolve(&name("town-1")).unwrap().access.may_join(&[]), "public by default");
        let d =
            Directory::new(DynamicChannels::Allow, ModerationMode::Mask, 100).with_default_access(Access {
                join_roles: roles(&["player"]),
                publish_roles: roles(&["verified"]),
            });
        let c = d.resolve(&name("town-1")).unwrap();
        assert!(!c.access.may_join(&[]));
        assert!(c.access.may_join(&roles(&["player"])) && !c.access.may_publish(&roles(&["player"])));
    }

    #[test]
    fn a_restricted_channel_stays_restricted_when_its_declaration_goes() {
        let d = Directory::new(DynamicChannels::Allow, ModerationMode::Mask, 100);
        d.replace_all(vec![guild(), ChannelConfig::dynamic(name("plaza"))]);
        d.replace_all(vec![]);
        let c = d.resolve(&name("guild-7")).unwrap();
        assert!(!c.access.may_join(&[]), "retained, not public");
        assert!(c.access.may_join(&roles(&["guild-7"])));
        assert!(d.resolve(&name("plaza")).unwrap().access.may_join(&[]), "public stays public");
        assert_eq!(d.restricted_access().len(), 1);
        // A new declaration replaces the retained access, public or not.
        d.replace_all(vec![ChannelConfig::dynamic(name("guild-7"))]);
        assert!(d.resolve(&name("guild-7")).unwrap().access.may_join(&[]));
        assert!(d.restricted_access().is_empty());
        assert_eq!(d.declared_public(), vec![name("guild-7")]);
    }

    #[test]
    fn retained_access_from_elsewhere_never_overrides_a_declaration() {
        let d = Directory::new(DynamicChannels::Allow, ModerationMode::Mask, 100);
        d.replace_all(vec![ChannelConfig::dynamic(name("plaza"))]);
        d.retain_access([(name("plaza"), guild().access), (name("guild-7"), guild().access)]);
        assert!(d.resolve(&name("plaza")).unwrap().access.may_join(&[]));
        assert!(!d.resolve(&name("guild-7")).unwrap().access.may_join(&[]));
    }

    #[test]
    fn channels_without_a_declaration_are_unavailable_while_loading() {
        let d = Directory::new(DynamicChannels::Allow, ModerationMode::Mask, 100);
        d.set_loading();
        assert!(!d.is_loaded());
        assert_eq!(d.resolve(&name("guild-7")).unwrap_err().code, ErrorCode::Unavailable);
        d.replace_all(vec![guild()]);
        assert!(d.is_loaded());
        assert!(!d.resolve(&name("guild-7")).unwrap().access.may_join(&[]));
        assert!(d.resolve(&name("town-1")).is_ok());
    }

    #[test]
    fn loads_yaml_declarations() {
        let dir = std::env::temp_dir().join(format!("shardchat-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("channels.yaml");
        std::fs::write(
            &file,
            "- name: town-137\n  retention: {maxMessages: 50, maxAgeSeconds: 30}\n- name: guild-7\n  access: {joinRoles: [guild-7]}\n  moderation: reject\n",
        )
        .unwrap();
        let configs = Directory::load_file(&file).unwrap();
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[0].retention.max_age_seconds, 30);
        assert_eq!(configs[1].moderation, Some(ModerationMode::Reject));
        std::fs::write(&file, "- name: a\n- name: a\n").unwrap();
        assert!(matches!(Directory::load_file(&file), Err(DirectoryFileError::Duplicate(_))));
        std::fs::write(&file, "- name: 'bad name'\n").unwrap();
        assert!(matches!(Directory::load_file(&file), Err(DirectoryFileError::Parse { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}
