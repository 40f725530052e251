//! Orchestrates a run: spawn the connections, wait until all are set up,
//! fix the timeline (publish window, drain), collect the outcomes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};

use crate::client::{SetupEvent, Shared, Timeline, run_connection};
use crate::flood::{FloodStats, flood};
use crate::latency::{Percentiles, ShardedHistogram};
use crate::plan::Plan;
use crate::summary::{RunFacts, Summary, summarize};

/// Gap between the end of setup and the first publish, so every task has
/// seen the timeline before its first publish is due.
const LEAD: Duration = Duration::from_millis(200);

pub struct Options {
    pub token: Option<String>,
    pub connect_concurrency: usize,
    /// New connections per second; 0 = unpaced.
    pub connect_rate: f64,
    pub connect_timeout: Duration,
    pub allow_loss: bool,
    pub quiet: bool,
    /// Abusive flood connections (see `flood`).
    pub flooders: usize,
    /// Reconnect lost connections and re-join with `since`.
    pub reconnect: bool,
    /// Nonces on publishes; re-send after `unavailable`/`timeout`/lost connection.
    pub retry_publishes: bool,
}

fn progress(quiet: bool, msg: impl AsRef<str>) {
    if !quiet {
        eprintln!("chat-bench: {}", msg.as_ref());
    }
}

fn text_of(len: usize) -> String {
    "shardchat bench ".chars().cycle().take(len).collect()
}

pub async fn run(plan: Plan, opts: Options) -> anyhow::Result<Summary> {
    let n = plan.connections;
    let channel_names = (0..plan.channels)
        .map(|k| plan.channel_name(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let shared = Arc::new(Shared {
        text: text_of(plan.message_bytes),
        plan,
        channel_names,
        token: opts.token,
        epoch: Instant::now(),
        latency: ShardedHistogram::new()?,
        send_lag: ShardedHistogram::new()?,
        setup_gate: Semaphore::new(opts.connect_concurrency),
        connect_interval: (opts.connect_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.connect_rate)),
        connect_timeout: opts.connect_timeout,
        reconnect: opts.reconnect,
        retry: opts.retry_publishes,
    });
    let plan = &shared.plan;
    progress(
        opts.quiet,
        format!(
            "run {}: opening {n} connections to {} node(s), {} at a time",
            plan.run_id,
            plan.endpoints.len(),
            opts.connect_concurrency
        ),
    );

    let (start_tx, start_rx) = watch::channel::<Option<Timeline>>(None);
    let (setup_tx, mut setup_rx) = mpsc::unbounded_channel();
    let setup_started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| tokio::spawn(run_connection(shared.clone(), i, start_rx.clone(), setup_tx.clone())))
        .collect();
    drop((setup_tx, start_rx));

    // Wait until every connection has joined or failed. Each step of a
    // connection's setup is bounded by the connect timeout; the watchdog
    // only guards against a task that died without reporting.
    let (mut joined, mut failed) = (0usize, 0usize);
    let mut tick = interval_at(Instant::now() + Duration::from_secs(2), Duration::from_secs(2));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let watchdog = opts.connect_timeout * 2 + Duration::from_secs(5);
    let mut last_event = Instant::now();
    while joined + failed < n {
        tokio::select! {
            ev = setup_rx.recv() => {
                match ev {
                    Some(SetupEvent::Joined) => joined += 1,
                    Some(SetupEvent::Failed) => failed += 1,
                    None => break,
                }
                last_event = Instant::now();
            }
            _ = tick.tick() => {
                if last_event.elapsed() > watchdog {
                    progress(opts.quiet, "setup stalled; starting with the connections that are ready");
                    break;
                }
                progress(opts.quiet, format!("setup: {joined} joined, {failed} failed of {n}"));
            }
        }
    }
    let setup_time = setup_started.elapsed();
    progress(
        opts.quiet,
        format!("setup done in {:.2} s: {joined} joined, {failed} failed", setup_time.as_secs_f64()),
    );

    let t0 = Instant::now() + LEAD;
    let publish_end = t0 + plan.duration;
    let timeline = Timeline { t0, end: publish_end + plan.drain };
    // Fails only when every task has already ended; then there is nothing to start.
    let _ = start_tx.send(Some(timeline));
    let flood_stats = Arc::new(FloodStats::default());
    let flooders: Vec<_> = (0..opts.flooders)
        .map(|i| {
            let base = &plan.endpoints[i % plan.endpoints.len()];
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}user=flood-{i}");
            let channel = format!("bench-{}-flood-{i}", plan.run_id);
            tokio::spawn(flood(url, channel, t0, publish_end, flood_stats.clone()))
        })
        .collect();
    progress(
        opts.quiet,
        format!(
            "publishing {} messages at {} msg/s for {:.1} s, then draining {:.1} s",
            plan.planned_messages(),
            plan.rate,
            plan.duration.as_secs_f64(),
            plan.drain.as_secs_f64()
        ),
    );
    sleep_until(publish_end).await;
    progress(opts.quiet, "publishing done; draining");
    for f in flooders {
        let _ = f.await;
    }
    if opts.flooders > 0 {
        // Printed even with --quiet: it qualifies every figure of the run.
        eprintln!("chat-bench: {}", flood_stats.line(opts.flooders));
    }

    let mut outcomes = Vec::with_capacity(n);
    let mut lost_tasks = 0;
    for h in handles {
        match h.await {
            Ok(o) => outcomes.push(o),
            Err(_) => lost_tasks += 1,
        }
    }
    let facts = RunFacts {
        setup_time,
        t0: Some(t0),
        latency: Percentiles::of(&shared.latency.merged()),
        send_lag: Percentiles::of(&shared.send_lag.merged()),
        lost_tasks,
        allow_loss: opts.allow_loss,
    };
    Ok(summarize(plan, &outcomes, &facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_the_requested_length() {
        assert_eq!(text_of(1), "s");
        assert_eq!(text_of(40).chars().count(), 40);
        assert_eq!(text_of(2000).len(), 2000);
    }
}
