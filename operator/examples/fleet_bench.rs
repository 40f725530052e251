//! Fleet benchmark of chat-operator: the real operator binary (one or more
//! replicas) against the in-repo fake Kubernetes API server
//! (`operator/tests/support/fake_api.rs`, real HTTP) and a real
//! `redis-server`, with N ChatChannels applied at once.
//!
//! Each run measures:
//! * apply: N ChatChannels created in one burst → time until every one is
//!   Ready with a node (from the first and from the last create), reconcile
//!   rate, Kubernetes API requests and Redis commands per channel, the most
//!   HTTP connections open at once, the leader's CPU time;
//! * ring change 3 → 4 nodes: time from the new epoch in `{p}:ring` (the
//!   debounce has passed by then) until every status shows it, the moved
//!   fraction, requests and commands per channel;
//! * the leader's RSS (now and peak), and how busy the fake API server was
//!   (the time it spent handling requests, and this process's CPU, which
//!   includes it).
//!
//! ```text
//! cargo build --release -p chat-operator --bin chat-operator --example fleet_bench
//! target/release/examples/fleet_bench --channels 10000 --runs 3
//! ```
//!
//! `operator/scripts/fleet-bench.sh` does both. Figures of several runs are
//! printed per run and as medians. This is a benchmark, not a test: nothing
//! here asserts a time.

#[path = "../tests/support/fake_api.rs"]
mod fake_api;
#[path = "../tests/support/process.rs"]
mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fake_api::{FakeApi, Stats};
use process::{OperatorCmd, OperatorProcess, cpu_of};
use serde_json::{Value, json};
use shardchat_tests::node::TempDir;
use shardchat_tests::redis::RedisServer;

const NS: &str = "games";
const PREFIX: &str = "shardchat";

struct Args {
    channels: usize,
    runs: usize,
    replicas: usize,
    nodes: usize,
    debounce: String,
    timeout: Duration,
    operator_bin: PathBuf,
    /// Extra `KEY=VALUE` environment for the operator.
    env: Vec<(String, String)>,
    json: bool,
    /// Instead of the operator runs: measure the fake API server alone for
    /// this long.
    api_capacity: Option<Duration>,
}

fn usage() -> ! {
    eprintln!(
        "usage: fleet_bench [--channels N (10000)] [--runs R (3)] [--replicas K (2)] [--nodes M (3)]\n\
         \x20                  [--debounce D (10s)] [--timeout SECS (300)] [--operator-bin PATH]\n\
         \x20                  [--env KEY=VALUE]... [--json] [--api-capacity SECS]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let exe = std::env::current_exe().expect("current exe");
    // <target>/<profile>/examples/fleet_bench -> <target>/<profile>/chat-operator
    let default_bin =
        exe.parent().and_then(|p| p.parent()).map(|p| p.join("chat-operator")).unwrap_or_default();
    let mut a = Args {
        channels: 10_000,
        runs: 3,
        replicas: 2,
        nodes: 3,
        debounce: "10s".into(),
        timeout: Duration::from_secs(300),
        operator_bin: default_bin,
        env: Vec::new(),
        json: false,
        api_capacity: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--channels" => a.channels = val().parse().unwrap_or_else(|_| usage()),
            "--runs" => a.runs = val().parse().unwrap_or_else(|_| usage()),
            "--replicas" => a.replicas = val().parse().unwrap_or_else(|_| usage()),
            "--nodes" => a.nodes = val().parse().unwrap_or_else(|_| usage()),
            "--debounce" => a.debounce = val(),
            "--timeout" => a.timeout = Duration::from_secs(val().parse().unwrap_or_else(|_| usage())),
            "--operator-bin" => a.operator_bin = PathBuf::from(val()),
            "--env" => {
                let kv = val();
                let (k, v) = kv.split_once('=').unwrap_or_else(|| usage());
                a.env.push((k.to_string(), v.to_string()));
            }
            "--json" => a.json = true,
            "--api-capacity" => {
                a.api_capacity = Some(Duration::from_secs(val().parse().unwrap_or_else(|_| usage())))
            }
            _ => usage(),
        }
    }
    if a.replicas == 0 || a.channels == 0 || a.runs == 0 || a.nodes == 0 {
        usage();
    }
    a
}

/// A chat-node Pod, Ready since `ready_since_secs_ago`.
fn pod(name: &str, ready_since_secs_ago: i64) -> Value {
    let ltt = k8s_openapi::jiff::Timestamp::from_second(
        k8s_openapi::jiff::Timestamp::now().as_second() + 1 - ready_since_secs_ago,
    )
    .expect("valid time");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "chat-node"}},
        "spec": {"containers": [{"name": "chat-node", "image": "chat-node"}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": ltt.to_string()}
        ]}
    })
}

