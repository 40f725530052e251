//! A small fake Kubernetes API server that speaks real HTTP, so the real
//! `kube::Client`, watcher, Controller, finalizer helper, event recorder and
//! lease manager run against it unchanged.
//!
//! Supported, for ChatChannels, Pods, Leases and Events in any namespace:
//! list (with `labelSelector`), watch (chunked JSON lines, from a
//! `resourceVersion`, or from "now" after synthetic ADDED events), get,
//! create, patch (JSON patch; merge and strategic merge as RFC 7386 merge;
//! apply as merge plus a small server-side-apply model: a field manager's
//! fields it stops applying are removed, and a non-forced apply that changes
//! a field another manager set is a 409 Conflict), the status subresource
//! (main-resource writes ignore `status`, `/status` writes touch only
//! `status`), generation bumps on spec changes, and delete with finalizers
//! (deletionTimestamp set; the object goes once its finalizers are empty).
//!
//! Not supported (not needed by the operator): PUT, field selectors,
//! pagination tokens, bookmarks, 410 Gone, admission or schema validation.
//!
//! Built to stay out of the way at fleet scale (the fleet benchmark,
//! `operator/examples/fleet_bench.rs`, runs it with 10,000 objects): watch
//! streams read an append-only event log (a slow watcher never misses an
//! event), each event is serialized once for every watcher, requests and
//! connections are counted, and the time spent handling requests is summed
//! so a run can show the server was not the bottleneck.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Static facts about one resource type.
#[derive(Clone, Copy)]
struct Kind {
    api_version: &'static str,
    kind: &'static str,
    status_subresource: bool,
    generation: bool,
}

fn kind_of(prefix: &str, plural: &str) -> Option<Kind> {
    Some(match (prefix, plural) {
        ("chat.shardchat.io/v1alpha1", "chatchannels") => Kind {
            api_version: "chat.shardchat.io/v1alpha1",
            kind: "ChatChannel",
            status_subresource: true,
            generation: true,
        },
        ("v1", "pods") => {
            Kind { api_version: "v1", kind: "Pod", status_subresource: true, generation: false }
        }
        ("coordination.k8s.io/v1", "leases") => Kind {
            api_version: "coordination.k8s.io/v1",
            kind: "Lease",
            status_subresource: false,
            generation: false,
        },
        ("events.k8s.io/v1", "events") => Kind {
            api_version: "events.k8s.io/v1",
            kind: "Event",
            status_subresource: false,
            generation: false,
        },
        _ => return None,
    })
}

type Key = (String, String, String); // (plural, namespace, name)

/// The objects of one kind in one namespace (a range of the ordered map,
/// so a list of ChatChannels does not walk every Event).
fn of_kind<'a>(
    objects: &'a BTreeMap<Key, Value>,
    plural: &'a str,
    namespace: &'a str,
) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
    objects
        .range((plural.to_string(), namespace.to_string(), String::new())..)
        .take_while(move |((p, ns, _), _)| p == plural && ns == namespace)
}

/// One entry of the event log: what a watch stream sends, serialized once.
#[derive(Debug)]
struct WatchEvent {
    rv: u64,
    plural: String,
    namespace: String,
    /// `metadata.labels` of the object (for `labelSelector`).
    labels: Value,
    /// The watch line: `{"type":..,"object":..}` and a newline.
    line: Bytes,
}

impl WatchEvent {
    fn new(rv: u64, plural: &str, namespace: &str, type_: &str, object: &Value) -> WatchEvent {
        WatchEvent {
            rv,
            plural: plural.into(),
            namespace: namespace.into(),
            labels: object["metadata"]["labels"].clone(),
            line: Bytes::from(format!("{}\n", json!({"type": type_, "object": object}))),
        }
    }
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    /// Field ownership: object -> leaf path -> manager.
    owners: HashMap<Key, BTreeMap<String, String>>,
    /// What each manager applied last: object -> manager -> leaf paths.
    applied: HashMap<Key, HashMap<String, BTreeSet<String>>>,
    /// Every change, in resourceVersion order (never trimmed).
    log: Vec<Arc<WatchEvent>>,
    /// Requests by kind: "GET chatchannels", "PATCH chatchannels/status",
    /// "WATCH pods", ...
    requests: BTreeMap<String, u64>,
}

