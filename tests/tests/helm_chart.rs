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
//! - a bad value is refused by values.schema.json, naming the key;
//! - on PostgreSQL (`coordinator.store.backend: postgres`, issue 13) the
//!   coordinator runs `coordinator.replicas` replicas, rolled one at a time,
//!   spread over nodes and under a PodDisruptionBudget, without the store's
//!   PVC, with its password, CA and client certificate mounted where the
//!   config it renders reads them; `cloudnativepg.enabled` adds a
//!   CloudNativePG `Cluster` (checked against the operator's own schema in
//!   `packaging/helm/schemas/`) whose Secrets the coordinator uses; values
//!   that cannot work together (SQLite with several replicas, a password in
//!   the URL, ...) are refused at render time, naming them;
//! - the coordinator.yaml it renders passes `hostplane-coordinator validate`
//!   (the binary built by `cargo build --workspace --bins`, as the e2e
//!   tests need) with the mounted files laid out under a temporary root.
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
    let existing = example("postgres-existing.yaml");
    let cnpg = example("postgres-cloudnativepg.yaml");
    for (name, args) in [
        ("defaults", vec![]),
        ("overrides", vec!["-f", values.to_str().unwrap()]),
        ("postgres-existing", vec!["-f", existing.to_str().unwrap()]),
        (
            "postgres-password-client-cert",
            vec![
                "--set",
                "coordinator.replicas=2,coordinator.store.backend=postgres,\
                 coordinator.store.postgres.url=postgres://hp@db:5432/hp,\
                 coordinator.store.postgres.password=s3cret,coordinator.store.postgres.caSecret=db-ca,\
                 coordinator.store.postgres.clientCertSecret=hp-client",
            ],
        ),
        ("postgres-cloudnativepg", vec!["-f", cnpg.to_str().unwrap()]),
        (
            "postgres-cloudnativepg-overrides",
            vec![
                "-f",
                cnpg.to_str().unwrap(),
                "--set",
                "coordinator.store.postgres.cloudnativepg.imageName=ghcr.io/cloudnative-pg/postgresql:17.5,\
                 coordinator.store.postgres.cloudnativepg.storage.storageClass=fast",
            ],
        ),
    ] {
        let text = render(&args);
        let all = documents(&text, name);
        // Custom resources: kubernetes-validate knows only Kubernetes' own
        // kinds (it skips the others with a warning), so each one is checked
        // against its operator's schema instead.
        let (custom, core): (Vec<&Value>, Vec<&Value>) = all
            .iter()
            .partition(|d| d["apiVersion"].as_str().is_some_and(|a| a.contains(".io/")));
        for d in &custom {
            assert_eq!(
                d["apiVersion"], "postgresql.cnpg.io/v1",
                "{name}: no schema for {d:?}"
            );
            assert_eq!(d["kind"], "Cluster", "{name}");
            if let Err(e) = cnpg_cluster_errors(d) {
                panic!("{name}: the Cluster does not validate against CloudNativePG's schema:\n{e}");
            }
        }
        if name.contains("cloudnativepg") {
            assert_eq!(custom.len(), 1, "{name}: one Cluster");
        }
        let docs = core.len();
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
    let existing = example("postgres-existing.yaml");
    let cnpg = example("postgres-cloudnativepg.yaml");
    for args in [
        vec!["--lint"],
        vec!["--lint", "-f", existing.to_str().unwrap()],
        vec!["--lint", "-f", cnpg.to_str().unwrap()],
    ] {
        let out = helm_template(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "{args:?}: {text}"
        );
    }
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
        (
            vec!["--set", "coordinator.config.store.backend=postgres"],
            vec!["/coordinator/config/store/backend"],
        ),
        (
            vec!["--set", "coordinator.config.store.postgres.password_file=/tmp/pw"],
            vec!["/coordinator/config/store/postgres/password_file"],
        ),
        (
            vec!["--set", "coordinator.store.backend=mysql"],
            vec!["/coordinator/store/backend", "'sqlite', 'postgres'"],
        ),
        (
            vec!["--set", "coordinator.store.postgres.sslmode=verify"],
            vec!["/coordinator/store/postgres/sslmode", "'verify-full'"],
        ),
        (
            vec!["--set", "coordinator.replicas=-1"],
            vec!["/coordinator/replicas", "minimum"],
        ),
        (
            vec!["--set", "coordinator.store.postgres.pool=0"],
            vec!["/coordinator/store/postgres/pool", "minimum"],
        ),
        (
            vec!["--set", "coordinator.store.postgres.cloudnativepg.instance=3"],
            vec![
                "/coordinator/store/postgres/cloudnativepg",
                "'instance' not allowed",
            ],
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

// ---- The coordinator on PostgreSQL (issue 13) ----

/// A values file of `packaging/helm/examples/` (docs/operations.md shows them).
fn example(name: &str) -> PathBuf {
    root().join("packaging/helm/examples").join(name)
}

fn at(kind: &str, ns: &str, name: &str) -> Key {
    (kind.into(), ns.into(), name.into())
}

fn coordinator(objs: &BTreeMap<Key, Value>, ns: &str) -> Value {
    objs.get(&at("Deployment", ns, "hostplane-coordinator"))
        .unwrap_or_else(|| panic!("no coordinator Deployment in {ns}: {:?}", objs.keys()))
        .clone()
}

fn coordinator_config(objs: &BTreeMap<Key, Value>, ns: &str) -> Value {
    objs[&at("ConfigMap", ns, "hostplane-coordinator")]["data"]["coordinator.yaml"].clone()
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_sequence()?.iter().find(|v| v["name"] == name)
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap()
}

/// The (Secret, key, path) of each file in the coordinator's `postgres`
/// volume, after checking that the volume is mounted read-only at
/// /etc/hostplane/postgres.
fn postgres_files(deployment: &Value) -> Vec<(String, String, String)> {
    let pod = &deployment["spec"]["template"]["spec"];
    let mount = named(&pod["containers"][0]["volumeMounts"], "postgres").expect("a postgres mount");
    assert_eq!(mount["mountPath"], "/etc/hostplane/postgres");
    assert_eq!(mount["readOnly"], true);
    let vol = named(&pod["volumes"], "postgres").expect("a postgres volume");
    // Owner-read only. 0400 is octal to Kubernetes (YAML 1.1), as in the
    // chart's other Secret volumes; serde_norway keeps it as the text "0400".
    assert_eq!(vol["projected"]["defaultMode"], "0400");
    let mut files = Vec::new();
    for src in vol["projected"]["sources"].as_sequence().unwrap() {
        let secret = &src["secret"];
        for item in secret["items"].as_sequence().unwrap() {
            files.push((
                secret["name"].as_str().unwrap().to_owned(),
                item["key"].as_str().unwrap().to_owned(),
                item["path"].as_str().unwrap().to_owned(),
            ));
        }
    }
    files
}

/// Every `*_file` of the config's store.postgres is a file the volume holds.
fn assert_config_files_are_mounted(config: &Value, files: &[(String, String, String)]) {
    let pg = config["store"]["postgres"].as_mapping().unwrap();
    for (k, v) in pg {
        if k.as_str().unwrap().ends_with("_file") {
            let path = v.as_str().unwrap();
            let rel = path
                .strip_prefix("/etc/hostplane/postgres/")
                .unwrap_or_else(|| panic!("{k:?} {path} is not under the postgres mount"));
            assert!(
                files.iter().any(|f| f.2 == rel),
                "{k:?} {path}: the volume has no {rel} ({files:?})"
            );
        }
    }
}

/// Errors of a CloudNativePG `Cluster` against the schema its operator
/// installs (packaging/helm/schemas/), checked as the API server does with
/// strict field validation: a field no schema names is refused. Python's
/// jsonschema, which kubernetes-validate uses too.
fn cnpg_cluster_errors(doc: &Value) -> Result<(), String> {
    const CHECK: &str = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
def strict(s):
    if not isinstance(s, dict):
        return
    if ("properties" in s and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")):
        s["additionalProperties"] = False
    for k in ("properties", "patternProperties"):
        for sub in s.get(k, {}).values():
            strict(sub)
    for k in ("items", "additionalProperties", "not"):
        strict(s.get(k))
    for k in ("allOf", "anyOf", "oneOf"):
        for sub in s.get(k, []):
            strict(sub)
strict(schema)
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(json.load(sys.stdin)),
                key=lambda e: list(map(str, e.path)))
for e in errors:
    print("/" + "/".join(map(str, e.path)) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;
    let mut child = Command::new("python3")
        .args(["-c", CHECK])
        .arg(root().join("packaging/helm/schemas/postgresql.cnpg.io_v1_cluster.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    serde_json::to_writer(child.stdin.take().unwrap(), doc).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() { Ok(()) } else { Err(text) }
}

fn jsonschema_missing() -> Option<String> {
    match Command::new("python3").args(["-c", "import jsonschema"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(_) => Some(
            "the Python module jsonschema is missing (kubernetes-validate brings it; scripts/setup installs that)"
                .into(),
        ),
        Err(e) => Some(format!("python3 does not run ({e})")),
    }
}

#[test]
fn the_default_is_one_sqlite_replica_with_recreate_its_pvc_and_no_pdb() {
    if skip(helm_missing()) {
        return;
    }
    let got = rendered(&[]);
    // The defaults said out loud render the same.
    assert_same(
        &got,
        &rendered(&["--set", "coordinator.replicas=1,coordinator.store.backend=sqlite"]),
        "replicas=1, backend=sqlite vs the defaults",
    );
    let d = coordinator(&got, "hostplane");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"], yaml("type: Recreate"));
    let pod = &d["spec"]["template"]["spec"];
    assert!(pod.get("affinity").is_none(), "{pod:?}");
    assert!(
        pod["containers"][0].get("env").is_none(),
        "no replica identity on sqlite"
    );
    assert!(named(&pod["volumes"], "postgres").is_none());
    let store = named(&pod["volumes"], "store").unwrap();
    assert_eq!(
        store["persistentVolumeClaim"]["claimName"],
        "hostplane-coordinator-store"
    );
    assert!(got.contains_key(&at(
        "PersistentVolumeClaim",
        "hostplane",
        "hostplane-coordinator-store"
    )));
    for kind in ["PodDisruptionBudget", "Cluster"] {
        assert!(!got.keys().any(|k| k.0 == kind), "{kind} rendered on sqlite");
    }
    assert!(!got.contains_key(&at("Service", "hostplane", "hostplane-coordinator-replicas")));
    assert_eq!(
        coordinator_config(&got, "hostplane")["store"],
        yaml("path: /var/lib/hostplane-coordinator/coordinator.db")
    );
}

#[test]
fn postgres_with_three_replicas_rolls_one_at_a_time_under_a_pdb_without_a_pvc() {
    if skip(helm_missing()) {
        return;
    }
    let got = rendered(&["-f", example("postgres-existing.yaml").to_str().unwrap()]);
    let plain = plain_manifests();
    let deployment = at("Deployment", "hostplane", "hostplane-coordinator");
    let config_map = at("ConfigMap", "hostplane", "hostplane-coordinator");
    let pvc = at(
        "PersistentVolumeClaim",
        "hostplane",
        "hostplane-coordinator-store",
    );
    let pdb = at("PodDisruptionBudget", "hostplane", "hostplane-coordinator");
    let replicas_svc = at("Service", "hostplane", "hostplane-coordinator-replicas");

    // Everything else (the agents included: they keep dialling the
    // Service's name, which balances over every replica) is unchanged.
    let mut want: BTreeMap<Key, Value> = plain
        .iter()
        .filter(|(k, _)| **k != pvc)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    want.insert(pdb.clone(), got.get(&pdb).cloned().unwrap_or(Value::Null));
    want.insert(
        replicas_svc.clone(),
        got.get(&replicas_svc).cloned().unwrap_or(Value::Null),
    );
    // The Deployment: the plain one with exactly these changes.
    let d = want.get_mut(&deployment).unwrap();
    d["spec"]["replicas"] = 3.into();
    d["spec"]["strategy"] = yaml("{type: RollingUpdate, rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}");
    let pod = &mut d["spec"]["template"]["spec"];
    let mut with_affinity = serde_norway::Mapping::new();
    for (k, v) in pod.as_mapping().unwrap() {
        if k == "containers" {
            with_affinity.insert(
                "affinity".into(),
                yaml(
                    "podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector: {matchLabels: {app.kubernetes.io/name: hostplane-coordinator}}",
                ),
            );
        }
        with_affinity.insert(k.clone(), v.clone());
    }
    *pod = Value::Mapping(with_affinity);
    let c = &mut pod["containers"][0];
    let mut with_env = serde_norway::Mapping::new();
    for (k, v) in c.as_mapping().unwrap() {
        if k == "ports" {
            with_env.insert(
                "env".into(),
                yaml(
                    "- {name: HOSTPLANE_REPLICA_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
- {name: HOSTPLANE_REPLICA_ADDR, valueFrom: {fieldRef: {fieldPath: status.podIP}}}",
                ),
            );
        }
        with_env.insert(k.clone(), v.clone());
    }
    *c = Value::Mapping(with_env);
    let mounts = c["volumeMounts"].as_sequence_mut().unwrap();
    let i = mounts.iter().position(|m| m["name"] == "store").unwrap();
    mounts.insert(
        i,
        yaml("{name: postgres, mountPath: /etc/hostplane/postgres, readOnly: true}"),
    );
    let volumes = pod["volumes"].as_sequence_mut().unwrap();
    let i = volumes.iter().position(|v| v["name"] == "store").unwrap();
    volumes[i] = yaml("{name: store, emptyDir: {sizeLimit: 1Gi}}");
    volumes.insert(
        i,
        yaml(
            "name: postgres
projected:
  defaultMode: 0400
  sources:
    - secret: {name: hostplane-postgres, items: [{key: password, path: password}]}
    - secret: {name: hostplane-postgres-ca, items: [{key: ca.crt, path: ca.crt}]}",
        ),
    );
    // The config: the store in PostgreSQL, the files where the volume puts them.
    want.get_mut(&config_map).unwrap()["data"]["coordinator.yaml"]["store"] = yaml(
        "backend: postgres
postgres:
  url: postgres://hostplane@db.example.internal:5432/hostplane
  password_file: /etc/hostplane/postgres/password
  sslmode: verify-full
  ca_file: /etc/hostplane/postgres/ca.crt
  pool: 8",
    );
    assert_same(
        &want,
        &got,
        "postgres-existing.yaml vs the plain manifests with the replicas' changes (want, got)",
    );
    // The same, seen from what each piece has to agree with.
    let d = coordinator(&got, "hostplane");
    let selector = &d["spec"]["selector"]["matchLabels"];
    let pdb = &got[&pdb];
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"].get("minAvailable").is_none());
    assert_eq!(
        &pdb["spec"]["selector"]["matchLabels"], selector,
        "the PDB covers the replicas"
    );
    let term = &d["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(
        &term["labelSelector"]["matchLabels"], selector,
        "spread from each other"
    );
    let svc = &got[&replicas_svc];
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(&svc["spec"]["selector"], selector);
    assert_eq!(svc["spec"]["ports"][0]["port"], 50051);
    assert!(
        !got.values().any(|o| o["kind"] == "PersistentVolumeClaim"
            || serde_norway::to_string(o)
                .unwrap()
                .contains("persistentVolumeClaim")),
        "no PVC on postgres"
    );
    assert_config_files_are_mounted(&coordinator_config(&got, "hostplane"), &postgres_files(&d));
    // The agents still dial the one Service name.
    assert_eq!(
        got[&at("ConfigMap", "hostplane", "hostplane-agent")]["data"]["agent.yaml"]["coordinator"],
        "https://hostplane-coordinator.hostplane.svc:50051"
    );
}

#[test]
fn postgres_password_from_the_values_and_a_client_certificate() {
    if skip(helm_missing()) {
        return;
    }
    let base = "coordinator.store.backend=postgres,coordinator.store.postgres.url=postgres://hp@db:5432/hp,\
                coordinator.store.postgres.sslmode=require,coordinator.store.postgres.pool=4";
    // The password given in the values goes into a Secret, and only there.
    let text = render(&[
        "--set",
        base,
        "--set",
        "coordinator.store.postgres.password=s3cret,coordinator.store.postgres.clientCertSecret=hp-client",
    ]);
    assert!(!text.contains("s3cret"), "the password in clear in:\n{text}");
    let got = objects(documents(&text, "password"));
    let secret = &got[&at("Secret", "hostplane", "hostplane-coordinator-postgres")];
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(secret["data"], yaml("password: czNjcmV0"), "base64 of s3cret");
    let d = coordinator(&got, "hostplane");
    let files = postgres_files(&d);
    let f = |s: &str, k: &str, p: &str| (s.to_owned(), k.to_owned(), p.to_owned());
    assert_eq!(
        files,
        [
            f("hostplane-coordinator-postgres", "password", "password"),
            f("hp-client", "tls.crt", "tls.crt"),
            f("hp-client", "tls.key", "tls.key"),
        ]
    );
    let config = coordinator_config(&got, "hostplane");
    assert_eq!(
        config["store"],
        yaml(
            "backend: postgres
postgres:
  url: postgres://hp@db:5432/hp
  password_file: /etc/hostplane/postgres/password
  sslmode: require
  cert_file: /etc/hostplane/postgres/tls.crt
  key_file: /etc/hostplane/postgres/tls.key
  pool: 4"
        )
    );
    assert_config_files_are_mounted(&config, &files);
    // One replica on postgres: still rolled (a new one Ready before the old
    // one stops), nothing to spread, no PDB (it would block every drain).
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert!(d["spec"]["template"]["spec"].get("affinity").is_none());
    assert!(!got.keys().any(|k| k.0 == "PodDisruptionBudget"));

    // A client certificate instead of a password: no password_file.
    let got = rendered(&[
        "--set",
        base,
        "--set",
        "coordinator.store.postgres.clientCertSecret=hp-client",
    ]);
    let d = coordinator(&got, "hostplane");
    let files = postgres_files(&d);
    assert_eq!(
        files,
        [
            f("hp-client", "tls.crt", "tls.crt"),
            f("hp-client", "tls.key", "tls.key")
        ]
    );
    let config = coordinator_config(&got, "hostplane");
    assert!(
        config["store"]["postgres"].get("password_file").is_none(),
        "{config:?}"
    );
    assert!(
        !got.keys()
            .any(|k| k.0 == "Secret" && k.2 == "hostplane-coordinator-postgres")
    );
    // User keys under store (connect_timeout, history) are kept next to the chart's.
    let got = rendered(&[
        "--set",
        base,
        "--set",
        "coordinator.store.postgres.clientCertSecret=hp-client,\
         coordinator.config.store.postgres.connect_timeout=10s,\
         coordinator.config.store.history.min_age=10m",
    ]);
    let store = &coordinator_config(&got, "hostplane")["store"];
    assert_eq!(store["postgres"]["connect_timeout"], "10s");
    assert_eq!(store["postgres"]["url"], "postgres://hp@db:5432/hp");
    assert_eq!(store["history"]["min_age"], "10m");
}

#[test]
fn cloudnativepg_renders_a_cluster_and_the_coordinator_uses_its_secrets() {
    if skip(helm_missing()) {
        return;
    }
    let cnpg = example("postgres-cloudnativepg.yaml");
    let got = rendered(&["-f", cnpg.to_str().unwrap(), "--set", "namespace.name=lab"]);
    let cluster = &got[&at("Cluster", "lab", "hostplane-postgres")];
    assert_eq!(cluster["apiVersion"], "postgresql.cnpg.io/v1");
    assert_eq!(
        cluster["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "helm uninstall keeps the store's database"
    );
    assert_eq!(
        cluster["spec"],
        yaml(
            "instances: 3
bootstrap: {initdb: {database: hostplane, owner: hostplane}}
storage: {size: 20Gi}"
        )
    );
    // The operator's Secrets: <name>-app (key password) and <name>-ca (ca.crt).
    let d = coordinator(&got, "lab");
    let files = postgres_files(&d);
    let f = |s: &str, k: &str, p: &str| (s.to_owned(), k.to_owned(), p.to_owned());
    assert_eq!(
        files,
        [
            f("hostplane-postgres-app", "password", "password"),
            f("hostplane-postgres-ca", "ca.crt", "ca.crt"),
        ]
    );
    let config = coordinator_config(&got, "lab");
    assert_eq!(
        config["store"],
        yaml(
            "backend: postgres
postgres:
  url: postgresql://hostplane@hostplane-postgres-rw.lab.svc:5432/hostplane
  password_file: /etc/hostplane/postgres/password
  sslmode: verify-full
  ca_file: /etc/hostplane/postgres/ca.crt
  pool: 8"
        )
    );
    assert_config_files_are_mounted(&config, &files);
    assert!(
        !got.keys()
            .any(|k| k.0 == "Secret" && k.2 == "hostplane-coordinator-postgres")
    );
    assert_eq!(d["spec"]["replicas"], 3);
    assert!(got.contains_key(&at("PodDisruptionBudget", "lab", "hostplane-coordinator")));

    // Its names follow the values; a CA of your own replaces the operator's.
    let got = rendered(&[
        "-f",
        cnpg.to_str().unwrap(),
        "--set",
        "coordinator.store.postgres.cloudnativepg.name=fleet-db,\
         coordinator.store.postgres.cloudnativepg.database=fleet,\
         coordinator.store.postgres.cloudnativepg.owner=fleet_owner,\
         coordinator.store.postgres.cloudnativepg.instances=2,\
         coordinator.store.postgres.cloudnativepg.storage.storageClass=fast,\
         coordinator.store.postgres.caSecret=my-ca",
    ]);
    let cluster = &got[&at("Cluster", "hostplane", "fleet-db")];
    assert_eq!(cluster["spec"]["instances"], 2);
    assert_eq!(cluster["spec"]["storage"]["storageClass"], "fast");
    assert_eq!(
        cluster["spec"]["bootstrap"]["initdb"],
        yaml("{database: fleet, owner: fleet_owner}")
    );
    assert_eq!(
        coordinator_config(&got, "hostplane")["store"]["postgres"]["url"],
        "postgresql://fleet_owner@fleet-db-rw.hostplane.svc:5432/fleet"
    );
    assert_eq!(
        postgres_files(&coordinator(&got, "hostplane")),
        [
            f("fleet-db-app", "password", "password"),
            f("my-ca", "ca.crt", "ca.crt"),
        ]
    );

    // The Cluster is one CloudNativePG accepts; and that check is not a
    // rubber stamp: a misspelled or misplaced field is refused by name.
    if skip(jsonschema_missing()) {
        return;
    }
    cnpg_cluster_errors(cluster).unwrap();
    for (path, bad) in [
        ("instance", Value::from(3)),
        ("storage", yaml("{size: 1Gi, sizes: 2Gi}")),
        ("instances", Value::from(0)),
    ] {
        let mut wrong = cluster.clone();
        wrong["spec"][path] = bad;
        let err = cnpg_cluster_errors(&wrong).expect_err(path);
        assert!(err.contains("/spec"), "{path}: {err}");
        let named = match path {
            "storage" => "sizes",
            "instances" => "minimum",
            p => p,
        };
        assert!(err.contains(named), "{path}: {named:?} not in {err}");
    }
}

#[test]
fn values_that_cannot_work_together_are_refused_naming_them() {
    if skip(helm_missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    let pg = |extra: &str| -> String {
        n.set(n.get() + 1);
        let file = dir.path().join(format!("values-{}.yaml", n.get()));
        std::fs::write(
            &file,
            format!("coordinator:\n  store:\n    backend: postgres\n    postgres:\n{extra}"),
        )
        .unwrap();
        file.to_str().unwrap().to_owned()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec!["--set".into(), "coordinator.replicas=3".into()],
            vec![
                "coordinator.replicas is 3",
                "coordinator.store.backend sqlite runs exactly 1 replica",
                "one writer",
                "coordinator.store.backend=postgres",
            ],
        ),
        (
            vec![
                "--set".into(),
                "coordinator.store.postgres.cloudnativepg.enabled=true".into(),
            ],
            vec!["cloudnativepg.enabled needs coordinator.store.backend=postgres"],
        ),
        (
            vec!["-f".into(), pg("      password: x\n")],
            vec!["set coordinator.store.postgres.url", "cloudnativepg.enabled=true"],
        ),
        (
            vec![
                "-f".into(),
                pg("      url: postgres://hp:hunter2@db/hp\n      password: x\n      sslmode: require\n"),
            ],
            vec!["coordinator.store.postgres.url carries a password"],
        ),
        (
            vec![
                "-f".into(),
                pg(
                    "      url: postgres://hp@db/hp?password=hunter2\n      password: x\n      sslmode: require\n",
                ),
            ],
            vec!["coordinator.store.postgres.url carries a password"],
        ),
        (
            vec![
                "-f".into(),
                pg(
                    "      url: postgres://hp@db/hp?sslmode=disable\n      password: x\n      sslmode: require\n",
                ),
            ],
            vec![
                "coordinator.store.postgres.url sets sslmode",
                "coordinator.store.postgres.sslmode",
            ],
        ),
        (
            vec![
                "--set".into(),
                "coordinator.config.store.postgres.connect_timeout=3s".into(),
            ],
            vec!["coordinator.config.store.postgres is set but coordinator.store.backend is sqlite"],
        ),
        (
            vec![
                "-f".into(),
                pg("      url: mysql://hp@db/hp\n      password: x\n      sslmode: require\n"),
            ],
            vec!["\"mysql://hp@db/hp\" is not a postgres:// or postgresql:// URL"],
        ),
        (
            vec![
                "-f".into(),
                pg(
                    "      url: postgres://hp@db/hp\n      password: x\n      existingSecret: {name: pg, key: pw}\n      sslmode: require\n",
                ),
            ],
            vec!["password and coordinator.store.postgres.existingSecret.name are both set"],
        ),
        (
            vec![
                "-f".into(),
                pg("      url: postgres://hp@db/hp\n      sslmode: require\n"),
            ],
            vec!["no password is given", "existingSecret.name", "clientCertSecret"],
        ),
        (
            vec![
                "-f".into(),
                pg("      url: postgres://hp@db/hp\n      password: x\n"),
            ],
            vec!["sslmode verify-full checks the server's certificate", "caSecret"],
        ),
        (
            vec![
                "-f".into(),
                pg("      url: postgres://hp@db/hp\n      cloudnativepg: {enabled: true}\n"),
            ],
            vec![
                "coordinator.store.postgres.url must be empty with coordinator.store.postgres.cloudnativepg.enabled",
            ],
        ),
        (
            vec![
                "-f".into(),
                pg("      existingSecret: {name: pg}\n      cloudnativepg: {enabled: true}\n"),
            ],
            vec![
                "must be empty with coordinator.store.postgres.cloudnativepg.enabled",
                "<name>-app",
            ],
        ),
    ];
    for (args, names) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = helm_template(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} was not refused: {err}");
        assert!(out.stdout.is_empty(), "{args:?} rendered something");
        for name in names {
            assert!(err.contains(name), "{args:?}: {name:?} not in {err}");
        }
        assert!(!err.contains("hunter2"), "the error repeats the password: {err}");
    }
}

/// Every path of a rendered coordinator.yaml that the pod mounts, moved under `root`.
fn rebase(v: &mut Value, root: &Path) {
    match v {
        Value::String(s)
            if s.starts_with("/etc/hostplane/") || s.starts_with("/var/lib/hostplane-coordinator/") =>
        {
            *s = format!("{}{s}", root.display());
        }
        Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| rebase(v, root)),
        Value::Sequence(l) => l.iter_mut().for_each(|v| rebase(v, root)),
        _ => {}
    }
}

/// The configs the chart renders are ones the coordinator accepts: each is
/// run through `hostplane-coordinator validate` (which refuses an unknown
/// key, reads the TLS and PostgreSQL certificate files and checks the
/// store.postgres settings) with the files the pod would have mounted laid
/// out under a temporary root.
#[test]
fn the_rendered_coordinator_configs_pass_the_coordinators_validate() {
    if skip(helm_missing()) {
        return;
    }
    let coordinator_bin = hostplane_tests::bin("hostplane-coordinator").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lab = root.join("lab");
    hostplane_ctl::certs::lab(&lab, &["hostplane-coordinator.hostplane.svc"], &["n1"]).unwrap();
    // What the Secrets hold, where the Deployment mounts them.
    let etc = root.join("etc/hostplane");
    for (from, to) in [
        ("server.crt", "tls/tls.crt"),
        ("server.key", "tls/tls.key"),
        ("ca.crt", "tls/ca.crt"),
        (hostplane_ctl::certs::LAB_TOKENS, "auth/tokens.yaml"),
        // The database's CA and a client certificate for it.
        ("ca.crt", "postgres/ca.crt"),
        ("agent-n1.crt", "postgres/tls.crt"),
        ("agent-n1.key", "postgres/tls.key"),
    ] {
        let to = etc.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lab.join(from), &to).unwrap_or_else(|e| panic!("{from}: {e}"));
    }
    std::fs::write(etc.join("postgres/password"), "s3cret\n").unwrap();
    std::fs::create_dir_all(root.join("var/lib/hostplane-coordinator")).unwrap();

    let validate = |config: &Value| -> (Option<i32>, String) {
        let file = root.join("coordinator.yaml");
        std::fs::write(&file, serde_norway::to_string(config).unwrap()).unwrap();
        let out = Command::new(&coordinator_bin)
            .args(["validate", "--config"])
            .arg(&file)
            .env_remove("HOSTPLANE_INSECURE")
            .env_remove("HOSTPLANE_STORE_BACKEND")
            .env_remove("HOSTPLANE_STORE_PATH")
            .env_remove("HOSTPLANE_STORE_POSTGRES_URL")
            .env_remove("HOSTPLANE_STORE_POSTGRES_PASSWORD_FILE")
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let existing = example("postgres-existing.yaml");
    let cnpg = example("postgres-cloudnativepg.yaml");
    let mut last = Value::Null;
    for (name, args, store) in [
        ("defaults", vec![], "store sqlite"),
        (
            "postgres-existing",
            vec!["-f", existing.to_str().unwrap()],
            "store postgres",
        ),
        (
            "postgres-password-client-cert",
            vec![
                "--set",
                "coordinator.store.backend=postgres,coordinator.store.postgres.url=postgres://hp@db:5432/hp,\
                 coordinator.store.postgres.password=s3cret,coordinator.store.postgres.caSecret=db-ca,\
                 coordinator.store.postgres.clientCertSecret=hp-client,\
                 coordinator.config.store.postgres.connect_timeout=10s",
            ],
            "store postgres",
        ),
        (
            "postgres-cloudnativepg",
            vec!["-f", cnpg.to_str().unwrap()],
            "store postgres",
        ),
    ] {
        let mut config = coordinator_config(&rendered(&args), "hostplane");
        rebase(&mut config, root);
        let (code, out) = validate(&config);
        assert_eq!(
            code,
            Some(0),
            "{name}: the coordinator refuses the chart's config:\n{out}"
        );
        assert!(out.contains(store), "{name}: {store:?} not in {out}");
        assert!(!out.contains("s3cret"), "{name}: the password printed: {out}");
        last = config;
    }
    // Not a rubber stamp: a key the coordinator does not know is refused, by name.
    let pg = last["store"]["postgres"].as_mapping_mut().unwrap();
    let mode = pg.remove("sslmode").unwrap();
    pg.insert("ssl_mode".into(), mode);
    let (code, out) = validate(&last);
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("ssl_mode"), "{out}");
}
