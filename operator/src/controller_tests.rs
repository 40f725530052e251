//! Reconcile scenarios against a mocked Kubernetes API (tower-test) and the
//! in-memory store: every request the reconciler sends is recorded and
//! asserted on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::claims::Claims;
use crate::config_writer::ConfigWriter;
use crate::controller::{Context, Error, Hints, RETRY, jittered, reconcile};
use crate::crd::{ChatChannel, DeletionPolicy, FINALIZER, PAUSE_ANNOTATION, RetentionSpec};
use crate::events::Events;
use crate::members::Members;
use crate::metrics::Metrics;
use crate::planner::tests::cc;
use crate::ring::Ring;
use crate::ring_manager::RingView;
use crate::store::{MemoryData, Store};

/// One request the reconciler made.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

struct Harness {
    ctx: Arc<Context>,
    calls: Arc<Mutex<Vec<Call>>>,
    redis: Arc<Mutex<MemoryData>>,
    ring_tx: watch::Sender<RingView>,
}

fn ring(epoch: u64, n: usize) -> Arc<Ring> {
    Arc::new(Ring::new(epoch, crate::ring::DEFAULT_VNODES, (0..n).map(|i| format!("chat-node-{i}"))).unwrap())
}

/// The mock API server: answers every PATCH of a ChatChannel with `obj`
/// (what the reconciler does not look at) and echoes Event creations.
fn harness(objects: &[&ChatChannel], ring: Option<Arc<Ring>>) -> Harness {
    let (service, calls) = mock_api();
    harness_with_view(objects, ring.map_or(RingView::NoNodes, RingView::Ready), service, calls)
}

/// A harness whose ring manager could not read Redis.
fn harness_ring_unknown(objects: &[&ChatChannel]) -> Harness {
    let (service, calls) = mock_api();
    harness_with_view(objects, RingView::Unknown { error: "Timeout Error".into() }, service, calls)
}

fn mock_api() -> (MockService, Arc<Mutex<Vec<Call>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().to_string();
            let content_type = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value =
                if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
            recorded.lock().unwrap().push(Call {
                method: method.clone(),
                path: path.clone(),
                content_type,
                body: body.clone(),
            });
            let reply = if path.contains("/events") && method == "PATCH" {
                json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "x"},
                       "eventTime": "2026-01-01T00:00:00.000000Z"})
            } else if path.contains("/events") {
                body
            } else {
                // Enough of a ChatChannel for the client to decode.
                json!({"apiVersion": "chat.shardchat.io/v1alpha1", "kind": "ChatChannel",
                       "metadata": {"name": "x", "namespace": "games"}, "spec": {}})
            };
            send.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
    });
    (service, calls)
}

type MockService = tower_test::mock::Mock<Request<Body>, Response<Body>>;

fn harness_with_view(
    objects: &[&ChatChannel],
    view: RingView,
    service: MockService,
    calls: Arc<Mutex<Vec<Call>>>,
) -> Harness {
    let client = Client::new(service, "games");
    let (store, redis) = Store::memory();
    let claims = Arc::new(Claims::default());
    claims.apply(&watcher::Event::Init);
    for o in objects {
        claims.apply(&watcher::Event::InitApply((*o).clone()));
    }
    claims.apply(&watcher::Event::InitDone);
    let (configs, writer_task) = ConfigWriter::new(store.clone());
    tokio::spawn(writer_task);
    let (ring_tx, ring_rx) = watch::channel(view);
    let ctx = Arc::new(Context {
        client: client.clone(),
        namespace: "games".into(),
        store,
        configs,
        claims,
        ring: ring_rx,
        events: Events::new(client, "chat-operator", "op-0"),
        members: Arc::new(Members::default()),
        metrics: Arc::new(Metrics::new()),
        requeue: Duration::from_secs(60),
        hints: Hints {
            node_selector: "app.kubernetes.io/name=chat-node".into(),
            ring_debounce: Duration::from_secs(10),
        },
    });
    Harness { ctx, calls, redis, ring_tx }
}

impl Harness {
    async fn reconcile(&self, obj: &ChatChannel) -> Result<Action, Error> {
        reconcile(Arc::new(obj.clone()), self.ctx.clone()).await
    }
    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
    fn status_patches(calls: &[Call]) -> Vec<&Call> {
        calls.iter().filter(|c| c.method == "PATCH" && c.path.contains("/status?")).collect()
    }
    fn events(calls: &[Call]) -> Vec<&Call> {
        calls.iter().filter(|c| c.method == "POST" && c.path.contains("/events")).collect()
    }
}