/// Counters of the HTTP side.
#[derive(Default)]
struct Traffic {
    /// Connections accepted, and open right now.
    accepted: AtomicU64,
    open: AtomicU64,
    /// Most connections open at once.
    peak_open: AtomicU64,
    /// Time spent producing responses (watch streams count until their
    /// headers and backlog are ready, not while they wait).
    busy_nanos: AtomicU64,
}

/// What the server has seen so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Requests by kind ("PATCH chatchannels/status", "WATCH pods", ...).
    pub requests: BTreeMap<String, u64>,
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub connections_peak: u64,
    /// Time spent handling requests.
    pub busy: Duration,
}

impl Stats {
    /// Requests of every kind.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
    /// Requests whose kind starts with `prefix` ("PATCH chatchannels").
    pub fn requests_matching(&self, prefix: &str) -> u64 {
        self.requests.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
    }
}

/// Handle on a running fake API server.
#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    /// The newest resourceVersion in the log; watch streams wait on it.
    changed: watch::Sender<u64>,
    traffic: Arc<Traffic>,
    pub addr: SocketAddr,
}

/// A TCP listener that counts connections.
struct CountingListener {
    inner: TcpListener,
    traffic: Arc<Traffic>,
}

/// An accepted connection; dropping it updates the open count.
struct CountedStream {
    inner: TcpStream,
    traffic: Arc<Traffic>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.traffic.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CountedStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let t = &self.traffic;
                    t.accepted.fetch_add(1, Ordering::Relaxed);
                    let open = t.open.fetch_add(1, Ordering::Relaxed) + 1;
                    t.peak_open.fetch_max(open, Ordering::Relaxed);
                    return (CountedStream { inner: stream, traffic: t.clone() }, addr);
                }
                // Out of file descriptors and the like: wait, like axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn status_error(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .unwrap()
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap().to_string()
}

/// Leaf paths of a JSON document (arrays are leaves).
fn leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, val) in m {
                leaves(val, &format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

fn pointer_remove(doc: &mut Value, path: &str) {
    let Some((parent, last)) = path.rsplit_once('/') else { return };
    let last = last.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
        m.remove(&last);
        if m.is_empty() && !parent.is_empty() {
            pointer_remove(doc, parent);
        }
    }
}

/// Paths an apply may set without owning them.
fn identity_path(p: &str) -> bool {
    matches!(p, "/apiVersion" | "/kind" | "/metadata/name" | "/metadata/namespace")
}

fn matches_selector(obj: &Value, selector: Option<&str>) -> bool {
    labels_match(&obj["metadata"]["labels"], selector)
}

fn labels_match(labels: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else { return true };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim_end_matches('!')].as_str() == Some(v.trim_start_matches('=')),
        None => labels.get(term).is_some(),
    })
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), urlencoding_decode(v))
        })
        .collect()
}

fn urlencoding_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Target {
    kind: Kind,
    plural: String,
    namespace: String,
    name: Option<String>,
    status: bool,
}

impl Target {
    /// The target of an in-process call.
    fn of(plural: &str, namespace: &str, name: Option<&str>) -> Result<Target, String> {
        let prefix = match plural {
            "chatchannels" => "chat.shardchat.io/v1alpha1",
            "pods" => "v1",
            "leases" => "coordination.k8s.io/v1",
            "events" => "events.k8s.io/v1",
            other => return Err(format!("unsupported resource {other}")),
        };
        let kind = kind_of(prefix, plural).expect("known kind");
        Ok(Target {
            kind,
            plural: plural.into(),
            namespace: namespace.into(),
            name: name.map(str::to_string),
            status: false,
        })
    }
}

