//! Abusive clients for "does a flood hurt everybody else?" runs
//! (`--flooders K`): each floods publishes on its own channel as fast as
//! the socket takes them, ignoring replies and rate limits, and reconnects
//! whenever the server closes it. The bench's normal members then show
//! whether their latency and delivery suffer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// What the flooders did, for the report.
#[derive(Debug, Default)]
pub struct FloodStats {
    pub frames: AtomicU64,
    pub connections: AtomicU64,
    pub closed_by_server: AtomicU64,
    pub refused: AtomicU64,
}

impl FloodStats {
    pub fn line(&self, flooders: usize) -> String {
        format!(
            "flood: {flooders} flooder(s) sent {} frames over {} connections; {} closed by the server, {} connection attempts refused",
            self.frames.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
            self.closed_by_server.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// Floods from `start` until `until` through `url` on `channel`.
pub async fn flood(url: String, channel: String, start: Instant, until: Instant, stats: Arc<FloodStats>) {
    tokio::time::sleep_until(start).await;
    let join = serde_json::json!({"op":"join","channel":channel}).to_string();
    let publish = serde_json::json!({"op":"publish","channel":channel,"text":"spam spam spam"}).to_string();
    while Instant::now() < until {
        let ws = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => ws,
            Err(_) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (mut sink, mut stream) = ws.split();
        // Drain (and ignore) everything the server sends; notice the close.
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        if sink.send(Message::text(join.clone())).await.is_err() {
            continue;
        }
        let mut sent = 0u64;
        while Instant::now() < until {
            if sink.send(Message::text(publish.clone())).await.is_err() || reader.is_finished() {
                stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
                break;
            }
            sent += 1;
            if sent.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
        stats.frames.fetch_add(sent, Ordering::Relaxed);
        reader.abort();
    }
}
