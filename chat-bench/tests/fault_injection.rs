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
use shardchat_common::protocol::{
    ChatMessage, ErrorBody, ErrorCode, Reply, Request, ServerFrame, parse_request,
};
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
    /// Close the victim; a re-join with `since` then says `recovered: false`
    /// and replays nothing.
    CloseUnrecoverable,
    /// The victim gets a `gap` push instead of the message.
    Gap,
    /// The victim message's publish is answered `unavailable`, not stored.
    UnavailableOnce,
    /// The victim message is stored and fanned out, but its publish is
    /// answered `timeout`; a retry with its nonce gets the first id back
    /// (`dedup`) or is stored a second time (`!dedup`, a server bug).
    TimeoutStored {
        dedup: bool,
    },
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
    /// Everything stored, for re-joins with `since`.
    history: Vec<(MessageId, Message)>,
    /// (sender, nonce) → id.
    nonces: HashMap<(String, String), MessageId>,
    /// The fault has been applied (faults fire once).
    faulted: bool,
}

struct FakeNode {
    fault: Fault,
    channels: Mutex<HashMap<String, Channel>>,
}

/// What a publish is answered.
enum Answer {
    Stored(MessageId),
    Duplicate(MessageId),
    Error(ErrorCode),
}

fn frame(f: &ServerFrame) -> Message {
    Message::text(serde_json::to_string(f).expect("serializable"))
}

impl FakeNode {
    fn publish(
        &self,
        user: &str,
        channel: &str,
        text: String,
        meta: Option<serde_json::Map<String, Value>>,
        nonce: Option<String>,
    ) -> Answer {
        let mut channels = self.channels.lock().expect("lock");
        let ch = channels.entry(channel.to_string()).or_default();
        let key = nonce.map(|n| (user.to_string(), n));
        if let Some(id) = key.as_ref().and_then(|k| ch.nonces.get(k))
            && self.fault != (Fault::TimeoutStored { dedup: false })
        {
            return Answer::Duplicate(*id);
        }
        let n = ch.count;
        let victim_msg = channel.ends_with("-0") && n == VICTIM_MSG && !ch.faulted;
        if victim_msg && self.fault == Fault::UnavailableOnce {
            ch.faulted = true;
            return Answer::Error(ErrorCode::Unavailable);
        }
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
        ch.history.push((id, msg.clone()));
        if let Some(k) = key {
            ch.nonces.insert(k, id);
        }
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
                (true, VICTIM_MSG, Fault::Close(code)) if !ch.faulted => {
                    let _ = tx.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: "fault".into(),
                    })));
                    closed = Some(pos);
                }
                (true, VICTIM_MSG, Fault::CloseUnrecoverable) if !ch.faulted => {
                    let _ = tx.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(1012),
                        reason: "fault".into(),
                    })));
                    closed = Some(pos);
                }
                (true, VICTIM_MSG, Fault::Gap) if !ch.faulted => {
                    let gap =
                        ServerFrame::Gap { channel: channel.parse().expect("valid"), reason: "fault".into() };
                    let _ = tx.send(frame(&gap));
                }
                _ => {
                    let _ = tx.send(msg.clone());
                }
            }
        }
        if let Some(pos) = closed {
            ch.members.remove(pos);
        }
        if victim_msg {
            ch.faulted = true;
            if matches!(self.fault, Fault::TimeoutStored { .. }) {
                return Answer::Error(ErrorCode::Timeout);
            }
        }
        Answer::Stored(id)
    }

    /// Adds a member (re-joins with `since` get what they missed first);
    /// returns (members, recovered).
    fn join(&self, channel: &str, since: Option<MessageId>, tx: Tx) -> (usize, Option<bool>) {
        let mut channels = self.channels.lock().expect("lock");
        let ch = channels.entry(channel.to_string()).or_default();
        let recovered = since.map(|since| {
            if self.fault == Fault::CloseUnrecoverable {
                return false;
            }
            for (id, msg) in &ch.history {
                if *id > since {
                    let _ = tx.send(msg.clone());
                }
            }
            true
        });
        ch.members.push(tx);
        (ch.members.len(), recovered)
    }
}

