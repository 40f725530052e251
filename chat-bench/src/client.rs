//! One client connection: connect, join its channel, publish on schedule
//! (if it is a publisher), account for everything it receives, and hand
//! back a [`ConnOutcome`] at the end.
//!
//! [`Conn`] holds the per-connection state and classifies frames (no I/O,
//! unit-tested); [`run_connection`] drives the socket.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shardchat_common::protocol::{ChatMessage, Reply, ServerFrame};
use shardchat_common::{ChannelName, MessageId};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header::AUTHORIZATION};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::latency::ShardedHistogram;
use crate::meta::BenchMeta;
use crate::plan::Plan;
use crate::tracker::{Excuses, MemberLog, Origin, PublishOutcome, PublisherLog};

/// Request id of the join; publishes use their sequence number.
const JOIN_ID: &str = "join";
/// Close-code key for a connection that ended without a close frame.
pub const ABNORMAL: &str = "1006";
/// Close-code key for a connection whose publish could not be written
/// before the end of the run (the server stopped reading).
pub const STALLED: &str = "stalled";
/// Error codes after which a publish may be sent again with its nonce:
/// `unavailable` (not stored) and `timeout` (outcome unknown; the nonce
/// makes the retry safe).
const RETRYABLE: [&str; 2] = ["unavailable", "timeout"];
/// Wait before re-sending a publish that got a retryable error.
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// Reconnect backoff: first wait, and the cap it doubles up to.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Everything the connection tasks share.
pub struct Shared {
    pub plan: Plan,
    /// `plan.channel_name(k)` for every channel.
    pub channel_names: Vec<ChannelName>,
    pub token: Option<String>,
    /// Origin of the `t` stamps (see [`crate::meta`]).
    pub epoch: Instant,
    pub latency: ShardedHistogram,
    pub send_lag: ShardedHistogram,
    /// Bounds how many connections are being set up at once.
    pub setup_gate: Semaphore,
    /// With `--connect-rate`: connection i starts no earlier than
    /// `epoch + i × interval`.
    pub connect_interval: Option<Duration>,
    pub connect_timeout: Duration,
    pub text: String,
    /// `--reconnect`: a lost connection reconnects and re-joins with `since`.
    pub reconnect: bool,
    /// `--retry-publishes`: publishes carry a nonce and are sent again after
    /// `unavailable`/`timeout` or a lost connection.
    pub retry: bool,
}

/// When the run's phases end, fixed once every connection is set up.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// First publish due.
    pub t0: Instant,
    /// Stop reading and close (end of the drain).
    pub end: Instant,
}

/// How far a connection got through setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    ConnectFailed(String),
    JoinFailed(String),
    Joined,
}

/// What one connection reports at the end.
#[derive(Debug)]
pub struct ConnOutcome {
    pub index: usize,
    pub channel: usize,
    pub stage: Stage,
    /// Set when the connection ended before the run did: close code (as a
    /// string) or [`ABNORMAL`].
    pub closed_early: Option<String>,
    pub member: MemberLog,
    pub publisher: Option<PublisherLog>,
    /// Scheduled publishes never sent (setup failed or connection gone).
    pub not_sent: u64,
    /// Error replies and error pushes, by code.
    pub errors: BTreeMap<String, u64>,
    pub presence: u64,
    /// Frames that break the protocol: unparsable, binary, replies to
    /// unknown ids, messages for a channel not joined, ok replies to a
    /// publish without a message id.
    pub protocol_violations: u64,
    pub last_delivery: Option<Instant>,
    pub recovery: Recovery,
}

/// What a connection went through to stay a member (`--reconnect`).
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Successful reconnects (each followed by a re-join with `since`).
    pub reconnects: u64,
    /// Re-joins whose reply said `recovered: false`.
    pub recovered_false: u64,
    /// `gap` pushes for the channel.
    pub gaps: u64,
    /// The windows those two signals declared.
    pub excuses: Excuses,
}

/// Join status while setting up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Join {
    Pending,
    Done,
    Failed(String),
}

