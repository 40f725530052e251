//! Protocol conformance vectors (docs/protocol/conformance/*.json) played
//! against a real node over real WebSockets. Every vector gets a node of its
//! own, started with the vector's `node_flags`; a failing vector is reported
//! by name with the step that failed. The format is defined in
//! docs/protocol/conformance/README.md; this runner is its reference.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use support::TestNode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{self, Message};

/// How long one expectation waits for its frame or close.
const WAIT: Duration = Duration::from_secs(5);

type Ws = shardchat_tests::client::Ws;
type Vars = HashMap<String, Value>;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol/conformance")
}

/// Every vector file, sorted by name (the schema is not a vector file).
fn vector_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(vectors_dir())
        .expect("docs/protocol/conformance exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".json") && !name.ends_with(".schema.json")
        })
        .collect();
    files.sort();
    files
}

struct Vector {
    file: String,
    name: String,
    flags: Vec<String>,
    steps: Vec<Value>,
}

fn load_vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    for path in vector_files() {
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {file}: {e}"));
        let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        let doc = doc.as_object().unwrap_or_else(|| panic!("{file}: not an object"));
        for key in doc.keys() {
            assert!(
                ["$schema", "area", "description", "vectors"].contains(&key.as_str()),
                "{file}: unknown key {key:?}"
            );
        }
        let vectors =
            doc.get("vectors").and_then(Value::as_array).unwrap_or_else(|| panic!("{file}: no `vectors`"));
        assert!(!vectors.is_empty(), "{file}: no vectors");
        for v in vectors {
            let v = v.as_object().unwrap_or_else(|| panic!("{file}: a vector is not an object"));
            for key in v.keys() {
                assert!(
                    ["name", "description", "node_flags", "steps"].contains(&key.as_str()),
                    "{file}: unknown vector key {key:?}"
                );
            }
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{file}: vector without name"));
            let flags = v
                .get("node_flags")
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("{name}: no node_flags"))
                .iter()
                .map(|f| f.as_str().unwrap_or_else(|| panic!("{name}: node flag not a string")).to_string())
                .collect();
            let steps = v
                .get("steps")
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("{name}: no steps"))
                .clone();
            out.push(Vector { file: file.clone(), name: name.to_string(), flags, steps });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_vectors_pass_against_a_real_node() {
    let vectors = load_vectors();
    assert!(vectors.len() >= 30, "only {} vectors found", vectors.len());
    let mut names = HashSet::new();
    for v in &vectors {
        assert!(names.insert(v.name.clone()), "vector name {:?} is used twice", v.name);
    }
    let mut failures = Vec::new();
    for v in &vectors {
        if let Err(e) = run_vector(v).await {
            failures.push(format!("{} ({}): {e}", v.name, v.file));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} conformance vectors failed:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
    println!("{} conformance vectors passed", vectors.len());
}

async fn run_vector(v: &Vector) -> Result<(), String> {
    let flags: Vec<&str> = v.flags.iter().map(String::as_str).collect();
    let mut node = TestNode::start(&flags).await;
    let mut run = Run { clients: BTreeMap::new(), vars: Vars::new() };
    let mut result = Ok(());
    for (i, step) in v.steps.iter().enumerate() {
        if let Err(e) = run.step(&mut node, step).await {
            result = Err(format!("step {} {}: {e}", i + 1, compact(step, 300)));
            break;
        }
    }
    drop(run);
    node.shutdown().await;
    result
}

struct Run {
    clients: BTreeMap<String, Ws>,
    vars: Vars,
}

const ACTIONS: [&str; 9] = [
    "connect",
    "send",
    "send_text",
    "send_raw",
    "expect",
    "expect_unordered",
    "expect_close",
    "close",
    "shutdown_node",
];

impl Run {
    async fn step(&mut self, node: &mut TestNode, step: &Value) -> Result<(), String> {
        let obj = step.as_object().ok_or("a step must be an object")?;
        let actions: Vec<&str> = obj.keys().map(String::as_str).filter(|k| ACTIONS.contains(k)).collect();
        for k in obj.keys() {
            if !ACTIONS.contains(&k.as_str()) && k != "client" && k != "comment" {
                return Err(format!("bad vector: unknown step key {k:?}"));
            }
        }
        let [action] = actions[..] else { return Err("bad vector: a step needs exactly one action".into()) };
        let arg = &obj[action];
        if action == "shutdown_node" {
            node.begin_shutdown();
            return Ok(());
        }
        let client =
            obj.get("client").and_then(Value::as_str).ok_or("bad vector: the step names no client")?;
        if action == "connect" {
            if self.clients.contains_key(client) {
                return Err(format!("bad vector: client {client} is already connected"));
            }
            if let Some(ws) = connect(node, arg, &mut self.vars).await? {
                self.clients.insert(client.to_string(), ws);
            }
            return Ok(());
        }
        let ws = self
            .clients
            .get_mut(client)
            .ok_or_else(|| format!("bad vector: client {client} is not connected"))?;
        match action {
            "send" => {
                let frame = substitute(arg, &self.vars)?;
                ws.send(Message::text(frame.to_string())).await.map_err(|e| format!("send failed: {e}"))
            }
            "send_text" => {
                let text = arg.as_str().ok_or("bad vector: send_text takes a string")?;
                ws.send(Message::text(text)).await.map_err(|e| format!("send failed: {e}"))
            }
            "send_raw" => {
                let opcode = match arg.get("opcode").and_then(Value::as_str) {
                    Some("text") => OpCode::Data(Data::Text),
                    Some("binary") => OpCode::Data(Data::Binary),
                    _ => return Err("bad vector: send_raw needs opcode text or binary".into()),
                };
                let bytes =
                    unhex(arg.get("hex").and_then(Value::as_str).ok_or("bad vector: send_raw needs hex")?)?;
                let frame = Frame::message(bytes, opcode, true);
                ws.send(Message::Frame(frame)).await.map_err(|e| format!("send failed: {e}"))
            }
            "expect" => {
                let got = next_frame(ws).await?;
                matches(arg, &got, &mut self.vars, "$")
                    .map_err(|e| format!("received {}: {e}", compact(&got, 600)))
            }
            "expect_unordered" => {
                let shapes = arg.as_array().ok_or("bad vector: expect_unordered takes an array")?;
                let mut got = Vec::with_capacity(shapes.len());
                for _ in shapes {
                    got.push(next_frame(ws).await.map_err(|e| {
                        format!(
                            "{e} (after {} of {} frames: {})",
                            got.len(),
                            shapes.len(),
                            compact(&Value::from(got.clone()), 600)
                        )
                    })?);
                }
                match assign(shapes, &got, &self.vars) {
                    Some(vars) => {
                        self.vars = vars;
                        Ok(())
                    }
                    None => Err(format!(
                        "the frames {} do not match the shapes in any order",
                        compact(&Value::from(got), 900)
                    )),
                }
            }
            "expect_close" => {
                let want =
                    arg.get("code").and_then(Value::as_u64).ok_or("bad vector: expect_close needs a code")?;
                let code = next_close(ws).await?;
                if code == Some(want) {
                    Ok(())
                } else {
                    Err(format!("closed with {code:?}, expected {want}"))
                }
            }
            "close" => {
                let code = arg.get("code").and_then(Value::as_u64).unwrap_or(1000);
                let code = u16::try_from(code).map_err(|_| "bad vector: close code")?;
                let frame = CloseFrame { code: CloseCode::from(code), reason: "".into() };
                let _ = ws.close(Some(frame)).await;
                // Wait for the server's close (the end of the handshake).
                let _ =
                    tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
                self.clients.remove(client);
                Ok(())
            }
            _ => unreachable!("actions are checked above"),
        }
    }
}

/// Opens a connection as the step says; `None` when it was (as expected) refused.
async fn connect(node: &TestNode, spec: &Value, vars: &mut Vars) -> Result<Option<Ws>, String> {
    let spec = spec.as_object().ok_or("bad vector: connect takes an object")?;
    for k in spec.keys() {
        if !["user", "roles", "query", "headers", "protocols", "expect_refused", "expect_protocol"]
            .contains(&k.as_str())
        {
            return Err(format!("bad vector: unknown connect key {k:?}"));
        }
    }
    let mut query = Vec::new();
    if let Some(user) = spec.get("user").and_then(Value::as_str) {
        query.push(format!("user={user}"));
    }
    if let Some(roles) = spec.get("roles").and_then(Value::as_str) {
        query.push(format!("roles={roles}"));
    }
    if let Some(q) = spec.get("query").and_then(Value::as_str) {
        query.push(q.to_string());
    }
    let mut url = format!("ws://{}/v1/ws", node.addr);
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let mut request = url.as_str().into_client_request().map_err(|e| format!("bad url {url}: {e}"))?;
    if let Some(headers) = spec.get("headers").and_then(Value::as_object) {
        for (k, v) in headers {
            let v = v.as_str().ok_or("bad vector: header values are strings")?;
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("header {k}: {e}"))?;
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?);
        }
    }
    if let Some(protocols) = spec.get("protocols").and_then(Value::as_array) {
        let list: Vec<&str> = protocols.iter().filter_map(Value::as_str).collect();
        let value = HeaderValue::from_str(&list.join(", ")).map_err(|e| format!("protocols: {e}"))?;
        request.headers_mut().insert("sec-websocket-protocol", value);
    }
    let result = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| "connecting timed out".to_string())?;
    match (result, spec.get("expect_refused")) {
        (Ok((ws, response)), None) => {
            if let Some(want) = spec.get("expect_protocol") {
                let got = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
                let got = got.map(Value::from).unwrap_or(Value::Null);
                matches(want, &got, vars, "protocol")
                    .map_err(|e| format!("selected subprotocol {got}: {e}"))?;
            }
            Ok(Some(ws))
        }
        (Ok(_), Some(_)) => Err("the upgrade succeeded, expected a refusal".into()),
        (Err(tungstenite::Error::Http(response)), Some(refused)) => {
            let want = refused
                .get("status")
                .and_then(Value::as_u64)
                .ok_or("bad vector: expect_refused needs status")?;
            let status = u64::from(response.status().as_u16());
            if status != want {
                return Err(format!("refused with HTTP {status}, expected {want}"));
            }
            if let Some(shape) = refused.get("body") {
                let body = response.body().as_deref().unwrap_or_default();
                let body: Value = serde_json::from_slice(body).map_err(|e| {
                    format!("refusal body is not JSON ({e}): {}", String::from_utf8_lossy(body))
                })?;
                matches(shape, &body, vars, "body")
                    .map_err(|e| format!("refusal body {}: {e}", compact(&body, 400)))?;
            }
            Ok(None)
        }
        (Err(e), _) => Err(format!("connecting failed: {e}")),
    }
}

