//! End to end over real sockets against a tiny in-process fake node that
//! speaks protocol v1 (join, publish, fan-out in id order) and can be told
//! to misbehave once: drop, duplicate or reorder one delivery, or close one
//! member. The bench must pass the clean run and catch every fault.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_bench::args::Args;
use chat_bench::plan::Plan;
use chat_bench::run::{Options, run};
use chat_bench::summary::Summary;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use shardchat_common::MessageId;
use shardchat_common::protocol::{ChatMessage, Reply, Request, ServerFrame, parse_request};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    Drop,
    Duplicate,
    Swap,
    Close(u16),
}

/// The fault hits the channel whose name ends in `-0`, message number
/// `VICTIM_MSG` of that channel, as delivered to its second member.
const VICTIM_MSG: u64 = 3;
const VICTIM_MEMBER: usize = 1;

type Tx = mpsc::UnboundedSender<Message>;

#[derive(Default)]
struct Channel {
    count: u64,
    members: Vec<Tx>,
    held: Option<Message>,
}

struct FakeNode {
    fault: Fault,
    channels: Mutex<HashMap<String, Channel>>,
}

fn frame(f: &ServerFrame) -> Message {
    Message::text(serde_json::to_string(f).expect("serializable"))
}

impl FakeNode {
    fn publish(
        &self,
        channel: &str,
        text: String,
        meta: Option<serde_json::Map<String, Value>>,
    ) -> MessageId {
        let mut channels = self.channels.lock().expect("lock");
        let ch = channels.entry(channel.to_string()).or_default();
        let n = ch.count;
        ch.count += 1;
        // Ids cross a digit boundary (999 → 1000) to catch string comparison.
        let id = MessageId::new(995 + n, 0);
        let msg = frame(&ServerFrame::Message(ChatMessage {
            channel: channel.parse().expect("valid channel"),
            id,
            from: "u".into(),
            text,
            ts: 1,
            meta,
        }));
        let faulty = channel.ends_with("-0") && self.fault != Fault::None;
        let mut closed = None;
        for (pos, tx) in ch.members.iter().enumerate() {
            let victim = faulty && pos == VICTIM_MEMBER;
            match (victim, n, self.fault) {
                (true, VICTIM_MSG, Fault::Drop) => {}
                (true, VICTIM_MSG, Fault::Duplicate) => {
                    let _ = tx.send(msg.clone());
                    let _ = tx.send(msg.clone());
                }
                (true, VICTIM_MSG, Fault::Swap) => ch.held = Some(msg.clone()),
                (true, m, Fault::Swap) if m == VICTIM_MSG + 1 => {
                    let _ = tx.send(msg.clone());
                    if let Some(h) = ch.held.take() {
                        let _ = tx.send(h);
                    }
                }
                (true, VICTIM_MSG, Fault::Close(code)) => {
                    let _ = tx.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: "fault".into(),
                    })));
                    closed = Some(pos);
                }
                _ => {
                    let _ = tx.send(msg.clone());
                }
            }
        }
        if let Some(pos) = closed {
            ch.members.remove(pos);
        }
        id
    }

    fn join(&self, channel: &str, tx: Tx) -> usize {
        let mut channels = self.channels.lock().expect("lock");
        let ch = channels.entry(channel.to_string()).or_default();
        ch.members.push(tx);
        ch.members.len()
    }
}

async fn serve_conn(node: Arc<FakeNode>, tcp: tokio::net::TcpStream) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else { return };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok((id, req)) = parse_request(text.as_str()) else { continue };
        let mut reply = Reply::ok(id.clone().unwrap_or(Value::Null));
        match req {
            Request::Join { channel, .. } => reply.members = Some(node.join(channel.as_str(), tx.clone())),
            Request::Publish { channel, text, meta, .. } => {
                reply.message_id = Some(node.publish(channel.as_str(), text, meta));
            }
            _ => {}
        }
        if id.is_some() {
            let _ = tx.send(frame(&ServerFrame::Reply(reply)));
        }
    }
}

async fn start(fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let node = Arc::new(FakeNode { fault, channels: Mutex::new(HashMap::new()) });
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_conn(node.clone(), tcp));
        }
    });
    addr
}