/// Per-connection state and frame classification.
pub struct Conn {
    shared: Arc<Shared>,
    index: usize,
    channel_idx: usize,
    channel: ChannelName,
    /// `--dm`: this connection's user and its conversation's other member.
    dm: Option<DmPair>,
    join: Join,
    member: MemberLog,
    publisher: Option<PublisherLog>,
    errors: BTreeMap<String, u64>,
    presence: u64,
    protocol_violations: u64,
    last_delivery: Option<Instant>,
    recovery: Recovery,
    /// Publishes sent on the current connection and not yet answered, with
    /// the `t` stamp of their first send.
    inflight: BTreeMap<u64, u64>,
    /// Publishes to send again (with their nonce).
    retry_queue: VecDeque<Pending>,
    /// Retries are allowed until then (set with the timeline).
    retry_until: Option<Instant>,
}

/// The two users of a direct-message conversation, as this connection sees it.
#[derive(Debug, Clone)]
struct DmPair {
    me: String,
    peer: String,
}

/// A publish waiting to be sent again.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Not before then.
    due: Instant,
    seq: u64,
    /// The `t` stamp of its first send (latency counts from there).
    t_ns: u64,
}

/// Whether a direct message from `from` to `to` belongs to `pair`'s conversation.
fn is_conversation(pair: &DmPair, from: &str, to: &str) -> bool {
    (from == pair.me && to == pair.peer) || (from == pair.peer && to == pair.me)
}

/// Whether to keep reading after a frame.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Closed(String),
}

impl Conn {
    pub fn new(shared: Arc<Shared>, index: usize) -> Self {
        let plan = &shared.plan;
        let channel_idx = plan.channel_of(index);
        let channel = shared.channel_names[channel_idx].clone();
        let member = MemberLog::new(plan.publishers_per_channel, plan.max_seq());
        let publisher = plan
            .publisher_slot(index)
            .map(|_| if shared.reconnect { PublisherLog::with_ids() } else { PublisherLog::new() });
        let dm = plan.dm.then(|| DmPair { me: plan.user_of(index), peer: plan.user_of(plan.peer_of(index)) });
        Self {
            index,
            channel_idx,
            channel,
            dm,
            join: Join::Pending,
            member,
            publisher,
            errors: BTreeMap::new(),
            presence: 0,
            protocol_violations: 0,
            last_delivery: None,
            recovery: Recovery::default(),
            inflight: BTreeMap::new(),
            retry_queue: VecDeque::new(),
            retry_until: None,
            shared,
        }
    }

