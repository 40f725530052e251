//! The bounded queue between the node and one client connection.
//!
//! Producers (fan-out, replies) never wait: `send` either queues the item
//! or, when the queue is full, marks the connection as a slow consumer and
//! asks its writer to close it (4009). The queue is bounded twice: in frames
//! (`--outbound-queue`; a burst delivered as one item of many frames counts
//! as many) and in bytes (`--outbound-queue-bytes`), because one item can be
//! large (a history page, a join backlog). One slow client
//! therefore can neither grow memory without bound nor stall delivery to
//! anyone else. Replies that carry many messages are cut to
//! [`SessionHandle::reply_budget`] *before* they are built
//! ([`newest_within`]), so a single request can never fill the queue alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

use shardchat_common::protocol::close_code;

use crate::config::Config;

/// What the writer task sends to the socket.
#[derive(Debug)]
pub enum Outbound {
    Frame(Utf8Bytes),
    /// Several frames that stay together (a join reply and its recovery
    /// backlog; a burst of fan-out), written with one flush.
    Batch(Vec<Utf8Bytes>),
}

impl Outbound {
    /// Frames this item holds.
    pub fn frames(&self) -> usize {
        match self {
            Outbound::Frame(_) => 1,
            Outbound::Batch(frames) => frames.len(),
        }
    }

    /// Bytes of payload this item holds.
    pub fn bytes(&self) -> usize {
        match self {
            Outbound::Frame(f) => f.len(),
            Outbound::Batch(frames) => frames.iter().map(|f| f.len()).sum(),
        }
    }
}

/// The two bounds of one connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
}

impl QueueLimits {
    pub fn from_config(config: &Config) -> Self {
        Self { frames: config.outbound_queue, bytes: config.outbound_queue_bytes }
    }
}

/// How many of `items` (oldest first) to drop so that the newest ones fit
/// in `budget` bytes, each counted by `size`: the index of the first item
/// to keep. Callers count with the already-serialized push of each message,
/// so nothing is built before its size is known.
pub fn newest_within<T>(items: &[T], budget: usize, size: impl Fn(&T) -> usize) -> usize {
    let mut total = 0usize;
    for (i, item) in items.iter().enumerate().rev() {
        total = total.saturating_add(size(item));
        if total > budget {
            return i + 1;
        }
    }
    0
}

/// Frames and bytes currently queued towards one connection, and their bounds.
#[derive(Debug)]
struct Queued {
    frames: AtomicUsize,
    bytes: AtomicUsize,
    limits: QueueLimits,
}

impl Queued {
    /// Counts `item` in; false (and nothing counted) when it does not fit.
    fn admit(&self, item: &Outbound) -> bool {
        let (frames, bytes) = (item.frames(), item.bytes());
        let frames_before = self.frames.fetch_add(frames, Ordering::AcqRel);
        let bytes_before = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if frames_before.saturating_add(frames) > self.limits.frames
            || bytes_before.saturating_add(bytes) > self.limits.bytes
        {
            self.release(item);
            return false;
        }
        true
    }

    fn release(&self, item: &Outbound) {
        self.frames.fetch_sub(item.frames(), Ordering::AcqRel);
        self.bytes.fetch_sub(item.bytes(), Ordering::AcqRel);
    }
}

/// The writer's end of the queue: every item taken gives its room back.
pub struct OutboundReceiver {
    rx: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<Queued>,
}

impl OutboundReceiver {
    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await?;
        self.queued.release(&item);
        Some(item)
    }

    pub fn try_recv(&mut self) -> Result<Outbound, mpsc::error::TryRecvError> {
        let item = self.rx.try_recv()?;
        self.queued.release(&item);
        Ok(item)
    }
}

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const SLOW_CONSUMER: CloseReason =
        CloseReason { code: close_code::SLOW_CONSUMER, reason: "slow consumer: outbound queue full" };
    pub const SHUTDOWN: CloseReason =
        CloseReason { code: close_code::SERVICE_RESTART, reason: "server restarting" };
    pub const IDLE: CloseReason = CloseReason { code: close_code::IDLE_TIMEOUT, reason: "idle timeout" };
    pub const FLOOD: CloseReason =
        CloseReason { code: close_code::POLICY_VIOLATION, reason: "rate limit abuse" };
    pub const TOO_BIG: CloseReason =
        CloseReason { code: close_code::MESSAGE_TOO_BIG, reason: "frame too large" };
    /// Not sent (the peer is gone); used to label the disconnect.
    pub const PEER_GONE: CloseReason = CloseReason { code: 1006, reason: "peer gone" };
    pub const BAD_UTF8: CloseReason =
        CloseReason { code: close_code::INVALID_PAYLOAD, reason: "text frame is not valid UTF-8" };

    /// Label for the disconnect metric.
    pub fn label(&self) -> &'static str {
        match self.code {
            close_code::SLOW_CONSUMER => "slow_consumer",
            close_code::SERVICE_RESTART => "shutdown",
            close_code::IDLE_TIMEOUT => "idle",
            close_code::POLICY_VIOLATION => "flood",
            close_code::MESSAGE_TOO_BIG => "too_big",
            close_code::INVALID_PAYLOAD => "bad_utf8",
            close_code::UNAUTHORIZED => "unauthorized",
            1006 => "peer_gone",
            _ => "other",
        }
    }
}

/// A one-shot "close this connection" signal; the first reason wins.
#[derive(Default)]
pub struct CloseSignal {
    reason: OnceLock<CloseReason>,
    notify: Notify,
}

