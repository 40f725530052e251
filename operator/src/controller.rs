//! The ChatChannel reconciler.
//!
//! One reconcile: add the finalizer if missing; decide (planner) what the
//! object means given the other claimants of its channel name and the
//! current ring; publish its config to Redis (batched with concurrent
//! reconciles); write status with server-side apply when it changed; emit
//! an Event when the Ready reason or the owner changed. Deletion runs the
//! cleanup the object's `deletionPolicy` asks for before the finalizer
//! goes. A ChatChannel annotated `chat.shardchat.io/paused: "true"` is left
//! alone (see [`paused`]).

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::claims::{Claims, oldest};
use crate::config_writer::ConfigWriter;
use crate::crd::{
    ChatChannel, ChatChannelStatus, DeletionPolicy, FINALIZER, PAUSE_ANNOTATION, PAUSED, READY, Reason,
};
use crate::events::Events;
use crate::members::Members;
use crate::metrics::Metrics;
use crate::planner::{self, Decision};
use crate::ring_manager::RingView;
use crate::store::{Store, StoreError};

/// Field manager of every write the operator makes.
pub const MANAGER: &str = "chat-operator";

/// How soon a reconcile that could not reach Redis is retried.
pub const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("redis: {0}")]
    Store(#[from] StoreError),
}

impl Error {
    /// Label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Store(_) => Reason::RedisUnavailable.as_str(),
        }
    }
}

/// What status messages point people at.
#[derive(Debug, Clone)]
pub struct Hints {
    /// `--node-selector`
    pub node_selector: String,
    /// `--ring-debounce`
    pub ring_debounce: Duration,
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub namespace: String,
    pub store: Store,
    /// Batches config writes of concurrent reconciles.
    pub configs: ConfigWriter,
    /// Who claims which channel name.
    pub claims: Arc<Claims>,
    /// The current ring.
    pub ring: watch::Receiver<RingView>,
    pub events: Events,
    pub members: Arc<Members>,
    pub metrics: Arc<Metrics>,
    /// Period of the drift-repair requeue.
    pub requeue: Duration,
    pub hints: Hints,
}

/// What a watch event must change for the object to be reconciled: its
/// identity, spec (generation), deletion and the pause annotation. Our own
/// writes (the finalizer, status patches) do not trigger another reconcile;
/// ring changes, member-count changes, claim changes and the periodic
/// requeue do (the requeue also puts back a finalizer removed by hand).
pub fn trigger_hash(obj: &ChatChannel) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.metadata.uid.hash(&mut h);
    obj.metadata.generation.hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    obj.annotations().get(PAUSE_ANNOTATION).hash(&mut h);
    Some(h.finish())
}

/// `period` ± 10 %, the same offset for the same object every time, so
/// objects created together do not all come back in the same instant.
pub fn jittered(period: Duration, name: &str) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    let unit = (h.finish() % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    period.mul_f64(1.0 + 0.1 * unit)
}

/// Entry point given to `kube::runtime::Controller::run`.
pub async fn reconcile(obj: Arc<ChatChannel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = if obj.is_paused() { paused(obj, &ctx).await } else { with_finalizer(obj, &ctx).await };
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics.failures.with_label_values(&[e.reason()]).inc();
    }
    result
}

