//! The ChatChannel reconciler.
//!
//! One reconcile: add the finalizer if missing; decide (planner) what the
//! object means given every other ChatChannel and the current ring; publish
//! its config to Redis; write status with server-side apply; emit an Event
//! when the Ready reason or the owner changed. Deletion runs the cleanup
//! the object's `deletionPolicy` asks for before the finalizer goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store as Reflector};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::crd::{ChatChannel, ChatChannelStatus, DeletionPolicy, FINALIZER, READY, Reason};
use crate::metrics::Metrics;
use crate::planner::{self, Decision};
use crate::ring::Ring;
use crate::store::{Store, StoreError};

/// Field manager of every write the operator makes.
pub const MANAGER: &str = "chat-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("redis: {0}")]
    Store(#[from] StoreError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// Label for the failures metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Store(_) => Reason::RedisUnavailable.as_str(),
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.reason()
                }
                _ => "KubeApi",
            },
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub namespace: String,
    pub store: Store,
    /// Every ChatChannel of the namespace (the controller's cache).
    pub channels: Reflector<ChatChannel>,
    /// The current ring; None while no chat node is a member.
    pub ring: watch::Receiver<Option<Arc<Ring>>>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Period of the drift-repair requeue.
    pub requeue: Duration,
    /// Objects to reconcile again (conflict losers after a winner left).
    pub retrigger: mpsc::UnboundedSender<ObjectRef<ChatChannel>>,
}

/// Entry point given to `kube::runtime::Controller::run`.
pub async fn reconcile(obj: Arc<ChatChannel>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let api: Api<ChatChannel> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(o) => apply(o, &ctx).await,
            finalizer::Event::Cleanup(o) => cleanup(o, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics.failures.with_label_values(&[e.reason()]).inc();
    }
    result
}

