//! The shape of a run: which connection goes to which node and channel,
//! which connections publish, and when each publish is due.
//!
//! * connection `i` joins channel `i mod C`; member `j = i div C` of it;
//! * the first P members of every channel publish: connection `i` publishes
//!   iff `i < P·C`, with publisher slot `i div C` in its channel;
//! * node: URL `((i mod C) + (i div C)) mod U` (round-robin within every
//!   channel, so channels and publishers are spread over all nodes);
//! * pacing: with Q = P·C publishers at aggregate rate R, publish `k` of
//!   publisher `i` is due `(i + k·Q) / R` seconds after the start, for every
//!   such time before the duration ends. The publishers take turns, so the
//!   aggregate stream is evenly spaced at 1/R, never bursty.

use std::time::Duration;

use shardchat_common::ChannelName;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::args::Args;

/// Longest text the protocol accepts.
const MAX_TEXT: usize = 2000;

#[derive(Debug, Clone)]
pub struct Plan {
    pub run_id: String,
    /// WebSocket endpoints (`ws://host:port/v1/ws[?query]`), one per node.
    pub endpoints: Vec<String>,
    pub connections: usize,
    pub channels: usize,
    pub publishers_per_channel: usize,
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
    pub message_bytes: usize,
    /// `--dm`: channels are two-member conversations of direct messages.
    pub dm: bool,
}

impl Plan {
    pub fn from_args(args: &Args) -> Result<Self, String> {
        if args.urls.is_empty() {
            return Err("at least one --url is needed".into());
        }
        let endpoints = args.urls.iter().map(|u| endpoint_base(u)).collect::<Result<Vec<_>, _>>()?;
        if endpoints.iter().any(|e| e.starts_with("wss://")) {
            return Err(
                "wss:// (TLS) is not supported by this build; point --url at a plain ws:// listener".into()
            );
        }
        let (n, c, p) = (args.connections, args.channels, args.publishers_per_channel);
        if n == 0 || c == 0 || p == 0 {
            return Err("--connections, --channels and --publishers-per-channel must be at least 1".into());
        }
        if c > n {
            return Err(format!("--channels ({c}) cannot exceed --connections ({n})"));
        }
        if p > n / c {
            return Err(format!(
                "--publishers-per-channel ({p}) exceeds the smallest channel's members ({})",
                n / c
            ));
        }
        if !(args.rate.is_finite() && args.rate > 0.0) {
            return Err("--rate must be a positive number".into());
        }
        if args.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if !(1..=MAX_TEXT).contains(&args.message_bytes) {
            return Err(format!("--message-bytes must be within 1..={MAX_TEXT}"));
        }
        if args.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        if !(args.connect_rate.is_finite() && args.connect_rate >= 0.0) {
            return Err("--connect-rate must be a non-negative number".into());
        }
        let run_id = match &args.run_id {
            Some(id) => id.clone(),
            None => random_run_id(),
        };
        let plan = Plan {
            run_id,
            endpoints,
            connections: n,
            channels: c,
            publishers_per_channel: p,
            rate: args.rate,
            duration: args.duration,
            drain: args.drain,
            message_bytes: args.message_bytes,
            dm: args.dm,
        };
        if plan.dm {
            if n != 2 * c {
                return Err(format!(
                    "--dm: every conversation has two members, so --connections must be 2 × --channels ({})",
                    2 * c
                ));
            }
            if args.reconnect {
                return Err("--dm does not support --reconnect yet".into());
            }
            shardchat_common::user::is_valid_user_id(&plan.user_of(n - 1))
                .then_some(())
                .ok_or_else(|| "--run-id makes an invalid user name for --dm".to_string())?;
        }
        // The longest channel name must be valid (run id characters, length).
        ChannelName::new(&plan.channel_name_str(c - 1)).map_err(|e| format!("--run-id: {e}"))?;
        if plan.planned_messages() == 0 {
            return Err("--rate × --duration must come to at least one message".into());
        }
        if plan.max_seq() > 100_000_000 {
            return Err("more than 100 million messages per publisher: lower --rate or --duration".into());
        }
        Ok(plan)
    }

    pub fn channel_of(&self, conn: usize) -> usize {
        conn % self.channels
    }

    fn channel_name_str(&self, channel: usize) -> String {
        format!("bench-{}-{channel}", self.run_id)
    }

    pub fn channel_name(&self, channel: usize) -> Result<ChannelName, String> {
        ChannelName::new(&self.channel_name_str(channel)).map_err(|e| e.to_string())
    }

    /// Members of channel `channel`.
    pub fn members_of(&self, channel: usize) -> usize {
        self.connections / self.channels + usize::from(channel < self.connections % self.channels)
    }

    /// Total publishers (Q = P·C).
    pub fn publishers(&self) -> usize {
        self.publishers_per_channel * self.channels
    }

    /// The publisher slot of connection `conn` in its channel, if it publishes.
    pub fn publisher_slot(&self, conn: usize) -> Option<usize> {
        (conn < self.publishers()).then_some(conn / self.channels)
    }

