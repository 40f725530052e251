//! Follows the chat-node pods, keeps the debounced membership, and
//! publishes the ring to `{p}:ring` (and to the reconciler through a
//! watch channel). Runs only on the leader.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::crd::ChatChannel;
use crate::membership::{Membership, PodView, next_ring};
use crate::metrics::Metrics;
use crate::ring::{Ring, RingSnapshot, validate_node_id};
use crate::store::{Store, StoreError};

pub struct RingConfig {
    pub namespace: String,
    pub node_selector: String,
    pub vnodes: u32,
    pub debounce: Duration,
    /// How often Redis is checked for a lost or foreign ring even when no
    /// pod changed.
    pub check_every: Duration,
}

/// State shared with the reconciler.
pub type RingTx = watch::Sender<Option<Arc<Ring>>>;

/// Highest `status.ringEpoch` of any ChatChannel: a floor for the epoch so
/// it never goes back even when Redis restarted empty.
async fn epoch_floor(client: &Client, namespace: &str) -> Result<u64, kube::Error> {
    let api: Api<ChatChannel> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await?;
    Ok(list.items.iter().filter_map(|c| c.status.as_ref()?.ring_epoch).max().unwrap_or(0))
}

/// Writes `members` as the ring (if needed) and returns what `{p}:ring` now
/// holds.
pub async fn publish(
    store: &Store,
    members: &[String],
    vnodes: u32,
    last: Option<&RingSnapshot>,
    floor: u64,
) -> Result<RingSnapshot, StoreError> {
    for _ in 0..5 {
        let raw = store.ring_raw().await?;
        let stored: Option<RingSnapshot> = raw.as_deref().and_then(|r| serde_json::from_str(r).ok());
        if raw.is_some() && stored.is_none() {
            warn!("{{p}}:ring holds invalid JSON; overwriting it");
        }
        match next_ring(members, vnodes, stored.as_ref(), last, floor) {
            None => return Ok(stored.expect("next_ring returns None only for a stored ring")),
            Some(new) => {
                if store.cas_ring(raw.as_deref(), &new).await? {
                    info!(epoch = new.epoch, nodes = ?new.nodes, "published ring");
                    return Ok(new);
                }
            }
        }
    }
    Err(StoreError::RingContention)
}

/// Runs until cancelled (by dropping the future). `ready` is set once the
/// first membership has been computed and published.
pub async fn run(
    client: Client,
    store: Store,
    cfg: RingConfig,
    tx: RingTx,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    // Starting point: the ring in Redis (so an operator restart keeps the
    // membership and epoch) and the highest epoch any status has seen.
    let (stored, floor) = loop {
        let stored = store.ring().await;
        let floor = epoch_floor(&client, &cfg.namespace).await;
        match (stored, floor) {
            (Ok(s), Ok(f)) => break (s, f),
            (Err(e), _) => warn!(error = %e, "cannot read the ring from redis; retrying"),
            (_, Err(e)) => warn!(error = %e, "cannot list ChatChannels; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let mut floor = floor.max(stored.as_ref().map_or(0, |s| s.epoch));
    let mut membership =
        Membership::new(cfg.debounce, stored.as_ref().map(|s| s.nodes.clone()).unwrap_or_default());
    let mut last: Option<RingSnapshot> = stored;
    let mut dirty = true;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &cfg.namespace);
    let (reader, writer) = reflector::store::<Pod>();
    let mut events = reflector(
        writer,
        watcher(pods, watcher::Config::default().labels(&cfg.node_selector)).default_backoff(),
    )
    .boxed();
    let mut pods_ready = false;
    let mut check = tokio::time::interval(cfg.check_every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recheck_at: Option<tokio::time::Instant> = None;

    loop {
        let recheck = async {
            match recheck_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => { pods_ready = true; }
                Some(Ok(_)) => {}
                Some(Err(e)) => { warn!(error = %e, "pod watch error"); continue; }
                None => return,
            },
            _ = check.tick() => { dirty = true; }
            _ = recheck => { recheck_at = None; }
        }
        if !pods_ready {
            continue;
        }
        let views: Vec<PodView> = reader
            .state()
            .iter()
            .map(|p| PodView::from_pod(p))
            .filter(|v| match validate_node_id(&v.name) {
                Ok(()) => true,
                Err(e) => {
                    warn!(pod = %v.name, error = %e, "pod name cannot be a ring node id; ignored");
                    false
                }
            })
            .collect();
        let obs = membership.observe(&views, SystemTime::now());
        recheck_at = obs.recheck_in.map(|d| tokio::time::Instant::now() + d + Duration::from_millis(50));
        if obs.changed {
            info!(members = ?membership.members(), "ring membership changed");
            dirty = true;
        }
        if !dirty {
            continue;
        }
        let members = membership.members();
        if members.is_empty() {
            // No node to own anything: keep the last ring in Redis (nodes
            // that come back use it) and tell the reconciler NoNodes.
            tx.send_if_modified(|cur| cur.take().is_some());
            metrics.ring_nodes.set(0);
            dirty = false;
            let _ = ready.send(true);
            continue;
        }
        match publish(&store, &members, cfg.vnodes, last.as_ref(), floor).await {
            Ok(snap) => {
                floor = floor.max(snap.epoch);
                metrics.ring_epoch.set(snap.epoch as i64);
                metrics.ring_nodes.set(snap.nodes.len() as i64);
                match Ring::new(snap.epoch, snap.vnodes, snap.nodes.clone()) {
                    Ok(ring) => {
                        let ring = Arc::new(ring);
                        tx.send_if_modified(|cur| {
                            let same = cur.as_ref().is_some_and(|c| **c == *ring);
                            if !same {
                                *cur = Some(ring.clone());
                            }
                            !same
                        });
                    }
                    Err(e) => warn!(error = %e, "cannot build ring"),
                }
                last = Some(snap);
                dirty = false;
                let _ = ready.send(true);
            }
            Err(e) => {
                warn!(error = %e, "cannot publish ring; retrying");
                recheck_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
        }
    }
}