fn with_finalizer(mut c: ChatChannel) -> ChatChannel {
    c.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    c
}

/// Applies the status of a recorded status patch to `obj` (what the API
/// server would store).
fn apply_status(obj: &mut ChatChannel, patch: &Call) {
    obj.status = Some(serde_json::from_value(patch.body["status"].clone()).unwrap());
}

fn deleting(mut c: ChatChannel, policy: DeletionPolicy) -> ChatChannel {
    c.spec.deletion_policy = policy;
    c.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    c
}

#[tokio::test]
async fn finalizer_is_added_first_then_the_same_reconcile_publishes() {
    let obj = cc("town-137", 0, None);
    let h = harness(&[&obj], Some(ring(1, 3)));
    let action = h.reconcile(&obj).await.unwrap();
    assert_eq!(action, Action::requeue(jittered(Duration::from_secs(60), "town-137")));
    let calls = h.take_calls();
    let c = &calls[0];
    assert_eq!(c.method, "PATCH");
    assert!(c.path.starts_with("/apis/chat.shardchat.io/v1alpha1/namespaces/games/chatchannels/town-137?"));
    assert_eq!(c.content_type, "application/json-patch+json");
    assert_eq!(
        c.body,
        json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
               {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
    );
    // Then status and event, without waiting for another reconcile.
    assert_eq!(Harness::status_patches(&calls).len(), 1, "{calls:#?}");
    assert_eq!(Harness::events(&calls).len(), 1, "{calls:#?}");
    assert!(h.redis.lock().unwrap().channels.contains_key("town-137"));
}

#[tokio::test]
async fn a_failed_finalizer_patch_publishes_nothing() {
    let obj = cc("town-137", 0, None);
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((_req, send)) = handle.next_request().await {
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503,
                              "reason": "ServiceUnavailable", "message": "down"});
            send.send_response(
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    let h =
        harness_with_view(&[&obj], RingView::Ready(ring(1, 3)), service, Arc::new(Mutex::new(Vec::new())));
    assert_eq!(h.reconcile(&obj).await.unwrap_err().reason(), "KubeApi");
    assert!(h.redis.lock().unwrap().channels.is_empty());
}

#[tokio::test]
async fn apply_publishes_config_and_patches_status_with_the_owner() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    obj.spec.retention = Some(RetentionSpec { max_messages: Some(50), max_age_seconds: Some(600) });
    let r = ring(4, 3);
    let owner = r.owner("town-137").unwrap().to_string();
    let h = harness(&[&obj], Some(r));
    assert_eq!(
        h.reconcile(&obj).await.unwrap(),
        Action::requeue(jittered(Duration::from_secs(60), "town-137"))
    );

    {
        let redis = h.redis.lock().unwrap();
        assert_eq!(
            redis.channels.get("town-137").map(String::as_str),
            Some(r#"{"name":"town-137","retention":{"maxMessages":50,"maxAgeSeconds":600},"access":{}}"#)
        );
        assert_eq!(redis.version, 1);
    }
    let calls = h.take_calls();
    let patches = Harness::status_patches(&calls);
    assert_eq!(patches.len(), 1, "{calls:#?}");
    let p = patches[0];
    assert!(p.path.contains("fieldManager=chat-operator") && p.path.contains("force=true"), "{}", p.path);
    assert_eq!(p.content_type, "application/apply-patch+yaml");
    let status = &p.body["status"];
    assert_eq!(p.body["apiVersion"], "chat.shardchat.io/v1alpha1");
    assert_eq!(p.body["kind"], "ChatChannel");
    assert_eq!(status["node"], owner.as_str());
    assert_eq!(status["ringEpoch"], 4);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["channel"], "town-137");
    let cond = &status["conditions"][0];
    assert_eq!((cond["type"].as_str(), cond["status"].as_str()), (Some("Ready"), Some("True")));
    assert_eq!(cond["reason"], "Assigned");
    let events = Harness::events(&calls);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body["reason"], "Assigned");
    assert_eq!(events[0].body["type"], "Normal");
    assert_eq!(h.ctx.metrics.channels_per_node.with_label_values(&[owner.as_str()]).get(), 1);

    // Second pass with the stored status: nothing to write, no event,
    // no config version bump.
    apply_status(&mut obj, p);
    h.reconcile(&obj).await.unwrap();
    let calls = h.take_calls();
    assert!(calls.is_empty(), "{calls:#?}");
    assert_eq!(h.redis.lock().unwrap().version, 1);
}

