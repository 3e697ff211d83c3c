//! The Helm chart in `packaging/helm/hostplane`, rendered by
//! `scripts/helm-template` (Helm's own Go engine, the Helm v4 SDK, through
//! the Python binding helm-python-sdk: no `helm` binary can be installed
//! here; `scripts/setup` installs the binding with pip):
//! - with its default values it renders the same objects as the plain
//!   manifests in `packaging/kubernetes/` (parsed, per kind/namespace/name;
//!   the configs inside the ConfigMaps are compared parsed too);
//! - what it renders validates with `kubernetes-validate --strict`, as
//!   `k8s_manifests.rs` does for the plain manifests;
//! - `helm lint --strict` passes;
//! - values take effect exactly where they should;
//! - a bad value is refused by values.schema.json, naming the key.
//!
//! Without helm_python (or, for the schema test, `kubernetes-validate`) a
//! test prints `SKIPPED: <why>` and returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_norway::Value;

/// The oldest Kubernetes checked (as in k8s_manifests.rs); the tool's newest too.
const OLDEST: &str = "1.29.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Why the chart cannot be rendered here, if it cannot.
fn helm_missing() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import helm_python"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "the Python module helm_python is missing ({}); scripts/setup installs helm-python-sdk with pip",
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Some(format!("python3 does not run ({e}); helm-python-sdk needs it")),
    }
}

