//! A small Chrome DevTools Protocol driver for Debian's Chromium, enough for
//! end-to-end tests of the browser page: launch headless Chromium, open a
//! page, navigate, evaluate JavaScript, click and type with real input
//! events, poll for a condition and take screenshots.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use shardchat_tests::cdp::{Browser, find_chromium};
//! let chrome = find_chromium().expect("no chromium");
//! let browser = Browser::launch(&chrome).await?;
//! let page = browser.new_page().await?;
//! page.navigate("data:text/html,<button id=b onclick='this.textContent=1'>0</button>").await?;
//! page.click("#b").await?;
//! page.wait_for("document.querySelector('#b').textContent === '1'", Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! It speaks CDP over the browser-level WebSocket (found through the
//! `DevToolsActivePort` file Chromium writes into its profile directory)
//! and talks to pages through flattened sessions
//! (`Target.attachToTarget` with `flatten: true`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot};
use tokio::time::{Instant, sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::node::TempDir;

/// Environment variable naming the Chromium/Chrome binary to use.
pub const CHROME_ENV: &str = "CHROME";
/// Binary names looked up on `PATH`, in order.
pub const CHROME_NAMES: [&str; 4] = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];

const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary to use: `$CHROME` (a path or a name on `PATH`), else
/// the first of [`CHROME_NAMES`] found on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os(CHROME_ENV).filter(|c| !c.is_empty()) {
        return resolve_exe(&c);
    }
    CHROME_NAMES.iter().find_map(|name| resolve_exe(&OsString::from(name)))
}

fn resolve_exe(name: &OsString) -> Option<PathBuf> {
    let p = PathBuf::from(name);
    if p.components().count() > 1 {
        return p.is_file().then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(&p)).find(|c| c.is_file())
}

/// For tests that need a browser: the Chromium binary, or `None` after
/// printing a loud SKIPPED line when none is installed. When `CI` is set a
/// missing browser is a failure instead (CI must never skip silently).
pub fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = find_chromium() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        let looked = match std::env::var_os(CHROME_ENV).filter(|c| !c.is_empty()) {
            Some(c) => format!("${CHROME_ENV}={} is not an executable file", c.to_string_lossy()),
            None => format!("none of {} is on PATH", CHROME_NAMES.join(", ")),
        };
        panic!(
            "{test}: no Chromium found ({looked}) and CI is set, so this test may not be skipped: \
             install it with `apt-get install -y chromium`"
        );
    }
    // Straight to the process's stderr so that the line shows even when
    // the test harness captures output of passing tests.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: chromium not installed — {test} did not run. \
         Install it with `apt-get install -y chromium` (or set ${CHROME_ENV}). ***\n"
    );
    None
}

/// Where tests put screenshots and other artifacts:
/// `$SHARDCHAT_TEST_ARTIFACTS`, else `<target>/test-artifacts`.
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("SHARDCHAT_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .or_else(|| crate::node::target_dir().map(|t| t.join("test-artifacts")))
        .unwrap_or_else(|| std::env::temp_dir().join("shardchat-test-artifacts"));
    let _ = fs::create_dir_all(&dir);
    dir
}

type WsSink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = HashMap<u64, oneshot::Sender<Result<Value, String>>>;

/// A CDP event: `method`, `params`, and the session it belongs to (none for
/// browser-level events).
#[derive(Debug, Clone)]
pub struct Event {
    pub method: String,
    pub params: Value,
    pub session_id: Option<String>,
}

/// One WebSocket connection to the browser, shared by its pages.
struct Connection {
    sink: tokio::sync::Mutex<WsSink>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    events: broadcast::Sender<Event>,
}