/// The finalizer protocol (the same patches as kube-runtime's `finalizer`
/// helper): the finalizer is added before anything is published, and
/// removed only after the cleanup succeeded. Unlike the helper, a reconcile
/// that adds the finalizer goes on to apply at once instead of waiting for
/// the watch event of its own patch, so a new ChatChannel is Ready after
/// one reconcile.
async fn with_finalizer(obj: Arc<ChatChannel>, ctx: &Context) -> Result<Action, Error> {
    let api: Api<ChatChannel> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let name = obj.name_any();
    let index = obj.finalizers().iter().position(|f| f == FINALIZER);
    let pointer = |p: &str| p.parse::<json_patch::jsonptr::PointerBuf>().expect("valid JSON pointer");
    match (index, obj.metadata.deletion_timestamp.is_some()) {
        (Some(_), false) => apply(obj, ctx).await,
        (Some(i), true) => {
            let action = cleanup(obj.clone(), ctx).await?;
            let path = format!("/metadata/finalizers/{i}");
            // `test` makes the patch fail rather than remove someone else's
            // finalizer if the list changed meanwhile.
            let patch = json_patch::Patch(vec![
                json_patch::PatchOperation::Test(json_patch::TestOperation {
                    path: pointer(&path),
                    value: FINALIZER.into(),
                }),
                json_patch::PatchOperation::Remove(json_patch::RemoveOperation { path: pointer(&path) }),
            ]);
            api.patch::<ChatChannel>(&name, &PatchParams::default(), &Patch::Json(patch)).await?;
            Ok(action)
        }
        (None, false) => {
            let ops = if obj.finalizers().is_empty() {
                vec![
                    json_patch::PatchOperation::Test(json_patch::TestOperation {
                        path: pointer("/metadata/finalizers"),
                        value: serde_json::Value::Null,
                    }),
                    json_patch::PatchOperation::Add(json_patch::AddOperation {
                        path: pointer("/metadata/finalizers"),
                        value: json!([FINALIZER]),
                    }),
                ]
            } else {
                vec![
                    json_patch::PatchOperation::Test(json_patch::TestOperation {
                        path: pointer("/metadata/finalizers"),
                        value: json!(obj.finalizers()),
                    }),
                    json_patch::PatchOperation::Add(json_patch::AddOperation {
                        path: pointer("/metadata/finalizers/-"),
                        value: FINALIZER.into(),
                    }),
                ]
            };
            api.patch::<ChatChannel>(&name, &PatchParams::default(), &Patch::Json(json_patch::Patch(ops)))
                .await?;
            apply(obj, ctx).await
        }
        // Deleted before we ever published anything: nothing to do.
        (None, true) => Ok(Action::await_change()),
    }
}

/// Retry policy after a failed reconcile.
pub fn error_policy(obj: Arc<ChatChannel>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(chatchannel = %obj.name_any(), error = %err, "reconcile failed");
    Action::requeue(RETRY)
}

/// What the status should say.
struct Outcome {
    reason: Reason,
    message: String,
    channel: String,
    node: Option<String>,
    epoch: Option<u64>,
    members: Option<u64>,
}

fn redis_hint() -> &'static str {
    "check that Redis is up and reachable from the operator (--redis-url) and not out of memory; \
     retried every 5 s"
}

