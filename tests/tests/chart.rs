//! The Helm chart (`charts/shardchat`): lint, render with every helm major
//! we support, validate every rendered manifest offline with strict
//! Kubernetes schemas, check the example ChatChannels against the generated
//! CRD schema, and assert what matters on the rendered objects.
//!
//! Needs `helm` and `kubernetes-validate` (see `shardchat_tests::chart` for
//! how they are found); without them these tests skip loudly, or fail when
//! `CI` is set.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use shardchat_tests::chart::{
    self, Helm, Manifests, chart_dir, check_custom_resource, duration_secs, env, selects, workspace_root,
};

const ALL: &str = "ci/all-features-values.yaml";
const QUICKSTART: &str = "quickstart-values.yaml";
const NODE: &str = "sc-shardchat-chat-node";
const HEADLESS: &str = "sc-shardchat-chat-node-headless";
const OPERATOR: &str = "sc-shardchat-operator";
const REDIS: &str = "sc-shardchat-redis";
const FULLNAME: &str = "sc-shardchat";

/// Value sets every render-level check runs over: (label, values files, --set).
fn scenarios() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    vec![
        ("default", vec![], vec![]),
        ("all-features", vec![ALL], vec![]),
        ("quickstart", vec![QUICKSTART], vec![]),
        (
            "external-redis-secret",
            vec![],
            vec!["redis.enabled=false", "redis.existingSecret=prod-redis", "redis.existingSecretKey=url"],
        ),
        ("external-redis-url", vec![], vec!["redis.enabled=false", "redis.url=redis://redis.example:6379/0"]),
    ]
}

fn helms() -> Option<Vec<Helm>> {
    let h = chart::helms()?;
    eprintln!("helm binaries: {:?}", h.iter().map(|h| h.version.as_str()).collect::<Vec<_>>());
    Some(h)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn container<'a>(pod_spec: &'a Value, name: &str) -> &'a Value {
    pod_spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn port_number(container: &Value, name: &str) -> i64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_i64()
        .unwrap()
}

fn env_value<'a>(c: &'a Value, name: &str) -> &'a str {
    env(c, name).unwrap_or_else(|| panic!("env {name} missing"))["value"]
        .as_str()
        .unwrap_or_else(|| panic!("env {name} has no plain value"))
}

// ---------------------------------------------------------------- no tools

#[test]
fn chart_crds_are_the_generated_crds() {
    let generated = workspace_root().join("crds");
    let in_chart = chart_dir().join("crds");
    let names = |dir: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names(&generated),
        names(&in_chart),
        "charts/shardchat/crds/ must hold exactly the files of crds/"
    );
    for name in names(&generated) {
        let a = std::fs::read(generated.join(&name)).unwrap();
        let b = std::fs::read(in_chart.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/shardchat/crds/{name} differs from crds/{name}; copy it over:\n\n    cp crds/{name} charts/shardchat/crds/{name}\n"
        );
    }
}

fn chatchannel_crd() -> Value {
    serde_saphyr::from_str(&read("crds/chatchannel.yaml")).expect("CRD parses")
}

#[test]
fn example_chatchannels_match_the_crd_schema() {
    let crd = chatchannel_crd();
    let mut checked = 0;
    for entry in std::fs::read_dir(workspace_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let docs = Manifests::parse(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in docs.of_kind("ChatChannel") {
            let errors = check_custom_resource(doc, &crd);
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "expected the three example ChatChannels, checked {checked}");
}

#[test]
fn crd_schema_check_rejects_bad_chatchannels() {
    let crd = chatchannel_crd();
    let good = json!({
        "apiVersion": "chat.shardchat.io/v1alpha1",
        "kind": "ChatChannel",
        "metadata": {"name": "town-1"},
        "spec": {"retention": {"maxMessages": 100, "maxAgeSeconds": 30}, "moderation": "mask"}
    });
    assert_eq!(check_custom_resource(&good, &crd), Vec::<String>::new());
    let bad = |edit: &dyn Fn(&mut Value), expect: &str| {
        let mut v = good.clone();
        edit(&mut v);
        let errors = check_custom_resource(&v, &crd);
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "expected an error containing {expect:?}, got {errors:?} for {v}"
        );
    };
    bad(&|v| v["spec"]["retention"]["maxMessagez"] = json!(5), "unknown field");
    bad(&|v| v["spec"]["bogus"] = json!(true), "unknown field");
    bad(&|v| v["spec"]["moderation"] = json!("shout"), "is not one of");
    bad(&|v| v["spec"]["retention"]["maxMessages"] = json!("ten"), "expected integer");
    bad(&|v| v["spec"]["retention"]["maxMessages"] = json!(0), "below the minimum");
    bad(&|v| v["spec"]["channel"] = json!("no spaces allowed"), "does not match");
    bad(&|v| v["spec"]["deletionPolicy"] = json!("Shred"), "is not one of");
    bad(&|v| v["apiVersion"] = json!("chat.shardchat.io/v1"), "not served");
    bad(&|v| v["metadata"]["name"] = json!("Town_1"), "DNS subdomain");
}

/// Metric names a binary registers, read from its source.
fn registered_metrics(rel: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r#""((?:shardchat|chat_operator)_[a-z0-9_]+)""#).unwrap();
    re.captures_iter(&read(rel)).map(|c| c[1].to_string()).collect()
}

#[test]
fn dashboard_queries_use_real_metric_names() {
    let node = registered_metrics("chat-node/src/metrics.rs");
    let operator = registered_metrics("operator/src/metrics.rs");
    assert!(node.contains("shardchat_connections") && operator.contains("chat_operator_reconciles_total"));
    let known: BTreeSet<String> = node.union(&operator).cloned().collect();
    let dashboard: Value =
        serde_json::from_str(&read("charts/shardchat/dashboards/shardchat.json")).expect("dashboard is JSON");
    assert_eq!(dashboard["title"], "Shardchat");
    let re = regex::Regex::new(r"\b((?:shardchat|chat_operator)_[a-z0-9_]+)\b").unwrap();
    let mut used = BTreeSet::new();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            exprs += 1;
            for c in re.captures_iter(expr) {
                let name = &c[1];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| known.contains(*b)))
                    .unwrap_or(name);
                assert!(
                    known.contains(base),
                    "dashboard query uses {name}, which no binary registers: {expr}"
                );
                used.insert(base.to_string());
            }
        }
    }
    assert!(exprs > 10);
    for must in [
        "shardchat_connections",
        "shardchat_messages_published_total",
        "shardchat_messages_delivered_total",
        "shardchat_errors_total",
        "shardchat_slow_consumer_disconnects_total",
        "shardchat_publish_to_deliver_seconds",
        "shardchat_channels_owned",
    ] {
        assert!(used.contains(must), "dashboard has no panel on {must}");
    }
    for m in &operator {
        assert!(used.contains(m), "dashboard has no panel on the operator's {m}");
    }
}

// ---------------------------------------------------------------- helm

/// Secrets the chart generates (random on every `helm template`).
const GENERATED_SECRETS: [&str; 2] = ["sc-shardchat-auth", "sc-shardchat-redis-auth"];

