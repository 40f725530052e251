//! Connection management: idle timeout, slow consumers, oversize and
//! invalid frames, garbage, graceful shutdown.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::{Client, Closed, TestNode};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const FAST: &[&str] = &["--publish-rate", "100000", "--publish-burst", "100000", "--frame-rate", "100000"];

#[tokio::test]
async fn idle_client_that_never_answers_pings_is_closed() {
    let node = TestNode::start(&["--ping-interval", "200ms", "--idle-timeout", "1s"]).await;
    let mut idle = node.connect("idle").await;
    let mut active = node.connect("active").await;
    // `idle` does not read its socket, so it never answers pings.
    let keep_active = async {
        for _ in 0..15 {
            active.ok(json!({"op":"ping"})).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), keep_active).await.expect("active client keeps working");
    assert_eq!(idle.closed().await, Closed::Code(4008));
    // The active client, which did send frames, is still connected.
    active.ok(json!({"op":"ping"})).await;
}

#[tokio::test]
async fn a_client_answering_pings_is_not_idle() {
    let node = TestNode::start(&["--ping-interval", "100ms", "--idle-timeout", "500ms"]).await;
    let mut c = node.connect("quiet").await;
    // Reading lets the client library answer pings with pongs.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while let Ok(frame) = tokio::time::timeout_at(deadline, c.ws.next()).await {
        match frame {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("only pings expected, got {other:?}"),
        }
    }
    assert!(pings >= 5, "the server pings every 100ms (got {pings})");
    c.ok(json!({"op":"ping"})).await;
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_others_are_unaffected() {
    let node = TestNode::start(&[&["--outbound-queue", "256"], FAST].concat()).await;
    let mut slow = Client::connect_small_buffer(node.addr, &node.ws_url("slow")).await;
    slow.join("busy").await;
    let mut fast = node.connect("fast").await;
    fast.join("busy").await;
    let mut publisher = node.connect("publisher").await;
    publisher.join("busy").await;
    // Enough data to fill the socket buffers of a client that never reads.
    let text = "x".repeat(1900);
    let total = 4000;
    let fast_reader = tokio::spawn(async move {
        let msgs = fast.messages(total).await;
        (fast, msgs.len())
    });
    // The publisher is a member too, so it reads its own copies as it goes.
    for _ in 0..total / 100 {
        for _ in 0..100 {
            publisher.send_json(json!({"op":"publish","channel":"busy","text":text})).await;
        }
        publisher.messages(100).await;
    }
    let (_fast, received) = fast_reader.await.unwrap();
    assert_eq!(received, total, "the reading client got every message");
    assert_eq!(slow.closed().await, Closed::Code(4009));
    node.wait_for_metric("shardchat_slow_consumer_disconnects_total 1").await;
}

#[tokio::test]
async fn oversize_frame_closes_with_1009_and_the_server_stays_up() {
    let node = TestNode::start(&["--max-frame-bytes", "4096"]).await;
    let mut bystander = node.connect("bystander").await;
    bystander.join("c").await;
    let mut big = node.connect("big").await;
    let huge = json!({"op":"publish","channel":"c","text":"x".repeat(5000)}).to_string();
    big.send_raw(Message::text(huge)).await;
    assert_eq!(big.closed().await, Closed::Code(1009));
    bystander.publish("c", "still fine").await;
    let mut again = node.connect("again").await;
    again.ok(json!({"op":"ping"})).await;
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_with_1007() {
    let node = TestNode::start(&[]).await;
    let mut bad = node.connect("bad").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    bad.send_raw(Message::Frame(frame)).await;
    assert_eq!(bad.closed().await, Closed::Code(1007));
    let mut good = node.connect("good").await;
    good.ok(json!({"op":"ping"})).await;
}

#[tokio::test]
async fn random_garbage_frames_get_errors_and_harm_nobody() {
    let node = TestNode::start(FAST).await;
    let mut bystander = node.connect("bystander").await;
    bystander.join("c").await;
    let mut fuzz = node.connect("fuzz").await;
    fuzz.join("c").await;
    // A small deterministic generator: no extra crates, reproducible failures.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let fragments = [
        "{",
        "}",
        "[",
        "]",
        "\"op\"",
        ":",
        ",",
        "\"join\"",
        "\"publish\"",
        "\"channel\"",
        "\"c\"",
        "null",
        "1e999",
        "-0",
        "\"id\"",
        "\"\\u0000\"",
        "true",
        "\"text\"",
        "{\"op\":",
        "\"since\"",
        "\"9-9\"",
        "\u{1F600}",
        "\\",
    ];
    let mut sent = 0;
    for _ in 0..300 {
        let len = (next() % 12) as usize;
        let mut s = String::new();
        for _ in 0..len {
            s.push_str(fragments[(next() % fragments.len() as u64) as usize]);
        }
        if next() % 4 == 0 {
            // raw random printable bytes
            s.extend((0..(next() % 40)).map(|_| char::from(32 + (next() % 95) as u8)));
        }
        fuzz.send_raw(Message::text(s)).await;
        sent += 1;
    }
    // The connection survives and answers in order after the garbage.
    let pong = fuzz.ok(json!({"op":"ping"})).await;
    assert_eq!(pong["ok"], true);
    assert!(sent == 300);
    bystander.publish("c", "after the storm").await;
    assert_eq!(bystander.next_op("message").await["text"], "after the storm");
}

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_1012() {
    let mut node = TestNode::start(&["--shutdown-grace", "3s"]).await;
    let mut a = node.connect("a").await;
    let mut b = node.connect("b").await;
    a.join("c").await;
    let started = std::time::Instant::now();
    let closes = tokio::spawn(async move { (a.closed().await, b.closed().await) });
    node.shutdown().await;
    let (ca, cb) = closes.await.unwrap();
    assert_eq!(ca, Closed::Code(1012));
    assert_eq!(cb, Closed::Code(1012));
    // Clients that close promptly let shutdown finish well before the grace period.
    assert!(started.elapsed() < Duration::from_secs(3), "shutdown waited for the whole grace period");
    assert!(tokio::net::TcpStream::connect(node.addr).await.is_err(), "listener is closed");
}

#[tokio::test]
async fn shutdown_does_not_wait_past_the_grace_period_for_stuck_clients() {
    let mut node = TestNode::start(&["--shutdown-grace", "500ms"]).await;
    // A client that never reads: it does not complete the close handshake.
    let _stuck: Client = node.connect("stuck").await;
    tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await.expect("shutdown is bounded");
}