async fn apply(obj: Arc<ChatChannel>, ctx: &Context) -> Result<Action, Error> {
    let view = ctx.ring.borrow().clone();
    let channel = obj.channel_name();
    let name = obj.name_any();
    let previous = obj.status.clone().unwrap_or_default();
    let decision = planner::decide(&obj, &ctx.claims.claimants(&channel), view.ring());
    let members =
        matches!(decision, Decision::Publish { .. }).then(|| ctx.members.count(&channel, previous.members));
    let mut outcome = match &decision {
        Decision::Publish { owner: Some(owner), epoch, .. } => Outcome {
            reason: Reason::Assigned,
            message: format!("channel {channel} is owned by {owner}"),
            channel: channel.clone(),
            node: Some(owner.clone()),
            epoch: *epoch,
            members,
        },
        Decision::Publish { owner: None, .. } => Outcome {
            reason: Reason::NoNodes,
            message: format!(
                "config published, but no chat node is in the ring: check that pods matching {:?} \
                 are Running and Ready (a pod joins the ring after {}s Ready); the channel is \
                 assigned as soon as one is",
                ctx.hints.node_selector,
                ctx.hints.ring_debounce.as_secs()
            ),
            channel: channel.clone(),
            node: None,
            epoch: None,
            members,
        },
        Decision::Invalid(e) => Outcome {
            reason: Reason::InvalidSpec,
            message: format!("{e}; nothing published: fix the spec (kubectl edit chatchannel {name})"),
            channel: channel.clone(),
            node: None,
            epoch: None,
            members: None,
        },
        Decision::Conflict { winner, .. } => Outcome {
            reason: Reason::Conflict,
            message: format!(
                "channel {channel} is already declared by the older ChatChannel {winner}; nothing \
                 published for this one: delete it, or recreate it with another spec.channel"
            ),
            channel: channel.clone(),
            node: None,
            epoch: None,
            members: None,
        },
    };
    let mut retry_soon = false;
    if let Decision::Publish { config, .. } = &decision {
        let known = matches!(view, RingView::Ready(_) | RingView::NoNodes);
        if !known {
            // Owners are unknown until the ring can be read: keep the last
            // known owner in the status and say why.
            let error = match &view {
                RingView::Unknown { error } => error.clone(),
                _ => "not read yet".to_string(),
            };
            outcome = Outcome {
                reason: Reason::RedisUnavailable,
                message: format!(
                    "the ring cannot be read from Redis ({error}), so the owner is unknown (the \
                     status keeps the last known one): {}",
                    redis_hint()
                ),
                node: previous.node.clone(),
                epoch: previous.ring_epoch,
                ..outcome
            };
            retry_soon = true;
        } else {
            let json = serde_json::to_string(config).expect("channel config serializes");
            match ctx.configs.put(&channel, &json).await {
                Ok(true) => info!(chatchannel = %name, %channel, "published channel config"),
                Ok(false) => {}
                Err(e) => {
                    warn!(chatchannel = %name, %channel, error = %e, "cannot publish channel config");
                    outcome = Outcome {
                        reason: Reason::RedisUnavailable,
                        message: format!("cannot publish the config to Redis ({e}): {}", redis_hint()),
                        ..outcome
                    };
                    retry_soon = true;
                }
            }
        }
    }
    // Status and events are independent writes: one round trip, not two.
    let events = async {
        if obj.shows_paused() {
            let note = format!("reconciliation resumed ({PAUSE_ANNOTATION} removed): {}", outcome.message);
            publish_event(ctx, &obj, EventType::Normal, "Resumed", "Resume", note).await;
        }
        announce(&obj, ctx, &previous, &outcome).await;
    };
    let (status, ()) = tokio::join!(write_status(&obj, ctx, &outcome, None), events);
    status?;
    if let Some(m) = outcome.members {
        ctx.members.shown(&channel, m);
    }
    ctx.metrics.set_assignment(&name, outcome.node.as_deref().filter(|_| outcome.reason.is_ready()));
    if !outcome.reason.is_ready() {
        ctx.metrics.failures.with_label_values(&[outcome.reason.as_str()]).inc();
    }
    Ok(match outcome.reason {
        _ if retry_soon => Action::requeue(RETRY),
        // A spec the schema let through but we cannot use will not get
        // better by itself; still look again now and then.
        Reason::InvalidSpec => Action::requeue(jittered(ctx.requeue * 5, &name)),
        _ => Action::requeue(jittered(ctx.requeue, &name)),
    })
}

fn ready_condition(obj: &ChatChannel, outcome: &Outcome, now: &Time) -> Condition {
    let previous = obj.ready_condition();
    let status_str = if outcome.reason.is_ready() { "True" } else { "False" };
    // lastTransitionTime only moves when the condition status flips.
    let last_transition = match previous {
        Some(p) if p.status == status_str => p.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: READY.into(),
        status: status_str.into(),
        reason: outcome.reason.as_str().into(),
        message: outcome.message.clone(),
        observed_generation: obj.metadata.generation,
        last_transition_time: last_transition,
    }
}

