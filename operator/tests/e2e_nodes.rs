//! End to end with everything real except the Kubernetes API server: the
//! real operator (`chat_operator::run`) against the in-repo fake API server
//! over HTTP, a real `redis-server`, and real `chat-node` processes in
//! cluster mode following the ring and channel configs the operator
//! publishes. The fake API's chat-node Pods carry the node ids of the
//! processes (`chat-node-0..3`) and turn Ready once the process is ready.
//!
//! apply ChatChannels → statuses name the owner, which is the node that
//! actually sequences the channel → clients on different nodes chat →
//! scale 3 → 4 under traffic (new epoch in status and ring, only moved
//! channels change owner, every accepted message reaches every member once,
//! in order) → edit retention → edit maxMembers / access → delete with
//! `deletionPolicy: Delete` (members get `closed`, Redis data gone,
//! finalizer removed, object gone).
//!
//! Needs `redis-server` and the workspace-built `chat-node` binary
//! (`cargo test --workspace` builds it; with `-p chat-operator` run
//! `cargo build -p chat-node` first).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_operator::crd::{ChatChannel, ChatChannelSpec, DeletionPolicy};
use chat_operator::ring::{DEFAULT_VNODES, Ring, RingSnapshot};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use shardchat_tests::client::{Client, Http, id_of};
use shardchat_tests::node::ChatNode;
use shardchat_tests::redis::RedisServer;
use support::fake_api::FakeApi;
use support::wait_for;
use support::{OperatorSetup, chat_node_pod, start_operator};

const NS: &str = "games";
/// Same default on both binaries; spelled out so the test reads the right keys.
const PREFIX: &str = "shardchat";
/// Generous bound for anything that polls (a loaded 2-core machine).
const LONG: Duration = Duration::from_secs(30);
/// Per-connection limits out of the way: the test measures delivery, not throttling.
const FAST: [&str; 6] = ["--publish-rate", "100000", "--publish-burst", "100000", "--frame-rate", "100000"];
const TOWN: &str = "town-137";

type Id = (u64, u64);

fn node_id(i: usize) -> String {
    format!("chat-node-{i}")
}

fn cli(redis: &RedisServer, args: &[&str]) -> String {
    redis.raw(args).trim().to_string()
}

fn ring_in(redis: &RedisServer) -> Option<RingSnapshot> {
    let raw = cli(redis, &["GET", &format!("{PREFIX}:ring")]);
    if raw.is_empty() { None } else { Some(serde_json::from_str(&raw).expect("ring JSON")) }
}

fn config_in(redis: &RedisServer, channel: &str) -> Option<Value> {
    let raw = cli(redis, &["HGET", &format!("{PREFIX}:channels"), channel]);
    (!raw.is_empty()).then(|| serde_json::from_str(&raw).expect("config JSON"))
}

/// Starts the chat-node process `chat-node-<i>` (blocks until /readyz is
/// 200), then adds its Pod as Ready.
async fn start_node(i: usize, redis: &RedisServer, pods: &Api<Pod>) -> ChatNode {
    let url = redis.url();
    let node = tokio::task::block_in_place(|| {
        ChatNode::builder()
            .args(["--redis-url", &url, "--node-id", &node_id(i), "--redis-prefix", PREFIX])
            .args(["--node-ttl", "2s", "--log-format", "json"])
            .args(FAST)
            .start()
    });
    pods.create(&PostParams::default(), &chat_node_pod(&node_id(i), 0)).await.expect("create pod");
    node
}

/// Whether the node logged that it follows a ring of `epoch`.
fn follows_epoch(node: &ChatNode, epoch: u64) -> bool {
    node.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|l| l["fields"]["message"] == "ring changed" && l["fields"]["epoch"].as_u64() == Some(epoch))
}

/// `shardchat_messages_published_total`: messages this node sequenced as owner.
async fn published_by(node: &ChatNode) -> u64 {
    let body = Http { addr: node.addr() }.get("/metrics").await.body;
    body.lines()
        .find_map(|l| l.strip_prefix("shardchat_messages_published_total "))
        .map(|v| v.trim().parse::<f64>().expect("counter value") as u64)
        .unwrap_or(0)
}

