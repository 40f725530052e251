//! The CI fault soak: `chat-bench/scripts/soak.sh` for 75 s against three
//! real nodes over a real Redis, with the debug binaries. The script kills
//! and restarts a node, kills and restarts Redis, and changes the ring
//! 3 -> 4 -> 3 under traffic; chat-bench's own accounting must then find
//! every accepted message delivered to every member exactly once, in order.
//! The 10-minute run and its figures are in docs/benchmarks.md.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use shardchat_tests::node::{TempDir, target_dir};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

#[test]
fn soak_under_node_kills_redis_restarts_and_ring_changes_loses_nothing() {
    let bins = target_dir().expect("target directory").join("debug");
    for bin in ["chat-node", "chat-bench"] {
        assert!(
            bins.join(bin).is_file(),
            "{bin} is not built in {} (run `cargo test --workspace`)",
            bins.display()
        );
    }
    let dir = TempDir::new("soak").expect("temp dir");
    let report = dir.path().join("report.json");
    let out = Command::new("bash")
        .arg(repo_root().join("chat-bench/scripts/soak.sh"))
        .arg("75s")
        .env("BIN_DIR", &bins)
        .env("SOAK_REPORT", &report)
        .env("SOAK_PERIOD", "10")
        .env("SOAK_LOAD", "-n 150 -c 15 -p 2 -r 100")
        .output()
        .expect("run soak.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    let summary: Value = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("no chat-bench report; soak output:\n{stdout}\n{stderr}"));
    assert!(out.status.success(), "soak failed:\n{stdout}\n{stderr}");
    let c = &summary["correctness"];
    for k in ["lost", "duplicated", "out_of_order", "protocol_violations"] {
        assert_eq!(c[k], 0, "{k}: {summary}");
    }
    assert_eq!(summary["sent"]["unanswered"], 0, "{summary}");
    assert!(summary["sent"]["accepted"].as_u64().unwrap_or(0) > 5_000, "traffic flowed: {summary}");
    assert!(
        summary["recovery"]["reconnects"].as_u64().unwrap_or(0) > 0,
        "the killed node's clients reconnected: {summary}"
    );
    let faults: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("faults injected: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(faults >= 4, "every kind of fault ran (kill, redis, ring up, ring down):\n{stdout}\n{stderr}");
}