    fn on_ws_message(&mut self, msg: Message, now: Instant) -> Flow {
        match msg {
            Message::Text(text) => {
                self.on_text(text.as_str(), now);
                Flow::Continue
            }
            Message::Close(frame) => Flow::Closed(match frame {
                Some(f) => u16::from(f.code).to_string(),
                None => "1005".to_string(),
            }),
            Message::Binary(_) => {
                self.protocol_violations += 1;
                Flow::Continue
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Flow::Continue,
        }
    }

    fn on_text(&mut self, text: &str, now: Instant) {
        match serde_json::from_str::<ServerFrame>(text) {
            Ok(ServerFrame::Message(m)) => self.on_chat_message(m, now),
            Ok(ServerFrame::Reply(r)) => self.on_reply(r, now),
            Ok(ServerFrame::Presence(_)) => self.presence += 1,
            Ok(ServerFrame::Error { error }) => self.count_error(error.code.as_str()),
            Ok(ServerFrame::Closed { .. }) => self.count_error("channel_closed"),
            Ok(ServerFrame::Gap { channel, .. }) => {
                self.count_error("gap");
                if channel == self.channel {
                    self.recovery.gaps += 1;
                    self.recovery.excuses.open(self.member.highest());
                }
            }
            Ok(ServerFrame::Dm(d)) => match &self.dm {
                Some(pair) if is_conversation(pair, &d.from, &d.to) => {
                    self.on_delivery(d.id, d.meta.as_ref(), now);
                }
                // Not ours (e.g. another run's user), or not a --dm run.
                _ => self.protocol_violations += 1,
            },
            Ok(ServerFrame::DmGap { .. }) => {
                self.count_error("dm_gap");
                if self.dm.is_some() {
                    self.recovery.gaps += 1;
                    self.recovery.excuses.open(self.member.highest());
                }
            }
            Err(_) => self.protocol_violations += 1,
        }
    }

    fn count_error(&mut self, code: &str) {
        *self.errors.entry(code.to_string()).or_default() += 1;
    }

    fn on_chat_message(&mut self, m: ChatMessage, now: Instant) {
        if m.channel != self.channel || self.dm.is_some() {
            self.protocol_violations += 1;
            return;
        }
        self.on_delivery(m.id, m.meta.as_ref(), now);
    }

    /// A message of this connection's channel (or conversation) arrived.
    fn on_delivery(&mut self, id: MessageId, meta: Option<&serde_json::Map<String, Value>>, now: Instant) {
        let stamp = BenchMeta::from_meta(meta);
        let origin = stamp.and_then(|s| {
            let slot = self.shared.plan.slot_in_channel(s.publisher, self.channel_idx)?;
            Some(Origin { slot, seq: s.seq })
        });
        let verdict = self.member.record(id, origin);
        self.recovery.excuses.delivered(id);
        if let Some(s) = stamp
            && verdict.is_first_delivery()
        {
            let sent = Duration::from_nanos(s.t_ns);
            let latency = now.duration_since(self.shared.epoch).saturating_sub(sent);
            self.shared.latency.record(self.index, latency);
        }
        self.last_delivery = Some(now);
    }

    fn on_reply(&mut self, r: Reply, now: Instant) {
        let code = r.error.as_ref().map_or("unknown", |e| e.code.as_str()).to_string();
        if !r.ok {
            self.count_error(&code);
        }
        match &r.id {
            Value::String(s) if s == JOIN_ID => {
                self.join = if r.ok {
                    if r.recovered == Some(false) {
                        self.recovery.recovered_false += 1;
                        self.recovery.excuses.open(self.member.highest());
                    }
                    Join::Done
                } else {
                    Join::Failed(format!("join: {code}"))
                };
            }
            Value::Number(n) => {
                let retry_allowed = self.may_retry(now);
                let (Some(seq), Some(p)) = (n.as_u64(), self.publisher.as_mut()) else {
                    self.protocol_violations += 1;
                    return;
                };
                let first_sent = self.inflight.remove(&seq);
                match (r.ok, r.message_id) {
                    (true, Some(id)) => {
                        p.accepted_as(seq, id, r.duplicate == Some(true));
                    }
                    (true, None) => {
                        self.protocol_violations += 1;
                        p.answered(seq, PublishOutcome::Rejected);
                    }
                    (false, _)
                        if retry_allowed && RETRYABLE.contains(&code.as_str()) && !p.is_settled(seq) =>
                    {
                        let t_ns = first_sent.unwrap_or_else(|| self.stamp(now));
                        self.retry_queue.push_back(Pending { due: now + RETRY_DELAY, seq, t_ns });
                    }
                    (false, _) => {
                        p.answered(seq, PublishOutcome::Rejected);
                    }
                }
            }
            _ => self.protocol_violations += 1,
        }
    }

    /// The connection was lost: its unanswered publishes are sent again
    /// after the reconnect (`--retry-publishes`) or counted as interrupted.
    fn on_connection_lost(&mut self, now: Instant) {
        let inflight = std::mem::take(&mut self.inflight);
        let retry_allowed = self.may_retry(now);
        for (seq, t_ns) in inflight {
            if retry_allowed {
                self.retry_queue.push_back(Pending { due: now, seq, t_ns });
            } else if let Some(p) = self.publisher.as_mut() {
                p.interrupted(seq);
            }
        }
    }

    /// Whether a publish may still be sent again (`--retry-publishes`, and
    /// not past the retry window).
    fn may_retry(&self, now: Instant) -> bool {
        self.shared.retry && self.retry_until.is_some_and(|until| now < until)
    }

    /// Nanoseconds since the bench's epoch (the `t` stamp).
    fn stamp(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.shared.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The frame for publish `seq`, marked as sent on the current connection.
    fn send_publish(&mut self, seq: u64, t_ns: u64) -> String {
        self.inflight.insert(seq, t_ns);
        if let Some(p) = self.publisher.as_mut() {
            p.sent(seq);
        }
        self.publish_frame(seq, t_ns)
    }

    fn publish_frame(&self, seq: u64, t_ns: u64) -> String {
        let meta = BenchMeta { publisher: self.index as u64, seq, t_ns };
        let mut frame = match &self.dm {
            Some(pair) => json!({
                "op": "dm",
                "id": seq,
                "to": pair.peer,
                "text": self.shared.text,
                "meta": meta.to_value(),
            }),
            None => json!({
                "op": "publish",
                "id": seq,
                "channel": self.channel,
                "text": self.shared.text,
                "meta": meta.to_value(),
            }),
        };
        if self.shared.retry {
            // Scoped by the server to (channel, sender): the seq is unique there.
            frame["nonce"] = Value::String(format!("s{seq}"));
        }
        frame.to_string()
    }

    fn join_frame(&self) -> String {
        if self.dm.is_some() {
            // Direct messages need no join: syncing the mailbox is the
            // protocol's first step, and its reply says the connection is ready.
            return json!({"op": "dm_sync", "id": JOIN_ID}).to_string();
        }
        match self.member.highest() {
            Some(since) => json!({"op": "join", "id": JOIN_ID, "channel": self.channel, "since": since}),
            None => json!({"op": "join", "id": JOIN_ID, "channel": self.channel}),
        }
        .to_string()
    }

    fn finish(mut self, stage: Stage, closed_early: Option<String>, not_sent: u64) -> ConnOutcome {
        // Retries still pending at the end got an error reply and no
        // further chance: they count as rejected.
        if let Some(p) = self.publisher.as_mut() {
            for pending in self.retry_queue.drain(..) {
                if !p.is_settled(pending.seq) {
                    p.answered(pending.seq, PublishOutcome::Rejected);
                }
            }
        }
        ConnOutcome {
            index: self.index,
            channel: self.channel_idx,
            stage,
            closed_early,
            member: self.member,
            publisher: self.publisher,
            not_sent,
            errors: self.errors,
            presence: self.presence,
            protocol_violations: self.protocol_violations,
            last_delivery: self.last_delivery,
            recovery: self.recovery,
        }
    }
}

/// Setup progress, reported once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupEvent {
    Joined,
    Failed,
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: thousands of connections, small frames. Frames are
    // written at once (no batching) so latency is not inflated.
    WebSocketConfig::default().read_buffer_size(16 * 1024).write_buffer_size(0)
}

fn connect_error(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("http {}", resp.status().as_u16()),
        WsError::Io(io) => format!("io: {}", io.kind()),
        WsError::Url(u) => format!("url: {u}"),
        other => other.to_string().chars().take(80).collect(),
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 86_400)
}