/// The JSON body of a response made by this module (in-process calls).
fn response_json(r: Response) -> Result<Value, String> {
    let status = r.status();
    let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(r.into_body(), usize::MAX))
        .expect("in-process responses have a ready body")
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if status.is_success() { Ok(v) } else { Err(format!("{status}: {}", v["message"])) }
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, plural, name, sub) = match rest {
        ["namespaces", ns, plural] => (*ns, *plural, None, None),
        ["namespaces", ns, plural, name] => (*ns, *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (*ns, *plural, Some(*name), Some(*sub)),
        _ => return None,
    };
    let kind = kind_of(&prefix, plural)?;
    if sub.is_some_and(|s| s != "status" || !kind.status_subresource) {
        return None;
    }
    Some(Target {
        kind,
        plural: plural.to_string(),
        namespace: namespace.to_string(),
        name: name.map(str::to_string),
        status: sub.is_some(),
    })
}

impl FakeApi {
    /// Starts the server on a free loopback port.
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (changed, _) = watch::channel(0);
        let traffic = Arc::new(Traffic::default());
        let api = FakeApi { state: Arc::new(Mutex::new(State::default())), changed, traffic, addr };
        let handler_api = api.clone();
        let app =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let api = handler_api.clone();
                async move {
                    let started = Instant::now();
                    let response = api.handle(method, uri, headers, body).await;
                    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    api.traffic.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
                    response
                }
            });
        let listener = CountingListener { inner: listener, traffic: api.traffic.clone() };
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        api
    }

    /// A kube client for this server.
    pub fn client(&self, namespace: &str) -> kube::Client {
        kube::Client::try_from(self.config(namespace)).unwrap()
    }

    /// The kube client configuration for this server.
    pub fn config(&self, namespace: &str) -> kube::Config {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        config.default_namespace = namespace.to_string();
        config.read_timeout = Some(Duration::from_secs(300));
        config
    }

    /// A kubeconfig file body pointing at this server (for operator
    /// processes: `KUBECONFIG=<file>`).
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: fake\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n",
            self.addr
        )
    }

    /// Requests and connections so far.
    pub fn stats(&self) -> Stats {
        let requests = self.state.lock().unwrap().requests.clone();
        let t = &self.traffic;
        Stats {
            requests,
            connections_accepted: t.accepted.load(Ordering::Relaxed),
            connections_open: t.open.load(Ordering::Relaxed),
            connections_peak: t.peak_open.load(Ordering::Relaxed),
            busy: Duration::from_nanos(t.busy_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Restarts the "most connections open at once" count from now.
    pub fn reset_peak_connections(&self) {
        let open = self.traffic.open.load(Ordering::Relaxed);
        self.traffic.peak_open.store(open, Ordering::Relaxed);
    }

    /// Current object, if any (test inspection without HTTP).
    pub fn object(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(&(plural.into(), namespace.into(), name.into())).cloned()
    }

    /// All objects of one kind in a namespace.
    pub fn objects(&self, plural: &str, namespace: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        of_kind(&st.objects, plural, namespace).map(|(_, v)| v.clone()).collect()
    }

    /// Visits every object of one kind in a namespace without copying it.
    pub fn for_each(&self, plural: &str, namespace: &str, mut f: impl FnMut(&Value)) {
        let st = self.state.lock().unwrap();
        of_kind(&st.objects, plural, namespace).for_each(|(_, v)| f(v));
    }

    /// Creates an object without HTTP (what `kubectl create` would do, not
    /// counted as a request). `plural` is one of the supported resources.
    pub fn create_object(&self, plural: &str, namespace: &str, obj: Value) -> Result<Value, String> {
        let t = Target::of(plural, namespace, None)?;
        response_json(self.create(&t, obj, Some("kubectl".into())))
    }

    /// Deletes an object without HTTP (finalizers honoured).
    pub fn delete_object(&self, plural: &str, namespace: &str, name: &str) -> Result<Value, String> {
        let t = Target::of(plural, namespace, Some(name))?;
        response_json(self.delete(&t, name))
    }

    /// Patches an object (or with `status`, its status subresource) without
    /// HTTP, as a JSON merge patch from field manager `kubectl`.
    pub fn merge_patch_object(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
        status: bool,
        patch: &Value,
    ) -> Result<Value, String> {
        let mut t = Target::of(plural, namespace, Some(name))?;
        t.status = status;
        let q = HashMap::from([("fieldManager".to_string(), "kubectl".to_string())]);
        let body = patch.to_string();
        response_json(self.patch(&t, name, "application/merge-patch+json", body.as_bytes(), &q))
    }

    fn count(&self, method: &Method, t: &Target, watch: bool) {
        let verb = if watch { "WATCH" } else { method.as_str() };
        let sub = if t.status { "/status" } else { "" };
        let key = format!("{verb} {}{sub}", t.plural);
        *self.state.lock().unwrap().requests.entry(key).or_default() += 1;
    }

    async fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let Some(target) = parse_path(uri.path()) else {
            *self.state.lock().unwrap().requests.entry(format!("{method} (unknown)")).or_default() += 1;
            return status_error(StatusCode::NOT_FOUND, "NotFound", format!("no route for {}", uri.path()));
        };
        let q = query_map(&uri);
        let is_watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
        self.count(&method, &target, is_watch && method == Method::GET);
        let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        match (method, &target.name) {
            (Method::GET, None) if is_watch => self.watch(&target, &q),
            (Method::GET, None) => self.list(&target, &q),
            (Method::GET, Some(name)) => match self.object(&target.plural, &target.namespace, name) {
                Some(o) => ok_json(StatusCode::OK, &o),
                None => not_found(&target, name),
            },
            (Method::POST, None) => match serde_json::from_slice::<Value>(&body) {
                Ok(obj) => self.create(&target, obj, q.get("fieldManager").cloned()),
                Err(e) => status_error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            },
            (Method::PATCH, Some(name)) => self.patch(&target, name, &ctype, &body, &q),
            (Method::DELETE, Some(name)) => self.delete(&target, name),
            (m, _) => {
                status_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{m} not supported"))
            }
        }
    }

    fn list(&self, t: &Target, q: &HashMap<String, String>) -> Response {
        let st = self.state.lock().unwrap();
        let items: Vec<&Value> = of_kind(&st.objects, &t.plural, &t.namespace)
            .filter(|(_, o)| matches_selector(o, q.get("labelSelector").map(String::as_str)))
            .map(|(_, o)| o)
            .collect();
        let list = json!({
            "apiVersion": t.kind.api_version,
            "kind": format!("{}List", t.kind.kind),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        });
        ok_json(StatusCode::OK, &list)
    }

    fn watch(&self, t: &Target, q: &HashMap<String, String>) -> Response {
        let selector = q.get("labelSelector").cloned();
        let timeout = q.get("timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(290u64);
        let since: Option<u64> = q.get("resourceVersion").and_then(|s| s.parse().ok()).filter(|rv| *rv > 0);
        let plural = t.plural.clone();
        let namespace = t.namespace.clone();
        let wanted = move |e: &WatchEvent| {
            e.plural == plural && e.namespace == namespace && labels_match(&e.labels, selector.as_deref())
        };
        // Subscribe first: a change made between here and the snapshot below
        // wakes the stream, which then skips what the snapshot already had.
        let mut changed = self.changed.subscribe();
        let (first, mut last_sent) = {
            let st = self.state.lock().unwrap();
            match since {
                Some(rv) => {
                    let from = st.log.partition_point(|e| e.rv <= rv);
                    let lines: Vec<Result<Bytes, Infallible>> =
                        st.log[from..].iter().filter(|e| wanted(e)).map(|e| Ok(e.line.clone())).collect();
                    (lines, st.rv)
                }
                None => {
                    let lines = of_kind(&st.objects, &t.plural, &t.namespace)
                        .map(|((p, ns, _), o)| WatchEvent::new(st.rv, p, ns, "ADDED", o))
                        .filter(|e| wanted(e))
                        .map(|e| Ok(e.line))
                        .collect();
                    (lines, st.rv)
                }
            }
        };
        let state = self.state.clone();
        let live = async_stream_lines(move |tx| async move {
            let deadline = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    r = changed.changed() => if r.is_err() { return },
                }
                let lines: Vec<Bytes> = {
                    let st = state.lock().unwrap();
                    let from = st.log.partition_point(|e| e.rv <= last_sent);
                    let lines = st.log[from..].iter().filter(|e| wanted(e)).map(|e| e.line.clone()).collect();
                    last_sent = st.rv;
                    lines
                };
                for line in lines {
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
            }
        });
        let stream = futures_util::stream::iter(first).chain(live);
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .unwrap()
    }

    fn emit(&self, st: &mut State, plural: &str, namespace: &str, type_: &'static str, object: Value) {
        st.log.push(Arc::new(WatchEvent::new(st.rv, plural, namespace, type_, &object)));
        self.changed.send_replace(st.rv);
    }

    fn bump(st: &mut State, obj: &mut Value) {
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    }

    fn create(&self, t: &Target, mut obj: Value, manager: Option<String>) -> Response {
        let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
            return status_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name is required".into(),
            );
        };
        let key = (t.plural.clone(), t.namespace.clone(), name.clone());
        let mut st = self.state.lock().unwrap();
        if st.objects.contains_key(&key) {
            return status_error(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} {name:?} already exists", t.plural),
            );
        }
        st.uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012}", st.uid);
        obj["apiVersion"] = json!(t.kind.api_version);
        obj["kind"] = json!(t.kind.kind);
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("namespace".into(), json!(t.namespace));
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("deletionTimestamp");
        if t.kind.generation {
            meta.insert("generation".into(), json!(1));
        }
        if t.kind.status_subresource && t.plural != "pods" {
            obj.as_object_mut().unwrap().remove("status");
        }
        Self::bump(&mut st, &mut obj);
        if let Some(m) = manager {
            let mut l = BTreeMap::new();
            leaves(&obj, "", &mut l);
            st.owners.insert(key.clone(), l.into_keys().map(|p| (p, m.clone())).collect());
        }
        st.objects.insert(key, obj.clone());
        self.emit(&mut st, &t.plural, &t.namespace, "ADDED", obj.clone());
        ok_json(StatusCode::CREATED, &obj)
    }

    fn patch(
        &self,
        t: &Target,
        name: &str,
        ctype: &str,
        body: &[u8],
        q: &HashMap<String, String>,
    ) -> Response {
        let key = (t.plural.clone(), t.namespace.clone(), name.to_string());
        let manager = q.get("fieldManager").cloned().unwrap_or_else(|| "unknown".into());
        let force = q.get("force").is_some_and(|f| f == "true");
        let is_apply = ctype.starts_with("application/apply-patch");
        let mut st = self.state.lock().unwrap();
        let existing = st.objects.get(&key).cloned();
        let Some(old) = existing.or_else(|| {
            is_apply.then(
                || json!({"apiVersion": t.kind.api_version, "kind": t.kind.kind, "metadata": {"name": name}}),
            )
        }) else {
            return not_found(t, name);
        };
        let creating = !st.objects.contains_key(&key);
        let mut new = old.clone();
        let patch_value: Value = if ctype.starts_with("application/json-patch") {
            let ops: json_patch::Patch = match serde_json::from_slice(body) {
                Ok(p) => p,
                Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            };
            // Like the real server: a `test` of null passes on a missing path.
            let ops: Vec<_> = ops
                .0
                .into_iter()
                .filter(|op| match op {
                    json_patch::PatchOperation::Test(t) => {
                        !(t.value.is_null() && new.pointer(t.path.as_str()).is_none())
                    }
                    _ => true,
                })
                .collect();
            if let Err(e) = json_patch::patch(&mut new, &ops) {
                return status_error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("json patch: {e}"));
            }
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(v) => v,
                Err(e) => return status_error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
            }
        };
        if is_apply {
            let mut applied = BTreeMap::new();
            leaves(&patch_value, "", &mut applied);
            applied.retain(|p, _| !identity_path(p));
            let owners = st.owners.get(&key).cloned().unwrap_or_default();
            if !force {
                let mut current = BTreeMap::new();
                leaves(&old, "", &mut current);
                for (p, v) in &applied {
                    if let (Some(cur), Some(owner)) = (current.get(p), owners.get(p))
                        && cur != v
                        && *owner != manager
                    {
                        return status_error(
                            StatusCode::CONFLICT,
                            "Conflict",
                            format!("Apply failed with 1 conflict: conflict with {owner:?}: {p}"),
                        );
                    }
                }
            }
            // Fields this manager applied before and no longer applies go.
            let before = st.applied.get(&key).and_then(|m| m.get(&manager)).cloned().unwrap_or_default();
            for p in before.iter().filter(|p| !applied.contains_key(*p)) {
                if owners.get(p) == Some(&manager) {
                    pointer_remove(&mut new, p);
                }
            }
            json_patch::merge(&mut new, &patch_value);
            st.applied
                .entry(key.clone())
                .or_default()
                .insert(manager.clone(), applied.keys().cloned().collect());
        } else if !patch_value.is_null() {
            // merge and strategic merge
            json_patch::merge(&mut new, &patch_value);
        }
        // Subresource rules.
        if t.kind.status_subresource {
            if t.status {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        new.as_object_mut().unwrap().remove("status");
                    }
                }
            } else if t.plural != "pods" {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().unwrap().remove("status");
                    }
                }
            }
        }
        // Immutable metadata.
        for f in ["uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "generation"] {
            match old["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        new["apiVersion"] = json!(t.kind.api_version);
        new["kind"] = json!(t.kind.kind);
        if creating {
            drop(st);
            return self.create(t, new, Some(manager));
        }
        // Ownership of changed leaves.
        let mut before = BTreeMap::new();
        leaves(&old, "", &mut before);
        let mut after = BTreeMap::new();
        leaves(&new, "", &mut after);
        {
            let owners = st.owners.entry(key.clone()).or_default();
            owners.retain(|p, _| after.contains_key(p));
            for (p, v) in &after {
                if before.get(p) != Some(v) {
                    owners.insert(p.clone(), manager.clone());
                }
            }
        }
        let spec_changed = old.get("spec") != new.get("spec");
        if new == old {
            return ok_json(StatusCode::OK, &old);
        }
        if t.kind.generation && spec_changed {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        Self::bump(&mut st, &mut new);
        self.store_or_finalize(&mut st, &key, new.clone());
        ok_json(StatusCode::OK, &new)
    }

    /// Stores `obj`, or removes it if it is being deleted and has no
    /// finalizers left.
    fn store_or_finalize(&self, st: &mut State, key: &Key, obj: Value) {
        let done = obj["metadata"].get("deletionTimestamp").is_some()
            && obj["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
        if done {
            st.objects.remove(key);
            st.owners.remove(key);
            st.applied.remove(key);
            self.emit(st, &key.0, &key.1, "DELETED", obj);
        } else {
            st.objects.insert(key.clone(), obj.clone());
            self.emit(st, &key.0, &key.1, "MODIFIED", obj);
        }
    }

    fn delete(&self, t: &Target, name: &str) -> Response {
        let key = (t.plural.clone(), t.namespace.clone(), name.to_string());
        let mut st = self.state.lock().unwrap();
        let Some(mut obj) = st.objects.get(&key).cloned() else { return not_found(t, name) };
        if obj["metadata"].get("deletionTimestamp").is_none() {
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        }
        Self::bump(&mut st, &mut obj);
        self.store_or_finalize(&mut st, &key, obj.clone());
        ok_json(StatusCode::OK, &obj)
    }
}

fn not_found(t: &Target, name: &str) -> Response {
    status_error(StatusCode::NOT_FOUND, "NotFound", format!("{} {name:?} not found", t.plural))
}

/// A stream fed by a task through an mpsc channel.
fn async_stream_lines<F, Fut>(f: F) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}
