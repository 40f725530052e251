//! The bounded queue between the node and one client connection.
//!
//! Producers (fan-out, replies) never wait: `try_send` either queues the
//! frame or, when the queue is full, marks the connection as a slow consumer
//! and asks its writer to close it. One slow client therefore can neither
//! grow memory without bound nor stall delivery to anyone else.

use std::sync::{Arc, OnceLock};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

use shardchat_common::protocol::close_code;

/// What the writer task sends to the socket.
#[derive(Debug)]
pub enum Outbound {
    Frame(Utf8Bytes),
    /// Several frames that must stay together (a join reply and its recovery backlog).
    Batch(Vec<Utf8Bytes>),
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
    tx: mpsc::Sender<Outbound>,
    close: Arc<CloseSignal>,
}

impl SessionHandle {
    pub fn new(
        id: u64,
        user: Arc<str>,
        capacity: usize,
    ) -> (Self, mpsc::Receiver<Outbound>, Arc<CloseSignal>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let close = Arc::new(CloseSignal::default());
        (Self { id, user, tx, close: close.clone() }, rx, close)
    }

    /// Queues `item`; returns false (and closes the connection as a slow
    /// consumer) when the queue is full, or false when it is already gone.
    pub fn send(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close.close(CloseReason::SLOW_CONSUMER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
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
}
