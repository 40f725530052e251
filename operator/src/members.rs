//! Approximate member counts for `status.members` (the MEMBERS column).
//!
//! The members of a channel are the fields of the nodes' interest registry
//! hash `{p}:users:<channel>` (`HLEN` = distinct members). Every
//! `--members-refresh` the leader reads `HLEN` of every declared channel,
//! pipelined (1,000 per round trip), and reconciles the ChatChannels whose
//! count differs from what their status shows; the reconcile writes the
//! count with the rest of the status. So a status lags the registry by up
//! to one refresh period plus the reconcile queue, and only channels whose
//! count moved cost an API request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tracing::warn;

use crate::claims::Claims;
use crate::crd::ChatChannel;
use crate::store::{Store, StoreError};

/// Counts read from Redis and counts shown in statuses, by channel.
#[derive(Debug, Default)]
pub struct Members {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// From the last refresh.
    read: HashMap<String, u64>,
    /// What the reconciler last wrote to the channel's status.
    shown: HashMap<String, u64>,
}

impl Members {
    /// The count to show for `channel`: the last one read from Redis, else
    /// what the status already says (a new leader keeps the previous
    /// leader's figure until its first refresh), else 0.
    pub fn count(&self, channel: &str, in_status: Option<u64>) -> u64 {
        let inner = self.inner.lock().expect("members lock");
        inner.read.get(channel).copied().or(in_status).unwrap_or(0)
    }

    /// Records what a reconcile wrote to the status of `channel`.
    pub fn shown(&self, channel: &str, count: u64) {
        self.inner.lock().expect("members lock").shown.insert(channel.to_string(), count);
    }

    /// Forgets a channel that is no longer declared.
    pub fn forget(&self, channel: &str) {
        let mut inner = self.inner.lock().expect("members lock");
        inner.read.remove(channel);
        inner.shown.remove(channel);
    }

    /// Reads the counts of `channels` ((channel, object) pairs) and returns
    /// the objects whose status shows another count. Channels not yet
    /// reconciled by this replica are left to their first reconcile.
    pub async fn refresh(
        &self,
        store: &Store,
        channels: &[(String, String)],
    ) -> Result<Vec<ObjectRef<ChatChannel>>, StoreError> {
        let names: Vec<String> = channels.iter().map(|(c, _)| c.clone()).collect();
        let counts = store.member_counts(&names).await?;
        let mut inner = self.inner.lock().expect("members lock");
        let mut stale = Vec::new();
        for ((channel, object), count) in channels.iter().zip(counts) {
            inner.read.insert(channel.clone(), count);
            if inner.shown.get(channel).is_some_and(|s| *s != count) {
                stale.push(ObjectRef::new(object));
            }
        }
        // Channels that are gone.
        if inner.read.len() > channels.len() {
            let live: std::collections::HashSet<&str> = channels.iter().map(|(c, _)| c.as_str()).collect();
            inner.read.retain(|c, _| live.contains(c.as_str()));
            inner.shown.retain(|c, _| live.contains(c.as_str()));
        }
        Ok(stale)
    }
}

/// Refreshes every `every` until dropped; objects to reconcile go to `tx`.
pub async fn run(
    members: &Members,
    store: &Store,
    claims: &Claims,
    every: Duration,
    tx: mpsc::UnboundedSender<ObjectRef<ChatChannel>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match members.refresh(store, &claims.winners()).await {
            Ok(stale) => {
                for o in stale {
                    if tx.send(o).is_err() {
                        return;
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot read member counts from redis; keeping the last ones"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_changed_counts_of_reconciled_channels_are_stale() {
        let (store, data) = Store::memory();
        let m = Members::default();
        let chans =
            vec![("town-1".to_string(), "town-1".to_string()), ("guild:42".to_string(), "guild".to_string())];
        data.lock().unwrap().members.insert("town-1".into(), 3);
        // Nothing reconciled yet: nothing stale, but the counts are known.
        assert!(m.refresh(&store, &chans).await.unwrap().is_empty());
        assert_eq!(m.count("town-1", Some(9)), 3);
        assert_eq!(m.count("guild:42", Some(9)), 0);
        assert_eq!(m.count("other", Some(9)), 9);
        assert_eq!(m.count("other", None), 0);
        m.shown("town-1", 3);
        m.shown("guild:42", 0);
        assert!(m.refresh(&store, &chans).await.unwrap().is_empty());
        data.lock().unwrap().members.insert("guild:42".into(), 5);
        let stale = m.refresh(&store, &chans).await.unwrap();
        assert_eq!(stale.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["guild"]);
        // Redis down: an error, the last counts stay.
        data.lock().unwrap().down = true;
        assert!(m.refresh(&store, &chans).await.is_err());
        assert_eq!(m.count("guild:42", None), 5);
    }
}
