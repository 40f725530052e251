//! High availability on the fake API server: two operator replicas, one
//! Lease. Only the leader reconciles; losing the lease stops it at once;
//! the standby takes over when the leader goes, with the same ring epoch.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chat_operator::Health;
use chat_operator::crd::{ChatChannel, ChatChannelSpec};
use chat_operator::ring::RingSnapshot;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::fake_api::FakeApi;
use support::redis::RedisServer;
use support::{OperatorSetup, chat_node_pod, start_operator, wait_for};

const NS: &str = "games";
const PREFIX: &str = "ha";

struct Replica {
    health: Arc<Health>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    fn start(client: Client, redis: &RedisServer, identity: &str) -> Replica {
        let setup = OperatorSetup {
            redis_url: &redis.url(),
            prefix: PREFIX,
            namespace: NS,
            identity,
            requeue: Duration::from_secs(1),
        };
        let (health, stop, task) = start_operator(client, setup);
        Replica { health, stop: Some(stop), task }
    }
    fn leads(&self) -> bool {
        self.health.leader.load(Ordering::SeqCst)
    }
}

fn ring_in(redis: &RedisServer) -> RingSnapshot {
    serde_json::from_str(&redis.raw(&["GET", &format!("{PREFIX}:ring")])).unwrap()
}

fn max_messages_in(redis: &RedisServer) -> String {
    redis.raw(&["HGET", &format!("{PREFIX}:channels"), "lobby"])
}