/// 6 connections, 2 channels of 3 (publishers: connections 0 and 1),
/// 10 messages per channel. Joins one at a time so that member position 1
/// of channel 0 is connection 2, not the publisher.
async fn bench(fault: Fault, allow_loss: bool) -> Summary {
    let addr = start(fault).await;
    let url = format!("ws://{addr}");
    let argv =
        ["chat-bench", "-u", &url, "-n", "6", "-c", "2", "-r", "50", "-d", "400ms", "--drain", "300ms"];
    let plan = Plan::from_args(&Args::try_parse_from(argv).expect("args")).expect("plan");
    let opts = Options {
        token: None,
        connect_concurrency: 1,
        connect_rate: 0.0,
        connect_timeout: Duration::from_secs(5),
        allow_loss,
        quiet: true,
        flooders: 0,
    };
    run(plan, opts).await.expect("run")
}

#[tokio::test]
async fn clean_run_passes() {
    let s = bench(Fault::None, false).await;
    assert!(s.passed, "{:?}", s.failures);
    assert_eq!(s.sent.accepted, 20);
    assert_eq!(s.delivered.expected, 60);
    assert_eq!(s.delivered.count, 60);
    assert_eq!(s.delivered.unique, 60);
    assert_eq!(s.latency_us.samples, 60);
    assert_eq!(s.setup.joined, 6);
    let c = &s.correctness;
    assert_eq!((c.lost, c.duplicated, c.out_of_order, c.unconfirmed, c.foreign), (0, 0, 0, 0, 0));
}

#[tokio::test]
async fn catches_a_lost_message() {
    let s = bench(Fault::Drop, false).await;
    assert_eq!(s.correctness.lost, 1);
    assert_eq!(s.correctness.lost_on_closed, 0);
    assert_eq!((s.correctness.duplicated, s.correctness.out_of_order), (0, 0));
    assert!(!s.passed);
    assert!(bench(Fault::Drop, true).await.passed, "--allow-loss waives loss");
}

#[tokio::test]
async fn catches_a_duplicate() {
    let s = bench(Fault::Duplicate, true).await;
    assert_eq!(s.correctness.duplicated, 1);
    assert_eq!((s.correctness.lost, s.correctness.out_of_order), (0, 0));
    assert_eq!(s.delivered.count, 61);
    assert!(!s.passed, "duplicates fail even with --allow-loss");
}

#[tokio::test]
async fn catches_reordering() {
    let s = bench(Fault::Swap, true).await;
    assert_eq!(s.correctness.out_of_order, 1);
    assert_eq!((s.correctness.lost, s.correctness.duplicated), (0, 0));
    assert!(!s.passed, "reordering fails even with --allow-loss");
}

#[tokio::test]
async fn reports_a_server_close() {
    let s = bench(Fault::Close(4009), false).await;
    assert_eq!(s.connections.closed_early, 1);
    assert_eq!(s.connections.close_codes.get("4009"), Some(&1));
    // messages 3..9 of channel 0 never reached the closed member
    assert_eq!(s.correctness.lost, 7);
    assert_eq!(s.correctness.lost_on_closed, 7);
    assert!(!s.passed);
}

#[tokio::test]
async fn reports_connection_failures() {
    // Nothing listens on this port (bound, then closed).
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let url = format!("ws://{addr}");
    let argv = ["chat-bench", "-u", &url, "-n", "2", "-c", "1", "-r", "10", "-d", "100ms", "--drain", "0s"];
    let plan = Plan::from_args(&Args::try_parse_from(argv).expect("args")).expect("plan");
    let opts = Options {
        token: None,
        connect_concurrency: 4,
        connect_rate: 100.0,
        connect_timeout: Duration::from_secs(2),
        allow_loss: false,
        quiet: true,
        flooders: 0,
    };
    let s = run(plan, opts).await.expect("run");
    assert_eq!(s.connections.connect_failed, 2);
    assert_eq!(s.connections.failure_reasons.get("io: connection refused"), Some(&2));
    assert_eq!(s.sent.not_sent, 1);
    assert!(!s.passed);
}
