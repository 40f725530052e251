//! Turns the connections' outcomes into the run's figures and verdict.
//!
//! [`Summary`] is also the `--json` output; its field names are stable
//! (documented in [`JSON_SCHEMA_DOC`], shown by `chat-bench --help`). New
//! fields may be added; existing ones keep their name and meaning while
//! `schema` stays 1.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::client::{ConnOutcome, Stage};
use crate::latency::Percentiles;
use crate::plan::Plan;
use crate::tracker::{PublisherLog, reconcile};

pub const JSON_SCHEMA_DOC: &str = "\
JSON output (--json): one object, schema 1. Latencies in microseconds.
  schema                      1
  run_id                      channel names are bench-<run_id>-<k>
  passed                      the run's verdict (exit status 0 iff true)
  failures                    why it did not pass, one sentence each
  config      {urls, connections, channels, publishers_per_channel,
               rate, duration_s, drain_s, message_bytes}
  setup       {connected, joined, seconds}
  sent        {planned, attempted, accepted, rejected, unanswered,
               interrupted, not_sent, retries, deduplicated, per_sec}
               per_sec = accepted / duration; interrupted: sent, then the
               connection was lost before the reply (outcome unknown, not
               retried); retries: publishes sent again (--retry-publishes);
               deduplicated: accepted replies with duplicate: true
  delivered   {count, unique, expected, per_sec, window_s, presence}
               count: every message push received; unique: first
               deliveries of accepted messages; expected: accepted
               messages x joined members of their channel (sender
               included); per_sec = count / window_s, the time from the
               first publish to the last delivery (at least the duration);
               presence: presence pushes received
  latency_us  {samples, p50, p90, p99, p999, max, mean}  publish->deliver
  send_lag_us {samples, p50, p90, p99, p999, max, mean}  how late the bench
               sent each publish against its schedule (bench overload)
  errors      {<error code>: count}  error replies and error pushes
               (channel_closed: `closed` pushes for the channel)
  connections {connect_failed, join_failed, closed_early,
               close_codes: {<code>: count}, failure_reasons: {<why>: count},
               closed_examples: [{conn, channel, publisher, code}] (<= 10)}
               closed_early: closed before the end of the run; code 1006
               = no close frame (reset, EOF); 1005 = close without code;
               stalled = a publish could not be written before the end
  recovery    {reconnects, recovered_false, gaps}  (--reconnect)
               reconnects: lost connections that reconnected and re-joined
               with since; recovered_false: re-joins answered recovered:
               false; gaps: gap pushes received
  correctness {lost, lost_on_closed, excused, duplicated, out_of_order,
               unconfirmed, foreign, protocol_violations}
               lost: expected deliveries never received (lost_on_closed:
               the part of it on connections closed early); excused:
               missing accepted messages inside a window the server
               declared unprovable (recovered: false or a gap push; not a
               failure, the client is told to reload); duplicated:
               a message received again on a connection; out_of_order: a
               first delivery whose id is not greater than the highest id
               already received on that connection; unconfirmed: bench
               messages received whose publish was not accepted; foreign:
               messages without a bench stamp of the channel's publishers;
               protocol_violations: frames that break protocol v1
  lost_examples [{conn, channel, node, lost, reconnects, highest,
               first_lost: {publisher, seq, id}}]  (<= 10) members that
               lost messages: where they were connected (node = URL index
               of the first connection), the highest id they received and
               the earliest message they lost (id known with --reconnect)
Fails (exit 1) on lost > 0, sent.unanswered > 0, connection failures
(these three waived by --allow-loss), duplicated > 0, out_of_order > 0,
protocol_violations > 0, or no accepted publish.";

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub schema: u32,
    pub run_id: String,
    pub passed: bool,
    pub failures: Vec<String>,
    pub config: Config,
    pub setup: Setup,
    pub sent: Sent,
    pub delivered: Delivered,
    pub latency_us: Percentiles,
    pub send_lag_us: Percentiles,
    pub errors: BTreeMap<String, u64>,
    pub connections: Connections,
    pub recovery: RecoveryFigures,
    pub correctness: Correctness,
    pub lost_examples: Vec<LostExample>,
}

/// Upper bound of `lost_examples`.
pub const LOST_EXAMPLES: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct LostExample {
    pub conn: usize,
    pub channel: usize,
    pub node: usize,
    pub lost: u64,
    pub reconnects: u64,
    pub highest: Option<String>,
    pub first_lost: FirstLost,
}

