//! Writing requests and acks to other nodes' inboxes, batched: one sender
//! task per destination node takes everything queued for it and writes one
//! `reqs` entry and one `acks` entry per round (`XADD`). Under load a round
//! carries many requests for the price of one command; when idle a request
//! goes out at once. A destination's entries are written in queue order,
//! so one connection's requests reach the owner in the order it sent them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fred::prelude::*;
use shardchat_common::redis_layout::inbox::{Ack, DmRequest, InboxEntry, OwnerRequest};
use tokio::sync::mpsc;

use super::{RedisCtx, may_have_run, unavailable};
use crate::error::ChatError;

/// Most requests (and, separately, acks) in one inbox entry.
const MAX_PER_ENTRY: usize = 512;

enum Item {
    Request(OwnerRequest),
    Dm(DmRequest),
    Ack(Ack),
}

/// Told which requests certainly never reached their owner's inbox.
pub type Refused = Arc<dyn Fn(Vec<String>, ChatError) + Send + Sync>;

pub struct Outbox {
    redis: Arc<RedisCtx>,
    senders: Mutex<HashMap<String, mpsc::UnboundedSender<Item>>>,
    refused: Mutex<Option<Refused>>,
}

impl Outbox {
    pub fn new(redis: Arc<RedisCtx>) -> Arc<Outbox> {
        Arc::new(Outbox { redis, senders: Mutex::new(HashMap::new()), refused: Mutex::new(None) })
    }

    /// Where to report requests that Redis refused to store.
    pub fn on_refused(&self, refused: Refused) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(refused);
    }

    pub fn request(self: &Arc<Self>, node: &str, request: OwnerRequest) {
        self.queue(node, Item::Request(request));
    }

    pub fn dm(self: &Arc<Self>, node: &str, request: DmRequest) {
        self.queue(node, Item::Dm(request));
    }

    pub fn ack(self: &Arc<Self>, node: &str, ack: Ack) {
        self.queue(node, Item::Ack(ack));
    }

    fn queue(self: &Arc<Self>, node: &str, item: Item) {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let tx = senders.entry(node.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().send_loop(node.to_string(), rx));
            tx
        });
        if let Err(mpsc::error::SendError(item)) = tx.send(item) {
            // The sender task is gone (only at shutdown); start a new one.
            let (new_tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(self.clone().send_loop(node.to_string(), rx));
            let _ = new_tx.send(item);
            *tx = new_tx;
        }
    }

    async fn send_loop(self: Arc<Self>, node: String, mut rx: mpsc::UnboundedReceiver<Item>) {
        let key = self.redis.keys.inbox(&node);
        let mut requests = Vec::new();
        let mut dms = Vec::new();
        let mut acks = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(item) = next {
                match item {
                    Item::Request(r) => requests.push(r),
                    Item::Dm(d) => dms.push(d),
                    Item::Ack(a) => acks.push(a),
                }
                if requests.len() >= MAX_PER_ENTRY
                    || dms.len() >= MAX_PER_ENTRY
                    || acks.len() >= MAX_PER_ENTRY
                {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !acks.is_empty() {
                let entry = InboxEntry::Acks(std::mem::take(&mut acks));
                if let Err(e) = self.xadd(&key, entry).await {
                    // The edges' waiters time out and look their publishes up.
                    tracing::warn!(%node, error = %e, "sending acks failed");
                }
            }
            if !requests.is_empty() {
                let sent = std::mem::take(&mut requests);
                let ids: Vec<String> = sent.iter().map(|r| r.req.clone()).collect();
                self.send_requests(&node, &key, ids, InboxEntry::Requests(sent)).await;
            }
            if !dms.is_empty() {
                let sent = std::mem::take(&mut dms);
                let ids: Vec<String> = sent.iter().map(|r| r.req.clone()).collect();
                self.send_requests(&node, &key, ids, InboxEntry::DmRequests(sent)).await;
            }
        }
    }

    /// Writes a bundle of requests; those that certainly did not get there are refused.
    async fn send_requests(&self, node: &str, key: &str, ids: Vec<String>, entry: InboxEntry) {
        if let Err(e) = self.redis.check_connected() {
            self.refuse(ids, e);
        } else if let Err(e) = self.xadd(key, entry).await {
            tracing::warn!(%node, error = %e, "sending requests failed");
            if !may_have_run(&e) {
                self.refuse(ids, unavailable(e));
            }
        }
    }

    fn refuse(&self, ids: Vec<String>, error: ChatError) {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(refused) = refused {
            refused(ids, error);
        }
    }

    async fn xadd(&self, key: &str, entry: InboxEntry) -> Result<(), fred::error::Error> {
        let cap = ("MAXLEN", "~", self.redis.settings.inbox_maxlen as i64);
        let _: String = self.redis.client.xadd(key, false, cap, "*", entry.encode()).await?;
        Ok(())
    }
}