/// The rendered documents with the random values of generated Secrets
/// replaced by a marker (after checking they look generated).
fn without_generated_secrets(m: &Manifests) -> Vec<Value> {
    let mut docs = m.docs.clone();
    for d in docs.iter_mut().filter(|d| d["kind"] == "Secret") {
        if !GENERATED_SECRETS.iter().any(|n| d["metadata"]["name"] == *n) {
            continue;
        }
        for (key, v) in d["stringData"].as_object_mut().expect("stringData").iter_mut() {
            let value = v.as_str().unwrap_or("");
            assert!(
                value.len() == 48 && value.chars().all(|c| c.is_ascii_alphanumeric()),
                "{key}: a generated secret is 48 random alphanumerics, got {value:?}"
            );
            *v = json!("<generated>");
        }
    }
    docs
}

#[test]
fn helm_lint_strict_passes() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        for values in [vec![], vec![ALL], vec![QUICKSTART]] {
            if let Err(e) = helm.lint(&values) {
                panic!("helm {} lint --strict {values:?} failed:\n{e}", helm.version);
            }
        }
    }
}

#[test]
fn helm_majors_3_and_4_render_the_same_manifests() {
    let Some(helms) = helms() else { return };
    let majors: BTreeSet<u32> = helms.iter().map(Helm::major).collect();
    for m in &majors {
        assert!([3, 4].contains(m), "unsupported helm major {m}");
    }
    if std::env::var_os("CI").is_some() {
        assert_eq!(majors, BTreeSet::from([3, 4]), "CI must test with helm 3 and helm 4 (HELM_BINS)");
    }
    for (label, values, sets) in scenarios() {
        let renders: Vec<Vec<Value>> =
            helms.iter().map(|h| without_generated_secrets(&h.render(&values, &sets))).collect();
        for (h, r) in helms.iter().zip(&renders).skip(1) {
            assert_eq!(
                r, &renders[0],
                "{label}: helm {} renders differently from helm {}",
                h.version, helms[0].version
            );
        }
    }
}

/// Hand-written subsets of the upstream CRD schemas (Gateway API HTTPRoute,
/// Prometheus Operator ServiceMonitor/PodMonitor) covering the fields this
/// chart writes: any other key is an error, so a typo cannot slip through
/// the offline validation that has no schema for these kinds.
fn check_third_party(doc: &Value) -> Vec<String> {
    fn keys(v: &Value, allowed: &[&str], at: &str, errors: &mut Vec<String>) {
        match v.as_object() {
            Some(m) => {
                for k in m.keys() {
                    if !allowed.contains(&k.as_str()) {
                        errors.push(format!("{at}.{k}: unknown field"));
                    }
                }
            }
            None => errors.push(format!("{at}: not an object")),
        }
    }
    let mut e = Vec::new();
    keys(doc, &["apiVersion", "kind", "metadata", "spec"], "", &mut e);
    keys(&doc["metadata"], &["name", "namespace", "labels", "annotations"], "metadata", &mut e);
    let spec = &doc["spec"];
    match doc["kind"].as_str().unwrap() {
        "HTTPRoute" => {
            assert_eq!(doc["apiVersion"], "gateway.networking.k8s.io/v1");
            keys(spec, &["parentRefs", "hostnames", "rules"], "spec", &mut e);
            for p in spec["parentRefs"].as_array().unwrap() {
                keys(
                    p,
                    &["group", "kind", "namespace", "name", "sectionName", "port"],
                    "spec.parentRefs[]",
                    &mut e,
                );
                if !p["name"].is_string() {
                    e.push("parentRef without name".into());
                }
            }
            for r in spec["rules"].as_array().unwrap() {
                keys(
                    r,
                    &["name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"],
                    "spec.rules[]",
                    &mut e,
                );
                for m in r["matches"].as_array().unwrap() {
                    keys(m, &["path", "headers", "queryParams", "method"], "spec.rules[].matches[]", &mut e);
                    keys(&m["path"], &["type", "value"], "spec.rules[].matches[].path", &mut e);
                    if !["Exact", "PathPrefix", "RegularExpression"]
                        .contains(&m["path"]["type"].as_str().unwrap_or(""))
                    {
                        e.push(format!("bad path match type {}", m["path"]["type"]));
                    }
                }
                for b in r["backendRefs"].as_array().unwrap() {
                    keys(
                        b,
                        &["group", "kind", "name", "namespace", "port", "weight", "filters"],
                        "spec.rules[].backendRefs[]",
                        &mut e,
                    );
                    if !b["port"].is_u64() {
                        e.push("backendRef port must be an integer".into());
                    }
                }
                if !r["timeouts"].is_null() {
                    keys(&r["timeouts"], &["request", "backendRequest"], "spec.rules[].timeouts", &mut e);
                }
            }
        }
        kind @ ("ServiceMonitor" | "PodMonitor") => {
            assert_eq!(doc["apiVersion"], "monitoring.coreos.com/v1");
            let list = if kind == "ServiceMonitor" { "endpoints" } else { "podMetricsEndpoints" };
            keys(spec, &["selector", "namespaceSelector", list, "jobLabel"], "spec", &mut e);
            keys(&spec["selector"], &["matchLabels", "matchExpressions"], "spec.selector", &mut e);
            keys(&spec["namespaceSelector"], &["matchNames", "any"], "spec.namespaceSelector", &mut e);
            for ep in spec[list].as_array().unwrap() {
                keys(
                    ep,
                    &["port", "path", "interval", "scrapeTimeout", "scheme"],
                    "spec.endpoints[]",
                    &mut e,
                );
                if !ep["port"].is_string() {
                    e.push("endpoint port must be a port name".into());
                }
            }
        }
        other => e.push(format!("no offline check for kind {other}")),
    }
    e
}

#[test]
fn rendered_manifests_pass_strict_schema_validation() {
    let Some(helms) = helms() else { return };
    let Some(kv) = chart::kubernetes_validate() else { return };
    // The chart's minimum (Chart.yaml kubeVersion) and the newest schema
    // kubernetes-validate ships.
    let k8s_versions = ["1.30.0", "1.37.0"];
    let crd_kinds: BTreeSet<String> =
        ["HTTPRoute", "ServiceMonitor", "PodMonitor"].iter().map(|s| s.to_string()).collect();
    let chatchannel_crd = chatchannel_crd();
    for helm in &helms {
        for (label, values, sets) in scenarios() {
            let yaml = helm.template(&values, &sets).unwrap_or_else(|e| panic!("{label}: {e}"));
            let manifests = Manifests::parse(&yaml).unwrap_or_else(|e| panic!("{label}: {e}"));
            for k in &k8s_versions {
                let (failure, unknown) = chart::kubernetes_validate_strict(&kv, &yaml, k);
                if let Some(out) = failure {
                    panic!(
                        "helm {} / {label}: kubernetes-validate --strict (Kubernetes {k}) failed:\n{out}",
                        helm.version
                    );
                }
                assert!(
                    unknown.is_subset(&crd_kinds),
                    "{label}: kinds without a schema beyond the known CRD kinds: {unknown:?}"
                );
            }
            for doc in &manifests.docs {
                let kind = doc["kind"].as_str().unwrap();
                if crd_kinds.contains(kind) {
                    let errors = check_third_party(doc);
                    assert!(errors.is_empty(), "{label}: {kind}: {errors:?}");
                }
                if kind == "ChatChannel" {
                    assert_eq!(check_custom_resource(doc, &chatchannel_crd), Vec::<String>::new());
                }
            }
            if label == "all-features" {
                assert!(crd_kinds.is_subset(&manifests.kinds()), "all-features should render {crd_kinds:?}");
            }
            // The CRD comes from crds/ (only with --include-crds) and is the generated one.
            let crd = manifests.get("CustomResourceDefinition", "chatchannels.chat.shardchat.io");
            assert_eq!(crd, &chatchannel_crd);
            // Everything namespaced lands in the release namespace.
            for doc in &manifests.docs {
                if !["CustomResourceDefinition"].contains(&doc["kind"].as_str().unwrap()) {
                    assert_eq!(doc["metadata"]["namespace"], chart::NAMESPACE, "{label}: {doc}");
                }
            }
        }
    }
}