/// Why a connection could not be (re)established.
enum SetupError {
    Connect(String),
    Join(String),
}

/// Connects to endpoint `node` and joins the channel (with `since` when the
/// connection has received messages before), reading pushes meanwhile.
/// The handshake and the join reply each get `--connect-timeout`, neither
/// beyond `limit`.
async fn connect_and_join(conn: &mut Conn, node: usize, limit: Instant) -> Result<Ws, SetupError> {
    let url = conn.shared.plan.url_at(node, conn.index, conn.shared.token.is_none());
    let mut ws = match timeout_at(limit, connect(&conn.shared, &url)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(reason)) => return Err(SetupError::Connect(reason)),
        Err(_) => return Err(SetupError::Connect("connect timeout".into())),
    };
    let deadline = (Instant::now() + conn.shared.connect_timeout).min(limit);
    conn.join = Join::Pending;
    let mut error = match timeout_at(deadline, ws.send(Message::text(conn.join_frame()))).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("closed during join ({})", connect_error(&e))),
        Err(_) => Some("join timeout".into()),
    };
    while error.is_none() && conn.join == Join::Pending {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => error = Some("join timeout".into()),
            Ok(None) => error = Some(format!("closed during join ({ABNORMAL})")),
            Ok(Some(Err(e))) => error = Some(format!("closed during join ({})", connect_error(&e))),
            Ok(Some(Ok(msg))) => {
                if let Flow::Closed(code) = conn.on_ws_message(msg, Instant::now()) {
                    error = Some(format!("closed during join ({code})"));
                }
            }
        }
    }
    if let Join::Failed(reason) = &conn.join {
        error = Some(reason.clone());
    }
    match error {
        None => Ok(ws),
        Some(reason) => {
            let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
            Err(SetupError::Join(reason))
        }
    }
}

