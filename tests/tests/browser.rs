//! The browser page served at `/`, driven in headless Chromium, chatting
//! with a plain WebSocket client through a real `chat-node`.
//!
//! Needs Chromium (`apt-get install -y chromium`, or `$CHROME`). Without it
//! the tests print a SKIPPED line and pass, unless `CI` is set, where they
//! fail. On failure a screenshot of the page is saved under
//! `<target>/test-artifacts/` and the page's console and the node's log are
//! printed.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shardchat_tests::cdp::{Browser, Page, artifacts_dir, chromium_or_skip, js_str};
use shardchat_tests::node::ChatNode;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(10);
const CHANNEL: &str = "town-137";
/// Messages published while the page connects (below the default burst limit).
const BURST: usize = 15;

/// A protocol client that keeps frames it was not waiting for.
struct Client {
    user: String,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    backlog: VecDeque<Value>,
}

impl Client {
    async fn connect(node: &ChatNode, user: &str) -> anyhow::Result<Client> {
        Self::connect_url(&node.ws_url_as(user), user).await
    }

    async fn connect_url(url: &str, user: &str) -> anyhow::Result<Client> {
        let (ws, _) =
            tokio_tungstenite::connect_async(url).await.with_context(|| format!("connecting to {url}"))?;
        Ok(Client { user: user.to_owned(), ws, next_id: 1, backlog: VecDeque::new() })
    }

    async fn recv(&mut self, deadline: Instant) -> anyhow::Result<Value> {
        if let Some(v) = self.backlog.pop_front() {
            return Ok(v);
        }
        loop {
            let msg = match timeout(deadline.saturating_duration_since(Instant::now()), self.ws.next()).await
            {
                Err(_) => bail!("{}: no frame in time", self.user),
                Ok(None) => bail!("{}: connection closed", self.user),
                Ok(Some(m)) => m.with_context(|| format!("{}: reading a frame", self.user))?,
            };
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str())
                        .with_context(|| format!("{}: frame is not JSON: {t}", self.user));
                }
                Message::Close(c) => bail!("{}: server closed the connection: {c:?}", self.user),
                _ => continue,
            }
        }
    }

    /// The first frame matching `pred`, within `WAIT`; others frames are
    /// dropped (and listed in the error on timeout).
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let deadline = Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            match self.recv(deadline).await {
                Ok(v) if pred(&v) => return Ok(v),
                Ok(v) => skipped.push(v.to_string()),
                Err(e) => bail!("{e:#} while waiting for {what}; frames seen: [{}]", skipped.join(", ")),
            }
        }
    }

    /// Sends a request with a fresh `id` and returns its successful reply;
    /// pushes that arrive meanwhile stay queued.
    async fn request(&mut self, op: &str, fields: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "op": op, "id": id });
        if let (Some(r), Some(f)) = (req.as_object_mut(), fields.as_object()) {
            r.extend(f.clone());
        }
        self.ws.send(Message::Text(req.to_string().into())).await.context("sending a request")?;
        let deadline = Instant::now() + WAIT;
        let mut held = Vec::new();
        let reply = loop {
            let v = self.recv(deadline).await.with_context(|| format!("waiting for the reply to {req}"))?;
            if v["op"] == "reply" && v["id"] == json!(id) {
                break v;
            }
            held.push(v);
        };
        self.backlog.extend(held);
        ensure!(reply["ok"] == true, "{} {op} failed: {reply}", self.user);
        Ok(reply)
    }

    async fn join(&mut self, channel: &str) -> anyhow::Result<Value> {
        self.request("join", json!({ "channel": channel })).await
    }

    /// Publishes and returns the message id.
    async fn publish(&mut self, channel: &str, text: &str) -> anyhow::Result<String> {
        let reply = self.request("publish", json!({ "channel": channel, "text": text })).await?;
        reply["message_id"].as_str().map(str::to_owned).with_context(|| format!("no message_id in {reply}"))
    }

    /// Waits for the push of a message from `from` with exactly `text`.
    async fn wait_message(&mut self, from: &str, text: &str) -> anyhow::Result<Value> {
        self.wait_for(&format!("a message from {from}: {text:?}"), |v| {
            v["op"] == "message" && v["channel"] == CHANNEL && v["from"] == from && v["text"] == text
        })
        .await
    }

    async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Runs `scenario`; on failure saves a screenshot, prints the page console