#[test]
fn operator_rbac_is_least_privilege_and_exact() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        let m = helm.render(&[], &[]);
        assert_eq!(m.of_kind("ClusterRole").count(), 0, "the operator needs no cluster-wide rights");
        assert_eq!(m.of_kind("ClusterRoleBinding").count(), 0);
        let role = m.get("Role", OPERATOR);
        // (group/resource, resourceNames) -> verbs
        let mut rules: BTreeMap<(String, Vec<String>), BTreeSet<String>> = BTreeMap::new();
        for r in role["rules"].as_array().unwrap() {
            let names: Vec<String> = r["resourceNames"]
                .as_array()
                .map(|n| n.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    let key = (format!("{}/{}", g.as_str().unwrap(), res.as_str().unwrap()), names.clone());
                    let verbs =
                        r["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string());
                    rules.entry(key).or_default().extend(verbs);
                }
            }
        }
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let any = |r: &str| (r.to_string(), Vec::new());
        // Exactly what the operator's code calls (docs/operator.md, "RBAC"):
        // no `get`/`update` on ChatChannels, no StatefulSets, no finalizers
        // subresource, and the Lease by name only.
        let expected = BTreeMap::from([
            (any("chat.shardchat.io/chatchannels"), set(&["list", "watch", "patch"])),
            (any("chat.shardchat.io/chatchannels/status"), set(&["patch"])),
            (any("/pods"), set(&["list", "watch"])),
            // A create cannot be limited by name; kube-lease-manager creates
            // the Lease once, then gets and patches it.
            (any("coordination.k8s.io/leases"), set(&["create"])),
            (("coordination.k8s.io/leases".to_string(), vec![OPERATOR.to_string()]), set(&["get", "patch"])),
            // The operator's event publisher creates events and patches
            // the series of a repeated one.
            (any("events.k8s.io/events"), set(&["create", "patch"])),
        ]);
        assert_eq!(rules, expected, "helm {}", helm.version);
        // The Lease the Role names is the one the operator uses.
        let deploy = m.get("Deployment", OPERATOR);
        let op = container(&deploy["spec"]["template"]["spec"], "chat-operator");
        assert_eq!(env_value(op, "CHAT_OPERATOR_LEASE_NAME"), OPERATOR);
        for verbs in rules.values() {
            assert!(!verbs.contains("*") && !verbs.contains("delete") && !verbs.contains("deletecollection"));
        }
        let binding = m.get("RoleBinding", OPERATOR);
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR})
        );
        let deploy = m.get("Deployment", OPERATOR);
        let sa = deploy["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap();
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": sa, "namespace": chart::NAMESPACE}])
        );
        m.get("ServiceAccount", sa);
        // The chat nodes get no RBAC at all, and a different account.
        let node_sa =
            m.get("StatefulSet", NODE)["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap();
        assert_ne!(node_sa, sa);
    }
}

#[test]
fn chat_node_statefulset_is_wired_for_the_ring_and_graceful_drain() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        for (label, values, sets) in scenarios() {
            let m = helm.render(&values, &sets);
            let sts = m.get("StatefulSet", NODE);
            let spec = &sts["spec"];
            assert_eq!(spec["podManagementPolicy"], "Parallel", "{label}");
            let pod = &spec["template"]["spec"];
            assert_eq!(pod["automountServiceAccountToken"], false, "{label}: nodes never call the API");
            let c = container(pod, "chat-node");

            // Node id: the pod name through the downward API.
            assert_eq!(
                env(c, "POD_NAME").unwrap()["valueFrom"],
                json!({"fieldRef": {"fieldPath": "metadata.name"}})
            );
            assert_eq!(env_value(c, "CHAT_NODE_ID"), "$(POD_NAME)");
            let names: Vec<&str> =
                c["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
            let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
            assert!(
                pos("POD_NAME") < pos("CHAT_NODE_ID"),
                "$(POD_NAME) must be defined before it is referenced"
            );
            // Redis mode without --peers: the node follows the operator's ring.
            assert!(env(c, "CHAT_REDIS_URL").is_some(), "{label}");
            assert!(env(c, "CHAT_PEERS").is_none(), "{label}");

            // Probes hit the node's real endpoints on the port it listens on.
            let listen = env_value(c, "CHAT_LISTEN");
            let port: i64 = listen.rsplit(':').next().unwrap().parse().unwrap();
            assert_eq!(port_number(c, "http"), port, "{label}: container port must be the --listen port");
            for (probe, path) in
                [("startupProbe", "/healthz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]
            {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"], path, "{label}: {probe}");
                assert_eq!(get["port"], "http", "{label}: {probe}");
            }

            // Drain: preStop sleep, then SIGTERM and --shutdown-grace, all inside the grace period.
            let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"].as_f64().expect("preStop sleep");
            let grace = duration_secs(env_value(c, "CHAT_SHUTDOWN_GRACE"));
            let tgps = pod["terminationGracePeriodSeconds"].as_f64().unwrap();
            assert!(pre_stop >= 1.0, "{label}");
            assert!(
                tgps > pre_stop + grace,
                "{label}: terminationGracePeriodSeconds {tgps} <= preStop {pre_stop} + shutdown grace {grace}"
            );

            // Governing headless Service publishes not-ready pods.
            let headless = m.get("Service", spec["serviceName"].as_str().unwrap());
            assert_eq!(headless["metadata"]["name"], HEADLESS);
            assert_eq!(headless["spec"]["clusterIP"], "None");
            assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);

            // The operator finds exactly these pods as ring members.
            let op = container(&m.get("Deployment", OPERATOR)["spec"]["template"]["spec"], "chat-operator");
            let selector = env_value(op, "CHAT_OPERATOR_NODE_SELECTOR");
            let pod_labels = &spec["template"]["metadata"]["labels"];
            for term in selector.split(',') {
                let (k, v) = term.split_once('=').expect("equality selector");
                assert_eq!(pod_labels[k], v, "{label}: node pods lack {term}");
            }
            assert!(selects(&spec["selector"]["matchLabels"], pod_labels));
            let op_labels = &m.get("Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"];
            assert!(selector.split(',').any(|t| {
                let (k, v) = t.split_once('=').unwrap();
                op_labels[k] != v
            }));

            // Spread over hosts (anti-affinity) and zones.
            let aff = &pod["affinity"]["podAntiAffinity"];
            assert!(!aff.is_null(), "{label}: anti-affinity");
            for tsc in pod["topologySpreadConstraints"].as_array().unwrap() {
                assert!(selects(&tsc["labelSelector"]["matchLabels"], pod_labels), "{label}");
            }
            assert!(
                c["resources"]["requests"]["cpu"].is_string()
                    && c["resources"]["limits"]["memory"].is_string()
            );

            // Node and operator agree on Redis and the key prefix.
            assert_eq!(
                env(c, "CHAT_REDIS_URL").unwrap()["value"],
                env(op, "CHAT_OPERATOR_REDIS_URL").unwrap()["value"]
            );
            assert_eq!(
                env(c, "CHAT_REDIS_URL").unwrap()["valueFrom"],
                env(op, "CHAT_OPERATOR_REDIS_URL").unwrap()["valueFrom"]
            );
            assert_eq!(env_value(c, "CHAT_REDIS_PREFIX"), env_value(op, "CHAT_OPERATOR_REDIS_PREFIX"));
        }
    }
}

