//! Delivery guarantees: exactly once, in id order, to every member
//! including the sender; recovery with `since`; presence.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, TestNode, id_of};

/// Flags that let tests publish quickly from one connection.
const FAST: &[&str] = &["--publish-rate", "10000", "--publish-burst", "10000", "--frame-rate", "10000"];

#[tokio::test]
async fn concurrent_publishers_every_member_sees_each_message_once_in_order() {
    let node = TestNode::start(FAST).await;
    const MEMBERS: usize = 4;
    const PER_MEMBER: usize = 50;
    let mut clients = Vec::new();
    for i in 0..MEMBERS {
        let mut c = node.connect(&format!("u{i}")).await;
        c.join("town-137").await;
        clients.push(c);
    }
    // Everyone publishes at once, without waiting for replies.
    for (i, c) in clients.iter_mut().enumerate() {
        for n in 0..PER_MEMBER {
            c.send_json(json!({"op":"publish","channel":"town-137","text":format!("{i}:{n}")})).await;
        }
    }
    let mut sequences: Vec<Vec<Value>> = Vec::new();
    for c in clients.iter_mut() {
        let msgs = c.messages(MEMBERS * PER_MEMBER).await;
        let ids: Vec<(u64, u64)> = msgs.iter().map(id_of).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids strictly increase");
        let unique: HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), MEMBERS * PER_MEMBER, "no duplicates");
        // Per sender, messages arrive in the order they were sent.
        for i in 0..MEMBERS {
            let own: Vec<String> = msgs
                .iter()
                .filter(|m| m["from"] == format!("u{i}"))
                .map(|m| m["text"].as_str().unwrap().to_string())
                .collect();
            let expected: Vec<String> = (0..PER_MEMBER).map(|n| format!("{i}:{n}")).collect();
            assert_eq!(own, expected);
        }
        sequences.push(msgs);
        c.assert_silent(Duration::from_millis(100)).await;
    }
    // Every member saw the same sequence.
    for s in &sequences[1..] {
        assert_eq!(s, &sequences[0]);
    }
}