async fn published_by_all(nodes: &[ChatNode]) -> Vec<u64> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(published_by(n).await);
    }
    out
}

/// Asserts that publishing `count` messages to `channel` through `client`
/// made exactly `owner` sequence them (no other traffic may run).
async fn assert_sequenced_by(nodes: &[ChatNode], owner: &str, before: &[u64], count: u64, channel: &str) {
    let after = published_by_all(nodes).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let expected = if node_id(i) == owner { count } else { 0 };
        assert_eq!(a - b, expected, "{channel}: messages sequenced by {} (status says {owner})", node_id(i));
    }
}

/// Joins, retrying while the node does not know a ring yet or ownership
/// is moving (`unavailable`).
async fn join(c: &mut Client, channel: &str) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let r = c.request(json!({"op":"join","channel":channel})).await;
        if r["ok"] == json!(true) {
            return r;
        }
        assert_eq!(r["error"]["code"], "unavailable", "join {channel}: {r}");
        assert!(Instant::now() < deadline, "join {channel} kept failing: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(node: &ChatNode, user: &str) -> Client {
    Client::connect(&node.ws_url_as(user)).await
}

/// metadata.name -> (node, ringEpoch) for every Ready ChatChannel.
async fn assignments(api: &Api<ChatChannel>) -> BTreeMap<String, (String, u64)> {
    api.list(&Default::default())
        .await
        .expect("list chatchannels")
        .items
        .into_iter()
        .filter(|c| c.ready_condition().is_some_and(|r| r.status == "True" && r.reason == "Assigned"))
        .filter_map(|c| {
            let s = c.status.clone()?;
            Some((c.name_any(), (s.node?, s.ring_epoch?)))
        })
        .collect()
}

/// Waits until `name` reports Ready for its current generation.
async fn wait_observed(api: &Api<ChatChannel>, name: &str) {
    wait_for(&format!("{name} Ready at its generation"), LONG, || async {
        let c = api.get(name).await.expect("get chatchannel");
        let ready = c.ready_condition().is_some_and(|r| r.status == "True");
        (ready && c.status?.observed_generation == c.metadata.generation).then_some(())
    })
    .await;
}

/// Channel names around "zone-N": `moving` change owner when chat-node-3
/// joins chat-node-0..2, `staying` do not.
fn pick_zones(per_kind: usize) -> (Vec<String>, Vec<String>) {
    let three = Ring::new(1, DEFAULT_VNODES, (0..3).map(node_id)).unwrap();
    let four = Ring::new(2, DEFAULT_VNODES, (0..4).map(node_id)).unwrap();
    let (mut moving, mut staying) = (Vec::new(), Vec::new());
    for i in 0.. {
        let z = format!("zone-{i}");
        if three.owner(&z) == four.owner(&z) {
            if staying.len() < per_kind {
                staying.push(z);
            }
        } else if moving.len() < per_kind {
            moving.push(z);
        }
        if moving.len() == per_kind && staying.len() == per_kind {
            break;
        }
    }
    (moving, staying)
}