impl Connection {
    async fn open(url: &str) -> anyhow::Result<Arc<Connection>> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connecting to the DevTools WebSocket {url}"))?;
        let (sink, mut stream) = ws.split();
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let (events, _) = broadcast::channel(1024);
        let conn = Arc::new(Connection {
            sink: tokio::sync::Mutex::new(sink),
            pending: pending.clone(),
            next_id: AtomicU64::new(1),
            events: events.clone(),
        });
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
                    if let Some(tx) = waiter {
                        let res = match v.get("error") {
                            Some(e) => Err(e.to_string()),
                            None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                        };
                        let _ = tx.send(res);
                    }
                } else if let Some(method) = v.get("method").and_then(Value::as_str) {
                    let _ = events.send(Event {
                        method: method.to_owned(),
                        params: v.get("params").cloned().unwrap_or(Value::Null),
                        session_id: v.get("sessionId").and_then(Value::as_str).map(str::to_owned),
                    });
                }
            }
            // Connection gone: wake every waiter with an error.
            if let Ok(mut p) = pending.lock() {
                p.clear();
            }
        });
        Ok(conn)
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().map_err(|_| anyhow!("CDP state poisoned"))?.insert(id, tx);
        let sent = self.sink.lock().await.send(Message::Text(msg.to_string().into())).await;
        if let Err(e) = sent {
            self.forget(id);
            return Err(anyhow!(e).context(format!("sending CDP {method}")));
        }
        match timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => bail!("CDP {method} failed: {e}"),
            Ok(Err(_)) => bail!("CDP {method}: the browser connection closed"),
            Err(_) => {
                self.forget(id);
                bail!("CDP {method}: no answer within {CALL_TIMEOUT:?}")
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }
}

/// A headless Chromium process with a fresh profile; killed on drop.
pub struct Browser {
    child: Child,
    conn: Arc<Connection>,
    dir: TempDir,
}

impl Browser {
    /// Starts `chrome` headless and connects to it.
    pub async fn launch(chrome: &Path) -> anyhow::Result<Browser> {
        let dir = TempDir::new("chromium")?;
        let profile = dir.path().join("profile");
        fs::create_dir_all(&profile)?;
        let log_path = dir.path().join("chromium.log");
        let log = File::create(&log_path)?;
        let mut cmd = Command::new(chrome);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--mute-audio",
            "--hide-scrollbars",
            "--password-store=basic",
            "--window-size=1280,800",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
        // Own process group, so drop can take the renderer/GPU/zygote
        // children down with it.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().with_context(|| format!("spawning {}", chrome.display()))?;

        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let url = loop {
            if let Ok(s) = fs::read_to_string(&port_file) {
                let mut lines = s.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next())
                    && port.trim().parse::<u16>().is_ok()
                {
                    break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                }
            }
            let fail = |why: String| {
                let tail = tail_of(&log_path, 30);
                anyhow!("{} {why}\n--- chromium output ---\n{tail}", chrome.display())
            };
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(format!("exited with {status} during start-up")));
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                return Err(fail(format!("wrote no DevToolsActivePort within {LAUNCH_TIMEOUT:?}")));
            }
            sleep(Duration::from_millis(50)).await;
        };
        let conn = match Connection::open(&url).await {
            Ok(c) => c,
            Err(e) => {
                kill_group(&mut child);
                return Err(e);
            }
        };
        Ok(Browser { child, conn, dir })
    }

    /// `Browser.getVersion` (product, protocol version, user agent…).
    pub async fn version(&self) -> anyhow::Result<Value> {
        self.conn.call(None, "Browser.getVersion", json!({})).await
    }

    /// A new tab, attached and ready for commands, showing `about:blank`.
    pub async fn new_page(&self) -> anyhow::Result<Page> {
        let created = self.conn.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await?;
        let target_id = str_field(&created, "targetId")?;
        let attached = self
            .conn
            .call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }))
            .await?;
        let session_id = str_field(&attached, "sessionId")?;
        let mut page = Page {
            conn: self.conn.clone(),
            session_id,
            target_id,
            console: Arc::default(),
            console_task: None,
        };
        page.console_task = Some(page.collect_console());
        page.call("Page.enable", json!({})).await?;
        page.call("Runtime.enable", json!({})).await?;
        Ok(page)
    }

    /// The browser's own output (useful when it misbehaves).
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.dir.path().join("chromium.log"), lines)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