fn skip(why: Option<String>) -> bool {
    match why {
        Some(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
        None => false,
    }
}

fn helm_template(args: &[&str]) -> Output {
    Command::new(root().join("scripts/helm-template"))
        .args(args)
        .output()
        .expect("scripts/helm-template runs")
}

/// The chart rendered with `args`; panics with the script's stderr if it fails.
fn render(args: &[&str]) -> String {
    let out = helm_template(args);
    assert!(
        out.status.success(),
        "scripts/helm-template {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents of a multi-document YAML text (separated by `---` lines).
fn documents(text: &str, what: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.iter()
        .map(|d| serde_norway::from_str::<Value>(d).unwrap_or_else(|e| panic!("{what}: {e}\n{d}")))
        .filter(|v| !v.is_null())
        .collect()
}

type Key = (String, String, String);

/// Objects by kind/namespace/name; the `*.yaml` entries of ConfigMaps (the
/// daemons' configs) parsed, so that key order and comments do not count.
fn objects(docs: Vec<Value>) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for mut d in docs {
        if d["kind"] == "ConfigMap"
            && let Some(data) = d.get_mut("data").and_then(Value::as_mapping_mut)
        {
            for (k, v) in data.iter_mut() {
                if k.as_str().is_some_and(|k| k.ends_with(".yaml")) {
                    *v = serde_norway::from_str(v.as_str().unwrap()).unwrap();
                }
            }
        }
        let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let key = (
            s(&d["kind"]),
            s(&d["metadata"]["namespace"]),
            s(&d["metadata"]["name"]),
        );
        assert!(map.insert(key.clone(), d).is_none(), "{key:?} twice");
    }
    map
}

fn plain_manifests() -> BTreeMap<Key, Value> {
    let dir = root().join("packaging/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    objects(
        files
            .iter()
            .flat_map(|f| documents(&std::fs::read_to_string(f).unwrap(), &f.display().to_string()))
            .collect(),
    )
}

fn rendered(args: &[&str]) -> BTreeMap<Key, Value> {
    objects(documents(&render(args), "scripts/helm-template"))
}

fn show(v: &Value) -> String {
    serde_norway::to_string(v).unwrap().trim().replace('\n', " ")
}

/// Where two values differ, one line per difference.
fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (k, va) in a {
                let p = format!("{path}.{}", show(k));
                match b.get(k) {
                    Some(vb) => diff(&p, va, vb, out),
                    None => out.push(format!("{p}: want {}, missing", show(va))),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.push(format!("{path}.{}: unexpected {}", show(k), show(vb)));
                }
            }
        }
        (Value::Sequence(a), Value::Sequence(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if want != got => out.push(format!("{path}: want {}, got {}", show(want), show(got))),
        _ => {}
    }
}

/// Asserts that `got` holds exactly the objects of `want`, listing every difference.
fn assert_same(want: &BTreeMap<Key, Value>, got: &BTreeMap<Key, Value>, what: &str) {
    let mut out = Vec::new();
    for (k, w) in want {
        match got.get(k) {
            Some(g) => diff(&format!("{k:?}"), w, g, &mut out),
            None => out.push(format!("{k:?}: missing")),
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        out.push(format!("{k:?}: unexpected"));
    }
    assert!(out.is_empty(), "{what}:\n  {}", out.join("\n  "));
}

#[test]
fn default_values_render_the_plain_manifests() {
    if skip(helm_missing()) {
        return;
    }
    let plain = plain_manifests();
    let chart = rendered(&[]);
    assert!(plain.len() >= 9, "{:?}", plain.keys());
    assert_same(
        &plain,
        &chart,
        "the chart with default values differs from packaging/kubernetes/ (want: plain, got: chart)",
    );

    // appVersion is the workspace version: it is the images' default tag.
    let meta: Value = serde_norway::from_str(
        &std::fs::read_to_string(root().join("packaging/helm/hostplane/Chart.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["apiVersion"], "v2");
    assert_eq!(meta["name"], "hostplane");
    assert_eq!(meta["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_rendered_chart_validates_against_the_kubernetes_schemas() {
    if skip(helm_missing().or_else(hostplane_tests::kubernetes_validate_missing)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The defaults, and the values the docs install with plus the optional parts.
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "namespace: {create: false}\ntls: {createSecrets: false}\n\
         coordinator: {tokensSecret: hostplane-tokens, store: {storageClass: fast}}\n\
         imagePullSecrets: [registry]\n",
    )
    .unwrap();
    for (name, args) in [
        ("defaults", vec![]),
        ("overrides", vec!["-f", values.to_str().unwrap()]),
    ] {
        let text = render(&args);
        let docs = documents(&text, name).len();
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &text).unwrap();
        for version in [Some(OLDEST), None] {
            let mut cmd = Command::new("kubernetes-validate");
            cmd.args(["--strict", "--no-warn"]);
            if let Some(v) = version {
                cmd.args(["-k", v]);
            }
            let out = cmd.arg(&file).output().expect("kubernetes-validate runs");
            let out = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // One "passed" line per document: none failed or was skipped as unknown.
            assert_eq!(
                out.matches(" passed ").count(),
                docs,
                "{name} (kubernetes {version:?}):\n{out}"
            );
        }
    }
}

#[test]
fn helm_lint_passes_strict() {
    if skip(helm_missing()) {
        return;
    }
    let out = helm_template(&["--lint"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("[WARNING]") && !text.contains("[ERROR]"), "{text}");
}

#[test]
fn values_take_effect_exactly_where_they_are_set() {
    if skip(helm_missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        "namespace:\n  name: lab\nagent:\n  image:\n    tag: 9.9.9\n  config:\n    cache:\n      max_bytes: 1073741824\n",
    )
    .unwrap();
    // -f, then --set over it, as helm merges them.
    let got = rendered(&[
        "-f",
        values.to_str().unwrap(),
        "--set",
        "coordinator.store.size=5Gi",
    ]);

    // The defaults with exactly those changes.
    let mut want = BTreeMap::new();
    for ((kind, ns, name), mut d) in plain_manifests() {
        if kind == "Namespace" {
            d["metadata"]["name"] = "lab".into();
        } else {
            d["metadata"]["namespace"] = "lab".into();
        }
        match (kind.as_str(), name.as_str()) {
            ("ConfigMap", "hostplane-agent") => {
                let cfg = &mut d["data"]["agent.yaml"];
                cfg["coordinator"] = "https://hostplane-coordinator.lab.svc:50051".into();
                // Merged into the chart's cache section, next to its cache.dir.
                cfg["cache"]["max_bytes"] = 1073741824u64.into();
            }
            ("DaemonSet", _) => {
                d["spec"]["template"]["spec"]["containers"][0]["image"] = "hostplane-agent:9.9.9".into();
            }
            ("PersistentVolumeClaim", _) => {
                d["spec"]["resources"]["requests"]["storage"] = "5Gi".into();
            }
            _ => {}
        }
        let ns = if ns.is_empty() { ns } else { "lab".to_owned() };
        let name = if kind == "Namespace" {
            "lab".to_owned()
        } else {
            name
        };
        want.insert((kind, ns, name), d);
    }
    assert_same(&want, &got, "the overrides changed something else (want, got)");

    // The install docs/operations.md describes: namespace and Secrets made
    // with kubectl beforehand, admin tokens from a Secret.
    let got = rendered(&[
        "--set",
        "namespace.create=false,tls.createSecrets=false,coordinator.tokensSecret=hostplane-tokens",
    ]);
    let kinds: Vec<&str> = got.keys().map(|k| k.0.as_str()).collect();
    assert!(
        !kinds.contains(&"Namespace") && !kinds.contains(&"Secret"),
        "{kinds:?}"
    );
    let key = |kind: &str, name: &str| -> Key { (kind.into(), "hostplane".into(), name.into()) };
    let d = &got[&key("Deployment", "hostplane-coordinator")];
    let pod = &d["spec"]["template"]["spec"];
    let tokens = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tokens")
        .expect("a tokens volume");
    assert_eq!(tokens["secret"]["secretName"], "hostplane-tokens");
    assert!(
        pod["containers"][0]["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "tokens" && m["mountPath"] == "/etc/hostplane/auth"),
        "{pod:?}"
    );
    let cm = &got[&key("ConfigMap", "hostplane-coordinator")];
    assert_eq!(
        cm["data"]["coordinator.yaml"]["auth"]["tokens_file"],
        "/etc/hostplane/auth/tokens.yaml"
    );
}

#[test]
fn agent_privileged_false_renders_the_capabilities_of_the_systemd_unit() {
    if skip(helm_missing()) {
        return;
    }
    let key = (
        "DaemonSet".to_owned(),
        "hostplane".to_owned(),
        "hostplane-agent".to_owned(),
    );
    let sc = |objs: &BTreeMap<Key, Value>| {
        objs[&key]["spec"]["template"]["spec"]["containers"][0]["securityContext"].clone()
    };

    // The default: privileged (the device cgroup), nothing else to say.
    let default = sc(&rendered(&[]));
    assert_eq!(default["privileged"], true);
    assert!(default.get("capabilities").is_none(), "{default:?}");

    let got = rendered(&["--set", "agent.privileged=false"]);
    let sc = sc(&got);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let mut caps: Vec<&str> = sc["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    caps.sort();
    assert_eq!(caps, ["NET_ADMIN", "SYS_ADMIN", "SYS_RAWIO"]);
    // Each one is in the systemd unit's bounding set (the unit names its job).
    let unit = std::fs::read_to_string(root().join("systemd/hostplane-agent.service")).unwrap();
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit has a CapabilityBoundingSet");
    for cap in &caps {
        assert!(
            bounding.split_whitespace().any(|b| b == format!("CAP_{cap}")),
            "{cap} not in the unit's {bounding}"
        );
    }
    // Only the DaemonSet's securityContext changed.
    let mut want = plain_manifests();
    want.get_mut(&key).unwrap()["spec"]["template"]["spec"]["containers"][0]["securityContext"] = sc;
    assert_same(
        &want,
        &got,
        "agent.privileged=false changed something else (want, got)",
    );
}

#[test]
fn a_bad_value_is_refused_naming_the_key() {
    if skip(helm_missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bad_file = dir.path().join("bad.yaml");
    std::fs::write(&bad_file, "coordinator:\n  store:\n    size: lots\n").unwrap();
    for (args, names) in [
        (
            vec!["--set", "coordinator.port=fifty"],
            vec!["/coordinator/port", "want integer"],
        ),
        (
            vec!["-f", bad_file.to_str().unwrap()],
            vec!["/coordinator/store/size", "lots"],
        ),
        (
            vec!["--set", "agent.privileged=maybe"],
            vec!["/agent/privileged", "want boolean"],
        ),
        (
            vec!["--set", "monitoring.prometheusRule.enabled=maybe"],
            vec!["/monitoring/prometheusRule/enabled", "want boolean"],
        ),
        // A typo is not silently ignored.
        (
            vec!["--set", "agent.imag.tag=1"],
            vec!["/agent", "'imag' not allowed"],
        ),
        // The chart owns the keys that must agree with its mounts and Service.
        (
            vec!["--set", "agent.config.coordinator=https://elsewhere:1"],
            vec!["/agent/config/coordinator"],
        ),
    ] {
        let out = helm_template(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} was not refused: {err}");
        assert!(out.stdout.is_empty(), "{args:?} rendered something");
        for name in names {
            assert!(err.contains(name), "{args:?}: {name:?} not in {err}");
        }
    }
}

#[test]
fn the_charts_monitoring_files_are_those_of_packaging_monitoring() {
    for (copy, original) in [
        ("hostplane-dashboard.json", "grafana/hostplane-dashboard.json"),
        ("hostplane-rules.yml", "prometheus/hostplane-rules.yml"),
    ] {
        let copy_path = root().join("packaging/helm/hostplane/files").join(copy);
        let original_path = root().join("packaging/monitoring").join(original);
        assert_eq!(
            std::fs::read(&copy_path).unwrap(),
            std::fs::read(&original_path).unwrap(),
            "{} differs from {}: cp the second over the first",
            copy_path.display(),
            original_path.display()
        );
    }
}

#[test]
fn monitoring_renders_the_dashboard_and_the_rules_when_asked() {
    if skip(helm_missing()) {
        return;
    }
    let monitoring = root().join("packaging/monitoring");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring.join("grafana/hostplane-dashboard.json")).unwrap(),
    )
    .unwrap();
    let rules_text = std::fs::read_to_string(monitoring.join("prometheus/hostplane-rules.yml")).unwrap();
    let rules: Value = serde_norway::from_str(&rules_text).unwrap();
    let defaults = rendered(&[]);
    let all = rendered(&[
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.prometheusRule.labels.release=kube-prometheus-stack",
        "--set",
        "monitoring.rulesConfigMap.enabled=true",
    ]);
    let key = |kind: &str, name: &str| (kind.to_string(), "hostplane".to_string(), name.to_string());
    let dash_key = key("ConfigMap", "hostplane-grafana-dashboard");
    let rule_key = key("PrometheusRule", "hostplane");
    let rules_cm_key = key("ConfigMap", "hostplane-prometheus-rules");
    for k in [&dash_key, &rule_key, &rules_cm_key] {
        assert!(!defaults.contains_key(k), "{k:?} rendered by default");
        assert!(all.contains_key(k), "{k:?} not rendered when enabled");
    }
    assert_eq!(all.len(), defaults.len() + 3, "exactly three more objects");
    // The dashboard, parsed, is the file's; labelled for Grafana's sidecar.
    let cm = &all[&dash_key];
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["labels"]["app.kubernetes.io/part-of"], "hostplane");
    let got: serde_json::Value =
        serde_json::from_str(cm["data"]["hostplane-dashboard.json"].as_str().unwrap()).unwrap();
    assert_eq!(got, dashboard);
    // The PrometheusRule's spec is the rules file; its labels are the values'.
    let pr = &all[&rule_key];
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pr["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(pr["spec"], rules);
    // The ConfigMap holds the file itself.
    let cm = &all[&rules_cm_key];
    assert_eq!(
        cm["data"]["hostplane-rules.yml"].as_str().unwrap(),
        rules_text.trim_end(),
        "the rules file, as written"
    );
    // What Prometheus would load from the PrometheusRule passes promtool too.
    if Command::new("promtool").arg("--version").output().is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yml");
        std::fs::write(&file, serde_norway::to_string(&pr["spec"]).unwrap()).unwrap();
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("promtool missing: the rendered rules were compared, not checked by promtool");
    }
    // helm lint --strict with everything on.
    let out = helm_template(&[
        "--lint",
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
        "--set",
        "monitoring.prometheusRule.enabled=true",
        "--set",
        "monitoring.rulesConfigMap.enabled=true",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("[WARNING]") && !text.contains("[ERROR]"),
        "{text}"
    );
}