#[tokio::test]
async fn messages_stay_in_their_channel() {
    let node = TestNode::start(&[]).await;
    let mut a = node.connect("a").await;
    let mut b = node.connect("b").await;
    a.join("one").await;
    b.join("two").await;
    a.publish("one", "for one").await;
    b.publish("two", "for two").await;
    assert_eq!(a.next_op("message").await["text"], "for one");
    assert_eq!(b.next_op("message").await["text"], "for two");
    a.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn join_since_recovers_exactly_the_missing_messages_then_goes_live() {
    let node = TestNode::start(FAST).await;
    let mut writer = node.connect("writer").await;
    writer.join("c").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(writer.publish("c", &format!("m{i}")).await);
    }
    let mut reader = node.connect("reader").await;
    let reply = reader.ok(json!({"op":"join","channel":"c","since":ids[9]})).await;
    assert_eq!(reply["recovered"], json!(true));
    // Live messages published right after the join...
    writer.publish("c", "live-1").await;
    let got = reader.messages(11).await;
    let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
    let mut expected: Vec<String> = (10..20).map(|i| format!("m{i}")).collect();
    expected.push("live-1".into());
    assert_eq!(texts, expected);
    reader.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn recovery_is_gapless_while_messages_keep_flowing() {
    let node = TestNode::start(FAST).await;
    let mut writer = node.connect("writer").await;
    writer.join("c").await;
    let first = writer.publish("c", "0").await;
    // Keep publishing without waiting while another client joins with since.
    let total = 300;
    for i in 1..total {
        writer.send_json(json!({"op":"publish","channel":"c","text":i.to_string()})).await;
        if i == 100 {
            let mut reader = node.connect("reader").await;
            reader.send_json(json!({"op":"join","id":1,"channel":"c","since":first})).await;
            // read everything after the join
            let reader_task = tokio::spawn(async move {
                let msgs = reader.messages(total - 1).await;
                msgs.iter().map(|m| m["text"].as_str().unwrap().parse::<usize>().unwrap()).collect::<Vec<_>>()
            });
            for j in 101..total {
                writer.send_json(json!({"op":"publish","channel":"c","text":j.to_string()})).await;
            }
            let got = reader_task.await.unwrap();
            assert_eq!(got, (1..total).collect::<Vec<_>>(), "no gap, no duplicate, in order");
            return;
        }
    }
}

#[tokio::test]
async fn recovery_from_before_retention_says_not_recovered() {
    let dir = std::env::temp_dir().join(format!("shardchat-ret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("channels.yaml");
    std::fs::write(&file, "- name: short\n  retention: {maxMessages: 5}\n").unwrap();
    let node = TestNode::start(&[&["--channels", file.to_str().unwrap()], FAST].concat()).await;
    let mut w = node.connect("w").await;
    w.join("short").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(w.publish("short", &i.to_string()).await);
    }
    let mut r = node.connect("r").await;
    let reply = r.ok(json!({"op":"join","channel":"short","since":ids[2]})).await;
    assert_eq!(reply["recovered"], json!(false), "messages 3 and 4 were dropped by retention");
    let texts: Vec<String> =
        r.messages(5).await.iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts, ["5", "6", "7", "8", "9"]);
    // An id this node never issued is not trusted either.
    let mut r2 = node.connect("r2").await;
    let reply = r2.ok(json!({"op":"join","channel":"short","since":"99999999999999-0"})).await;
    assert_eq!(reply["recovered"], json!(false));
    let history = r.ok(json!({"op":"history","channel":"short"})).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn history_pages_backwards() {
    let node = TestNode::start(FAST).await;
    let mut c = node.connect("c").await;
    c.join("h").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(c.publish("h", &i.to_string()).await);
    }
    let texts = |v: &Value| -> Vec<String> {
        v["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap().to_string()).collect()
    };
    let newest = c.ok(json!({"op":"history","channel":"h","limit":3})).await;
    assert_eq!(texts(&newest), ["7", "8", "9"]);
    let older = c.ok(json!({"op":"history","channel":"h","limit":3,"before":ids[7]})).await;
    assert_eq!(texts(&older), ["4", "5", "6"]);
    let all = c.ok(json!({"op":"history","channel":"h"})).await;
    assert_eq!(texts(&all).len(), 10);
}

#[tokio::test]
async fn presence_join_leave_and_abrupt_disconnect() {
    let node = TestNode::start(&[]).await;
    let mut a = node.connect("alice").await;
    a.join("p").await;
    assert_eq!(
        a.next_op("presence").await,
        json!({"op":"presence","channel":"p","event":"join","user":"alice"})
    );

    let mut b = node.connect("bob").await;
    assert_eq!(b.join("p").await["members"], json!(2));
    assert_eq!(
        a.next_op("presence").await,
        json!({"op":"presence","channel":"p","event":"join","user":"bob"})
    );

    // A second connection of bob is not a new presence.
    let mut b2 = node.connect("bob").await;
    b2.join("p").await;
    b.ok(json!({"op":"leave","channel":"p"})).await;
    a.ok(json!({"op":"ping"})).await;
    a.assert_silent(Duration::from_millis(100)).await;

    // Bob's last connection dies without a close handshake.
    let members = node.http().get("/v1/channels/p/members").await.json();
    assert_eq!(members["members"], json!(["alice", "bob"]));
    drop(b2);
    assert_eq!(
        a.next_op("presence").await,
        json!({"op":"presence","channel":"p","event":"leave","user":"bob"})
    );
    let members = node.http().get("/v1/channels/p/members").await.json();
    assert_eq!(members["members"], json!(["alice"]));
    drop(b);
}

#[tokio::test]
async fn rejoin_on_the_same_connection_is_harmless() {
    let node = TestNode::start(&[]).await;
    let mut a: Client = node.connect("alice").await;
    a.join("c").await;
    a.join("c").await;
    a.publish("c", "once").await;
    assert_eq!(a.messages(1).await[0]["text"], "once");
    a.ok(json!({"op":"ping"})).await;
    let _ = a.next_op("presence").await;
    a.assert_silent(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn an_unknown_since_does_not_filter_live_messages() {
    // Ids are per channel: an id from another channel (or from before the
    // server lost its data) may equal or exceed this channel's ids. The join
    // says `recovered: false` and must then deliver every live message.
    let node = TestNode::start(&[]).await;
    let mut alice = node.connect("alice").await;
    let mut gus = node.connect("gus").await;
    alice.join("town-137").await;
    gus.join("town-137").await;
    gus.join("lobby").await;
    let far_future = "99999999999999-0";
    let reply = alice.ok(json!({"op":"join","channel":"lobby","since":far_future})).await;
    assert_eq!(reply["recovered"], json!(false));
    let id = gus.publish("lobby", "welcome to the lobby").await;
    let m = loop {
        let m = alice.next_op("message").await;
        if m["channel"] == "lobby" {
            break m;
        }
    };
    assert_eq!(m["id"], json!(id));
}

#[tokio::test]
async fn join_since_zero_recovers_everything_retained() {
    // How a client with no history yet joins without a gap: `since` = "0-0".
    let node = TestNode::start(&[]).await;
    let mut gus = node.connect("gus").await;
    gus.join("lobby").await;
    let first = gus.publish("lobby", "before alice").await;
    let mut alice = node.connect("alice").await;
    let reply = alice.ok(json!({"op":"join","channel":"lobby","since":"0-0"})).await;
    assert_eq!(reply["recovered"], json!(true));
    assert_eq!(alice.next_op("message").await["id"], json!(first));
    let mut empty = node.connect("eve").await;
    assert_eq!(
        empty.ok(json!({"op":"join","channel":"nobody-here","since":"0-0"})).await["recovered"],
        json!(true)
    );
}

#[tokio::test]
async fn pipelined_publishes_get_one_reply_each_in_request_order() {
    let node = TestNode::start(FAST).await;
    let mut a = node.connect("alice").await;
    a.join("pipe").await;
    for n in 1..=300u64 {
        let text = format!("p{n}");
        a.send_json(json!({"op":"publish","id":n,"channel":"pipe","text":text})).await;
    }
    // A request of another kind waits for the publishes before it.
    a.send_json(json!({"op":"ping","id":"after"})).await;
    let mut replies = Vec::new();
    while replies.len() < 301 {
        replies.push(a.next_op("reply").await);
    }
    let ids: Vec<Value> = replies.iter().map(|r| r["id"].clone()).collect();
    let mut expected: Vec<Value> = (1..=300u64).map(|n| json!(n)).collect();
    expected.push(json!("after"));
    assert_eq!(ids, expected, "exactly one reply per id, in request order");
    let message_ids: Vec<(u64, u64)> =
        replies[..300].iter().map(|r| id_of(&json!({"id": r["message_id"]}))).collect();
    assert!(message_ids.windows(2).all(|w| w[0] < w[1]), "stored in the order sent");
    let texts: Vec<String> =
        a.messages(300).await.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(texts, (1..=300).map(|n| format!("p{n}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_invalid_publish_in_a_pipeline_gets_its_error_in_order() {
    let node = TestNode::start(FAST).await;
    let mut a = node.connect("alice").await;
    a.join("pipe").await;
    a.send_json(json!({"op":"publish","id":1,"channel":"pipe","text":"one"})).await;
    a.send_json(json!({"op":"publish","id":2,"channel":"elsewhere","text":"not joined"})).await;
    a.send_json(json!({"op":"publish","id":3,"channel":"pipe","text":"three"})).await;
    let replies = [a.next_op("reply").await, a.next_op("reply").await, a.next_op("reply").await];
    assert_eq!(replies.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(), [json!(1), json!(2), json!(3)]);
    assert_eq!(replies[1]["error"]["code"], "not_joined");
    assert_eq!(replies[2]["ok"], json!(true));
}

#[tokio::test]
async fn a_retried_nonce_returns_the_first_id_and_stores_once() {
    let node = TestNode::start(FAST).await;
    let mut a = node.connect("alice").await;
    a.join("n").await;
    let first = a.ok(json!({"op":"publish","channel":"n","text":"hi","nonce":"k-1"})).await;
    let again = a.ok(json!({"op":"publish","channel":"n","text":"hi","nonce":"k-1"})).await;
    assert_eq!(again["message_id"], first["message_id"]);
    assert_eq!(again["duplicate"], json!(true));
    assert!(first.get("duplicate").is_none());
    let bad = a.request(json!({"op":"publish","channel":"n","text":"hi","nonce":"no spaces"})).await;
    assert_eq!(bad["error"]["code"], "bad_request");
    let history = a.ok(json!({"op":"history","channel":"n"})).await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1), "{history}");
    // Members got it once.
    assert_eq!(a.messages(1).await[0]["text"], "hi");
    a.assert_silent(Duration::from_millis(200)).await;
}
