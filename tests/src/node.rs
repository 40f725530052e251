//! Runs the workspace-built `chat-node` binary as a child process on a free
//! loopback port, for end-to-end tests.
//!
//! ```no_run
//! use shardchat_tests::node::ChatNode;
//! let node = ChatNode::start();                   // embedded mode, --dev-mode
//! let other = ChatNode::builder().args(["--idle-timeout", "2s"]).start();
//! println!("{} {}", node.http_url(), node.ws_url_as("alice"));
//! ```
//!
//! The binary is looked up next to the test executable: cargo puts test
//! executables in `<target>/<profile>/deps/` and binaries in
//! `<target>/<profile>/`, so this follows `CARGO_TARGET_DIR` without reading
//! it. `CHAT_NODE_BIN` overrides the lookup. `cargo test --workspace` builds
//! the binary; `cargo test -p shardchat-tests` alone does not (run
//! `cargo build -p chat-node` first).
//!
//! The node's stdout and stderr go to a log file in a fresh temporary
//! directory ([`ChatNode::log`], [`ChatNode::log_tail`]); when a test panics
//! while a node is alive, its log tail is printed to the test output. The
//! process gets SIGKILL on drop.
//!
//! All methods are blocking (they poll with short sleeps): call them from a
//! plain `#[test]`, or from async code that can afford to block its thread
//! for a moment (start-up takes well under a second).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// Environment variable that points at a `chat-node` binary to use instead of
/// the workspace-built one.
pub const BIN_ENV: &str = "CHAT_NODE_BIN";

const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 40;
/// How often `start` retries with a new port when another process grabbed
/// the one it picked between probing and the node binding it.
const PORT_ATTEMPTS: u32 = 3;

/// A running `chat-node` process.
pub struct ChatNode {
    child: Child,
    addr: SocketAddr,
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    dir: TempDir,
    /// One log file per start, oldest first.
    logs: Vec<PathBuf>,
}

/// Options for [`ChatNode`]; see [`ChatNode::builder`].
///
/// A node refuses to start without a JWT key unless `--dev-mode` is given,
/// so the builder adds `--dev-mode` unless the test configures
/// authentication itself (a `--jwt-*`/`--jwks-file` flag or `CHAT_JWT_*` /
/// `CHAT_JWKS_FILE` variable, or `--dev-mode` / `CHAT_DEV_MODE`) or asks for
/// [`without_dev_mode`](Self::without_dev_mode).
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
    port: Option<u16>,
    /// Wait only until the process serves `/healthz` (not `/readyz`).
    live_only: bool,
    dev_mode_default: bool,
}

impl Default for NodeBuilder {
    fn default() -> Self {
        Self {
            args: Vec::new(),
            envs: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            port: None,
            live_only: false,
            dev_mode_default: true,
        }
    }
}

/// Flags and variables that configure authentication (or its absence).
const AUTH_FLAGS: &[&str] = &["--jwt-secret", "--jwt-public-key", "--jwks-file", "--dev-mode"];
const AUTH_ENVS: &[&str] = &["CHAT_JWT_SECRET", "CHAT_JWT_PUBLIC_KEY", "CHAT_JWKS_FILE", "CHAT_DEV_MODE"];

impl NodeBuilder {
    /// One extra command-line argument (after `--listen 127.0.0.1:<port>`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Extra command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable for the node process.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// How long to wait for `GET /readyz` to answer 200 (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Listen on this port instead of a free one picked at random.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Do not add `--dev-mode` (e.g. to see a node refuse to start without a key).
    pub fn without_dev_mode(mut self) -> Self {
        self.dev_mode_default = false;
        self
    }

    /// The arguments the node gets after `--listen`.
    fn effective_args(&self) -> Vec<OsString> {
        let configures_auth = self.args.iter().any(|a| {
            let a = a.to_string_lossy();
            AUTH_FLAGS.iter().any(|f| a == *f || a.starts_with(&format!("{f}=")))
        }) || self.envs.iter().any(|(k, _)| AUTH_ENVS.iter().any(|e| k == e));
        let mut args = Vec::with_capacity(self.args.len() + 1);
        if self.dev_mode_default && !configures_auth {
            args.push(OsString::from("--dev-mode"));
        }
        args.extend(self.args.iter().cloned());
        args
    }

    /// Starts the node and waits until it is ready; panics with the node's
    /// log tail when it does not get there.
    /// `start` returns once the node serves HTTP (`/healthz`), ready or not:
    /// for a node whose dependencies are not up yet.
    pub fn live_only(mut self) -> Self {
        self.live_only = true;
        self
    }