async fn serve_conn(node: Arc<FakeNode>, tcp: tokio::net::TcpStream) {
    #![allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
    use tokio_tungstenite::tungstenite::handshake::server::{Request as Http, Response};
    let mut user = String::new();
    let capture = |req: &Http, resp: Response| {
        user = req.uri().query().unwrap_or_default().to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, capture).await else { return };
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
            Request::Join { channel, since, .. } => {
                let (members, recovered) = node.join(channel.as_str(), since, tx.clone());
                reply.members = Some(members);
                reply.recovered = recovered;
            }
            Request::Publish { channel, text, meta, nonce, .. } => {
                let nonce = nonce.map(|n| n.as_str().to_string());
                match node.publish(&user, channel.as_str(), text, meta, nonce) {
                    Answer::Stored(id) => reply.message_id = Some(id),
                    Answer::Duplicate(id) => {
                        reply.message_id = Some(id);
                        reply.duplicate = Some(true);
                    }
                    Answer::Error(code) => {
                        reply = Reply::error(reply.id, ErrorBody::new(code, "fault"));
                    }
                }
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
    bench_with(fault, allow_loss, false, false).await
}

async fn bench_with(fault: Fault, allow_loss: bool, reconnect: bool, retry_publishes: bool) -> Summary {
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
        reconnect,
        retry_publishes,
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
        reconnect: false,
        retry_publishes: false,
    };
    let s = run(plan, opts).await.expect("run");
    assert_eq!(s.connections.connect_failed, 2);
    assert_eq!(s.connections.failure_reasons.get("io: connection refused"), Some(&2));
    assert_eq!(s.sent.not_sent, 1);
    assert!(!s.passed);
}

#[tokio::test]
async fn reconnects_and_recovers_exactly_with_since() {
    let s = bench_with(Fault::Close(1012), false, true, false).await;
    assert!(s.passed, "{:?}", s.failures);
    assert_eq!(s.recovery.reconnects, 1);
    assert_eq!(s.connections.closed_early, 0);
    let c = &s.correctness;
    assert_eq!((c.lost, c.excused, c.duplicated, c.out_of_order), (0, 0, 0, 0));
    assert_eq!(s.delivered.unique, 60);
}

#[tokio::test]
async fn an_unrecoverable_rejoin_excuses_only_its_window() {
    let s = bench_with(Fault::CloseUnrecoverable, false, true, false).await;
    assert!(s.passed, "{:?}", s.failures);
    assert_eq!((s.recovery.reconnects, s.recovery.recovered_false), (1, 1));
    let c = &s.correctness;
    assert!(c.excused >= 1, "the messages missed while away are excused: {c:?}");
    assert_eq!(c.lost, 0);
    assert_eq!(s.delivered.unique + c.excused, 60);
}

#[tokio::test]
async fn a_gap_push_excuses_the_missing_message() {
    let s = bench_with(Fault::Gap, false, true, false).await;
    assert!(s.passed, "{:?}", s.failures);
    assert_eq!(s.recovery.gaps, 1);
    assert_eq!((s.correctness.excused, s.correctness.lost), (1, 0));
    // Without --reconnect the ids are not kept: the same gap is a loss.
    let s = bench_with(Fault::Gap, false, false, false).await;
    assert_eq!(s.correctness.lost, 1);
    assert!(!s.passed);
}

#[tokio::test]
async fn an_unavailable_publish_is_retried_and_lands_once() {
    let s = bench_with(Fault::UnavailableOnce, false, false, false).await;
    assert_eq!((s.sent.accepted, s.sent.rejected), (19, 1), "without retries it stays rejected");
    let s = bench_with(Fault::UnavailableOnce, false, false, true).await;
    assert!(s.passed, "{:?}", s.failures);
    assert_eq!((s.sent.accepted, s.sent.rejected, s.sent.retries), (20, 0, 1));
    assert_eq!(s.delivered.unique, 60);
}

#[tokio::test]
async fn a_timed_out_publish_retried_with_its_nonce_is_not_stored_twice() {
    let s = bench_with(Fault::TimeoutStored { dedup: true }, false, false, true).await;
    assert!(s.passed, "{:?}", s.failures);
    assert_eq!((s.sent.accepted, s.sent.retries, s.sent.deduplicated), (20, 1, 1));
    assert_eq!(s.correctness.duplicated, 0);
    // A server that ignores the nonce stores it twice: every member sees it again.
    let s = bench_with(Fault::TimeoutStored { dedup: false }, true, false, true).await;
    assert_eq!(s.correctness.duplicated, 3);
    assert!(!s.passed);
}