#[test]
fn every_container_is_locked_down() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        for (label, values, sets) in scenarios() {
            let m = helm.render(&values, &sets);
            let pods = m.pod_specs();
            assert!(pods.len() >= 2, "{label}");
            for (name, pod) in pods {
                let psc = &pod["securityContext"];
                assert_eq!(psc["runAsNonRoot"], true, "{label} {name}");
                assert!(psc["runAsUser"].as_u64().unwrap_or(0) > 0, "{label} {name}: non-root uid");
                assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{label} {name}");
                assert_eq!(pod["hostNetwork"], Value::Null, "{label} {name}");
                let expect_token = name.starts_with("Deployment/") && name.ends_with("-operator");
                assert_eq!(
                    pod["automountServiceAccountToken"], expect_token,
                    "{label} {name}: only the operator gets an API token"
                );
                let all: Vec<&Value> = ["initContainers", "containers"]
                    .iter()
                    .flat_map(|k| pod[*k].as_array().into_iter().flatten())
                    .collect();
                for c in all {
                    let sc = &c["securityContext"];
                    let cname = c["name"].as_str().unwrap();
                    assert_eq!(sc["allowPrivilegeEscalation"], false, "{label} {name}/{cname}");
                    assert_eq!(sc["readOnlyRootFilesystem"], true, "{label} {name}/{cname}");
                    assert_eq!(sc["runAsNonRoot"], true, "{label} {name}/{cname}");
                    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{label} {name}/{cname}");
                    assert!(sc["capabilities"]["add"].is_null(), "{label} {name}/{cname}");
                    assert_ne!(sc["privileged"], true, "{label} {name}/{cname}");
                    assert!(c["resources"]["requests"].is_object(), "{label} {name}/{cname}: resources");
                    assert!(!c["image"].as_str().unwrap().ends_with(":latest"), "{label} {name}/{cname}");
                }
            }
            for sa in m.of_kind("ServiceAccount") {
                if sa["metadata"]["name"] == NODE {
                    assert_eq!(sa["automountServiceAccountToken"], false);
                }
            }
        }
    }
}

#[test]
fn pdbs_and_services_select_the_right_pods() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        for (label, values, sets) in scenarios() {
            let m = helm.render(&values, &sets);
            let workloads: Vec<(String, &Value, &Value)> = m
                .docs
                .iter()
                .filter(|d| ["Deployment", "StatefulSet"].contains(&d["kind"].as_str().unwrap()))
                .map(|d| {
                    (
                        d["metadata"]["name"].as_str().unwrap().to_string(),
                        &d["spec"]["template"]["metadata"]["labels"],
                        &d["spec"]["template"]["spec"],
                    )
                })
                .collect();
            let selected = |sel: &Value| -> Vec<String> {
                workloads
                    .iter()
                    .filter(|(_, labels, _)| selects(sel, labels))
                    .map(|(n, _, _)| n.clone())
                    .collect()
            };
            // The chat-node PDB covers the chat nodes and nothing else.
            let pdb = m.get("PodDisruptionBudget", NODE);
            assert_eq!(selected(&pdb["spec"]["selector"]["matchLabels"]), vec![NODE.to_string()], "{label}");
            assert!(
                pdb["spec"]["maxUnavailable"].as_u64().unwrap_or(0) >= 1,
                "{label}: a PDB that allows no disruption blocks node drains"
            );
            for p in m.of_kind("PodDisruptionBudget") {
                assert_eq!(
                    selected(&p["spec"]["selector"]["matchLabels"]).len(),
                    1,
                    "{label}: {}",
                    p["metadata"]["name"]
                );
            }
            // Every Service selects exactly one workload, on ports that exist.
            for svc in m.of_kind("Service") {
                let name = svc["metadata"]["name"].as_str().unwrap();
                let sel = selected(&svc["spec"]["selector"]);
                assert_eq!(sel.len(), 1, "{label}: Service {name} selects {sel:?}");
                let (_, _, pod) = workloads.iter().find(|(n, _, _)| *n == sel[0]).unwrap();
                for port in svc["spec"]["ports"].as_array().unwrap() {
                    let target = port["targetPort"].as_str().expect("named targetPort");
                    let found =
                        pod["containers"].as_array().unwrap().iter().any(|c| {
                            c["ports"].as_array().into_iter().flatten().any(|p| p["name"] == target)
                        });
                    assert!(found, "{label}: Service {name} targets port {target} that no container has");
                }
            }
            let client = m.get("Service", NODE);
            assert_eq!(selected(&client["spec"]["selector"]), vec![NODE.to_string()]);
            assert!(client["spec"]["publishNotReadyAddresses"].is_null(), "clients go to Ready nodes only");
        }
    }
}

