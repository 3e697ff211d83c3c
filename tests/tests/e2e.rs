//! End to end: the real `hostplane-coordinator`, `hostplane-agent` and
//! `hostplane-sim` binaries, over real sockets and a real FUSE mount.
//! Each test builds its own world in a temp dir. They need FUSE (CI runs as
//! root); without it they print why and return.

use std::time::Duration;

use hostplane_proto::v1::{self, DpuPhase, Kind, NodeEffect, RebootMethod};
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{get_dpu, phase_of, require_fuse, wait_for, wait_phase, wait_recreated};

const T: Duration = Duration::from_secs(90);

fn fast_opts() -> WorldOpts {
    WorldOpts {
        agent_yaml: "flash:\n  poll_interval: 50ms\nsession:\n  backoff_initial: 100ms\n  backoff_max: 1s\n"
            .into(),
        ..Default::default()
    }
}

async fn world(opts: WorldOpts) -> World {
    World::start(opts).await.expect("world starts")
}

fn deployment(bfb: &str, node_effect: NodeEffect, max_unavailable: u32) -> v1::DeploymentSpec {
    v1::DeploymentSpec {
        device_selector: [("model".to_string(), "bf3".to_string())].into(),
        bfb: bfb.into(),
        flavor: "f1".into(),
        max_unavailable,
        node_effect: node_effect as i32,
        ..Default::default()
    }
}

/// node n1 with dpu-a (rshim0) and dpu-b (rshim1), a bfb, a flavor, and the agent running.
async fn site(w: &mut World, reboot: RebootMethod, bfb_size: u64) {
    w.start_agent("n1").unwrap();
    w.add_node(
        "n1",
        reboot,
        &[("dpu-a", "rshim0"), ("dpu-b", "rshim1")],
        &[("model", "bf3")],
    )
    .await
    .unwrap();
    w.add_bfb("bfb-1", bfb_size, "4.9.0").await.unwrap();
    w.add_flavor("f1", &[("HOSTNAME", "dpu"), ("ubuntu_PASSWORD", "$1$x$secret")])
        .await
        .unwrap();
}

async fn node(w: &mut World, name: &str) -> v1::Node {
    let r = w
        .admin
        .get(v1::GetRequest {
            kind: Kind::Node as i32,
            name: name.into(),
        })
        .await
        .unwrap()
        .into_inner();
    match r.kind {
        Some(v1::resource::Kind::Node(n)) => n,
        other => panic!("not a node: {other:?}"),
    }
}

