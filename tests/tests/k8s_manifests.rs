//! The Kubernetes manifests in `packaging/kubernetes/`: every document
//! validates against the Kubernetes schemas (`kubernetes-validate --strict`,
//! which ships the schemas and works offline; `scripts/setup` installs it),
//! for the oldest and the newest Kubernetes we claim; and the properties the
//! docs promise hold (agent: host network, privileged with the reason in the
//! file, node name from the downward API, /dev, /sys and state mounted;
//! coordinator: one replica, Recreate, non-root, store on a PVC, TLS from a
//! Secret; the Namespace, the PVC and the Secrets kept by `helm uninstall`).
//! Without `kubernetes-validate` the schema part prints why and returns.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

/// The oldest Kubernetes the manifests are checked against (and the tool's newest, by default).
const OLDEST: &str = "1.29.0";

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .expect("packaging/kubernetes exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "expected the manifests, found {files:?}");
    files
}

fn validate(files: &[PathBuf], version: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.args(["--strict", "--no-warn"]);
    if let Some(v) = version {
        cmd.args(["-k", v]);
    }
    let out = cmd.args(files).output().expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    if let Some(why) = hostplane_tests::kubernetes_validate_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let files = manifests();
    let docs: usize = files.iter().map(|f| documents(f).len()).sum();
    for version in [Some(OLDEST), None] {
        let (ok, out) = validate(&files, version);
        assert!(ok, "manifests do not validate (kubernetes {version:?}):\n{out}");
        // One "passed" line per document: none was skipped as unknown.
        assert_eq!(out.matches(" passed ").count(), docs, "{out}");
    }

    // The validator is not a rubber stamp: a misspelled field is refused, by name.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(manifests_dir().join("coordinator.yaml")).unwrap();
    std::fs::write(&bad, text.replacen("targetPort:", "targetPorts:", 1)).unwrap();
    let (ok, out) = validate(&[bad], Some(OLDEST));
    assert!(!ok && out.contains("targetPorts"), "{out}");
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    // The manifests separate documents with a bare `---` line.
    text.split("\n---\n")
        .map(|d| serde_norway::from_str::<Value>(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn all_documents() -> Vec<Value> {
    manifests().iter().flat_map(|f| documents(f)).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn everything_is_namespaced_in_hostplane() {
    let docs = all_documents();
    find(&docs, "Namespace", "hostplane");
    for d in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(d["metadata"]["namespace"], "hostplane", "{d:?}");
    }
    // The agent does not talk to the API server: no RBAC, no token.
    assert!(
        !docs.iter().any(|d| d["kind"]
            .as_str()
            .is_some_and(|k| k.contains("Role") || k == "ServiceAccount")),
        "no RBAC objects expected"
    );
}

#[test]
fn the_agent_daemonset_has_what_its_jobs_need_and_no_more() {
    let docs = all_documents();
    let ds = find(&docs, "DaemonSet", "hostplane-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    // Privileged for the devices: the runtime's device cgroup refuses the
    // rshim CUSE devices (dynamic majors) and /dev/nvidia* otherwise, /dev
    // mounted or not. The file says so where it sets it.
    assert_eq!(sc["privileged"], true);
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    // Kubernetes refuses allowPrivilegeEscalation: false with privileged, and
    // capabilities mean nothing in a privileged container: neither is set.
    assert!(sc.get("allowPrivilegeEscalation").is_none(), "{sc:?}");
    assert!(sc.get("capabilities").is_none(), "{sc:?}");
    let text = std::fs::read_to_string(manifests_dir().join("agent.yaml")).unwrap();
    let before = &text[..text
        .find("privileged: true")
        .expect("privileged: true in agent.yaml")];
    let reason = &before[before.rfind("securityContext:").unwrap()..];
    for why in [
        "device cgroup",
        "CUSE",
        "dynamic majors",
        "/dev/nvidia",
        "device plugin or CDI",
    ] {
        assert!(
            reason.contains(why),
            "the comment above privileged: true does not say {why:?}:\n{reason}"
        );
    }

    let env = c["env"].as_sequence().unwrap();
    let node = env
        .iter()
        .find(|e| e["name"] == "HOSTPLANE_NODE_NAME")
        .expect("HOSTPLANE_NODE_NAME is set");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");

    let volumes = pod["volumes"].as_sequence().unwrap();
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(str::to_owned)
    };
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mounted_at = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .and_then(|m| m["name"].as_str())
            .unwrap_or_else(|| panic!("nothing mounted at {path}"))
            .to_owned()
    };
    for (path, host) in [
        ("/dev", "/dev"),
        ("/sys", "/sys"),
        ("/var/lib/hostplane-agent", "/var/lib/hostplane-agent"),
    ] {
        assert_eq!(host_path(&mounted_at(path)).as_deref(), Some(host), "{path}");
    }
    // Each agent gets its own node's certificate, named by the downward API.
    let cert = mounts
        .iter()
        .find(|m| m["mountPath"] == "/etc/hostplane/tls/agent.crt")
        .expect("the agent certificate is mounted");
    assert_eq!(cert["subPathExpr"], "$(HOSTPLANE_NODE_NAME).crt");

    // The config the ConfigMap carries points at those paths.
    let cm = find(&docs, "ConfigMap", "hostplane-agent");
    let cfg: Value = serde_norway::from_str(cm["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(cfg["state_dir"], "/var/lib/hostplane-agent");
    assert_eq!(cfg["tls"]["cert_file"], "/etc/hostplane/tls/agent.crt");
    assert_eq!(cfg["metrics"]["listen"], "127.0.0.1:9464");
    assert!(
        strs(&c["livenessProbe"]["exec"]["command"]).contains(&"127.0.0.1:9464"),
        "the probe checks the configured metrics address"
    );
}

#[test]
fn helm_uninstall_keeps_the_namespace_the_store_and_the_secrets() {
    let docs = all_documents();
    let kept: Vec<String> = docs
        .iter()
        .filter(|d| d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep")
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kept,
        [
            "PersistentVolumeClaim/hostplane-coordinator-store",
            "Namespace/hostplane",
            "Secret/hostplane-coordinator-tls",
            "Secret/hostplane-agent-tls",
            "Secret/hostplane-coordinator-tokens",
        ],
        "in file order: coordinator.yaml, namespace.yaml, secrets.yaml"
    );
}

#[test]
fn the_coordinator_is_one_non_root_replica_with_its_store_on_a_volume() {
    let docs = all_documents();
    let d = find(&docs, "Deployment", "hostplane-coordinator");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    let c = &pod["containers"][0];
    assert_eq!(strs(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert!(c[probe].is_mapping(), "{probe} is set");
    }
    let volumes = pod["volumes"].as_sequence().unwrap();
    let store = volumes.iter().find(|v| v["name"] == "store").unwrap();
    let claim = store["persistentVolumeClaim"]["claimName"].as_str().unwrap();
    find(&docs, "PersistentVolumeClaim", claim);
    let tls = volumes.iter().find(|v| v["name"] == "tls").unwrap();
    find(&docs, "Secret", tls["secret"]["secretName"].as_str().unwrap());

    let cm = find(&docs, "ConfigMap", "hostplane-coordinator");
    let cfg: Value = serde_norway::from_str(cm["data"]["coordinator.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        cfg["store"]["path"],
        "/var/lib/hostplane-coordinator/coordinator.db"
    );
    assert_eq!(cfg["tls"]["client_ca_file"], "/etc/hostplane/tls/ca.crt");
    // Over TLS the coordinator needs admin tokens: a Secret mounted where the config reads it.
    assert_eq!(cfg["auth"]["tokens_file"], "/etc/hostplane/auth/tokens.yaml");
    let tokens = volumes.iter().find(|v| v["name"] == "tokens").unwrap();
    find(&docs, "Secret", tokens["secret"]["secretName"].as_str().unwrap());
    assert_eq!(tokens["secret"]["items"][0]["path"], "tokens.yaml");
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "tokens" && m["mountPath"] == "/etc/hostplane/auth"),
        "{mounts:?}"
    );
    assert!(
        cfg["auth"]["audit_file"]
            .as_str()
            .unwrap()
            .starts_with("/var/lib/hostplane-coordinator/"),
        "the audit log is on the store's volume (the root file system is read-only)"
    );

    let svc = find(&docs, "Service", "hostplane-coordinator");
    assert_eq!(svc["spec"]["ports"][0]["port"], 50051);
    assert_eq!(
        svc["spec"]["selector"], d["spec"]["selector"]["matchLabels"],
        "the Service selects the Deployment's pods"
    );
}
