//! One client WebSocket connection: a reader that parses and handles
//! requests, and a writer that drains the connection's bounded outbound
//! queue, sends pings and the final close frame.

pub mod identity;
mod limits;
mod ops;
pub mod outbound;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use shardchat_common::ChannelName;
use shardchat_common::protocol::{ErrorBody, ErrorCode, Reply, Request, ServerFrame, parse_request};
use tokio::time::Instant;
use tracing::Instrument;

use crate::error::{ChatError, ChatResult};
use crate::node::Node;
pub use identity::Identity;
use limits::ConnectionLimits;
pub(crate) use ops::{check_content, clamp_limit};
use outbound::{CloseReason, CloseSignal, Outbound, OutboundReceiver, QueueLimits, SessionHandle};

/// Close sent when the session's token expires.
const TOKEN_EXPIRED: CloseReason =
    CloseReason { code: shardchat_common::protocol::close_code::UNAUTHORIZED, reason: "token expired" };

/// How long the server waits for its side of a closing handshake.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

/// Publishes of one connection on their way to the owner, answered in order.
type InFlight = FuturesOrdered<BoxFuture<'static, (Option<Value>, ChatResult<Reply>)>>;

/// State of one connection, owned by its reader.
pub struct Session {
    node: Arc<Node>,
    handle: SessionHandle,
    identity: Identity,
    joined: HashSet<ChannelName>,
    limits: ConnectionLimits,
}

