//! End to end, hot-plug: the real `hostplane-coordinator`, `hostplane-agent`
//! and `hostplane-sim` binaries over real sockets and a real FUSE mount. A
//! DPU plugged into the simulator at run time reaches the node's inventory
//! without an agent restart (and, with auto-registration on, gets a Device
//! and is provisioned to Ready); a DPU pulled out mid-flash fails that flash
//! at once with the reason. Without FUSE they print why and return.

use std::time::{Duration, Instant};

use hostplane_proto::v1::{self, DpuPhase, Kind, NodeEffect, RebootMethod};
use hostplane_tests::world::{World, WorldOpts};
use hostplane_tests::{require_fuse, wait_for, wait_phase};

const T: Duration = Duration::from_secs(90);
const AUTO: &str = "hostplane.io/auto-registered";

/// The simulator is FUSE: changes its server makes raise no inotify event
/// for an added directory, so the agent's periodic rescan finds them (short here).
const AGENT_YAML: &str = "flash:\n  poll_interval: 50ms\nsession:\n  backoff_initial: 100ms\n  backoff_max: 1s\n\
                          rshim_watch:\n  rescan_interval: 200ms\n  debounce: 300ms\n";

async fn node(admin: &hostplane_tests::Admin, name: &str) -> Option<v1::Node> {
    let r = admin
        .clone()
        .get(v1::GetRequest {
            kind: Kind::Node as i32,
            name: name.into(),
        })
        .await
        .ok()?
        .into_inner();
    match r.kind {
        Some(v1::resource::Kind::Node(n)) => Some(n),
        _ => None,
    }
}

async fn device(admin: &hostplane_tests::Admin, name: &str) -> Option<v1::Device> {
    let r = admin
        .clone()
        .get(v1::GetRequest {
            kind: Kind::Device as i32,
            name: name.into(),
        })
        .await
        .ok()?
        .into_inner();
    match r.kind {
        Some(v1::resource::Kind::Device(d)) => Some(d),
        _ => None,
    }
}

fn rshims(n: &v1::Node) -> Vec<String> {
    n.status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .map(|i| i.rshims.iter().map(|r| r.name.clone()).collect())
        .unwrap_or_default()
}

