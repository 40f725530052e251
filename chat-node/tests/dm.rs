//! Direct messages on one node: delivery to every connection of both users,
//! history, offline delivery with `dm_sync`, unread counts, settings,
//! refusals and system messages.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, TestNode};

const FAST: &[&str] = &["--publish-rate", "10000", "--publish-burst", "10000", "--frame-rate", "10000"];
const ADMIN: &str = "admin-token-for-tests-0123456789abcdef";

async fn dm(c: &mut Client, to: &str, text: &str) -> Value {
    c.ok(json!({"op":"dm","to":to,"text":text})).await
}

fn texts(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| a.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_dm_reaches_every_connection_of_both_users_once() {
    let node = TestNode::start(FAST).await;
    let mut alice = node.connect("alice").await;
    let mut alice2 = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut bob2 = node.connect("bob").await;
    let reply = dm(&mut alice, "bob", "psst").await;
    let id = reply["message_id"].clone();
    for c in [&mut bob, &mut bob2, &mut alice2, &mut alice] {
        let push = c.next_op("dm").await;
        assert_eq!(push["id"], id);
        assert_eq!(push["from"], "alice");
        assert_eq!(push["to"], "bob");
        assert_eq!(push["text"], "psst");
        assert!(push["cursor"].is_string(), "{push}");
        c.assert_silent(Duration::from_millis(100)).await;
    }
    let mut carol = node.connect("carol").await;
    carol.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn conversation_ids_increase_and_history_reads_back_oldest_first() {
    let node = TestNode::start(FAST).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (from, to) = if i % 2 == 0 { (&mut alice, "bob") } else { (&mut bob, "alice") };
        ids.push(support::id_of(&json!({"id": dm(from, to, &format!("m{i}")).await["message_id"]})));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let h = alice.ok(json!({"op":"dm_history","with":"bob","limit":3})).await;
    assert_eq!(texts(&h["messages"]), ["m2", "m3", "m4"]);
    let before = h["messages"][0]["id"].clone();
    let older = bob.ok(json!({"op":"dm_history","with":"alice","before":before})).await;
    assert_eq!(texts(&older["messages"]), ["m0", "m1"]);
    assert!(older["messages"][0].get("cursor").is_none(), "history items carry no cursor");
}

#[tokio::test]
async fn an_offline_user_syncs_everything_in_order_once_and_unread_counts() {
    let node = TestNode::start(FAST).await;
    let mut alice = node.connect("alice").await;
    let mut carol = node.connect("carol").await;
    dm(&mut alice, "bob", "a1").await;
    dm(&mut carol, "bob", "c1").await;
    dm(&mut alice, "bob", "a2").await;
    let mut bob = node.connect("bob").await;
    let sync = bob.ok(json!({"op":"dm_sync"})).await;
    assert_eq!(texts(&sync["messages"]), ["a1", "c1", "a2"]);
    assert_eq!(sync["recovered"], json!(true));
    let cursor = sync["cursor"].clone();
    assert_eq!(cursor, sync["messages"][2]["cursor"]);
    bob.assert_silent(Duration::from_millis(100)).await;
    // New ones arrive live; a later sync from the cursor has exactly those.
    dm(&mut alice, "bob", "a3").await;
    assert_eq!(bob.next_op("dm").await["text"], "a3");
    let mut bob_phone = node.connect("bob").await;
    let again = bob_phone.ok(json!({"op":"dm_sync","since":cursor})).await;
    assert_eq!(texts(&again["messages"]), ["a3"]);

    let unread = bob.ok(json!({"op":"dm_unread"})).await;
    assert_eq!(unread["unread"], json!({"alice": 3, "carol": 1}));
    let up_to = sync["messages"][0]["id"].clone();
    bob.ok(json!({"op":"dm_read","with":"alice","up_to":up_to})).await;
    let unread = bob.ok(json!({"op":"dm_unread"})).await;
    assert_eq!(unread["unread"], json!({"alice": 2, "carol": 1}));
}

#[tokio::test]
async fn a_sync_racing_live_messages_loses_and_repeats_nothing() {
    let node = TestNode::start(FAST).await;
    let mut alice = node.connect("alice").await;
    for i in 0..20 {
        dm(&mut alice, "bob", &format!("old{i}")).await;
    }
    let mut bob = node.connect("bob").await;
    // Live messages keep coming while bob syncs.
    for i in 0..20 {
        alice.send_json(json!({"op":"dm","id":100 + i,"to":"bob","text":format!("new{i}")})).await;
    }
    let sync = bob.ok(json!({"op":"dm_sync"})).await;
    let mut got = texts(&sync["messages"]);
    while got.len() < 40 {
        got.push(bob.next_op("dm").await["text"].as_str().unwrap_or("").to_string());
    }
    let expected: Vec<String> =
        (0..20).map(|i| format!("old{i}")).chain((0..20).map(|i| format!("new{i}"))).collect();
    assert_eq!(got, expected);
    bob.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_cursor_older_than_the_mailbox_asks_for_a_reload() {
    let node = TestNode::start(&[FAST, &["--dm-mailbox-max", "3"]].concat()).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    dm(&mut alice, "bob", "first").await;
    let first = bob.next_op("dm").await;
    for i in 0..5 {
        dm(&mut alice, "bob", &format!("m{i}")).await;
    }
    let sync = bob.ok(json!({"op":"dm_sync","since":first["cursor"]})).await;
    assert_eq!(sync["recovered"], json!(false), "{sync}");
    let h = bob.ok(json!({"op":"dm_history","with":"alice"})).await;
    assert_eq!(texts(&h["messages"]).len(), 6, "the conversation still has them");
}

#[tokio::test]
async fn refusals_are_clear_errors() {
    let node = TestNode::start(FAST).await;
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    assert_eq!(alice.error_code(json!({"op":"dm","to":"alice","text":"me"})).await, "bad_request");
    assert_eq!(alice.error_code(json!({"op":"dm","to":"no spaces","text":"x"})).await, "bad_request");
    assert_eq!(alice.error_code(json!({"op":"dm","to":"bob"})).await, "bad_request");
    assert_eq!(alice.error_code(json!({"op":"dm","to":"system","text":"x"})).await, "bad_request");
    assert_eq!(alice.error_code(json!({"op":"dm","to":"bob","text":"x".repeat(2001)})).await, "too_large");
    // bob takes messages only from people he wrote to.
    bob.ok(json!({"op":"dm_settings","allow":"none"})).await;
    assert_eq!(alice.error_code(json!({"op":"dm","to":"bob","text":"hi"})).await, "forbidden");
    dm(&mut bob, "alice", "hi alice").await;
    dm(&mut alice, "bob", "hi bob").await;
    bob.ok(json!({"op":"dm_settings","allow":"all"})).await;
    let mut carol = node.connect("carol").await;
    dm(&mut carol, "bob", "hello").await;
    assert_eq!(alice.error_code(json!({"op":"dm_settings","allow":"friends"})).await, "bad_request");
}

#[tokio::test]
async fn a_recipient_is_rate_limited_and_nonces_deduplicate() {
    let node = TestNode::start(&[FAST, &["--dm-recipient-rate", "2"]].concat()).await;
    let mut alice = node.connect("alice").await;
    let first = alice.ok(json!({"op":"dm","to":"bob","text":"once","nonce":"n1"})).await;
    let again = alice.ok(json!({"op":"dm","to":"bob","text":"once","nonce":"n1"})).await;
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["duplicate"], json!(true));
    let mut codes = Vec::new();
    for i in 0..8 {
        let r = alice.request(json!({"op":"dm","to":"bob","text":format!("m{i}")})).await;
        codes.push(r["error"]["code"].as_str().unwrap_or("ok").to_string());
    }
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    let h = alice.ok(json!({"op":"dm_history","with":"bob","limit":100})).await;
    assert_eq!(texts(&h["messages"]).iter().filter(|t| *t == "once").count(), 1);
}

#[tokio::test]
async fn a_system_message_reaches_an_offline_player() {
    let node = TestNode::start(&[FAST, &["--admin-token", ADMIN]].concat()).await;
    let http = node.http();
    let body = r#"{"text":"your auction sold","meta":{"kind":"auction"}}"#;
    let r = http.request("POST", "/v1/users/bob/messages", &[], Some(body)).await;
    assert_eq!(r.status, 401);
    let auth = format!("Bearer {ADMIN}");
    let r = http.request("POST", "/v1/users/bob/messages", &[("Authorization", &auth)], Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["message_id"].clone();
    let r =
        http.request("POST", "/v1/users/no%20spaces/messages", &[("Authorization", &auth)], Some(body)).await;
    assert_eq!(r.status, 400);
    let mut bob = node.connect("bob").await;
    let sync = bob.ok(json!({"op":"dm_sync"})).await;
    assert_eq!(sync["messages"][0]["id"], id);
    assert_eq!(sync["messages"][0]["from"], "system");
    assert_eq!(sync["messages"][0]["meta"], json!({"kind":"auction"}));
    // Live too, and nobody can answer the system sender.
    let r = http
        .request("POST", "/v1/users/bob/messages", &[("Authorization", &auth)], Some(r#"{"text":"again"}"#))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(bob.next_op("dm").await["text"], "again");
    assert_eq!(bob.error_code(json!({"op":"dm","to":"system","text":"thanks"})).await, "bad_request");
}
