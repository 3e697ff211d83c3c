//! The coordinator binary seen by a gRPC client nobody here wrote: Python's
//! `grpcio` with its stock reflection client (`grpcio-reflection`, installed
//! by scripts/setup). It must list the services over reflection v1alpha and
//! v1, and get INVALID_ARGUMENT with a short message for an oversized name
//! or label key, INVALID_ARGUMENT for bytes that are no message, and
//! RESOURCE_EXHAUSTED for a request over the size limit
//! (coordinator/testdata/reflection_client.py does the talking).
mod backend;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Coordinator(Child);

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The coordinator's log goes to `dir/coordinator.log`; its store is the
/// config's (`tests/backend`: SQLite's file or a PostgreSQL database).
fn start(dir: &std::path::Path) -> (Coordinator, SocketAddr) {
    let log = std::fs::File::create(dir.join("coordinator.log")).unwrap();
    let config = dir.join("coordinator.yaml");
    std::fs::write(&config, backend::store_yaml(&dir.join("store.db"))).unwrap();
    // A free port: bind, note, release (the coordinator binds it next).
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hostplane-coordinator"))
        .args(["--listen", &addr.to_string(), "--insecure", "--config"])
        .arg(&config)
        .env("HOSTPLANE_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start hostplane-coordinator");
    let c = Coordinator(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the coordinator did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (c, addr)
}

#[test]
fn a_python_client_built_from_reflection_gets_the_standard_codes() {
    let have = Command::new("python3")
        .args(["-c", "import grpc, grpc_reflection"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have,
        "python3 with grpcio and grpcio-reflection is needed: run scripts/setup"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_coordinator, addr) = start(dir.path());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/reflection_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(addr.to_string())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");

    for version in ["v1alpha", "v1"] {
        let services: Vec<&str> = seen[version]
            .as_array()
            .unwrap_or_else(|| panic!("reflection {version}: {}", seen[version]))
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for want in [
            "hostplane.v1.AdminService",
            "hostplane.v1.AgentService",
            "grpc.health.v1.Health",
        ] {
            assert!(services.contains(&want), "{version} lists {services:?}");
        }
    }

    for case in ["oversized_name", "oversized_label_key"] {
        let s = &seen[case];
        assert_eq!(s["code"], "INVALID_ARGUMENT", "{case}: {s}");
        let m = s["message"].as_str().unwrap();
        assert!(m.len() < 300, "{case}: a {}-byte message", m.len());
        assert!(m.contains("bytes, more than the maximum of"), "{case}: {m}");
    }
    assert!(
        seen["oversized_name"]["message"]
            .as_str()
            .unwrap()
            .starts_with("name: 1048576 bytes")
    );
    assert!(
        seen["oversized_label_key"]["message"]
            .as_str()
            .unwrap()
            .starts_with("node.metadata.labels key \"kkkk")
    );
    assert_eq!(
        seen["malformed"]["code"], "INVALID_ARGUMENT",
        "{}",
        seen["malformed"]
    );
    assert_eq!(
        seen["too_large"]["code"], "RESOURCE_EXHAUSTED",
        "{}",
        seen["too_large"]
    );
    assert!(
        seen["too_large"]["message"]
            .as_str()
            .unwrap()
            .contains("4194304 bytes"),
        "{}",
        seen["too_large"]
    );
    assert_eq!(seen["after"]["code"], "NOT_FOUND", "{}", seen["after"]);

    // Issue 14's fields through the reflected descriptors.
    assert_eq!(seen["flavor_create"]["code"], "OK", "{}", seen["flavor_create"]);
    assert_eq!(
        seen["flavor_got"],
        serde_json::json!({
            "nvconfig": [{
                "device": "*",
                "parameters": ["PF_TOTAL_SF=20", "PER_PF_NUM_SF=1"],
                "power_cycle": true,
            }],
            "kernel_parameters": ["hugepages=3072"],
            "files": [["/etc/hp-py.conf", "x=1\n", "0600"]],
        })
    );
    let bad = &seen["flavor_contradicting"];
    assert_eq!(bad["code"], "INVALID_ARGUMENT", "{bad}");
    let m = bad["message"].as_str().unwrap();
    assert!(
        m.contains("flavor.spec.nvconfig") && m.contains("PF_TOTAL_SF"),
        "{m}"
    );
    assert_eq!(
        seen["mark_rebooted_fields"],
        serde_json::json!(["name", "power_cycled"])
    );
    assert_eq!(
        seen["mark_rebooted_missing"]["code"], "NOT_FOUND",
        "{}",
        seen["mark_rebooted_missing"]
    );

    // The log at info: each call's lines are bounded too (the 1 MiB name
    // and the 20 kB label key are cut to 512 bytes wherever they appear).
    let log = std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap();
    assert!(log.len() < 32 * 1024, "the log grew by {} bytes", log.len());
    assert!(
        log.contains("… (1048581 bytes)"),
        "the Delete's audit line names node/<1 MiB> cut, with its length:\n{log}"
    );
}
