//! chat-operator: reconciles `ChatChannel` resources onto the chat-node
//! hash ring and publishes ring and channel config to Redis
//! (docs/operator.md, docs/redis-layout.md).

pub mod claims;
pub mod config_writer;
pub mod controller;
#[cfg(test)]
mod controller_tests;
pub mod crd;
pub mod epoch_floor;
pub mod events;
pub mod http;
pub mod leader;
pub mod members;
pub mod membership;
pub mod metrics;
pub mod planner;
pub mod ring;
pub mod ring_manager;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, controller as kube_controller, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::claims::Claims;
use crate::config_writer::ConfigWriter;
use crate::crd::ChatChannel;
use crate::epoch_floor::FloorStore;
use crate::members::Members;
use crate::metrics::Metrics;
use crate::ring_manager::RingView;
use crate::store::Store;

/// Parses `10s`, `500ms`, `2m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `chat-operator run` (every flag has an environment twin).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Redis the chat nodes read (redis://[user:pass@]host:port[/db], or rediss:// for TLS).
    #[arg(
        long,
        env = "CHAT_OPERATOR_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// PEM file with CA certificate(s) trusted for rediss://, besides the system roots.
    #[arg(long, env = "CHAT_OPERATOR_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Prefix of every Redis key (must match the nodes' --redis-prefix).
    #[arg(long, env = "CHAT_OPERATOR_REDIS_PREFIX", default_value = "shardchat")]
    pub redis_prefix: String,
    /// Timeout of one Redis command.
    #[arg(long, env = "CHAT_OPERATOR_REDIS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// Namespace of the ChatChannels and chat-node pods (default: the
    /// client's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Label selector of the chat-node pods.
    #[arg(long, env = "CHAT_OPERATOR_NODE_SELECTOR", default_value = "app.kubernetes.io/name=chat-node")]
    pub node_selector: String,
    /// Virtual nodes per chat node on the ring. Travels with the ring in
    /// Redis, so nodes follow it; the default is the shared ring's default.
    #[arg(long, env = "CHAT_OPERATOR_VNODES", default_value_t = ring::DEFAULT_VNODES)]
    pub vnodes: u32,
    /// How long a pod must stay Ready (or not Ready) before ring membership
    /// changes.
    #[arg(long, env = "CHAT_OPERATOR_RING_DEBOUNCE", default_value = "10s", value_parser = parse_duration)]
    pub ring_debounce: Duration,
    /// Period of the drift-repair requeue of every ChatChannel (each object
    /// gets a fixed offset of up to ±10 %, so a fleet created at once does
    /// not come back at once).
    #[arg(long, env = "CHAT_OPERATOR_REQUEUE", default_value = "60s", value_parser = parse_duration)]
    pub requeue: Duration,
    /// Most reconciles running at once (bounds the API requests and HTTP
    /// connections in flight; config writes of concurrent reconciles share
    /// one Redis round trip).
    #[arg(long, env = "CHAT_OPERATOR_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// How often member counts (status.members, the MEMBERS column) are read
    /// from Redis.
    #[arg(long, env = "CHAT_OPERATOR_MEMBERS_REFRESH", default_value = "30s", value_parser = parse_duration)]
    pub members_refresh: Duration,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CHAT_OPERATOR_METRICS_LISTEN", default_value = "0.0.0.0:8081")]
    pub metrics_listen: SocketAddr,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "CHAT_OPERATOR_LEASE_NAME", default_value = "chat-operator")]
    pub lease_name: String,
    /// Lease duration.
    #[arg(long, env = "CHAT_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Renew the lease this long before it expires.
    #[arg(long, env = "CHAT_OPERATOR_LEASE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub lease_grace: Duration,
    /// Identity in the lease (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format.
    #[arg(long, env = "CHAT_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// Defaults with the given Redis URL (for tests and embedding).
    pub fn with_redis(url: &str) -> RunArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: RunArgs,
        }
        let mut a = P::parse_from(["chat-operator"]).a;
        a.redis_url = url.to_string();
        a
    }
}

/// Process-wide state shared with the HTTP endpoints.
#[derive(Default)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Set once the lease manager runs (this replica can take over).
    pub ready: AtomicBool,
    pub leader: AtomicBool,
}