async fn set_max_messages(api: &Api<ChatChannel>, n: u32) {
    api.patch(
        "lobby",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"retention": {"maxMessages": n}}})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_the_standby_takes_over() {
    let redis = RedisServer::start();
    let fake = FakeApi::start().await;
    let client = fake.client(NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..2 {
        pods.create(&PostParams::default(), &chat_node_pod(&format!("chat-node-{i}"), 60)).await.unwrap();
    }
    let channels: Api<ChatChannel> = Api::namespaced(client.clone(), NS);
    channels
        .create(&PostParams::default(), &ChatChannel::new("lobby", ChatChannelSpec::default()))
        .await
        .unwrap();

    let a = Replica::start(client.clone(), &redis, "op-a");
    wait_for("op-a leads and publishes", Duration::from_secs(15), || async {
        (a.leads() && !max_messages_in(&redis).is_empty()).then_some(())
    })
    .await;
    let b = Replica::start(client.clone(), &redis, "op-b");
    wait_for("op-b ready as standby", Duration::from_secs(10), || async {
        b.health.ready.load(Ordering::SeqCst).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.leads() && !b.leads(), "exactly one leader");
    let epoch = ring_in(&redis).epoch;

    // Someone else takes the Lease (for 5 s): op-a stops at once, and nothing
    // reconciles while neither replica holds it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let now = k8s_openapi::jiff::Timestamp::now();
    leases
        .patch(
            "chat-operator",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "intruder", "renewTime": now.to_string(),
                                          "acquireTime": now.to_string(), "leaseDurationSeconds": 5}})),
        )
        .await
        .unwrap();
    let stolen_at = Instant::now();
    wait_for("op-a steps down", Duration::from_secs(5), || async { (!a.leads()).then_some(()) }).await;
    let step_down = stolen_at.elapsed();
    assert!(!b.leads());
    set_max_messages(&channels, 7).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if stolen_at.elapsed() < Duration::from_secs(4) {
        assert!(!max_messages_in(&redis).contains(r#""maxMessages":7,"#), "reconciled without the lease");
    }
    // After the intruder's lease expires, a replica takes over and catches up.
    wait_for("a replica leads again and applies the edit", Duration::from_secs(20), || async {
        ((a.leads() || b.leads()) && max_messages_in(&redis).contains(r#""maxMessages":7,"#)).then_some(())
    })
    .await;
    println!("lease stolen: leader stepped down after {step_down:?}");

    // The current leader shuts down: the other takes over; same membership,
    // same epoch.
    let (mut leader, standby) = if a.leads() { (a, b) } else { (b, a) };
    leader.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), &mut leader.task).await.expect("leader stops").unwrap();
    let stopped_at = Instant::now();
    wait_for("standby takes over", Duration::from_secs(15), || async { standby.leads().then_some(()) }).await;
    println!("failover after leader shutdown: {:?}", stopped_at.elapsed());
    set_max_messages(&channels, 9).await;
    wait_for("new leader reconciles", Duration::from_secs(10), || async {
        max_messages_in(&redis).contains(r#""maxMessages":9,"#).then_some(())
    })
    .await;
    assert_eq!(ring_in(&redis).epoch, epoch, "a failover with the same members must keep the epoch");
    let _ = fake;
}

/// The leader is SIGKILLed (no lease release, no graceful stop) right after
/// it published a new ring, while 1,000 channels move: the standby takes
/// over, keeps that epoch, and brings every status to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_finishes_a_ring_change_when_the_leader_is_killed() {
    use std::collections::HashMap;
    use support::process::{OperatorCmd, OperatorProcess};

    const N: usize = 1000;
    let redis = RedisServer::start();
    let fake = FakeApi::start().await;
    for i in 0..3 {
        let pod = serde_json::to_value(chat_node_pod(&format!("chat-node-{i}"), 60)).unwrap();
        fake.create_object("pods", NS, pod).unwrap();
    }
    let dir = shardchat_tests::node::TempDir::new("ha-kill").unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig(NS)).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_chat-operator"));
    let url = redis.url();
    let spawn = |identity: &str| {
        OperatorProcess::spawn(OperatorCmd {
            bin,
            kubeconfig: &kubeconfig,
            redis_url: &url,
            namespace: NS,
            identity,
            env: [
                ("CHAT_OPERATOR_REDIS_PREFIX", PREFIX),
                ("CHAT_OPERATOR_RING_DEBOUNCE", "1s"),
                ("CHAT_OPERATOR_LEASE_DURATION", "4s"),
                ("CHAT_OPERATOR_LEASE_GRACE", "1s"),
                ("RUST_LOG", "warn"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            log: dir.path().join(format!("{identity}.log")),
        })
    };
    let mut a = spawn("op-a");
    assert!(tokio::task::block_in_place(|| a.wait_leader(Duration::from_secs(20))), "{}", a.log_text());
    let b = spawn("op-b");
    for i in 0..N {
        let obj = json!({"apiVersion": "chat.shardchat.io/v1alpha1", "kind": "ChatChannel",
                         "metadata": {"name": format!("zone-{i}")}, "spec": {}});
        fake.create_object("chatchannels", NS, obj).unwrap();
    }
    // name -> (node, epoch) of Ready channels.
    let ready = || {
        let mut out = HashMap::new();
        fake.for_each("chatchannels", NS, |o| {
            let s = &o["status"];
            let ok = s["conditions"][0]["status"] == "True";
            if let (true, Some(n), Some(e)) = (ok, s["node"].as_str(), s["ringEpoch"].as_u64()) {
                out.insert(o["metadata"]["name"].as_str().unwrap().to_string(), (n.to_string(), e));
            }
        });
        out
    };
    wait_for("1000 Ready", Duration::from_secs(60), || async { (ready().len() == N).then_some(()) }).await;
    let first = ring_in(&redis);

    // Scale 3 -> 4 and kill the leader as soon as the new ring is out.
    let pod = serde_json::to_value(chat_node_pod("chat-node-3", 0)).unwrap();
    fake.create_object("pods", NS, pod).unwrap();
    let ring = wait_for("new ring", Duration::from_secs(20), || async {
        let r = ring_in(&redis);
        (r.epoch > first.epoch).then_some(r)
    })
    .await;
    a.kill();
    let moved_at_kill = ready().values().filter(|(_, e)| *e == ring.epoch).count();
    println!("leader killed with {moved_at_kill} of {N} statuses at epoch {}", ring.epoch);

    let all = wait_for("every status at the new epoch", Duration::from_secs(60), || async {
        let r = ready();
        (r.len() == N && r.values().all(|(_, e)| *e == ring.epoch)).then_some(r)
    })
    .await;
    assert_eq!(b.role().as_deref(), Some("leader"), "{}", b.log_text());
    assert_eq!(ring_in(&redis), ring, "the standby finished the job with the same epoch");
    let owners = chat_operator::ring::Ring::try_from(ring.clone()).unwrap();
    for (name, (node, _)) in &all {
        assert_eq!(Some(node.as_str()), owners.owner(name), "{name}");
    }
    let moved = all.values().filter(|(n, _)| n == "chat-node-3").count();
    assert!(moved > N / 8 && moved < N * 13 / 40, "{moved} of {N} moved to the new node");
}