#[tokio::test]
async fn editing_the_spec_republishes_and_bumps_the_version() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    let h = harness(&[&obj], Some(ring(1, 3)));
    h.reconcile(&obj).await.unwrap();
    let calls = h.take_calls();
    apply_status(&mut obj, Harness::status_patches(&calls)[0]);
    obj.spec.retention = Some(RetentionSpec { max_messages: Some(10), max_age_seconds: None });
    obj.metadata.generation = Some(2);
    h.reconcile(&obj).await.unwrap();
    let redis = h.redis.lock().unwrap();
    assert_eq!(redis.version, 2);
    assert!(redis.channels["town-137"].contains(r#""maxMessages":10,"#));
    let calls = h.take_calls();
    let p = Harness::status_patches(&calls);
    assert_eq!(p[0].body["status"]["observedGeneration"], 2);
    assert!(Harness::events(&calls).is_empty(), "same owner and reason: no event");
}

#[tokio::test]
async fn periodic_requeue_repairs_a_config_deleted_by_hand() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    let h = harness(&[&obj], Some(ring(1, 3)));
    h.reconcile(&obj).await.unwrap();
    apply_status(&mut obj, Harness::status_patches(&h.take_calls())[0]);
    h.redis.lock().unwrap().channels.clear();
    h.reconcile(&obj).await.unwrap();
    let redis = h.redis.lock().unwrap();
    assert!(redis.channels.contains_key("town-137"));
    assert_eq!(redis.version, 2);
}

#[tokio::test]
async fn ring_change_moves_the_owner_with_a_reassigned_event() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    let three = ring(1, 3);
    let h = harness(&[&obj], Some(three.clone()));
    h.reconcile(&obj).await.unwrap();
    apply_status(&mut obj, Harness::status_patches(&h.take_calls())[0]);
    // Pick a ring in which the owner differs.
    let before = three.owner("town-137").unwrap().to_string();
    let other = (2..40)
        .map(|n| Arc::new(Ring::new(2, crate::ring::DEFAULT_VNODES, [format!("chat-node-{n}")]).unwrap()))
        .find(|r| r.owner("town-137") != Some(before.as_str()))
        .unwrap();
    h.ring_tx.send(RingView::Ready(other.clone())).unwrap();
    h.reconcile(&obj).await.unwrap();
    let calls = h.take_calls();
    let p = Harness::status_patches(&calls);
    assert_eq!(p[0].body["status"]["node"], other.owner("town-137").unwrap());
    assert_eq!(p[0].body["status"]["ringEpoch"], 2);
    let e = Harness::events(&calls);
    assert_eq!(e[0].body["reason"], "Reassigned");
    assert!(e[0].body["note"].as_str().unwrap().contains(&format!("moved from {before}")));
}

#[tokio::test]
async fn invalid_spec_publishes_nothing_and_says_why() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    obj.spec.retention = Some(RetentionSpec { max_messages: Some(0), max_age_seconds: None });
    let h = harness(&[&obj], Some(ring(1, 3)));
    let action = h.reconcile(&obj).await.unwrap();
    assert_eq!(action, Action::requeue(jittered(Duration::from_secs(300), "town-137")));
    assert!(h.redis.lock().unwrap().channels.is_empty());
    let calls = h.take_calls();
    let status = &Harness::status_patches(&calls)[0].body["status"];
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "InvalidSpec");
    assert!(status["conditions"][0]["message"].as_str().unwrap().contains("retention.maxMessages"));
    assert!(status.get("node").is_none());
    let e = Harness::events(&calls);
    assert_eq!(
        (e[0].body["type"].as_str(), e[0].body["reason"].as_str()),
        (Some("Warning"), Some("InvalidSpec"))
    );
    assert_eq!(h.ctx.metrics.failures.with_label_values(&["InvalidSpec"]).get(), 1);
}