/// Retry policy after a failed reconcile.
pub fn error_policy(obj: Arc<ChatChannel>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(chatchannel = %obj.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// What the status should say.
struct Outcome {
    reason: Reason,
    message: String,
    channel: String,
    node: Option<String>,
    epoch: Option<u64>,
}

async fn apply(obj: Arc<ChatChannel>, ctx: &Context) -> Result<Action, Error> {
    let all = ctx.channels.state();
    let ring = ctx.ring.borrow().clone();
    let decision = planner::decide(&obj, all.iter().map(|a| a.as_ref()), ring.as_deref());
    let channel = obj.channel_name();
    let mut outcome = match &decision {
        Decision::Publish { owner: Some(owner), epoch, .. } => Outcome {
            reason: Reason::Assigned,
            message: format!("channel {channel} is owned by {owner}"),
            channel: channel.clone(),
            node: Some(owner.clone()),
            epoch: *epoch,
        },
        Decision::Publish { owner: None, .. } => Outcome {
            reason: Reason::NoNodes,
            message: "config published, but no chat node is Ready in the ring".into(),
            channel: channel.clone(),
            node: None,
            epoch: None,
        },
        Decision::Invalid(e) => Outcome {
            reason: Reason::InvalidSpec,
            message: format!("{e}; nothing published"),
            channel: channel.clone(),
            node: None,
            epoch: None,
        },
        Decision::Conflict { winner, .. } => Outcome {
            reason: Reason::Conflict,
            message: format!(
                "channel {channel} is already declared by ChatChannel {winner}; nothing published"
            ),
            channel: channel.clone(),
            node: None,
            epoch: None,
        },
    };
    let mut store_error = None;
    if let Decision::Publish { config, .. } = &decision {
        let json = serde_json::to_string(config).expect("channel config serializes");
        match ctx.store.put_config(&channel, &json).await {
            Ok(true) => info!(chatchannel = %obj.name_any(), %channel, "published channel config"),
            Ok(false) => {}
            Err(e) => {
                outcome = Outcome {
                    reason: Reason::RedisUnavailable,
                    message: format!("cannot publish config: {e}"),
                    node: outcome.node,
                    epoch: outcome.epoch,
                    channel: outcome.channel,
                };
                store_error = Some(e);
            }
        }
    }
    let previous = obj.status.clone().unwrap_or_default();
    write_status(&obj, ctx, &outcome).await?;
    announce(&obj, ctx, &previous, &outcome).await;
    ctx.metrics
        .set_assignment(&obj.name_any(), outcome.node.as_deref().filter(|_| outcome.reason.is_ready()));
    if !outcome.reason.is_ready() && store_error.is_none() {
        ctx.metrics.failures.with_label_values(&[outcome.reason.as_str()]).inc();
    }
    if let Some(e) = store_error {
        return Err(e.into());
    }
    Ok(match outcome.reason {
        // A spec the schema let through but we cannot use will not get
        // better by itself; still look again now and then.
        Reason::InvalidSpec => Action::requeue(ctx.requeue * 5),
        _ => Action::requeue(ctx.requeue),
    })
}

/// The status document applied with server-side apply (only fields with a
/// value, so the API server drops the ones we no longer set).
fn status_patch(obj: &ChatChannel, outcome: &Outcome, now: Time) -> serde_json::Value {
    let previous = obj.ready_condition();
    let status_str = if outcome.reason.is_ready() { "True" } else { "False" };
    // lastTransitionTime only moves when the condition status flips.
    let last_transition = match previous {
        Some(p) if p.status == status_str => p.last_transition_time.clone(),
        _ => now,
    };
    let condition = Condition {
        type_: READY.into(),
        status: status_str.into(),
        reason: outcome.reason.as_str().into(),
        message: outcome.message.clone(),
        observed_generation: obj.metadata.generation,
        last_transition_time: last_transition,
    };
    let status = ChatChannelStatus {
        channel: Some(outcome.channel.clone()),
        node: outcome.node.clone(),
        ring_epoch: outcome.epoch,
        observed_generation: obj.metadata.generation,
        conditions: vec![condition],
    };
    json!({
        "apiVersion": ChatChannel::api_version(&()),
        "kind": ChatChannel::kind(&()),
        "status": status,
    })
}

async fn write_status(obj: &ChatChannel, ctx: &Context, outcome: &Outcome) -> Result<(), Error> {
    let patch = status_patch(obj, outcome, Time(k8s_openapi::jiff::Timestamp::now()));
    let current = serde_json::to_value(obj.status.clone().unwrap_or_default()).expect("status serializes");
    if patch["status"] == current {
        return Ok(());
    }
    let api: Api<ChatChannel> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    api.patch_status(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Publishes a Kubernetes Event when the Ready reason or the owner changed.
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
    publish_event(ctx, obj, type_, reason, note).await;
}

async fn publish_event(ctx: &Context, obj: &ChatChannel, type_: EventType, reason: &str, note: String) {
    let event =
        Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        warn!(chatchannel = %obj.name_any(), error = %e, "cannot publish event");
    }
}

async fn cleanup(obj: Arc<ChatChannel>, ctx: &Context) -> Result<Action, Error> {
    let channel = obj.channel_name();
    let name = obj.name_any();
    let all = ctx.channels.state();
    let others = all.iter().map(|a| a.as_ref()).filter(|o| o.uid() != obj.uid());
    let winner = planner::winner(&channel, others.clone().chain(std::iter::once(obj.as_ref())));
    let is_winner = winner.is_some_and(|w| w.uid() == obj.uid());
    ctx.metrics.set_assignment(&name, None);
    if !is_winner || shardchat_common::channel::validate(&channel).is_err() {
        // A conflict loser (or an invalid name) never published anything.
        return Ok(Action::await_change());
    }
    let successors: Vec<&ChatChannel> =
        others.filter(|o| o.channel_name() == channel && o.metadata.deletion_timestamp.is_none()).collect();
    if !successors.is_empty() {
        // Another ChatChannel declares the same channel: it takes over the
        // config (and the data), so nothing is removed from Redis.
        for s in &successors {
            let _ = ctx.retrigger.send(ObjectRef::from_obj(*s));
        }
        let next =
            planner::winner(&channel, successors.iter().copied()).map(|w| w.name_any()).unwrap_or_default();
        publish_event(
            ctx,
            &obj,
            EventType::Normal,
            "HandedOver",
            format!("channel {channel} stays declared by ChatChannel {next}; Redis left as is"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let ring = ctx.ring.borrow().clone();
    let owner = ring
        .as_deref()
        .and_then(|r| r.owner(&channel).map(str::to_string))
        .or_else(|| obj.status.as_ref().and_then(|s| s.node.clone()));
    let policy = obj.spec.deletion_policy;
    ctx.store.remove_channel(&channel, policy, owner.as_deref()).await?;
    let note = match policy {
        DeletionPolicy::Delete => format!(
            "channel {channel} undeclared, history deleted, close sent to {}",
            owner.as_deref().unwrap_or("no owner")
        ),
        DeletionPolicy::Retain => format!("channel {channel} undeclared; history retained"),
    };
    info!(chatchannel = %name, %channel, ?policy, "cleaned up");
    publish_event(ctx, &obj, EventType::Normal, "Deleted", note).await;
    Ok(Action::await_change())
}