/// and panics (the node prints its log when dropped during the panic).
async fn run_in_browser<F, Fut>(name: &str, chrome: &Path, node: &ChatNode, scenario: F)
where
    F: FnOnce(Page) -> Fut,
    Fut: Future<Output = (Page, anyhow::Result<()>)>,
{
    let browser = Browser::launch(chrome).await.expect("launching headless Chromium");
    let page = browser.new_page().await.expect("opening a tab");
    let (page, result) = scenario(page).await;
    let shot: PathBuf = artifacts_dir().join(format!("{name}.png"));
    let saved = page.screenshot(&shot).await;
    if let Err(e) = result {
        let shot = match saved {
            Ok(()) => shot.display().to_string(),
            Err(se) => format!("(none: {se:#})"),
        };
        let text = page.eval("document.body.innerText").await.unwrap_or_default();
        panic!(
            "{name} failed: {e:#}\n\nscreenshot: {shot}\n\npage console:\n  {}\n\npage text:\n{}\n\n\
             node {}\n\nchromium log tail:\n{}",
            page.console().join("\n  "),
            text.as_str().unwrap_or_default(),
            node.http_url(),
            browser.log_tail(20)
        );
    }
}

/// Opens the page, connects as `user` to [`CHANNEL`] and waits until live.
async fn open_and_connect(page: &Page, node: &ChatNode, user: &str) -> anyhow::Result<()> {
    open_page(page, node, user).await?;
    connect(page).await
}

/// Opens the page and fills in `user` and [`CHANNEL`].
async fn open_page(page: &Page, node: &ChatNode, user: &str) -> anyhow::Result<()> {
    page.navigate(&format!("{}/", node.http_url())).await?;
    for id in ["user", "channel", "connect", "text", "send", "messages", "status"] {
        ensure!(
            page.eval(&format!("!!document.getElementById({})", js_str(id))).await? == true,
            "the page has no #{id}"
        );
    }
    let default_channel = page.eval("document.querySelector('#channel').value").await?;
    ensure!(default_channel == CHANNEL, "default channel is {default_channel}, expected {CHANNEL}");
    page.fill("#user", user).await?;
    page.fill("#channel", CHANNEL).await?;
    Ok(())
}

/// Clicks `#connect` and waits until the page is live.
async fn connect(page: &Page) -> anyhow::Result<()> {
    page.click("#connect").await?;
    page.wait_for("document.querySelector('#status').dataset.state === 'live'", WAIT)
        .await
        .context("the page did not go live after clicking #connect")?;
    Ok(())
}

/// JS: the `.msg` element with `data-id` = `id` shows `text`.
fn shows_message(id: &str, text: &str) -> String {
    format!(
        "(() => {{ const m = document.querySelector('#messages .msg[data-id=' + JSON.stringify({id}) + ']');
           return !!m && m.textContent.includes({text}); }})()",
        id = js_str(id),
        text = js_str(text)
    )
}

/// JS: some presence line mentions `user` and `word` ("joined"/"left").
fn shows_presence(user: &str, word: &str) -> String {
    format!(
        "[...document.querySelectorAll('#messages .presence')]
           .some(e => e.textContent.includes({u}) && e.textContent.includes({w}))",
        u = js_str(user),
        w = js_str(word)
    )
}

