//! The bounded queue between the node and one client connection.
//!
//! Producers (fan-out, replies) never wait: `send` either queues the frames
//! or, when the connection already has `capacity` frames waiting, marks it
//! as a slow consumer and asks its writer to close it. One slow client
//! therefore can neither grow memory without bound nor stall delivery to
//! anyone else. The bound counts frames, not queue items: a burst delivered
//! as one item of many frames counts as many.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

use shardchat_common::protocol::close_code;

/// What the writer task sends to the socket.
#[derive(Debug)]
pub enum Outbound {
    Frame(Utf8Bytes),
    /// Several frames that stay together (a join reply and its recovery
    /// backlog; a burst of fan-out), written with one flush.
    Batch(Vec<Utf8Bytes>),
}

impl Outbound {
    fn frames(&self) -> usize {
        match self {
            Outbound::Frame(_) => 1,
            Outbound::Batch(frames) => frames.len(),
        }
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
    /// Frames queued and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    close: Arc<CloseSignal>,
}

/// The writer's end of a connection's queue.
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
}

impl OutboundRx {
    fn taken(&self, item: Outbound) -> Outbound {
        self.queued.fetch_sub(item.frames(), Ordering::AcqRel);
        item
    }

    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.rx.recv().await?;
        Some(self.taken(item))
    }

    pub fn try_recv(&mut self) -> Option<Outbound> {
        let item = self.rx.try_recv().ok()?;
        Some(self.taken(item))
    }
}

impl SessionHandle {
    pub fn new(id: u64, user: Arc<str>, capacity: usize) -> (Self, OutboundRx, Arc<CloseSignal>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(CloseSignal::default());
        let handle =
            Self { id, user, tx, queued: queued.clone(), capacity: capacity.max(1), close: close.clone() };
        (handle, OutboundRx { rx, queued }, close)
    }

    /// Queues `item`; returns false (and closes the connection as a slow
    /// consumer) when that would put more than `capacity` frames in the
    /// queue, or false when the connection is already gone.
    pub fn send(&self, item: Outbound) -> bool {
        let frames = item.frames();
        let before = self.queued.fetch_add(frames, Ordering::AcqRel);
        if before + frames > self.capacity {
            self.queued.fetch_sub(frames, Ordering::AcqRel);
            self.close.close(CloseReason::SLOW_CONSUMER);
            return false;
        }
        if self.tx.send(item).is_err() {
            self.queued.fetch_sub(frames, Ordering::AcqRel);
            return false;
        }
        true
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

    #[tokio::test]
    async fn full_queue_closes_as_slow_consumer() {
        let (h, mut rx, close) = SessionHandle::new(1, Arc::from("u"), 2);
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
    async fn the_bound_counts_frames_not_items() {
        let (h, mut rx, close) = SessionHandle::new(1, Arc::from("u"), 3);
        assert!(h.send(Outbound::Batch(vec!["a".into(), "b".into()])));
        assert!(!h.send(Outbound::Batch(vec!["c".into(), "d".into()])), "4 frames > 3");
        assert_eq!(close.reason(), Some(CloseReason::SLOW_CONSUMER));
        // What the writer takes frees room again.
        assert!(matches!(rx.recv().await, Some(Outbound::Batch(f)) if f.len() == 2));
        let (h, _rx, close) = SessionHandle::new(2, Arc::from("u"), 3);
        assert!(h.send(Outbound::Batch(vec!["a".into(), "b".into(), "c".into()])));
        assert!(close.reason().is_none());
    }
}
