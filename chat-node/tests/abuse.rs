//! Abuse limits over real sockets: send queues bounded in bytes, every frame
//! counted against the frame rate, open connections per IP and per user,
//! membership churn, REST throttling and access, hostile tokens, origins.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Client, Closed, TestNode};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

const SECRET: &str = "abuse-test-secret-of-at-least-32-bytes";
const FAST: &[&str] = &["--publish-rate", "100000", "--publish-burst", "100000", "--frame-rate", "100000"];

fn token(sub: &str, roles: &[&str], exp: u64) -> String {
    let claims = json!({"sub": sub, "roles": roles, "exp": exp});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn in_ten_minutes() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600
}

/// 2,000 control characters: each is escaped to six bytes in JSON, so a
/// message is ~12 KB on the wire — the largest a client can make.
fn fat_text() -> String {
    "\u{1}".repeat(2000)
}

async fn fill_history(node: &TestNode, channel: &str, n: usize) {
    let mut p = node.connect("filler").await;
    p.join(channel).await;
    for _ in 0..n {
        p.send_json(json!({"op":"publish","channel":channel,"text":fat_text()})).await;
    }
    p.messages(n).await;
}

/// Upgrade with extra headers; `Err(status, body)` when refused.
async fn upgrade(url: &str, headers: &[(&str, &str)]) -> Result<Client, (u16, Value)> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().append(name, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            if let Some(p) = resp.headers().get("sec-websocket-protocol") {
                assert_eq!(p, "shardchat.v1", "the token is never echoed back");
            }
            Ok(Client::from_ws(ws))
        }
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Err((resp.status().as_u16(), serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

// ---------------------------------------------------------- 1: bytes

#[tokio::test]
async fn a_client_that_requests_history_but_never_reads_is_closed_by_bytes() {
    let node = TestNode::start(FAST).await;
    // 200 fat messages: one unbounded `history limit 1000` reply is ~2.4 MB.
    fill_history(&node, "hoard", 200).await;
    let mut greedy = Client::connect_small_buffer(node.addr, &node.ws_url("greedy")).await;
    // Far more than socket buffers and the 2 MiB queue hold, while the frame
    // queue (1,024 items) is nowhere near full: only a byte bound stops this.
    for i in 0..60 {
        greedy.send_json(json!({"op":"history","id":i,"channel":"hoard","limit":1000})).await;
    }
    assert_eq!(greedy.closed().await, Closed::Code(4009));
    node.wait_for_metric("shardchat_slow_consumer_disconnects_total 1").await;
    // Everyone else is fine.
    node.connect("other").await.ok(json!({"op":"history","channel":"hoard","limit":5})).await;
}

#[tokio::test]
async fn history_pages_and_join_backlogs_are_cut_to_the_reply_budget() {
    // 256 KiB queue: a reply carries at most 128 KiB of messages (~10 fat ones).
    let node = TestNode::start(&[FAST, &["--outbound-queue-bytes", "262144"]].concat()).await;
    fill_history(&node, "big", 30).await;
    let mut c = node.connect("reader").await;
    let page = c.ok(json!({"op":"history","channel":"big","limit":1000})).await;
    let got = page["messages"].as_array().unwrap();
    assert!(!got.is_empty() && got.len() < 30, "cut to the budget: {}", got.len());
    assert_eq!(page["truncated"], true);
    let all = serde_json::to_string(&page).unwrap().len();
    assert!(all <= 128 * 1024 + 1024, "reply is {all} bytes");
    // Paging on with `before` gets the older ones; a small page is not cut.
    let before = got[0]["id"].as_str().unwrap();
    let older = c.ok(json!({"op":"history","channel":"big","limit":3,"before":before})).await;
    assert_eq!(older["messages"].as_array().unwrap().len(), 3);
    assert!(older.get("truncated").is_none(), "{older}");

    // A join backlog past the budget keeps the newest and says recovered: false.
    let mut late = node.connect("late").await;
    let reply = late.ok(json!({"op":"join","channel":"big","since":"0-0"})).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let backlog = late.messages(got.len()).await;
    assert_eq!(backlog.last().unwrap()["id"], got.last().unwrap()["id"], "ends with the newest");
    // ...and the connection goes on live.
    let mut p = node.connect("writer").await;
    p.join("big").await;
    let id = p.publish("big", "small and live").await;
    assert_eq!(late.next_op("message").await["id"], id.as_str());
}

// ---------------------------------------------------------- 2: every frame counts

#[tokio::test]
async fn binary_and_malformed_frame_floods_are_rate_limited_and_closed_with_1008() {
    let node = TestNode::start(&["--frame-rate", "5", "--flood-close-after", "5"]).await;
    for (who, frame) in [
        ("binary", Message::binary(vec![0u8; 16])),
        ("garbage", Message::text("{not json")),
        ("ping", Message::Ping(vec![1u8].into())),
    ] {
        let mut c = node.connect(who).await;
        for _ in 0..200 {
            if c.ws.send(frame.clone()).await.is_err() {
                break;
            }
        }
        // Errors (bad_request, then rate_limited) come first; a flood close
        // does not wait for the queued ones, so only the close is certain.
        loop {
            match tokio::time::timeout(support::TIMEOUT, c.ws.next()).await.expect("close in time") {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(u16::from(f.code), 1008, "{who}");
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("{who}: expected a 1008 close, got {other:?}"),
            }
        }
    }
    node.wait_for_metric("shardchat_rate_limit_closes_total 3").await;
}

#[tokio::test]
async fn rate_limited_replies_keep_their_id() {
    let node = TestNode::start(&["--frame-rate", "1", "--flood-close-after", "1000"]).await;
    let mut c = node.connect("alice").await;
    for i in 0..10 {
        c.send_json(json!({"op":"ping","id":format!("p{i}")})).await;
    }
    let mut ids = Vec::new();
    for _ in 0..10 {
        let v = c.recv().await;
        if v["error"]["code"] == "rate_limited" {
            ids.push(v["id"].as_str().unwrap().to_string());
        }
    }
    assert!(!ids.is_empty() && ids.iter().all(|id| id.starts_with('p')), "{ids:?}");
}

// ---------------------------------------------------------- 3: open connections

#[tokio::test]
async fn open_connections_are_capped_per_ip_and_per_user() {
    let node = TestNode::start(&["--max-connections-per-ip", "3", "--max-connections-per-user", "100"]).await;
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(node.connect(&format!("u{i}")).await);
    }
    let (status, body) = upgrade(&node.ws_url("u3"), &[]).await.err().expect("a fourth is refused");
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")));
    // A closed connection gives its place back (once its session has ended).
    let mut gone = open.pop().unwrap();
    gone.ws.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + support::TIMEOUT;
    while upgrade(&node.ws_url("u3"), &[]).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.wait_for_metric("shardchat_connection_cap_refusals_total{cap=\"ip\"}").await;

    let node = TestNode::start(&["--max-connections-per-ip", "0", "--max-connections-per-user", "2"]).await;
    let _a = node.connect("same").await;
    let _b = node.connect("same").await;
    let (status, body) = upgrade(&node.ws_url("same"), &[]).await.err().expect("a third is refused");
    assert_eq!(status, 429);
    assert!(body["error"]["message"].as_str().unwrap().contains("user"), "{body}");
    node.connect("someone-else").await.ok(json!({"op":"ping"})).await;
}

#[tokio::test]
async fn the_per_ip_cap_counts_the_address_the_trusted_proxy_saw() {
    let node = TestNode::start(&["--trusted-proxy-hops", "1", "--max-connections-per-ip", "2"]).await;
    let url = node.ws_url("p");
    let player = [("x-forwarded-for", "198.51.100.9")];
    let _one = upgrade(&url, &player).await.expect("first");
    // The same player forging an address in front of what the proxy appended.
    let _two = upgrade(&url, &[("x-forwarded-for", "203.0.113.1, 198.51.100.9")]).await.expect("second");
    let forged = [("x-forwarded-for", "203.0.113.2"), ("x-forwarded-for", "junk, 198.51.100.9")];
    assert_eq!(upgrade(&url, &forged).await.err().map(|e| e.0), Some(429), "forged entries do not help");
    // Another player behind the same proxy is counted separately.
    upgrade(&url, &[("x-forwarded-for", "198.51.100.10")]).await.expect("other player");
    // An unparseable trusted entry counts as the proxy itself (the TCP peer).
    let _p1 = upgrade(&url, &[("x-forwarded-for", "198.51.100.11, unknown")]).await.expect("peer 1");
    let _p2 = upgrade(&url, &[("x-forwarded-for", "garbage")]).await.expect("peer 2");
    assert_eq!(upgrade(&url, &[]).await.err().map(|e| e.0), Some(429), "127.0.0.1 holds two already");
}

// ---------------------------------------------------------- 4: membership churn

#[tokio::test]
async fn join_leave_churn_is_rate_limited_per_connection() {
    let node =
        TestNode::start(&["--membership-rate", "1", "--membership-burst", "4", "--flood-close-after", "100"])
            .await;
    let mut watcher = node.connect("watcher").await;
    watcher.join("plaza").await;
    let mut churner = node.connect("churner").await;
    let mut codes = Vec::new();
    for i in 0..10 {
        let op = if i % 2 == 0 { "join" } else { "leave" };
        let r = churner.request(json!({"op":op,"channel":"plaza"})).await;
        codes.push(if r["ok"] == true { "ok".to_string() } else { r["error"]["code"].to_string() });
    }
    assert_eq!(codes.iter().filter(|c| *c == "ok").count(), 4, "{codes:?}");
    assert!(codes[4].contains("rate_limited"), "{codes:?}");
    assert!(!codes[4..].iter().any(|c| c == "ok"), "{codes:?}");
    // The watcher saw exactly the admitted changes: join, leave, join, leave.
    let mut events = Vec::new();
    while let Some(p) = watcher.try_next_op("presence", Duration::from_millis(300)).await {
        if p["user"] == "churner" {
            events.push(p["event"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(events, ["join", "leave", "join", "leave"]);
    // A request that changes nothing is not a membership change.
    churner.ok(json!({"op":"ping"})).await;
}

// ---------------------------------------------------------- 5: REST

fn restricted_channels() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "shardchat-abuse-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("channels.yaml");
    std::fs::write(&file, "- name: plaza\n- name: guild-7\n  access: {joinRoles: [guild-7]}\n").unwrap();
    file
}

#[tokio::test]
async fn rest_reads_follow_the_websocket_access_rules() {
    let file = restricted_channels();
    let node = TestNode::start(&[
        "--jwt-secret",
        SECRET,
        "--channels",
        file.to_str().unwrap(),
        "--rest-burst",
        "1000",
    ])
    .await;
    let member = token("gm", &["guild-7"], in_ten_minutes());
    let mut c = Client::connect(&format!("ws://{}/v1/ws?token={member}", node.addr)).await;
    c.join("guild-7").await;
    c.publish("guild-7", "officers only").await;
    let http = node.http();
    let auth = format!("Bearer {member}");
    let with = [("Authorization", auth.as_str())];
    let outsider = format!("Bearer {}", token("x", &["guild-8"], in_ten_minutes()));

    // The channel list hides what the caller may not read.
    let anon = http.get("/v1/channels").await.json();
    let names = |v: &Value| {
        v["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&anon), ["plaza"]);
    let mine = http.request("GET", "/v1/channels", &with, None).await.json();
    assert_eq!(names(&mine), ["guild-7", "plaza"]);
    let theirs = http.request("GET", "/v1/channels", &[("Authorization", &outsider)], None).await.json();
    assert_eq!(names(&theirs), ["plaza"]);

    for path in ["/v1/channels/guild-7/history", "/v1/channels/guild-7/members"] {
        assert_eq!(http.get(path).await.status, 403, "{path} anonymous");
        assert_eq!(http.request("GET", path, &[("Authorization", &outsider)], None).await.status, 403);
        let r = http.request("GET", path, &with, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(http.request("GET", path, &[("Authorization", "Bearer junk")], None).await.status, 401);
    }
    let members = http.request("GET", "/v1/channels/guild-7/members", &with, None).await.json();
    assert_eq!(members["members"], json!(["gm"]));
    assert_eq!(http.get("/v1/channels/plaza/history").await.status, 200, "public reads stay anonymous");
}

#[tokio::test]
async fn anonymous_rest_reads_are_throttled_per_ip() {
    let node = TestNode::start(&["--rest-rate", "1", "--rest-burst", "10"]).await;
    let http = node.http();
    // The channel list costs ten: it spends the whole burst.
    assert_eq!(http.get("/v1/channels").await.status, 200);
    let r = http.get("/v1/channels/town-1/history").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    assert_eq!(http.get("/v1/channels").await.status, 429);
    // Health and metrics are never throttled.
    assert_eq!(http.get("/healthz").await.status, 200);
    node.wait_for_metric("shardchat_rest_rate_limited_total 2").await;
}

// ---------------------------------------------------------- 6: hostile tokens

#[tokio::test]
async fn a_token_with_a_huge_exp_does_not_crash_the_session() {
    let node = TestNode::start(&["--jwt-secret", SECRET]).await;
    for exp in [u64::MAX, u64::MAX / 1000, i64::MAX as u64] {
        let mut c =
            Client::connect(&format!("ws://{}/v1/ws?token={}", node.addr, token("far", &[], exp))).await;
        c.ok(json!({"op":"ping"})).await;
        c.join("town-1").await;
        c.publish("town-1", "still alive").await;
    }
    node.http().get("/healthz").await;
}

// ---------------------------------------------------------- 12: origins, subprotocol token

#[tokio::test]
async fn browser_origins_outside_the_allow_list_are_refused() {
    let node = TestNode::start(&["--allowed-origins", "https://play.example.com"]).await;
    let url = node.ws_url("alice");
    let (status, body) =
        upgrade(&url, &[("origin", "https://evil.example")]).await.err().expect("foreign origin refused");
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    upgrade(&url, &[("origin", "https://play.example.com")])
        .await
        .expect("allowed origin")
        .ok(json!({"op":"ping"}))
        .await;
    upgrade(&url, &[]).await.expect("no Origin: not a browser").ok(json!({"op":"ping"})).await;
    node.wait_for_metric("shardchat_origin_refusals_total 1").await;

    let open = TestNode::start(&[]).await;
    upgrade(&open.ws_url("bob"), &[("origin", "https://evil.example")]).await.expect("no list: any origin");
}

#[tokio::test]
async fn the_token_can_travel_as_a_websocket_subprotocol() {
    let node = TestNode::start(&["--jwt-secret", SECRET]).await;
    let url = format!("ws://{}/v1/ws", node.addr);
    let offer = format!("shardchat.v1, bearer.{}", token("sp", &[], in_ten_minutes()));
    let mut c = upgrade(&url, &[("sec-websocket-protocol", &offer)]).await.expect("subprotocol token");
    c.join("town-1").await;
    c.publish("town-1", "hello").await;
    assert_eq!(c.next_op("message").await["from"], "sp");
    let bad = "shardchat.v1, bearer.not-a-token";
    assert_eq!(upgrade(&url, &[("sec-websocket-protocol", bad)]).await.err().map(|e| e.0), Some(401));
}

// ---------------------------------------------------------- 7: default access

#[tokio::test]
async fn undeclared_channels_follow_the_node_wide_default_access() {
    let node =
        TestNode::start(&["--default-join-roles", "player", "--default-publish-roles", "verified"]).await;
    let url = |user: &str, roles: &str| format!("{}&roles={roles}", node.ws_url(user));
    let mut anon = Client::connect(&url("anon", "")).await;
    assert_eq!(anon.error_code(json!({"op":"join","channel":"town-1"})).await, "forbidden");
    let mut player = Client::connect(&url("p", "player")).await;
    player.join("town-1").await;
    assert_eq!(player.error_code(json!({"op":"publish","channel":"town-1","text":"hi"})).await, "forbidden");
    let mut verified = Client::connect(&url("v", "player,verified")).await;
    verified.join("town-1").await;
    verified.publish("town-1", "hello").await;
    // Anonymous REST readers have no roles: the default applies to them too.
    assert_eq!(node.http().get("/v1/channels/town-1/history").await.status, 403);
    let list = node.http().get("/v1/channels").await.json();
    assert_eq!(list["channels"], json!([]), "{list}");
}

// ---------------------------------------------------------- limits without a test elsewhere

#[tokio::test]
async fn channels_per_connection_are_capped() {
    let node = TestNode::start(&["--max-channels-per-connection", "3"]).await;
    let mut c = node.connect("collector").await;
    for ch in ["a", "b", "c"] {
        c.join(ch).await;
    }
    let r = c.request(json!({"op":"join","channel":"d"})).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("at most 3"), "{r}");
    c.ok(json!({"op":"leave","channel":"a"})).await;
    c.join("d").await;
}

#[tokio::test]
async fn a_channels_rate_limit_is_shared_by_all_its_publishers() {
    let dir = std::env::temp_dir().join(format!("shardchat-chanrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("channels.yaml");
    std::fs::write(&file, "- name: slow\n  rateLimit: {perSecond: 1, burst: 2}\n").unwrap();
    let node = TestNode::start(&[FAST, &["--channels", file.to_str().unwrap()]].concat()).await;
    let mut a = node.connect("a").await;
    let mut b = node.connect("b").await;
    a.join("slow").await;
    b.join("slow").await;
    let mut outcomes = Vec::new();
    for i in 0..3 {
        for c in [&mut a, &mut b] {
            let r = c.request(json!({"op":"publish","channel":"slow","text":format!("m{i}")})).await;
            outcomes.push(if r["ok"] == true { "ok".to_string() } else { r["error"]["code"].to_string() });
        }
    }
    let accepted = outcomes.iter().filter(|o| *o == "ok").count();
    // The burst of 2, plus at most a token or two refilled while the test runs.
    assert!((2..=4).contains(&accepted), "{outcomes:?}");
    assert!(outcomes.iter().any(|o| o.contains("rate_limited")), "{outcomes:?}");
    std::fs::remove_dir_all(&dir).ok();
}
