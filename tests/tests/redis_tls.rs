//! TLS to Redis (`rediss://`) for chat-node: against a `redis-server` that
//! only speaks TLS, with a certificate from a CA this test makes. A node
//! that trusts the CA works end to end; one that does not never becomes
//! ready (it must not fall back to plaintext); URLs whose scheme the build
//! cannot honour are refused at start.

use std::time::Duration;

use serde_json::json;
use shardchat_tests::client::Client;
use shardchat_tests::node::ChatNode;
use shardchat_tests::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_talks_tls_to_redis_with_the_ca_it_is_given() {
    let redis = RedisServer::start_tls();
    assert!(redis.url().starts_with("rediss://"));
    let ca = redis.ca_file().display().to_string();
    let node = ChatNode::builder()
        .args(["--redis-url", &redis.url(), "--redis-ca-file", &ca, "--node-id", "tls-0", "--peers", "tls-0"])
        .start();
    let mut c = Client::connect(&node.ws_url_as("alice")).await;
    c.join("town-1").await;
    let id = c.publish("town-1", "over tls").await;
    // Stored in Redis, read back over TLS by redis-cli.
    let stored = redis.raw(&["XRANGE", "shardchat:history:town-1", "-", "+"]);
    assert!(stored.contains("over tls"), "{stored}");
    let h = c.ok(json!({"op":"history","channel":"town-1"})).await;
    assert_eq!(h["messages"][0]["id"], id.as_str());
}

#[test]
fn a_node_that_does_not_trust_the_server_never_becomes_ready() {
    let redis = RedisServer::start_tls();
    // No CA file: the throw-away CA is not among the system roots.
    let node = ChatNode::builder()
        .args(["--redis-url", &redis.url(), "--node-id", "tls-1", "--peers", "tls-1"])
        .ready_timeout(Duration::from_secs(4))
        .try_start()
        .map(Some)
        .unwrap_or_else(|e| {
            assert!(e.to_string().contains("not ready"), "{e:#}");
            None
        });
    assert!(node.is_none(), "a node must not reach Redis without verifying its certificate");
    // A plaintext URL to the TLS port does not work either (no silent downgrade
    // the other way round).
    let plain = redis.url().replace("rediss://", "redis://");
    let plain_node = ChatNode::builder()
        .args(["--redis-url", &plain, "--node-id", "tls-2", "--peers", "tls-2"])
        .ready_timeout(Duration::from_secs(3))
        .try_start();
    assert!(plain_node.is_err());
}

#[test]
fn redis_urls_the_build_cannot_honour_are_refused_at_start() {
    for url in
        ["redis-sentinel://127.0.0.1:26379", "redis+unix:///tmp/redis.sock", "rediss-cluster://h:1", "h:6379"]
    {
        let err = ChatNode::builder()
            .args(["--redis-url", url, "--node-id", "n0"])
            .ready_timeout(Duration::from_secs(10))
            .try_start()
            .err()
            .unwrap_or_else(|| panic!("{url} must be refused"));
        let text = format!("{err:#}");
        assert!(text.contains("exited"), "the node exits at once: {text}");
        assert!(text.contains("redis://") && text.contains("rediss://"), "says what works: {text}");
    }
    let err = ChatNode::builder()
        .args([
            "--redis-url",
            "rediss://:hunter2hunter2@127.0.0.1:1",
            "--redis-ca-file",
            "/nonexistent/ca.pem",
        ])
        .args(["--node-id", "n0"])
        .try_start()
        .err()
        .expect("an unreadable CA file is fatal");
    let text = format!("{err:#}");
    assert!(text.contains("/nonexistent/ca.pem") && text.contains("exited"), "{text}");
    assert!(!text.contains("hunter2"), "no password in messages: {text}");
}