#[derive(Debug, Clone, Serialize)]
pub struct FirstLost {
    /// Connection index of the publisher.
    pub publisher: usize,
    pub seq: u64,
    pub id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryFigures {
    pub reconnects: u64,
    pub recovered_false: u64,
    pub gaps: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub urls: Vec<String>,
    pub connections: usize,
    pub channels: usize,
    pub publishers_per_channel: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub message_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub connected: u64,
    pub joined: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Sent {
    pub planned: u64,
    pub attempted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub unanswered: u64,
    pub interrupted: u64,
    pub not_sent: u64,
    pub retries: u64,
    pub deduplicated: u64,
    pub per_sec: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivered {
    pub count: u64,
    pub unique: u64,
    pub expected: u64,
    pub per_sec: f64,
    pub window_s: f64,
    pub presence: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    pub connect_failed: u64,
    pub join_failed: u64,
    pub closed_early: u64,
    pub close_codes: BTreeMap<String, u64>,
    pub failure_reasons: BTreeMap<String, u64>,
    /// The first few connections closed early, for diagnosis.
    pub closed_examples: Vec<ClosedExample>,
}

/// Upper bound of `closed_examples`.
pub const CLOSED_EXAMPLES: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct ClosedExample {
    pub conn: usize,
    pub channel: usize,
    pub publisher: bool,
    pub code: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Correctness {
    pub lost: u64,
    pub lost_on_closed: u64,
    pub excused: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unconfirmed: u64,
    pub foreign: u64,
    pub protocol_violations: u64,
}

/// Facts about the run that are not in the outcomes.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub setup_time: Duration,
    /// When publishing started (None if it never did).
    pub t0: Option<Instant>,
    pub latency: Percentiles,
    pub send_lag: Percentiles,
    /// Connection tasks that panicked (their outcome is missing).
    pub lost_tasks: u64,
    pub allow_loss: bool,
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

pub fn summarize(plan: &Plan, outcomes: &[ConnOutcome], facts: &RunFacts) -> Summary {
    let mut conns = Connections::default();
    let mut sent = Sent { planned: plan.planned_messages(), ..Sent::default() };
    let mut correctness = Correctness::default();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut connected, mut joined) = (0, 0);

    let mut recovery = RecoveryFigures::default();
    // publishers[channel][slot]
    let mut accepted: Vec<Vec<Option<&PublisherLog>>> =
        vec![vec![None; plan.publishers_per_channel]; plan.channels];
    for o in outcomes {
        match &o.stage {
            Stage::ConnectFailed(why) => {
                conns.connect_failed += 1;
                *conns.failure_reasons.entry(why.clone()).or_default() += 1;
            }
            Stage::JoinFailed(why) => {
                connected += 1;
                conns.join_failed += 1;
                *conns.failure_reasons.entry(why.clone()).or_default() += 1;
            }
            Stage::Joined => {
                connected += 1;
                joined += 1;
            }
        }
        if let Some(code) = &o.closed_early {
            conns.closed_early += 1;
            *conns.close_codes.entry(code.clone()).or_default() += 1;
            if conns.closed_examples.len() < CLOSED_EXAMPLES {
                conns.closed_examples.push(ClosedExample {
                    conn: o.index,
                    channel: o.channel,
                    publisher: o.publisher.is_some(),
                    code: code.clone(),
                });
            }
        }
        for (code, n) in &o.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
        correctness.protocol_violations += o.protocol_violations;
        sent.not_sent += o.not_sent;
        if let Some(p) = &o.publisher {
            sent.attempted += p.attempted();
            sent.accepted += p.accepted().len();
            sent.rejected += p.rejected();
            sent.unanswered += p.unanswered();
            sent.interrupted += p.interrupted_count();
            sent.retries += p.retries;
            sent.deduplicated += p.duplicates;
            correctness.protocol_violations += p.unexpected_replies;
            if let Some(slot) = plan.publisher_slot(o.index)
                && let Some(cell) = accepted.get_mut(o.channel).and_then(|c| c.get_mut(slot))
            {
                *cell = Some(p);
            }
        }
    }

    let mut delivered = Delivered::default();
    let mut lost_examples = Vec::new();
    let mut last_delivery: Option<Instant> = None;
    for o in outcomes.iter().filter(|o| o.stage == Stage::Joined) {
        let Some(acc) = accepted.get(o.channel) else { continue };
        let r = reconcile(acc, &o.member, &o.recovery.excuses);
        let expected: u64 = acc.iter().flatten().map(|p| p.accepted().len()).sum();
        delivered.expected += expected;
        correctness.lost += r.lost;
        correctness.excused += r.excused;
        if r.lost > 0
            && lost_examples.len() < LOST_EXAMPLES
            && let Some((slot, seq, id)) = r.first_lost
        {
            lost_examples.push(LostExample {
                conn: o.index,
                channel: o.channel,
                node: plan.node_of(o.index),
                lost: r.lost,
                reconnects: o.recovery.reconnects,
                highest: o.member.highest().map(|h| h.to_string()),
                first_lost: FirstLost {
                    publisher: slot * plan.channels + o.channel,
                    seq,
                    id: id.map(|i| i.to_string()),
                },
            });
        }
        recovery.reconnects += o.recovery.reconnects;
        recovery.recovered_false += o.recovery.recovered_false;
        recovery.gaps += o.recovery.gaps;
        if o.closed_early.is_some() {
            correctness.lost_on_closed += r.lost;
        }
        correctness.unconfirmed += r.unconfirmed;
        let c = o.member.counts();
        delivered.count += c.delivered;
        delivered.presence += o.presence;
        correctness.duplicated += c.duplicated;
        correctness.out_of_order += c.out_of_order;
        correctness.foreign += c.foreign;
        last_delivery = last_delivery.max(o.last_delivery);
    }
    delivered.unique = delivered.expected - correctness.lost - correctness.excused;

    let duration = plan.duration.as_secs_f64();
    let window = match (facts.t0, last_delivery) {
        (Some(t0), Some(last)) => last.saturating_duration_since(t0).as_secs_f64().max(duration),
        _ => duration,
    };
    delivered.window_s = round(window, 3);
    delivered.per_sec = round(delivered.count as f64 / window, 1);
    sent.per_sec = round(sent.accepted as f64 / duration, 1);

    let mut failures = Vec::new();
    let failed_conns = conns.connect_failed + conns.join_failed + conns.closed_early + facts.lost_tasks;
    if correctness.lost > 0 && !facts.allow_loss {
        failures.push(format!("{} expected deliveries were lost", correctness.lost));
    }
    if sent.unanswered > 0 && !facts.allow_loss {
        failures.push(format!("{} publishes got no reply by the end of the drain", sent.unanswered));
    }
    if failed_conns > 0 && !facts.allow_loss {
        failures.push(format!("{failed_conns} connections failed or were closed early"));
    }
    if correctness.duplicated > 0 {
        failures.push(format!("{} deliveries were duplicates", correctness.duplicated));
    }
    if correctness.out_of_order > 0 {
        failures.push(format!("{} deliveries were out of order", correctness.out_of_order));
    }
    if correctness.protocol_violations > 0 {
        failures.push(format!("{} frames violated the protocol", correctness.protocol_violations));
    }
    if sent.accepted == 0 {
        failures.push("no publish was accepted".into());
    }

    Summary {
        schema: 1,
        run_id: plan.run_id.clone(),
        passed: failures.is_empty(),
        failures,
        config: Config {
            urls: plan.endpoints.clone(),
            connections: plan.connections,
            channels: plan.channels,
            publishers_per_channel: plan.publishers_per_channel,
            rate: plan.rate,
            duration_s: duration,
            drain_s: plan.drain.as_secs_f64(),
            message_bytes: plan.message_bytes,
        },
        setup: Setup { connected, joined, seconds: round(facts.setup_time.as_secs_f64(), 3) },
        sent,
        delivered,
        latency_us: facts.latency,
        send_lag_us: facts.send_lag,
        errors,
        connections: conns,
        recovery,
        correctness,
        lost_examples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use crate::tracker::{MemberLog, Origin, PublishOutcome, PublisherLog};
    use clap::Parser;
    use shardchat_common::MessageId;

    fn plan() -> Plan {
        // 4 connections, 2 channels: 0 and 2 in ch 0 (0 publishes), 1 and 3 in ch 1 (1 publishes).
        let a =
            Args::try_parse_from(["chat-bench", "--run-id", "t", "-n", "4", "-c", "2", "-r", "4", "-d", "1"]);
        Plan::from_args(&a.unwrap()).unwrap()
    }

    fn outcome(plan: &Plan, index: usize) -> ConnOutcome {
        ConnOutcome {
            index,
            channel: plan.channel_of(index),
            stage: Stage::Joined,
            closed_early: None,
            member: MemberLog::new(1, plan.max_seq()),
            publisher: plan.publisher_slot(index).map(|_| PublisherLog::new()),
            not_sent: 0,
            errors: BTreeMap::new(),
            presence: 0,
            protocol_violations: 0,
            last_delivery: None,
            recovery: Default::default(),
        }
    }

    fn facts(allow_loss: bool) -> RunFacts {
        RunFacts {
            setup_time: Duration::from_millis(10),
            t0: None,
            latency: Percentiles::default(),
            send_lag: Percentiles::default(),
            lost_tasks: 0,
            allow_loss,
        }
    }

    /// Publisher `o` publishes seqs 0..n, all accepted; every member of the
    /// channel in `receivers` receives them in order.
    fn publish_all(outs: &mut [ConnOutcome], publisher: usize, n: u64, receivers: &[usize]) {
        let p = outs[publisher].publisher.as_mut().unwrap();
        for s in 0..n {
            p.sent(s);
            p.answered(s, PublishOutcome::Accepted);
        }
        for &r in receivers {
            for s in 0..n {
                outs[r].member.record(MessageId::new(s + 1, 0), Some(Origin { slot: 0, seq: s }));
            }
        }
    }

    #[test]
    fn clean_run_passes() {
        let plan = plan();
        let mut outs: Vec<_> = (0..4).map(|i| outcome(&plan, i)).collect();
        publish_all(&mut outs, 0, 2, &[0, 2]);
        publish_all(&mut outs, 1, 2, &[1, 3]);
        let s = summarize(&plan, &outs, &facts(false));
        assert!(s.passed, "{:?}", s.failures);
        assert_eq!(s.sent.accepted, 4);
        assert_eq!(s.delivered.expected, 8);
        assert_eq!(s.delivered.count, 8);
        assert_eq!(s.delivered.unique, 8);
        assert_eq!(s.correctness.lost, 0);
        assert_eq!(s.setup.joined, 4);
    }

    #[test]
    fn a_lost_message_fails_unless_allowed() {
        let plan = plan();
        let mut outs: Vec<_> = (0..4).map(|i| outcome(&plan, i)).collect();
        publish_all(&mut outs, 0, 2, &[0]); // member 2 receives nothing
        publish_all(&mut outs, 1, 2, &[1, 3]);
        let s = summarize(&plan, &outs, &facts(false));
        assert!(!s.passed);
        assert_eq!(s.correctness.lost, 2);
        assert_eq!(s.delivered.unique, 6);
        assert!(summarize(&plan, &outs, &facts(true)).passed);
    }

    #[test]
    fn duplicates_and_reordering_fail_even_with_allow_loss() {
        let plan = plan();
        let mut outs: Vec<_> = (0..4).map(|i| outcome(&plan, i)).collect();
        publish_all(&mut outs, 0, 2, &[0, 2]);
        publish_all(&mut outs, 1, 2, &[1, 3]);
        outs[2].member.record(MessageId::new(1, 0), Some(Origin { slot: 0, seq: 0 }));
        let s = summarize(&plan, &outs, &facts(true));
        assert!(!s.passed);
        assert_eq!(s.correctness.duplicated, 1);

        let mut outs: Vec<_> = (0..4).map(|i| outcome(&plan, i)).collect();
        publish_all(&mut outs, 0, 2, &[0]);
        publish_all(&mut outs, 1, 2, &[1, 3]);
        outs[2].member.record(MessageId::new(2, 0), Some(Origin { slot: 0, seq: 1 }));
        outs[2].member.record(MessageId::new(1, 0), Some(Origin { slot: 0, seq: 0 }));
        let s = summarize(&plan, &outs, &facts(true));
        assert_eq!(s.correctness.out_of_order, 1);
        assert_eq!(s.correctness.lost, 0);
        assert!(!s.passed);
    }

    #[test]
    fn failed_and_closed_connections() {
        let plan = plan();
        let mut outs: Vec<_> = (0..4).map(|i| outcome(&plan, i)).collect();
        publish_all(&mut outs, 0, 2, &[0, 2]);
        publish_all(&mut outs, 1, 2, &[1]);
        outs[3].closed_early = Some("4009".into()); // slow consumer, got nothing
        let s = summarize(&plan, &outs, &facts(false));
        assert_eq!(s.connections.closed_early, 1);
        assert_eq!(s.connections.close_codes.get("4009"), Some(&1));
        let ex = &s.connections.closed_examples;
        assert_eq!((ex.len(), ex[0].conn, ex[0].channel, ex[0].publisher), (1, 3, 1, false));
        assert_eq!(s.correctness.lost, 2);
        assert_eq!(s.correctness.lost_on_closed, 2);
        assert_eq!(s.failures.len(), 2, "{:?}", s.failures);

        let mut outs: Vec<_> = (0..4).map(|i| outcome(&plan, i)).collect();
        publish_all(&mut outs, 0, 2, &[0, 2]);
        publish_all(&mut outs, 1, 2, &[1]);
        outs[3].stage = Stage::ConnectFailed("io: connection refused".into());
        let s = summarize(&plan, &outs, &facts(false));
        assert_eq!(s.correctness.lost, 0, "a member that never joined expects nothing");
        assert_eq!(s.delivered.expected, 6);
        assert_eq!(s.connections.failure_reasons.get("io: connection refused"), Some(&1));
        assert_eq!(s.setup.connected, 3);
        assert!(!s.passed);
        assert!(summarize(&plan, &outs, &facts(true)).passed);
    }

    #[test]
    fn unanswered_publishes_fail_unless_allowed() {
        let plan = plan();
        let mut outs: Vec<_> = (0..4).map(|i| outcome(&plan, i)).collect();
        publish_all(&mut outs, 0, 2, &[0, 2]);
        publish_all(&mut outs, 1, 2, &[1, 3]);
        outs[0].publisher.as_mut().unwrap().sent(2); // never answered
        let s = summarize(&plan, &outs, &facts(false));
        assert_eq!(s.sent.unanswered, 1);
        assert_eq!(s.sent.attempted, 5);
        assert!(!s.passed);
        assert!(summarize(&plan, &outs, &facts(true)).passed);
    }

    #[test]
    fn nothing_accepted_fails() {
        let plan = plan();
        let outs: Vec<_> = (0..4).map(|i| outcome(&plan, i)).collect();
        let s = summarize(&plan, &outs, &facts(true));
        assert_eq!(s.failures, ["no publish was accepted"]);
    }

    #[test]
    fn json_field_names_are_stable() {
        let plan = plan();
        let outs: Vec<_> = (0..4).map(|i| outcome(&plan, i)).collect();
        let v = serde_json::to_value(summarize(&plan, &outs, &facts(false))).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        for k in [
            "schema",
            "run_id",
            "passed",
            "failures",
            "config",
            "setup",
            "sent",
            "delivered",
            "latency_us",
            "send_lag_us",
            "errors",
            "connections",
            "recovery",
            "correctness",
        ] {
            assert!(keys.contains(&k.to_string()), "{k}");
        }
        for (section, fields) in [
            (
                "sent",
                &[
                    "planned",
                    "attempted",
                    "accepted",
                    "rejected",
                    "unanswered",
                    "interrupted",
                    "not_sent",
                    "retries",
                    "deduplicated",
                    "per_sec",
                ][..],
            ),
            ("delivered", &["count", "unique", "expected", "per_sec", "window_s", "presence"][..]),
            ("latency_us", &["samples", "p50", "p90", "p99", "p999", "max", "mean"][..]),
            (
                "correctness",
                &[
                    "lost",
                    "lost_on_closed",
                    "excused",
                    "duplicated",
                    "out_of_order",
                    "unconfirmed",
                    "foreign",
                    "protocol_violations",
                ][..],
            ),
            ("recovery", &["reconnects", "recovered_false", "gaps"][..]),
            (
                "connections",
                &[
                    "connect_failed",
                    "join_failed",
                    "closed_early",
                    "close_codes",
                    "failure_reasons",
                    "closed_examples",
                ][..],
            ),
        ] {
            for f in fields {
                assert!(v[section].get(f).is_some(), "{section}.{f}");
                assert!(JSON_SCHEMA_DOC.contains(f), "{f} undocumented");
            }
        }
    }
}