#[tokio::test]
async fn conflict_loser_gets_conflict_and_nothing_is_published_for_it() {
    let winner = with_finalizer(cc("lobby-a", 0, Some("lobby")));
    let loser = with_finalizer(cc("lobby-b", 30, Some("lobby")));
    let h = harness(&[&winner, &loser], Some(ring(1, 3)));
    h.reconcile(&loser).await.unwrap();
    assert!(h.redis.lock().unwrap().channels.is_empty(), "loser published");
    let calls = h.take_calls();
    let status = &Harness::status_patches(&calls)[0].body["status"];
    assert_eq!(status["conditions"][0]["reason"], "Conflict");
    assert!(status["conditions"][0]["message"].as_str().unwrap().contains("lobby-a"));
    assert!(status.get("node").is_none());
    // The winner publishes.
    h.reconcile(&winner).await.unwrap();
    assert!(h.redis.lock().unwrap().channels.contains_key("lobby"));
}

#[tokio::test]
async fn deleting_a_conflict_loser_leaves_the_winners_data_alone() {
    let winner = with_finalizer(cc("lobby-a", 0, Some("lobby")));
    let loser = deleting(with_finalizer(cc("lobby-b", 30, Some("lobby"))), DeletionPolicy::Delete);
    let h = harness(&[&winner, &loser], Some(ring(1, 3)));
    h.reconcile(&winner).await.unwrap();
    h.take_calls();
    h.reconcile(&loser).await.unwrap();
    let redis = h.redis.lock().unwrap();
    assert!(redis.channels.contains_key("lobby"));
    assert!(redis.inbox.is_empty() && redis.history_deleted.is_empty());
    let calls = h.take_calls();
    assert_eq!(calls.len(), 1, "only the finalizer removal: {calls:#?}");
}

#[tokio::test]
async fn deleting_the_winner_hands_the_channel_to_the_next_claimant() {
    let winner = deleting(with_finalizer(cc("lobby-a", 0, Some("lobby"))), DeletionPolicy::Delete);
    let next = with_finalizer(cc("lobby-b", 30, Some("lobby")));
    let h = harness(&[&winner, &next], Some(ring(1, 3)));
    h.redis.lock().unwrap().channels.insert("lobby".into(), "{}".into());
    h.reconcile(&winner).await.unwrap();
    {
        let redis = h.redis.lock().unwrap();
        assert!(redis.channels.contains_key("lobby"), "config removed despite a successor");
        assert!(redis.history_deleted.is_empty());
    }
    let events = Harness::events(&h.take_calls()).into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(events[0].body["reason"], "HandedOver");
    // Once the winner is gone, the claims index names the successor to
    // reconcile, and it now wins.
    let gone = h.ctx.claims.apply(&watcher::Event::Delete(winner));
    assert_eq!(gone.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["lobby-b"]);
    h.reconcile(&next).await.unwrap();
    let status = &Harness::status_patches(&h.take_calls())[0].body["status"].clone();
    assert_eq!(status["conditions"][0]["reason"], "Assigned");
}

