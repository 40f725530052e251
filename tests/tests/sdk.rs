//! The TypeScript SDK (`clients/typescript`) against real chat-node
//! processes: runs its `npm test` (the dist/ drift check, then Node's test
//! runner with an embedded node, a token-protected node, a two-node
//! cluster over a redis-server it starts, and the protocol conformance
//! vectors of docs/protocol/conformance over raw sockets and through the SDK)
//! with the chat-node binary cargo
//! built for this profile.
//!
//! Needs Node.js and npm (`apt-get install -y nodejs npm`). Without them the
//! test prints a SKIPPED line and passes, unless `CI` is set, where it
//! fails. `node_modules` is installed with `npm ci` when missing.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shardchat_tests::node::chat_node_bin;

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/typescript")
}

/// `name` on the PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Node.js and npm, or `None` after saying loudly why the test is skipped
/// (panics under CI instead).
fn node_and_npm_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    let node = find_on_path("node");
    let npm = find_on_path("npm");
    if let (Some(node), Some(npm)) = (node.clone(), npm.clone()) {
        return Some((node, npm));
    }
    let missing: Vec<&str> =
        [("node", node.is_none()), ("npm", npm.is_none())].iter().filter(|m| m.1).map(|m| m.0).collect();
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: {} not on PATH and CI is set, so this test may not be skipped: \
             install them with `apt-get install -y nodejs npm` (or run .ci/run)",
            missing.join(" and ")
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {} not installed — {test} did not run. \
         Install Node.js and npm (`apt-get install -y nodejs npm`). ***\n",
        missing.join(" and ")
    );
    None
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| panic!("running {shown}: {e}"))
}

fn tail(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let start = s.len().saturating_sub(max);
    let start = (start..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
    s[start..].to_owned()
}

#[test]
fn typescript_sdk_against_real_nodes() {
    let Some((_node, npm)) = node_and_npm_or_skip("typescript_sdk_against_real_nodes") else { return };
    let dir = sdk_dir();
    let bin = chat_node_bin().unwrap_or_else(|e| panic!("{e:#}"));

    if !dir.join("node_modules").is_dir() {
        let out = run(Command::new(&npm).args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir));
        assert!(
            out.status.success(),
            "`npm ci` in clients/typescript failed:\n{}\n{}",
            tail(&out.stdout, 4000),
            tail(&out.stderr, 4000)
        );
    }

    let mut cmd = Command::new(&npm);
    cmd.args(["test"]).current_dir(&dir).env("CHAT_NODE_BIN", &bin);
    if let Some(redis) = find_on_path("redis-server") {
        cmd.env("REDIS_SERVER", redis);
    }
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`npm test` in clients/typescript failed ({}):\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
        out.status,
        tail(&out.stdout, 12_000),
        tail(&out.stderr, 6000)
    );
    // The runner's summary (TAP `# pass N`, or the spec reporter's `ℹ pass N`):
    // something must actually have run and passed.
    let count = |key: &str| -> Option<u64> {
        stdout.lines().find_map(|l| {
            let l = l.trim_start_matches(['#', 'ℹ', ' ']);
            l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()
        })
    };
    let (pass, fail) = (count("pass"), count("fail"));
    assert!(
        pass.is_some_and(|p| p >= 10) && fail == Some(0),
        "unexpected test summary (pass {pass:?}, fail {fail:?}):\n{}",
        tail(&out.stdout, 6000)
    );
    assert!(
        stdout.contains("check-dist: dist/ matches src/"),
        "the dist/ drift check did not run:\n{stdout}"
    );
    println!("SDK tests: {} passed ({})", pass.unwrap_or(0), OsStr::new(&bin).to_string_lossy());
}

/// The node serves the committed browser build byte for byte, and the page
/// loads it from there.
#[test]
fn the_node_serves_the_sdk_browser_build() {
    let node = shardchat_tests::node::ChatNode::start();
    let (status, body) = node.http_get("/sdk/shardchat.js").expect("GET /sdk/shardchat.js");
    assert_eq!(status, 200);
    let committed =
        std::fs::read_to_string(sdk_dir().join("dist/shardchat.js")).expect("reading dist/shardchat.js");
    assert!(
        body == committed,
        "/sdk/shardchat.js is not clients/typescript/dist/shardchat.js (rebuild chat-node)"
    );
    assert!(body.contains("export class ShardchatClient"), "not the SDK: {}", &body[..body.len().min(200)]);
    let (status, page) = node.http_get("/").expect("GET /");
    assert_eq!(status, 200);
    assert!(page.contains("from \"./sdk/shardchat.js\""), "the page does not import the SDK");
}