async fn message_ids(page: &Page) -> anyhow::Result<Vec<String>> {
    let v = page.eval("[...document.querySelectorAll('#messages .msg')].map(e => e.dataset.id)").await?;
    serde_json::from_value(v).context("reading message ids")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_websocket_client_chat_both_ways() {
    let Some(chrome) = chromium_or_skip("browser_chat") else { return };
    let node = ChatNode::start();
    run_in_browser("browser_chat", &chrome, &node, |page| async {
        let r = chat_both_ways(&page, &node).await;
        (page, r)
    })
    .await;
}

async fn chat_both_ways(page: &Page, node: &ChatNode) -> anyhow::Result<()> {
    // History from before the page came.
    let mut carol = Client::connect(node, "carol").await?;
    carol.join(CHANNEL).await?;
    let early = "said before anyone was here";
    let early_id = carol.publish(CHANNEL, early).await?;

    page.set_viewport(1100, 720, 1.0, false).await?;
    open_page(page, node, "alice").await?;
    // Messages keep coming while the page loads history and joins: the
    // hand-over from history to live must lose and repeat nothing.
    let burst = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..BURST {
            ids.push(carol.publish(CHANNEL, &format!("burst {i}")).await?);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        carol.close().await;
        anyhow::Ok(ids)
    });
    // Hold the page's first `join` back a little, so that some of the burst
    // surely falls between its history request and its join.
    page.eval(
        "(() => { const send = WebSocket.prototype.send; let held = false;
           WebSocket.prototype.send = function (data) {
             let op = null; try { op = JSON.parse(data).op; } catch (_) {}
             if (op === 'join' && !held) { held = true; setTimeout(() => send.call(this, data), 400); return; }
             return send.call(this, data);
           }; })()",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    connect(page).await?;
    let burst_ids = burst.await.context("publisher task")??;
    page.wait_for(&shows_message(&early_id, early), WAIT).await.context("history is not shown")?;
    let last_burst = burst_ids.last().context("empty burst")?;
    page.wait_for(&shows_message(last_burst, &format!("burst {}", BURST - 1)), WAIT).await?;

    // Another user joins over a plain WebSocket: the page shows the presence.
    let mut bob = Client::connect(node, "bob").await?;
    bob.join(CHANNEL).await?;
    page.wait_for(&shows_presence("bob", "joined"), WAIT).await.context("bob's join is not shown")?;

    // Page -> WS, with the button. Markup must arrive and show as text.
    let t1 = "hello from the browser <b>not bold</b> & ünïcødé 🎮";
    page.fill("#text", t1).await?;
    page.click("#send").await?;
    let m1 = bob.wait_message("alice", t1).await?;
    ensure!(
        page.eval("document.querySelector('#text').value").await? == "",
        "#text is not cleared after sending"
    );

    // Page -> WS, with Enter.
    let t2 = "sent with the Enter key";
    page.fill("#text", t2).await?;
    page.press("Enter").await?;
    let m2 = bob.wait_message("alice", t2).await?;

    // WS -> page.
    let t3 = "hi from a game client <img src=x onerror=\"document.title='pwned'\">";
    let id3 = bob.publish(CHANNEL, t3).await?;
    page.wait_for(&shows_message(&id3, t3), WAIT).await.context("the WS client's message is not shown")?;
    for (m, text) in [(&m1, t1), (&m2, t2)] {
        let id = m["id"].as_str().context("message without id")?;
        page.wait_for(&shows_message(id, text), WAIT).await.context("own message not shown")?;
    }
    ensure!(
        page.eval("document.querySelectorAll('#messages img, #messages b, #messages script').length").await?
            == 0,
        "message text was rendered as HTML"
    );
    ensure!(page.eval("document.title").await? != "pwned", "message text ran as script");

    // Every message exactly once, in id order.
    let ids = message_ids(page).await?;
    let mut expected = vec![early_id.clone()];
    expected.extend(burst_ids);
    expected.extend([
        m1["id"].as_str().unwrap_or("").to_owned(),
        m2["id"].as_str().unwrap_or("").to_owned(),
        id3.clone(),
    ]);
    ensure!(ids == expected, "the page shows messages {ids:?}, expected {expected:?}");

    // Member count, when the server reports one.
    let members = page.eval("document.querySelector('#members-pill')?.hidden === false ? document.querySelector('#members').textContent : null").await?;
    if !members.is_null() {
        ensure!(members == "2", "member count shows {members}, expected 2 (alice, bob)");
    }

    // The other user leaves: the page shows it.
    bob.close().await;
    page.wait_for(&shows_presence("bob", "left"), WAIT).await.context("bob's leave is not shown")?;

    // A phone-sized look for the screenshot.
    page.set_viewport(390, 760, 2.0, true).await?;
    page.screenshot(&artifacts_dir().join("browser_chat_mobile.png")).await?;
    page.set_viewport(1100, 720, 1.0, false).await?;

    // Switching channel leaves the old one and shows only the new one.
    let mut gus = Client::connect(node, "gus").await?;
    gus.join(CHANNEL).await?;
    page.fill("#channel", "lobby").await?;
    page.click("#connect").await?;
    gus.wait_for("alice leaving town-137", |v| {
        v["op"] == "presence" && v["channel"] == CHANNEL && v["event"] == "leave" && v["user"] == "alice"
    })
    .await?;
    page.wait_for(
        "document.querySelector('#status').dataset.state === 'live' && \
         document.querySelector('#status').textContent.includes('#lobby')",
        WAIT,
    )
    .await
    .context("the page did not go live in #lobby")?;
    gus.publish(CHANNEL, "only for town-137").await?;
    gus.join("lobby").await?;
    let id_lobby = gus.publish("lobby", "welcome to the lobby").await?;
    if let Err(e) = page.wait_for(&shows_message(&id_lobby, "welcome to the lobby"), WAIT).await {
        let ids = message_ids(page).await?;
        let html = page.eval("document.querySelector('#messages').innerHTML").await?;
        anyhow::bail!("{e:#}; the page shows message ids {ids:?}, expected {id_lobby}; #messages: {html}");
    }
    let ids = message_ids(page).await?;
    ensure!(ids == [id_lobby.clone()], "after switching to #lobby the page shows {ids:?}");
    gus.close().await;

    ensure!(page.console().iter().all(|l| !l.starts_with("uncaught")), "page errors: {:?}", page.console());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_reconnects_after_a_node_restart() {
    let Some(chrome) = chromium_or_skip("browser_reconnect") else { return };
    let mut node = ChatNode::start();
    let browser = Browser::launch(&chrome).await.expect("launching headless Chromium");
    let page = browser.new_page().await.expect("opening a tab");
    let result = reconnect(&page, &mut node).await;
    let shot = artifacts_dir().join("browser_reconnect.png");
    let _ = page.screenshot(&shot).await;
    if let Err(e) = result {
        panic!(
            "browser_reconnect failed: {e:#}\nscreenshot: {}\npage console:\n  {}\npage text:\n{}",
            shot.display(),
            page.console().join("\n  "),
            page.eval("document.body.innerText").await.unwrap_or_default().as_str().unwrap_or_default()
        );
    }
}