async fn delete_with(policy: DeletionPolicy) -> (Harness, String, Vec<Call>) {
    let live = with_finalizer(cc("town-137", 0, None));
    let r = ring(1, 3);
    let owner = r.owner("town-137").unwrap().to_string();
    let h = harness(&[&live], Some(r));
    h.reconcile(&live).await.unwrap();
    h.take_calls();
    let gone = deleting(live, policy);
    h.ctx.claims.apply(&watcher::Event::Apply(gone.clone()));
    assert_eq!(h.reconcile(&gone).await.unwrap(), Action::await_change());
    let calls = h.take_calls();
    // The finalizer removal is the last write, after Redis was cleaned.
    let last = calls.iter().rfind(|c| c.method == "PATCH").unwrap();
    assert_eq!(last.content_type, "application/json-patch+json");
    assert_eq!(
        last.body,
        json!([{"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
               {"op": "remove", "path": "/metadata/finalizers/0"}])
    );
    (h, owner, calls)
}

#[tokio::test]
async fn delete_policy_removes_config_history_and_closes_on_the_owner() {
    let (h, owner, calls) = delete_with(DeletionPolicy::Delete).await;
    let redis = h.redis.lock().unwrap();
    assert!(redis.channels.is_empty());
    assert_eq!(redis.version, 2, "INCR after HDEL");
    assert_eq!(
        redis.inbox.get(&owner).unwrap(),
        &vec![("close".to_string(), r#"{"channel":"town-137","reason":"deleted"}"#.to_string())]
    );
    assert_eq!(redis.history_deleted, vec!["town-137".to_string()]);
    let e = Harness::events(&calls);
    assert_eq!(e[0].body["reason"], "Deleted");
}

#[tokio::test]
async fn retain_policy_only_undeclares_the_channel() {
    let (h, _owner, _calls) = delete_with(DeletionPolicy::Retain).await;
    let redis = h.redis.lock().unwrap();
    assert!(redis.channels.is_empty());
    assert_eq!(redis.version, 2);
    assert!(redis.inbox.is_empty());
    assert!(redis.history_deleted.is_empty());
}

#[tokio::test]
async fn redis_down_reports_redis_unavailable_and_keeps_the_finalizer() {
    let obj = with_finalizer(cc("town-137", 0, None));
    let h = harness(&[&obj], Some(ring(1, 3)));
    h.redis.lock().unwrap().down = true;
    assert_eq!(h.reconcile(&obj).await.unwrap(), Action::requeue(RETRY));
    let calls = h.take_calls();
    let status = &Harness::status_patches(&calls)[0].body["status"];
    assert_eq!(status["conditions"][0]["reason"], "RedisUnavailable");
    let message = status["conditions"][0]["message"].as_str().unwrap();
    assert!(message.contains("--redis-url") && message.contains("retried every 5 s"), "{message}");
    assert_eq!(h.ctx.metrics.failures.with_label_values(&["RedisUnavailable"]).get(), 1);

    // Deletion while Redis is down: cleanup fails, the finalizer stays.
    let gone = deleting(obj, DeletionPolicy::Delete);
    assert!(h.reconcile(&gone).await.is_err());
    let calls = h.take_calls();
    assert!(calls.iter().all(|c| c.content_type != "application/json-patch+json"), "{calls:#?}");
}

#[tokio::test]
async fn no_nodes_publishes_config_but_is_not_ready() {
    let obj = with_finalizer(cc("town-137", 0, None));
    let h = harness(&[&obj], None);
    h.reconcile(&obj).await.unwrap();
    assert!(h.redis.lock().unwrap().channels.contains_key("town-137"));
    let calls = h.take_calls();
    let status = &Harness::status_patches(&calls)[0].body["status"];
    assert_eq!(status["conditions"][0]["reason"], "NoNodes");
    assert_eq!(status["conditions"][0]["status"], "False");
    assert!(status.get("node").is_none() && status.get("ringEpoch").is_none());
    assert_eq!(h.ctx.metrics.reconciles.get(), 1);
    assert!(obj.name_any() == "town-137");
}

/// A ring over `nodes` in which "town-137" is owned by a different node than
/// in `not_like`.
fn ring_moving(epoch: u64, not_like: &Ring) -> Arc<Ring> {
    let before = not_like.owner("town-137").unwrap().to_string();
    (0..40)
        .map(|n| {
            Arc::new(
                Ring::new(epoch, crate::ring::DEFAULT_VNODES, [format!("chat-node-{}", n + 10)]).unwrap(),
            )
        })
        .find(|r| r.owner("town-137") != Some(before.as_str()))
        .unwrap()
}

#[tokio::test]
async fn every_move_gets_its_own_event_naming_the_current_owner_and_epoch() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    let first = ring(1, 3);
    let h = harness(&[&obj], Some(first.clone()));
    h.reconcile(&obj).await.unwrap();
    apply_status(&mut obj, Harness::status_patches(&h.take_calls())[0]);
    let mut rings = vec![first];
    for epoch in 2..=4 {
        let next = ring_moving(epoch, rings.last().unwrap());
        h.ring_tx.send(RingView::Ready(next.clone())).unwrap();
        h.reconcile(&obj).await.unwrap();
        let calls = h.take_calls();
        apply_status(&mut obj, Harness::status_patches(&calls)[0]);
        let owner = next.owner("town-137").unwrap();
        // A new Event (POST), never a repeat of the previous move's series.
        let posts = Harness::events(&calls);
        assert_eq!(posts.len(), 1, "epoch {epoch}: {calls:#?}");
        assert!(!calls.iter().any(|c| c.method == "PATCH" && c.path.contains("/events")), "{calls:#?}");
        let note = posts[0].body["note"].as_str().unwrap();
        assert_eq!(posts[0].body["reason"], "Reassigned");
        assert!(note.contains(&format!("owned by {owner}")), "epoch {epoch}: {note}");
        assert!(note.contains(&format!("ring epoch {epoch}")), "epoch {epoch}: {note}");
        assert_eq!(obj.status.as_ref().unwrap().node.as_deref(), Some(owner));
        rings.push(next);
    }
}

#[tokio::test]
async fn the_same_warning_again_joins_its_series() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    let h = harness(&[&obj], Some(ring(1, 3)));
    h.reconcile(&obj).await.unwrap();
    apply_status(&mut obj, Harness::status_patches(&h.take_calls())[0]);
    for round in 0..2 {
        h.redis.lock().unwrap().down = true;
        h.reconcile(&obj).await.unwrap();
        let calls = h.take_calls();
        apply_status(&mut obj, Harness::status_patches(&calls)[0]);
        let warnings: Vec<&Call> = calls.iter().filter(|c| c.path.contains("/events")).collect();
        assert_eq!(warnings.len(), 1, "{calls:#?}");
        if round == 0 {
            assert_eq!(warnings[0].method, "POST");
            assert_eq!(warnings[0].body["reason"], "RedisUnavailable");
        } else {
            assert_eq!(warnings[0].method, "PATCH", "{warnings:#?}");
            assert_eq!(warnings[0].body["series"]["count"], 2);
        }
        h.redis.lock().unwrap().down = false;
        h.reconcile(&obj).await.unwrap();
        apply_status(&mut obj, Harness::status_patches(&h.take_calls())[0]);
    }
}

#[tokio::test]
async fn ready_false_messages_say_what_to_do_next() {
    let nodes = with_finalizer(cc("town-1", 0, None));
    let h = harness(&[&nodes], None);
    h.reconcile(&nodes).await.unwrap();
    let calls = h.take_calls();
    let m = Harness::status_patches(&calls)[0].body["status"]["conditions"][0]["message"].clone();
    assert!(m.as_str().unwrap().contains("app.kubernetes.io/name=chat-node"), "{m}");
    assert!(m.as_str().unwrap().contains("10s Ready"), "{m}");

    let mut bad = with_finalizer(cc("town-2", 0, None));
    bad.spec.retention = Some(RetentionSpec { max_messages: Some(0), max_age_seconds: None });
    let winner = with_finalizer(cc("lobby-a", 0, Some("lobby")));
    let loser = with_finalizer(cc("lobby-b", 30, Some("lobby")));
    let h = harness(&[&bad, &winner, &loser], Some(ring(1, 3)));
    h.reconcile(&bad).await.unwrap();
    h.reconcile(&loser).await.unwrap();
    let calls = h.take_calls();
    let p = Harness::status_patches(&calls);
    let invalid = p[0].body["status"]["conditions"][0]["message"].as_str().unwrap();
    assert!(invalid.contains("kubectl edit chatchannel town-2"), "{invalid}");
    let conflict = p[1].body["status"]["conditions"][0]["message"].as_str().unwrap();
    assert!(conflict.contains("lobby-a") && conflict.contains("another spec.channel"), "{conflict}");
}

#[tokio::test]
async fn unknown_ring_keeps_the_last_owner_and_publishes_nothing() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    obj.status = Some(crate::crd::ChatChannelStatus {
        node: Some("chat-node-1".into()),
        ring_epoch: Some(7),
        ..Default::default()
    });
    let h = harness_ring_unknown(&[&obj]);
    assert_eq!(h.reconcile(&obj).await.unwrap(), Action::requeue(RETRY));
    assert!(h.redis.lock().unwrap().channels.is_empty());
    let calls = h.take_calls();
    let status = &Harness::status_patches(&calls)[0].body["status"];
    assert_eq!(status["conditions"][0]["reason"], "RedisUnavailable");
    assert!(status["conditions"][0]["message"].as_str().unwrap().contains("Timeout Error"));
    assert_eq!(status["node"], "chat-node-1");
    assert_eq!(status["ringEpoch"], 7);
}

