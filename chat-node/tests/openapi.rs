//! The OpenAPI description against a running node: it is served as
//! committed, and real responses (successes and errors) validate against
//! the schemas it gives for their operation and status.

mod support;

use serde_json::{Value, json};
use support::{Http, TestNode};

const ADMIN: &str = "admin-token-for-tests-0123456789abcdef";
const COMMITTED: &str = include_str!("../../docs/openapi.json");

/// A status and body, as received (or made up to test the check itself).
struct Answer<'a> {
    status: u16,
    body: &'a str,
}

/// The committed description, with every object schema closed
/// (`additionalProperties: false` unless it says otherwise), so that a
/// field the node sends but the description lacks fails validation too.
struct Spec {
    strict: Value,
}

impl Spec {
    fn load() -> Spec {
        let mut strict: Value = serde_json::from_str(COMMITTED).expect("docs/openapi.json is JSON");
        let schemas = strict["components"]["schemas"].as_object_mut().expect("component schemas");
        for schema in schemas.values_mut() {
            close_objects(schema);
        }
        Spec { strict }
    }

    /// The documented response of `method template` with `status`.
    fn response(&self, method: &str, template: &str, status: u16) -> (String, &Value) {
        let op = format!("/paths/{}/{method}", template.replace('~', "~0").replace('/', "~1"));
        assert!(self.strict.pointer(&op).is_some(), "{method} {template} is not documented");
        let pointer = format!("{op}/responses/{status}");
        let response = self
            .strict
            .pointer(&pointer)
            .unwrap_or_else(|| panic!("{method} {template} answered {status}, which is not documented"));
        (pointer, response)
    }

    /// Asserts that `r`, the answer to `method template`, has a documented
    /// status and, when JSON, matches the documented schema.
    fn check(&self, method: &str, template: &str, r: &Answer<'_>) {
        let (pointer, response) = self.response(method, template, r.status);
        let content = response["content"].as_object().expect("documented content");
        let json =
            serde_json::from_str::<Value>(r.body).ok().filter(|_| content.contains_key("application/json"));
        let Some(body) = json else {
            assert!(
                content.keys().any(|k| k.starts_with("text/plain")),
                "{method} {template} {}: not the documented JSON: {}",
                r.status,
                r.body
            );
            return;
        };
        let mut root = self.strict.clone();
        root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        // The operation's schema applies at the root, so that its
        // `#/components/...` references resolve within the description.
        let schema = self.strict.pointer(&format!("{pointer}/content/application~1json/schema"));
        root["allOf"] = json!([schema.expect("a JSON schema for a JSON response")]);
        let validator = jsonschema::draft202012::new(&root).expect("the description compiles as JSON Schema");
        let errors: Vec<String> =
            validator.iter_errors(&body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {}: the body does not match the description:\n{}\nbody: {body}",
            r.status,
            errors.join("\n")
        );
    }
}

fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), json!(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// method, operation, path, headers, body; expected status and code.
type ErrorCase<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>, u16, &'a str);

/// Sends a request and checks its answer against the description.
async fn call(
    spec: &Spec,
    http: &Http,
    method: &str,
    template: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value) {
    let r = http.request(method, path, headers, body).await;
    spec.check(&method.to_lowercase(), template, &Answer { status: r.status, body: &r.body });
    (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_served_description_is_the_committed_file() {
    let node = TestNode::start(&[]).await;
    let r = node.http().get("/v1/openapi.json").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body == COMMITTED,
        "GET /v1/openapi.json differs from docs/openapi.json; regenerate the file with\n\n    \
         cargo run -p chat-node --example openapi > docs/openapi.json\n"
    );
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every documented path is served (not the JSON 404 of unknown endpoints).
    for (template, item) in doc["paths"].as_object().expect("paths") {
        let path = template.replace("{channel}", "town-137").replace("{user}", "alice");
        for method in item.as_object().expect("path item").keys() {
            let r = node.http().request(&method.to_uppercase(), &path, &[], None).await;
            assert!(!r.body.contains("no such endpoint"), "{method} {template} is documented but not served");
        }
    }
}

#[tokio::test]
async fn real_responses_match_the_documented_schemas() {
    let node = TestNode::start(&["--admin-token", ADMIN]).await;
    let spec = Spec::load();
    let http = node.http();
    let admin = [("Authorization", "Bearer admin-token-for-tests-0123456789abcdef")];
    assert_eq!(format!("Bearer {ADMIN}"), admin[0].1);

    let mut alice = node.connect("alice").await;
    alice.join("town-137").await;
    alice
        .ok(json!({"op":"publish","channel":"town-137","text":"hi","meta":{"emote":"wave","n":[1,2]}}))
        .await;

    // Publish: created, then the same nonce again (duplicate).
    let publish = "/v1/channels/{channel}/messages";
    let body = r#"{"text":"server restart in 5 minutes","meta":{"kind":"notice"},"nonce":"restart-1"}"#;
    let (status, first) =
        call(&spec, &http, "POST", publish, "/v1/channels/town-137/messages", &admin, Some(body)).await;
    assert_eq!(status, 201);
    let (status, again) =
        call(&spec, &http, "POST", publish, "/v1/channels/town-137/messages", &admin, Some(body)).await;
    assert_eq!(status, 200);
    assert_eq!(again, json!({"message_id": first["message_id"], "duplicate": true}));
    let from = r#"{"text":"a quest begins","from":"quest-giver"}"#;
    assert_eq!(
        call(&spec, &http, "POST", publish, "/v1/channels/town-137/messages", &admin, Some(from)).await.0,
        201
    );

    // History (messages with and without meta), a page before, members, the list.
    let history = "/v1/channels/{channel}/history";
    let (status, page) = call(&spec, &http, "GET", history, "/v1/channels/town-137/history", &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(3), "{page}");
    let before =
        format!("/v1/channels/town-137/history?limit=1&before={}", first["message_id"].as_str().unwrap());
    let (status, older) = call(&spec, &http, "GET", history, &before, &[], None).await;
    assert_eq!((status, older["messages"][0]["text"].as_str()), (200, Some("hi")));
    let (status, members) = call(
        &spec,
        &http,
        "GET",
        "/v1/channels/{channel}/members",
        "/v1/channels/town-137/members",
        &[],
        None,
    )
    .await;
    assert_eq!((status, members), (200, json!({"members": ["alice"]})));
    assert_eq!(call(&spec, &http, "GET", "/v1/channels", "/v1/channels", &[], None).await.0, 200);

    // A system message to one player: created, duplicate.
    let users = "/v1/users/{user}/messages";
    let dm = r#"{"text":"your guild war starts soon","nonce":"war-1"}"#;
    assert_eq!(call(&spec, &http, "POST", users, "/v1/users/bob/messages", &admin, Some(dm)).await.0, 201);
    assert_eq!(call(&spec, &http, "POST", users, "/v1/users/bob/messages", &admin, Some(dm)).await.0, 200);

    // Errors: each status and body as documented.
    let cases: [ErrorCase; 9] = [
        ("GET", history, "/v1/channels/town-137/history?limit=many", &[], None, 400, "bad_request"),
        ("GET", history, "/v1/channels/bad%20name/history", &[], None, 400, "bad_request"),
        (
            "GET",
            "/v1/channels/{channel}/members",
            "/v1/channels/a%2Fb/members",
            &[],
            None,
            400,
            "bad_request",
        ),
        ("POST", publish, "/v1/channels/town-137/messages", &[], Some(body), 401, "unauthorized"),
        (
            "POST",
            publish,
            "/v1/channels/town-137/messages",
            &[("Authorization", "Bearer nope")],
            Some(body),
            401,
            "unauthorized",
        ),
        (
            "POST",
            publish,
            "/v1/channels/town-137/messages",
            &admin,
            Some(r#"{"text":"x","colour":"red"}"#),
            400,
            "bad_request",
        ),
        ("POST", users, "/v1/users/bad%20user/messages", &admin, Some(dm), 400, "bad_request"),
        ("POST", users, "/v1/users/bob/messages", &[], Some(dm), 401, "unauthorized"),
        ("GET", history, "/v1/channels/town-137/history?before=yesterday", &[], None, 400, "bad_request"),
    ];
    for (method, template, path, headers, body, status, code) in cases {
        let (got, reply) = call(&spec, &http, method, template, path, headers, body).await;
        assert_eq!((got, reply["error"]["code"].as_str()), (status, Some(code)), "{method} {path}: {reply}");
    }
    let long = json!({"text": "x".repeat(2001)}).to_string();
    let (got, reply) =
        call(&spec, &http, "POST", publish, "/v1/channels/town-137/messages", &admin, Some(&long)).await;
    assert_eq!((got, reply["error"]["code"].as_str()), (413, Some("too_large")));

    // Operations endpoints and the WebSocket route answer as documented.
    for template in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(call(&spec, &http, "GET", template, template, &[], None).await.0, 200);
    }
    let (status, _) = call(&spec, &http, "GET", "/v1/ws", "/v1/ws?user=carol", &[], None).await;
    assert_eq!(status, 400, "a plain GET is not a WebSocket handshake");
}

/// A documented refusal on a node that creates no channels on demand.
#[tokio::test]
async fn not_found_for_undeclared_channels_matches_the_description() {
    let node = TestNode::start(&["--dynamic-channels", "deny"]).await;
    let spec = Spec::load();
    let http = node.http();
    for template in ["/v1/channels/{channel}/history", "/v1/channels/{channel}/members"] {
        let path = template.replace("{channel}", "nowhere");
        let (status, reply) = call(&spec, &http, "GET", template, &path, &[], None).await;
        assert_eq!((status, reply["error"]["code"].as_str()), (404, Some("not_found")), "{path}: {reply}");
    }
}

/// The strict check catches a field the description does not list.
#[test]
fn the_schema_check_refuses_undocumented_fields_and_wrong_types() {
    let spec = Spec::load();
    let template = "/v1/channels/{channel}/members";
    let good = r#"{"members":["alice"]}"#;
    spec.check("get", template, &Answer { status: 200, body: good });
    for bad in [r#"{"members":["alice"],"extra":1}"#, r#"{"members":"alice"}"#, r#"{}"#] {
        let r = std::panic::catch_unwind(|| spec.check("get", template, &Answer { status: 200, body: bad }));
        assert!(r.is_err(), "{bad} passed the check");
    }
    let r = std::panic::catch_unwind(|| spec.check("get", template, &Answer { status: 418, body: good }));
    assert!(r.is_err(), "an undocumented status passed the check");
}