fn control(w: &World, line: &str) {
    std::fs::write(w.dev_root.join(".control"), line).expect("writing the simulator's .control");
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpu_plugged_in_at_run_time_is_registered_and_provisioned() {
    require_fuse!();
    let mut w = World::start(WorldOpts {
        agent_yaml: AGENT_YAML.into(),
        coordinator_yaml: "agents:\n  auto_register_devices: true\n".into(),
        ..Default::default()
    })
    .await
    .expect("world starts");
    w.start_agent("n1").unwrap();
    w.add_node(
        "n1",
        RebootMethod::External,
        &[("dpu-a", "rshim0")],
        &[("model", "bf3")],
    )
    .await
    .unwrap();
    w.add_bfb("bfb-1", 1 << 20, "4.9.0").await.unwrap();
    w.add_flavor("f1", &[("HOSTNAME", "dpu")]).await.unwrap();
    // Provision whatever gets auto-registered.
    w.add_deployment(
        "auto",
        v1::DeploymentSpec {
            device_selector: [(AUTO.to_string(), "true".to_string())].into(),
            bfb: "bfb-1".into(),
            flavor: "f1".into(),
            max_unavailable: 1,
            node_effect: NodeEffect::Auto as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let admin = w.admin.clone();
    wait_for("n1's first inventory", T, || {
        let admin = admin.clone();
        async move { (rshims(&node(&admin, "n1").await?) == ["rshim0", "rshim1"]).then_some(()) }
    })
    .await
    .unwrap();
    // rshim1 was reported in Hello but shows no serial (as real rshim): not registered.
    assert!(device(&w.admin, "n1-rshim1").await.is_none());

    // Plug a DPU in; show its serial in misc (the simulator's serial-in-misc at DISPLAY_LEVEL 1).
    control(&w, "add pcie serial-in-misc\n");
    std::fs::write(w.dev_root.join("rshim2/misc"), "DISPLAY_LEVEL 1").unwrap();
    let plugged = Instant::now();
    wait_for("rshim2 in n1's inventory", T, || {
        let admin = admin.clone();
        async move {
            let n = node(&admin, "n1").await?;
            rshims(&n).contains(&"rshim2".to_string()).then_some(())
        }
    })
    .await
    .unwrap();
    let seen_after = plugged.elapsed();
    let d = wait_for("Device n1-rshim2", T, || {
        let admin = admin.clone();
        async move { device(&admin, "n1-rshim2").await }
    })
    .await
    .unwrap();
    let labels = d.metadata.clone().unwrap().labels;
    assert_eq!(labels.get(AUTO).map(String::as_str), Some("true"));
    let spec = d.spec.clone().unwrap();
    assert_eq!(
        (
            spec.node.as_str(),
            spec.rshim.as_str(),
            spec.serial.as_str(),
            spec.pci_address.as_str()
        ),
        ("n1", "rshim2", "MT2342XSIM02", "0000:06:00.0")
    );
    assert!(d.status.unwrap().present);

    // A USB rshim reports its USB path (the sysfs name of the simulator's
    // DEV_NAME usb-1-1.4), no PCI address; with no serial it is not registered.
    control(&w, "add usb\n");
    let usb = wait_for("rshim3 in n1's inventory", T, || {
        let admin = admin.clone();
        async move {
            let n = node(&admin, "n1").await?;
            n.status?
                .inventory?
                .rshims
                .into_iter()
                .find(|r| r.name == "rshim3")
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (
            usb.usb_path.as_str(),
            usb.pci_address.as_str(),
            usb.error.as_str()
        ),
        ("1-1.4", "", "")
    );
    assert!(device(&w.admin, "n1-rshim3").await.is_none());

    // Provisioned: flashed, then the node's reboot, then Ready.
    let mut a = w.admin.clone();
    wait_phase(&mut a, "n1-rshim2", DpuPhase::Rebooting, T)
        .await
        .unwrap();
    wait_node_waiting(&w.admin).await;
    w.admin
        .mark_rebooted(v1::MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .unwrap();
    let dpu = wait_phase(&mut a, "n1-rshim2", DpuPhase::Ready, T).await.unwrap();
    assert_eq!(dpu.status.unwrap().installed_bfb, "bfb-1");
    let sim = w.sim_dpus().unwrap();
    let s2 = sim
        .iter()
        .find(|d| d.name == "rshim2")
        .expect("rshim2 in .control");
    assert_eq!((s2.installs, s2.version.as_str()), (1, "4.9.0"));

    // No agent restart: one start in its log, and the update on the open session.
    let log = std::fs::read_to_string(w.log_path("agent-n1")).unwrap();
    assert_eq!(log.matches("agent starting").count(), 1, "{log}");
    assert!(
        log.contains("rshim devices changed; sending the inventory"),
        "{log}"
    );
    eprintln!("rshim2 reached the inventory {seen_after:?} after it was plugged in");
    w.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpu_pulled_out_mid_flash_fails_that_flash_at_once() {
    require_fuse!();
    let mut w = World::start(WorldOpts {
        agent_yaml: AGENT_YAML.into(),
        // 16 MiB at 1 MiB/s: the push takes about 16 s.
        faults: vec!["rshim0=slow:1MiB".into()],
        ..Default::default()
    })
    .await
    .expect("world starts");
    w.start_agent("n1").unwrap();
    w.add_node(
        "n1",
        RebootMethod::External,
        &[("dpu-a", "rshim0"), ("dpu-b", "rshim1")],
        &[("model", "bf3")],
    )
    .await
    .unwrap();
    w.add_bfb("bfb-1", 16 << 20, "4.9.0").await.unwrap();
    w.add_flavor("f1", &[("HOSTNAME", "dpu")]).await.unwrap();
    w.add_deployment(
        "d1",
        v1::DeploymentSpec {
            device_selector: [("model".to_string(), "bf3".to_string())].into(),
            bfb: "bfb-1".into(),
            flavor: "f1".into(),
            max_unavailable: 2,
            node_effect: NodeEffect::Auto as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let admin = w.admin.clone();
    // Bytes are moving into rshim0's boot.
    wait_for("dpu-a's push under way", T, || {
        let mut admin = admin.clone();
        async move {
            let d = hostplane_tests::get_dpu(&mut admin, "dpu-a").await.ok()??;
            let p = d.status?.progress?;
            // (The stage may say boot already: the firmware logs while the stream comes in.)
            (p.bytes_pushed > 0 && p.bytes_pushed < p.bytes_total).then_some(())
        }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}; agent log:\n{}",
            std::fs::read_to_string(w.log_path("agent-n1")).unwrap_or_default()
        )
    });
    control(&w, "rshim0 remove\n");
    let pulled = Instant::now();
    let mut a = w.admin.clone();
    let d = wait_phase(&mut a, "dpu-a", DpuPhase::Error, T).await.unwrap();
    let failed_after = pulled.elapsed();
    let msg = d.status.unwrap().message;
    assert!(
        msg.contains("rshim0 disappeared during the push (device removed)"),
        "{msg}"
    );
    // At once: well inside the push's stall timeout (300 s) and before the push could have ended.
    assert!(failed_after < Duration::from_secs(10), "{failed_after:?}");
    // The Device says it is gone; the other DPU goes on.
    wait_for("dpu-a's Device absent", T, || {
        let admin = admin.clone();
        async move {
            let st = device(&admin, "dpu-a").await?.status?;
            let removed = st
                .conditions
                .iter()
                .any(|c| c.r#type == "Present" && c.status == "False" && c.reason == "Removed");
            (!st.present && removed).then_some(())
        }
    })
    .await
    .unwrap();
    wait_phase(&mut a, "dpu-b", DpuPhase::Rebooting, T).await.unwrap();
    eprintln!("dpu-a failed {failed_after:?} after rshim0 was pulled out");
    w.shutdown().await.unwrap();
}