#[tokio::test]
async fn member_counts_from_the_registry_land_in_the_status() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    let h = harness(&[&obj], Some(ring(1, 3)));
    h.redis.lock().unwrap().members.insert("town-137".into(), 42);
    let chans = vec![("town-137".to_string(), "town-137".to_string())];
    assert!(h.ctx.members.refresh(&h.ctx.store, &chans).await.unwrap().is_empty());
    h.reconcile(&obj).await.unwrap();
    let calls = h.take_calls();
    assert_eq!(Harness::status_patches(&calls)[0].body["status"]["members"], 42);
    apply_status(&mut obj, Harness::status_patches(&calls)[0]);
    // A change is reported for this object, and the next reconcile writes it.
    h.redis.lock().unwrap().members.insert("town-137".into(), 40);
    let stale = h.ctx.members.refresh(&h.ctx.store, &chans).await.unwrap();
    assert_eq!(stale[0].name, "town-137");
    h.reconcile(&obj).await.unwrap();
    assert_eq!(Harness::status_patches(&h.take_calls())[0].body["status"]["members"], 40);
}

fn paused(mut c: ChatChannel) -> ChatChannel {
    c.metadata.annotations = Some([(PAUSE_ANNOTATION.to_string(), "true".to_string())].into());
    c
}