    /// The slot, within `channel`, of the publisher with connection index
    /// `publisher` (as stamped in a message's meta); `None` when that
    /// connection is not one of the channel's publishers.
    pub fn slot_in_channel(&self, publisher: u64, channel: usize) -> Option<usize> {
        let conn = usize::try_from(publisher).ok()?;
        if self.channel_of(conn) != channel {
            return None;
        }
        self.publisher_slot(conn)
    }

    /// Index into `endpoints` for connection `conn`.
    pub fn node_of(&self, conn: usize) -> usize {
        (conn % self.channels + conn / self.channels) % self.endpoints.len()
    }

    /// The URL connection `conn` opens; with `dev_user` it carries
    /// `user=bench-<conn>`.
    pub fn url_of(&self, conn: usize, dev_user: bool) -> String {
        self.url_at(self.node_of(conn), conn, dev_user)
    }

    /// The URL connection `conn` opens on endpoint `node` (modulo the
    /// number of endpoints; reconnects move on to the next one).
    pub fn url_at(&self, node: usize, conn: usize, dev_user: bool) -> String {
        let base = &self.endpoints[node % self.endpoints.len()];
        if !dev_user {
            return base.clone();
        }
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}user={}", self.user_of(conn))
    }

    /// The dev-mode user of connection `conn`: `bench-<conn>`, or with
    /// `--dm` `bench-<run id>-<conn>` (conversations outlive a run).
    pub fn user_of(&self, conn: usize) -> String {
        if self.dm { format!("bench-{}-{conn}", self.run_id) } else { format!("bench-{conn}") }
    }

    /// With `--dm`: the other member of `conn`'s conversation.
    pub fn peer_of(&self, conn: usize) -> usize {
        if conn < self.channels { conn + self.channels } else { conn - self.channels }
    }

    /// R·D, the aggregate number of publishes, as a float.
    fn total_slots(&self) -> f64 {
        // Rounded to 1e-6 so that e.g. 0.1 × 30 does not become 3.0000000000000004.
        (self.rate * self.duration.as_secs_f64() * 1e6).round() / 1e6
    }

    /// How many publishes connection `conn` makes.
    pub fn sends_of(&self, conn: usize) -> u64 {
        if conn >= self.publishers() {
            return 0;
        }
        let remaining = self.total_slots() - conn as f64;
        if remaining <= 0.0 { 0 } else { (remaining / self.publishers() as f64).ceil() as u64 }
    }

    /// When publish `k` of connection `conn` is due, after the start.
    pub fn send_offset(&self, conn: usize, k: u64) -> Duration {
        let slot = conn as f64 + k as f64 * self.publishers() as f64;
        Duration::from_secs_f64(slot / self.rate)
    }

    /// Exclusive upper bound of every publisher's sequence numbers.
    pub fn max_seq(&self) -> u64 {
        self.sends_of(0)
    }

    pub fn planned_messages(&self) -> u64 {
        (0..self.publishers()).map(|i| self.sends_of(i)).sum()
    }
}

/// Normalises a node URL to its WebSocket endpoint.
pub fn endpoint_base(url: &str) -> Result<String, String> {
    let url = url.trim();
    let bad = |why: &str| format!("--url {url:?}: {why}");
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected ws://host:port"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return Err(bad("scheme must be ws, wss, http or https")),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    if authority.is_empty() {
        return Err(bad("missing host"));
    }
    let tail = if tail.is_empty() || tail == "/" {
        "/v1/ws".to_string()
    } else if let Some(q) = tail.strip_prefix("/?").or_else(|| tail.strip_prefix('?')) {
        format!("/v1/ws?{q}")
    } else {
        tail.to_string()
    };
    let out = format!("{scheme}://{authority}{tail}");
    out.parse::<Uri>().map_err(|e| bad(&e.to_string()))?;
    Ok(out)
}

