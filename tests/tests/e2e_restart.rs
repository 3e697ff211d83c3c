//! End to end: rollout, restarts mid-flash, and bad input, over the real binaries.

use std::collections::HashMap;
use std::time::Duration;

use hostplane_proto::v1::{self, DpuPhase, EventType, Kind, NodeEffect, RebootMethod};
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{get_dpu, require_fuse, wait_for, wait_phase, wait_recreated};
use tokio_stream::StreamExt;

const T: Duration = Duration::from_secs(120);

fn opts(dpus: usize, faults: &[&str]) -> WorldOpts {
    WorldOpts {
        dpus,
        faults: faults.iter().map(|f| f.to_string()).collect(),
        agent_yaml: "flash:\n  poll_interval: 50ms\nsession:\n  backoff_initial: 100ms\n  backoff_max: 1s\n"
            .into(),
        ..Default::default()
    }
}

fn spec(bfb: &str, max_unavailable: u32) -> v1::DeploymentSpec {
    v1::DeploymentSpec {
        device_selector: [("model".to_string(), "bf3".to_string())].into(),
        bfb: bfb.into(),
        flavor: "f1".into(),
        max_unavailable,
        node_effect: NodeEffect::Auto as i32,
        ..Default::default()
    }
}

/// Wait until `dpu` is OSInstalling with bytes pushed.
async fn wait_pushing(w: &mut World, dpu: &str) {
    let admin = w.admin.clone();
    wait_for(&format!("{dpu} to be pushing its image"), T, || {
        let mut admin = admin.clone();
        let dpu = dpu.to_string();
        async move {
            let d = get_dpu(&mut admin, &dpu).await.ok()??;
            let st = d.status?;
            (st.phase() == DpuPhase::OsInstalling && st.progress.map(|p| p.bytes_pushed > 0).unwrap_or(false))
                .then_some(())
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bfb_upgrade_rolls_with_max_unavailable_one() {
    require_fuse!();
    let mut w = World::start(opts(3, &[])).await.unwrap();
    w.start_agent("n1").unwrap();
    w.add_node(
        "n1",
        RebootMethod::External,
        &[("d0", "rshim0"), ("d1", "rshim1"), ("d2", "rshim2")],
        &[("model", "bf3")],
    )
    .await
    .unwrap();
    w.add_bfb("v1", 1 << 20, "4.8.0").await.unwrap();
    w.add_bfb("v2", 1 << 20, "4.9.0").await.unwrap();
    w.add_flavor("f1", &[("HOSTNAME", "dpu")]).await.unwrap();
    w.add_deployment("dep", spec("v1", 3)).await.unwrap();

    // The upstream system: mark the node rebooted whenever it waits.
    let mut admin = w.admin.clone();
    let rebooter = tokio::spawn(async move {
        loop {
            if let Ok(s) = admin
                .get_node_reboot_status(v1::NodeRef { name: "n1".into() })
                .await
                && s.into_inner().waiting_for_reboot
            {
                let _ = admin
                    .mark_rebooted(v1::MarkRebootedRequest {
                        name: "n1".into(),
                        power_cycled: false,
                    })
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    for d in ["d0", "d1", "d2"] {
        wait_phase(&mut w.admin, d, DpuPhase::Ready, T).await.unwrap();
    }

    // Upgrade with max_unavailable 1 and follow every Dpu change.
    let list = w
        .admin
        .list(v1::ListRequest {
            kind: Kind::Dpu as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let list = list.into_inner();
    let mut watch = w
        .admin
        .watch(v1::WatchRequest {
            kinds: vec![Kind::Dpu as i32],
            from_version: list.resource_version,
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut dep = w
        .admin
        .get(v1::GetRequest {
            kind: Kind::Deployment as i32,
            name: "dep".into(),
        })
        .await
        .unwrap()
        .into_inner();
    if let Some(v1::resource::Kind::Deployment(d)) = dep.kind.as_mut() {
        d.spec.as_mut().unwrap().max_unavailable = 1;
    }
    w.admin
        .update(v1::UpdateRequest {
            resource: Some(dep),
            update_mask: None,
        })
        .await
        .unwrap();
    w.admin
        .set_deployment_image(v1::SetDeploymentImageRequest {
            deployment: "dep".into(),
            bfb: "v2".into(),
            flavor: String::new(),
        })
        .await
        .unwrap();

    let mut ready: HashMap<String, (bool, String)> = ["d0", "d1", "d2"]
        .iter()
        .map(|d| (d.to_string(), (true, "v1".to_string())))
        .collect();
    let mut max_unavailable_seen = 0;
    let deadline = tokio::time::Instant::now() + T;
    while !ready.values().all(|(r, bfb)| *r && bfb == "v2") {
        let ev = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("rollout finishes")
            .unwrap()
            .unwrap();
        let Some(v1::resource::Kind::Dpu(d)) = ev.resource.and_then(|r| r.kind) else {
            continue;
        };
        let name = d.metadata.as_ref().unwrap().name.clone();
        let st = d.status.clone().unwrap_or_default();
        assert_ne!(st.phase(), DpuPhase::Error, "{name} failed: {}", st.message);
        let is_ready = ev.r#type != EventType::Deleted as i32 && st.phase() == DpuPhase::Ready;
        ready.insert(name, (is_ready, d.spec.unwrap_or_default().bfb));
        let unavailable = ready.values().filter(|(r, _)| !r).count();
        max_unavailable_seen = max_unavailable_seen.max(unavailable);
        assert!(
            unavailable <= 1,
            "{unavailable} Dpus unavailable at once: {ready:?}"
        );
    }
    assert_eq!(max_unavailable_seen, 1, "the rollout did happen");
    for d in ["d0", "d1", "d2"] {
        let dpu = get_dpu(&mut w.admin, d).await.unwrap().unwrap();
        assert_eq!(dpu.status.unwrap().installed_bfb, "v2");
    }
    rebooter.abort();
    w.shutdown().await.unwrap();
}

/// One node, one DPU behind a slow link (the push takes seconds), caught mid-push.
async fn one_dpu_mid_push() -> World {
    let mut w = World::start(opts(1, &["rshim0=slow:2000000"])).await.unwrap();
    w.start_agent("n1").unwrap();
    w.add_node(
        "n1",
        RebootMethod::External,
        &[("dpu-a", "rshim0")],
        &[("model", "bf3")],
    )
    .await
    .unwrap();
    w.add_bfb("bfb-1", 6 << 20, "4.9.0").await.unwrap();
    w.add_flavor("f1", &[]).await.unwrap();
    w.add_deployment("d1", spec("bfb-1", 1)).await.unwrap();
    wait_pushing(&mut w, "dpu-a").await;
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_restart_mid_flash_loses_nothing() {
    require_fuse!();
    let mut w = one_dpu_mid_push().await;
    w.restart_coordinator(true).await.unwrap();
    // The flash goes on on the agent, its result reaches the new coordinator.
    let d = wait_phase(&mut w.admin, "dpu-a", DpuPhase::Rebooting, T)
        .await
        .unwrap();
    let h: Vec<DpuPhase> = d.status.unwrap().history.iter().map(|t| t.to()).collect();
    assert_eq!(
        h.iter().filter(|p| **p == DpuPhase::OsInstalling).count(),
        1,
        "flashed once: {h:?}"
    );
    w.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_mid_flash_is_reported_interrupted() {
    require_fuse!();
    let mut w = one_dpu_mid_push().await;
    w.crash_agent("n1").await;
    w.start_agent("n1").unwrap();
    // Honest: the interrupted flash is an error, never a success.
    let d = wait_phase(&mut w.admin, "dpu-a", DpuPhase::Error, T)
        .await
        .unwrap();
    let msg = d.status.clone().unwrap().message.to_lowercase();
    assert!(msg.contains("interrupt") || msg.contains("restart"), "{msg}");
    // Reprovisioning recovers: the Dpu comes back (a new object) and walks again.
    let created = d.metadata.as_ref().unwrap().created_at_ms;
    w.admin
        .reprovision(v1::DpuRef { name: "dpu-a".into() })
        .await
        .unwrap();
    wait_recreated(&w.admin, "dpu-a", created, T).await.unwrap();
    wait_phase(&mut w.admin, "dpu-a", DpuPhase::Rebooting, T)
        .await
        .unwrap();
    w.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_rejected_and_changes_nothing() {
    require_fuse!();
    let mut w = World::start(opts(1, &[])).await.unwrap();
    w.add_node("n1", RebootMethod::External, &[("dpu-a", "rshim0")], &[])
        .await
        .unwrap();
    let before = w
        .admin
        .list(v1::ListRequest {
            kind: Kind::Device as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let before = before.into_inner();

    let cases: Vec<(v1::Resource, tonic::Code, &str)> = vec![
        (
            v1::Device {
                metadata: hostplane_tests::meta("dpu-x"),
                spec: Some(v1::DeviceSpec {
                    node: "ghost".into(),
                    serial: "SN-x".into(),
                    rshim: "rshim1".into(),
                    ..Default::default()
                }),
                status: None,
            }
            .into(),
            tonic::Code::InvalidArgument,
            "spec.node",
        ),
        (
            v1::Bfb {
                metadata: hostplane_tests::meta("b"),
                spec: Some(v1::BfbSpec {
                    url: "ftp://x/y.bfb".into(),
                    sha256: "a".repeat(64),
                    ..Default::default()
                }),
            }
            .into(),
            tonic::Code::InvalidArgument,
            "spec.url",
        ),
        (
            v1::Node {
                metadata: hostplane_tests::meta("Bad_Name"),
                ..Default::default()
            }
            .into(),
            tonic::Code::InvalidArgument,
            "metadata.name",
        ),
        (
            v1::Node {
                metadata: hostplane_tests::meta("n1"),
                ..Default::default()
            }
            .into(),
            tonic::Code::AlreadyExists,
            "n1",
        ),
    ];
    for (resource, code, needle) in cases {
        let e = w
            .admin
            .create(v1::CreateRequest {
                resource: Some(resource),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(needle),
            "message names {needle}: {}",
            e.message()
        );
    }
    let e = w
        .admin
        .get(v1::GetRequest {
            kind: Kind::Dpu as i32,
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = w
        .admin
        .mark_rebooted(v1::MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());

    let after = w
        .admin
        .list(v1::ListRequest {
            kind: Kind::Device as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let after = after.into_inner();
    assert_eq!(after.items, before.items);
    assert_eq!(
        after.resource_version, before.resource_version,
        "no write happened"
    );
    w.shutdown().await.unwrap();
}