/// `INFO commandstats` as command -> calls.
fn commandstats(redis: &RedisServer) -> BTreeMap<String, u64> {
    redis
        .raw(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

fn ring_epoch(redis: &RedisServer) -> Option<u64> {
    let raw = redis.raw(&["GET", &format!("{PREFIX}:ring")]);
    serde_json::from_str::<Value>(&raw).ok()?["epoch"].as_u64()
}

/// The node and epoch of a ChatChannel whose Ready is True.
fn ready_status(o: &Value) -> Option<(&str, u64)> {
    let s = &o["status"];
    let conds = s["conditions"].as_array()?;
    if !conds.iter().any(|c| c["type"] == "Ready" && c["status"] == "True") {
        return None;
    }
    Some((s["node"].as_str()?, s["ringEpoch"].as_u64()?))
}

/// (Ready ChatChannels, those of them at `epoch`), without copying anything
/// (the driver polls this while the operator works).
fn count_ready(fake: &FakeApi, epoch: Option<u64>) -> (usize, usize) {
    let (mut ready, mut at) = (0, 0);
    fake.for_each("chatchannels", NS, |o| {
        if let Some((_, e)) = ready_status(o) {
            ready += 1;
            if Some(e) == epoch {
                at += 1;
            }
        }
    });
    (ready, at)
}

/// name -> (node, epoch) of every ChatChannel whose Ready is True.
fn ready_channels(fake: &FakeApi) -> HashMap<String, (String, u64)> {
    let mut out = HashMap::new();
    fake.for_each("chatchannels", NS, |o| {
        if let Some((node, epoch)) = ready_status(o) {
            out.insert(o["metadata"]["name"].as_str().unwrap_or("").to_string(), (node.to_string(), epoch));
        }
    });
    out
}

/// Counters at one moment.
struct Snapshot {
    at: Instant,
    api: Stats,
    redis: BTreeMap<String, u64>,
    reconciles: f64,
    leader_cpu: Duration,
    own_cpu: Duration,
}

fn snapshot(fake: &FakeApi, redis: &RedisServer, leader: &OperatorProcess) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        api: fake.stats(),
        redis: commandstats(redis),
        reconciles: leader.metric("chat_operator_reconciles_total").unwrap_or(0.0),
        leader_cpu: leader.cpu(),
        own_cpu: cpu_of(std::process::id()),
    }
}

/// What happened between two snapshots, per channel where it says so.
#[derive(Debug, Clone, Default)]
struct Phase {
    /// Until the goal (all Ready / all at the new epoch), seconds.
    seconds: f64,
    api_per_channel: f64,
    api_by_kind: BTreeMap<String, f64>,
    redis_per_channel: f64,
    redis_by_command: BTreeMap<String, f64>,
    reconciles_per_channel: f64,
    reconciles_per_second: f64,
    leader_cpu_ms_per_channel: f64,
    peak_connections: u64,
    connections_opened: u64,
    /// Sum of the fake API's request handling times (wall clock, so it
    /// includes waiting for a CPU or the state lock) over the phase length.
    api_server_busy: f64,
    /// CPU of this process (fake API + driver) over the phase, in cores.
    bench_cpu_cores: f64,
    /// That CPU per API request served, in microseconds.
    bench_cpu_us_per_request: f64,
}

fn phase(before: &Snapshot, after: &Snapshot, goal_seconds: f64, n: usize) -> Phase {
    let n = n as f64;
    let mut api_by_kind = BTreeMap::new();
    for (k, v) in &after.api.requests {
        let d = v - before.api.requests.get(k).copied().unwrap_or(0);
        if d > 0 {
            api_by_kind.insert(k.clone(), d as f64 / n);
        }
    }
    let mut redis_by_command = BTreeMap::new();
    for (k, v) in &after.redis {
        // The benchmark's own probes (GET of the ring, INFO) are not the operator's.
        if k == "info" || k == "get" || k == "ping" || k == "command|docs" {
            continue;
        }
        let d = v - before.redis.get(k).copied().unwrap_or(0);
        if d > 0 {
            redis_by_command.insert(k.clone(), d as f64 / n);
        }
    }
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let reconciles = after.reconciles - before.reconciles;
    Phase {
        seconds: goal_seconds,
        api_per_channel: api_by_kind.values().sum(),
        api_by_kind,
        redis_per_channel: redis_by_command.values().sum(),
        redis_by_command,
        reconciles_per_channel: reconciles / n,
        reconciles_per_second: reconciles / goal_seconds.max(1e-9),
        leader_cpu_ms_per_channel: (after.leader_cpu - before.leader_cpu).as_secs_f64() * 1000.0 / n,
        peak_connections: after.api.connections_peak,
        connections_opened: after.api.connections_accepted - before.api.connections_accepted,
        api_server_busy: (after.api.busy - before.api.busy).as_secs_f64() / wall,
        bench_cpu_cores: (after.own_cpu - before.own_cpu).as_secs_f64() / wall,
        bench_cpu_us_per_request: (after.own_cpu - before.own_cpu).as_secs_f64() * 1e6
            / (after.api.total_requests() - before.api.total_requests()).max(1) as f64,
    }
}

