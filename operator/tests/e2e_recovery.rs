//! Recovery of the real operator (in process) on the fake API server with a
//! real redis-server that the tests stop and start:
//!
//! * a leader that takes over while Redis is unreachable still runs its
//!   controller (statuses say RedisUnavailable, a deletion waits), and
//!   catches up by itself once Redis is back;
//! * the ring epoch floor comes from the operator's Lease, not from
//!   `status.ringEpoch`: forged status values (even `u64::MAX`) neither move
//!   nor wedge the ring after Redis lost it and the operator restarted.

mod support;

use std::time::Duration;

use chat_operator::crd::{ChatChannel, ChatChannelSpec};
use chat_operator::epoch_floor::ANNOTATION;
use chat_operator::ring::RingSnapshot;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::fake_api::FakeApi;
use support::redis::RedisServer;
use support::{OperatorSetup, chat_node_pod, start_operator, wait_for};

const NS: &str = "games";
const PREFIX: &str = "rec";
const LONG: Duration = Duration::from_secs(30);

fn ring_in(redis: &RedisServer) -> Option<RingSnapshot> {
    let raw = redis.raw(&["GET", &format!("{PREFIX}:ring")]);
    serde_json::from_str(&raw).ok()
}

fn setup<'a>(redis_url: &'a str, identity: &'a str) -> OperatorSetup<'a> {
    OperatorSetup { redis_url, prefix: PREFIX, namespace: NS, identity, requeue: Duration::from_secs(60) }
}

/// (reason, node, epoch) of every ChatChannel, by name.
async fn statuses(api: &Api<ChatChannel>) -> Vec<(String, String, Option<String>, Option<u64>)> {
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| {
            let reason = c.ready_condition().map(|r| r.reason.clone()).unwrap_or_default();
            let s = c.status.clone().unwrap_or_default();
            (c.name_any(), reason, s.node, s.ring_epoch)
        })
        .collect()
}