/// `--reconnect`: tries the next endpoints in turn, with backoff, until a
/// connection joins or the run ends (`None`).
async fn reconnect(conn: &mut Conn, node: &mut usize, end: Instant) -> Option<Ws> {
    let endpoints = conn.shared.plan.endpoints.len();
    let mut wait = RECONNECT_FIRST;
    loop {
        if Instant::now() + wait >= end {
            return None;
        }
        tokio::time::sleep(wait).await;
        *node = (*node + 1) % endpoints;
        match connect_and_join(conn, *node, end).await {
            Ok(ws) => return Some(ws),
            Err(_) => wait = (wait * 2).min(RECONNECT_MAX),
        }
    }
}

/// Writes one frame; the error is the close-code key for the connection.
async fn send_frame(ws: &mut Ws, frame: String, deadline: Instant) -> Result<(), &'static str> {
    match timeout_at(deadline, ws.send(Message::text(frame))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ABNORMAL),
        Err(_) => Err(STALLED),
    }
}

/// Runs connection `index` until the end of the run.
pub async fn run_connection(
    shared: Arc<Shared>,
    index: usize,
    mut start: watch::Receiver<Option<Timeline>>,
    setup_done: mpsc::UnboundedSender<SetupEvent>,
) -> ConnOutcome {
    let plan_sends = shared.plan.sends_of(index);
    let mut conn = Conn::new(shared.clone(), index);
    let mut node = shared.plan.node_of(index);

    // --- setup: connect and join, paced, at most `connect_concurrency` at a time
    if let Some(interval) = shared.connect_interval {
        sleep_until(shared.epoch + interval.mul_f64(index as f64)).await;
    }
    let permit = shared.setup_gate.acquire().await;
    let first = connect_and_join(&mut conn, node, far_future()).await;
    drop(permit);
    let mut ws = match first {
        Ok(ws) => ws,
        Err(e) => {
            let _ = setup_done.send(SetupEvent::Failed);
            let stage = match e {
                SetupError::Connect(reason) => Stage::ConnectFailed(reason),
                SetupError::Join(reason) => Stage::JoinFailed(reason),
            };
            return conn.finish(stage, None, plan_sends);
        }
    };
    let _ = setup_done.send(SetupEvent::Joined);

    // --- run: read everything, publish on schedule, stop at the end
    let mut timeline: Option<Timeline> = None;
    let mut next_seq: u64 = 0;
    let send_timer = sleep_until(far_future());
    let end_timer = sleep_until(far_future());
    let retry_timer = sleep_until(far_future());
    tokio::pin!(send_timer, end_timer, retry_timer);
    let arm = |tl: &Timeline, seq: u64| tl.t0 + shared.plan.send_offset(index, seq);
    let mut closed_early = None;
    loop {
        if timeline.is_none()
            && let Some(tl) = *start.borrow_and_update()
        {
            timeline = Some(tl);
            conn.retry_until = Some(tl.t0 + shared.plan.duration + shared.plan.drain / 2);
            end_timer.as_mut().reset(tl.end);
            if plan_sends > 0 {
                send_timer.as_mut().reset(arm(&tl, 0));
            }
        }
        if let Some(p) = conn.retry_queue.front()
            && retry_timer.deadline() != p.due
        {
            retry_timer.as_mut().reset(p.due);
        }
        let sending = timeline.is_some() && next_seq < plan_sends;
        let retrying = timeline.is_some() && !conn.retry_queue.is_empty();
        // A server that stops reading must not hold the run past its end.
        let write_deadline = timeline.map_or_else(far_future, |tl| tl.end);
        let lost: Option<String> = tokio::select! {
            frame = ws.next() => {
                match frame {
                    Some(Ok(msg)) => match conn.on_ws_message(msg, Instant::now()) {
                        Flow::Closed(code) => Some(code),
                        Flow::Continue => None,
                    },
                    Some(Err(_)) | None => Some(ABNORMAL.to_string()),
                }
            }
            changed = start.changed(), if timeline.is_none() => {
                if changed.is_err() {
                    break; // the runner is gone
                }
                None
            }
            () = &mut send_timer, if sending => {
                let due = send_timer.deadline();
                let now = Instant::now();
                let frame = conn.send_publish(next_seq, conn.stamp(now));
                shared.send_lag.record(index, now.saturating_duration_since(due));
                next_seq += 1;
                if let Some(tl) = &timeline
                    && next_seq < plan_sends
                {
                    send_timer.as_mut().reset(arm(tl, next_seq));
                }
                send_frame(&mut ws, frame, write_deadline).await.err().map(str::to_string)
            }
            () = &mut retry_timer, if retrying => {
                match conn.retry_queue.pop_front() {
                    Some(p) if conn.publisher.as_ref().is_some_and(|log| !log.is_settled(p.seq)) => {
                        let frame = conn.send_publish(p.seq, p.t_ns);
                        send_frame(&mut ws, frame, write_deadline).await.err().map(str::to_string)
                    }
                    _ => None,
                }
            }
            () = &mut end_timer, if timeline.is_some() => break,
        };
        let Some(code) = lost else { continue };
        let now = Instant::now();
        conn.on_connection_lost(now);
        let end = timeline.map(|tl| tl.end);
        let new_ws = match end {
            Some(end) if shared.reconnect && now < end => reconnect(&mut conn, &mut node, end).await,
            _ => None,
        };
        match new_ws {
            Some(new_ws) => {
                ws = new_ws;
                conn.recovery.reconnects += 1;
            }
            None => {
                closed_early = Some(code);
                break;
            }
        }
    }
    let not_sent = plan_sends.saturating_sub(next_seq);
    if closed_early.is_none() {
        // Close politely and give the server a moment to answer.
        let deadline = Instant::now() + Duration::from_secs(1);
        if timeout_at(deadline, ws.close(None)).await.is_ok() {
            while let Ok(Some(Ok(msg))) = timeout_at(deadline, ws.next()).await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        }
    }
    conn.finish(Stage::Joined, closed_early, not_sent)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(shared: &Shared, url: &str) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| connect_error(&e))?;
    if let Some(token) = &shared.token {
        let value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "invalid token".to_string())?;
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true);
    match timeout(shared.connect_timeout, connecting).await {
        Err(_) => Err("connect timeout".into()),
        Ok(Err(e)) => Err(connect_error(&e)),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use clap::Parser;

    fn shared(extra: &[&str]) -> Arc<Shared> {
        let mut argv = vec!["chat-bench", "--run-id", "t"];
        argv.extend_from_slice(extra);
        let plan = Plan::from_args(&Args::try_parse_from(argv).unwrap()).unwrap();
        let channel_names = (0..plan.channels).map(|k| plan.channel_name(k).unwrap()).collect();
        Arc::new(Shared {
            plan,
            channel_names,
            token: None,
            epoch: Instant::now(),
            latency: ShardedHistogram::new().unwrap(),
            send_lag: ShardedHistogram::new().unwrap(),
            setup_gate: Semaphore::new(1),
            connect_interval: None,
            connect_timeout: Duration::from_secs(1),
            text: "x".into(),
            reconnect: extra.contains(&"--reconnect"),
            retry: extra.contains(&"--retry-publishes"),
        })
    }

    fn push(channel: &str, id: &str, meta: Value) -> String {
        json!({"op":"message","channel":channel,"id":id,"from":"u","text":"x","ts":1,"meta":meta}).to_string()
    }

    fn stamp(publisher: u64, seq: u64) -> Value {
        BenchMeta { publisher, seq, t_ns: 0 }.to_value()
    }

    #[test]
    fn classifies_pushes() {
        // 4 connections, 2 channels, 1 publisher each: conn 0 → ch 0, conn 1 → ch 1.
        let s = shared(&["-n", "4", "-c", "2", "-r", "10", "-d", "1"]);
        let mut c = Conn::new(s.clone(), 2); // member of bench-t-0
        let now = Instant::now();
        c.on_text(&push("bench-t-0", "1-0", stamp(0, 0)), now);
        c.on_text(&push("bench-t-0", "1-0", stamp(0, 0)), now); // duplicate
        c.on_text(&push("bench-t-0", "3-0", stamp(0, 2)), now);
        c.on_text(&push("bench-t-0", "2-0", stamp(0, 1)), now); // out of order
        c.on_text(&push("bench-t-0", "4-0", stamp(1, 0)), now); // channel 1's publisher: foreign
        c.on_text(&push("bench-t-0", "5-0", json!({"x": 1})), now); // no stamp: foreign
        c.on_text(&push("bench-t-1", "6-0", stamp(1, 0)), now); // not our channel
        c.on_text("{not json", now);
        c.on_text(r#"{"op":"presence","channel":"bench-t-0","event":"join","user":"u"}"#, now);
        c.on_text(r#"{"op":"error","error":{"code":"rate_limited","message":"slow down"}}"#, now);
        let counts = c.member.counts();
        assert_eq!(counts.delivered, 6);
        assert_eq!(counts.duplicated, 1);
        assert_eq!(counts.out_of_order, 1);
        assert_eq!(counts.foreign, 2);
        assert_eq!(c.protocol_violations, 2);
        assert_eq!(c.presence, 1);
        assert_eq!(c.errors.get("rate_limited"), Some(&1));
        // latency recorded once per first delivery of a stamped message (3)
        assert_eq!(s.latency.merged().len(), 3);
        assert!(c.last_delivery.is_some());
    }

    #[test]
    fn classifies_replies() {
        let s = shared(&["-n", "2", "-c", "1", "-r", "10", "-d", "1"]);
        let mut c = Conn::new(s, 0); // the publisher
        let now = Instant::now();
        c.on_text(r#"{"op":"reply","id":"join","ok":true,"members":2}"#, now);
        assert_eq!(c.join, Join::Done);
        let p = c.publisher.as_mut().unwrap();
        for seq in 0..4 {
            p.sent(seq);
        }
        c.on_text(r#"{"op":"reply","id":0,"ok":true,"message_id":"1-0"}"#, now);
        c.on_text(r#"{"op":"reply","id":1,"ok":false,"error":{"code":"rate_limited","message":"x"}}"#, now);
        c.on_text(r#"{"op":"reply","id":2,"ok":true}"#, now); // no message id
        c.on_text(r#"{"op":"reply","id":"nope","ok":true}"#, now);
        let p = c.publisher.as_ref().unwrap();
        assert_eq!(p.accepted().len(), 1);
        assert_eq!(p.rejected(), 2);
        assert_eq!(p.unanswered(), 1);
        assert_eq!(c.errors.get("rate_limited"), Some(&1));
        assert_eq!(c.protocol_violations, 2);

        let mut m = Conn::new(shared(&["-n", "2", "-c", "1"]), 1);
        m.on_text(
            r#"{"op":"reply","id":"join","ok":false,"error":{"code":"channel_full","message":"x"}}"#,
            now,
        );
        assert_eq!(m.join, Join::Failed("join: channel_full".into()));
        assert_eq!(m.errors.get("channel_full"), Some(&1));
        m.on_text(r#"{"op":"reply","id":0,"ok":true,"message_id":"1-0"}"#, now);
        assert_eq!(m.protocol_violations, 1, "a member that never published got a publish reply");
    }

    #[test]
    fn direct_message_runs_send_dm_frames_and_count_only_their_conversation() {
        // Conversation 0 is between connections 0 and 2 (two conversations, four connections).
        let s = shared(&["--dm", "-n", "4", "-c", "2", "-p", "2"]);
        let mut c = Conn::new(s, 0);
        let frame: Value = serde_json::from_str(&c.publish_frame(3, 5)).unwrap();
        assert_eq!(frame["op"], "dm");
        assert_eq!(frame["to"], "bench-t-2");
        assert_eq!(BenchMeta::from_meta(frame["meta"].as_object()).unwrap().seq, 3);
        let sync: Value = serde_json::from_str(&c.join_frame()).unwrap();
        assert_eq!(sync["op"], "dm_sync", "setup syncs the mailbox instead of joining");
        c.on_text(r#"{"op":"reply","id":"join","ok":true,"messages":[]}"#, Instant::now());
        assert_eq!(c.join, Join::Done);

        let dm = |id: &str, from: &str, to: &str, publisher: u64, seq: u64| {
            json!({"op":"dm","id":id,"cursor":id,"from":from,"to":to,"text":"x","ts":1,
                   "meta": BenchMeta { publisher, seq, t_ns: 1 }.to_value()})
            .to_string()
        };
        let now = Instant::now();
        c.on_text(&dm("5-0", "bench-t-0", "bench-t-2", 0, 0), now);
        c.on_text(&dm("6-0", "bench-t-2", "bench-t-0", 2, 0), now);
        assert_eq!(c.member.highest(), Some(MessageId::new(6, 0)), "both directions count");
        c.on_text(&dm("7-0", "bench-t-1", "bench-t-0", 1, 0), now);
        assert_eq!(c.protocol_violations, 1, "a message from outside the conversation is a violation");
        assert_eq!(c.member.highest(), Some(MessageId::new(6, 0)));
    }

    #[test]
    fn direct_message_runs_need_two_members_per_conversation() {
        for bad in [&["--dm", "-n", "5", "-c", "2"][..], &["--dm", "-n", "4", "-c", "2", "--reconnect"]] {
            let mut argv = vec!["chat-bench"];
            argv.extend_from_slice(bad);
            assert!(Plan::from_args(&Args::try_parse_from(argv).unwrap()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn publish_frames_follow_the_protocol() {
        let s = shared(&["-n", "2", "-c", "1"]);
        let c = Conn::new(s, 0);
        let req = shardchat_common::protocol::parse_request(&c.publish_frame(7, 99)).unwrap();
        assert_eq!(req.0, Some(json!(7)));
        let shardchat_common::protocol::Request::Publish { channel, text, meta, .. } = req.1 else {
            panic!("not a publish");
        };
        assert_eq!(channel.as_str(), "bench-t-0");
        assert_eq!(text, "x");
        let stamp = BenchMeta::from_meta(meta.as_ref()).unwrap();
        assert_eq!(stamp, BenchMeta { publisher: 0, seq: 7, t_ns: 99 });
        let join = shardchat_common::protocol::parse_request(&c.join_frame()).unwrap();
        assert_eq!(join.1.op(), "join");
    }

    #[test]
    fn close_frames_end_the_connection() {
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        let mut c = Conn::new(shared(&["-n", "1", "-c", "1"]), 0);
        let close = Message::Close(Some(CloseFrame { code: CloseCode::from(4009), reason: "slow".into() }));
        assert_eq!(c.on_ws_message(close, Instant::now()), Flow::Closed("4009".into()));
        assert_eq!(c.on_ws_message(Message::Close(None), Instant::now()), Flow::Closed("1005".into()));
        assert_eq!(c.on_ws_message(Message::binary(vec![1]), Instant::now()), Flow::Continue);
        assert_eq!(c.protocol_violations, 1);
    }
}