fn history(d: &v1::Dpu) -> Vec<DpuPhase> {
    d.status
        .as_ref()
        .map(|s| s.history.iter().map(|h| h.to()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_with_hold_and_external_reboot() {
    require_fuse!();
    let mut w = world(fast_opts()).await;
    site(&mut w, RebootMethod::External, 4 << 20).await;
    w.add_deployment("d1", deployment("bfb-1", NodeEffect::Hold, 2))
        .await
        .unwrap();

    // Held in NodeEffect until maintenance is approved.
    for dpu in ["dpu-a", "dpu-b"] {
        wait_phase(&mut w.admin, dpu, DpuPhase::NodeEffect, T)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        phase_of(&get_dpu(&mut w.admin, "dpu-a").await.unwrap().unwrap()),
        DpuPhase::NodeEffect
    );
    let status = w
        .admin
        .get_node_reboot_status(v1::NodeRef { name: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!status.waiting_for_reboot);
    w.admin
        .approve_maintenance(v1::NodeRef { name: "n1".into() })
        .await
        .unwrap();

    // Flashed, then waits for the external reboot.
    for dpu in ["dpu-a", "dpu-b"] {
        wait_phase(&mut w.admin, dpu, DpuPhase::Rebooting, T)
            .await
            .unwrap();
    }
    let mut admin = w.admin.clone();
    wait_for("node n1 to report waiting_for_reboot", T, || {
        let mut admin = admin.clone();
        async move {
            let s = admin
                .get_node_reboot_status(v1::NodeRef { name: "n1".into() })
                .await
                .ok()?
                .into_inner();
            (s.waiting_for_reboot && s.dpus.len() == 2).then_some(())
        }
    })
    .await
    .unwrap();
    admin
        .mark_rebooted(v1::MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .unwrap();

    for dpu in ["dpu-a", "dpu-b"] {
        let d = wait_phase(&mut w.admin, dpu, DpuPhase::Ready, T).await.unwrap();
        let h = history(&d);
        let walk = [
            DpuPhase::Pending,
            DpuPhase::NodeEffect,
            DpuPhase::InitializeInterface,
            DpuPhase::ConfigFwParameters,
            DpuPhase::PrepareBfb,
            DpuPhase::OsInstalling,
            DpuPhase::Rebooting,
            DpuPhase::DpuClusterConfig,
            DpuPhase::NodeEffectRemoval,
            DpuPhase::Ready,
        ];
        let mut it = h.iter();
        for p in walk {
            assert!(it.any(|x| *x == p), "{dpu}: {p:?} missing from history {h:?}");
        }
        let st = d.status.unwrap();
        assert_eq!(st.installed_bfb, "bfb-1");
        // Phases the agent has nothing to do for are skipped with a condition, never silently.
        assert!(
            st.conditions
                .iter()
                .any(|c| c.reason == "Skipped" && !c.message.is_empty()),
            "{dpu}: no Skipped condition in {:?}",
            st.conditions
        );
        let ready = w
            .admin
            .get_dpu_readiness(v1::DpuRef { name: dpu.into() })
            .await
            .unwrap()
            .into_inner();
        assert!(ready.ready);
    }
    let n = node(&mut w, "n1").await;
    let ns = n.status.unwrap();
    assert!(ns.reachable);
    assert!(
        !ns.maintenance_approved,
        "maintenance approval is cleared after NodeEffectRemoval"
    );
    assert_eq!(ns.inventory.unwrap().rshims.len(), 2);
    w.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bfb_is_refused_and_dpu_never_reset() {
    require_fuse!();
    let mut w = world(fast_opts()).await;
    site(&mut w, RebootMethod::External, 1 << 20).await;
    // A Bfb whose content is not a valid boot stream, with the right digest.
    let path = w.dir.join("www/bad.bfb");
    let mut bytes = std::fs::read(w.dir.join("www/bfb-1.bfb")).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let sha = hostplane_tests::sha256_file(&path).unwrap();
    let url = format!("{}/bad.bfb", w.http_base);
    w.add_bfb_spec("bad", &url, &sha).await.unwrap();
    w.add_deployment("d1", deployment("bad", NodeEffect::Auto, 2))
        .await
        .unwrap();
    let d = wait_phase(&mut w.admin, "dpu-a", DpuPhase::Error, T)
        .await
        .unwrap();
    let msg = d.status.unwrap().message;
    assert!(
        msg.contains("CRC") && msg.contains("image"),
        "error names the image: {msg}"
    );
    // The DPU was never reset: its log shows no boot at all.
    w.assert_never_reset("rshim0");
    w.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_mismatch_is_an_error_and_nothing_is_flashed() {
    require_fuse!();
    let mut w = world(fast_opts()).await;
    site(&mut w, RebootMethod::External, 1 << 20).await;
    let url = format!("{}/bfb-1.bfb", w.http_base);
    w.add_bfb_spec("wrong-digest", &url, &"0".repeat(64))
        .await
        .unwrap();
    w.add_deployment("d1", deployment("wrong-digest", NodeEffect::Auto, 1))
        .await
        .unwrap();
    let d = wait_phase(&mut w.admin, "dpu-a", DpuPhase::Error, T)
        .await
        .unwrap();
    assert!(
        !history(&d).contains(&DpuPhase::OsInstalling),
        "never reached OSInstalling"
    );
    let st = d.status.unwrap();
    assert!(
        st.message.to_lowercase().contains("sha256"),
        "names the digest problem: {}",
        st.message
    );
    w.assert_never_reset("rshim0");
    w.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpu_hang_times_out_into_error_naming_the_stage() {
    require_fuse!();
    let mut opts = fast_opts();
    opts.faults = vec!["rshim0=hang:installer".into()];
    opts.agent_yaml = "flash:\n  poll_interval: 50ms\n  stage_timeouts:\n    installer: 3s\n    install: 3s\n    linux_up: 3s\n".into();
    let mut w = world(opts).await;
    site(&mut w, RebootMethod::External, 1 << 20).await;
    w.add_deployment("d1", deployment("bfb-1", NodeEffect::Auto, 2))
        .await
        .unwrap();
    let d = wait_phase(&mut w.admin, "dpu-a", DpuPhase::Error, T)
        .await
        .unwrap();
    let msg = d.status.unwrap().message.to_lowercase();
    assert!(msg.contains("timed out") || msg.contains("timeout"), "{msg}");
    // The other DPU is unaffected.
    wait_phase(&mut w.admin, "dpu-b", DpuPhase::Rebooting, T)
        .await
        .unwrap();
    w.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprovision_walks_the_machine_again() {
    require_fuse!();
    let mut w = world(fast_opts()).await;
    site(&mut w, RebootMethod::External, 1 << 20).await;
    w.add_deployment("d1", deployment("bfb-1", NodeEffect::Auto, 2))
        .await
        .unwrap();
    wait_phase(&mut w.admin, "dpu-a", DpuPhase::Rebooting, T)
        .await
        .unwrap();
    // dpu-a may be held until dpu-b is installed too (one reboot per node).
    wait_node_waiting(&w.admin).await;
    w.admin
        .mark_rebooted(v1::MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .unwrap();
    let first = wait_phase(&mut w.admin, "dpu-a", DpuPhase::Ready, T)
        .await
        .unwrap();
    let created = first.metadata.unwrap().created_at_ms;

    w.admin
        .reprovision(v1::DpuRef { name: "dpu-a".into() })
        .await
        .unwrap();
    // It comes back with the same name and walks again, up to the reboot wait.
    wait_recreated(&w.admin, "dpu-a", created, T).await.unwrap();
    wait_phase(&mut w.admin, "dpu-a", DpuPhase::Rebooting, T)
        .await
        .unwrap();
    // dpu-a may be held until dpu-b is installed too (one reboot per node).
    wait_node_waiting(&w.admin).await;
    w.admin
        .mark_rebooted(v1::MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .unwrap();
    wait_phase(&mut w.admin, "dpu-a", DpuPhase::Ready, T)
        .await
        .unwrap();
    // dpu-b was not touched.
    let b = get_dpu(&mut w.admin, "dpu-b").await.unwrap().unwrap();
    assert_eq!(phase_of(&b), DpuPhase::Ready);
    w.shutdown().await.unwrap();
}

/// Until node n1 waits for a reboot (every Dpu on it that will reboot is installed).
async fn wait_node_waiting(admin: &hostplane_tests::Admin) {
    wait_for("n1 waiting for a reboot", T, || {
        let mut admin = admin.clone();
        async move {
            let s = admin
                .get_node_reboot_status(v1::NodeRef { name: "n1".into() })
                .await
                .ok()?
                .into_inner();
            s.waiting_for_reboot.then_some(())
        }
    })
    .await
    .unwrap();
}
