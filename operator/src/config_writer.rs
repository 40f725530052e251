//! Batches channel-config writes: reconciles running at the same time hand
//! their config to one writer, which sends everything queued while the
//! previous batch was in flight as one script call (up to
//! [`MAX_CONFIG_BATCH`](crate::store::MAX_CONFIG_BATCH) configs). After a
//! ring change, when every ChatChannel is reconciled at once, that turns
//! thousands of round trips into a few dozen, with no timer and no added
//! latency when reconciles trickle in one at a time.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{MAX_CONFIG_BATCH, Store, StoreError};

struct Request {
    channel: String,
    json: String,
    reply: oneshot::Sender<Result<bool, Arc<StoreError>>>,
}

/// Handle used by reconciles; cheap to clone.
#[derive(Clone)]
pub struct ConfigWriter {
    tx: mpsc::UnboundedSender<Request>,
}

impl ConfigWriter {
    /// The writer and the future that does the writing (run it for as long
    /// as the writer is used; it ends when every handle is dropped).
    pub fn new(store: Store) -> (ConfigWriter, impl Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ConfigWriter { tx }, run(store, rx))
    }

    /// Publishes one channel config; returns whether Redis changed.
    pub async fn put(&self, channel: &str, json: &str) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let req = Request { channel: channel.to_string(), json: json.to_string(), reply };
        self.tx.send(req).map_err(|_| StoreError::WriterStopped)?;
        match answer.await {
            Ok(Ok(changed)) => Ok(changed),
            Ok(Err(e)) => Err(StoreError::Batch(e)),
            Err(_) => Err(StoreError::WriterStopped),
        }
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_CONFIG_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_CONFIG_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let items: Vec<(String, String)> =
            batch.iter().map(|r| (r.channel.clone(), r.json.clone())).collect();
        match store.put_configs(&items).await {
            Ok(changed) => {
                for (r, c) in batch.drain(..).zip(changed.into_iter().chain(std::iter::repeat(false))) {
                    let _ = r.reply.send(Ok(c));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_puts_share_round_trips() {
        let (store, data) = Store::memory();
        let (writer, task) = ConfigWriter::new(store);
        let task = tokio::spawn(task);
        let puts = (0..600).map(|i| {
            let w = writer.clone();
            async move { w.put(&format!("town-{i}"), &format!("{{\"n\":{i}}}")).await }
        });
        let results = futures_util::future::join_all(puts).await;
        assert!(results.iter().all(|r| matches!(r, Ok(true))));
        {
            let d = data.lock().unwrap();
            assert_eq!(d.channels.len(), 600);
            assert!(d.put_calls < 600, "{} calls for 600 puts", d.put_calls);
        }
        // The same value again changes nothing.
        assert!(!writer.put("town-1", "{\"n\":1}").await.unwrap());
        // Errors reach every caller.
        data.lock().unwrap().down = true;
        assert!(writer.put("town-1", "{}").await.is_err());
        drop(writer);
        task.await.unwrap();
    }
}