async fn start_cluster(fake: &FakeApi, channels: usize) -> (Api<ChatChannel>, Api<Pod>) {
    let client = fake.client(NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..3 {
        pods.create(&PostParams::default(), &chat_node_pod(&format!("chat-node-{i}"), 60)).await.unwrap();
    }
    let api: Api<ChatChannel> = Api::namespaced(client, NS);
    for i in 0..channels {
        let c = ChatChannel::new(&format!("town-{i}"), ChatChannelSpec::default());
        api.create(&PostParams::default(), &c).await.unwrap();
    }
    (api, pods)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_takes_over_while_redis_is_down_reconciles_and_catches_up() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let fake = FakeApi::start().await;
    let (api, _pods) = start_cluster(&fake, 4).await;

    // A first leader assigns everything, then goes away.
    let (_h, stop_a, task_a) = start_operator(fake.client(NS), setup(&url, "op-a"));
    wait_for("4 Assigned", LONG, || async {
        let s = statuses(&api).await;
        (s.len() == 4 && s.iter().all(|(_, r, n, _)| r == "Assigned" && n.is_some())).then_some(())
    })
    .await;
    let epoch = ring_in(&redis).expect("ring").epoch;
    let before = statuses(&api).await;
    stop_a.send(()).unwrap();
    task_a.await.unwrap();

    // Redis is unreachable when the next leader starts and takes over.
    redis.kill();
    let (health_b, stop_b, task_b) = start_operator(fake.client(NS), setup(&url, "op-b"));
    wait_for("op-b leads", LONG, || async {
        health_b.leader.load(std::sync::atomic::Ordering::SeqCst).then_some(())
    })
    .await;
    // Its controller runs: every status says RedisUnavailable, with the
    // last known owner kept, and a message saying what to check.
    wait_for("statuses say RedisUnavailable", LONG, || async {
        let s = statuses(&api).await;
        s.iter().all(|(_, r, _, _)| r == "RedisUnavailable").then_some(())
    })
    .await;
    for ((name, _, node, ep), (_, _, old_node, old_ep)) in statuses(&api).await.iter().zip(&before) {
        assert_eq!((node, ep), (old_node, old_ep), "{name}: last known owner kept");
    }
    let c = api.get("town-1").await.unwrap();
    let message = c.ready_condition().unwrap().message.clone();
    assert!(message.contains("--redis-url"), "{message}");
    // A deletion waits for Redis (its cleanup needs it).
    api.delete("town-0", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pending = api.get("town-0").await.expect("town-0 waits for its cleanup");
    assert!(pending.metadata.deletion_timestamp.is_some());

    // Redis comes back (empty): everything catches up by itself.
    redis.restart();
    wait_for("town-0 deleted", LONG, || async {
        api.get_opt("town-0").await.unwrap().is_none().then_some(())
    })
    .await;
    let ring = wait_for("ring republished", LONG, || async { ring_in(&redis) }).await;
    assert!(ring.epoch > epoch, "epoch went from {epoch} to {}: it must never go back", ring.epoch);
    wait_for("3 Assigned at the new epoch", LONG, || async {
        let s = statuses(&api).await;
        (s.len() == 3 && s.iter().all(|(_, r, _, e)| r == "Assigned" && *e == Some(ring.epoch))).then_some(())
    })
    .await;
    for i in 1..4 {
        let cfg = redis.raw(&["HGET", &format!("{PREFIX}:channels"), &format!("town-{i}")]);
        assert!(cfg.contains(&format!("\"town-{i}\"")), "config of town-{i} republished: {cfg:?}");
    }
    stop_b.send(()).unwrap();
    task_b.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_status_epochs_neither_move_nor_wedge_the_ring() {
    let redis = RedisServer::start();
    let url = redis.url();
    let fake = FakeApi::start().await;
    let (api, _pods) = start_cluster(&fake, 2).await;
    let (_h, stop_a, task_a) = start_operator(fake.client(NS), setup(&url, "op-a"));
    wait_for("2 Assigned", LONG, || async {
        let s = statuses(&api).await;
        (s.len() == 2 && s.iter().all(|(_, r, _, _)| r == "Assigned")).then_some(())
    })
    .await;
    let epoch = ring_in(&redis).expect("ring").epoch;
    // The floor is on the operator's Lease.
    let lease = fake.object("leases", NS, "chat-operator").expect("lease");
    assert_eq!(lease["metadata"]["annotations"][ANNOTATION], epoch.to_string());
    stop_a.send(()).unwrap();
    task_a.await.unwrap();

    // Someone with write access to the status subresource forges epochs;
    // then Redis loses everything and the operator restarts.
    fake.merge_patch_object("chatchannels", NS, "town-0", true, &json!({"status": {"ringEpoch": u64::MAX}}))
        .unwrap();
    fake.merge_patch_object(
        "chatchannels",
        NS,
        "town-1",
        true,
        &json!({"status": {"ringEpoch": 1_000_000_000u64}}),
    )
    .unwrap();
    redis.raw(&["FLUSHALL"]);
    let (_h, stop_b, task_b) = start_operator(fake.client(NS), setup(&url, "op-b"));
    let ring = wait_for("ring republished", LONG, || async { ring_in(&redis) }).await;
    assert_eq!(ring.epoch, epoch + 1, "the floor is the operator's own record, not the forged statuses");
    // The forged statuses are corrected.
    wait_for("statuses at the real epoch", LONG, || async {
        let s = statuses(&api).await;
        s.iter().all(|(_, r, _, e)| r == "Assigned" && *e == Some(ring.epoch)).then_some(())
    })
    .await;
    let lease = fake.object("leases", NS, "chat-operator").expect("lease");
    assert_eq!(lease["metadata"]["annotations"][ANNOTATION], ring.epoch.to_string());
    stop_b.send(()).unwrap();
    task_b.await.unwrap();
}