async fn reconnect(page: &Page, node: &mut ChatNode) -> anyhow::Result<()> {
    open_and_connect(page, node, "dora").await?;
    let mut eve = Client::connect(node, "eve").await?;
    eve.join(CHANNEL).await?;
    let before = "before the restart";
    let id1 = eve.publish(CHANNEL, before).await?;
    page.wait_for(&shows_message(&id1, before), WAIT).await?;
    eve.close().await;

    // Graceful shutdown closes the page's socket with 1012; it must retry.
    node.terminate();
    ensure!(node.wait_exit(Duration::from_secs(30)).is_some(), "the node did not exit on SIGTERM");
    page.wait_for("document.querySelector('#status').dataset.state === 'reconnecting'", WAIT)
        .await
        .context("the page did not notice the closed connection")?;
    node.restart();
    page.wait_for("document.querySelector('#status').dataset.state === 'live'", Duration::from_secs(30))
        .await
        .context("the page did not reconnect")?;

    let mut eve = Client::connect(node, "eve").await?;
    eve.join(CHANNEL).await?;
    let after = "after the restart";
    let id2 = eve.publish(CHANNEL, after).await?;
    page.wait_for(&shows_message(&id2, after), WAIT).await.context("no live messages after reconnecting")?;
    let ids = message_ids(page).await?;
    ensure!(ids == [id1.clone(), id2.clone()], "the page shows messages {ids:?}, expected [{id1}, {id2}]");
    eve.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_errors_in_the_status_line() {
    let Some(chrome) = chromium_or_skip("browser_errors") else { return };
    let node = ChatNode::start_with(["--dynamic-channels", "deny"]);
    run_in_browser("browser_errors", &chrome, &node, |page| async {
        let r = errors(&page, &node).await;
        (page, r)
    })
    .await;
}

async fn errors(page: &Page, node: &ChatNode) -> anyhow::Result<()> {
    page.set_viewport(1000, 640, 1.0, false).await?;
    page.navigate(&format!("{}/", node.http_url())).await?;
    ensure!(
        page.eval("document.querySelector('#send').disabled && document.querySelector('#text').disabled")
            .await?
            == true,
        "sending must be disabled before connecting"
    );
    page.fill("#user", "frank").await?;

    // Rejected by the page itself.
    page.fill("#channel", "no spaces allowed").await?;
    page.click("#connect").await?;
    page.wait_for(
        "document.querySelector('#status').dataset.level === 'error' && \
         document.querySelector('#status').textContent.includes('Channel names')",
        WAIT,
    )
    .await
    .context("an invalid channel name is not reported")?;

    // Rejected by the server: undeclared channel with --dynamic-channels deny.
    page.fill("#channel", "not-declared").await?;
    page.click("#connect").await?;
    let status = page
        .wait_for(
            "(() => { const s = document.querySelector('#status');
               return s.dataset.level === 'error' && /\\(([a-z_]+)\\)$/.test(s.textContent) && s.textContent; })()",
            WAIT,
        )
        .await
        .context("the server's error reply is not shown")?;
    ensure!(
        status.as_str().is_some_and(|s| s.contains("not-declared")),
        "status {status} does not name the channel"
    );
    ensure!(
        page.eval("document.querySelector('#status').dataset.state").await? != "live",
        "the page claims to be live in a channel it could not join"
    );
    Ok(())
}