#[test]
fn httproute_and_ingress_target_the_client_service() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        let default = helm.render(&[], &[]);
        assert_eq!(default.of_kind("HTTPRoute").count(), 0, "HTTPRoute is off by default");
        assert_eq!(default.of_kind("Ingress").count(), 0, "Ingress is off by default");
        assert_eq!(default.of_kind("NetworkPolicy").count(), 3, "NetworkPolicies are on by default");
        assert_eq!(default.of_kind("ServiceMonitor").count() + default.of_kind("PodMonitor").count(), 0);

        let m = helm.render(&[ALL], &[]);
        let svc = m.get("Service", NODE);
        let port = &svc["spec"]["ports"][0];
        assert_eq!(port["targetPort"], "http");
        let svc_port = port["port"].as_u64().unwrap();

        let route = m.get("HTTPRoute", FULLNAME);
        assert_eq!(
            route["spec"]["parentRefs"],
            json!([{"name": "public", "namespace": "gateway-system", "sectionName": "https"}])
        );
        assert_eq!(route["spec"]["hostnames"], json!(["chat.example.com"]));
        let mut paths = BTreeSet::new();
        for rule in route["spec"]["rules"].as_array().unwrap() {
            assert_eq!(rule["backendRefs"], json!([{"name": NODE, "port": svc_port}]));
            for mt in rule["matches"].as_array().unwrap() {
                paths.insert(format!(
                    "{} {}",
                    mt["path"]["type"].as_str().unwrap(),
                    mt["path"]["value"].as_str().unwrap()
                ));
            }
        }
        assert_eq!(
            paths,
            BTreeSet::from(["PathPrefix /v1".to_string(), "Exact /".to_string()]),
            "WebSocket, REST and the page; no /metrics"
        );

        let ing = m.get("Ingress", FULLNAME);
        let ann = &ing["metadata"]["annotations"];
        for key in [
            "nginx.ingress.kubernetes.io/proxy-read-timeout",
            "nginx.ingress.kubernetes.io/proxy-send-timeout",
        ] {
            let secs: u64 = ann[key].as_str().unwrap_or_else(|| panic!("{key}")).parse().unwrap();
            assert!(secs >= 3600, "{key} must be long for WebSockets");
        }
        assert_eq!(ing["spec"]["ingressClassName"], "nginx");
        let mut ipaths = BTreeSet::new();
        for rule in ing["spec"]["rules"].as_array().unwrap() {
            assert_eq!(rule["host"], "chat.example.com");
            for p in rule["http"]["paths"].as_array().unwrap() {
                assert_eq!(p["backend"]["service"], json!({"name": NODE, "port": {"number": svc_port}}));
                ipaths.insert(format!("{} {}", p["pathType"].as_str().unwrap(), p["path"].as_str().unwrap()));
            }
        }
        assert_eq!(ipaths, BTreeSet::from(["Prefix /v1".to_string(), "Exact /".to_string()]));

        // Monitoring scrapes the real ports and paths.
        for sm in m.of_kind("ServiceMonitor") {
            let target = m
                .of_kind("Service")
                .find(|s| selects(&sm["spec"]["selector"]["matchLabels"], &s["metadata"]["labels"]))
                .unwrap_or_else(|| panic!("ServiceMonitor {} selects no Service", sm["metadata"]["name"]));
            let ep = &sm["spec"]["endpoints"][0];
            assert_eq!(ep["path"], "/metrics");
            assert!(target["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == ep["port"]));
        }
        let node_sm = m.get("ServiceMonitor", NODE);
        assert_eq!(
            node_sm["spec"]["selector"]["matchLabels"]["shardchat.io/service"], "headless",
            "scrape every node, ready or not"
        );
        for pm in m.of_kind("PodMonitor") {
            assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
        }
        let dash = m.get("ConfigMap", &format!("{FULLNAME}-dashboard"));
        assert_eq!(dash["metadata"]["labels"]["grafana_dashboard"], "1");
        let json: Value =
            serde_json::from_str(dash["data"]["shardchat.json"].as_str().unwrap()).expect("dashboard JSON");
        assert_eq!(json["uid"], "shardchat");

        // NetworkPolicies: Redis only from this release's nodes and operator.
        let np = m.get("NetworkPolicy", REDIS);
        let froms = np["spec"]["ingress"][0]["from"].as_array().unwrap();
        let node_labels = &m.get("StatefulSet", NODE)["spec"]["template"]["metadata"]["labels"];
        let op_labels = &m.get("Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"];
        assert_eq!(froms.len(), 2);
        assert!(froms.iter().any(|f| selects(&f["podSelector"]["matchLabels"], node_labels)));
        assert!(froms.iter().any(|f| selects(&f["podSelector"]["matchLabels"], op_labels)));
    }
}

/// What `helm install` with no values gives a studio that exposes the Service.
#[test]
fn default_values_require_tokens_protect_redis_and_restrict_traffic() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        let m = helm.render(&[], &[]);
        let pod = &m.get("StatefulSet", NODE)["spec"]["template"]["spec"];
        let node = container(pod, "chat-node");
        // Tokens: a JWT key, never dev mode.
        assert!(env(node, "CHAT_JWT_SECRET").is_some() && env(node, "CHAT_DEV_MODE").is_none());
        // Redis: a password, protected mode, reached with the password.
        let redis = container(&m.get("StatefulSet", REDIS)["spec"]["template"]["spec"], "redis");
        let args: Vec<&str> = redis["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(args.contains(&"--requirepass") && args.windows(2).any(|w| w == ["--protected-mode", "yes"]));
        assert!(env_value(node, "CHAT_REDIS_URL").contains(":$(REDIS_PASSWORD)@"));
        // Traffic: a NetworkPolicy for every component; Redis only from this release's pods.
        for name in [NODE, OPERATOR, REDIS] {
            assert_eq!(m.get("NetworkPolicy", name)["spec"]["policyTypes"], json!(["Ingress"]), "{name}");
        }
        let np = m.get("NetworkPolicy", REDIS);
        let labels =
            |kind: &str, name: &str| m.get(kind, name)["spec"]["template"]["metadata"]["labels"].clone();
        let froms = np["spec"]["ingress"][0]["from"].as_array().unwrap();
        assert_eq!(froms.len(), 2);
        for f in froms {
            assert!(f["namespaceSelector"].is_null(), "same namespace only");
            let sel = &f["podSelector"]["matchLabels"];
            assert_eq!(sel["app.kubernetes.io/instance"], chart::RELEASE, "this release's pods only");
            assert!(
                selects(sel, &labels("StatefulSet", NODE)) || selects(sel, &labels("Deployment", OPERATOR))
            );
        }
        assert!(!selects(&froms[0]["podSelector"]["matchLabels"], &labels("StatefulSet", REDIS)));
    }
}