fn random_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    h.write_u32(std::process::id());
    let mut v = h.finish();
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..8)
        .map(|_| {
            let c = alphabet[(v % 36) as usize] as char;
            v /= 36;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn plan(extra: &[&str]) -> Result<Plan, String> {
        let mut argv = vec!["chat-bench", "--run-id", "t"];
        argv.extend_from_slice(extra);
        Plan::from_args(&Args::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn endpoints() {
        assert_eq!(endpoint_base("ws://127.0.0.1:8080").unwrap(), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(endpoint_base("http://h:1/").unwrap(), "ws://h:1/v1/ws");
        assert_eq!(endpoint_base("https://h/chat/v1/ws").unwrap(), "wss://h/chat/v1/ws");
        assert_eq!(endpoint_base("ws://h:1?x=1").unwrap(), "ws://h:1/v1/ws?x=1");
        assert_eq!(endpoint_base("ws://h:1/v1/ws?x=1").unwrap(), "ws://h:1/v1/ws?x=1");
        for bad in ["h:1", "ftp://h", "ws://", "ws:///v1/ws", "ws://h h"] {
            assert!(endpoint_base(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dev_user_is_added_to_the_query() {
        let p = plan(&["-u", "ws://a:1,ws://b:2?k=v", "-n", "4", "-c", "1"]).unwrap();
        assert_eq!(p.url_of(0, true), "ws://a:1/v1/ws?user=bench-0");
        assert_eq!(p.url_of(1, true), "ws://b:2/v1/ws?k=v&user=bench-1");
        assert_eq!(p.url_of(1, false), "ws://b:2/v1/ws?k=v");
    }

    #[test]
    fn channels_and_publishers() {
        let p = plan(&["-n", "10", "-c", "3", "-p", "2"]).unwrap();
        assert_eq!((0..10).map(|i| p.channel_of(i)).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        assert_eq!([p.members_of(0), p.members_of(1), p.members_of(2)], [4, 3, 3]);
        assert_eq!(p.publishers(), 6);
        assert_eq!(p.publisher_slot(0), Some(0));
        assert_eq!(p.publisher_slot(4), Some(1));
        assert_eq!(p.publisher_slot(6), None);
        assert_eq!(p.slot_in_channel(4, 1), Some(1));
        assert_eq!(p.slot_in_channel(4, 0), None, "wrong channel");
        assert_eq!(p.slot_in_channel(7, 1), None, "a member, not a publisher");
        assert_eq!(p.slot_in_channel(u64::MAX, 0), None);
        assert_eq!(p.channel_name(2).unwrap().to_string(), "bench-t-2");
    }

    #[test]
    fn nodes_are_round_robin_within_each_channel() {
        // C = U = 3: plain i mod U would put every channel on a single node.
        let p = plan(&["-u", "ws://a:1,ws://b:1,ws://c:1", "-n", "9", "-c", "3"]).unwrap();
        for ch in 0..3 {
            let mut nodes: Vec<_> = (0..9).filter(|&i| p.channel_of(i) == ch).map(|i| p.node_of(i)).collect();
            nodes.sort();
            assert_eq!(nodes, [0, 1, 2], "channel {ch}");
        }
        let mut per_node = [0; 3];
        for i in 0..9 {
            per_node[p.node_of(i)] += 1;
        }
        assert_eq!(per_node, [3, 3, 3]);
    }

    #[test]
    fn pacing_is_even_and_totals_match() {
        // 4 publishers at 100/s for 1 s: 100 messages, one every 10 ms overall.
        let p = plan(&["-n", "8", "-c", "4", "-r", "100", "-d", "1"]).unwrap();
        assert_eq!(p.planned_messages(), 100);
        assert_eq!(p.max_seq(), 25);
        let mut times: Vec<Duration> = (0..4)
            .flat_map(|i| (0..p.sends_of(i)).map(move |k| (i, k)))
            .map(|(i, k)| p.send_offset(i, k))
            .collect();
        times.sort();
        for (n, t) in times.iter().enumerate() {
            let want = Duration::from_millis(10 * n as u64);
            assert!(t.abs_diff(want) < Duration::from_micros(1), "{n}: {t:?}");
        }
        assert!(times.last().unwrap() < &Duration::from_secs(1));
    }

    #[test]
    fn fewer_messages_than_publishers() {
        // 10 publishers, 3 messages in total: only the first three send once.
        let p = plan(&["-n", "10", "-c", "10", "-r", "1", "-d", "3"]).unwrap();
        assert_eq!((0..10).map(|i| p.sends_of(i)).collect::<Vec<_>>(), [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(p.planned_messages(), 3);
        // fractional totals round up per publisher slot: 2.5 → slots 0, 1, 2
        let p = plan(&["-n", "1", "-c", "1", "-r", "2.5", "-d", "1"]).unwrap();
        assert_eq!(p.planned_messages(), 3);
        let p = plan(&["-n", "1", "-c", "1", "-r", "0.1", "-d", "30"]).unwrap();
        assert_eq!(p.planned_messages(), 3);
    }

    #[test]
    fn rejects_impossible_plans() {
        assert!(plan(&["-n", "2", "-c", "3"]).is_err());
        assert!(plan(&["-n", "5", "-c", "2", "-p", "3"]).is_err());
        assert!(plan(&["-n", "0"]).is_err());
        assert!(plan(&["-r", "0"]).is_err());
        assert!(plan(&["-r", "NaN"]).is_err());
        assert!(plan(&["-d", "0"]).is_err());
        assert!(plan(&["--message-bytes", "2001"]).is_err());
        assert!(plan(&["--connect-concurrency", "0"]).is_err());
        assert!(plan(&["-u", "wss://h"]).is_err());
        assert!(plan(&["--connect-rate", "-1"]).is_err());
        let argv = ["chat-bench", "--run-id", "bad id"];
        assert!(Plan::from_args(&Args::try_parse_from(argv).unwrap()).is_err());
    }

    #[test]
    fn random_run_ids_are_valid_and_differ() {
        let a = random_run_id();
        assert_eq!(a.len(), 8);
        assert!(ChannelName::new(&format!("bench-{a}-0")).is_ok());
        assert_ne!(a, random_run_id());
    }
}