#[derive(Debug, Clone, Default)]
struct RunResult {
    ready_after_first_create: f64,
    ready_after_last_create: f64,
    apply: Phase,
    epoch_after_pod_ready: f64,
    ring: Phase,
    moved_fraction: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
    standby_rss_mib: f64,
}

/// Waits until the leader's reconcile counter has not moved for `quiet`.
fn settle(leader: &OperatorProcess, quiet: Duration, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = leader.metric("chat_operator_reconciles_total");
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = leader.metric("chat_operator_reconciles_total");
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

fn run_once(rt: &tokio::runtime::Runtime, args: &Args, run: usize) -> Result<RunResult, String> {
    let dir = TempDir::new("fleet-bench").map_err(|e| e.to_string())?;
    let redis = RedisServer::start();
    let fake = rt.block_on(FakeApi::start());
    for i in 0..args.nodes {
        fake.create_object("pods", NS, pod(&format!("chat-node-{i}"), 60))?;
    }
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, fake.kubeconfig(NS)).map_err(|e| e.to_string())?;
    let mut replicas: Vec<OperatorProcess> = (0..args.replicas)
        .map(|i| {
            let mut env = vec![
                ("CHAT_OPERATOR_RING_DEBOUNCE".to_string(), args.debounce.clone()),
                ("RUST_LOG".to_string(), "warn".to_string()),
            ];
            env.extend(args.env.iter().cloned());
            OperatorProcess::spawn(OperatorCmd {
                bin: &args.operator_bin,
                kubeconfig: &kubeconfig,
                redis_url: &redis.url(),
                namespace: NS,
                identity: &format!("op-{i}"),
                env,
                log: dir.path().join(format!("op-{i}.log")),
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(i) = replicas.iter().position(|r| r.role().as_deref() == Some("leader")) {
            break i;
        }
        if Instant::now() > deadline {
            return Err(format!("no leader after 30 s; log: {}", replicas[0].log_text()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let first_epoch = loop {
        if let Some(e) = ring_epoch(&redis) {
            break e;
        }
        if Instant::now() > deadline {
            return Err("no ring after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let the controller start (it waits for the ring) before the burst.
    std::thread::sleep(Duration::from_millis(500));
    let n = args.channels;
    let lead = &replicas[leader];

    // Apply: every ChatChannel at once.
    fake.reset_peak_connections();
    let before = snapshot(&fake, &redis, lead);
    let first_create = Instant::now();
    for i in 0..n {
        let obj = json!({"apiVersion": "chat.shardchat.io/v1alpha1", "kind": "ChatChannel",
                         "metadata": {"name": format!("zone-{i}")}, "spec": {}});
        fake.create_object("chatchannels", NS, obj)?;
    }
    let last_create = Instant::now();
    let deadline = Instant::now() + args.timeout;
    let ready_at = loop {
        let (ready, _) = count_ready(&fake, None);
        if ready == n {
            break Instant::now();
        }
        if Instant::now() > deadline {
            return Err(format!("only {ready} of {n} Ready after {:?}", args.timeout));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    settle(lead, Duration::from_secs(2), Duration::from_secs(60));
    let after = snapshot(&fake, &redis, lead);
    let apply = phase(&before, &after, ready_at.duration_since(first_create).as_secs_f64(), n);
    eprintln!(
        "run {run}: all {n} Ready {:.3} s after the last create; apply phase: {apply:#?}",
        ready_at.duration_since(last_create).as_secs_f64()
    );
    let owners_before = ready_channels(&fake);

    // Ring change: one more node.
    fake.reset_peak_connections();
    let before = snapshot(&fake, &redis, lead);
    let pod_ready = Instant::now();
    fake.create_object("pods", NS, pod(&format!("chat-node-{}", args.nodes), 0))?;
    let deadline = Instant::now() + args.timeout;
    let (new_epoch, epoch_at) = loop {
        if let Some(e) = ring_epoch(&redis).filter(|e| *e > first_epoch) {
            break (e, Instant::now());
        }
        if Instant::now() > deadline {
            return Err("the ring did not change".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let all_at = loop {
        let (ready, at) = count_ready(&fake, Some(new_epoch));
        if ready == n && at == n {
            break Instant::now();
        }
        if Instant::now() > deadline {
            return Err(format!("only {at} of {n} at epoch {new_epoch} after {:?}", args.timeout));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    settle(lead, Duration::from_secs(2), Duration::from_secs(60));
    let after = snapshot(&fake, &redis, lead);
    let ring = phase(&before, &after, all_at.duration_since(epoch_at).as_secs_f64(), n);
    let owners_after = ready_channels(&fake);
    let moved = owners_before.iter().filter(|(k, (node, _))| owners_after[*k].0 != *node).count();

    let (rss, peak) = lead.memory();
    let standby_rss = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, r)| r.memory().0)
        .max()
        .unwrap_or(0);
    for r in &mut replicas {
        r.terminate(Duration::from_secs(10));
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let result = RunResult {
        ready_after_first_create: ready_at.duration_since(first_create).as_secs_f64(),
        ready_after_last_create: ready_at.duration_since(last_create).as_secs_f64(),
        apply,
        epoch_after_pod_ready: epoch_at.duration_since(pod_ready).as_secs_f64(),
        ring,
        moved_fraction: moved as f64 / n as f64,
        rss_mib: mib(rss),
        peak_rss_mib: mib(peak),
        standby_rss_mib: mib(standby_rss),
    };
    eprintln!("run {run}: {result:#?}");
    Ok(result)
}

/// The fake API server alone: `n` ChatChannels, one watcher reading every
/// event (as the operator does), and 64 clients applying status patches as
/// fast as they can for `secs`. Returns patches per second (a lower bound
/// of the server's capacity: the clients run in this process too).
fn api_capacity(rt: &tokio::runtime::Runtime, n: usize, secs: Duration) -> Result<f64, String> {
    use chat_operator::crd::ChatChannel;
    use futures_util::StreamExt;
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::watcher;
    use std::sync::atomic::{AtomicU64, Ordering};

    const CLIENTS: usize = 64;
    let fake = rt.block_on(FakeApi::start());
    for i in 0..n {
        let obj = json!({"apiVersion": "chat.shardchat.io/v1alpha1", "kind": "ChatChannel",
                         "metadata": {"name": format!("zone-{i}")}, "spec": {}});
        fake.create_object("chatchannels", NS, obj)?;
    }
    let done = AtomicU64::new(0);
    rt.block_on(async {
        let client = fake.client(NS);
        let api: Api<ChatChannel> = Api::namespaced(client.clone(), NS);
        let watch = tokio::spawn(watcher(api.clone(), watcher::Config::default()).for_each(|_| async {}));
        let stop = Instant::now() + secs;
        let workers = (0..CLIENTS).map(|w| {
            let api = api.clone();
            let done = &done;
            async move {
                let mut i = w;
                while Instant::now() < stop {
                    let patch = json!({"apiVersion": "chat.shardchat.io/v1alpha1", "kind": "ChatChannel",
                                       "status": {"ringEpoch": i, "node": "chat-node-1"}});
                    let name = format!("zone-{}", i % n);
                    if api
                        .patch_status(&name, &PatchParams::apply("bench").force(), &Patch::Apply(&patch))
                        .await
                        .is_ok()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += CLIENTS;
                }
            }
        });
        futures_util::future::join_all(workers).await;
        watch.abort();
    });
    Ok(done.load(Ordering::Relaxed) as f64 / secs.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

fn main() {
    let args = parse_args();
    if args.api_capacity.is_none() && !args.operator_bin.exists() {
        eprintln!(
            "{} not found: build it with `cargo build --release -p chat-operator --bin chat-operator \
             --example fleet_bench`, or pass --operator-bin",
            args.operator_bin.display()
        );
        std::process::exit(2);
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    if let Some(secs) = args.api_capacity {
        let mut rates = Vec::new();
        for run in 1..=args.runs {
            match api_capacity(&rt, args.channels, secs) {
                Ok(r) => {
                    eprintln!("run {run}: {r:.0} status patches/s");
                    rates.push(r);
                }
                Err(e) => {
                    eprintln!("run {run} failed: {e}");
                    std::process::exit(1);
                }
            }
        }
        let runs = rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
        println!(
            "fake API server alone, {} ChatChannels, 1 watcher, 64 clients applying status for {secs:?}: \
             median {:.0} status patches/s (runs: {runs})",
            args.channels,
            median(rates.clone())
        );
        return;
    }
    let mut results = Vec::new();
    for run in 1..=args.runs {
        match run_once(&rt, &args, run) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("run {run} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    type Getter = fn(&RunResult) -> f64;
    let rows: Vec<(&str, Getter)> = vec![
        ("apply: all Ready after the first create (s)", |r| r.ready_after_first_create),
        ("apply: all Ready after the last create (s)", |r| r.ready_after_last_create),
        ("apply: reconciles per second", |r| r.apply.reconciles_per_second),
        ("apply: reconciles per channel", |r| r.apply.reconciles_per_channel),
        ("apply: API requests per channel", |r| r.apply.api_per_channel),
        ("apply: Redis commands per channel", |r| r.apply.redis_per_channel),
        ("apply: leader CPU per channel (ms)", |r| r.apply.leader_cpu_ms_per_channel),
        ("apply: most API connections open at once", |r| r.apply.peak_connections as f64),
        ("apply: API connections opened", |r| r.apply.connections_opened as f64),
        ("apply: fake API handler wall time (share of the phase)", |r| r.apply.api_server_busy),
        ("apply: bench process CPU (cores)", |r| r.apply.bench_cpu_cores),
        ("apply: bench process CPU per API request (µs)", |r| r.apply.bench_cpu_us_per_request),
        ("ring 3→4: new epoch after the pod turned Ready (s)", |r| r.epoch_after_pod_ready),
        ("ring 3→4: all statuses at the new epoch after it (s)", |r| r.ring.seconds),
        ("ring 3→4: moved fraction", |r| r.moved_fraction),
        ("ring 3→4: reconciles per second", |r| r.ring.reconciles_per_second),
        ("ring 3→4: API requests per channel", |r| r.ring.api_per_channel),
        ("ring 3→4: Redis commands per channel", |r| r.ring.redis_per_channel),
        ("ring 3→4: leader CPU per channel (ms)", |r| r.ring.leader_cpu_ms_per_channel),
        ("ring 3→4: most API connections open at once", |r| r.ring.peak_connections as f64),
        ("ring 3→4: fake API handler wall time (share of the phase)", |r| r.ring.api_server_busy),
        ("ring 3→4: bench process CPU (cores)", |r| r.ring.bench_cpu_cores),
        ("leader RSS at the end (MiB)", |r| r.rss_mib),
        ("leader peak RSS (MiB)", |r| r.peak_rss_mib),
        ("standby RSS (MiB)", |r| r.standby_rss_mib),
    ];
    println!(
        "fleet_bench: {} channels, {} replicas, {} → {} nodes, debounce {}, {} runs",
        args.channels,
        args.replicas,
        args.nodes,
        args.nodes + 1,
        args.debounce,
        results.len()
    );
    println!("| figure | median | runs |");
    println!("| --- | ---: | --- |");
    for (name, get) in &rows {
        let vals: Vec<f64> = results.iter().map(get).collect();
        let runs = vals.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(", ");
        println!("| {name} | {:.3} | {runs} |", median(vals.clone()));
    }
    let by_kind = |f: fn(&RunResult) -> &BTreeMap<String, f64>| {
        let mut keys: Vec<String> = results.iter().flat_map(|r| f(r).keys().cloned()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|k| {
                let m = median(results.iter().map(|r| f(r).get(&k).copied().unwrap_or(0.0)).collect());
                format!("{k}: {m:.3}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("apply, API requests per channel by kind: {}", by_kind(|r| &r.apply.api_by_kind));
    println!("apply, Redis commands per channel: {}", by_kind(|r| &r.apply.redis_by_command));
    println!("ring, API requests per channel by kind: {}", by_kind(|r| &r.ring.api_by_kind));
    println!("ring, Redis commands per channel: {}", by_kind(|r| &r.ring.redis_by_command));
    if args.json {
        let out: Vec<Value> = results
            .iter()
            .map(|r| {
                json!({
                    "ready_after_first_create_s": r.ready_after_first_create,
                    "ready_after_last_create_s": r.ready_after_last_create,
                    "epoch_after_pod_ready_s": r.epoch_after_pod_ready,
                    "ring_all_at_new_epoch_s": r.ring.seconds,
                    "moved_fraction": r.moved_fraction,
                    "rss_mib": r.rss_mib,
                    "peak_rss_mib": r.peak_rss_mib,
                    "apply_api_by_kind": r.apply.api_by_kind,
                    "apply_redis_by_command": r.apply.redis_by_command,
                    "ring_api_by_kind": r.ring.api_by_kind,
                    "ring_redis_by_command": r.ring.redis_by_command,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    }
}