    pub fn start(self) -> ChatNode {
        match self.try_start() {
            Ok(node) => node,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Like [`start`](Self::start), returning the error instead of panicking.
    pub fn try_start(self) -> anyhow::Result<ChatNode> {
        let bin = chat_node_bin()?;
        let args = self.effective_args();
        let mut last_err = None;
        let attempts = if self.port.is_some() { 1 } else { PORT_ATTEMPTS };
        for _ in 0..attempts {
            let port = match self.port {
                Some(p) => p,
                None => free_port()?,
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let dir = TempDir::new("chat-node")?;
            let log_path = dir.path().join("node.log");
            let child = spawn(&bin, addr, &args, &self.envs, &log_path)?;
            let mut node = ChatNode {
                child,
                addr,
                bin: bin.clone(),
                args: args.clone(),
                envs: self.envs.clone(),
                dir,
                logs: vec![log_path],
            };
            let path = if self.live_only { "/healthz" } else { "/readyz" };
            match node.wait_for(path, self.ready_timeout) {
                Ok(()) => return Ok(node),
                Err(e) => {
                    let port_taken = node.log().contains("in use");
                    node.kill();
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("chat-node did not start")))
    }
}

impl ChatNode {
    /// Starts a node in embedded mode with default flags (and `--dev-mode`).
    pub fn start() -> ChatNode {
        NodeBuilder::default().start()
    }

    /// Starts a node with extra command-line arguments.
    pub fn start_with<I, S>(args: I) -> ChatNode
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        NodeBuilder::default().args(args).start()
    }

    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The address the node listens on (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (no trailing slash).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:<port>/v1/ws` (add `?user=` or `?token=` yourself, or
    /// use [`ws_url_as`](Self::ws_url_as)).
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// The dev-mode WebSocket URL for `user` (`…/v1/ws?user=<user>`).
    pub fn ws_url_as(&self, user: &str) -> String {
        format!("{}?user={}", self.ws_url(), percent_encode(user))
    }

    /// The OS process id of the current node process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the node wrote to stdout and stderr so far (all starts).
    pub fn log(&self) -> String {
        let mut out = String::new();
        for (i, f) in self.logs.iter().enumerate() {
            if i > 0 {
                out.push_str(&format!("--- restart {i} ---\n"));
            }
            if let Ok(bytes) = fs::read(f) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        out
    }

    /// The last `lines` lines of [`log`](Self::log).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `Some(status)` when the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reap. Idempotent.
    /// Freezes the process (SIGSTOP): it holds its sockets but does nothing,
    /// like a node stuck in a long GC pause or on an overloaded host.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    pub fn kill(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// SIGTERM (graceful shutdown: the node closes clients with 1012).
    /// Does not wait; use [`wait_exit`](Self::wait_exit).
    pub fn terminate(&mut self) {
        if self.try_exit_status().is_some() {
            return;
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            // The process went away between the check and the signal, or
            // `kill` is missing; fall back to what std offers.
            let _ = self.child.kill();
        }
    }

    /// Kills the node if it still runs and starts it again on the same port
    /// with the same arguments, then waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        let log_path = self.dir.path().join(format!("node-{}.log", self.logs.len()));
        self.logs.push(log_path.clone());
        let deadline = Instant::now() + DEFAULT_READY_TIMEOUT;
        loop {
            match spawn(&self.bin, self.addr, &self.args, &self.envs, &log_path) {
                Ok(child) => self.child = child,
                Err(e) => panic!("{e:#}"),
            }
            match self.wait_ready(DEFAULT_READY_TIMEOUT) {
                Ok(()) => return,
                // The old socket may linger for a moment after a kill.
                Err(_)
                    if Instant::now() < deadline
                        && fs::read_to_string(&log_path).is_ok_and(|l| l.contains("in use")) =>
                {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{e:#}"),
            }
        }
    }

    /// A blocking `GET <path>`; returns the status code and the body.
    pub fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.addr, path, Duration::from_secs(5))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for("/readyz", timeout)
    }

    fn wait_for(&mut self, path: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                bail!(
                    "chat-node ({}) exited with {status} before it was ready on {}\n--- node log (last {LOG_TAIL_LINES} lines) ---\n{}",
                    self.bin.display(),
                    self.addr,
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            let last = match http_get(self.addr, path, Duration::from_secs(2)) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "chat-node on {} was not ready after {:?} (last GET {path}: {last})\n--- node log (last {LOG_TAIL_LINES} lines) ---\n{}",
                    self.addr,
                    timeout,
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ChatNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- chat-node {} log (last {LOG_TAIL_LINES} lines) ---\n{}\n--- end of chat-node log ---",
                self.addr,
                self.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

fn spawn(
    bin: &Path,
    addr: SocketAddr,
    args: &[OsString],
    envs: &[(OsString, OsString)],
    log_path: &Path,
) -> anyhow::Result<Child> {
    let log = File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log2 = log.try_clone().context("duplicating the log file handle")?;
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().with_context(|| format!("spawning {}", bin.display()))
}

/// The `chat-node` binary built by cargo for the current profile.
pub fn chat_node_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(BIN_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("{BIN_ENV}={} is not a file", p.display());
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let name = format!("chat-node{}", std::env::consts::EXE_SUFFIX);
    // <target>/<profile>/deps/<test-exe>: look in deps/.., then a few more
    // levels up (e.g. `<target>/<triple>/<profile>/deps`).
    for dir in exe.ancestors().skip(1).take(4) {
        let candidate = dir.join(&name);
        if candidate.is_file() {
            warn_if_stale(&candidate);
            return Ok(candidate);
        }
    }
    let profile_dir = exe.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    bail!(
        "the chat-node binary was not found in {} (next to this test's target directory); \
         run `cargo build -p chat-node` (with the same profile and CARGO_TARGET_DIR) or \
         `cargo test --workspace`, or point {BIN_ENV} at a binary",
        profile_dir.display()
    )
}

/// Warns (once per test binary) when the chat-node binary is older than its
/// sources, e.g. after `cargo test -p shardchat-tests` without rebuilding
/// chat-node: the page at `/` and the SDK it loads are compiled into the binary.
fn warn_if_stale(bin: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(built) = fs::metadata(bin).and_then(|m| m.modified()) else { return };
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let newer = ["chat-node/src", "chat-node/static", "common/src", "clients/typescript/dist"]
            .iter()
            .filter_map(|d| newest_file(&root.join(d)))
            .filter(|(t, _)| *t > built)
            .max();
        if let Some((_, path)) = newer {
            let _ = writeln!(
                io::stderr(),
                "WARNING: {} is older than {}; run `cargo build -p chat-node` (or `cargo test --workspace`) \
                 to test the current code",
                bin.display(),
                path.display()
            );
        }
    });
}

fn newest_file(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            newest_file(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok().map(|t| (t, path))
        };
        if let Some(f) = found
            && newest.as_ref().is_none_or(|n| f.0 > n.0)
        {
            newest = Some(f);
        }
    }
    newest
}

/// The cargo target directory this test executable was built into
/// (`<target>` in `<target>/<profile>/deps/<exe>`), e.g. for artifacts.
pub fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    if deps.file_name()? == "deps" { Some(deps.parent()?.parent()?.to_owned()) } else { None }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr().context("local_addr")?.port())
}

/// Minimal HTTP/1.1 GET with `Connection: close`; returns status and body.
/// Enough for health checks and small JSON bodies (chunked bodies are
/// de-chunked).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).or_else(|e| {
        // Some servers reset after a complete response; keep what we got.
        if raw.is_empty() || e.kind() != io::ErrorKind::ConnectionReset { Err(e) } else { Ok(0) }
    })?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let split =
        raw.windows(4).position(|w| w == b"\r\n\r\n").context("no end of HTTP headers in response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().context("empty HTTP response")?;
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad HTTP status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").context("truncated chunk size")?;
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_str.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_hex, 16).with_context(|| format!("bad chunk size {size_hex:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).context("truncated chunk")?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

/// Percent-encodes everything but unreserved URL characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<TempDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("shardchat-{prefix}-{}-{n}-{nanos:08x}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().expect("running kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let (code, body) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((code, body.as_str()), (200, "ok"));
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n";
        let (code, body) = parse_response(raw).unwrap();
        assert_eq!((code, body.as_str()), (503, "not ready"));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn dev_mode_is_added_unless_the_test_configures_auth() {
        let args = |b: NodeBuilder| {
            b.effective_args().iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>()
        };
        assert_eq!(
            args(NodeBuilder::default().arg("--idle-timeout").arg("2s")),
            ["--dev-mode", "--idle-timeout", "2s"]
        );
        assert_eq!(args(NodeBuilder::default().args(["--jwt-secret", "s"])), ["--jwt-secret", "s"]);
        assert_eq!(args(NodeBuilder::default().arg("--jwks-file=/k.json")), ["--jwks-file=/k.json"]);
        assert_eq!(args(NodeBuilder::default().env("CHAT_JWT_SECRET", "s")), Vec::<String>::new());
        assert_eq!(args(NodeBuilder::default().arg("--dev-mode")), ["--dev-mode"]);
        assert_eq!(args(NodeBuilder::default().without_dev_mode()), Vec::<String>::new());
    }

    #[test]
    fn percent_encodes_user_names() {
        assert_eq!(percent_encode("alice"), "alice");
        assert_eq!(percent_encode("a b&c=é"), "a%20b%26c%3D%C3%A9");
    }
}