/// The CDP driver on its own (no chat-node involved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdp_driver_clicks_types_and_evaluates() {
    let Some(chrome) = chromium_or_skip("cdp_driver") else { return };
    let browser = Browser::launch(&chrome).await.expect("launching headless Chromium");
    let version = browser.version().await.expect("Browser.getVersion");
    assert!(version["product"].as_str().is_some_and(|p| !p.is_empty()), "odd version reply {version}");
    let page = browser.new_page().await.expect("opening a tab");
    let html = "<form id=f><input id=t><button id=b>go</button></form><p id=out></p>\
                <script>f.onsubmit = e => { e.preventDefault(); out.textContent = 'got:' + t.value; };\
                console.log('ready', 42);</script>";
    page.navigate(&format!("data:text/html,{}", shardchat_tests::node::percent_encode(html)))
        .await
        .expect("navigate");
    page.fill("#t", "one").await.expect("fill");
    page.click("#b").await.expect("click");
    page.wait_for("out.textContent === 'got:one'", WAIT).await.expect("click submits the form");
    page.fill("#t", "two").await.expect("fill");
    page.press("Enter").await.expect("press Enter");
    page.wait_for("out.textContent === 'got:two'", WAIT).await.expect("Enter submits the form");
    assert_eq!(page.eval("Promise.resolve(6 * 7)").await.expect("eval"), json!(42));
    let err = page.eval("(() => { throw new Error('boom') })()").await.expect_err("exceptions are errors");
    assert!(format!("{err:#}").contains("boom"), "{err:#}");
    assert!(page.click("#nope").await.is_err(), "clicking a missing element must fail");
    assert!(page.wait_for("false", Duration::from_millis(200)).await.is_err(), "wait_for must time out");
    assert!(page.console().iter().any(|l| l.contains("ready 42")), "console: {:?}", page.console());
    let shot = artifacts_dir().join("cdp_driver.png");
    page.screenshot(&shot).await.expect("screenshot");
    let png = std::fs::read(&shot).expect("reading the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

const SECRET: &str = "browser-test-secret-of-at-least-32-bytes";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// With tokens required, the page takes its token from the URL fragment
/// (never sent to a server) and sends it as the WebSocket subprotocol, so no
/// request line (and no proxy access log) carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_keeps_its_token_out_of_urls() {
    let Some(chrome) = chromium_or_skip("browser_token") else { return };
    let node = ChatNode::start_with(["--jwt-secret", SECRET]);
    run_in_browser("browser_token", &chrome, &node, |page| async {
        let r = token_out_of_urls(&page, &node).await;
        (page, r)
    })
    .await;
}

