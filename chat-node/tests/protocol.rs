//! Protocol v1 conformance: every op and every error code, over real sockets.

mod support;

use serde_json::json;
use support::TestNode;

#[tokio::test]
async fn every_op_round_trips_with_its_id() {
    let node = TestNode::start(&[]).await;
    let mut c = node.connect("alice").await;

    let join = c.join("town-137").await;
    assert_eq!(join["members"], json!(1));
    assert!(join.get("recovered").is_none(), "plain join carries no recovered flag");

    let id = c.publish("town-137", "hello").await;
    let push = c.next_op("message").await;
    assert_eq!(push["id"], json!(id));
    assert_eq!(push["from"], "alice");
    assert_eq!(push["text"], "hello");
    assert_eq!(push["channel"], "town-137");
    assert!(push["ts"].as_u64().unwrap() > 1_700_000_000_000);

    let history = c.ok(json!({"op":"history","channel":"town-137","limit":10})).await;
    assert_eq!(history["messages"][0]["id"], json!(id));
    assert_eq!(history["messages"][0]["text"], "hello");

    let ping = c.ok(json!({"op":"ping"})).await;
    assert!(ping["ts"].is_u64());

    // String ids are echoed as given.
    c.send_json(json!({"op":"ping","id":"abc"})).await;
    let reply = c.next_op("reply").await;
    assert_eq!(reply["id"], "abc");

    c.ok(json!({"op":"leave","channel":"town-137"})).await;
    assert_eq!(c.error_code(json!({"op":"leave","channel":"town-137"})).await, "not_joined");
}

#[tokio::test]
async fn publish_with_meta_is_delivered_with_meta() {
    let node = TestNode::start(&[]).await;
    let mut c = node.connect("alice").await;
    c.join("c").await;
    c.ok(json!({"op":"publish","channel":"c","text":"gg","meta":{"emote":"wave","lvl":3}})).await;
    let push = c.next_op("message").await;
    assert_eq!(push["meta"], json!({"emote":"wave","lvl":3}));
}

#[tokio::test]
async fn requests_without_id_get_no_reply_but_errors_are_pushed() {
    let node = TestNode::start(&[]).await;
    let mut c = node.connect("alice").await;
    c.send_json(json!({"op":"join","channel":"c"})).await;
    c.send_json(json!({"op":"publish","channel":"c","text":"no id"})).await;
    let m = c.next_op("message").await;
    assert_eq!(m["text"], "no id");
    c.send_json(json!({"op":"publish","channel":"other","text":"x"})).await;
    let e = c.next_op("error").await;
    assert_eq!(e["error"]["code"], "not_joined");
    assert!(e["error"]["message"].as_str().unwrap().contains("other"));
}

#[tokio::test]
async fn bad_request_for_malformed_frames_and_fields() {
    let node = TestNode::start(&[]).await;
    let mut c = node.connect("alice").await;
    c.join("c").await;
    for bad in [
        json!({"op":"teleport"}),
        json!({"op":"join"}),
        json!({"op":"join","channel":"town 137"}),
        json!({"op":"join","channel":"x".repeat(129)}),
        json!({"op":"join","channel":""}),
        json!({"op":"join","channel":"c2","since":"last tuesday"}),
        json!({"op":"publish","channel":"c","text":42}),
        json!({"op":"publish","channel":"c"}),
        json!({"op":"publish","channel":"c","text":""}),
        json!({"op":"publish","channel":"c","text":"x","meta":"not an object"}),
        json!({"op":"history","channel":"c","limit":"ten"}),
    ] {
        assert_eq!(c.error_code(bad.clone()).await, "bad_request", "for {bad}");
    }
    c.send_raw(tokio_tungstenite::tungstenite::Message::text("{not json")).await;
    assert_eq!(c.next_op("error").await["error"]["code"], "bad_request");
    c.send_raw(tokio_tungstenite::tungstenite::Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(c.next_op("error").await["error"]["code"], "bad_request");
    // Still usable.
    c.publish("c", "still here").await;
}

#[tokio::test]
async fn unauthorized_without_identity() {
    let node = TestNode::start(&[]).await;
    let url = format!("ws://{}/v1/ws", node.addr);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected HTTP 401, got {other:?}"),
    }
    let url = format!("ws://{}/v1/ws?user=bad%20name", node.addr);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected HTTP 400, got {other:?}"),
    }
}

fn channels_file(yaml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shardchat-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("channels.yaml");
    std::fs::write(&path, yaml).expect("write channels file");
    path
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    h.finish()
}

#[tokio::test]
async fn forbidden_by_channel_roles() {
    let file =
        channels_file("- name: guild-7\n  access:\n    joinRoles: [guild-7]\n    publishRoles: [officer]\n");
    let node = TestNode::start(&["--channels", file.to_str().unwrap()]).await;
    let mut outsider = node.connect("outsider").await;
    assert_eq!(outsider.error_code(json!({"op":"join","channel":"guild-7"})).await, "forbidden");
    assert_eq!(outsider.error_code(json!({"op":"history","channel":"guild-7"})).await, "forbidden");

    let mut member = support::Client::connect(&format!("{}&roles=guild-7", node.ws_url("member"))).await;
    member.join("guild-7").await;
    assert_eq!(member.error_code(json!({"op":"publish","channel":"guild-7","text":"hi"})).await, "forbidden");

    let mut officer =
        support::Client::connect(&format!("{}&roles=guild-7,officer", node.ws_url("officer"))).await;
    officer.join("guild-7").await;
    officer.publish("guild-7", "orders").await;
    assert_eq!(member.next_op("message").await["text"], "orders");
    // REST reads of a role-restricted channel are refused too.
    assert_eq!(node.http().get("/v1/channels/guild-7/history").await.status, 403);
}

