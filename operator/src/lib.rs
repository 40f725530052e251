//! chat-operator: reconciles `ChatChannel` resources onto the chat-node
//! hash ring and publishes ring and channel config to Redis
//! (docs/operator.md, docs/redis-layout.md).

pub mod controller;
#[cfg(test)]
mod controller_tests;
pub mod crd;
pub mod http;
pub mod leader;
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

use futures_util::StreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::crd::ChatChannel;
use crate::metrics::Metrics;
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
    /// Period of the drift-repair requeue of every ChatChannel.
    #[arg(long, env = "CHAT_OPERATOR_REQUEUE", default_value = "60s", value_parser = parse_duration)]
    pub requeue: Duration,
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

/// Leader work: ring manager + controller; returns only on error.
async fn lead(
    client: Client,
    args: &RunArgs,
    namespace: &str,
    identity: &str,
    store: Store,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let shared = health.metrics.clone();
    let (ring_tx, ring_rx) = watch::channel(None);
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let ring_cfg = ring_manager::RingConfig {
        namespace: namespace.to_string(),
        node_selector: args.node_selector.clone(),
        vnodes: args.vnodes,
        debounce: args.ring_debounce,
        check_every: Duration::from_secs(5).min(args.requeue),
    };
    let ring_task =
        ring_manager::run(client.clone(), store.clone(), ring_cfg, ring_tx, ready_tx, shared.clone());
    let controller = async {
        // Start reconciling only once the ring is known, so a new leader
        // does not flap every status to NoNodes.
        let _ = ready_rx.wait_for(|r| *r).await;
        let api: Api<ChatChannel> = Api::namespaced(client.clone(), namespace);
        let (retrigger_tx, retrigger_rx) = mpsc::unbounded_channel();
        let ring_changes = futures_util::stream::unfold(ring_rx.clone(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        });
        // A handover (the winner of a contested channel name left) is rare:
        // reconcile everything then, like on a ring change.
        let retriggers = futures_util::stream::unfold(retrigger_rx, |mut rx| async move {
            let _: ObjectRef<ChatChannel> = rx.recv().await?;
            Some(((), rx))
        });
        let controller = Controller::new(api, watcher::Config::default())
            .reconcile_all_on(futures_util::stream::select(ring_changes, retriggers));
        let ctx = Arc::new(controller::Context {
            client: client.clone(),
            namespace: namespace.to_string(),
            store: store.clone(),
            channels: controller.store(),
            ring: ring_rx.clone(),
            recorder: Recorder::new(
                client.clone(),
                Reporter { controller: "chat-operator".into(), instance: Some(identity.to_string()) },
            ),
            metrics: shared.clone(),
            requeue: args.requeue,
            retrigger: retrigger_tx,
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
        _ = controller => anyhow::bail!("controller stopped"),
    }
}