fn kill_group(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // The group id is the browser's pid (process_group(0) above).
    #[cfg(unix)]
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn str_field(v: &Value, field: &str) -> anyhow::Result<String> {
    v.get(field).and_then(Value::as_str).map(str::to_owned).with_context(|| format!("no `{field}` in {v}"))
}

/// A JavaScript string literal for `s` (JSON strings are valid JS).
pub fn js_str(s: &str) -> String {
    Value::from(s).to_string()
}

/// One tab, driven through its own CDP session.
pub struct Page {
    conn: Arc<Connection>,
    session_id: String,
    target_id: String,
    console: Arc<Mutex<Vec<String>>>,
    console_task: Option<tokio::task::JoinHandle<()>>,
}

impl Page {
    /// Sends a CDP command to this page's session.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.conn.call(Some(&self.session_id), method, params).await
    }

    pub fn target_id(&self) -> &str {
        &self.target_id
    }

    /// Events of this page's session.
    pub fn events(&self) -> impl futures_util::Stream<Item = Event> + use<> {
        let session = self.session_id.clone();
        let rx = self.conn.events.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |ev| std::future::ready(ev.session_id.as_deref() == Some(session.as_str())))
    }

    fn collect_console(&self) -> tokio::task::JoinHandle<()> {
        let mut events = Box::pin(self.events());
        let console = self.console.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let line = match ev.method.as_str() {
                    "Runtime.consoleAPICalled" => {
                        let kind = ev.params.get("type").and_then(Value::as_str).unwrap_or("log");
                        let args: Vec<String> = ev
                            .params
                            .get("args")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().map(remote_object_text).collect())
                            .unwrap_or_default();
                        format!("console.{kind}: {}", args.join(" "))
                    }
                    "Runtime.exceptionThrown" => {
                        format!("uncaught exception: {}", exception_text(&ev.params["exceptionDetails"]))
                    }
                    _ => continue,
                };
                if let Ok(mut c) = console.lock() {
                    c.push(line);
                }
            }
        })
    }

    /// Console messages and uncaught exceptions of the page so far.
    pub fn console(&self) -> Vec<String> {
        self.console.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Navigates and waits for the load event.
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        let mut events = Box::pin(self.events());
        let res = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(err) = res.get("errorText").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            bail!("navigating to {url}: {err}");
        }
        let loaded = async {
            while let Some(ev) = events.next().await {
                if ev.method == "Page.loadEventFired" {
                    return true;
                }
            }
            false
        };
        match timeout(CALL_TIMEOUT, loaded).await {
            Ok(true) => Ok(()),
            Ok(false) => bail!("navigating to {url}: the browser connection closed"),
            Err(_) => bail!("navigating to {url}: no load event within {CALL_TIMEOUT:?}"),
        }
    }

    /// Evaluates `expr` (awaiting a returned promise) and returns its value
    /// as JSON (`null` for `undefined` and non-serialisable values). A thrown
    /// exception is an error.
    pub async fn eval(&self, expr: &str) -> anyhow::Result<Value> {
        let res = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expr,
                    "awaitPromise": true,
                    "returnByValue": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(details) = res.get("exceptionDetails") {
            bail!("JavaScript error in `{}`: {}", short(expr), exception_text(details));
        }
        Ok(res.get("result").and_then(|r| r.get("value")).cloned().unwrap_or(Value::Null))
    }

    /// Polls `expr` every 50 ms until it is truthy and returns its value;
    /// on timeout the error names the expression and its last value.
    pub async fn wait_for(&self, expr: &str, within: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let last = self.eval(expr).await;
            match &last {
                Ok(v) if truthy(v) => return Ok(v.clone()),
                _ if Instant::now() >= deadline => {
                    let last = match last {
                        Ok(v) => v.to_string(),
                        Err(e) => format!("{e:#}"),
                    };
                    bail!("timed out after {within:?} waiting for `{}` (last value: {last})", short(expr));
                }
                _ => sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Clicks the centre of the first element matching `selector` with real
    /// mouse events (so it fails when something covers the element).
    pub async fn click(&self, selector: &str) -> anyhow::Result<()> {
        let rect = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return null;
                   e.scrollIntoView({{block: 'center', inline: 'center'}});
                   const r = e.getBoundingClientRect();
                   return {{x: r.left + r.width / 2, y: r.top + r.height / 2, w: r.width, h: r.height,
                            disabled: !!e.disabled}}; }})()",
                sel = js_str(selector)
            ))
            .await?;
        if rect.is_null() {
            bail!("click: no element matches {selector:?}");
        }
        let (x, y) = (rect["x"].as_f64().unwrap_or(0.0), rect["y"].as_f64().unwrap_or(0.0));
        if rect["w"].as_f64().unwrap_or(0.0) <= 0.0 || rect["h"].as_f64().unwrap_or(0.0) <= 0.0 {
            bail!("click: {selector:?} is not visible ({rect})");
        }
        if rect["disabled"].as_bool().unwrap_or(false) {
            bail!("click: {selector:?} is disabled");
        }
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "buttons": 1, "clickCount": 1 }),
            )
            .await?;
        }
        Ok(())
    }

    /// Focuses `selector`, clears it and types `text` (as an IME insert,
    /// which fires the same input events as typing).
    pub async fn fill(&self, selector: &str, text: &str) -> anyhow::Result<()> {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return false;
                   e.focus(); e.value = ''; e.dispatchEvent(new Event('input', {{bubbles: true}}));
                   return document.activeElement === e; }})()",
                sel = js_str(selector)
            ))
            .await?;
        if found != Value::Bool(true) {
            bail!("fill: no focusable element matches {selector:?}");
        }
        if !text.is_empty() {
            self.call("Input.insertText", json!({ "text": text })).await?;
        }
        Ok(())
    }

    /// Presses and releases a key on the focused element: `"Enter"`,
    /// `"Tab"`, `"Escape"`, `"Backspace"`.
    pub async fn press(&self, key: &str) -> anyhow::Result<()> {
        let (code, vk, text) = match key {
            "Enter" => ("Enter", 13, "\r"),
            "Tab" => ("Tab", 9, ""),
            "Escape" => ("Escape", 27, ""),
            "Backspace" => ("Backspace", 8, ""),
            other => bail!("press: unsupported key {other:?}"),
        };
        let mut down = json!({ "type": "keyDown", "key": key, "code": code, "windowsVirtualKeyCode": vk });
        if !text.is_empty() {
            down["text"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down).await?;
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk }),
        )
        .await?;
        Ok(())
    }

    /// Emulates a viewport (`mobile` also turns on touch-style metrics).
    pub async fn set_viewport(
        &self,
        width: u32,
        height: u32,
        scale: f64,
        mobile: bool,
    ) -> anyhow::Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile }),
        )
        .await?;
        Ok(())
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let res = self.call("Page.captureScreenshot", json!({ "format": "png" })).await?;
        let data = res.get("data").and_then(Value::as_str).context("no screenshot data")?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(data).context("decoding the screenshot")?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        if let Some(h) = self.console_task.take() {
            h.abort();
        }
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn remote_object_text(o: &Value) -> String {
    match o.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => o.get("description").and_then(Value::as_str).unwrap_or("?").to_owned(),
    }
}

fn exception_text(details: &Value) -> String {
    details
        .get("exception")
        .and_then(|e| e.get("description"))
        .and_then(Value::as_str)
        .or_else(|| details.get("text").and_then(Value::as_str))
        .unwrap_or("unknown error")
        .to_owned()
}

fn short(expr: &str) -> String {
    let one_line = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 160 {
        one_line.chars().take(157).collect::<String>() + "..."
    } else {
        one_line
    }
}
