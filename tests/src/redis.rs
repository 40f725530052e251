//! A private `redis-server` for one test: a free loopback port, no
//! persistence, and control over its life (stop, kill, restart empty).
//! [`RedisServer::start_tls`] serves TLS only, with a certificate from a
//! throw-away CA the test makes with the `openssl` command.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::node::{TempDir, free_port};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// Extra `redis-server` flags, kept across restarts.
    extra: Vec<String>,
    tls: bool,
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (apt-get install -y openssl)")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 and localhost
/// signed by it (`server.pem`, `server.key`), P-256, valid for a day.
fn make_certificates(dir: &std::path::Path) -> anyhow::Result<()> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=Shardchat test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    )?;
    openssl(
        dir,
        &[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]]
            .concat(),
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ],
    )
}

impl RedisServer {
    /// Starts `redis-server` (which must be on the PATH) and waits until it answers.
    pub fn start() -> RedisServer {
        Self::try_start()
            .unwrap_or_else(|e| panic!("cannot start redis-server (apt-get install -y redis-server): {e:#}"))
    }

    pub fn try_start() -> anyhow::Result<RedisServer> {
        let mut server = Self::reserve()?;
        server.spawn()?;
        Ok(server)
    }

    /// Starts it with extra `redis-server` flags (e.g. `["--maxmemory", "20mb"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server =
            Self::reserve().unwrap_or_else(|e| panic!("reserving a port for redis-server: {e:#}"));
        server.extra = extra.iter().map(|s| s.to_string()).collect();
        server
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (apt-get install -y redis-server): {e:#}"));
        server
    }

    /// A server that is not running yet, with its port chosen: for a node
    /// that must start before its Redis. [`start_now`](Self::start_now) starts it.
    pub fn reserve() -> anyhow::Result<RedisServer> {
        let dir = TempDir::new("shardchat-redis")?;
        let port = free_port()?;
        Ok(RedisServer { child: None, port, dir, extra: Vec::new(), tls: false })
    }

    /// Starts a reserved (or killed) server on its port.
    pub fn start_now(&mut self) {
        self.spawn().unwrap_or_else(|e| panic!("starting redis-server: {e:#}"));
    }

    /// Starts `redis-server` serving TLS only (no plaintext port), with a
    /// certificate for 127.0.0.1 from a fresh CA ([`ca_file`](Self::ca_file)).
    pub fn start_tls() -> RedisServer {
        let start = || -> anyhow::Result<RedisServer> {
            let dir = TempDir::new("shardchat-redis-tls")?;
            make_certificates(dir.path())?;
            let port = free_port()?;
            let mut server = RedisServer { child: None, port, dir, extra: Vec::new(), tls: true };
            server.spawn()?;
            Ok(server)
        };
        start().unwrap_or_else(|e| panic!("cannot start redis-server with TLS: {e:#}"))
    }

    /// The CA that signed a TLS server's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.log_path())?;
        let mut cmd = Command::new("redis-server");
        if self.tls {
            let file = |name: &str| self.dir.path().join(name).display().to_string();
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-cert-file", &file("server.pem"), "--tls-key-file", &file("server.key")])
                .args(["--tls-ca-cert-file", &file("ca.pem"), "--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning redis-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).map(|r| r.trim() == "PONG").unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not answer on port {}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://…` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The arguments that make `redis-cli` reach this server.
    fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_string(), self.port.to_string(), "--no-auth-warning".to_string()];
        if self.tls {
            args.extend(["--tls".to_string(), "--cacert".to_string(), self.ca_file().display().to_string()]);
        }
        args
    }

    /// Runs one command with `redis-cli` and returns its raw output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("redis-cli")
            .args(self.cli_args())
            .args(args)
            .output()
            .context("running redis-cli")?;
        if !out.status.success() {
            bail!("redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Runs one command with `redis-cli --raw` and returns its output without
    /// the trailing newline; panics (with the error) when redis-cli fails.
    pub fn raw(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(self.cli_args())
            .arg("--raw")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running redis-cli {args:?}: {e}"));
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string()
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT); it then serves what queued up.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill {sig} redis-server failed");
    }

    /// Kills the server at once (SIGKILL); everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Wait until the port no longer accepts connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("restarting redis-server: {e:#}"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