#[tokio::test]
async fn not_found_for_undeclared_channels_in_deny_mode() {
    let file = channels_file("- name: town-137\n");
    let node = TestNode::start(&["--channels", file.to_str().unwrap(), "--dynamic-channels", "deny"]).await;
    let mut c = node.connect("alice").await;
    assert_eq!(c.error_code(json!({"op":"join","channel":"elsewhere"})).await, "not_found");
    c.join("town-137").await;
    assert_eq!(node.http().get("/v1/channels/elsewhere/history").await.status, 404);
}

#[tokio::test]
async fn not_joined_for_publish_without_join() {
    let node = TestNode::start(&[]).await;
    let mut c = node.connect("alice").await;
    assert_eq!(c.error_code(json!({"op":"publish","channel":"c","text":"x"})).await, "not_joined");
}

#[tokio::test]
async fn rate_limited_past_the_burst_then_closed_for_flooding() {
    let node =
        TestNode::start(&["--publish-rate", "1", "--publish-burst", "3", "--flood-close-after", "5"]).await;
    let mut c = node.connect("alice").await;
    c.join("c").await;
    for i in 0..3 {
        c.publish("c", &format!("m{i}")).await;
    }
    assert_eq!(c.error_code(json!({"op":"publish","channel":"c","text":"too fast"})).await, "rate_limited");
    // Keep flooding: the 5th rate-limited request within 10 s closes with 1008.
    for _ in 0..4 {
        c.send_json(json!({"op":"publish","channel":"c","text":"flood"})).await;
    }
    assert_eq!(c.closed().await, support::Closed::Code(1008));
    node.wait_for_metric("shardchat_errors_total{code=\"rate_limited\"} 5").await;
    node.wait_for_metric("shardchat_disconnects_total{reason=\"flood\"} 1").await;
}

#[tokio::test]
async fn too_large_text_and_meta() {
    let node = TestNode::start(&[]).await;
    let mut c = node.connect("alice").await;
    c.join("c").await;
    let long = "가".repeat(2001);
    assert_eq!(c.error_code(json!({"op":"publish","channel":"c","text":long})).await, "too_large");
    let meta = json!({"blob": "x".repeat(1100)});
    assert_eq!(c.error_code(json!({"op":"publish","channel":"c","text":"x","meta":meta})).await, "too_large");
    // Exactly at the limit is fine.
    c.publish("c", &"가".repeat(2000)).await;
}

#[tokio::test]
async fn channel_full_at_max_members() {
    let file = channels_file("- name: duel\n  maxMembers: 2\n");
    let node = TestNode::start(&["--channels", file.to_str().unwrap()]).await;
    let mut a = node.connect("a").await;
    let mut b = node.connect("b").await;
    let mut c = node.connect("c").await;
    a.join("duel").await;
    b.join("duel").await;
    assert_eq!(c.error_code(json!({"op":"join","channel":"duel"})).await, "channel_full");
    // A second connection of an existing member is not a new member.
    let mut a2 = node.connect("a").await;
    assert_eq!(a2.join("duel").await["members"], json!(2));
    // Once someone leaves there is room.
    b.ok(json!({"op":"leave","channel":"duel"})).await;
    c.join("duel").await;
}

#[tokio::test]
async fn filtered_in_reject_mode_and_masked_in_mask_mode() {
    let node = TestNode::start(&["--moderation", "reject"]).await;
    let mut c = node.connect("alice").await;
    c.join("c").await;
    assert_eq!(c.error_code(json!({"op":"publish","channel":"c","text":"you bastard"})).await, "filtered");
    c.publish("c", "Scunthorpe is lovely").await;
    assert_eq!(c.next_op("message").await["text"], "Scunthorpe is lovely");

    let node = TestNode::start(&[]).await;
    let mut c = node.connect("alice").await;
    c.join("c").await;
    c.publish("c", "oh shit").await;
    assert_eq!(c.next_op("message").await["text"], "oh ****");
}

#[tokio::test]
async fn unavailable_while_draining() {
    let mut node = TestNode::start(&["--shutdown-grace", "1s"]).await;
    node.node.lifecycle.drain();
    match tokio_tungstenite::connect_async(node.ws_url("late")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    assert_eq!(node.http().get("/readyz").await.status, 503);
    node.shutdown().await;
}

#[tokio::test]
async fn every_error_code_is_exported_as_a_metric() {
    let node = TestNode::start(&[]).await;
    let metrics = node.http().get("/metrics").await.body;
    for code in shardchat_common::protocol::ErrorCode::ALL {
        assert!(
            metrics.contains(&format!("shardchat_errors_total{{code=\"{}\"}}", code.as_str())),
            "{code:?}"
        );
    }
}

#[tokio::test]
async fn channels_created_on_demand_are_bounded_in_embedded_mode_too() {
    let node = TestNode::start(&["--max-dynamic-channels", "1"]).await;
    let mut a = node.connect("alice").await;
    a.join("first").await;
    let refused = a.request(json!({"op":"join","channel":"second"})).await;
    assert_eq!(refused["error"]["code"], "forbidden", "{refused}");
    // A member of the admitted channel keeps chatting; others may join it.
    a.publish("first", "still here").await;
    let mut b = node.connect("bob").await;
    b.join("first").await;
}
