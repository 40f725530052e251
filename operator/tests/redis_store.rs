//! The operator's Redis writes, against a real redis-server, checked with
//! redis-cli exactly as docs/redis-layout.md describes them.

mod support;

use std::time::Duration;

use chat_operator::crd::DeletionPolicy;
use chat_operator::ring::RingSnapshot;
use chat_operator::ring_manager::publish;
use chat_operator::store::Store;
use support::redis::RedisServer;

async fn store(redis: &RedisServer) -> Store {
    Store::connect(&redis.url(), "sc", Duration::from_secs(2)).await.unwrap()
}

#[tokio::test]
async fn config_is_published_with_a_version_bump_only_on_change() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let cfg = r#"{"name":"town-137","retention":{"maxMessages":50,"maxAgeSeconds":600},"access":{}}"#;
    assert!(s.put_config("town-137", cfg).await.unwrap());
    assert!(!s.put_config("town-137", cfg).await.unwrap());
    assert_eq!(redis.raw(&["HGET", "sc:channels", "town-137"]), cfg);
    assert_eq!(redis.raw(&["GET", "sc:channels:version"]), "1");
    assert!(s.put_config("town-137", r#"{"name":"town-137"}"#).await.unwrap());
    assert_eq!(redis.raw(&["GET", "sc:channels:version"]), "2");
    assert_eq!(s.get_config("town-137").await.unwrap().as_deref(), Some(r#"{"name":"town-137"}"#));
}

#[tokio::test]
async fn delete_policy_removes_config_and_history_and_sends_close() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    s.put_config("town-137", r#"{"name":"town-137"}"#).await.unwrap();
    s.put_config("town-138", r#"{"name":"town-138"}"#).await.unwrap();
    redis.raw(&["XADD", "sc:history:town-137", "*", "m", "hello"]);
    redis.raw(&["XADD", "sc:history:town-138", "*", "m", "hello"]);
    s.remove_channel("town-137", DeletionPolicy::Delete, Some("chat-node-1")).await.unwrap();
    assert_eq!(redis.raw(&["HEXISTS", "sc:channels", "town-137"]), "0");
    assert_eq!(redis.raw(&["GET", "sc:channels:version"]), "3");
    assert_eq!(redis.raw(&["EXISTS", "sc:history:town-137"]), "0");
    let inbox = redis.raw(&["XRANGE", "sc:inbox:chat-node-1", "-", "+"]);
    let lines: Vec<&str> = inbox.lines().collect();
    assert_eq!(&lines[1..], ["k", "close", "d", r#"{"channel":"town-137","reason":"deleted"}"#], "{inbox}");
    // Retried cleanup: no second version bump for a field already gone.
    s.remove_channel("town-137", DeletionPolicy::Retain, None).await.unwrap();
    assert_eq!(redis.raw(&["GET", "sc:channels:version"]), "3");
    // Retain keeps history.
    s.remove_channel("town-138", DeletionPolicy::Retain, Some("chat-node-1")).await.unwrap();
    assert_eq!(redis.raw(&["HEXISTS", "sc:channels", "town-138"]), "0");
    assert_eq!(redis.raw(&["GET", "sc:channels:version"]), "4");
    assert_eq!(redis.raw(&["EXISTS", "sc:history:town-138"]), "1");
    assert_eq!(redis.raw(&["XLEN", "sc:inbox:chat-node-1"]), "1");
}

/// Where the floor would be recorded (the Lease, in the operator).
async fn no_floor(_epoch: u64) -> Result<(), chat_operator::store::StoreError> {
    Ok(())
}

fn members(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("chat-node-{i}")).collect()
}

#[tokio::test]
async fn ring_epoch_only_moves_forward() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let r1 = publish(&s, &members(3), 512, None, 0, no_floor).await.unwrap();
    assert_eq!(r1, RingSnapshot { epoch: 1, vnodes: 512, nodes: members(3) });
    assert_eq!(
        redis.raw(&["GET", "sc:ring"]),
        r#"{"epoch":1,"vnodes":512,"nodes":["chat-node-0","chat-node-1","chat-node-2"]}"#
    );
    // Same members: same epoch, nothing written.
    assert_eq!(publish(&s, &members(3), 512, Some(&r1), 0, no_floor).await.unwrap(), r1);
    let r2 = publish(&s, &members(4), 512, Some(&r1), 0, no_floor).await.unwrap();
    assert_eq!(r2.epoch, 2);
    // Redis restarted empty: the last ring comes back unchanged.
    redis.raw(&["FLUSHALL"]);
    assert_eq!(publish(&s, &members(4), 512, Some(&r2), 0, no_floor).await.unwrap(), r2);
    assert_eq!(s.ring().await.unwrap(), Some(r2.clone()));
    // ... and after an operator restart too, thanks to the recorded floor.
    redis.raw(&["FLUSHALL"]);
    assert_eq!(publish(&s, &members(4), 512, None, 2, no_floor).await.unwrap().epoch, 3);
    // A foreign, higher epoch in Redis: we go above it.
    redis.raw(&["SET", "sc:ring", r#"{"epoch":40,"vnodes":512,"nodes":["chat-node-0"]}"#]);
    assert_eq!(publish(&s, &members(4), 512, Some(&r2), 0, no_floor).await.unwrap().epoch, 41);
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_hang() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    s.ping().await.unwrap();
    drop(redis);
    let started = std::time::Instant::now();
    assert!(s.put_config("x", "{}").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn the_operator_writes_over_tls_when_the_url_says_rediss() {
    let redis = RedisServer::start_tls();
    let ca = redis.ca_file();
    let s = Store::connect_with_ca(&redis.url(), Some(&ca), "sc", Duration::from_secs(2)).await.unwrap();
    assert!(s.put_config("town-137", r#"{"name":"town-137"}"#).await.unwrap());
    assert_eq!(redis.raw(&["HGET", "sc:channels", "town-137"]), r#"{"name":"town-137"}"#);
    // Without the CA the server is not trusted: commands fail, nothing is written.
    let untrusted = Store::connect(&redis.url(), "other", Duration::from_millis(500)).await.unwrap();
    assert!(untrusted.put_config("town-1", r#"{"name":"town-1"}"#).await.is_err());
    assert_eq!(redis.raw(&["EXISTS", "other:channels"]), "0");
}

#[tokio::test]
async fn redis_urls_the_operator_cannot_honour_are_refused() {
    for url in ["redis-sentinel://127.0.0.1:26379", "redis+unix:///tmp/r.sock", "127.0.0.1:6379"] {
        let err = Store::connect(url, "sc", Duration::from_millis(200)).await.unwrap_err().to_string();
        assert!(err.contains("redis://") || err.contains("scheme"), "{url}: {err}");
    }
    let err = Store::connect_with_ca(
        "rediss://127.0.0.1:1",
        Some(std::path::Path::new("/nonexistent.pem")),
        "sc",
        Duration::from_millis(200),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent.pem"), "{err}");
}
