//! Dead-edge cleanup against a real Redis, through the node's own scripts.
//!
//! An owner's sweep finds an edge's heartbeat missing and then removes that
//! edge's memberships — a few round trips later. When Redis restarted, the
//! edge's heartbeat comes back meanwhile and the edge re-registers its
//! members; a removal that ran after that re-registration would cut those
//! members off for good while they stay subscribed (the CI soak lost 9 % of
//! its deliveries that way). So every removal re-checks the heartbeat
//! atomically with itself: these tests call the removals with the
//! heartbeat present and absent.

use std::sync::Arc;
use std::time::Duration;

use chat_node::dm::DmLimits;
use chat_node::owner::backend::{ChannelBatch, OpResult, OwnerBackend, ReadyOp};
use chat_node::redis::backend::RedisBackend;
use chat_node::redis::dm::RedisDms;
use chat_node::redis::{RedisCtx, RedisSettings};
use fred::prelude::ClientLike;
use shardchat_common::{ChannelName, Retention};
use shardchat_tests::redis::RedisServer;

const EDGE: &str = "n1#0123456789ab";

async fn connect(redis: &RedisServer) -> Arc<RedisCtx> {
    let ctx = RedisCtx::connect(RedisSettings {
        url: redis.url(),
        ca_file: None,
        prefix: "shardchat".into(),
        command_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        inbox_maxlen: 1_000,
        dedup_window: Duration::from_secs(60),
        max_dynamic_channels: 100,
    })
    .await
    .expect("client");
    ctx.client.wait_for_connect().await.expect("connected to Redis");
    ctx
}

/// Registers `user` on `edge` in `channel` with the owner's apply script.
async fn join(backend: &RedisBackend, channel: &ChannelName, user: &str, edge: &str) {
    let batch = ChannelBatch {
        channel: channel.clone(),
        retention: Retention::default(),
        max_members: 100,
        dynamic: false,
        ops: vec![ReadyOp::Join { user: user.into(), edge: edge.into() }],
    };
    let results = backend.apply(Arc::new(vec![batch])).await.expect("join applied");
    assert!(matches!(results[0][0], OpResult::Joined { .. }), "{results:?}");
}

fn heartbeat(redis: &RedisServer, edge: &str) {
    redis.raw(&["SET", &format!("shardchat:alive:{edge}"), "1", "PX", "60000"]);
}

fn heartbeat_expired(redis: &RedisServer, edge: &str) {
    redis.raw(&["DEL", &format!("shardchat:alive:{edge}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_whose_heartbeat_is_back_keeps_its_members() {
    let redis = RedisServer::start();
    let ctx = connect(&redis).await;
    let backend = RedisBackend::new(ctx);
    let channel = ChannelName::new("town-1").expect("name");
    join(&backend, &channel, "bob", EDGE).await;
    join(&backend, &channel, "carol", "n2#ba9876543210").await;

    // The sweep saw the heartbeat missing; the edge heartbeat and
    // re-registered before the removal ran.
    heartbeat(&redis, EDGE);
    assert_eq!(backend.drop_edge(&channel, EDGE).await.expect("drop"), 0);
    assert_eq!(backend.members(&channel).await.expect("members"), ["bob", "carol"]);

    // Really dead: its members go, the others stay.
    heartbeat_expired(&redis, EDGE);
    assert_eq!(backend.drop_edge(&channel, EDGE).await.expect("drop"), 1);
    assert_eq!(backend.members(&channel).await.expect("members"), ["carol"]);
    let edges = redis.raw(&["HKEYS", "shardchat:edges:town-1"]);
    assert!(!edges.contains(EDGE), "no fan-out to the dead edge any more: {edges}");
    assert!(!redis.raw(&["SMEMBERS", "shardchat:edges"]).contains(EDGE), "nothing left to sweep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_whose_heartbeat_is_back_keeps_its_direct_message_routes_and_stays_known() {
    let redis = RedisServer::start();
    let ctx = connect(&redis).await;
    let limits = DmLimits {
        max_messages: 100,
        max_age: Duration::from_secs(3600),
        mailbox_max: 100,
        per_recipient_rate: 10,
    };
    let dms = RedisDms::new(ctx.clone(), limits, EDGE.into());
    let backend = RedisBackend::new(ctx);
    dms.reregister(&["bob".into(), "carol".into()]).await;
    let routes = |redis: &RedisServer| redis.raw(&["HKEYS", "shardchat:user-edges:bob"]);
    assert!(routes(&redis).contains(EDGE));

    heartbeat(&redis, EDGE);
    assert_eq!(dms.drop_edge(EDGE).await.expect("drop"), None, "a live edge keeps its routes");
    assert!(routes(&redis).contains(EDGE));

    assert!(!backend.forget_edge(EDGE).await.expect("forget"), "a live edge is never forgotten");

    heartbeat_expired(&redis, EDGE);
    assert!(!backend.forget_edge(EDGE).await.expect("forget"), "not while it has users");
    assert_eq!(dms.drop_edge(EDGE).await.expect("drop"), Some(2));
    assert!(!routes(&redis).contains(EDGE), "{}", routes(&redis));
    assert_eq!(redis.raw(&["EXISTS", &format!("shardchat:edge-users:{EDGE}")]).trim(), "0");
    // With nothing left, the edge itself is forgotten, once.
    assert!(backend.forget_edge(EDGE).await.expect("forget"));
    assert!(!redis.raw(&["SMEMBERS", "shardchat:edges"]).contains(EDGE));
    assert!(!backend.forget_edge(EDGE).await.expect("forget"));
}
