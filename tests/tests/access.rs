//! Access that fails closed, over real Redis and chat-node processes: a
//! role-restricted channel stays restricted when its declaration disappears
//! (a ChatChannel deleted with `deletionPolicy: Retain`), across a node
//! restart, and for a node that starts after Redis came back empty.

use std::time::Duration;

use serde_json::{Value, json};
use shardchat_tests::client::{Client, Http};
use shardchat_tests::node::ChatNode;
use shardchat_tests::redis::RedisServer;

const GUILD: &str = "guild-7";

/// What the operator writes for a ChatChannel (see operator/src/store.rs).
fn declare(redis: &RedisServer, config: Value) {
    let name = config["name"].as_str().expect("name").to_string();
    redis.cli(&["HSET", "shardchat:channels", &name, &config.to_string()]).expect("HSET config");
    redis.cli(&["INCR", "shardchat:channels:version"]).expect("INCR version");
}

/// What the operator does when a ChatChannel with `deletionPolicy: Retain`
/// is deleted: the config goes, the history stays.
fn remove_retaining_history(redis: &RedisServer, name: &str) {
    redis.cli(&["HDEL", "shardchat:channels", name]).expect("HDEL config");
    redis.cli(&["INCR", "shardchat:channels:version"]).expect("INCR version");
}

fn node(redis: &RedisServer, id: &str, ring: &str) -> ChatNode {
    ChatNode::builder().args(["--redis-url", &redis.url(), "--node-id", id, "--peers", ring]).start()
}

async fn as_user(node: &ChatNode, user: &str, roles: &str) -> Client {
    Client::connect(&format!("{}&roles={roles}", node.ws_url_as(user))).await
}

async fn join_code(node: &ChatNode, user: &str, roles: &str) -> String {
    let mut c = as_user(node, user, roles).await;
    let r = c.request(json!({"op":"join","channel":GUILD})).await;
    if r["ok"] == json!(true) { "ok".into() } else { r["error"]["code"].as_str().unwrap_or("?").to_string() }
}

