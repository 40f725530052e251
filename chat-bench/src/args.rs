//! Command-line interface.

use std::time::Duration;

use clap::Parser;

use crate::summary::JSON_SCHEMA_DOC;

/// Load generator for Shardchat: fan-out throughput, publish→deliver latency
/// and delivery correctness (lost, duplicated, out-of-order messages).
///
/// Opens N WebSocket connections (`/v1/ws`) spread over the given node URLs,
/// puts connection i into channel `bench-<run-id>-<i mod C>`, lets the first
/// P members of every channel publish at an aggregate, evenly paced rate for
/// the duration, waits for the drain period, and reports. Publishing starts
/// only once every connection has joined.
///
/// Node of connection i: URL number ((i mod C) + (i div C)) mod U for U
/// URLs, i.e. round-robin within every channel, so each channel's members
/// and publishers are spread over all nodes whatever C and U are (multi-node
/// mode: pass several URLs).
///
/// Exit status: 0 when the run passed; 1 when any accepted message was lost,
/// duplicated or delivered out of order, when a publish got no reply by the
/// end of the drain, when any connection failed to connect or join or was
/// closed by the server, when the server broke the protocol, or when no
/// publish was accepted at all (`--allow-loss` waives lost messages, missing
/// replies and connection failures, never duplicates or reordering); 2 for
/// bad arguments or a setup error.
///
/// Limits: every connection takes one file descriptor in the bench and one
/// in the server. Where the open-files limit cannot be raised past 20,000
/// and both run on one machine, keep N at or below about 9,000 per bench
/// process. The bench refuses to start when N exceeds its own limit.
#[derive(Debug, Clone, Parser)]
#[command(name = "chat-bench", version, after_long_help = JSON_SCHEMA_DOC)]
pub struct Args {
    /// Node WebSocket base URL (ws://host:port); repeat the flag or separate
    /// with commas for several nodes. `/v1/ws` is appended when the URL has
    /// no path. http:// is accepted as ws://; wss:// (TLS) is not supported
    /// by this build.
    #[arg(long = "url", short = 'u', value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    pub urls: Vec<String>,

    /// Number of client connections (N).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub connections: usize,

    /// Number of channels (C); connection i joins channel i mod C.
    #[arg(long, short = 'c', default_value_t = 10)]
    pub channels: usize,

    /// Members of each channel that publish (P); at most N div C.
    #[arg(long, short = 'p', default_value_t = 1)]
    pub publishers_per_channel: usize,

    /// Aggregate publish rate over all publishers, messages per second.
    #[arg(long, short = 'r', default_value_t = 100.0)]
    pub rate: f64,

    /// How long to publish: seconds, or with a unit (500ms, 10s, 2m).
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// How long to keep receiving after the last publish.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Length of each message's text, in characters (1..=2000).
    #[arg(long, default_value_t = 32)]
    pub message_bytes: usize,

    /// Run id in the channel names `bench-<run-id>-<k>`; random by default.
    #[arg(long)]
    pub run_id: Option<String>,

    /// JWT sent as `Authorization: Bearer` (secured nodes). Without it each
    /// connection identifies as `?user=bench-<i>` (dev mode).
    #[arg(long, env = "CHAT_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Connections being set up (connect + join) at the same time.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// New connections per second (0 = as fast as --connect-concurrency
    /// allows). chat-node limits connection attempts per client IP
    /// (its --connect-rate, default 50/s after a burst of 200): either pace
    /// the bench below that or start the node with `--connect-rate 0`.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,

    /// Time allowed for one connection's WebSocket handshake, and for its join reply.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Extra abusive connections that flood publishes on their own channel
    /// during the publish window, ignoring rate limits and reconnecting when
    /// closed; the report then shows whether the normal members suffered.
    #[arg(long, default_value_t = 0)]
    pub flooders: usize,

    /// Reconnect a connection that is lost during the run (node killed,
    /// restarted, network cut): try the next node URL, with backoff from
    /// 50 ms to 1 s, and re-join with `since` = the last message id
    /// received. Missing messages inside a window that the server declared
    /// unprovable (`recovered: false` on that join, or a `gap` push) are
    /// reported as `excused`, not lost; every other accepted message must
    /// still arrive exactly once, in order. Publishes lost with their
    /// connection are `interrupted` (outcome unknown) unless retried.
    #[arg(long)]
    pub reconnect: bool,

    /// Give every publish a nonce and send it again (same nonce) after an
    /// `unavailable` or `timeout` reply or when its connection was lost
    /// before the reply, until the publish window plus half the drain has
    /// passed. The server must answer a retry of a stored publish with the
    /// first id (`duplicate: true`); a publish stored twice shows up as a
    /// duplicate delivery.
    #[arg(long)]
    pub retry_publishes: bool,

    /// Direct messages instead of channels: every "channel" of the plan is
    /// a conversation between its two members (so --connections must be
    /// twice --channels), and each publisher sends `dm` to the other
    /// member. Both sides receive every message of the conversation (the
    /// sender's own connection too), checked for loss, duplicates and order
    /// by conversation id. Users are named `bench-<run id>-<connection>`.
    /// The node's per-recipient limit (`--dm-recipient-rate`) must allow
    /// the per-conversation rate.
    #[arg(long)]
    pub dm: bool,

    /// Print one JSON object instead of the table (schema: see --help).
    #[arg(long)]
    pub json: bool,

    /// Exit 0 even when messages were lost, publishes went unanswered or
    /// connections failed (duplicates and reordering still fail the run).
    #[arg(long)]
    pub allow_loss: bool,

    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `10`, `2.5`, `10s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 =
        num.trim().parse().map_err(|_| format!("invalid duration {s:?} (e.g. 10, 2.5s, 500ms)"))?;
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=30.0 * 86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "x", "-1", "1h", "NaNs", "1e99"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_repeat_or_comma_separate() {
        let a = Args::try_parse_from([
            "chat-bench",
            "--url",
            "ws://a:1,ws://b:2",
            "-u",
            "ws://c:3",
            "-n",
            "9",
            "--duration",
            "1s",
        ])
        .unwrap();
        assert_eq!(a.urls, ["ws://a:1", "ws://b:2", "ws://c:3"]);
        assert_eq!(a.connections, 9);
        assert_eq!(a.duration, Duration::from_secs(1));
        assert_eq!(a.drain, Duration::from_secs(2));
        let d = Args::try_parse_from(["chat-bench"]).unwrap();
        assert_eq!(d.urls, ["ws://127.0.0.1:8080"]);
        assert_eq!(d.publishers_per_channel, 1);
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