#[tokio::test]
async fn a_paused_channel_is_left_alone_and_says_so() {
    let mut obj = with_finalizer(cc("town-137", 0, None));
    let h = harness(&[&obj], Some(ring(1, 3)));
    h.reconcile(&obj).await.unwrap();
    apply_status(&mut obj, Harness::status_patches(&h.take_calls())[0]);
    let node = obj.status.as_ref().unwrap().node.clone();
    let version = h.redis.lock().unwrap().version;

    // Pause: the status keeps what it said and gains Paused; one event.
    let mut p = paused(obj.clone());
    p.spec.retention = Some(RetentionSpec { max_messages: Some(5), max_age_seconds: None });
    p.metadata.generation = Some(2);
    assert_eq!(h.reconcile(&p).await.unwrap(), Action::await_change());
    let calls = h.take_calls();
    let patch = Harness::status_patches(&calls)[0];
    let conds = patch.body["status"]["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 2, "{conds:?}");
    assert_eq!(conds[0]["type"], "Ready");
    assert_eq!((conds[1]["type"].as_str(), conds[1]["status"].as_str()), (Some("Paused"), Some("True")));
    assert!(conds[1]["message"].as_str().unwrap().contains("Remove the annotation"));
    assert_eq!(patch.body["status"]["node"].as_str(), node.as_deref());
    assert_eq!(Harness::events(&calls)[0].body["reason"], "Paused");
    apply_status(&mut p, patch);
    // Nothing was published for the edited spec.
    assert_eq!(h.redis.lock().unwrap().version, version);
    // Reconciling it again (a ring change) writes nothing.
    h.ring_tx.send(RingView::Ready(ring(2, 4))).unwrap();
    h.reconcile(&p).await.unwrap();
    assert!(h.take_calls().is_empty());

    // Resume: the edit is published, the Paused condition goes, one event.
    let mut resumed = p.clone();
    resumed.metadata.annotations = None;
    h.reconcile(&resumed).await.unwrap();
    assert!(h.redis.lock().unwrap().channels["town-137"].contains(r#""maxMessages":5,"#));
    let calls = h.take_calls();
    let status = &Harness::status_patches(&calls)[0].body["status"];
    assert_eq!(status["conditions"].as_array().unwrap().len(), 1);
    assert_eq!(status["ringEpoch"], 2);
    assert!(Harness::events(&calls).iter().any(|e| e.body["reason"] == "Resumed"));
}

#[tokio::test]
async fn deleting_a_paused_channel_removes_the_finalizer_and_leaves_redis_alone() {
    let live = with_finalizer(cc("town-137", 0, None));
    let h = harness(&[&live], Some(ring(1, 3)));
    h.reconcile(&live).await.unwrap();
    h.take_calls();
    let mut gone = paused(deleting(live, DeletionPolicy::Delete));
    gone.metadata.resource_version = Some("17".into());
    assert_eq!(h.reconcile(&gone).await.unwrap(), Action::await_change());
    let redis = h.redis.lock().unwrap();
    assert!(redis.channels.contains_key("town-137"));
    assert!(redis.inbox.is_empty() && redis.history_deleted.is_empty());
    drop(redis);
    let calls = h.take_calls();
    let patch = calls.iter().find(|c| c.method == "PATCH").unwrap();
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(patch.body, json!({"metadata": {"finalizers": [], "resourceVersion": "17"}}));
    assert!(Harness::events(&calls)[0].body["note"].as_str().unwrap().contains("left in Redis as is"));
}
