//! The node: every shared part a request handler needs, built once at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::auth::Auth;
use crate::cluster::{Cluster, LocalCluster};
use crate::config::Config;
use crate::directory::Directory;
use crate::dm::mailboxes::Mailboxes;
use crate::dm::memory::MemoryDms;
use crate::dm::{Conversations, DmLimits, DmStore};
use crate::history::HistoryStore;
use crate::history::memory::MemoryHistory;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::local_backend::{LocalBackend, LocalLimits};
use crate::metrics::Metrics;
use crate::moderation::Moderator;
use crate::owner::Owner;
use crate::owner::sequencer::{Limits as SequencerLimits, Sequencer};
use crate::redis::backend::RedisBackend;
use crate::redis::dm::RedisDms;
use crate::redis::history::RedisHistory;
use crate::redis::inbox::{InboxHealth, InboxTargets};
use crate::redis::outbox::Outbox;
use crate::redis::owner_server::OwnerServer;
use crate::redis::ring_view::RingView;
use crate::redis::router::{Router, RouterParts};
use crate::redis::upkeep::Upkeep;
use crate::redis::{RedisCtx, RedisSettings};
use shardchat_common::Ring;

pub struct Node {
    pub config: Config,
    pub node_id: Arc<str>,
    pub hub: Arc<Hub>,
    pub cluster: Arc<dyn Cluster>,
    pub history: Arc<dyn HistoryStore>,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    pub auth: Arc<Auth>,
    /// Direct messages: the rules and the store.
    pub conversations: Arc<Conversations>,
    /// This node's connections by user, for direct messages.
    pub mailboxes: Arc<Mailboxes>,
    /// Serializes one user's registration changes on this node.
    pub user_registration: crate::keyed_lock::KeyedLocks<Arc<str>>,
    next_session_id: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid flags: {0}")]
    Config(String),
    #[error(transparent)]
    Channels(#[from] crate::directory::DirectoryFileError),
    #[error(transparent)]
    Redis(#[from] crate::redis::ConnectError),
    #[error("invalid --peers ring: {0}")]
    Peers(#[from] shardchat_common::RingError),
    #[error("authentication setup: {0}")]
    Auth(String),
    #[error("moderation setup: {0}")]
    Moderation(String),
    #[error("--node-id {0:?} is not a valid ring member id: {1}")]
    NodeId(String, shardchat_common::RingError),
}

impl Node {
    /// Builds the node for `config`: embedded without `--redis-url`,
    /// cluster mode with it. Background tasks are spawned on the current runtime.
    pub async fn start(config: Config) -> Result<Arc<Node>, StartError> {
        config.validate().map_err(StartError::Config)?;
        let node_id: Arc<str> = Arc::from(config.resolved_node_id());
        let metrics = Arc::new(Metrics::new());
        let auth = Arc::new(Auth::from_config(&config, metrics.registry()).map_err(StartError::Auth)?);
        auth.spawn_upkeep(config.reload_interval);
        let default_access = shardchat_common::Access {
            join_roles: config.default_join_roles.clone(),
            publish_roles: config.default_publish_roles.clone(),
        };
        let directory = Arc::new(
            Directory::new(config.dynamic_channels, config.moderation.into(), config.max_members)
                .with_default_access(default_access),
        );
        let file_channels = match &config.channels {
            Some(path) => Directory::load_file(path)?,
            None => Vec::new(),
        };
        directory.replace_all(file_channels.clone());
        let hub = Arc::new(Hub::new(metrics.clone(), config.outbound_queue));
        let lifecycle = Arc::new(Lifecycle::default());
        let moderator =
            Arc::new(Moderator::from_config(&config, metrics.registry()).map_err(StartError::Moderation)?);
        moderator.spawn_upkeep(config.reload_interval);
        let limits = SequencerLimits {
            in_flight: usize::from(config.owner_calls_in_flight),
            ..SequencerLimits::default()
        };
        let mailboxes = Arc::new(Mailboxes::default());
        let dm_limits = DmLimits {
            max_messages: config.dm_max_messages,
            max_age: config.dm_max_age,
            mailbox_max: config.dm_mailbox_max,
            per_recipient_rate: config.dm_recipient_rate,
        };
        let conversations_with = |store: Arc<dyn DmStore>| {
            Arc::new(Conversations::new(
                store,
                moderator.clone(),
                config.moderation.into(),
                dm_limits,
                Arc::from(config.system_sender.as_str()),
            ))
        };
        let (cluster, history, conversations): (Arc<dyn Cluster>, Arc<dyn HistoryStore>, Arc<Conversations>) =
            match &config.redis_url {
                None => {
                    let memory = Arc::new(MemoryHistory::new());
                    let local_limits = LocalLimits {
                        dedup_window: config.dedup_window,
                        max_dynamic_channels: usize::try_from(config.max_dynamic_channels)
                            .unwrap_or(usize::MAX),
                    };
                    let backend = Arc::new(LocalBackend::new(memory.clone(), hub.clone(), local_limits));
                    let sequencer = Sequencer::new(backend, limits, metrics.clone());
                    tokio::spawn(sequencer.clone().run());
                    let owner = Arc::new(Owner::new(sequencer, directory.clone(), moderator.clone()));
                    let dms = conversations_with(Arc::new(MemoryDms::new(
                        dm_limits,
                        config.dedup_window,
                        mailboxes.clone(),
                    )));
                    let sweeper = memory.clone();
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(Duration::from_secs(30));
                        loop {
                            tick.tick().await;
                            sweeper.sweep();
                        }
                    });
                    (Arc::new(LocalCluster::new(owner, dms.clone(), node_id.clone())), memory, dms)
                }
                Some(url) => {
                    shardchat_common::ring::validate_node_id(&node_id)
                        .map_err(|e| StartError::NodeId(node_id.to_string(), e))?;
                    let settings = RedisSettings {
                        url: url.clone(),
                        ca_file: config.redis_ca_file.clone(),
                        prefix: config.redis_prefix.clone(),
                        command_timeout: config.redis_timeout,
                        request_timeout: config.request_timeout,
                        inbox_maxlen: config.inbox_maxlen,
                        dedup_window: config.dedup_window,
                        max_dynamic_channels: config.max_dynamic_channels,
                    };
                    let redis = RedisCtx::connect(settings).await?;
                    lifecycle.set_problem("redis", Some("not connected to Redis yet".into()));
                    // Configs (and retained access) come from Redis: fail closed until read.
                    directory.set_loading();
                    let static_ring = !config.peers.is_empty();
                    let initial = if static_ring {
                        Ring::new(1, config.vnodes, config.peers.iter().map(|p| p.trim()))?
                    } else {
                        Ring::new(0, config.vnodes, Vec::<String>::new())?
                    };
                    let ring = Arc::new(RingView::new(initial, node_id.clone()));
                    let edge_id: Arc<str> = Arc::from(format!("{node_id}#{}", incarnation()));
                    let backend = Arc::new(RedisBackend::new(redis.clone()));
                    let sequencer = Sequencer::new(backend.clone(), limits, metrics.clone());
                    tokio::spawn(sequencer.clone().run());
                    let owner = Arc::new(Owner::new(sequencer, directory.clone(), moderator.clone()));
                    let redis_dms = Arc::new(RedisDms::new(redis.clone(), dm_limits, edge_id.clone()));
                    let dms = conversations_with(redis_dms.clone());
                    let outbox = Outbox::new(redis.clone());
                    let router = Router::new(
                        RouterParts {
                            redis: redis.clone(),
                            owner: owner.clone(),
                            backend: backend.clone(),
                            ring: ring.clone(),
                            outbox: outbox.clone(),
                            conversations: dms.clone(),
                        },
                        node_id.clone(),
                        edge_id,
                    );
                    tokio::spawn(router.clone().give_up_late_calls());
                    if !static_ring {
                        let (ring2, owner2, redis2) = (ring.clone(), owner.clone(), redis.clone());
                        tokio::spawn(ring.clone().follow(redis2, move || {
                            owner2.retain_channels(|c| ring2.is_mine(c.as_str()));
                        }));
                    }
                    let inbox_health = Arc::new(InboxHealth::default());
                    let targets = InboxTargets {
                        hub: hub.clone(),
                        mailboxes: mailboxes.clone(),
                        router: router.clone(),
                        owner_server: Arc::new(OwnerServer::new(
                            owner.clone(),
                            dms.clone(),
                            ring.clone(),
                            outbox,
                        )),
                        backend,
                        metrics: metrics.clone(),
                    };
                    tokio::spawn(crate::redis::inbox::consume(
                        redis.clone(),
                        node_id.clone(),
                        targets,
                        inbox_health.clone(),
                    ));
                    let history: Arc<dyn HistoryStore> =
                        Arc::new(RedisHistory::new(redis.clone(), directory.clone()));
                    Arc::new(Upkeep {
                        redis: redis.clone(),
                        router: router.clone(),
                        mailboxes: mailboxes.clone(),
                        dms: redis_dms.clone(),
                        ring,
                        hub: hub.clone(),
                        history: history.clone(),
                        directory: directory.clone(),
                        node_id: node_id.clone(),
                        lifecycle: lifecycle.clone(),
                        metrics: metrics.clone(),
                        inbox_health,
                        file_channels,
                        node_ttl: config.node_ttl.max(Duration::from_millis(500)),
                        forget_nodes_after: config.forget_nodes_after,
                        resyncing: tokio::sync::Mutex::new(()),
                    })
                    .spawn();
                    (router, history, dms)
                }
            };
        Ok(Arc::new(Node {
            conversations,
            mailboxes,
            user_registration: crate::keyed_lock::KeyedLocks::default(),
            config,
            node_id,
            hub,
            cluster,
            history,
            directory,
            metrics,
            lifecycle,
            auth,
            next_session_id: AtomicU64::new(1),
        }))
    }

    pub fn mode(&self) -> &'static str {
        if self.config.redis_url.is_some() { "cluster" } else { "embedded" }
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A value that differs between runs of the same node (restarts).
fn incarnation() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}
