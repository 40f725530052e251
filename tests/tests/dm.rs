//! Direct messages across chat-node processes over a real Redis: delivery to
//! every connection of both users on every node, offline delivery, system
//! messages, and no accepted message lost when a conversation's owner dies.

use std::time::Duration;

use serde_json::{Value, json};
use shardchat_common::Ring;
use shardchat_common::redis_layout::{conversation_id, conversation_ring_key};
use shardchat_tests::client::Client;
use shardchat_tests::cluster::{connect, node_id, start_cluster};

const ADMIN: &str = "admin-token-for-tests-0123456789abcdef";

fn texts(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| a.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

/// Two users whose conversation `ring` places on node `owner`.
fn pair_owned_by(owner: usize, nodes: &[usize]) -> (String, String) {
    let ring =
        Ring::new(1, shardchat_common::DEFAULT_VNODES, nodes.iter().map(|i| node_id(*i))).expect("ring");
    (0..)
        .map(|i| (format!("a{i}"), format!("b{i}")))
        .find(|(a, b)| {
            ring.owner(&conversation_ring_key(&conversation_id(a, b))) == Some(node_id(owner).as_str())
        })
        .expect("some pair maps to every node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_of_both_users_on_every_node_gets_each_dm_once() {
    let cluster = start_cluster(3, true, &[]);
    let (a, b) = pair_owned_by(2, &[0, 1, 2]);
    let mut a0 = connect(&cluster.nodes[0], &a).await;
    let mut a1 = connect(&cluster.nodes[1], &a).await;
    let mut b0 = connect(&cluster.nodes[0], &b).await;
    let mut b1 = connect(&cluster.nodes[1], &b).await;
    let mut b1bis = connect(&cluster.nodes[1], &b).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // registrations reach Redis
    let mut sent = Vec::new();
    for i in 0..20 {
        let r = a0.ok(json!({"op":"dm","to":b,"text":format!("m{i}")})).await;
        sent.push(r["message_id"].clone());
    }
    for c in [&mut b0, &mut b1, &mut b1bis, &mut a1, &mut a0] {
        let mut got = Vec::new();
        for _ in 0..20 {
            got.push(c.next_op("dm").await["id"].clone());
        }
        assert_eq!(got, sent, "each once, in order");
        assert!(c.try_next_op("dm", Duration::from_millis(200)).await.is_none(), "no duplicates");
    }
    // The other way round, and the conversation reads the same from any node.
    b1.ok(json!({"op":"dm","to":a,"text":"back"})).await;
    assert_eq!(a0.next_op("dm").await["text"], "back");
    let h = b0.ok(json!({"op":"dm_history","with":a,"limit":2})).await;
    assert_eq!(texts(&h["messages"]), ["m19", "back"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_player_gets_everything_on_reconnect_including_system_messages() {
    let cluster = start_cluster(2, true, &["--admin-token", ADMIN]);
    let (a, b) = pair_owned_by(1, &[0, 1]);
    let mut alice = connect(&cluster.nodes[0], &a).await;
    for i in 0..5 {
        alice.ok(json!({"op":"dm","to":b,"text":format!("m{i}")})).await;
    }
    let auth = format!("Bearer {ADMIN}");
    let http = shardchat_tests::cluster::http(&cluster.nodes[1]);
    let r = http
        .request(
            "POST",
            &format!("/v1/users/{b}/messages"),
            &[("Authorization", &auth)],
            Some(r#"{"text":"your auction sold"}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut bob = connect(&cluster.nodes[0], &b).await;
    let sync = bob.ok(json!({"op":"dm_sync"})).await;
    assert_eq!(texts(&sync["messages"]), ["m0", "m1", "m2", "m3", "m4", "your auction sold"]);
    assert_eq!(sync["recovered"], json!(true));
    assert_eq!(sync["messages"][5]["from"], "system");
    let unread = bob.ok(json!({"op":"dm_unread"})).await;
    assert_eq!(unread["unread"][&a], json!(5));
    // A second device syncing from the cursor gets nothing twice.
    let mut bob2 = connect(&cluster.nodes[1], &b).await;
    let again = bob2.ok(json!({"op":"dm_sync","since":sync["cursor"]})).await;
    assert_eq!(texts(&again["messages"]), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_conversations_owner_loses_no_accepted_dm() {
    let mut cluster = start_cluster(3, true, &["--request-timeout", "1s"]);
    let (a, b) = pair_owned_by(2, &[0, 1, 2]);
    let mut alice = connect(&cluster.nodes[0], &a).await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        if i == 20 {
            cluster.nodes[2].kill();
        }
        if i == 40 {
            cluster.nodes[2].restart();
        }
        let r = alice.request(json!({"op":"dm","to":b,"text":format!("m{i}"),"nonce":format!("n{i}")})).await;
        if r["ok"] == json!(true) {
            accepted.push(format!("m{i}"));
        } else {
            let code = r["error"]["code"].as_str().unwrap_or("").to_string();
            assert!(code == "unavailable" || code == "timeout", "{r}");
            refused += 1;
        }
    }
    assert!(refused > 0, "the owner was down for a while");
    assert!(accepted.len() >= 40, "{accepted:?}");
    let mut bob = connect(&cluster.nodes[1], &b).await;
    let mut got = Vec::new();
    let mut since = Value::Null;
    loop {
        let sync = bob.ok(json!({"op":"dm_sync","since":since})).await;
        got.extend(texts(&sync["messages"]));
        since = sync["cursor"].clone();
        if sync.get("truncated").is_none() {
            break;
        }
    }
    for m in &accepted {
        assert!(got.contains(m), "accepted {m} is missing from {got:?}");
    }
    let unique: std::collections::HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no duplicates: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dm_settings_and_refusals_hold_across_nodes() {
    let cluster = start_cluster(2, true, &[]);
    let mut alice = connect(&cluster.nodes[0], "alice").await;
    let mut bob = connect(&cluster.nodes[1], "bob").await;
    bob.ok(json!({"op":"dm_settings","allow":"none"})).await;
    assert_eq!(alice.error_code(json!({"op":"dm","to":"bob","text":"hi"})).await, "forbidden");
    bob.ok(json!({"op":"dm","to":"alice","text":"hi alice"})).await;
    alice.ok(json!({"op":"dm","to":"bob","text":"hi bob"})).await;
    assert_eq!(bob.next_op("dm").await["text"], "hi alice");
    assert_eq!(bob.next_op("dm").await["text"], "hi bob");
    let mut me: Client = connect(&cluster.nodes[0], "carol").await;
    assert_eq!(me.error_code(json!({"op":"dm","to":"carol","text":"me"})).await, "bad_request");
}
