//! A Redis and several chat-node processes sharding over it, for the
//! cluster tests: start them, find a channel a given node owns, connect,
//! change the ring.

use std::time::Duration;

use serde_json::json;

use crate::client::{Client, Http};
use crate::node::ChatNode;
use crate::redis::RedisServer;

/// A channel name that `ring` gives to `owner`.
pub fn channel_owned_by(owner: usize, members: &[usize], prefix: &str) -> String {
    let ring =
        shardchat_common::Ring::new(1, shardchat_common::DEFAULT_VNODES, members.iter().map(|i| node_id(*i)))
            .expect("valid ring");
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|c| ring.owner(c) == Some(node_id(owner).as_str()))
        .expect("some channel maps to every node")
}

pub const FAST: [&str; 6] =
    ["--publish-rate", "100000", "--publish-burst", "100000", "--frame-rate", "100000"];

pub struct Cluster {
    pub redis: RedisServer,
    pub nodes: Vec<ChatNode>,
}

pub fn node_id(i: usize) -> String {
    format!("chat-node-{i}")
}

/// Starts Redis and `n` nodes. `peers`: a static `--peers` ring of all of
/// them; otherwise the nodes follow the ring key in Redis.
pub fn start_cluster(n: usize, peers: bool, extra: &[&str]) -> Cluster {
    let redis = RedisServer::start();
    let all: Vec<String> = (0..n).map(node_id).collect();
    let nodes = (0..n)
        .map(|i| {
            let mut b = ChatNode::builder()
                .args(["--redis-url", &redis.url(), "--node-id", &node_id(i), "--node-ttl", "2s"])
                .args(FAST)
                .args(extra);
            if peers {
                b = b.args(["--peers", &all.join(",")]);
            }
            b.start()
        })
        .collect();
    Cluster { redis, nodes }
}

pub fn http(node: &ChatNode) -> Http {
    Http { addr: node.addr() }
}

pub async fn connect(node: &ChatNode, user: &str) -> Client {
    Client::connect(&node.ws_url_as(user)).await
}

pub fn set_ring(redis: &RedisServer, epoch: u64, nodes: &[usize]) {
    let ring = json!({"epoch": epoch, "vnodes": 128, "nodes": nodes.iter().map(|i| node_id(*i)).collect::<Vec<_>>()});
    redis.cli(&["SET", "shardchat:ring", &ring.to_string()]).expect("set ring");
}

/// Polls `path` until it answers `status` (15 s at most).
pub async fn wait_http_status(node: &ChatNode, path: &str, status: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = http(node).get(path).await.status;
        if got == status {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} stayed {got}, expected {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` until it holds (10 s at most).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
