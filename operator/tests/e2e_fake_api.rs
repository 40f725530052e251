//! End to end: the real operator (`chat_operator::run`: lease manager,
//! pod watcher, ring manager, Controller, finalizer, event recorder) against
//! the in-repo fake API server over real HTTP, with a real redis-server.
//!
//! Chat-node pods are simulated as Pod objects whose Ready condition the
//! test sets (no chat-node process runs here).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chat_operator::crd::{ChatChannel, ChatChannelSpec, DeletionPolicy, RetentionSpec};
use chat_operator::ring::{Ring, RingSnapshot};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::fake_api::FakeApi;
use support::redis::RedisServer;
use support::{OperatorSetup, chat_node_pod, start_operator, wait_for};

const NS: &str = "games";
const PREFIX: &str = "e2e";

fn ring_in(redis: &RedisServer) -> Option<RingSnapshot> {
    let raw = redis.raw(&["GET", &format!("{PREFIX}:ring")]);
    if raw.is_empty() { None } else { Some(serde_json::from_str(&raw).unwrap()) }
}

fn config_in(redis: &RedisServer, channel: &str) -> String {
    redis.raw(&["HGET", &format!("{PREFIX}:channels"), channel])
}

fn version_in(redis: &RedisServer) -> i64 {
    redis.raw(&["GET", &format!("{PREFIX}:channels:version")]).parse().unwrap_or(0)
}

