//! REST endpoints over real HTTP.

mod support;

use serde_json::json;
use support::TestNode;

#[tokio::test]
async fn history_rest_matches_the_history_op() {
    let node = TestNode::start(&[]).await;
    let mut c = node.connect("alice").await;
    c.join("town-137").await;
    for i in 0..5 {
        c.publish("town-137", &format!("m{i}")).await;
    }
    let op = c.ok(json!({"op":"history","channel":"town-137","limit":3})).await;
    let rest = node.http().get("/v1/channels/town-137/history?limit=3").await;
    assert_eq!(rest.status, 200);
    assert_eq!(rest.json()["messages"], op["messages"]);
    let before = op["messages"][0]["id"].as_str().unwrap();
    let older =
        node.http().get(&format!("/v1/channels/town-137/history?limit=10&before={before}")).await.json();
    let texts: Vec<&str> =
        older["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["m0", "m1"]);
}

#[tokio::test]
async fn rest_rejects_bad_input_with_json_errors() {
    let node = TestNode::start(&[]).await;
    let http = node.http();
    let r = http.get("/v1/channels/bad%20name/history").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "bad_request");
    assert_eq!(http.get("/v1/channels/c/history?limit=abc").await.status, 400);
    assert_eq!(http.get("/v1/channels/c/history?before=nope").await.status, 400);
    let r = http.get("/v2/nothing").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
}

#[tokio::test]
async fn server_side_publish_needs_the_admin_token() {
    let node = TestNode::start(&["--admin-token", "admin-token-for-tests-0123456789abcdef"]).await;
    let http = node.http();
    let body = r#"{"text":"server restart in 5 minutes","meta":{"kind":"notice"}}"#;
    let path = "/v1/channels/town-137/messages";
    let r = http.request("POST", path, &[], Some(body)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let r = http.request("POST", path, &[("Authorization", "Bearer wrong")], Some(body)).await;
    assert_eq!(r.status, 401);

    let mut c = node.connect("alice").await;
    c.join("town-137").await;
    let r = http
        .request(
            "POST",
            path,
            &[("Authorization", "Bearer admin-token-for-tests-0123456789abcdef")],
            Some(body),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["message_id"].as_str().unwrap().to_string();
    let push = c.next_op("message").await;
    assert_eq!(push["id"], json!(id));
    assert_eq!(push["from"], "server");
    assert_eq!(push["meta"]["kind"], "notice");

    let r = http
        .request(
            "POST",
            path,
            &[("Authorization", "Bearer admin-token-for-tests-0123456789abcdef")],
            Some("{\"txt\":1}"),
        )
        .await;
    assert_eq!(r.status, 400);
    let long = format!("{{\"text\":\"{}\"}}", "x".repeat(2001));
    let r = http
        .request(
            "POST",
            path,
            &[("Authorization", "Bearer admin-token-for-tests-0123456789abcdef")],
            Some(&long),
        )
        .await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn server_side_publish_is_refused_without_a_configured_token() {
    let node = TestNode::start(&[]).await;
    let r = node
        .http()
        .request(
            "POST",
            "/v1/channels/c/messages",
            &[("Authorization", "Bearer anything")],
            Some(r#"{"text":"x"}"#),
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn channels_members_health_and_metrics() {
    let node = TestNode::start(&[]).await;
    let mut a = node.connect("alice").await;
    a.join("town-137").await;
    a.publish("town-137", "hi").await;
    let mut b = node.connect("bob").await;
    b.join("town-137").await;

    let channels = node.http().get("/v1/channels").await.json();
    assert_eq!(channels["channels"], json!([{"name":"town-137","members":2,"messages":1,"declared":false}]));
    let members = node.http().get("/v1/channels/town-137/members").await.json();
    assert_eq!(members["members"], json!(["alice", "bob"]));

    assert_eq!(node.http().get("/healthz").await.status, 200);
    assert_eq!(node.http().get("/readyz").await.status, 200);
    let metrics = node.http().get("/metrics").await.body;
    for line in [
        "shardchat_connections 2",
        "shardchat_joins_total 2",
        "shardchat_messages_published_total 1",
        "shardchat_messages_delivered_total 1",
        "shardchat_publish_to_deliver_seconds_count 1",
        "shardchat_channels_owned 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn the_browser_page_is_served() {
    let node = TestNode::start(&[]).await;
    let page = node.http().get("/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("<html") || page.body.contains("<!doctype") || page.body.contains("<!DOCTYPE")
    );
}