/// A member that reads every message push in the background.
struct Listener {
    who: String,
    got: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    fn spawn(who: &str, mut client: Client) -> Listener {
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                match client.try_next_op("message", Duration::from_millis(200)).await {
                    Some(m) => g.lock().unwrap().push(m),
                    // Idle (or the connection ended: the delivery check will say).
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        Listener { who: who.into(), got, stop, task }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    async fn finish(self) -> (String, Vec<Value>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("listener task");
        let got = std::mem::take(&mut *self.got.lock().unwrap());
        (self.who, got)
    }
}

/// An accepted publish: channel, id, text.
type Accepted = (String, Id, String);

/// A member that publishes round-robin over `channels`, waiting for each
/// reply, until stopped; keeps what was accepted and the error codes.
struct Publisher {
    accepted: Arc<Mutex<Vec<Accepted>>>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Client>,
}

impl Publisher {
    fn spawn(tag: &str, mut client: Client, channels: Vec<String>) -> Publisher {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, e, s, tag) = (accepted.clone(), errors.clone(), stop.clone(), tag.to_string());
        let task = tokio::spawn(async move {
            let mut i = 0usize;
            while !s.load(Ordering::SeqCst) {
                let ch = &channels[i % channels.len()];
                let text = format!("{tag}:{i}");
                let r = client.request(json!({"op":"publish","channel":ch,"text":text})).await;
                if r["ok"] == json!(true) {
                    a.lock().unwrap().push((ch.clone(), id_of(&r["message_id"]), text));
                } else {
                    e.lock().unwrap().push(r["error"]["code"].as_str().unwrap_or("?").to_string());
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            client
        });
        Publisher { accepted, errors, stop, task }
    }

    fn accepted_count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    async fn finish(self) -> (Client, Vec<Accepted>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let client = self.task.await.expect("publisher task");
        let accepted = std::mem::take(&mut *self.accepted.lock().unwrap());
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (client, accepted, errors)
    }
}

/// (id, text) per channel, in id order.
fn by_channel(msgs: &[Value]) -> BTreeMap<String, Vec<(Id, String)>> {
    let mut map: BTreeMap<String, Vec<(Id, String)>> = BTreeMap::new();
    for m in msgs {
        let ch = m["channel"].as_str().expect("channel").to_string();
        map.entry(ch).or_default().push((id_of(m), m["text"].as_str().unwrap_or("").to_string()));
    }
    map
}

/// `got` must be exactly `expected` (`full`) or a non-empty contiguous tail
/// of it (a member that joined while traffic flowed), per channel.
fn assert_delivery(who: &str, got: &[Value], expected: &BTreeMap<String, Vec<(Id, String)>>, full: bool) {
    let got = by_channel(got);
    for ch in got.keys() {
        assert!(expected.contains_key(ch), "{who}: messages on unexpected channel {ch}");
    }
    for (ch, want) in expected {
        let have = got.get(ch).map(Vec::as_slice).unwrap_or(&[]);
        assert!(have.windows(2).all(|w| w[0].0 < w[1].0), "{who} on {ch}: ids not strictly increasing");
        if full {
            assert_eq!(have, want.as_slice(), "{who} on {ch}: every accepted message once, in order");
        } else {
            assert!(!have.is_empty(), "{who} on {ch}: nothing received");
            let start = want
                .iter()
                .position(|m| *m == have[0])
                .unwrap_or_else(|| panic!("{who} on {ch}: received {:?}, never accepted", have[0]));
            assert_eq!(have, &want[start..], "{who} on {ch}: a gap-free tail of the accepted messages");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_chat_nodes_assign_scale_edit_and_delete_channels() {
    let started = Instant::now();
    let redis = RedisServer::start();
    let fake = FakeApi::start().await;
    let kube = fake.client(NS);
    let pods: Api<Pod> = Api::namespaced(kube.clone(), NS);
    let channels: Api<ChatChannel> = Api::namespaced(kube.clone(), NS);

    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start_node(i, &redis, &pods).await);
    }
    let (health, stop_operator, operator) = start_operator(
        kube.clone(),
        OperatorSetup {
            redis_url: &redis.url(),
            prefix: PREFIX,
            namespace: NS,
            identity: "op-0",
            requeue: Duration::from_secs(5),
        },
    );

    // ---- 1. Apply: town-137 (Delete policy) and six zones, three of which
    //         the ring will move to chat-node-3 and three it will not.
    let (moving, staying) = pick_zones(3);
    let zones: Vec<String> = moving.iter().chain(&staying).cloned().collect();
    let town = ChatChannel::new(
        TOWN,
        ChatChannelSpec { deletion_policy: DeletionPolicy::Delete, ..Default::default() },
    );
    channels.create(&PostParams::default(), &town).await.expect("create town-137");
    for z in &zones {
        channels
            .create(&PostParams::default(), &ChatChannel::new(z, ChatChannelSpec::default()))
            .await
            .unwrap();
    }
    let all = zones.len() + 1;
    // Each Pod turned Ready when its process was, so the ring may grow one
    // node (and one epoch) at a time; wait for all three.
    let ring1 =
        wait_for("ring with 3 nodes", LONG, || async { ring_in(&redis).filter(|r| r.nodes.len() == 3) })
            .await;
    assert_eq!(ring1.nodes, [node_id(0), node_id(1), node_id(2)]);
    let before = wait_for("every ChatChannel Ready at that epoch", LONG, || async {
        let a = assignments(&channels).await;
        (a.len() == all && a.values().all(|(_, e)| *e == ring1.epoch)).then_some(a)
    })
    .await;
    let r1 = Ring::try_from(ring1.clone()).unwrap();
    for (name, (node, epoch)) in &before {
        assert_eq!(*epoch, ring1.epoch, "{name}: status epoch is the published ring's");
        assert_eq!(Some(node.as_str()), r1.owner(name), "{name}: status node is the ring owner");
        assert!(config_in(&redis, name).is_some(), "{name}: config published");
    }
    let town_owner = before[TOWN].0.clone();
    println!("ring epoch {} (3 nodes) after {:?}; {TOWN} on {town_owner}", ring1.epoch, started.elapsed());

    // ---- 2. Clients on three nodes chat on town-137: cross-node delivery,
    //         exactly once, in order, sequenced by the node the status names.
    let mut town_clients = Vec::new();
    for (i, user) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let mut c = connect(&nodes[i], user).await;
        join(&mut c, TOWN).await;
        town_clients.push(c);
    }
    for (i, node) in nodes.iter().enumerate() {
        wait_for(&format!("{} follows epoch {}", node_id(i), ring1.epoch), LONG, || async {
            follows_epoch(node, ring1.epoch).then_some(())
        })
        .await;
    }
    let counters = published_by_all(&nodes).await;
    let mut town_ids: Vec<String> = Vec::new();
    let mut sent: Vec<(Id, String)> = Vec::new();
    for round in 0..5 {
        for (i, c) in town_clients.iter_mut().enumerate() {
            let text = format!("hello {i}.{round}");
            let id = c.publish(TOWN, &text).await;
            sent.push((id_of(&json!(id)), text));
            town_ids.push(id);
        }
    }
    sent.sort();
    assert_eq!(sent.len(), 15);
    for (i, c) in town_clients.iter_mut().enumerate() {
        let got: Vec<(Id, String)> = c
            .messages(sent.len())
            .await
            .iter()
            .map(|m| (id_of(m), m["text"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(got, sent, "client on {} gets every message once, in id order", node_id(i));
        c.assert_silent(Duration::from_millis(200)).await;
    }
    assert_sequenced_by(&nodes, &town_owner, &counters, sent.len() as u64, TOWN).await;

    // Every zone is sequenced by the node its status names (one probe each).
    let mut prober = connect(&nodes[0], "prober").await;
    for z in &zones {
        join(&mut prober, z).await;
        let counters = published_by_all(&nodes).await;
        prober.publish(z, "probe").await;
        assert_sequenced_by(&nodes, &before[z].0, &counters, 1, z).await;
    }
    drop(prober);

    // ---- 3. Scale 3 -> 4 under traffic. A listener and a publisher on every
    //         node, members of every zone, publishing with replies.
    // Everyone joins before anyone publishes, so every one of them must
    // see all of the traffic.
    let mut listeners = Vec::new();
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut l = connect(node, &format!("listener-{i}")).await;
        let mut p = connect(node, &format!("publisher-{i}")).await;
        for z in &zones {
            join(&mut l, z).await;
            join(&mut p, z).await;
        }
        listeners.push(Listener::spawn(&format!("listener on {}", node_id(i)), l));
        members.push(p);
    }
    let mut publishers: Vec<Publisher> = members
        .into_iter()
        .enumerate()
        .map(|(i, p)| Publisher::spawn(&format!("p{i}"), p, zones.clone()))
        .collect();
    wait_for("traffic before the scale-up", LONG, || async {
        publishers.iter().all(|p| p.accepted_count() >= 20).then_some(())
    })
    .await;

    let scaled_at = Instant::now();
    nodes.push(start_node(3, &redis, &pods).await);
    // A member on the new node that joins while traffic flows: it must get
    // a gap-free tail of every zone.
    let mut late = connect(&nodes[3], "listener-3").await;
    let mut late_pub = connect(&nodes[3], "publisher-3").await;
    for z in &zones {
        join(&mut late, z).await;
        join(&mut late_pub, z).await;
    }
    let late = Listener::spawn("listener on chat-node-3 (joined during traffic)", late);
    publishers.push(Publisher::spawn("p3", late_pub, zones.clone()));

    let ring2 =
        wait_for("ring with 4 nodes", LONG, || async { ring_in(&redis).filter(|r| r.nodes.len() == 4) })
            .await;
    assert_eq!(ring2.epoch, ring1.epoch + 1, "one membership change, one epoch");
    let r2 = Ring::try_from(ring2.clone()).unwrap();
    let after = wait_for("every status at the new epoch", LONG, || async {
        let a = assignments(&channels).await;
        (a.len() == all && a.values().all(|(_, e)| *e == ring2.epoch)).then_some(a)
    })
    .await;
    for (name, (node, _)) in &after {
        assert_eq!(Some(node.as_str()), r2.owner(name), "{name}: status node is the new ring's owner");
        if before[name].0 != *node {
            assert_eq!(node, &node_id(3), "{name} moved between old nodes");
        }
    }
    for z in &moving {
        assert_eq!(after[z].0, node_id(3), "{z} moved to the new node");
    }
    for z in &staying {
        assert_eq!(after[z].0, before[z].0, "{z} kept its owner");
    }
    for (i, node) in nodes.iter().enumerate() {
        wait_for(&format!("{} follows epoch {}", node_id(i), ring2.epoch), LONG, || async {
            follows_epoch(node, ring2.epoch).then_some(())
        })
        .await;
    }
    println!(
        "scale 3->4: epoch {} on every node {:?} after the pod was added",
        ring2.epoch,
        scaled_at.elapsed()
    );
    // Traffic keeps flowing after every node switched.
    let marks: Vec<usize> = publishers.iter().map(Publisher::accepted_count).collect();
    wait_for("traffic after the ring change", LONG, || async {
        publishers.iter().zip(&marks).all(|(p, m)| p.accepted_count() >= m + 30).then_some(())
    })
    .await;

    let mut accepted: Vec<Accepted> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut pub_clients = Vec::new();
    for p in publishers {
        let (client, a, e) = p.finish().await;
        accepted.extend(a);
        errors.extend(e);
        pub_clients.push(client);
    }
    assert!(errors.iter().all(|e| e == "unavailable"), "only transient unavailability: {errors:?}");
    let mut expected: BTreeMap<String, Vec<(Id, String)>> = BTreeMap::new();
    for (ch, id, text) in &accepted {
        expected.entry(ch.clone()).or_default().push((*id, text.clone()));
    }
    for (ch, msgs) in expected.iter_mut() {
        msgs.sort();
        let unique: HashSet<Id> = msgs.iter().map(|(id, _)| *id).collect();
        assert_eq!(unique.len(), msgs.len(), "{ch}: two accepted publishes got the same id");
    }
    assert_eq!(expected.len(), zones.len(), "every zone got traffic");
    let total = accepted.len();
    println!("traffic: {total} accepted, {} unavailable", errors.len());

    // Listeners on every node: exactly the accepted messages, once, in order.
    wait_for("listeners to catch up", LONG, || async {
        listeners.iter().all(|l| l.count() >= total).then_some(())
    })
    .await;
    // Anything beyond the accepted messages (a duplicate) would show now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for l in listeners {
        let (who, got) = l.finish().await;
        assert_delivery(&who, &got, &expected, true);
    }
    let (who, got) = late.finish().await;
    assert_delivery(&who, &got, &expected, false);
    // The publishers are members too; the three early ones saw everything.
    for (i, c) in pub_clients.iter_mut().enumerate() {
        let who = format!("publisher on {}", node_id(i));
        if i < 3 {
            let got = c.messages(total).await;
            assert_delivery(&who, &got, &expected, true);
            c.assert_silent(Duration::from_millis(200)).await;
        } else {
            let mut got = Vec::new();
            while let Some(m) = c.try_next_op("message", Duration::from_millis(500)).await {
                got.push(m);
            }
            assert_delivery(&who, &got, &expected, false);
        }
    }
    // With the traffic stopped: each zone is now sequenced by its new owner.
    for z in &zones {
        let counters = published_by_all(&nodes).await;
        pub_clients[0].publish(z, "probe").await;
        assert_sequenced_by(&nodes, &after[z].0, &counters, 1, z).await;
    }
    drop(pub_clients);

    // ---- 4. Edit retention: maxMessages 3 takes effect on the owner.
    let history = |node: &ChatNode| {
        let http = Http { addr: node.addr() };
        async move {
            let h = http.get(&format!("/v1/channels/{TOWN}/history?limit=100")).await;
            assert_eq!(h.status, 200, "history: {}", h.body);
            h.json()["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(history(&nodes[1]).await, town_ids, "full history before the edit");
    channels
        .patch(
            TOWN,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"retention": {"maxMessages": 3}}})),
        )
        .await
        .expect("edit retention");
    wait_observed(&channels, TOWN).await;
    assert_eq!(config_in(&redis, TOWN).unwrap()["retention"]["maxMessages"], 3);
    let edited_at = Instant::now();
    let deadline = Instant::now() + LONG;
    loop {
        for k in 0..2 {
            town_ids.push(town_clients[0].publish(TOWN, &format!("after edit {k}")).await);
        }
        let h = history(&nodes[1]).await;
        if h.len() == 3 {
            break;
        }
        assert!(h.len() > 3, "history lost too much: {h:?}");
        assert!(Instant::now() < deadline, "retention of 3 messages never took effect: {} kept", h.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in &nodes {
        assert_eq!(history(node).await, town_ids[town_ids.len() - 3..], "newest 3 on {}", node.addr());
    }
    println!("retention edit took effect after {:?}", edited_at.elapsed());

    // ---- 5. Edit maxMembers and access: three members is the limit,
    //         publishing needs the officer role.
    channels
        .patch(
            TOWN,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxMembers": 3, "access": {"publishRoles": ["officer"]}}})),
        )
        .await
        .expect("edit access");
    wait_observed(&channels, TOWN).await;
    for (i, c) in town_clients.iter_mut().enumerate() {
        let deadline = Instant::now() + LONG;
        loop {
            let r = c.request(json!({"op":"publish","channel":TOWN,"text":"still allowed?"})).await;
            if r["ok"] != json!(true) {
                assert_eq!(r["error"]["code"], "forbidden", "publish on {}: {r}", node_id(i));
                break;
            }
            assert!(Instant::now() < deadline, "publishing on {} never became forbidden", node_id(i));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for (i, node) in nodes.iter().enumerate() {
        let mut attempt = 0;
        wait_for(&format!("channel_full for a fourth user on {}", node_id(i)), LONG, || {
            attempt += 1;
            let url = node.ws_url_as(&format!("dave-{i}-{attempt}"));
            async move {
                let mut dave = Client::connect(&url).await;
                let r = dave.request(json!({"op":"join","channel":TOWN})).await;
                if r["ok"] == json!(true) {
                    // The owner did not have the limit yet: undo, try again.
                    dave.ok(json!({"op":"leave","channel":TOWN})).await;
                    return None;
                }
                assert_eq!(r["error"]["code"], "channel_full", "{r}");
                Some(())
            }
        })
        .await;
    }
    // A second connection of a member is fine, and an officer may publish.
    let mut officer = Client::connect(&format!("{}&roles=officer", nodes[3].ws_url_as("alice"))).await;
    assert_eq!(officer.join(TOWN).await["members"], 3);
    let id = officer.publish(TOWN, "officer speaking").await;
    for c in town_clients.iter_mut().skip(1) {
        // Earlier accepted messages may still be queued before it.
        let m = loop {
            let m = c.next_op("message").await;
            if m["id"] == id.as_str() {
                break m;
            }
        };
        assert_eq!(m["text"], "officer speaking");
    }

    // Join roles: a user without "vip" is refused at the edge; one with it
    // passes the edge but the channel is full.
    channels
        .patch(
            TOWN,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"access": {"joinRoles": ["vip"]}}})),
        )
        .await
        .expect("edit join roles");
    wait_observed(&channels, TOWN).await;
    let mut attempt = 0;
    wait_for("forbidden join without the vip role", LONG, || {
        attempt += 1;
        let url = nodes[2].ws_url_as(&format!("frank-{attempt}"));
        async move {
            let mut frank = Client::connect(&url).await;
            let r = frank.request(json!({"op":"join","channel":TOWN})).await;
            if r["ok"] == json!(true) {
                frank.ok(json!({"op":"leave","channel":TOWN})).await;
                return None;
            }
            (r["error"]["code"] == "forbidden").then_some(())
        }
    })
    .await;
    let mut vip = Client::connect(&format!("{}&roles=vip", nodes[0].ws_url_as("frank"))).await;
    assert_eq!(vip.error_code(json!({"op":"join","channel":TOWN})).await, "channel_full");

    // ---- 6. Delete with deletionPolicy Delete.
    let history_key = format!("{PREFIX}:history:{TOWN}");
    assert_eq!(cli(&redis, &["EXISTS", &history_key]), "1");
    assert!(config_in(&redis, TOWN).is_some());
    let deleted_at = Instant::now();
    channels.delete(TOWN, &DeleteParams::default()).await.expect("delete");
    let closed = json!({"op":"closed","channel":TOWN,"reason":"deleted"});
    for (who, c) in town_clients.iter_mut().chain(std::iter::once(&mut officer)).enumerate() {
        assert_eq!(c.next_op("closed").await, closed, "member {who} told");
        assert_eq!(c.error_code(json!({"op":"publish","channel":TOWN,"text":"x"})).await, "not_joined");
    }
    wait_for("town-137 gone from the API", LONG, || async {
        channels.get_opt(TOWN).await.expect("get").is_none().then_some(())
    })
    .await;
    assert!(config_in(&redis, TOWN).is_none(), "config field removed");
    assert_eq!(cli(&redis, &["EXISTS", &history_key]), "0", "history removed");
    // Nodes drop the declaration within a second or so, but the channel was
    // restricted to "vip": it stays so (fail closed, docs/security.md), so
    // anonymous REST reads stay refused. A vip who joins is alone in it.
    let members_http = Http { addr: nodes[2].addr() };
    assert_eq!(members_http.get(&format!("/v1/channels/{TOWN}/members")).await.status, 403);
    let joined = wait_for("a vip alone in the deleted channel", LONG, || {
        let url = format!("{}&roles=vip", nodes[2].ws_url_as("grace"));
        async move {
            let mut grace = Client::connect(&url).await;
            let r = grace.request(json!({"op":"join","channel":TOWN})).await;
            (r["ok"] == json!(true)).then_some(r)
        }
    })
    .await;
    assert_eq!(joined["members"], json!(1), "nobody else is a member any more: {joined}");
    let mut outsider = Client::connect(&nodes[2].ws_url_as("mallory")).await;
    assert_eq!(outsider.error_code(json!({"op":"join","channel":TOWN})).await, "forbidden");
    println!("delete: members closed and object gone after {:?}", deleted_at.elapsed());
    let reasons: Vec<String> =
        fake.objects("events", NS).iter().filter_map(|e| e["reason"].as_str().map(str::to_string)).collect();
    for r in ["Assigned", "Reassigned", "Deleted"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event in {reasons:?}");
    }
    // The other channels are untouched.
    assert_eq!(assignments(&channels).await.len(), zones.len());
    assert!(health.metrics.render().contains(&format!("chat_operator_ring_epoch {}", ring2.epoch)));

    stop_operator.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), operator).await.expect("operator stops").unwrap();
    println!("total {:?}", started.elapsed());
}