/// metadata.name -> (node, ringEpoch) for every Ready ChatChannel.
async fn assignments(api: &Api<ChatChannel>) -> BTreeMap<String, (String, u64)> {
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.ready_condition().is_some_and(|r| r.status == "True"))
        .filter_map(|c| {
            let s = c.status.clone()?;
            Some((c.name_any(), (s.node?, s.ring_epoch?)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_assigns_rebalances_edits_and_deletes_channels() {
    let redis = RedisServer::start();
    let fake = FakeApi::start().await;
    let client = fake.client(NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let channels: Api<ChatChannel> = Api::namespaced(client.clone(), NS);
    for i in 0..3 {
        pods.create(&PostParams::default(), &chat_node_pod(&format!("chat-node-{i}"), 60)).await.unwrap();
    }
    // A pod of something else must not join the ring.
    let mut other = chat_node_pod("redis-0", 60);
    other.metadata.labels = Some([("app.kubernetes.io/name".to_string(), "redis".to_string())].into());
    pods.create(&PostParams::default(), &other).await.unwrap();

    let (health, stop, task) = start_operator(
        client.clone(),
        OperatorSetup {
            redis_url: &redis.url(),
            prefix: PREFIX,
            namespace: NS,
            identity: "op-0",
            requeue: Duration::from_secs(2),
        },
    );

    // Declare 40 channels plus town-137 (short history, Delete policy).
    for i in 0..40 {
        let c = ChatChannel::new(&format!("town-{i}"), ChatChannelSpec::default());
        channels.create(&PostParams::default(), &c).await.unwrap();
    }
    let town = ChatChannel::new(
        "town-137",
        ChatChannelSpec {
            retention: Some(RetentionSpec { max_messages: Some(100), max_age_seconds: Some(3600) }),
            deletion_policy: DeletionPolicy::Delete,
            ..Default::default()
        },
    );
    channels.create(&PostParams::default(), &town).await.unwrap();

    // 1. Every channel gets a node, from the ring the operator published.
    let before = wait_for("41 Ready channels", Duration::from_secs(20), || async {
        let a = assignments(&channels).await;
        (a.len() == 41).then_some(a)
    })
    .await;
    let ring1 = ring_in(&redis).expect("ring published");
    assert_eq!(ring1.nodes, ["chat-node-0", "chat-node-1", "chat-node-2"]);
    assert_eq!(ring1.vnodes, chat_operator::ring::DEFAULT_VNODES);
    let r1 = Ring::try_from(ring1.clone()).unwrap();
    for (name, (node, epoch)) in &before {
        assert_eq!(*epoch, ring1.epoch);
        assert_eq!(Some(node.as_str()), r1.owner(name), "{name}");
    }
    assert_eq!(
        config_in(&redis, "town-137"),
        r#"{"name":"town-137","retention":{"maxMessages":100,"maxAgeSeconds":3600},"access":{}}"#
    );
    assert_eq!(
        config_in(&redis, "town-5"),
        r#"{"name":"town-5","retention":{"maxMessages":1000,"maxAgeSeconds":86400},"access":{}}"#
    );
    let obj = channels.get("town-137").await.unwrap();
    assert!(obj.finalizers().contains(&chat_operator::crd::FINALIZER.to_string()));
    assert_eq!(obj.status.as_ref().unwrap().observed_generation, Some(1));

    // Member counts: the nodes' registry hash {p}:users:<channel> (HLEN)
    // reaches status.members within a refresh period (1 s here).
    let town5 = channels.get("town-5").await.unwrap();
    assert_eq!(town5.status.as_ref().unwrap().members, Some(0));
    redis.raw(&["HSET", &format!("{PREFIX}:users:town-5"), "alice", "1", "bob", "2", "carol", "1"]);
    wait_for("3 members in the status of town-5", Duration::from_secs(10), || async {
        let c = channels.get("town-5").await.unwrap();
        (c.status?.members == Some(3)).then_some(())
    })
    .await;
    redis.raw(&["HDEL", &format!("{PREFIX}:users:town-5"), "bob"]);
    wait_for("2 members in the status of town-5", Duration::from_secs(10), || async {
        let c = channels.get("town-5").await.unwrap();
        (c.status?.members == Some(2)).then_some(())
    })
    .await;

    // 2. Scale 3 -> 4: after the debounce, a new epoch; only moved channels
    //    change node, and all of them move to the new node.
    let scaled_at = Instant::now();
    pods.create(&PostParams::default(), &chat_node_pod("chat-node-3", 0)).await.unwrap();
    let ring2 = wait_for("ring with 4 nodes", Duration::from_secs(20), || async {
        ring_in(&redis).filter(|r| r.nodes.len() == 4)
    })
    .await;
    let join_delay = scaled_at.elapsed();
    assert!(join_delay >= Duration::from_secs(1), "debounce not honoured: {join_delay:?}");
    assert_eq!(ring2.epoch, ring1.epoch + 1);
    let after = wait_for("statuses at the new epoch", Duration::from_secs(20), || async {
        let a = assignments(&channels).await;
        (a.len() == 41 && a.values().all(|(_, e)| *e == ring2.epoch)).then_some(a)
    })
    .await;
    let moved: Vec<&String> = before.keys().filter(|k| before[*k].0 != after[*k].0).collect();
    assert!(!moved.is_empty(), "nothing moved to the new node");
    for k in &moved {
        assert_eq!(after[*k].0, "chat-node-3", "{k} moved between old nodes");
    }
    println!("scale 3->4: ring joined after {join_delay:?}, {} of 41 channels moved", moved.len());

    // 3. Edit retention: the config in Redis follows, with a version bump.
    let version = version_in(&redis);
    channels
        .patch(
            "town-137",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"retention": {"maxMessages": 5}}})),
        )
        .await
        .unwrap();
    wait_for("edited config in redis", Duration::from_secs(10), || async {
        config_in(&redis, "town-137").contains(r#""maxMessages":5,"#).then_some(())
    })
    .await;
    assert!(version_in(&redis) > version);
    wait_for("observedGeneration 2", Duration::from_secs(10), || async {
        let c = channels.get("town-137").await.unwrap();
        (c.status?.observed_generation == Some(2)).then_some(())
    })
    .await;

    // 4. Drift: a config deleted by hand comes back with the periodic requeue.
    redis.raw(&["HDEL", &format!("{PREFIX}:channels"), "town-5"]);
    wait_for("repaired config", Duration::from_secs(10), || async {
        (!config_in(&redis, "town-5").is_empty()).then_some(())
    })
    .await;

    // 5. Delete with policy Delete: config and history gone, owner told to
    //    close, finalizer removed, object gone.
    let owner = after["town-137"].0.clone();
    redis.raw(&["XADD", &format!("{PREFIX}:history:town-137"), "*", "m", "hello"]);
    channels.delete("town-137", &DeleteParams::default()).await.unwrap();
    wait_for("town-137 removed", Duration::from_secs(10), || async {
        channels.get_opt("town-137").await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(config_in(&redis, "town-137"), "");
    assert_eq!(redis.raw(&["EXISTS", &format!("{PREFIX}:history:town-137")]), "0");
    let inbox = redis.raw(&["XRANGE", &format!("{PREFIX}:inbox:{owner}"), "-", "+"]);
    assert!(inbox.contains(r#"{"channel":"town-137","reason":"deleted"}"#), "{inbox}");

    // 6. Scale back 4 -> 3: the moved channels return to their old owners.
    pods.delete("chat-node-3", &DeleteParams::default()).await.unwrap();
    let ring3 = wait_for("ring with 3 nodes", Duration::from_secs(20), || async {
        ring_in(&redis).filter(|r| r.nodes.len() == 3)
    })
    .await;
    assert_eq!(ring3.epoch, ring2.epoch + 1);
    let back = wait_for("statuses at the third epoch", Duration::from_secs(20), || async {
        let a = assignments(&channels).await;
        (a.len() == 40 && a.values().all(|(_, e)| *e == ring3.epoch)).then_some(a)
    })
    .await;
    for (k, (node, _)) in &back {
        assert_eq!(*node, before[k].0, "{k}");
    }

    // Events: every move of a channel has its own event, and the newest
    // one names the owner and epoch the status shows (kubectl describe).
    let events = fake.objects("events", NS);
    for k in &moved {
        if k.as_str() == "town-137" {
            continue; // deleted meanwhile
        }
        let mut reassigned: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["regarding"]["name"] == k.as_str() && e["reason"] == "Reassigned")
            .collect();
        reassigned.sort_by_key(|e| e["eventTime"].as_str().unwrap_or("").to_string());
        assert_eq!(reassigned.len(), 2, "{k}: one event per move: {reassigned:#?}");
        let note = reassigned[1]["note"].as_str().unwrap();
        let (node, epoch) = &back[*k];
        assert!(note.contains(&format!("owned by {node} ")), "{k}: {note}");
        assert!(note.contains(&format!("ring epoch {epoch})")), "{k}: {note}");
        assert!(reassigned[0]["note"].as_str().unwrap().contains("owned by chat-node-3 "), "{k}");
    }

    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    for r in ["Assigned", "Reassigned", "Deleted"] {
        assert!(reasons.contains(&r), "no {r} event in {reasons:?}");
    }
    let metrics = health.metrics.render();
    assert!(metrics.contains("chat_operator_leader 1"), "{metrics}");
    assert!(metrics.contains(&format!("chat_operator_ring_epoch {}", ring3.epoch)), "{metrics}");
    assert!(metrics.contains("chat_operator_reconciles_total"), "{metrics}");
    assert!(metrics.contains("chat_operator_channels{node=\"chat-node-0\"}"), "{metrics}");
    let lease = fake.object("leases", NS, "chat-operator").expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "op-0");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("operator stops").unwrap();
}
