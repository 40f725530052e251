//! Which channels exist and with what settings: declared ones (from
//! `--channels FILE` now, from the operator through Redis in cluster mode)
//! and the node-level policy for undeclared ones.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use shardchat_common::{ChannelConfig, ChannelName, ModerationMode};

use crate::config::DynamicChannels;
use crate::error::{ChatError, ChatResult};

pub struct Directory {
    declared: RwLock<HashMap<ChannelName, Arc<ChannelConfig>>>,
    dynamic: DynamicChannels,
    default_moderation: ModerationMode,
    default_max_members: u32,
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
        Self { declared: RwLock::new(HashMap::new()), dynamic, default_moderation, default_max_members }
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

    /// Replaces every declaration at once.
    pub fn replace_all(&self, configs: Vec<ChannelConfig>) {
        let map = configs.into_iter().map(|c| (c.name.clone(), Arc::new(c))).collect();
        *self.declared.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// The settings of `channel`, or `not_found` when it is undeclared and
    /// dynamic channels are denied.
    pub fn resolve(&self, channel: &ChannelName) -> ChatResult<Arc<ChannelConfig>> {
        if let Some(c) = self.declared.read().unwrap_or_else(|p| p.into_inner()).get(channel) {
            return Ok(c.clone());
        }
        match self.dynamic {
            DynamicChannels::Allow => Ok(Arc::new(ChannelConfig::dynamic(channel.clone()))),
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

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn deny_mode_only_knows_declared_channels() {
        let d = Directory::new(DynamicChannels::Deny, ModerationMode::Mask, 100);
        d.replace_all(vec![ChannelConfig::dynamic(name("town-137"))]);
        assert!(d.resolve(&name("town-137")).is_ok());
        assert_eq!(
            d.resolve(&name("elsewhere")).unwrap_err().code,
            shardchat_common::protocol::ErrorCode::NotFound
        );
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