/// Runs the connection until it closes, then removes it from every channel.
pub async fn run(node: Arc<Node>, socket: WebSocket, identity: Identity) {
    let id = node.next_session_id();
    let span = tracing::info_span!("session", session = id, user = %identity.user);
    async move {
        let _guard = node.lifecycle.session();
        node.metrics.connections.inc();
        node.metrics.connections_total.inc();
        let (handle, rx, close) =
            SessionHandle::new(id, identity.user.clone(), QueueLimits::from_config(&node.config));
        let (sink, mut stream) = socket.split();
        let writer = tokio::spawn(
            write_loop(sink, rx, close.clone(), node.config.ping_interval, node.config.idle_timeout)
                .in_current_span(),
        );
        let limits = ConnectionLimits::new(&node.config);
        let mut session = Session { node: node.clone(), handle, identity, joined: HashSet::new(), limits };
        tracing::debug!("connected");
        session.register_for_direct_messages(true).await;
        session.read_loop(&mut stream, &close).await;
        session.leave_all().await;
        session.register_for_direct_messages(false).await;
        let reason = close.reason();
        let mut writer = writer;
        match reason {
            Some(r) if r != CloseReason::PEER_GONE => {
                // Closing handshake: the writer sends our close frame, then we
                // wait (briefly) for the client's, so it reads the code before
                // the TCP connection goes away. A slow consumer's socket is
                // full, so its close frame waits behind what is already being
                // written: give the writer its own write timeout for that.
                let writer_grace =
                    if r == CloseReason::SLOW_CONSUMER { node.config.idle_timeout } else { CLOSE_HANDSHAKE };
                if tokio::time::timeout(writer_grace, &mut writer).await.is_err() {
                    writer.abort();
                }
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
                    while let Some(Ok(m)) = stream.next().await {
                        if matches!(m, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
            _ => writer.abort(),
        }
        let label = reason.map(|r| r.label()).unwrap_or("client");
        if reason == Some(CloseReason::SLOW_CONSUMER) {
            node.metrics.slow_consumer_disconnects.inc();
        }
        node.metrics.disconnects.with_label_values(&[label]).inc();
        node.metrics.connections.dec();
        tracing::debug!(reason = label, "disconnected");
    }
    .instrument(span)
    .await
}

impl Session {
    async fn read_loop(&mut self, stream: &mut SplitStream<WebSocket>, close: &CloseSignal) {
        let idle_timeout = self.node.config.idle_timeout;
        let mut last_seen = Instant::now();
        let mut idle_check =
            tokio::time::interval(idle_timeout.min(Duration::from_secs(1)).max(Duration::from_millis(50)));
        // A token that runs out mid-session ends the session: the client
        // gets an `unauthorized` push, then close 4001, and reconnects with
        // a fresh token.
        let expiry =
            crate::auth::session_deadline(Instant::now(), self.identity.expires_at, self.node.auth.leeway());
        let expiry = tokio::time::sleep_until(expiry);
        tokio::pin!(expiry);
        let mut expired = false;
        let mut drain = self.node.lifecycle.drain_signal();
        if *drain.borrow_and_update() {
            self.handle.close(CloseReason::SHUTDOWN);
        }
        let mut in_flight: InFlight = FuturesOrdered::new();
        let max_in_flight = self.node.config.max_inflight_publishes.max(1);
        loop {
            tokio::select! {
                _ = close.closed() => return,
                Some((id, result)) = in_flight.next(), if !in_flight.is_empty() => self.answer(id, result),
                Ok(()) = drain.changed() => self.handle.close(CloseReason::SHUTDOWN),
                () = &mut expiry, if !expired => {
                    expired = true;
                    self.send_error(None, ChatError::new(ErrorCode::Unauthorized, "token expired; reconnect with a fresh token"));
                    self.node.auth.metrics.token_expired_closes.inc();
                    self.handle.close(TOKEN_EXPIRED);
                }
                _ = idle_check.tick() => {
                    if last_seen.elapsed() >= idle_timeout {
                        self.handle.close(CloseReason::IDLE);
                    }
                }
                // A connection with its pipeline full is not read until a reply frees a slot.
                frame = stream.next(), if in_flight.len() < max_in_flight => {
                    let Some(frame) = frame else { return };
                    last_seen = Instant::now();
                    if !self.admit_frame(&frame) {
                        continue;
                    }
                    match frame {
                        Ok(Message::Text(text)) => self.handle_text(&text, &mut in_flight).await,
                        Ok(Message::Binary(_)) => self.send_error(
                            None,
                            ChatError::bad_request("binary frames are not supported; send JSON text frames"),
                        ),
                        Ok(Message::Ping(_) | Message::Pong(_)) => {}
                        Ok(Message::Close(_)) => return,
                        Err(e) => {
                            match classify(e) {
                                Some(reason) => self.handle.close(reason),
                                None => return,
                            }
                        }
                    }
                }
            }
        }
    }

    async fn handle_text(&mut self, text: &str, in_flight: &mut InFlight) {
        let (id, request) = match parse_request(text) {
            Ok(parsed) => parsed,
            Err(rejected) => return self.send_error(rejected.id, rejected.error.into()),
        };
        let op = request.op();
        let span = tracing::debug_span!("request", op, id = ?id);
        if let Request::Publish { channel, text, meta, nonce } = request {
            // Publishes are pipelined: queued with the owner now, answered in
            // request order as their results come in.
            let reply = span.in_scope(|| ops::publish::start(self, channel, text, meta, nonce));
            match reply {
                Ok(reply) => in_flight.push_back(async move { (id, reply.await) }.instrument(span).boxed()),
                Err(e) if in_flight.is_empty() => self.answer(id, Err(e)),
                Err(e) => in_flight.push_back(futures_util::future::ready((id, Err(e))).boxed()),
            }
            return;
        }
        // Anything else sees the effects of the publishes before it.
        while let Some((id, result)) = in_flight.next().await {
            self.answer(id, result);
        }
        let result = ops::handle(self, id.clone(), request).instrument(span).await;
        match result {
            Ok(Some(reply)) => self.send_frame(&ServerFrame::Reply(reply)),
            Ok(None) => {}
            Err(e) if e.code == ErrorCode::RateLimited => self.rate_limited(id, e),
            Err(e) => self.send_error(id, e),
        }
    }

    /// Sends the reply to a pipelined request (none for a success without `id`).
    fn answer(&mut self, id: Option<Value>, result: ChatResult<Reply>) {
        match result {
            Ok(reply) => {
                if let Some(id) = id {
                    self.send_frame(&ServerFrame::Reply(Reply { id, ..reply }));
                }
            }
            Err(e) if e.code == ErrorCode::RateLimited => self.rate_limited(id, e),
            Err(e) => self.send_error(id, e),
        }
    }

    fn rate_limited(&mut self, id: Option<Value>, e: ChatError) {
        self.send_error(id, e);
        if self.limits.strike() && !self.handle.is_closing() {
            tracing::info!("closing a connection that keeps flooding");
            self.node.auth.metrics.rate_limit_closes.inc();
            self.handle.close(CloseReason::FLOOD);
        }
    }

    fn send_error(&self, id: Option<Value>, error: ChatError) {
        self.node.metrics.error(error.code);
        let body: ErrorBody = error.body();
        let frame = match id {
            Some(id) => ServerFrame::Reply(Reply::error(id, body)),
            None => ServerFrame::Error { error: body },
        };
        self.send_frame(&frame);
    }

    fn send_frame(&self, frame: &ServerFrame) {
        self.handle.send(Outbound::Frame(encode(frame)));
    }

    /// Adds this connection to (or removes it from) its user's direct-message
    /// delivery; the user's first (last) connection here tells the store.
    async fn register_for_direct_messages(&self, connected: bool) {
        let node = &self.node;
        let _guard = node.user_registration.lock(self.identity.user.clone()).await;
        let store = node.conversations.store();
        let result = if connected {
            if !node.mailboxes.connect(&self.handle) {
                return;
            }
            store.connected(&self.identity.user).await
        } else {
            if !node.mailboxes.disconnect(&self.handle) {
                return;
            }
            store.disconnected(&self.identity.user).await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, connected, "updating the user's direct-message route failed");
        }
    }

    /// Leaves every joined channel (disconnect cleanup), emitting presence.
    async fn leave_all(&mut self) {
        for channel in std::mem::take(&mut self.joined) {
            ops::leave::detach(self, &channel).await;
        }
    }
}

pub(crate) use crate::frames::encode;

/// Maps a WebSocket read error to the close the server should send, or
/// `None` when the connection is simply gone.
fn classify(e: axum::Error) -> Option<CloseReason> {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(err) => match *err {
            tungstenite::Error::Capacity(_) => Some(CloseReason::TOO_BIG),
            tungstenite::Error::Utf8(_) => Some(CloseReason::BAD_UTF8),
            _ => None,
        },
        Err(_) => None,
    }
}

/// Queue items written before one flush.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// Buffers `item`'s frames in the sink without flushing.
async fn feed(sink: &mut SplitSink<WebSocket, Message>, item: Outbound) -> Result<(), axum::Error> {
    match item {
        Outbound::Frame(f) => sink.feed(Message::Text(f)).await,
        Outbound::Batch(frames) => {
            for f in frames {
                sink.feed(Message::Text(f)).await?;
            }
            Ok(())
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: OutboundReceiver,
    close: Arc<CloseSignal>,
    ping_interval: Duration,
    write_timeout: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    loop {
        let result = tokio::select! {
            biased;
            reason = close.closed() => {
                if reason == TOKEN_EXPIRED {
                    // The `unauthorized` push was queued just before: deliver
                    // what is queued so the client learns why, then close.
                    let _ = tokio::time::timeout(write_timeout, async {
                        while let Ok(item) = rx.try_recv() {
                            feed(&mut sink, item).await?;
                        }
                        sink.flush().await
                    })
                    .await;
                }
                let frame = CloseFrame { code: reason.code, reason: Utf8Bytes::from_static(reason.reason) };
                let _ = tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await;
                return;
            }
            item = rx.recv() => match item {
                // Write what is queued (up to a bound) with one flush: a busy
                // connection gets few large writes instead of one syscall per frame.
                Some(item) => {
                    let write = tokio::time::timeout(write_timeout, async {
                        feed(&mut sink, item).await?;
                        for _ in 0..MAX_FRAMES_PER_FLUSH {
                            match rx.try_recv() {
                                Ok(item) => feed(&mut sink, item).await?,
                                Err(_) => break,
                            }
                        }
                        sink.flush().await
                    });
                    // A close (e.g. slow consumer) interrupts a write blocked on a full
                    // socket: what is not written yet is dropped and the close frame goes next.
                    tokio::select! {
                        biased;
                        _ = close.closed() => continue,
                        written = write => written,
                    }
                }
                None => return,
            },
            _ = ping.tick() => tokio::time::timeout(write_timeout, sink.send(Message::Ping(Default::default()))).await,
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed; peer gone");
                close.close(CloseReason::PEER_GONE);
                return;
            }
            Err(_) => {
                tracing::debug!("write timed out; peer not reading");
                close.close(CloseReason::PEER_GONE);
                return;
            }
        }
    }
}