#[test]
fn operator_deployment_is_wired() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        for (values, replicas) in [(vec![], 2), (vec![ALL], 3)] {
            let m = helm.render(&values, &[]);
            let d = m.get("Deployment", OPERATOR);
            assert_eq!(d["spec"]["replicas"], replicas);
            let pod = &d["spec"]["template"]["spec"];
            let c = container(pod, "chat-operator");
            assert_eq!(
                env(c, "POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.namespace"
            );
            assert_eq!(env(c, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
            assert_eq!(env_value(c, "CHAT_OPERATOR_LEASE_NAME"), OPERATOR, "one Lease per release");
            let listen = env_value(c, "CHAT_OPERATOR_METRICS_LISTEN");
            let port: i64 = listen.rsplit(':').next().unwrap().parse().unwrap();
            assert_eq!(port_number(c, "metrics"), port);
            assert_eq!(c["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "metrics"}));
            assert_eq!(c["livenessProbe"]["httpGet"], json!({"path": "/healthz", "port": "metrics"}));
            // Flags belong to the top-level command; a `run` subcommand would not take them.
            let args: Vec<&str> =
                c["args"].as_array().into_iter().flatten().map(|a| a.as_str().unwrap()).collect();
            assert!(!args.contains(&"run"), "{args:?}");
            for name in [
                "CHAT_OPERATOR_LEASE_DURATION",
                "CHAT_OPERATOR_LEASE_GRACE",
                "CHAT_OPERATOR_RING_DEBOUNCE",
                "CHAT_OPERATOR_REQUEUE",
            ] {
                duration_secs(env_value(c, name));
            }
            assert!(
                duration_secs(env_value(c, "CHAT_OPERATOR_LEASE_GRACE"))
                    < duration_secs(env_value(c, "CHAT_OPERATOR_LEASE_DURATION"))
            );
            let pdb = m.of_kind("PodDisruptionBudget").any(|p| p["metadata"]["name"] == OPERATOR);
            assert_eq!(pdb, replicas > 1);
        }
        let single = helm.render(&[], &["operator.replicas=1"]);
        assert!(
            !single.of_kind("PodDisruptionBudget").any(|p| p["metadata"]["name"] == OPERATOR),
            "a PDB on one replica blocks drains"
        );
    }
}

#[test]
fn redis_is_bundled_or_external_from_a_secret() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        // Bundled: the URL names the bundled Service.
        let m = helm.render(&[], &[]);
        let redis = m.get("StatefulSet", REDIS);
        assert_eq!(redis["spec"]["replicas"], 1);
        let svc = m.get("Service", REDIS);
        let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
        let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap();
        // The password comes from the generated Secret and is expanded into the URL.
        assert_eq!(env_value(node, "CHAT_REDIS_URL"), format!("redis://:$(REDIS_PASSWORD)@{REDIS}:{port}"));
        let password_ref =
            json!({"secretKeyRef": {"name": "sc-shardchat-redis-auth", "key": "redis-password"}});
        assert_eq!(env(node, "REDIS_PASSWORD").unwrap()["valueFrom"], password_ref);
        let rc = container(&redis["spec"]["template"]["spec"], "redis");
        assert!(redis["spec"]["volumeClaimTemplates"].is_null(), "no persistence by default");
        let args: Vec<&str> = rc["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert!(args.windows(2).any(|w| w == ["--appendonly", "no"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--requirepass", "$(REDIS_PASSWORD)"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--protected-mode", "yes"]), "{args:?}");
        assert!(!args.windows(2).any(|w| w == ["--protected-mode", "no"]), "{args:?}");
        assert_eq!(env(rc, "REDIS_PASSWORD").unwrap()["valueFrom"], password_ref);
        assert_eq!(env(rc, "REDISCLI_AUTH").unwrap()["valueFrom"], password_ref, "the probe authenticates");
        m.get("Secret", "sc-shardchat-redis-auth");
        let op = container(&m.get("Deployment", OPERATOR)["spec"]["template"]["spec"], "chat-operator");
        assert_eq!(env(op, "REDIS_PASSWORD").unwrap()["valueFrom"], password_ref);

        // A password from an existing Secret (stable under `helm template`).
        let m = helm.render(&[], &["redis.auth.existingSecret=my-redis", "redis.auth.existingSecretKey=pw"]);
        assert!(!m.of_kind("Secret").any(|s| s["metadata"]["name"] == "sc-shardchat-redis-auth"));
        let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
        assert_eq!(
            env(node, "REDIS_PASSWORD").unwrap()["valueFrom"],
            json!({"secretKeyRef": {"name": "my-redis", "key": "pw"}})
        );
        // Password off (explicitly): no Secret, protected mode off so pods can connect.
        let m = helm.render(&[], &["redis.auth.enabled=false"]);
        let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
        assert_eq!(env_value(node, "CHAT_REDIS_URL"), format!("redis://{REDIS}:{port}"));
        assert!(!m.of_kind("Secret").any(|s| s["metadata"]["name"] == "sc-shardchat-redis-auth"));

        // Persistence on: a PVC template mounted at /data.
        let p = helm.render(&[ALL], &[]);
        let redis = p.get("StatefulSet", REDIS);
        assert_eq!(redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data");
        assert_eq!(
            redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "2Gi"
        );

        // External, from an existing Secret: no bundled Redis, no Secret of ours.
        let m = helm.render(
            &[],
            &["redis.enabled=false", "redis.existingSecret=prod-redis", "redis.existingSecretKey=url"],
        );
        assert_eq!(m.of_kind("StatefulSet").count(), 1);
        let secrets: Vec<&Value> = m.of_kind("Secret").collect();
        assert_eq!(secrets.len(), 1, "only the generated auth Secret");
        assert_eq!(secrets[0]["metadata"]["name"], "sc-shardchat-auth");
        let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
        let op = container(&m.get("Deployment", OPERATOR)["spec"]["template"]["spec"], "chat-operator");
        let from = json!({"secretKeyRef": {"name": "prod-redis", "key": "url"}});
        assert_eq!(env(node, "CHAT_REDIS_URL").unwrap()["valueFrom"], from);
        assert_eq!(env(op, "CHAT_OPERATOR_REDIS_URL").unwrap()["valueFrom"], from);

        // External URL inline: kept in a Secret, not in the pod spec.
        let m = helm.render(&[], &["redis.enabled=false", "redis.url=redis://redis.example:6379/0"]);
        let secret = m.get("Secret", &format!("{FULLNAME}-redis-url"));
        assert_eq!(secret["stringData"]["redis-url"], "redis://redis.example:6379/0");
        let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
        assert_eq!(
            env(node, "CHAT_REDIS_URL").unwrap()["valueFrom"]["secretKeyRef"]["name"],
            format!("{FULLNAME}-redis-url")
        );

        // Neither: refuse to render.
        let err = helm.template(&[], &["redis.enabled=false"]).expect_err("no Redis must not render");
        assert!(err.contains("Redis is required"), "{err}");
    }
}

#[test]
fn auth_is_on_by_default_and_dev_mode_only_on_request() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        // Default: a generated HS256 secret and admin token; tokens required.
        let m = helm.render(&[], &[]);
        let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
        assert_eq!(
            env(node, "CHAT_JWT_SECRET").unwrap()["valueFrom"],
            json!({"secretKeyRef": {"name": "sc-shardchat-auth", "key": "jwt-secret"}})
        );
        assert_eq!(
            env(node, "CHAT_ADMIN_TOKEN").unwrap()["valueFrom"],
            json!({"secretKeyRef": {"name": "sc-shardchat-auth", "key": "admin-token"}})
        );
        assert!(env(node, "CHAT_DEV_MODE").is_none(), "never dev mode by default");
        let secret = m.get("Secret", "sc-shardchat-auth");
        for key in ["jwt-secret", "admin-token"] {
            assert!(
                secret["stringData"][key].as_str().unwrap().len() >= 32,
                "{key}: long enough for the node"
            );
        }
        for name in
            ["CHAT_JWT_ISSUER", "CHAT_JWT_AUDIENCE", "CHAT_DEFAULT_JOIN_ROLES", "CHAT_ALLOWED_ORIGINS"]
        {
            assert!(env(node, name).is_none(), "{name} is unset by default");
        }

        // Dev mode only when asked for, and then no keys at all.
        for m in [helm.render(&[QUICKSTART], &[]), helm.render(&[], &["auth.devMode=true"])] {
            let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
            assert_eq!(env_value(node, "CHAT_DEV_MODE"), "true");
            for name in ["CHAT_JWT_SECRET", "CHAT_JWT_PUBLIC_KEY", "CHAT_JWKS_FILE", "CHAT_ADMIN_TOKEN"] {
                assert!(env(node, name).is_none(), "{name} in dev mode");
            }
            assert!(!m.of_kind("Secret").any(|s| s["metadata"]["name"] == "sc-shardchat-auth"));
        }

        // Issuer, audience, default access and origins reach the node.
        let m = helm.render(
            &[],
            &[
                "auth.issuer=game-backend",
                "auth.audience=shardchat",
                "chatNode.defaultAccess.joinRoles={player}",
                "chatNode.defaultAccess.publishRoles={player,verified}",
                "chatNode.allowedOrigins={https://play.example.com,https://beta.example.com}",
            ],
        );
        let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
        assert_eq!(env_value(node, "CHAT_JWT_ISSUER"), "game-backend");
        assert_eq!(env_value(node, "CHAT_JWT_AUDIENCE"), "shardchat");
        assert_eq!(env_value(node, "CHAT_DEFAULT_JOIN_ROLES"), "player");
        assert_eq!(env_value(node, "CHAT_DEFAULT_PUBLISH_ROLES"), "player,verified");
        assert_eq!(
            env_value(node, "CHAT_ALLOWED_ORIGINS"),
            "https://play.example.com,https://beta.example.com"
        );

        let m = helm.render(&[ALL], &[]);
        let pod = &m.get("StatefulSet", NODE)["spec"]["template"]["spec"];
        let node = container(pod, "chat-node");
        assert_eq!(
            env(node, "CHAT_JWT_SECRET").unwrap()["valueFrom"],
            json!({"secretKeyRef": {"name": "shardchat-auth", "key": "jwt-secret"}})
        );
        assert_eq!(
            env(node, "CHAT_ADMIN_TOKEN").unwrap()["valueFrom"],
            json!({"secretKeyRef": {"name": "shardchat-auth", "key": "admin-token"}})
        );
        // File-based keys: the env var names a file projected from the Secret.
        let vol =
            pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "auth").expect("auth volume");
        assert_eq!(vol["secret"]["secretName"], "shardchat-auth");
        let mount = node["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "auth")
            .expect("auth mount");
        assert!(mount["subPath"].is_null(), "no subPath: Secret updates (JWKS rotation) must reach the pod");
        let dir = mount["mountPath"].as_str().unwrap();
        for (env_name, key) in
            [("CHAT_JWT_PUBLIC_KEY", "jwt-public-key.pem"), ("CHAT_JWKS_FILE", "jwks.json")]
        {
            let file = env_value(node, env_name);
            let rel =
                file.strip_prefix(&format!("{dir}/")).unwrap_or_else(|| panic!("{file} not under {dir}"));
            assert!(
                vol["secret"]["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["key"] == key && i["path"] == rel)
            );
        }

        assert!(
            !m.of_kind("Secret").any(|s| s["metadata"]["name"] == "sc-shardchat-auth"),
            "no generated one"
        );

        // Combinations the nodes would refuse to start with do not render.
        let refuse = |sets: &[&str], expect: &str| {
            let err = helm.template(&[], sets).expect_err(&format!("{sets:?} must not render"));
            assert!(err.contains(expect), "{sets:?}: {err}");
        };
        refuse(&["auth.existingSecret=x"], "auth.existingSecret is set but");
        // An admin token alone used to count as "auth enabled" while the nodes ran in dev mode.
        refuse(&["auth.existingSecret=x", "auth.adminTokenKey=admin"], "names no JWT key");
        refuse(&["auth.existingSecret=x", "auth.jwtSecretKey=s", "auth.devMode=true"], "cannot be combined");
        refuse(&["auth.jwksKey=jwks.json"], "which is not set");
        // Dev mode with a static admin token is fine.
        let m = helm.render(&[], &["auth.devMode=true", "auth.existingSecret=x", "auth.adminTokenKey=admin"]);
        let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
        assert_eq!(env_value(node, "CHAT_DEV_MODE"), "true");
        assert!(env(node, "CHAT_ADMIN_TOKEN").is_some());
    }
}

#[test]
fn values_schema_rejects_unknown_keys_and_wrong_types() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        for bad in [
            "bogus=1",
            "chatNode.bogus=1",
            "chatNode.probes.readiness.bogus=1",
            "metrics.serviceMonitor.nope=true",
            "httpRoute.timeouts.idle=1s",
            "chatNode.replicas=three",
            "redis.enabled=maybe",
            "chatNode.moderation=shout",
            "chatNode.logFormat=xml",
            "service.port=0",
            "chatNode.image.digest=latest",
            "ingress.hosts=chat.example.com",
            "auth.devMode=sometimes",
            "redis.auth.enabled=maybe",
            "chatNode.allowedOrigins={evil}",
            "chatNode.defaultAccess.joinRoles={bad role}",
            "chatNode.defaultAccess.everyone=true",
        ] {
            let err = helm.template(&[], &[bad]).err().unwrap_or_else(|| {
                panic!("helm {}: --set {bad} rendered, the schema should reject it", helm.version)
            });
            assert!(
                err.to_lowercase().contains("schema"),
                "helm {}: --set {bad}: not a schema error: {err}",
                helm.version
            );
        }
        // And good values still pass.
        helm.render(
            &[],
            &["chatNode.replicas=5", "chatNode.moderation=off", "ingress.hosts={chat.example.com}"],
        );
    }
}

