//! End to end with the CLI: the whole upstream flow through the real
//! `hostplanectl` binary against the real coordinator, agent and simulator.

use std::process::Output;
use std::time::Duration;

use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{bin, require_fuse, wait_for, write_bfb};

fn ctl(w: &World, args: &[&str]) -> Output {
    std::process::Command::new(bin("hostplanectl").unwrap())
        .arg("--server")
        .arg(format!("https://{}", w.coordinator_addr))
        .arg("--ca-file")
        .arg(w.tls_dir.join("ca.crt"))
        .arg("--cert-file")
        .arg(w.tls_dir.join("client-admin.crt"))
        .arg("--key-file")
        .arg(w.tls_dir.join("client-admin.key"))
        .env(
            "HOSTPLANE_TOKEN",
            hostplane_tests::lab_admin_token(&w.tls_dir).unwrap(),
        )
        .args(args)
        .output()
        .expect("hostplanectl runs")
}

fn ok(w: &World, args: &[&str]) -> String {
    let out = ctl(w, args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "hostplanectl {args:?} exited {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostplanectl_drives_a_dpu_to_ready() {
    require_fuse!();
    let mut w = World::start(WorldOpts {
        dpus: 1,
        agent_yaml: "flash:\n  poll_interval: 50ms\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    w.start_agent("n1").unwrap();
    let sha = write_bfb(&w.dir.join("www/img.bfb"), 1 << 20, "4.9.0", 3).unwrap();
    let url = format!("{}/img.bfb", w.http_base);

    ok(&w, &["node", "create", "n1", "--reboot-method", "external"]);
    let args = [
        "device", "create", "dpu-a", "--node", "n1", "--rshim", "rshim0", "--serial", "SN1",
    ];
    ok(
        &w,
        &[&args[..], &["--pci", "0000:04:00.0", "-l", "model=bf3"]].concat(),
    );
    ok(
        &w,
        &[
            "bfb",
            "create",
            "img",
            "--url",
            &url,
            "--sha256",
            &sha,
            "--version",
            "4.9.0",
        ],
    );
    ok(&w, &["flavor", "create", "f1", "--bf-cfg", "HOSTNAME=dpu"]);

    // Bad input: a clear error, the documented exit code, and nothing created.
    let bad = ctl(
        &w,
        &[
            "device", "create", "dpu-x", "--node", "ghost", "--rshim", "rshim1", "--serial", "S",
        ],
    );
    assert_eq!(bad.status.code(), Some(6), "INVALID_ARGUMENT exits 6");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("spec.node"));
    assert_eq!(
        ctl(&w, &["device", "get", "dpu-x"]).status.code(),
        Some(4),
        "NOT_FOUND exits 4"
    );

    let dep = [
        "deployment",
        "create",
        "d1",
        "--bfb",
        "img",
        "--flavor",
        "f1",
        "--selector",
        "model=bf3",
    ];
    ok(
        &w,
        &[&dep[..], &["--max-unavailable", "1", "--node-effect", "hold"]].concat(),
    );

    // The upstream flow, one command each.
    let wc = &w;
    wait_for(
        "dpu-a to wait in NodeEffect",
        Duration::from_secs(60),
        || async move {
            let out = ctl(wc, &["dpu", "get", "dpu-a"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("NodeEffect")
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        ctl(&w, &["dpu", "ready", "dpu-a", "--check"]).status.code(),
        Some(3)
    );
    ok(&w, &["node", "approve", "n1"]);
    wait_for(
        "node n1 to wait for its reboot",
        Duration::from_secs(60),
        || async move {
            ctl(wc, &["node", "reboot-status", "n1", "--check"])
                .status
                .success()
                .then_some(())
        },
    )
    .await
    .unwrap();
    ok(&w, &["node", "rebooted", "n1"]);
    ok(&w, &["dpu", "ready", "dpu-a", "--wait", "--timeout", "60s"]);

    let json = ok(&w, &["dpu", "get", "dpu-a", "-o", "json"]);
    assert!(json.contains("DPU_PHASE_READY"), "{json}");
    let table = ok(&w, &["dpu", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("dpu-a") && l.contains("Ready")),
        "{table}"
    );
    w.shutdown().await.unwrap();
}
