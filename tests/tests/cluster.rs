//! Several chat-node processes sharding over a real Redis: cross-node
//! delivery, recovery, presence, node and Redis failures, ring changes.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use shardchat_tests::client::{Client, Http, id_of};
use shardchat_tests::cluster::{
    FAST, channel_owned_by, connect, eventually, http, node_id, set_ring, start_cluster, wait_http_status,
};
use shardchat_tests::node::ChatNode;
use shardchat_tests::redis::RedisServer;

/// A received message as (id, text).
type Received = ((u64, u64), String);

/// Messages received for `channel`, as (id, text).
fn of_channel(msgs: &[Value], channel: &str) -> Vec<Received> {
    msgs.iter()
        .filter(|m| m["channel"] == channel)
        .map(|m| (id_of(m), m["text"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn assert_exactly_once_in_order(seq: &[Received], what: &str) {
    assert!(seq.windows(2).all(|w| w[0].0 < w[1].0), "{what}: ids must strictly increase");
    let unique: HashSet<_> = seq.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), seq.len(), "{what}: duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery_is_exactly_once_and_in_order_for_every_member() {
    let cluster = start_cluster(3, true, &[]);
    let channels = ["room-a", "room-b", "room-c", "room-d"];
    let mut clients = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        for k in 0..2 {
            let mut c = connect(node, &format!("u{i}{k}")).await;
            for ch in channels {
                c.join(ch).await;
            }
            clients.push(c);
        }
    }
    const PER: usize = 15;
    for (n, c) in clients.iter_mut().enumerate() {
        for ch in channels {
            for m in 0..PER {
                c.send_json(json!({"op":"publish","channel":ch,"text":format!("{n}:{m}")})).await;
            }
        }
    }
    let total = clients.len() * channels.len() * PER;
    let mut reference: BTreeMap<&str, Vec<Received>> = BTreeMap::new();
    for (n, c) in clients.iter_mut().enumerate() {
        let msgs = c.messages(total).await;
        for ch in channels {
            let seq = of_channel(&msgs, ch);
            assert_eq!(seq.len(), PER * 6, "client {n} channel {ch}");
            assert_exactly_once_in_order(&seq, &format!("client {n} {ch}"));
            // Per publisher, FIFO.
            for p in 0..6 {
                let own: Vec<&String> =
                    seq.iter().map(|(_, t)| t).filter(|t| t.starts_with(&format!("{p}:"))).collect();
                let expected: Vec<String> = (0..PER).map(|m| format!("{p}:{m}")).collect();
                assert_eq!(own, expected.iter().collect::<Vec<_>>(), "publisher {p} order on {ch}");
            }
            match reference.get(ch) {
                Some(r) => assert_eq!(&seq, r, "every member sees the same sequence on {ch}"),
                None => {
                    reference.insert(ch, seq);
                }
            }
        }
    }
    // History is the same from every node.
    for node in &cluster.nodes {
        for ch in channels {
            let h = http(node).get(&format!("/v1/channels/{ch}/history?limit=1000")).await.json();
            let ids: Vec<(u64, u64)> = h["messages"].as_array().unwrap().iter().map(id_of).collect();
            let expected: Vec<(u64, u64)> = reference[ch].iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, expected, "history of {ch} on {}", node.addr());
        }
    }
    drop(cluster.redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_members_and_recovery_across_nodes() {
    let cluster = start_cluster(3, true, &[]);
    let (n0, n1, n2) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let mut x = connect(n0, "xena").await;
    x.join("plaza").await;
    let mut y = connect(n1, "yuri").await;
    assert_eq!(y.join("plaza").await["members"], json!(2));
    loop {
        let p = x.next_op("presence").await;
        if p["user"] == "yuri" {
            assert_eq!(p["event"], "join");
            break;
        }
    }
    let members = http(n2).get("/v1/channels/plaza/members").await.json();
    assert_eq!(members["members"], json!(["xena", "yuri"]));

    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(x.publish("plaza", &format!("m{i}")).await);
    }
    // A new client on a third node recovers from the middle.
    let mut z = connect(n2, "zed").await;
    let reply = z.ok(json!({"op":"join","channel":"plaza","since":ids[4]})).await;
    assert_eq!(reply["recovered"], json!(true));
    let texts: Vec<String> =
        z.messages(5).await.iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts, ["m5", "m6", "m7", "m8", "m9"]);
    // history op on any node
    let h = y.ok(json!({"op":"history","channel":"plaza","limit":3})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 3);

    // Yuri's connection dies abruptly: everyone sees the leave.
    drop(y);
    loop {
        let p = x.next_op("presence").await;
        if p["user"] == "yuri" && p["event"] == "leave" {
            break;
        }
    }
    let members = http(n0).get("/v1/channels/plaza/members").await.json();
    assert_eq!(members["members"], json!(["xena", "zed"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_dead_node_expire_with_presence_leave() {
    let mut cluster = start_cluster(2, true, &[]);
    let lobby = channel_owned_by(0, &[0, 1], "lobby");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    a.join(&lobby).await;
    let mut b = connect(&cluster.nodes[1], "bob").await;
    b.join(&lobby).await;
    let path = format!("/v1/channels/{lobby}/members");
    assert_eq!(http(&cluster.nodes[0]).get(&path).await.json()["members"], json!(["alice", "bob"]));
    // Node 1 dies without any chance to clean up; its heartbeat (TTL 2 s)
    // expires and the owner (node 0) removes its members.
    cluster.nodes[1].kill();
    drop(b);
    loop {
        let p = a.next_op("presence").await;
        if p["user"] == "bob" && p["event"] == "leave" {
            break;
        }
    }
    assert_eq!(http(&cluster.nodes[0]).get(&path).await.json()["members"], json!(["alice"]));
    // Messages keep flowing to the survivors.
    a.publish(&lobby, "still here").await;
    assert_eq!(a.next_op("message").await["text"], "still here");
}

/// Publishes `count` messages round-robin over `channels`, waiting for each
/// reply; returns the accepted (channel, id) pairs and the error codes seen.
async fn publish_all(
    client: &mut Client,
    channels: &[String],
    count: usize,
    tag: &str,
    pause: Duration,
) -> (Vec<(String, (u64, u64))>, Vec<String>) {
    let mut accepted = Vec::new();
    let mut errors = Vec::new();
    for i in 0..count {
        let ch = &channels[i % channels.len()];
        let r = client.request(json!({"op":"publish","channel":ch,"text":format!("{tag}:{i}")})).await;
        if r["ok"] == json!(true) {
            accepted.push((ch.clone(), id_of(&r["message_id"])));
        } else {
            errors.push(r["error"]["code"].as_str().unwrap_or("?").to_string());
        }
        tokio::time::sleep(pause).await;
    }
    (accepted, errors)
}

/// Reads until `client` has, for every channel, exactly the `expected` ids
/// (exactly once, in order); returns once they are all there.
async fn expect_exactly(client: &mut Client, expected: &BTreeMap<String, Vec<(u64, u64)>>, who: &str) {
    let total: usize = expected.values().map(Vec::len).sum();
    let msgs = client.messages(total).await;
    for (ch, ids) in expected {
        let got: Vec<(u64, u64)> = of_channel(&msgs, ch).into_iter().map(|(id, _)| id).collect();
        assert_eq!(&got, ids, "{who}: channel {ch} must get every accepted message once, in order");
    }
    client.assert_silent(Duration::from_millis(300)).await;
}

fn by_channel(accepted: &[(String, (u64, u64))]) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut map: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (ch, id) in accepted {
        map.entry(ch.clone()).or_default().push(*id);
    }
    for ids in map.values_mut() {
        ids.sort();
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_restarts_without_losing_accepted_messages() {
    let mut cluster = start_cluster(3, true, &["--request-timeout", "1s"]);
    let on_victim = channel_owned_by(2, &[0, 1, 2], "doomed");
    let on_survivor = channel_owned_by(0, &[0, 1, 2], "steady");
    let channels = vec![on_victim.clone(), on_survivor.clone()];
    let mut listener = connect(&cluster.nodes[1], "listener").await;
    let mut publisher = connect(&cluster.nodes[0], "publisher").await;
    let mut victim_client = connect(&cluster.nodes[2], "victim").await;
    for ch in &channels {
        listener.join(ch).await;
        publisher.join(ch).await;
        victim_client.join(ch).await;
    }
    // The victim's client reads until its node dies.
    let victim_reader = tokio::spawn(async move {
        let mut seen: Vec<Value> = Vec::new();
        while let Some(m) = victim_client.try_next_op("message", Duration::from_secs(5)).await {
            seen.push(m);
        }
        seen
    });
    let pause = Duration::from_millis(5);
    let (mut accepted, _) = publish_all(&mut publisher, &channels, 40, "before", pause).await;
    cluster.nodes[2].kill();
    let (during, errors) = publish_all(&mut publisher, &channels, 20, "during", pause).await;
    // Only the dead node's channel fails, with a clear error, not a hang.
    assert!(errors.iter().all(|e| e == "unavailable"), "{errors:?}");
    assert_eq!(errors.len(), 10, "every publish to the dead owner's channel fails");
    accepted.extend(during);
    cluster.nodes[2].restart();
    let (after, errors) = publish_all(&mut publisher, &channels, 40, "after", pause).await;
    assert!(errors.is_empty(), "after the restart everything is accepted: {errors:?}");
    accepted.extend(after);
    let expected = by_channel(&accepted);
    expect_exactly(&mut listener, &expected, "listener").await;

    // The victim's client reconnects to another node and recovers from
    // the last id it saw in each channel: together, exactly the accepted ones.
    let seen = victim_reader.await.expect("reader task");
    let mut recovered = connect(&cluster.nodes[0], "victim").await;
    for ch in &channels {
        let last = of_channel(&seen, ch).last().map(|(id, _)| format!("{}-{}", id.0, id.1));
        let mut req = json!({"op":"join","channel":ch});
        if let Some(last) = &last {
            req["since"] = json!(last);
        }
        let reply = recovered.ok(req).await;
        if last.is_some() {
            assert_eq!(reply["recovered"], json!(true));
        }
        let missing = expected[ch].len() - of_channel(&seen, ch).len();
        let rest = recovered.messages(missing).await;
        let mut all: Vec<(u64, u64)> = of_channel(&seen, ch).into_iter().map(|(id, _)| id).collect();
        all.extend(rest.iter().map(id_of));
        assert_eq!(all, expected[ch], "victim's client on {ch}: seen + recovered = accepted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_unavailable_then_everything_resumes() {
    let mut cluster = start_cluster(2, true, &["--request-timeout", "1s", "--redis-timeout", "500ms"]);
    let c0 = channel_owned_by(0, &[0, 1], "outage");
    let c1 = channel_owned_by(1, &[0, 1], "outage");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    let mut b = connect(&cluster.nodes[1], "bob").await;
    for ch in [&c0, &c1] {
        a.join(ch).await;
        b.join(ch).await;
    }
    a.publish(&c1, "before").await;
    assert_eq!(b.next_op("message").await["text"], "before");

    cluster.redis.kill();
    for ch in [&c0, &c1] {
        let started = std::time::Instant::now();
        let code = a.error_code(json!({"op":"publish","channel":ch,"text":"lost?"})).await;
        // `unavailable` when the node knew Redis was gone before sending (not
        // stored); `timeout` when the command may have reached Redis before it
        // died and Redis cannot be asked (outcome unknown: retry with a nonce).
        assert!(code == "unavailable" || code == "timeout", "publish during the outage got {code}");
        assert!(started.elapsed() < Duration::from_secs(5), "the error comes within the timeouts");
    }
    assert_eq!(a.error_code(json!({"op":"history","channel":c0})).await, "unavailable");
    for node in &cluster.nodes {
        wait_http_status(node, "/readyz", 503).await;
    }

    cluster.redis.restart();
    for node in &cluster.nodes {
        wait_http_status(node, "/readyz", 200).await;
    }
    // Nodes re-register their members by themselves; live delivery resumes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    while tokio::time::Instant::now() < deadline {
        let r = a.request(json!({"op":"publish","channel":c1,"text":"after"})).await;
        if r["ok"] == json!(true) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "publishing works again after Redis returns");
    assert_eq!(b.next_op("message").await["text"], "after");
    a.publish(&c0, "and here").await;
    assert_eq!(b.next_op("message").await["text"], "and here");
    let members = http(&cluster.nodes[1]).get(&format!("/v1/channels/{c0}/members")).await.json();
    assert_eq!(members["members"], json!(["alice", "bob"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_change_3_4_3_under_traffic_loses_nothing() {
    let redis = RedisServer::start();
    set_ring(&redis, 1, &[0, 1, 2]);
    let nodes: Vec<ChatNode> = (0..4)
        .map(|i| {
            ChatNode::builder()
                .args(["--redis-url", &redis.url(), "--node-id", &node_id(i), "--node-ttl", "2s"])
                .args(["--request-timeout", "2s"])
                .args(FAST)
                .start()
        })
        .collect();
    let channels: Vec<String> = (0..12).map(|i| format!("zone-{i}")).collect();
    let mut listeners = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut l = connect(node, &format!("listener-{i}")).await;
        for ch in &channels {
            l.join(ch).await;
        }
        listeners.push(l);
    }
    let mut publishers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut p = connect(node, &format!("publisher-{i}")).await;
        for ch in &channels {
            p.join(ch).await;
        }
        let channels = channels.clone();
        publishers.push(tokio::spawn(async move {
            let result =
                publish_all(&mut p, &channels, 150, &format!("p{i}"), Duration::from_millis(20)).await;
            (p, result)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    set_ring(&redis, 2, &[0, 1, 2, 3]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    set_ring(&redis, 3, &[0, 1, 2]);
    let mut accepted = Vec::new();
    let mut errors = Vec::new();
    for p in publishers {
        let (_client, (acc, errs)) = p.await.expect("publisher task");
        accepted.extend(acc);
        errors.extend(errs);
    }
    assert!(errors.iter().all(|e| e == "unavailable"), "only transient unavailability: {errors:?}");
    assert!(accepted.len() > 500, "most publishes succeed during ring changes ({} errors)", errors.len());
    let expected = by_channel(&accepted);
    for (i, l) in listeners.iter_mut().enumerate() {
        expect_exactly(l, &expected, &format!("listener {i}")).await;
    }
}

fn declare(redis: &RedisServer, config: Value) {
    let name = config["name"].as_str().expect("name").to_string();
    redis.cli(&["HSET", "shardchat:channels", &name, &config.to_string()]).expect("HSET config");
    redis.cli(&["INCR", "shardchat:channels:version"]).expect("INCR version");
}

/// Retries `check` for a few seconds (config is polled every second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_config_in_redis_takes_effect_on_every_node() {
    let cluster = start_cluster(2, true, &["--dynamic-channels", "deny"]);
    let (n0, n1) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut a = connect(n0, "alice").await;
    assert_eq!(a.error_code(json!({"op":"join","channel":"guild-7"})).await, "not_found");

    declare(
        &cluster.redis,
        json!({"name":"guild-7","maxMembers":1,"moderation":"reject","access":{"publishRoles":["officer"]}}),
    );
    // Both nodes learn the declaration (probing as alice, who will be the member).
    eventually("declaration", || {
        let urls = [n0.ws_url_as("alice"), n1.ws_url_as("alice")];
        async move {
            for url in urls {
                let mut c = Client::connect(&url).await;
                if c.request(json!({"op":"join","channel":"guild-7"})).await["ok"] != json!(true) {
                    return false;
                }
            }
            true
        }
    })
    .await;
    a.join("guild-7").await;
    // access: publishing needs the officer role
    assert_eq!(a.error_code(json!({"op":"publish","channel":"guild-7","text":"hi"})).await, "forbidden");
    // max members, enforced by the owner for joins on any node
    let mut b = connect(n1, "bob").await;
    assert_eq!(b.error_code(json!({"op":"join","channel":"guild-7"})).await, "channel_full");
    let mut officer = Client::connect(&format!("{}&roles=officer", n1.ws_url_as("alice"))).await;
    officer.join("guild-7").await;
    // moderation mode reject, wherever the publisher is connected
    assert_eq!(
        officer.error_code(json!({"op":"publish","channel":"guild-7","text":"you bastard"})).await,
        "filtered"
    );

    // An edit (retention of 2 messages) takes effect within seconds.
    declare(
        &cluster.redis,
        json!({"name":"guild-7","maxMembers":5,"moderation":"off","retention":{"maxMessages":2},"access":{}}),
    );
    eventually("retention edit", || {
        let node = n1.addr();
        let url = n0.ws_url_as("carol");
        async move {
            let mut c = Client::connect(&url).await;
            if c.request(json!({"op":"join","channel":"guild-7"})).await["ok"] != json!(true) {
                return false;
            }
            for i in 0..3 {
                c.request(json!({"op":"publish","channel":"guild-7","text":format!("r{i}")})).await;
            }
            let h = Http { addr: node }.get("/v1/channels/guild-7/history").await.json();
            h["messages"].as_array().map(|m| m.len()) == Some(2)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_channel_tells_every_member_and_drops_them() {
    let cluster = start_cluster(2, true, &[]);
    let doomed = channel_owned_by(1, &[0, 1], "doomed");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    let mut b = connect(&cluster.nodes[1], "bob").await;
    a.join(&doomed).await;
    b.join(&doomed).await;
    // What the operator sends on deletion (docs/redis-layout.md).
    let close = json!({"channel": doomed, "reason": "deleted"}).to_string();
    cluster
        .redis
        .cli(&["XADD", &format!("shardchat:inbox:{}", node_id(1)), "*", "k", "close", "d", &close])
        .expect("XADD");
    for c in [&mut a, &mut b] {
        assert_eq!(c.next_op("closed").await, json!({"op":"closed","channel":doomed,"reason":"deleted"}));
        assert_eq!(c.error_code(json!({"op":"publish","channel":doomed,"text":"x"})).await, "not_joined");
    }
    let members = http(&cluster.nodes[0]).get(&format!("/v1/channels/{doomed}/members")).await.json();
    assert_eq!(members["members"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_nodes_keep_reading_their_inbox_without_errors() {
    let cluster = start_cluster(2, true, &["--request-timeout", "1s"]);
    let remote = channel_owned_by(1, &[0, 1], "quiet");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    a.join(&remote).await;
    // Several empty blocking reads (1 s each) go by.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for node in &cluster.nodes {
        assert!(
            !node.log().contains("reading the inbox failed"),
            "an empty read is not an error:\n{}",
            node.log()
        );
    }
    // A request through both inboxes after the idle period still makes it.
    a.publish(&remote, "wake up").await;
    assert_eq!(a.next_op("message").await["text"], "wake up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_quickly_keeps_the_new_connection_a_member() {
    // A player's old connection going away while its new one joins must not
    // leave the new one without messages (leave and join race on the edge).
    let cluster = start_cluster(2, true, &[]);
    let room = channel_owned_by(1, &[0, 1], "reconnect");
    let mut speaker = connect(&cluster.nodes[1], "speaker").await;
    speaker.join(&room).await;
    let mut current = connect(&cluster.nodes[0], "player").await;
    current.join(&room).await;
    for i in 0..25 {
        let mut next = connect(&cluster.nodes[0], "player").await;
        // The old connection dies while the new one joins.
        let (_, joined) =
            tokio::join!(async { drop(current) }, next.request(json!({"op":"join","channel":room})));
        assert_eq!(joined["ok"], json!(true));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let text = format!("round {i}");
        speaker.publish(&room, &text).await;
        loop {
            let m = next.next_op("message").await;
            if m["text"] == text {
                break;
            }
        }
        current = next;
    }
}
