//! The faults a cluster meets every week, each with real processes: a node
//! started before its Redis, pending inbox entries that trimming deleted,
//! Redis full, Redis or an owner frozen mid-request, a node that falls
//! behind, Redis losing its data, a stuck inbox reader. Each test fails on
//! the behaviour it guards against.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use shardchat_tests::client::Client;
use shardchat_tests::cluster::{
    FAST, channel_owned_by, connect, eventually, http, node_id, set_ring, start_cluster, wait_http_status,
};
use shardchat_tests::node::ChatNode;
use shardchat_tests::redis::RedisServer;

fn node_on(
    redis: &RedisServer,
    i: usize,
    peers: &[usize],
    extra: &[&str],
) -> shardchat_tests::node::NodeBuilder {
    let peers: Vec<String> = peers.iter().map(|p| node_id(*p)).collect();
    let mut b = ChatNode::builder()
        .args(["--redis-url", &redis.url(), "--node-id", &node_id(i), "--node-ttl", "2s"])
        .args(FAST)
        .args(extra);
    if !peers.is_empty() {
        b = b.args(["--peers", &peers.join(",")]);
    }
    b
}

/// Texts of the channel's history, read over REST.
async fn history_texts(node: &ChatNode, channel: &str) -> Vec<String> {
    let h = http(node).get(&format!("/v1/channels/{channel}/history?limit=1000")).await.json();
    h["messages"]
        .as_array()
        .map(|m| m.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

/// Publishes until one is accepted (10 s at most), e.g. while Redis comes back.
async fn publish_until_accepted(client: &mut Client, channel: &str, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if client.request(json!({"op":"publish","channel":channel,"text":text})).await["ok"] == json!(true) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "publishing never worked again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends publishes without waiting; returns the replies by request id.
async fn pipelined(client: &mut Client, channel: &str, texts: &[String], first_id: u64) -> Vec<Value> {
    for (i, text) in texts.iter().enumerate() {
        client
            .send_json(json!({"op":"publish","id": first_id + i as u64,"channel":channel,"text":text}))
            .await;
    }
    let mut replies = Vec::new();
    while replies.len() < texts.len() {
        let v = client.next_op("reply").await;
        replies.push(v);
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_its_redis_connects_once_redis_comes_up() {
    let mut redis = RedisServer::reserve().expect("a port for redis");
    let node = node_on(&redis, 0, &[0], &[]).live_only().start();
    assert_eq!(http(&node).get("/readyz").await.status, 503, "not ready without Redis");
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.start_now();
    wait_http_status(&node, "/readyz", 200).await;
    let mut a = connect(&node, "alice").await;
    a.join("town-137").await;
    a.publish("town-137", "hello").await;
    assert_eq!(a.next_op("message").await["text"], "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_inbox_entries_that_trimming_deleted_do_not_stick_the_reader() {
    let redis = RedisServer::start();
    let inbox = format!("shardchat:inbox:{}", node_id(0));
    // What a previous run left: entries delivered to this node's consumer but
    // never acknowledged, then deleted by trimming.
    redis.raw(&["XGROUP", "CREATE", &inbox, "chat-node", "0", "MKSTREAM"]);
    for i in 0..5 {
        redis.raw(&["XADD", &inbox, "*", "k", "pres", "c", "gone", "e", "join", "u", &format!("u{i}")]);
    }
    redis.raw(&["XREADGROUP", "GROUP", "chat-node", &node_id(0), "COUNT", "10", "STREAMS", &inbox, ">"]);
    redis.raw(&["XTRIM", &inbox, "MAXLEN", "0"]);
    assert_eq!(redis.raw(&["XLEN", &inbox]), "0");
    let node = node_on(&redis, 0, &[0], &[]).start();
    let mut a = connect(&node, "alice").await;
    a.join("town-137").await;
    a.publish("town-137", "through the inbox").await;
    assert_eq!(a.next_op("message").await["text"], "through the inbox", "the reader moved past them");
    let pending = redis.raw(&["XPENDING", &inbox, "chat-node"]);
    assert!(pending.starts_with('0'), "every entry is acknowledged: {pending}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inboxes_keep_only_unread_entries_and_departed_nodes_lose_theirs() {
    let redis = RedisServer::start();
    set_ring(&redis, 1, &[0, 1]);
    let extra = ["--forget-nodes-after", "2s"];
    let n0 = node_on(&redis, 0, &[], &extra).start();
    let mut n1 = node_on(&redis, 1, &[], &extra).start();
    let channel = channel_owned_by(1, &[0, 1], "trim");
    let mut a = connect(&n0, "alice").await;
    let mut b = connect(&n1, "bob").await;
    a.join(&channel).await;
    b.join(&channel).await;
    let texts: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    for r in pipelined(&mut a, &channel, &texts, 1).await {
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    b.messages(300).await;
    eventually("handled inbox entries are deleted", || async {
        (0..2).all(|i| {
            redis.raw(&["XLEN", &format!("shardchat:inbox:{}", node_id(i))]).parse::<u64>().unwrap_or(99) <= 2
        })
    })
    .await;
    // Node 1 leaves the ring for good: after the grace its inbox goes too.
    n1.kill();
    set_ring(&redis, 2, &[0]);
    redis.raw(&["XADD", &format!("shardchat:inbox:{}", node_id(1)), "*", "k", "closed", "c", "x", "r", "y"]);
    eventually("the departed node's inbox is deleted", || async {
        redis.raw(&["EXISTS", &format!("shardchat:inbox:{}", node_id(1))]) == "0"
    })
    .await;
    assert_eq!(
        redis.raw(&["EXISTS", &format!("shardchat:inbox:{}", node_id(0))]),
        "1",
        "a live node keeps its inbox"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_created_on_demand_are_bounded() {
    let cluster = start_cluster(2, true, &["--max-dynamic-channels", "2"]);
    let mut a = connect(&cluster.nodes[0], "alice").await;
    a.join("dyn-a").await;
    a.join("dyn-b").await;
    let refused = a.request(json!({"op":"join","channel":"dyn-c"})).await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    // A channel that never stored anything stops counting once its last member leaves.
    a.ok(json!({"op":"leave","channel":"dyn-a"})).await;
    a.join("dyn-c").await;
    // One with history keeps counting (its history lives until its retention age).
    a.publish("dyn-b", "kept").await;
    a.ok(json!({"op":"leave","channel":"dyn-b"})).await;
    let refused = a.request(json!({"op":"join","channel":"dyn-d"})).await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_publishes_at_once_and_recovers_when_memory_frees() {
    let redis = RedisServer::start_with(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]);
    let node = node_on(&redis, 0, &[0], &["--request-timeout", "2s"]).start();
    let mut a = connect(&node, "alice").await;
    a.join("town-137").await;
    a.publish("town-137", "before").await;
    a.next_op("message").await;
    // Fill it up.
    redis.raw(&["SETRANGE", "filler", "9000000", "x"]);
    let started = std::time::Instant::now();
    let code = a.error_code(json!({"op":"publish","channel":"town-137","text":"refused"})).await;
    assert_eq!(code, "unavailable");
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not after the timeout");
    redis.raw(&["DEL", "filler"]);
    a.publish("town-137", "after").await;
    assert_eq!(a.next_op("message").await["text"], "after");
    assert_eq!(history_texts(&node, "town-137").await, ["before", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_owner_mid_pipeline_gets_unavailable_and_stores_none_of_them() {
    let cluster = start_cluster(2, true, &["--request-timeout", "1s"]);
    let channel = channel_owned_by(1, &[0, 1], "frozen");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    a.join(&channel).await;
    let first: Vec<String> = (0..10).map(|i| format!("ok{i}")).collect();
    for r in pipelined(&mut a, &channel, &first, 1).await {
        assert_eq!(r["ok"], json!(true), "{r}");
    }
    cluster.nodes[1].pause();
    let frozen: Vec<String> = (0..10).map(|i| format!("frozen{i}")).collect();
    let replies = pipelined(&mut a, &channel, &frozen, 100).await;
    let ids: HashSet<u64> = replies.iter().map(|r| r["id"].as_u64().expect("id")).collect();
    assert_eq!(ids.len(), 10, "exactly one reply per request id");
    for r in &replies {
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
    }
    cluster.nodes[1].resume();
    // The owner now reads the stale requests; their deadline has passed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.publish(&channel, "after").await;
    let stored = history_texts(&cluster.nodes[0], &channel).await;
    let mut expected = first.clone();
    expected.push("after".into());
    assert_eq!(stored, expected, "`unavailable` means not stored");
    let received: Vec<String> =
        a.messages(11).await.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(received, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_never_stores_a_publish_after_its_deadline() {
    let cluster = start_cluster(2, true, &["--request-timeout", "1s", "--redis-timeout", "500ms"]);
    let channel = channel_owned_by(0, &[0, 1], "stall");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    a.join(&channel).await;
    a.publish(&channel, "before").await;
    cluster.redis.pause();
    let replies = pipelined(&mut a, &channel, &["stalled".to_string()], 1).await;
    let code = replies[0]["error"]["code"].as_str().unwrap_or("").to_string();
    assert!(code == "unavailable" || code == "timeout", "{}", replies[0]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The command that waited in Redis's socket runs now, past its deadline.
    cluster.redis.resume();
    wait_http_status(&cluster.nodes[0], "/readyz", 200).await;
    publish_until_accepted(&mut a, &channel, "after").await;
    let stored = history_texts(&cluster.nodes[0], &channel).await;
    assert!(!stored.iter().any(|t| t == "stalled"), "stored after its deadline: {stored:?}");
    assert_eq!(stored[0], "before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_nonce_stores_once_on_any_node() {
    let cluster = start_cluster(2, true, &[]);
    let channel = channel_owned_by(1, &[0, 1], "nonce");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    a.join(&channel).await;
    let first = a.ok(json!({"op":"publish","channel":channel,"text":"once","nonce":"n-1"})).await;
    assert!(first.get("duplicate").is_none(), "{first}");
    let again = a.ok(json!({"op":"publish","channel":channel,"text":"once","nonce":"n-1"})).await;
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["duplicate"], json!(true));
    // The same player retrying through another node (after a reconnect).
    let mut a2 = connect(&cluster.nodes[1], "alice").await;
    a2.join(&channel).await;
    let elsewhere = a2.ok(json!({"op":"publish","channel":channel,"text":"once","nonce":"n-1"})).await;
    assert_eq!(elsewhere["message_id"], first["message_id"]);
    // Another sender's identical nonce is another message.
    let mut b = connect(&cluster.nodes[1], "bob").await;
    b.join(&channel).await;
    let bobs = b.ok(json!({"op":"publish","channel":channel,"text":"mine","nonce":"n-1"})).await;
    assert_ne!(bobs["message_id"], first["message_id"]);
    assert_eq!(history_texts(&cluster.nodes[0], &channel).await, ["once", "mine"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_past_the_replay_cap_says_not_recovered() {
    let cluster = start_cluster(1, true, &["--outbound-queue", "20000"]);
    let channel = "big";
    let mut a = connect(&cluster.nodes[0], "alice").await;
    a.join(channel).await;
    let since = a.publish(channel, "first").await;
    // More than a join replays (10,000), written straight into the history stream.
    let key = format!("shardchat:history:{channel}");
    let script = "for i = 1, 10005 do redis.call('XADD', KEYS[1], '*', 'f', 'u', 'x', 'm' .. i) end return 1";
    cluster.redis.raw(&["EVAL", script, "1", &key]);
    let mut b = connect(&cluster.nodes[0], "bob").await;
    let reply = b.ok(json!({"op":"join","channel":channel,"since":since})).await;
    assert_eq!(reply["recovered"], json!(false), "{reply}");
    let replay = b.messages(10_000).await;
    assert_eq!(replay.last().expect("replayed")["text"], "m10005", "the newest are replayed");
    // Within the cap it is complete.
    let mut c = connect(&cluster.nodes[0], "carol").await;
    let near = &replay[replay.len() - 10]["id"];
    let reply = c.ok(json!({"op":"join","channel":channel,"since":near})).await;
    assert_eq!(reply["recovered"], json!(true), "{reply}");
    assert_eq!(c.messages(9).await.len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_never_overflows_the_connection_queue() {
    let cluster = start_cluster(1, true, &["--outbound-queue", "100"]);
    let mut a = connect(&cluster.nodes[0], "alice").await;
    a.join("c").await;
    let since = a.publish("c", "first").await;
    for round in 0..5 {
        let texts: Vec<String> = (0..30).map(|i| format!("m{}", round * 30 + i)).collect();
        for r in pipelined(&mut a, "c", &texts, 1 + round * 30).await {
            assert_eq!(r["ok"], json!(true), "{r}");
        }
    }
    let mut b = connect(&cluster.nodes[0], "bob").await;
    let reply = b.ok(json!({"op":"join","channel":"c","since":since})).await;
    assert_eq!(reply["recovered"], json!(false), "more than the queue holds: {reply}");
    let replay = b.messages(50).await; // half the queue
    assert!(b.try_next_op("message", Duration::from_millis(200)).await.is_none(), "no more than that");
    assert_eq!(replay.last().expect("replayed")["text"], "m149");
    b.ok(json!({"op":"ping"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_told_of_a_gap_when_redis_loses_its_data() {
    let mut cluster = start_cluster(2, true, &[]);
    let channel = channel_owned_by(1, &[0, 1], "loss");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    a.join(&channel).await;
    a.publish(&channel, "before").await;
    a.next_op("message").await;
    cluster.redis.restart();
    let gap = a.next_op("gap").await;
    assert_eq!(gap["channel"], json!(channel), "{gap}");
    // Still a member: live messages continue.
    publish_until_accepted(&mut a, &channel, "after").await;
    assert_eq!(a.next_op("message").await["text"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_inbox_overflowed_tells_its_members() {
    let cluster = start_cluster(2, true, &["--inbox-maxlen", "20"]);
    let channel = channel_owned_by(0, &[0, 1], "overflow");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    let mut b = connect(&cluster.nodes[1], "bob").await;
    a.join(&channel).await;
    b.join(&channel).await;
    cluster.nodes[1].pause();
    for i in 0..60 {
        a.publish(&channel, &format!("m{i}")).await;
    }
    cluster.nodes[1].resume();
    let gap = b.next_op("gap").await;
    assert_eq!(gap["channel"], json!(channel), "{gap}");
    // Nothing is lost without notice, and delivery goes on.
    a.publish(&channel, "later").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = b.try_next_op("message", Duration::from_millis(300)).await;
        if m.is_some_and(|m| m["text"] == "later") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "bob never got live messages again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_inbox_reader_makes_the_node_not_ready_and_says_why() {
    let cluster = start_cluster(1, true, &["--redis-timeout", "500ms"]);
    let inbox = format!("shardchat:inbox:{}", node_id(0));
    cluster.redis.raw(&["DEL", &inbox]);
    cluster.redis.raw(&["SET", &inbox, "not a stream"]);
    wait_http_status(&cluster.nodes[0], "/readyz", 503).await;
    let body = http(&cluster.nodes[0]).get("/readyz").await.body;
    assert!(body.contains("inbox"), "{body}");
    let metrics = http(&cluster.nodes[0]).get("/metrics").await.body;
    assert!(metrics.contains("shardchat_readiness_problem{check=\"inbox\"} 1"), "{metrics}");
    cluster.redis.raw(&["DEL", &inbox]);
    wait_http_status(&cluster.nodes[0], "/readyz", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_pipelines_publishes_in_order_with_one_reply_each() {
    let cluster = start_cluster(3, true, &[]);
    let channel = channel_owned_by(2, &[0, 1, 2], "pipe");
    let mut a = connect(&cluster.nodes[0], "alice").await;
    let mut b = connect(&cluster.nodes[1], "bob").await;
    a.join(&channel).await;
    b.join(&channel).await;
    let texts: Vec<String> = (0..500).map(|i| format!("p{i}")).collect();
    let replies = pipelined(&mut a, &channel, &texts, 1).await;
    let reply_ids: Vec<u64> = replies.iter().map(|r| r["id"].as_u64().expect("id")).collect();
    assert_eq!(reply_ids, (1..=500).collect::<Vec<_>>(), "one reply per id, in request order");
    let message_ids: Vec<(u64, u64)> =
        replies.iter().map(|r| shardchat_tests::client::id_of(&json!({"id": r["message_id"]}))).collect();
    assert!(message_ids.windows(2).all(|w| w[0] < w[1]), "stored in the order sent");
    let got: Vec<String> =
        b.messages(500).await.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(got, texts, "members get them in that order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_entries_handed_out_on_a_broken_connection_are_read_again() {
    // Redis may hand a node inbox entries whose reply the broken connection
    // then loses: they are pending for the node's consumer and a new
    // `XREADGROUP >` never returns them. Here that delivery is made by hand
    // while the member's node is frozen, right after its connections were
    // killed; when it thaws, the message must still reach its member.
    let cluster = start_cluster(2, true, &[]);
    let channel = channel_owned_by(0, &[0, 1], "handed");
    let mut alice = connect(&cluster.nodes[0], "alice").await;
    let mut bob = connect(&cluster.nodes[1], "bob").await;
    alice.join(&channel).await;
    bob.join(&channel).await;
    alice.publish(&channel, "before").await;
    assert_eq!(bob.next_op("message").await["text"], "before");

    cluster.nodes[1].pause();
    cluster.redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]).expect("client kill");
    // The owner's own connections were killed too: retry (with a nonce, so
    // a retry after a timeout cannot store it twice) until it is stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alice.request(json!({"op":"publish","channel":channel,"text":"handed out","nonce":"h1"})).await["ok"]
        != json!(true)
    {
        assert!(tokio::time::Instant::now() < deadline, "the owner never stored it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let inbox = format!("shardchat:inbox:{}", node_id(1));
    let taken = cluster
        .redis
        .cli(&["XREADGROUP", "GROUP", "chat-node", &node_id(1), "COUNT", "100", "STREAMS", &inbox, ">"])
        .expect("xreadgroup");
    assert!(taken.contains("handed out"), "the entry is now pending for the node: {taken}");
    cluster.nodes[1].resume();

    let m = bob.next_op("message").await;
    assert_eq!(m["text"], "handed out", "{m}");
    alice.publish(&channel, "after").await;
    assert_eq!(bob.next_op("message").await["text"], "after");
}