/// The next data frame, as JSON (pings and pongs are skipped).
async fn next_frame(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .map_err(|_| format!("no frame within {WAIT:?}"))?
            .ok_or("the connection ended")?
            .map_err(|e| format!("the connection failed: {e}"))?;
        match m {
            Message::Text(t) => return serde_json::from_str(&t).map_err(|e| format!("not JSON ({e}): {t}")),
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(c) => return Err(format!("the server closed the connection ({c:?})")),
            other => return Err(format!("unexpected frame {other:?}")),
        }
    }
}

/// Reads until the server's close frame; its code (`None`: no close frame).
async fn next_close(ws: &mut Ws) -> Result<Option<u64>, String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(format!("no close within {WAIT:?}")),
            Ok(Some(Ok(Message::Close(Some(f))))) => return Ok(Some(u64::from(u16::from(f.code)))),
            Ok(Some(Ok(Message::Close(None))) | None | Some(Err(_))) => return Ok(None),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("bad vector: odd hex length".into());
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).map_err(|_| "bad vector: hex is not ASCII".to_string())?;
            u8::from_str_radix(pair, 16).map_err(|e| format!("bad vector: hex {pair:?}: {e}"))
        })
        .collect()
}

fn compact(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.len() <= max {
        return s;
    }
    let cut = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}…", &s[..cut])
}

