//! Shared by the operator's integration tests.

#![allow(dead_code)]

pub mod fake_api;
pub mod process;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chat_operator::{Health, RunArgs};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Polls `f` every 100 ms until it yields a value; panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A chat-node Pod whose Ready condition turned True `ready_since_secs_ago`
/// seconds ago (API timestamps have whole seconds: rounded up, so "ready
/// since" is never earlier than the moment a test starts measuring).
pub fn chat_node_pod(name: &str, ready_since_secs_ago: i64) -> Pod {
    use k8s_openapi::jiff::Timestamp;
    let ltt =
        Timestamp::from_second(Timestamp::now().as_second() + 1 - ready_since_secs_ago).expect("valid time");
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "chat-node"}},
        "spec": {"containers": [{"name": "chat-node", "image": "chat-node"}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": ltt.to_string()}
        ]}
    }))
    .expect("valid Pod")
}

/// Where and how a test runs the real operator.
pub struct OperatorSetup<'a> {
    pub redis_url: &'a str,
    pub prefix: &'a str,
    pub namespace: &'a str,
    pub identity: &'a str,
    pub requeue: Duration,
}

/// Runs the operator (1 s ring debounce, 4 s lease, member counts every
/// second) until the returned sender fires or is dropped.
pub fn start_operator(
    client: kube::Client,
    setup: OperatorSetup<'_>,
) -> (Arc<Health>, oneshot::Sender<()>, JoinHandle<()>) {
    let mut args = RunArgs::with_redis(setup.redis_url);
    args.redis_prefix = setup.prefix.into();
    args.namespace = Some(setup.namespace.into());
    args.ring_debounce = Duration::from_secs(1);
    args.members_refresh = Duration::from_secs(1);
    args.requeue = setup.requeue;
    args.lease_duration = Duration::from_secs(4);
    args.lease_grace = Duration::from_secs(1);
    args.identity = Some(setup.identity.into());
    let health = Arc::new(Health::default());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let h = health.clone();
    let task = tokio::spawn(async move {
        chat_operator::run(client, args, h, async {
            let _ = stop_rx.await;
        })
        .await
        .expect("operator runs");
    });
    (health, stop_tx, task)
}
