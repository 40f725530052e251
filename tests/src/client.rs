//! An async WebSocket client for protocol tests (real sockets, JSON frames)
//! and a minimal HTTP/1.1 client for the REST API.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A minimal HTTP/1.1 client over a raw socket, enough for the REST API.
pub struct Http {
    pub addr: SocketAddr,
}

pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Http {
    pub async fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], None).await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> HttpResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(TIMEOUT, s.read_to_end(&mut raw))
            .await
            .expect("response in time")
            .expect("read");
        let text = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
        let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
        HttpResponse { status, body: if chunked { dechunk(body) } else { body.to_string() } }
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client. Frames that arrive while waiting for something
/// else are kept in order in `pending`.
pub struct Client {
    pub ws: Ws,
    pending: std::collections::VecDeque<Value>,
    next_id: u64,
}

/// How a connection ended, seen from the client.
#[derive(Debug, PartialEq)]
pub enum Closed {
    Code(u16),
    NoCloseFrame,
}

impl Client {
    /// Wraps a socket connected some other way (custom headers, TLS, …).
    pub fn from_ws(ws: Ws) -> Client {
        Client { ws, pending: Default::default(), next_id: 1 }
    }

    pub async fn connect(url: &str) -> Client {
        let (ws, _) =
            tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client { ws, pending: Default::default(), next_id: 1 }
    }

    /// Connects with a tiny TCP receive buffer, so that a client which stops
    /// reading makes the server's queue fill up quickly.
    pub async fn connect_small_buffer(addr: SocketAddr, url: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client { ws, pending: Default::default(), next_id: 1 }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next JSON frame from the server (pending first).
    pub async fn recv(&mut self) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        self.recv_socket().await
    }

    async fn recv_socket(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("a frame within the timeout")
                .expect("connection open")
                .expect("valid frame");
            match m {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Sends `req` with a fresh id and returns its reply; other frames stay pending.
    pub async fn request(&mut self, mut req: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        self.send_json(req).await;
        loop {
            let v = self.recv_socket().await;
            if v["op"] == "reply" && v["id"] == json!(id) {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    pub async fn ok(&mut self, req: Value) -> Value {
        let reply = self.request(req.clone()).await;
        assert_eq!(reply["ok"], json!(true), "request {req} failed: {reply}");
        reply
    }

    pub async fn join(&mut self, channel: &str) -> Value {
        self.ok(json!({"op":"join","channel":channel})).await
    }

    pub async fn publish(&mut self, channel: &str, text: &str) -> String {
        let r = self.ok(json!({"op":"publish","channel":channel,"text":text})).await;
        r["message_id"].as_str().expect("message_id").to_string()
    }

    /// Error code of a request that must fail.
    pub async fn error_code(&mut self, req: Value) -> String {
        let reply = self.request(req.clone()).await;
        assert_eq!(reply["ok"], json!(false), "request {req} should fail: {reply}");
        reply["error"]["code"].as_str().expect("error code").to_string()
    }

    /// Next frame with the given `op`, keeping others pending.
    pub async fn next_op(&mut self, op: &str) -> Value {
        if let Some(pos) = self.pending.iter().position(|v| v["op"] == op) {
            return self.pending.remove(pos).expect("position is valid");
        }
        loop {
            let v = self.recv_socket().await;
            if v["op"] == op {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// The next frame with `op`, or `None` when the connection ends or
    /// nothing arrives within `wait`.
    pub async fn try_next_op(&mut self, op: &str, wait: Duration) -> Option<Value> {
        if let Some(pos) = self.pending.iter().position(|v| v["op"] == op) {
            return self.pending.remove(pos);
        }
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).ok()?;
                    if v["op"] == op {
                        return Some(v);
                    }
                    self.pending.push_back(v);
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    /// The next `n` message pushes (skipping presence), in arrival order.
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_op("message").await);
        }
        out
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match tokio::time::timeout(TIMEOUT, self.ws.next()).await.expect("close within the timeout") {
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return Closed::Code(code.into()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Closed::NoCloseFrame,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Asserts no message push is pending or arrives within `wait`
    /// (presence and pings are ignored).
    pub async fn assert_silent(&mut self, wait: Duration) {
        self.pending.retain(|v| v["op"] == "message");
        assert!(self.pending.is_empty(), "unexpected pending frames: {:?}", self.pending);
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(t) = &m {
                let v: Value = serde_json::from_str(t).expect("JSON");
                assert_ne!(v["op"], "message", "unexpected message {v}");
            }
        }
    }
}

/// Parses a message id into its numeric parts for ordering checks.
pub fn id_of(v: &Value) -> (u64, u64) {
    let s = v["id"].as_str().or_else(|| v.as_str()).expect("message id string");
    let (a, b) = s.split_once('-').expect("ms-seq");
    (a.parse().expect("ms"), b.parse().expect("seq"))
}