#[test]
fn termination_grace_must_cover_the_drain() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        // Default: preStop 5 s + shutdown grace 20 s.
        let err = helm
            .template(&[], &["chatNode.terminationGracePeriodSeconds=25"])
            .expect_err("a grace period not above the drain must be refused");
        assert!(err.contains("must be greater than"), "{err}");
        let m = helm.render(&[], &["chatNode.terminationGracePeriodSeconds=26"]);
        assert_eq!(
            m.get("StatefulSet", NODE)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            26
        );
        let m = helm.render(&[], &["chatNode.shutdownGraceSeconds=40"]);
        assert_eq!(
            m.get("StatefulSet", NODE)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            55
        );
    }
}

#[test]
fn extra_volumes_and_proxy_hops_reach_the_node() {
    let Some(helms) = helms() else { return };
    for helm in &helms {
        let m = helm.render(&[], &[]);
        let node = container(&m.get("StatefulSet", NODE)["spec"]["template"]["spec"], "chat-node");
        assert_eq!(env_value(node, "CHAT_TRUSTED_PROXY_HOPS"), "0");

        let m = helm.render(&[ALL], &[]);
        let pod = &m.get("StatefulSet", NODE)["spec"]["template"]["spec"];
        let node = container(pod, "chat-node");
        assert_eq!(env_value(node, "CHAT_TRUSTED_PROXY_HOPS"), "1");
        assert_eq!(env_value(node, "CHAT_MODERATION_WORDS"), "/etc/shardchat/words/words.txt");
        assert!(
            pod["volumes"].as_array().unwrap().iter().any(|v| v["configMap"]["name"] == "chat-word-list")
        );
        assert!(
            node["volumeMounts"].as_array().unwrap().iter().any(|v| v["mountPath"] == "/etc/shardchat/words")
        );
    }
}

