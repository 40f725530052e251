//! The `chat-operator` binary as a child process pointed at the fake API
//! server (through a kubeconfig file) and a Redis: for tests that must kill
//! a replica outright (SIGKILL keeps its Lease held) and for the fleet
//! benchmark (its own memory and CPU, apart from the API server's).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardchat_tests::node::{free_port, http_get};

/// How to start one replica.
pub struct OperatorCmd<'a> {
    pub bin: &'a Path,
    pub kubeconfig: &'a Path,
    pub redis_url: &'a str,
    pub namespace: &'a str,
    pub identity: &'a str,
    /// Extra environment (`CHAT_OPERATOR_*` flags, `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
}

pub struct OperatorProcess {
    child: Child,
    pub identity: String,
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

impl OperatorProcess {
    pub fn spawn(cmd: OperatorCmd<'_>) -> OperatorProcess {
        let port = free_port().expect("free port");
        let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(&cmd.log).expect("operator log file");
        let child = Command::new(cmd.bin)
            .env("KUBECONFIG", cmd.kubeconfig)
            .env("CHAT_OPERATOR_REDIS_URL", cmd.redis_url)
            .env("POD_NAMESPACE", cmd.namespace)
            .env("POD_NAME", cmd.identity)
            .env("CHAT_OPERATOR_METRICS_LISTEN", metrics.to_string())
            .envs(cmd.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", cmd.bin.display()));
        OperatorProcess { child, identity: cmd.identity.to_string(), metrics, log: cmd.log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/readyz` body: `leader`, `standby` or `starting` (None while the
    /// endpoint does not answer).
    pub fn role(&self) -> Option<String> {
        http_get(self.metrics, "/readyz", Duration::from_secs(2))
            .ok()
            .map(|(_, body)| body.trim().to_string())
    }

    /// `/metrics` text (empty when it does not answer).
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics", Duration::from_secs(5)).map(|(_, b)| b).unwrap_or_default()
    }

    /// One unlabelled sample of `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_in(&self.metrics_text(), name)
    }

    /// Blocks until this replica says it leads.
    pub fn wait_leader(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.role().as_deref() == Some("leader") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Resident set size and its peak, in bytes (Linux `/proc`).
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    /// CPU time used so far (user + system).
    pub fn cpu(&self) -> Duration {
        cpu_of(self.pid())
    }

    /// SIGKILL: the process gets no chance to release its Lease.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (up to `timeout`, then SIGKILL).
    pub fn terminate(&mut self, timeout: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One unlabelled sample (`name value`) of Prometheus text.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// CPU time (user + system) of a process, from `/proc/<pid>/stat`.
pub fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let total = ticks(11) + ticks(12);
    Duration::from_millis(total * 10) // USER_HZ is 100 on Linux
}