impl CloseSignal {
    pub fn close(&self, reason: CloseReason) {
        if self.reason.set(reason).is_ok() {
            self.notify.notify_one();
        }
    }

    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().copied()
    }

    /// Resolves once `close` has been called.
    pub async fn closed(&self) -> CloseReason {
        loop {
            if let Some(r) = self.reason() {
                return r;
            }
            self.notify.notified().await;
        }
    }
}

/// The node's handle on one connection: who it is and how to reach it.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: u64,
    pub user: Arc<str>,
    tx: mpsc::UnboundedSender<Outbound>,
    close: Arc<CloseSignal>,
    queued: Arc<Queued>,
}

impl SessionHandle {
    pub fn new(id: u64, user: Arc<str>, limits: QueueLimits) -> (Self, OutboundReceiver, Arc<CloseSignal>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let close = Arc::new(CloseSignal::default());
        let limits = QueueLimits { frames: limits.frames.max(1), bytes: limits.bytes };
        let queued = Arc::new(Queued { frames: AtomicUsize::new(0), bytes: AtomicUsize::new(0), limits });
        (
            Self { id, user, tx, close: close.clone(), queued: queued.clone() },
            OutboundReceiver { rx, queued },
            close,
        )
    }

    /// Queues `item`; returns false (and closes the connection as a slow
    /// consumer) when the queue is full in frames or in bytes, or false when
    /// it is already gone.
    pub fn send(&self, item: Outbound) -> bool {
        if !self.queued.admit(&item) {
            self.close.close(CloseReason::SLOW_CONSUMER);
            return false;
        }
        if let Err(mpsc::error::SendError(item)) = self.tx.send(item) {
            self.queued.release(&item);
            return false;
        }
        true
    }

    /// The most bytes of messages one reply (a history page, a join
    /// backlog) may carry: half the queue, so one request never fills it.
    pub fn reply_budget(&self) -> usize {
        self.queued.limits.bytes / 2
    }

    /// The most messages one reply may carry: half the queue's frames.
    pub fn reply_frames(&self) -> usize {
        (self.queued.limits.frames / 2).max(1)
    }

    /// Bytes queued and not yet taken by the writer.
    pub fn queued_bytes(&self) -> usize {
        self.queued.bytes.load(Ordering::Acquire)
    }

    pub fn close(&self, reason: CloseReason) {
        self.close.close(reason);
    }

    pub fn is_closing(&self) -> bool {
        self.close.reason().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(frames: usize, bytes: usize) -> QueueLimits {
        QueueLimits { frames, bytes }
    }

    #[tokio::test]
    async fn full_queue_closes_as_slow_consumer() {
        let (h, mut rx, close) = SessionHandle::new(1, Arc::from("u"), limits(2, 1 << 20));
        assert!(h.send(Outbound::Frame("a".into())));
        assert!(h.send(Outbound::Frame("b".into())));
        assert!(!h.send(Outbound::Frame("c".into())));
        assert_eq!(close.reason(), Some(CloseReason::SLOW_CONSUMER));
        // The first reason sticks.
        h.close(CloseReason::SHUTDOWN);
        assert_eq!(close.closed().await, CloseReason::SLOW_CONSUMER);
        assert!(matches!(rx.recv().await, Some(Outbound::Frame(f)) if f.as_str() == "a"));
    }

    #[tokio::test]
    async fn bytes_are_bounded_too_and_given_back_when_written() {
        let (h, mut rx, close) = SessionHandle::new(1, Arc::from("u"), limits(1024, 100));
        let frame = |n: usize| Outbound::Frame("x".repeat(n).into());
        assert!(h.send(frame(60)));
        assert!(h.send(Outbound::Batch(vec!["y".repeat(20).into(), "z".repeat(20).into()])));
        assert_eq!(h.queued_bytes(), 100);
        assert!(rx.recv().await.is_some(), "the writer takes the first item");
        assert_eq!(h.queued_bytes(), 40);
        assert!(h.send(frame(60)), "room again");
        assert!(rx.try_recv().is_ok());
        assert_eq!(h.queued_bytes(), 60);
        assert!(close.reason().is_none());
        // A frame count far from its bound, but the bytes are over.
        assert!(!h.send(frame(41)));
        assert_eq!(close.reason(), Some(CloseReason::SLOW_CONSUMER));
        assert_eq!(h.queued_bytes(), 60, "a refused item is not counted");
        assert_eq!(h.reply_budget(), 50);
    }

    #[tokio::test]
    async fn the_frame_bound_counts_frames_not_items() {
        let (h, mut rx, close) = SessionHandle::new(1, Arc::from("u"), limits(3, 1 << 20));
        assert!(h.send(Outbound::Batch(vec!["a".into(), "b".into()])));
        assert!(!h.send(Outbound::Batch(vec!["c".into(), "d".into()])), "4 frames > 3");
        assert_eq!(close.reason(), Some(CloseReason::SLOW_CONSUMER));
        assert!(matches!(rx.recv().await, Some(Outbound::Batch(f)) if f.len() == 2));
        let (h, _rx, close) = SessionHandle::new(2, Arc::from("u"), limits(3, 1 << 20));
        assert!(h.send(Outbound::Batch(vec!["a".into(), "b".into(), "c".into()])));
        assert!(close.reason().is_none());
        assert_eq!(h.reply_frames(), 1);
    }

    #[test]
    fn newest_within_keeps_the_newest_that_fit() {
        let sizes = [10, 20, 30, 40];
        let keep_from = |budget| newest_within(&sizes, budget, |s| *s);
        assert_eq!(keep_from(100), 0, "everything fits");
        assert_eq!(keep_from(99), 1);
        assert_eq!(keep_from(70), 2);
        assert_eq!(keep_from(69), 3);
        assert_eq!(keep_from(39), 4, "not even the newest");
        assert_eq!(newest_within(&[] as &[usize], 0, |s| *s), 0);
    }
}