/// Renders NOTES.txt through `helm install --dry-run=client`, which only
/// Helm 4 does without a reachable cluster (Helm 3 insists on one).
fn notes(helm: &Helm, values: &[&str], sets: &[&str]) -> Option<String> {
    if helm.major() < 4 {
        return None;
    }
    let chart = chart_dir();
    let files: Vec<String> = values.iter().map(|v| chart.join(v).display().to_string()).collect();
    let mut cmd = std::process::Command::new(&helm.bin);
    cmd.args([
        "install",
        chart::RELEASE,
        chart.to_str().unwrap(),
        "--dry-run=client",
        "--namespace",
        chart::NAMESPACE,
    ])
    .env("KUBECONFIG", std::env::temp_dir().join("shardchat-no-kubeconfig"));
    for f in &files {
        cmd.args(["-f", f]);
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    let o = cmd.output().expect("helm install --dry-run");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "helm install --dry-run=client failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(out.split("\nNOTES:\n").nth(1).expect("NOTES section").to_string())
}

#[test]
fn notes_tell_how_to_connect_and_what_to_try() {
    let Some(helms) = helms() else { return };
    let crd = chatchannel_crd();
    let mut rendered = 0;
    for helm in &helms {
        let Some(text) = notes(helm, &[], &[]) else { continue };
        rendered += 1;
        assert!(text.contains(&format!("port-forward svc/{NODE} 8080:80")), "{text}");
        assert!(text.contains("http://localhost:8080/"), "{text}");
        assert!(text.contains("/v1/ws"), "{text}");
        // Default: tokens required, and where the generated secret is.
        assert!(text.contains("JWT required") && !text.contains("DEV MODE"), "{text}");
        assert!(text.contains("get secret sc-shardchat-auth"), "{text}");
        assert!(text.contains("quickstart-values.yaml"), "{text}");
        assert!(text.contains("NetworkPolicies: on"), "{text}");
        assert!(text.contains("bundled Redis"), "{text}");
        assert!(text.contains("get chatchannels"), "{text}");
        assert!(text.contains("scale statefulset/"), "{text}");
        // The inline ChatChannel is valid against the CRD.
        let body = text
            .split("<<'YAML'")
            .nth(1)
            .and_then(|t| t.split("\n  YAML").next())
            .expect("inline ChatChannel");
        let yaml: String =
            body.lines().skip(1).map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l))).collect();
        let doc: Value = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(check_custom_resource(&doc, &crd), Vec::<String>::new());

        let text = notes(helm, &[ALL], &[]).unwrap();
        assert!(text.contains("wss://chat.example.com/v1/ws"), "{text}");
        assert!(text.contains("Bearer") && text.contains("Secret shardchat-auth"), "{text}");
        assert!(!text.contains("DEV MODE"), "{text}");

        // The quickstart says loudly that nothing is authenticated.
        let text = notes(helm, &[QUICKSTART], &[]).unwrap();
        assert!(text.contains("DEV MODE") && text.contains("Authentication: OFF"), "{text}");
        assert!(text.contains("?user=<id>") && text.contains("pick two names"), "{text}");
    }
    if rendered == 0 {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "*** NOTES.txt not checked: needs helm 4 ***");
    }
}

#[test]
fn every_value_is_documented() {
    let values: Value = serde_saphyr::from_str(&read("charts/shardchat/values.yaml")).expect("values.yaml");
    let doc = read("docs/kubernetes.md");
    let mut missing = Vec::new();
    for (top, v) in values.as_object().unwrap() {
        let mut paths = vec![top.clone()];
        if let Some(children) = v.as_object().filter(|m| !m.is_empty() && top != "commonLabels") {
            paths = children.keys().map(|k| format!("{top}.{k}")).collect();
        }
        for p in paths {
            if !doc.contains(&format!("`{p}")) {
                missing.push(p);
            }
        }
    }
    assert!(missing.is_empty(), "values missing from docs/kubernetes.md: {missing:?}");
}

#[test]
fn chart_app_version_is_the_workspace_version() {
    let chart: Value = serde_saphyr::from_str(&read("charts/shardchat/Chart.yaml")).expect("Chart.yaml");
    let cargo = read("Cargo.toml");
    let version = cargo
        .split("[workspace.package]")
        .nth(1)
        .and_then(|s| s.lines().find_map(|l| l.trim().strip_prefix("version = ")))
        .expect("workspace version")
        .trim_matches('"');
    assert_eq!(
        chart["appVersion"], version,
        "image tags default to appVersion: keep it at the workspace version"
    );
}

/// Docker cannot run here, so the Dockerfiles are checked statically: a
/// pinned Rust image, a locked release build of the right binary, a
/// non-root runtime user, and the port the chart expects.
#[test]
fn dockerfiles_are_pinned_multi_stage_and_non_root() {
    let pinned = regex::Regex::new(r"rust:\d+\.\d+\.\d+-").unwrap();
    for (file, package, port) in
        [("chat-node/Dockerfile", "chat-node", 8080), ("operator/Dockerfile", "chat-operator", 8081)]
    {
        let text = read(file);
        let lines: Vec<&str> =
            text.lines().map(str::trim).filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        let rust_image = lines
            .iter()
            .find_map(|l| l.strip_prefix("ARG RUST_IMAGE="))
            .unwrap_or_else(|| panic!("{file}: ARG RUST_IMAGE"));
        assert!(pinned.is_match(rust_image), "{file}: pin the Rust image to a full version: {rust_image}");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("FROM ")).count(),
            2,
            "{file}: build + runtime stages"
        );
        assert!(
            text.contains(&format!("cargo build --locked --release -p {package} --bin {package}")),
            "{file}: locked release build of {package}"
        );
        let user = lines.iter().rev().find_map(|l| l.strip_prefix("USER ")).expect("USER");
        let uid = user.split(':').next().unwrap();
        assert!(
            uid.parse::<u32>().map(|u| u > 0).unwrap_or(false),
            "{file}: numeric non-root USER, got {user}"
        );
        assert!(lines.contains(&format!("EXPOSE {port}").as_str()), "{file}: EXPOSE {port}");
        assert!(lines.last().unwrap().starts_with("ENTRYPOINT [\"/usr/local/bin/"), "{file}");
        // The chart's pod security context must match the image's user.
        let values: Value = serde_saphyr::from_str(&read("charts/shardchat/values.yaml")).unwrap();
        let key = if package == "chat-node" { "chatNode" } else { "operator" };
        assert_eq!(values[key]["podSecurityContext"]["runAsUser"].to_string(), uid, "{file} vs values {key}");
    }
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        ".dockerignore must keep target/ out of the context"
    );
}