/// The status document applied with server-side apply (only fields with a
/// value, so the API server drops the ones we no longer set). `paused`
/// adds the Paused condition.
fn status_patch(
    obj: &ChatChannel,
    outcome: &Outcome,
    paused: Option<Condition>,
    now: Time,
) -> serde_json::Value {
    let mut conditions = vec![ready_condition(obj, outcome, &now)];
    conditions.extend(paused);
    let status = ChatChannelStatus {
        channel: Some(outcome.channel.clone()),
        node: outcome.node.clone(),
        ring_epoch: outcome.epoch,
        observed_generation: obj.metadata.generation,
        members: outcome.members,
        conditions,
    };
    json!({
        "apiVersion": ChatChannel::api_version(&()),
        "kind": ChatChannel::kind(&()),
        "status": status,
    })
}

/// Applies the status when it differs from what the object has.
async fn write_status(
    obj: &ChatChannel,
    ctx: &Context,
    outcome: &Outcome,
    paused: Option<Condition>,
) -> Result<(), Error> {
    let patch = status_patch(obj, outcome, paused, Time(k8s_openapi::jiff::Timestamp::now()));
    let current = serde_json::to_value(obj.status.clone().unwrap_or_default()).expect("status serializes");
    if patch["status"] == current {
        return Ok(());
    }
    let api: Api<ChatChannel> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    api.patch_status(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Publishes a Kubernetes Event when the Ready reason or the owner changed;
/// its note always names the current owner and epoch.
async fn announce(obj: &ChatChannel, ctx: &Context, previous: &ChatChannelStatus, outcome: &Outcome) {
    let prev_reason = obj.ready_reason();
    let prev_node = previous.node.as_deref();
    if prev_reason == Some(outcome.reason) && prev_node == outcome.node.as_deref() {
        return;
    }
    let (type_, reason) = match (outcome.reason, prev_node, outcome.node.as_deref()) {
        (Reason::Assigned, Some(a), Some(b)) if a != b => (EventType::Normal, "Reassigned"),
        (Reason::Assigned, _, _) => (EventType::Normal, "Assigned"),
        (r, _, _) => (EventType::Warning, r.as_str()),
    };
    let note = match (reason, prev_node, outcome.epoch) {
        ("Reassigned", Some(a), Some(e)) => format!("{} (moved from {a}, ring epoch {e})", outcome.message),
        (_, _, Some(e)) => format!("{} (ring epoch {e})", outcome.message),
        _ => outcome.message.clone(),
    };
    publish_event(ctx, obj, type_, reason, "Reconcile", note).await;
}

async fn publish_event(
    ctx: &Context,
    obj: &ChatChannel,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    if let Err(e) = ctx.events.publish(&obj.object_ref(&()), type_, reason, action, note).await {
        warn!(chatchannel = %obj.name_any(), error = %e, "cannot publish event");
    }
}

/// A paused ChatChannel (`chat.shardchat.io/paused: "true"`): nothing is
/// published, moved or cleaned up for it. The status keeps what it said
/// and gains a `Paused` condition; deleting it removes the finalizer and
/// leaves its Redis data as is, whatever its `deletionPolicy`.
async fn paused(obj: Arc<ChatChannel>, ctx: &Context) -> Result<Action, Error> {
    let channel = obj.channel_name();
    let name = obj.name_any();
    let api: Api<ChatChannel> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    if obj.metadata.deletion_timestamp.is_some() {
        if obj.finalizers().iter().any(|f| f == FINALIZER) {
            let rest: Vec<&String> = obj.finalizers().iter().filter(|f| *f != FINALIZER).collect();
            // resourceVersion makes the patch fail rather than drop a
            // finalizer someone added meanwhile.
            let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            ctx.metrics.set_assignment(&name, None);
            let note = format!(
                "deleted while reconciliation was paused ({PAUSE_ANNOTATION}): channel {channel} left \
                 in Redis as is (config and history), finalizer removed"
            );
            publish_event(ctx, &obj, EventType::Normal, "Deleted", "Delete", note).await;
        }
        return Ok(Action::await_change());
    }
    if !obj.shows_paused() {
        let previous = obj.status.clone().unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let message = format!(
            "{PAUSE_ANNOTATION} is \"true\": the operator does not publish, move or clean up channel \
             {channel}; the rest of this status is as of the pause. Remove the annotation to resume"
        );
        let cond = Condition {
            type_: PAUSED.into(),
            status: "True".into(),
            reason: "ReconciliationPaused".into(),
            message: message.clone(),
            observed_generation: obj.metadata.generation,
            last_transition_time: now.clone(),
        };
        let mut status = previous.clone();
        status.conditions.retain(|c| c.type_ != PAUSED);
        status.conditions.push(cond);
        let patch = json!({
            "apiVersion": ChatChannel::api_version(&()),
            "kind": ChatChannel::kind(&()),
            "status": status,
        });
        api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        publish_event(ctx, &obj, EventType::Normal, "Paused", "Pause", message).await;
    }
    Ok(Action::await_change())
}

async fn cleanup(obj: Arc<ChatChannel>, ctx: &Context) -> Result<Action, Error> {
    let channel = obj.channel_name();
    let name = obj.name_any();
    let claimants = planner::with_self(&obj, &ctx.claims.claimants(&channel));
    let is_winner = oldest(&claimants).is_some_and(|w| w.name == name);
    ctx.metrics.set_assignment(&name, None);
    if !is_winner || shardchat_common::channel::validate(&channel).is_err() {
        // A conflict loser (or an invalid name) never published anything.
        return Ok(Action::await_change());
    }
    let successors: Vec<_> = claimants.iter().filter(|c| c.name != name && !c.deleting).collect();
    if let Some(next) = oldest(successors.iter().copied()) {
        // Another ChatChannel declares the same channel: it takes over the
        // config (and the data), so nothing is removed from Redis. It is
        // reconciled again once this object is gone (the claims index
        // reports the change).
        let note = format!("channel {channel} stays declared by ChatChannel {}; Redis left as is", next.name);
        publish_event(ctx, &obj, EventType::Normal, "HandedOver", "Delete", note).await;
        return Ok(Action::await_change());
    }
    let owner = ctx
        .ring
        .borrow()
        .ring()
        .and_then(|r| r.owner(&channel).map(str::to_string))
        .or_else(|| obj.status.as_ref().and_then(|s| s.node.clone()));
    let policy = obj.spec.deletion_policy;
    ctx.store.remove_channel(&channel, policy, owner.as_deref()).await?;
    ctx.members.forget(&channel);
    let note = match policy {
        DeletionPolicy::Delete => format!(
            "channel {channel} undeclared, history deleted, close sent to {}",
            owner.as_deref().unwrap_or("no owner")
        ),
        DeletionPolicy::Retain => format!("channel {channel} undeclared; history retained"),
    };
    info!(chatchannel = %name, %channel, ?policy, "cleaned up");
    publish_event(ctx, &obj, EventType::Normal, "Deleted", "Delete", note).await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_jitter_stays_within_ten_percent_and_spreads() {
        let p = Duration::from_secs(60);
        let all: Vec<Duration> = (0..1000).map(|i| jittered(p, &format!("zone-{i}"))).collect();
        assert!(all.iter().all(|d| *d >= p.mul_f64(0.9) && *d <= p.mul_f64(1.1)));
        let distinct: std::collections::BTreeSet<_> = all.iter().map(|d| d.as_millis()).collect();
        assert!(distinct.len() > 500, "{} distinct periods", distinct.len());
        assert_eq!(jittered(p, "zone-1"), jittered(p, "zone-1"));
    }

    #[test]
    fn status_only_changes_do_not_trigger() {
        let mut a = crate::planner::tests::cc("town-1", 0, None);
        let h = trigger_hash(&a);
        a.status = Some(ChatChannelStatus { node: Some("chat-node-1".into()), ..Default::default() });
        assert_eq!(trigger_hash(&a), h);
        a.metadata.generation = Some(2);
        assert_ne!(trigger_hash(&a), h);
        let g2 = trigger_hash(&a);
        a.metadata.annotations = Some([(PAUSE_ANNOTATION.to_string(), "true".to_string())].into());
        assert_ne!(trigger_hash(&a), g2);
    }
}