/// Polls `check` (configs are followed every second) for a few seconds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn retained_record(redis: &RedisServer) -> String {
    redis.raw(&["HGET", "shardchat:access", GUILD])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_channel_deleted_with_retain_stays_restricted() {
    let redis = RedisServer::start();
    declare(&redis, json!({"name": GUILD, "access": {"joinRoles": ["guild-7"]}}));
    let mut n0 = node(&redis, "n0", "n0");
    assert_eq!(join_code(&n0, "outsider", "").await, "forbidden");
    let mut member = as_user(&n0, "member", "guild-7").await;
    member.join(GUILD).await;
    member.publish(GUILD, "guild secret").await;

    remove_retaining_history(&redis, GUILD);
    eventually("the node applying the removal", || {
        n0.log().contains("declaration removed; the channel keeps its role restrictions")
    })
    .await;
    // Without a declaration the channel would be dynamic and public; it is not.
    assert_eq!(join_code(&n0, "outsider", "").await, "forbidden");
    let http = Http { addr: n0.addr() };
    assert_eq!(http.get(&format!("/v1/channels/{GUILD}/history")).await.status, 403);
    assert_eq!(http.get(&format!("/v1/channels/{GUILD}/members")).await.status, 403);
    let list = http.get("/v1/channels").await.json();
    assert!(!list.to_string().contains(GUILD), "hidden from the anonymous list: {list}");
    // Members still read what was retained.
    let mut again = as_user(&n0, "member-2", "guild-7").await;
    let h = again.request(json!({"op":"history","channel":GUILD})).await;
    assert_eq!(h["messages"][0]["text"], "guild secret", "{h}");
    assert!(retained_record(&redis).contains("guild-7"), "shared through {{p}}:access");

    // A restarted node (nothing in memory) learns it from Redis.
    n0.restart();
    assert_eq!(join_code(&n0, "outsider", "").await, "forbidden");
    assert_eq!(join_code(&n0, "member-3", "guild-7").await, "ok");

    // A new declaration (here: public) replaces the retained access.
    declare(&redis, json!({"name": GUILD}));
    eventually("the public redeclaration", || retained_record(&redis).is_empty()).await;
    assert_eq!(join_code(&n0, "outsider", "").await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_channel_deleted_with_its_history_stays_restricted_until_redeclared() {
    let redis = RedisServer::start();
    declare(&redis, json!({"name": GUILD, "access": {"joinRoles": ["guild-7"]}}));
    let n0 = node(&redis, "n0", "n0");
    eventually("the access record", || !retained_record(&redis).is_empty()).await;
    // deletionPolicy: Delete — the config and the history go (operator/src/store.rs).
    remove_retaining_history(&redis, GUILD);
    redis.cli(&["DEL", &format!("shardchat:history:{GUILD}")]).expect("DEL history");
    eventually("the node applying the removal", || {
        n0.log().contains("declaration removed; the channel keeps its role restrictions")
    })
    .await;
    // Fail closed: the name does not turn into a public channel by itself.
    assert_eq!(join_code(&n0, "outsider", "").await, "forbidden");
    assert_eq!(join_code(&n0, "member", "guild-7").await, "ok");
    // Releasing the name is explicit: declare it without roles (then the
    // declaration may go too, a public channel keeps nothing).
    declare(&redis, json!({"name": GUILD}));
    eventually("the public redeclaration", || retained_record(&redis).is_empty()).await;
    assert_eq!(join_code(&n0, "outsider", "").await, "ok");
    remove_retaining_history(&redis, GUILD);
    eventually("the removal", || n0.log().matches("channel configs updated").count() >= 4).await;
    assert_eq!(join_code(&n0, "outsider-2", "").await, "ok");
    assert!(retained_record(&redis).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starting_after_redis_came_back_empty_keeps_restricted_channels_restricted() {
    let mut redis = RedisServer::start();
    declare(&redis, json!({"name": GUILD, "access": {"joinRoles": ["guild-7"]}}));
    let a = node(&redis, "a", "a");
    eventually("the access record", || !retained_record(&redis).is_empty()).await;

    // Redis restarts empty: configs, records and history are gone. The
    // operator republishes configs only on its next reconcile (up to a
    // minute later); the surviving node puts the record back at once.
    redis.restart();
    assert_eq!(redis.raw(&["EXISTS", "shardchat:channels"]), "0");
    eventually("the surviving node restoring the record", || !retained_record(&redis).is_empty()).await;
    assert_eq!(join_code(&a, "outsider", "").await, "forbidden", "the survivor keeps what it knew");

    // A node that starts now has no config for the channel, yet it is not public.
    let b = node(&redis, "b", "a");
    assert_eq!(join_code(&b, "outsider", "").await, "forbidden");
    assert_eq!(Http { addr: b.addr() }.get(&format!("/v1/channels/{GUILD}/history")).await.status, 403);
    // Members get in (through the owner, once its inbox is recreated).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match join_code(&b, "member", "guild-7").await.as_str() {
            "ok" => break,
            "unavailable" if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("a member's join on the new node: {other}"),
        }
    }
}

/// Tokens in a query string (`?token=`, the last resort for clients that
/// can set neither a header nor a subprotocol) never reach the node's log,
/// even at trace level: a guard against ever logging request URIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_never_logs_a_token() {
    // Not a valid JWT for this node: refused (401), and logged nowhere.
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjo0MDAwMDAwMDAwfQ.c2VjcmV0LXNpZ25hdHVyZQ";
    let node = ChatNode::builder()
        .args(["--jwt-secret", "node-log-test-secret-of-32-bytes-or-more"])
        .env("RUST_LOG", "trace")
        .start();
    let url = format!("{}?token={forged}", node.ws_url());
    assert!(tokio_tungstenite::connect_async(&url).await.is_err(), "a forged token is refused");
    let _ = Http { addr: node.addr() }.get(&format!("/v1/channels?token={forged}")).await;
    // The node has handled both requests once /metrics shows the refusal.
    eventually("the refusal being counted", || {
        node.http_get("/metrics")
            .is_ok_and(|(_, m)| m.contains("shardchat_auth_failures_total{reason=\"invalid\"} 1"))
    })
    .await;
    let log = node.log();
    assert!(log.contains("clients must present a JWT"), "the node's log was read:\n{log}");
    for part in forged.split('.') {
        assert!(!log.contains(part), "token material in the node's log:\n{log}");
    }
}
