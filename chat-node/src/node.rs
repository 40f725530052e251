//! The node: every shared part a request handler needs, built once at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cluster::{Cluster, LocalCluster};
use crate::config::Config;
use crate::directory::Directory;
use crate::history::HistoryStore;
use crate::history::memory::MemoryHistory;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::local_backend::LocalBackend;
use crate::metrics::Metrics;
use crate::moderation::WordFilter;
use crate::owner::Owner;

pub struct Node {
    pub config: Config,
    pub node_id: Arc<str>,
    pub hub: Arc<Hub>,
    pub cluster: Arc<dyn Cluster>,
    pub history: Arc<dyn HistoryStore>,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Lifecycle,
    next_session_id: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Channels(#[from] crate::directory::DirectoryFileError),
    #[error(
        "Redis mode (--redis-url) is not available in this build yet; run without it for the embedded mode"
    )]
    RedisNotYet,
}

impl Node {
    /// Builds the node for `config`. Background upkeep tasks are spawned on
    /// the current runtime.
    pub fn start(config: Config) -> Result<Arc<Node>, StartError> {
        let node_id: Arc<str> = Arc::from(config.resolved_node_id());
        let metrics = Arc::new(Metrics::new());
        let directory =
            Arc::new(Directory::new(config.dynamic_channels, config.moderation.into(), config.max_members));
        if let Some(path) = &config.channels {
            directory.replace_all(Directory::load_file(path)?);
        }
        if config.redis_url.is_some() {
            return Err(StartError::RedisNotYet);
        }
        let hub = Arc::new(Hub::new(metrics.clone(), config.outbound_queue));
        let memory = Arc::new(MemoryHistory::new());
        let history: Arc<dyn HistoryStore> = memory.clone();
        let backend = Arc::new(LocalBackend::new(memory.clone(), hub.clone()));
        let owner = Arc::new(Owner::new(
            backend,
            directory.clone(),
            Arc::new(WordFilter::default()),
            metrics.clone(),
        ));
        let cluster = Arc::new(LocalCluster::new(owner, node_id.clone()));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                memory.sweep();
            }
        });
        Ok(Arc::new(Node {
            config,
            node_id,
            hub,
            cluster,
            history,
            directory,
            metrics,
            lifecycle: Lifecycle::default(),
            next_session_id: AtomicU64::new(1),
        }))
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }
}
