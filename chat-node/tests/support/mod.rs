//! Test support: a real chat-node served on a loopback port inside the test
//! process, and a real WebSocket client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_node::{Config, Node};
use clap::Parser;
use tokio::sync::oneshot;

#[allow(unused_imports)]
pub use shardchat_tests::client::{Client, Closed, Http, TIMEOUT, id_of};

pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    /// Starts a node with `chat-node` flags (e.g. `["--idle-timeout", "1s"]`).
    /// Without a JWT key among them the node runs with `--dev-mode`.
    pub async fn start(args: &[&str]) -> TestNode {
        let mut argv = vec!["chat-node", "--listen", "127.0.0.1:0", "--node-id", "test-node"];
        let configures_auth = args
            .iter()
            .any(|a| ["--jwt-secret", "--jwt-public-key", "--jwks-file", "--dev-mode"].contains(a));
        if !configures_auth {
            argv.push("--dev-mode");
        }
        argv.extend_from_slice(args);
        let config = Config::try_parse_from(argv).expect("valid test flags");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let node = Node::start(config).await.expect("node starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(chat_node::server::serve(node.clone(), listener, async move {
            let _ = stopped.await;
        }));
        TestNode { addr, node, stop: Some(stop), server: Some(server) }
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/v1/ws?user={user}", self.addr)
    }

    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(user)).await
    }

    /// Triggers graceful shutdown (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Triggers graceful shutdown (as SIGTERM does) and waits for it to finish.
    pub async fn shutdown(&mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(TIMEOUT, server)
                .await
                .expect("shutdown within timeout")
                .expect("server task");
        }
    }

    /// Polls `/metrics` until it contains `line` (metrics of a closing
    /// connection are recorded once its close handshake is over).
    pub async fn wait_for_metric(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let body = self.http().get("/metrics").await.body;
            if body.contains(line) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "metric {line:?} never appeared:\n{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn http(&self) -> Http {
        Http { addr: self.addr }
    }
}