async fn token_out_of_urls(page: &Page, node: &ChatNode) -> anyhow::Result<()> {
    let mut bob = Client::connect_url(&format!("{}?token={}", node.ws_url(), token("bob")), "bob").await?;
    bob.join(CHANNEL).await?;
    // The page's ?token= (old links) is taken and removed from the address bar;
    // the #token= form never reaches the server at all.
    for (how, suffix, user) in [("fragment", "#token=", "page-user"), ("query", "?token=", "query-user")] {
        page.navigate(&format!("{}/{suffix}{}", node.http_url(), token(user))).await?;
        page.fill("#user", "typed-name").await?;
        page.fill("#channel", CHANNEL).await?;
        connect(page).await.with_context(|| format!("{how}: connecting with the token"))?;
        let href = page.eval("location.pathname + location.search").await?;
        ensure!(href.as_str().is_some_and(|h| !h.contains("token")), "{how}: token left in the URL: {href}");
        let text = format!("signed in through the {how}");
        page.fill("#text", &text).await?;
        page.click("#send").await?;
        bob.wait_message(user, &text).await.with_context(|| format!("{how}: the token's user speaks"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_whispers_with_slash_w_and_shows_whispers() {
    let Some(chrome) = chromium_or_skip("browser_whisper") else { return };
    let node = ChatNode::start();
    run_in_browser("browser_whisper", &chrome, &node, |page| async {
        let r = whispers(&page, &node).await;
        (page, r)
    })
    .await;
}

async fn whispers(page: &Page, node: &ChatNode) -> anyhow::Result<()> {
    // A whisper sent while the page was away arrives when it connects.
    let mut bob = Client::connect(node, "bob").await?;
    bob.request("dm", json!({"to": "alice", "text": "sent while you were away"})).await?;
    open_and_connect(page, node, "alice").await?;
    let shows = |text: &str| {
        format!(
            "[...document.querySelectorAll('#messages .whisper')].some(e => e.textContent.includes({}))",
            js_str(text)
        )
    };
    page.wait_for(&shows("bob \u{2192} you: sent while you were away"), WAIT)
        .await
        .context("the whisper from before the page connected is not shown")?;
    page.fill("#text", "/w bob meet at the gate").await?;
    page.click("#send").await?;
    let got = bob.wait_for("alice's whisper", |v| v["op"] == "dm" && v["from"] == "alice").await?;
    ensure!(got["text"] == "meet at the gate" && got["to"] == "bob", "bob got {got}");
    page.wait_for(&shows("you \u{2192} bob: meet at the gate"), WAIT)
        .await
        .context("the page does not show its own whisper")?;
    bob.request("dm", json!({"to": "alice", "text": "on my way"})).await?;
    page.wait_for(&shows("bob \u{2192} you: on my way"), WAIT)
        .await
        .context("a live whisper is not shown")?;
    let channel_rows = page.eval("document.querySelectorAll('#messages .msg').length").await?;
    ensure!(channel_rows == json!(0), "whispers are not channel messages: {channel_rows} rows");
    bob.close().await;
    Ok(())
}