/// Runs the operator until `shutdown` resolves: leader election, and while
/// leading, the ring manager and the ChatChannel controller.
pub async fn run(
    client: Client,
    args: RunArgs,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("chat-operator-{}", std::process::id()))
    });
    let store = Store::connect_with_ca(
        &args.redis_url,
        args.redis_ca_file.as_deref(),
        &args.redis_prefix,
        args.redis_timeout,
    )
    .await?;
    let lease_cfg = leader::LeaseConfig {
        name: args.lease_name.clone(),
        namespace: namespace.clone(),
        identity: identity.clone(),
        duration: args.lease_duration,
        grace: args.lease_grace,
    };
    let manager = leader::manager(client.clone(), &lease_cfg).await?;
    let (mut leading, lease_task) = manager.watch().await;
    health.ready.store(true, Ordering::SeqCst);
    info!(%namespace, %identity, "waiting for the lease");
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ok = leader::until_leader(&mut leading) => if !ok { anyhow::bail!("lease manager stopped") },
        }
        // The lease manager may still believe it leads after the watchdog
        // stepped down (it only notices at its next renewal): lead only when
        // the Lease itself says so.
        if !leader::confirm(client.clone(), &lease_cfg).await {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
            }
        }
        info!("leading: reconciling");
        health.leader.store(true, Ordering::SeqCst);
        health.metrics.leader.set(1);
        let work = lead(client.clone(), &args, &namespace, &identity, store.clone(), health.clone());
        let lost = async {
            tokio::select! {
                _ = leading.wait_for(|l| !*l) => {}
                _ = leader::watchdog(client.clone(), &lease_cfg) => {}
            }
        };
        let stop = tokio::select! {
            _ = &mut shutdown => true,
            _ = lost => { warn!("lost the lease: stopped reconciling"); false }
            r = work => { if let Err(e) = r { warn!(error = %e, "leader work ended"); } false }
        };
        health.leader.store(false, Ordering::SeqCst);
        health.metrics.leader.set(0);
        health.metrics.clear_assignments();
        if stop {
            break;
        }
        // Pause briefly before competing for the lease again.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(leading);
    // The manager releases the lease when its channel closes.
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    Ok(())
}

/// Leader work: ring manager, members refresh, config writer and the
/// controller; returns only on error.
async fn lead(
    client: Client,
    args: &RunArgs,
    namespace: &str,
    identity: &str,
    store: Store,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let shared = health.metrics.clone();
    let (ring_tx, ring_rx) = watch::channel(RingView::Starting);
    let ring_cfg = ring_manager::RingConfig {
        namespace: namespace.to_string(),
        node_selector: args.node_selector.clone(),
        vnodes: args.vnodes,
        debounce: args.ring_debounce,
        check_every: Duration::from_secs(5).min(args.requeue),
        floor: FloorStore {
            client: client.clone(),
            namespace: namespace.to_string(),
            lease: args.lease_name.clone(),
        },
    };
    let ring_task = ring_manager::run(client.clone(), store.clone(), ring_cfg, ring_tx, shared.clone());
    let (configs, config_task) = ConfigWriter::new(store.clone());
    let claims = Arc::new(Claims::default());
    let members = Arc::new(Members::default());
    // Objects to reconcile besides their own watch events: claimants of a
    // name whose winner changed, and channels whose member count moved.
    let (again_tx, again_rx) = mpsc::unbounded_channel::<ObjectRef<ChatChannel>>();
    let members_task = members::run(&members, &store, &claims, args.members_refresh, again_tx.clone());
    let controller = async {
        // Start once the ring manager has tried Redis: with the ring known,
        // so a new leader does not flap every status to NoNodes; or with
        // Redis unreachable, so statuses say so and deletions go on once
        // it is back.
        let mut ring_wait = ring_rx.clone();
        let _ = ring_wait.wait_for(|v| *v != RingView::Starting).await;
        let api: Api<ChatChannel> = Api::namespaced(client.clone(), namespace);
        let (reader, writer) = reflector::store::<ChatChannel>();
        let index = claims.clone();
        let again = again_tx.clone();
        let objects = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .map_ok(move |event| {
                for o in index.apply(&event) {
                    let _ = again.send(o);
                }
                event
            })
            .applied_objects()
            .predicate_filter(controller::trigger_hash, Default::default());
        let ring_changes = futures_util::stream::unfold(ring_rx.clone(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        });
        let again = futures_util::stream::unfold(again_rx, |mut rx| async move {
            let o = rx.recv().await?;
            Some((o, rx))
        });
        let controller = Controller::for_stream(objects, reader)
            .with_config(kube_controller::Config::default().concurrency(args.concurrency))
            .reconcile_all_on(ring_changes)
            .reconcile_on(again);
        let ctx = Arc::new(controller::Context {
            client: client.clone(),
            namespace: namespace.to_string(),
            store: store.clone(),
            configs: configs.clone(),
            claims: claims.clone(),
            ring: ring_rx.clone(),
            events: events::Events::new(client.clone(), "chat-operator", identity),
            members: members.clone(),
            metrics: shared.clone(),
            requeue: args.requeue,
            hints: controller::Hints {
                node_selector: args.node_selector.clone(),
                ring_debounce: args.ring_debounce,
            },
        });
        controller
            .run(controller::reconcile, controller::error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "controller event");
                }
            })
            .await;
    };
    tokio::select! {
        _ = ring_task => anyhow::bail!("ring manager stopped"),
        _ = config_task => anyhow::bail!("config writer stopped"),
        _ = members_task => anyhow::bail!("members refresh stopped"),
        _ = controller => anyhow::bail!("controller stopped"),
    }
}
