//! `chat-bench` against real nodes, embedded and a 3-node cluster, for
//! channels and for direct messages (`--dm`): a small run must pass its own
//! correctness checks (nothing lost, duplicated or reordered). Figures are
//! not asserted here; docs/benchmarks.md has them.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use shardchat_tests::node::ChatNode;
use shardchat_tests::redis::RedisServer;

const NODE_LIMITS: [&str; 10] = [
    "--publish-rate",
    "100000",
    "--publish-burst",
    "100000",
    "--frame-rate",
    "100000",
    "--connect-rate",
    "0",
    "--dm-recipient-rate",
    "100000",
];

/// 30 connections in 3 channels, 2 publishers each, 150 publishes/s for 2 s.
const CHANNELS: [&str; 6] = ["-n", "30", "-c", "3", "-p", "2"];
/// 15 conversations (30 connections), both sides writing, 150 direct messages/s.
const CONVERSATIONS: [&str; 7] = ["--dm", "-n", "30", "-c", "15", "-p", "2"];

fn bench_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let name = format!("chat-bench{}", std::env::consts::EXE_SUFFIX);
    exe.ancestors().skip(1).take(4).map(|d| d.join(&name)).find(|p| p.is_file()).expect(
        "chat-bench binary next to the tests (run `cargo test --workspace` or `cargo build -p chat-bench`)",
    )
}

fn run_bench(urls: &[String], shape: &[&str]) -> Value {
    let out = Command::new(bench_bin())
        .args(["--json", "-q", "-r", "150", "-d", "2s", "--drain", "2s"])
        .args(shape)
        .arg("--url")
        .arg(urls.join(","))
        .output()
        .expect("run chat-bench");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("chat-bench printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(out.status.success(), "chat-bench failed: {report}");
    report
}

fn assert_clean(report: &Value, what: &str) {
    assert_eq!(report["passed"], true, "{what}: {report}");
    for k in ["lost", "duplicated", "out_of_order"] {
        assert_eq!(report["correctness"][k], 0, "{what}: {k}");
    }
    assert_eq!(report["delivered"]["count"], report["delivered"]["expected"], "{what}");
    assert!(report["sent"]["accepted"].as_u64().unwrap_or(0) >= 290, "{what}: most publishes accepted");
}

#[test]
fn bench_passes_against_an_embedded_node() {
    let node = ChatNode::start_with(NODE_LIMITS);
    let urls = [format!("ws://{}", node.addr())];
    assert_clean(&run_bench(&urls, &CHANNELS), "embedded");
    assert_clean(&run_bench(&urls, &CONVERSATIONS), "embedded, direct messages");
}

#[test]
fn bench_passes_against_a_three_node_cluster() {
    let redis = RedisServer::start();
    let nodes: Vec<ChatNode> = (0..3)
        .map(|i| {
            ChatNode::builder()
                .args(["--redis-url", &redis.url(), "--node-id", &format!("n{i}"), "--peers", "n0,n1,n2"])
                .args(NODE_LIMITS)
                .start()
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| format!("ws://{}", n.addr())).collect();
    assert_clean(&run_bench(&urls, &CHANNELS), "cluster");
    let dm = run_bench(&urls, &CONVERSATIONS);
    assert_clean(&dm, "cluster, direct messages");
    assert_eq!(
        dm["delivered"]["expected"],
        2 * dm["sent"]["accepted"].as_u64().unwrap_or(0),
        "both sides get each"
    );
}
