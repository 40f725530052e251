//! In-memory history for the embedded single-node mode.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use shardchat_common::{ChannelName, MessageId, Retention};

use shardchat_common::protocol::ChatMessage;

use super::{Draft, HistoryStore, MAX_RECOVERY, Recovery, StoredMessage};
use crate::clock::now_ms;
use crate::error::ChatResult;

#[derive(Default)]
pub struct MemoryHistory {
    channels: Mutex<HashMap<ChannelName, ChannelLog>>,
}

struct ChannelLog {
    entries: VecDeque<Arc<StoredMessage>>,
    last_id: MessageId,
    /// Highest id dropped by retention: recovery from below it has a gap.
    trimmed_through: MessageId,
    retention: Retention,
}

impl ChannelLog {
    fn new(retention: Retention) -> Self {
        Self {
            entries: VecDeque::new(),
            last_id: MessageId::ZERO,
            trimmed_through: MessageId::ZERO,
            retention,
        }
    }

    fn trim(&mut self, now_ms: u64) {
        let max_len = self.retention.max_messages as usize;
        let oldest_kept_ts = now_ms.saturating_sub(self.retention.max_age_seconds.saturating_mul(1000));
        while let Some(front) = self.entries.front() {
            if self.entries.len() > max_len || front.message.ts < oldest_kept_ts {
                self.trimmed_through = front.id();
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// Index of the first entry with an id greater than `id` (entries are sorted).
    fn first_after(&self, id: MessageId) -> usize {
        self.entries.partition_point(|m| m.id() <= id)
    }
}

impl MemoryHistory {
    pub fn new() -> Self {
        Self::default()
    }

    fn with_log<T>(&self, channel: &ChannelName, f: impl FnOnce(Option<&mut ChannelLog>) -> T) -> T {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let log = channels.get_mut(channel);
        match log {
            Some(log) => {
                log.trim(now_ms());
                f(Some(log))
            }
            None => f(None),
        }
    }

    /// Drops expired messages everywhere and forgets channels left empty.
    pub fn sweep(&self) {
        let now = now_ms();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels.retain(|_, log| {
            log.trim(now);
            !log.entries.is_empty()
        });
    }
}

impl MemoryHistory {
    /// Assigns the next id of the channel, stores the message and applies `retention`.
    pub fn append(&self, draft: Draft, retention: Retention) -> Arc<StoredMessage> {
        let now = now_ms();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let log = channels.entry(draft.channel.clone()).or_insert_with(|| ChannelLog::new(retention));
        log.retention = retention;
        let id = log.last_id.next_after(now);
        log.last_id = id;
        let stored = StoredMessage::from_draft(draft, id, now);
        log.entries.push_back(stored.clone());
        log.trim(now);
        stored
    }
}

impl HistoryStore for MemoryHistory {
    fn after<'a>(
        &'a self,
        channel: &'a ChannelName,
        since: MessageId,
    ) -> BoxFuture<'a, ChatResult<Recovery>> {
        let recovery = self.with_log(channel, |log| match log {
            // Nothing was ever stored here: only the empty position is known.
            None => Recovery { messages: Vec::new(), complete: since == MessageId::ZERO },
            Some(log) => {
                let first = log.first_after(since);
                let start = first.max(log.entries.len().saturating_sub(MAX_RECOVERY));
                Recovery {
                    messages: log.entries.range(start..).map(|m| m.push.clone()).collect(),
                    complete: since >= log.trimmed_through && since <= log.last_id && start == first,
                }
            }
        });
        futures_util::future::ready(Ok(recovery)).boxed()
    }

    fn latest<'a>(
        &'a self,
        channel: &'a ChannelName,
        limit: usize,
        before: Option<MessageId>,
    ) -> BoxFuture<'a, ChatResult<Vec<ChatMessage>>> {
        let messages = self.with_log(channel, |log| {
            let Some(log) = log else { return Vec::new() };
            let end = match before {
                Some(b) => log.entries.partition_point(|m| m.id() < b),
                None => log.entries.len(),
            };
            let start = end.saturating_sub(limit);
            log.entries.range(start..end).map(|m| m.message.clone()).collect()
        });
        futures_util::future::ready(Ok(messages)).boxed()
    }

    fn stats(&self) -> BoxFuture<'_, ChatResult<Vec<(ChannelName, usize)>>> {
        let channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let stats = channels.iter().map(|(name, log)| (name.clone(), log.entries.len())).collect();
        futures_util::future::ready(Ok(stats)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(text: &str) -> Draft {
        Draft {
            channel: ChannelName::new("c").unwrap(),
            from: Arc::from("u"),
            text: text.into(),
            meta: None,
            accepted_at_micros: 0,
        }
    }

    fn retention(max_messages: u32) -> Retention {
        Retention { max_messages, max_age_seconds: 3600 }
    }

    fn texts(v: &[ChatMessage]) -> Vec<String> {
        v.iter().map(|m| m.text.clone()).collect()
    }

    fn push_texts(v: &[Arc<crate::frames::MessagePush>]) -> Vec<String> {
        v.iter()
            .map(|p| {
                let frame: serde_json::Value = serde_json::from_str(p.frame.as_str()).unwrap();
                frame["text"].as_str().unwrap().to_string()
            })
            .collect()
    }

    async fn fill(h: &MemoryHistory, n: usize, keep: u32) -> Vec<MessageId> {
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(h.append(draft(&i.to_string()), retention(keep)).id());
        }
        ids
    }

    #[tokio::test]
    async fn ids_strictly_increase() {
        let h = MemoryHistory::new();
        let ids = fill(&h, 500, 1000).await;
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[tokio::test]
    async fn retention_by_count_and_recovery_completeness() {
        let h = MemoryHistory::new();
        let ids = fill(&h, 10, 5).await;
        let c = ChannelName::new("c").unwrap();
        let all = h.latest(&c, 100, None).await.unwrap();
        assert_eq!(texts(&all), ["5", "6", "7", "8", "9"]);
        // since the last dropped message: nothing missing
        let r = h.after(&c, ids[4]).await.unwrap();
        assert!(r.complete);
        assert_eq!(push_texts(&r.messages), ["5", "6", "7", "8", "9"]);
        // since an earlier one: message 4 is gone, so incomplete
        let r = h.after(&c, ids[3]).await.unwrap();
        assert!(!r.complete);
        // in the middle
        let r = h.after(&c, ids[7]).await.unwrap();
        assert!(r.complete);
        assert_eq!(push_texts(&r.messages), ["8", "9"]);
        // an id from the future is not known here
        assert!(!h.after(&c, ids[9].successor()).await.unwrap().complete);
    }

    #[tokio::test]
    async fn recovery_past_the_cap_is_incomplete_and_keeps_the_newest() {
        let h = MemoryHistory::new();
        let ids = fill(&h, MAX_RECOVERY + 5, (MAX_RECOVERY + 100) as u32).await;
        let c = ChannelName::new("c").unwrap();
        let r = h.after(&c, MessageId::ZERO).await.unwrap();
        assert!(!r.complete, "more than the cap after since: the replay has a gap");
        assert_eq!(r.messages.len(), MAX_RECOVERY);
        assert_eq!(r.messages.last().unwrap().id, *ids.last().unwrap());
        assert_eq!(r.messages[0].id, ids[5]);
        let r = h.after(&c, ids[4]).await.unwrap();
        assert!(r.complete, "exactly the cap is complete");
        assert_eq!(r.messages.len(), MAX_RECOVERY);
    }

    #[tokio::test]
    async fn retention_by_age() {
        let h = MemoryHistory::new();
        let c = ChannelName::new("c").unwrap();
        let zero_age = Retention { max_messages: 100, max_age_seconds: 0 };
        let id = h.append(draft("old"), zero_age).id();
        // Everything older than "now" is expired; wait a millisecond to be sure.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        assert!(h.latest(&c, 10, None).await.unwrap().is_empty());
        let r = h.after(&c, MessageId::ZERO).await.unwrap();
        assert!(!r.complete, "the expired message is a gap");
        assert!(h.after(&c, id).await.unwrap().complete);
        h.sweep();
        assert!(h.stats().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn latest_pages_backwards_with_before() {
        let h = MemoryHistory::new();
        let ids = fill(&h, 10, 100).await;
        let c = ChannelName::new("c").unwrap();
        assert_eq!(texts(&h.latest(&c, 3, None).await.unwrap()), ["7", "8", "9"]);
        assert_eq!(texts(&h.latest(&c, 3, Some(ids[7])).await.unwrap()), ["4", "5", "6"]);
        assert_eq!(texts(&h.latest(&c, 3, Some(ids[1])).await.unwrap()), ["0"]);
        assert!(h.latest(&ChannelName::new("other").unwrap(), 3, None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn unknown_channel_recovers_only_from_zero() {
        let h = MemoryHistory::new();
        let c = ChannelName::new("nobody").unwrap();
        assert!(h.after(&c, MessageId::ZERO).await.unwrap().complete);
        assert!(!h.after(&c, MessageId::new(5, 0)).await.unwrap().complete);
    }
}