fn is_operator(m: &Map<String, Value>) -> bool {
    m.keys().any(|k| k.starts_with('$'))
}

/// A frame to send with `{"$var": name}` and `{"$repeat": s, "times": n}` replaced.
fn substitute(v: &Value, vars: &Vars) -> Result<Value, String> {
    match v {
        Value::Object(m) if is_operator(m) => {
            if let Some(name) = m.get("$var").and_then(Value::as_str) {
                return vars.get(name).cloned().ok_or_else(|| format!("bad vector: ${name} is not captured"));
            }
            if let (Some(s), Some(n)) =
                (m.get("$repeat").and_then(Value::as_str), m.get("times").and_then(Value::as_u64))
            {
                return Ok(Value::from(s.repeat(usize::try_from(n).map_err(|_| "bad vector: times")?)));
            }
            Err(format!("bad vector: unknown substitution {}", compact(v, 200)))
        }
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), substitute(v, vars)?)))
            .collect::<Result<Map<_, _>, String>>()
            .map(Value::Object),
        Value::Array(a) => {
            a.iter().map(|v| substitute(v, vars)).collect::<Result<Vec<_>, _>>().map(Value::Array)
        }
        other => Ok(other.clone()),
    }
}

/// An assignment of `frames` (in arrival order) to distinct `shapes` under
/// which each frame matches its shape; the variables it captures.
fn assign(shapes: &[Value], frames: &[Value], vars: &Vars) -> Option<Vars> {
    fn go(shapes: &[Value], used: &mut [bool], frames: &[Value], vars: &Vars) -> Option<Vars> {
        let Some((frame, rest)) = frames.split_first() else { return Some(vars.clone()) };
        for i in 0..shapes.len() {
            if used[i] {
                continue;
            }
            let mut attempt = vars.clone();
            if matches(&shapes[i], frame, &mut attempt, "$").is_ok() {
                used[i] = true;
                if let Some(done) = go(shapes, used, rest, &attempt) {
                    return Some(done);
                }
                used[i] = false;
            }
        }
        None
    }
    go(shapes, &mut vec![false; shapes.len()], frames, vars)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `actual` has the shape `shape` (see the README); `path` names
/// the place for error messages.
fn matches(shape: &Value, actual: &Value, vars: &mut Vars, path: &str) -> Result<(), String> {
    match shape {
        Value::Object(m) if is_operator(m) => {
            for k in m.keys() {
                if !["$type", "$pattern", "$capture", "$var"].contains(&k.as_str()) {
                    return Err(format!("bad vector: unknown operator {k} at {path}"));
                }
            }
            if let Some(t) = m.get("$type").and_then(Value::as_str) {
                let got = type_name(actual);
                let ok = got == t || (t == "number" && got == "integer");
                if !ok {
                    return Err(format!("{path}: expected a {t}, got {}", compact(actual, 100)));
                }
            }
            if let Some(p) = m.get("$pattern").and_then(Value::as_str) {
                let re = regex::Regex::new(p).map_err(|e| format!("bad vector: pattern {p}: {e}"))?;
                match actual.as_str() {
                    Some(s) if re.is_match(s) => {}
                    _ => return Err(format!("{path}: {} does not match /{p}/", compact(actual, 100))),
                }
            }
            if let Some(name) = m.get("$var").and_then(Value::as_str) {
                let want = vars.get(name).ok_or_else(|| format!("bad vector: ${name} is not captured"))?;
                if !same(want, actual) {
                    return Err(format!("{path}: expected ${name} = {want}, got {}", compact(actual, 100)));
                }
            }
            if let Some(name) = m.get("$capture").and_then(Value::as_str) {
                match vars.get(name) {
                    Some(bound) if !same(bound, actual) => {
                        return Err(format!(
                            "{path}: expected ${name} = {bound}, got {}",
                            compact(actual, 100)
                        ));
                    }
                    Some(_) => {}
                    None => {
                        vars.insert(name.to_string(), actual.clone());
                    }
                }
            }
            Ok(())
        }
        Value::Object(m) => {
            let Some(a) = actual.as_object() else {
                return Err(format!("{path}: expected an object, got {}", compact(actual, 100)));
            };
            for k in a.keys() {
                if !m.contains_key(k) {
                    return Err(format!("{path}: unexpected key {k:?}"));
                }
            }
            for (k, s) in m {
                let optional = s.as_object().and_then(|o| o.get("$optional"));
                match (a.get(k), optional) {
                    (Some(v), Some(inner)) => matches(inner, v, vars, &format!("{path}.{k}"))?,
                    (Some(v), None) => matches(s, v, vars, &format!("{path}.{k}"))?,
                    (None, Some(_)) => {}
                    (None, None) => return Err(format!("{path}: missing key {k:?}")),
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            let Some(a) = actual.as_array() else {
                return Err(format!("{path}: expected an array, got {}", compact(actual, 100)));
            };
            if a.len() != items.len() {
                return Err(format!("{path}: expected {} items, got {}", items.len(), a.len()));
            }
            for (i, (s, v)) in items.iter().zip(a).enumerate() {
                matches(s, v, vars, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        literal => {
            if same(literal, actual) {
                Ok(())
            } else {
                Err(format!("{path}: expected {literal}, got {}", compact(actual, 100)))
            }
        }
    }
}

/// JSON equality with numbers compared by value (1 == 1.0).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
