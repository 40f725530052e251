//! Follows the chat-node pods, keeps the debounced membership, and
//! publishes the ring to `{p}:ring` (and to the reconciler through a
//! watch channel). Runs only on the leader.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::epoch_floor::{FloorStore, MAX_EPOCH};
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
    /// Where the epoch floor is kept.
    pub floor: FloorStore,
}

/// What the reconciler knows about the ring.
#[derive(Debug, Clone, PartialEq)]
pub enum RingView {
    /// The ring manager has not tried Redis yet.
    Starting,
    /// The ring in Redis could not be read since this replica took over
    /// (owners are unknown; statuses say RedisUnavailable).
    Unknown {
        error: String,
    },
    /// No chat node is a member.
    NoNodes,
    Ready(Arc<Ring>),
}

impl RingView {
    pub fn ring(&self) -> Option<&Ring> {
        match self {
            RingView::Ready(r) => Some(r),
            _ => None,
        }
    }

    /// Same state for the reconciler (an Unknown with another error text is
    /// not a change worth reconciling everything for).
    fn same_as(&self, other: &RingView) -> bool {
        match (self, other) {
            (RingView::Unknown { .. }, RingView::Unknown { .. }) => true,
            (a, b) => a == b,
        }
    }
}

/// State shared with the reconciler.
pub type RingTx = watch::Sender<RingView>;

/// Writes `members` as the ring (if needed) and returns what `{p}:ring` now
/// holds. `record_floor(epoch)` runs before a new epoch is written, so the
/// floor kept outside Redis is never behind what nodes may have seen.
pub async fn publish<F, Fut>(
    store: &Store,
    members: &[String],
    vnodes: u32,
    last: Option<&RingSnapshot>,
    floor: u64,
    mut record_floor: F,
) -> Result<RingSnapshot, StoreError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut recorded = floor;
    for _ in 0..5 {
        let raw = store.ring_raw().await?;
        let stored: Option<RingSnapshot> = raw.as_deref().and_then(|r| serde_json::from_str(r).ok());
        if raw.is_some() && stored.is_none() {
            warn!("{{p}}:ring holds invalid JSON; overwriting it");
        }
        match next_ring(members, vnodes, stored.as_ref(), last, recorded) {
            None => return Ok(stored.expect("next_ring returns None only for a stored ring")),
            Some(new) => {
                if new.epoch > MAX_EPOCH {
                    return Err(StoreError::EpochTooHigh(new.epoch));
                }
                if new.epoch > recorded {
                    record_floor(new.epoch).await?;
                    recorded = new.epoch;
                }
                if store.cas_ring(raw.as_deref(), &new).await? {
                    info!(epoch = new.epoch, nodes = ?new.nodes, "published ring");
                    return Ok(new);
                }
            }
        }
    }
    Err(StoreError::RingContention)
}

/// Runs until cancelled (by dropping the future). The view starts as
/// [`RingView::Starting`] and leaves it after the first attempt to read
/// Redis, whether that worked or not.
pub async fn run(client: Client, store: Store, cfg: RingConfig, tx: RingTx, metrics: Arc<Metrics>) {
    let set_view = |view: RingView| {
        tx.send_if_modified(|cur| {
            let changed = !cur.same_as(&view);
            *cur = view;
            changed
        });
    };
    // Starting point: the ring in Redis (so an operator restart keeps the
    // membership and epoch) and the floor recorded on the Lease.
    let mut floor = loop {
        match cfg.floor.read().await {
            Ok(f) => break f,
            Err(e) => warn!(error = %e, "cannot read the ring epoch floor from the Lease; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let stored = loop {
        match store.ring().await {
            Ok(s) => break s,
            Err(e) => {
                warn!(error = %e, "cannot read the ring from redis; retrying");
                set_view(RingView::Unknown { error: e.to_string() });
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    floor = floor.max(stored.as_ref().map_or(0, |s| s.epoch).min(MAX_EPOCH));
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
    let floor_store = cfg.floor.clone();

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
            set_view(RingView::NoNodes);
            metrics.ring_nodes.set(0);
            dirty = false;
            continue;
        }
        let record = |epoch: u64| {
            let f = floor_store.clone();
            async move { f.record(epoch).await.map_err(|e| StoreError::Floor(e.to_string())) }
        };
        match publish(&store, &members, cfg.vnodes, last.as_ref(), floor, record).await {
            Ok(snap) => {
                floor = floor.max(snap.epoch.min(MAX_EPOCH));
                metrics.ring_epoch.set(i64::try_from(snap.epoch).unwrap_or(i64::MAX));
                metrics.ring_nodes.set(snap.nodes.len() as i64);
                match Ring::new(snap.epoch, snap.vnodes, snap.nodes.clone()) {
                    Ok(ring) => set_view(RingView::Ready(Arc::new(ring))),
                    Err(e) => warn!(error = %e, "cannot build ring"),
                }
                last = Some(snap);
                dirty = false;
            }
            Err(e) => {
                warn!(error = %e, "cannot publish ring; retrying");
                if tx.borrow().ring().is_none() {
                    set_view(RingView::Unknown { error: e.to_string() });
                }
                recheck_at = Some(tokio::time::Instant::now() + Duration::from_secs(2));
            }
        }
    }
}
