//! Security over real sockets and on the verifier: the token matrix,
//! 401/403 on upgrade and REST, mid-session expiry, the per-channel access
//! matrix (dev mode and JWT), the per-IP connection limit and flood closes.

mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chat_node::auth::jwt::{ClaimRules, JwtVerifier, KeySources};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{Client, Closed, TestNode};
use tokio_tungstenite::tungstenite;

const SECRET: &str = "test-secret-at-least-32-bytes-long!!";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)
}

fn fixture_str(name: &str) -> String {
    fixture(name).display().to_string()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn claims(sub: &str, roles: &[&str], exp_in: i64) -> Value {
    json!({"sub": sub, "roles": roles, "exp": (now() as i64 + exp_in) as u64})
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()))
        .unwrap()
}

fn signed(alg: Algorithm, kid: Option<&str>, key_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixture(key_file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token with a hand-made header and no (or an arbitrary) signature.
fn crafted(header: Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn verifier(sources: KeySources, leeway_secs: u64) -> JwtVerifier {
    let rules = ClaimRules { leeway: Duration::from_secs(leeway_secs), issuer: None, audience: None };
    JwtVerifier::new(sources, rules).unwrap()
}

fn all_keys() -> KeySources {
    KeySources {
        secret: Some(SECRET.into()),
        public_keys: vec![fixture("rsa.pub.pem"), fixture("ec.pub.pem")],
        jwks: Some(fixture("jwks.json")),
    }
}

#[test]
fn token_matrix() {
    let v = verifier(all_keys(), 30);
    let ok = |t: &str| v.verify(t).map(|id| (id.user.to_string(), id.roles)).map_err(|e| e.message);
    let base = claims("user-42", &["guild-7"], 600);

    // Valid with each key type.
    assert_eq!(ok(&hs256(&base)), Ok(("user-42".into(), vec!["guild-7".into()])));
    assert!(ok(&signed(Algorithm::RS256, None, "rsa.key.pem", &base)).is_ok());
    assert!(ok(&signed(Algorithm::ES256, None, "ec.key.pem", &base)).is_ok());
    assert!(ok(&signed(Algorithm::RS256, Some("rsa-1"), "rsa.key.pem", &base)).is_ok());
    assert!(ok(&signed(Algorithm::ES256, Some("ec-1"), "ec.key.pem", &base)).is_ok());

    // Expiry with leeway; nbf.
    assert!(ok(&hs256(&claims("u", &[], -10))).is_ok(), "within the 30 s leeway");
    let e = ok(&hs256(&claims("u", &[], -120))).unwrap_err();
    assert!(e.contains("expired"), "{e}");
    let mut future = base.clone();
    future["nbf"] = json!(now() + 600);
    assert!(ok(&hs256(&future)).unwrap_err().contains("not valid yet"));

    // Wrong keys.
    let wrong_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &base,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    assert!(ok(&wrong_secret).unwrap_err().contains("signature"));
    assert!(ok(&signed(Algorithm::RS256, None, "rsa-other.key.pem", &base)).is_err());
    assert!(ok(&signed(Algorithm::RS256, Some("rsa-1"), "rsa-other.key.pem", &base)).is_err());

    // `none` and other algorithms.
    let none = crafted(json!({"alg":"none","typ":"JWT"}), &base, b"");
    assert!(ok(&none).is_err());
    let none_upper = crafted(json!({"alg":"None"}), &base, b"");
    assert!(ok(&none_upper).is_err());
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &base,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert!(ok(&hs384).unwrap_err().contains("not accepted"));

    // Algorithm confusion: an HS256 token "signed" with the RSA public key.
    let public_pem = std::fs::read(fixture("rsa.pub.pem")).unwrap();
    let confused =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &base, &EncodingKey::from_secret(&public_pem))
            .unwrap();
    assert!(ok(&confused).is_err());
    let rsa_only =
        verifier(KeySources { public_keys: vec![fixture("rsa.pub.pem")], ..Default::default() }, 30);
    let e = rsa_only.verify(&confused).unwrap_err();
    assert!(e.message.contains("no key"), "{}", e.message);
    // ...and an RS256 header on an HMAC signature.
    let mut parts: Vec<String> = hs256(&base).split('.').map(String::from).collect();
    parts[0] = URL_SAFE_NO_PAD.encode(json!({"alg":"RS256"}).to_string());
    assert!(ok(&parts.join(".")).is_err());

    // Missing and invalid claims.
    assert!(ok(&hs256(&json!({"sub":"u"}))).is_err(), "no exp");
    assert!(ok(&hs256(&json!({"exp": now() + 600}))).is_err(), "no sub");
    assert!(ok(&hs256(&claims("has space", &[], 600))).unwrap_err().contains("sub"));
    assert!(ok(&hs256(&claims(&"x".repeat(65), &[], 600))).is_err());
    assert!(ok(&hs256(&claims("u", &["bad role"], 600))).unwrap_err().contains("roles"));
    let many: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(ok(&hs256(&claims("u", &many, 600))).is_err());
    assert!(ok(&hs256(&json!({"sub":"u","exp":"tomorrow"}))).is_err());

    // Roles: array, single string, absent; name.
    let one = hs256(&json!({"sub":"u","roles":"admin","exp":now()+60}));
    assert_eq!(ok(&one).unwrap().1, ["admin"]);
    let id = v.verify(&hs256(&json!({"sub":"u","name":"Ari 🐉","exp":now()+60}))).unwrap();
    assert!(id.roles.is_empty());
    assert_eq!(id.name.as_deref(), Some("Ari 🐉"));
    assert!(ok(&hs256(&json!({"sub":"u","name":"a\u{7}b","exp":now()+60}))).is_err());

    // Garbage never panics.
    for junk in ["", ".", "..", "a.b.c", "eyJhbGciOiJIUzI1NiJ9..", &"x".repeat(10_000)] {
        assert!(ok(junk).is_err(), "{junk:?}");
    }
}

#[test]
fn issuer_and_audience_when_configured() {
    let rules = ClaimRules {
        leeway: Duration::from_secs(5),
        issuer: Some("game-backend".into()),
        audience: Some("shardchat".into()),
    };
    let v =
        JwtVerifier::new(KeySources { secret: Some(SECRET.into()), ..Default::default() }, rules).unwrap();
    let mut c = claims("u", &[], 60);
    assert!(v.verify(&hs256(&c)).is_err(), "iss and aud are required");
    c["iss"] = json!("game-backend");
    c["aud"] = json!("shardchat");
    assert!(v.verify(&hs256(&c)).is_ok());
    c["aud"] = json!("other");
    assert!(v.verify(&hs256(&c)).is_err());
}

#[test]
fn key_files_are_reloaded_when_they_change() {
    let dir = std::env::temp_dir().join(format!("shardchat-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("key.pem");
    std::fs::copy(fixture("rsa.pub.pem"), &pem).unwrap();
    let v = verifier(KeySources { public_keys: vec![pem.clone()], ..Default::default() }, 0);
    let base = claims("u", &[], 60);
    let by_old = signed(Algorithm::RS256, None, "rsa.key.pem", &base);
    let by_new = signed(Algorithm::RS256, None, "rsa-other.key.pem", &base);
    assert!(v.verify(&by_old).is_ok() && v.verify(&by_new).is_err());
    assert!(!v.reload_if_changed(), "nothing changed");
    std::fs::copy(fixture("rsa-other.pub.pem"), &pem).unwrap();
    assert!(v.reload_if_changed());
    assert!(v.verify(&by_old).is_err() && v.verify(&by_new).is_ok());
    // A broken file keeps the keys in force.
    std::fs::write(&pem, "not a key").unwrap();
    assert!(!v.reload_if_changed());
    assert!(v.verify(&by_new).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

/// The HTTP status and JSON body of a refused upgrade.
async fn refused(url: &str, auth_header: Option<&str>) -> (u16, Value) {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if let Some(h) = auth_header {
        req.headers_mut().insert("authorization", h.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("upgrade to {url} should be refused"),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (resp.status().as_u16(), serde_json::from_slice(&body).unwrap_or(Value::Null))
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// A raw WebSocket that authenticates with an `Authorization` header.
async fn connect_with_header(url: &str, auth: &str) -> shardchat_tests::client::Ws {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("authorization", auth.parse().unwrap());
    tokio_tungstenite::connect_async(req).await.expect("upgrade").0
}

/// Sends `req` on a raw socket and returns the reply with the same id.
async fn raw_request(ws: &mut shardchat_tests::client::Ws, req: Value) -> Value {
    use futures_util::{SinkExt, StreamExt};
    ws.send(tungstenite::Message::text(req.to_string())).await.unwrap();
    loop {
        let m = tokio::time::timeout(support::TIMEOUT, ws.next()).await.unwrap().unwrap().unwrap();
        if let tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["op"] == "reply" && v["id"] == req["id"] {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn upgrade_needs_a_valid_token_when_a_key_is_configured() {
    let node = TestNode::start(&["--jwt-secret", SECRET]).await;
    let base = format!("ws://{}/v1/ws", node.addr);

    let (status, body) = refused(&base, None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    // Dev-mode identities are refused once a key exists.
    let (status, _) = refused(&format!("{base}?user=alice"), None).await;
    assert_eq!(status, 401);
    let expired = hs256(&claims("alice", &[], -3600));
    let (status, body) = refused(&format!("{base}?token={expired}"), None).await;
    assert_eq!(status, 401);
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
    let (status, _) = refused(&base, Some("Bearer not-a-token")).await;
    assert_eq!(status, 401);

    // Valid: query parameter and header, and the identity is the token's.
    let token = hs256(&claims("alice", &[], 600));
    let mut a = Client::connect(&format!("{base}?token={token}&user=mallory")).await;
    let mut b = connect_with_header(&base, &format!("Bearer {}", hs256(&claims("bob", &[], 600)))).await;
    a.join("town-1").await;
    let r = raw_request(&mut b, json!({"op":"join","id":1,"channel":"town-1"})).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = raw_request(&mut b, json!({"op":"publish","id":2,"channel":"town-1","text":"hi"})).await;
    assert_eq!(r["ok"], true, "{r}");
    let m = a.next_op("message").await;
    assert_eq!(m["from"], "bob");
    a.publish("town-1", "hello").await;
    let m = a.next_op("message").await;
    assert_eq!(m["from"], "alice", "?user= is ignored when a token is presented");

    node.wait_for_metric("shardchat_auth_failures_total{reason=\"missing\"} 2").await;
    node.wait_for_metric("shardchat_auth_failures_total{reason=\"expired\"} 1").await;
}

#[tokio::test]
async fn token_expiring_mid_session_gets_unauthorized_then_4001() {
    let node = TestNode::start(&["--jwt-secret", SECRET, "--jwt-leeway", "0s"]).await;
    let token = hs256(&claims("alice", &[], 3));
    let mut c = Client::connect(&format!("ws://{}/v1/ws?token={token}", node.addr)).await;
    c.join("town-1").await;
    let push = c.next_op("error").await;
    assert_eq!(push["error"]["code"], "unauthorized");
    assert_eq!(c.closed().await, Closed::Code(4001));
    node.wait_for_metric("shardchat_token_expired_closes_total 1").await;
    node.wait_for_metric("shardchat_disconnects_total{reason=\"unauthorized\"} 1").await;
}

#[tokio::test]
async fn rsa_jwks_and_ec_keys_work_on_the_wire() {
    let jwks = fixture_str("jwks.json");
    let node = TestNode::start(&["--jwks-file", &jwks]).await;
    let base = format!("ws://{}/v1/ws", node.addr);
    let rs = signed(Algorithm::RS256, Some("rsa-1"), "rsa.key.pem", &claims("r", &[], 600));
    let es = signed(Algorithm::ES256, Some("ec-1"), "ec.key.pem", &claims("e", &[], 600));
    Client::connect(&format!("{base}?token={rs}")).await.ok(json!({"op":"ping"})).await;
    Client::connect(&format!("{base}?token={es}")).await.ok(json!({"op":"ping"})).await;
    // No secret configured: an HS256 token has no key to be checked against.
    let (status, _) = refused(&format!("{base}?token={}", hs256(&claims("h", &[], 600))), None).await;
    assert_eq!(status, 401);
}

fn channels_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardchat-sec-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("channels.yaml");
    std::fs::write(
        &file,
        "- name: plaza\n\
         - name: guild-7\n  access: {joinRoles: [guild-7]}\n\
         - name: news\n  access: {publishRoles: [staff]}\n\
         - name: officers\n  access: {joinRoles: [guild-7], publishRoles: [officer]}\n",
    )
    .unwrap();
    file
}

/// (channel, roles, may join, may publish)
const ACCESS_MATRIX: &[(&str, &[&str], bool, bool)] = &[
    ("plaza", &[], true, true),
    ("plaza", &["guild-7"], true, true),
    ("guild-7", &[], false, false),
    ("guild-7", &["guild-8"], false, false),
    ("guild-7", &["guild-7"], true, true),
    ("news", &[], true, false),
    ("news", &["staff"], true, true),
    ("officers", &["officer"], false, false),
    ("officers", &["guild-7"], true, false),
    ("officers", &["guild-7", "officer"], true, true),
];

async fn check_access_matrix(node: &TestNode, connect: impl Fn(&str, &[&str]) -> String) {
    for (i, &(channel, roles, may_join, may_publish)) in ACCESS_MATRIX.iter().enumerate() {
        let mut c = Client::connect(&connect(&format!("user-{i}"), roles)).await;
        let join = c.request(json!({"op":"join","channel":channel})).await;
        assert_eq!(join["ok"], json!(may_join), "join {channel} with {roles:?}: {join}");
        if !may_join {
            assert_eq!(join["error"]["code"], "forbidden");
            // History is a read: same rule.
            let code = c.error_code(json!({"op":"history","channel":channel})).await;
            assert_eq!(code, "forbidden");
            continue;
        }
        let publish = c.request(json!({"op":"publish","channel":channel,"text":"hello"})).await;
        assert_eq!(publish["ok"], json!(may_publish), "publish {channel} with {roles:?}: {publish}");
        if !may_publish {
            assert_eq!(publish["error"]["code"], "forbidden");
        }
    }
    // Undeclared channels follow --dynamic-channels deny.
    let mut c = Client::connect(&connect("late", &["guild-7"])).await;
    assert_eq!(c.error_code(json!({"op":"join","channel":"somewhere"})).await, "not_found");
    // REST reads of role-restricted channels are refused.
    assert_eq!(node.http().get("/v1/channels/guild-7/history").await.status, 403);
    assert_eq!(node.http().get("/v1/channels/plaza/history").await.status, 200);
}

#[tokio::test]
async fn access_matrix_in_dev_mode() {
    let file = channels_file("dev");
    let node = TestNode::start(&["--channels", file.to_str().unwrap(), "--dynamic-channels", "deny"]).await;
    let addr = node.addr;
    check_access_matrix(&node, |user, roles| {
        format!("ws://{addr}/v1/ws?user={user}&roles={}", roles.join(","))
    })
    .await;
}

#[tokio::test]
async fn access_matrix_with_jwt_roles() {
    let file = channels_file("jwt");
    let node = TestNode::start(&[
        "--channels",
        file.to_str().unwrap(),
        "--dynamic-channels",
        "deny",
        "--jwt-secret",
        SECRET,
    ])
    .await;
    let addr = node.addr;
    check_access_matrix(&node, |user, roles| {
        format!("ws://{addr}/v1/ws?token={}&roles=guild-7,officer,staff", hs256(&claims(user, roles, 600)))
    })
    .await;
}

#[tokio::test]
async fn rest_publish_admin_token_or_admin_role() {
    let node =
        TestNode::start(&["--jwt-secret", SECRET, "--admin-token", "static-admin-token-0123456789abcdef"])
            .await;
    let http = node.http();
    let path = "/v1/channels/town-1/messages";
    let body = r#"{"text":"maintenance at noon"}"#;
    let post = |auth: String| {
        let http = &http;
        async move { http.request("POST", path, &[("Authorization", &auth)], Some(body)).await }
    };
    assert_eq!(http.request("POST", path, &[], Some(body)).await.status, 401);
    assert_eq!(post("Bearer static-admin-token-0123456789abcdef".into()).await.status, 201);
    let admin = hs256(&claims("backend", &["admin"], 600));
    let r = post(format!("Bearer {admin}")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let player = hs256(&claims("player", &["guild-7"], 600));
    let r = post(format!("Bearer {player}")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "forbidden");
    let expired_admin = hs256(&claims("backend", &["admin"], -3600));
    assert_eq!(post(format!("Bearer {expired_admin}")).await.status, 401);
    assert_eq!(post("Bearer wrong".into()).await.status, 401);
    node.wait_for_metric("shardchat_auth_failures_total{reason=\"forbidden\"} 1").await;
}

#[tokio::test]
async fn connection_attempts_per_ip_are_limited() {
    // Rate 1/s, burst 2: of 10 back-to-back attempts at least some are
    // refused unless the loop takes over 8 seconds (no tight timing).
    let node = TestNode::start(&["--connect-rate", "1", "--connect-burst", "2"]).await;
    let url = node.ws_url("alice");
    let mut limited = 0;
    let mut body = Value::Null;
    for _ in 0..10 {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((mut ws, _)) => {
                let _ = ws.close(None).await;
            }
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 429);
                body = serde_json::from_slice(&resp.body().clone().unwrap_or_default()).unwrap();
                limited += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(limited >= 2, "only {limited} of 10 attempts were limited");
    assert_eq!(body["error"]["code"], "rate_limited");
    node.wait_for_metric(&format!("shardchat_connect_rate_limited_total {limited}")).await;
}

#[tokio::test]
async fn flooding_closes_with_1008_and_counts_it() {
    let node =
        TestNode::start(&["--publish-rate", "1", "--publish-burst", "1", "--flood-close-after", "3"]).await;
    let mut c = node.connect("flooder").await;
    c.join("town-1").await;
    for i in 0..20 {
        c.send_json(json!({"op":"publish","channel":"town-1","text":format!("spam {i}")})).await;
    }
    assert_eq!(c.closed().await, Closed::Code(1008));
    node.wait_for_metric("shardchat_rate_limit_closes_total 1").await;
    node.wait_for_metric("shardchat_disconnects_total{reason=\"flood\"} 1").await;
}

#[tokio::test]
async fn hostile_frames_get_errors_and_the_connection_stays_open() {
    let node = TestNode::start(&[]).await;
    let mut c = node.connect("alice").await;
    c.join("town-1").await;
    let nest = |depth: usize, leaf: &str| format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth));
    let frames = [
        // Past serde_json's recursion limit (128), in a known and an unknown field.
        format!(
            r#"{{"op":"publish","id":1,"channel":"town-1","text":"x","meta":{{"a":{}}}}}"#,
            nest(200, "1")
        ),
        format!(r#"{{"op":"ping","id":2,"junk":{}}}"#, nest(500, "")),
        // Within it, but deeper than `meta` allows.
        format!(
            r#"{{"op":"publish","id":3,"channel":"town-1","text":"x","meta":{{"a":{}}}}}"#,
            nest(60, "1")
        ),
        // Bad channel names, ids, types.
        r#"{"op":"join","id":4,"channel":"bad name"}"#.to_string(),
        format!(r#"{{"op":"join","id":5,"channel":"{}"}}"#, "a".repeat(129)),
        r#"{"op":"join","id":6,"channel":"../../etc"}"#.to_string(),
        r#"{"op":"publish","id":7,"channel":"town-1","text":{"$gt":""}}"#.to_string(),
        r#"{"op":"history","id":8,"channel":"town-1","limit":-1}"#.to_string(),
        r#"{"op":"history","id":9,"channel":"town-1","limit":1e308}"#.to_string(),
        r#"{"op":"join","id":10,"channel":"town-1","since":"99999999999999999999999-1"}"#.to_string(),
        format!(r#"{{"op":"ping","id":"{}"}}"#, "i".repeat(100)),
        "\u{0}\u{1}".to_string(),
        "[]".to_string(),
        "null".to_string(),
    ];
    for f in &frames {
        c.send_raw(tungstenite::Message::text(f.clone())).await;
        let mut v = c.recv().await;
        while v["op"] == "presence" {
            v = c.recv().await;
        }
        assert!(v["op"] == "error" || v["ok"] == json!(false), "{f:.80}: {v}");
        let code = &v["error"]["code"];
        assert!(code == "bad_request" || code == "too_large", "{f:.80}: {v}");
    }
    // Still open and working.
    c.ok(json!({"op":"ping"})).await;
    let id = c.publish("town-1", "still here").await;
    assert!(!id.is_empty());
}
