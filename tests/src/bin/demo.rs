//! `hostplane-demo`: the whole flow on one machine. Starts the DPU simulator
//! (two BlueField DPUs behind a FUSE rshim device), a coordinator on its
//! embedded store and an agent; creates a node, its devices, a Bfb, a Flavor
//! and a Deployment with `node_effect: hold`; then acts as the upstream
//! system: approves maintenance when asked, marks the node rebooted when it
//! waits for it, and prints every phase change until both DPUs are Ready.
//! Then power: the node's simulated BMC (a DGX H100 running a training
//! workload) and a fake sysfs tree are read by the agent; a topology whose
//! feed is smaller than the node's full draw and a power policy make the
//! coordinator cap the node, and the demo prints the readings as the modeled
//! draw settles under the cap.
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hostplane_proto::v1::{self, DpuPhase, EventType, Kind, NodeEffect, RebootMethod};
use hostplane_sim::bmc::{BmcHandle, BmcOptions, BmcSim, Model};
use hostplane_tests::world::{World, WorldOpts};
use tokio_stream::StreamExt;

const NODE: &str = "node-1";

#[tokio::main]
async fn main() -> ExitCode {
    let keep = std::env::args().any(|a| a == "--keep");
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("usage: hostplane-demo [--keep]   (--keep leaves the work dir and its logs in place)");
        return ExitCode::SUCCESS;
    }
    if let Some(why) = hostplane_tests::fuse_unavailable() {
        eprintln!("demo: the DPU simulator needs FUSE: {why}");
        return ExitCode::from(69);
    }
    match run(keep).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(keep: bool) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("hostplane-demo-{}", std::process::id()));
    let opts = WorldOpts {
        dpus: 2,
        stage_delay: "250ms".into(),
        dir: Some(dir.clone()),
        ..Default::default()
    };
    println!("== hostplane demo (work dir {})", dir.display());
    let mut w = World::start(opts)
        .await
        .context("starting the simulator and the coordinator")?;
    println!(
        "   simulator: 2 BlueField DPUs at {}/rshim0 and rshim1",
        w.dev_root.display()
    );
    println!(
        "   coordinator: listening on {} over mTLS (store {}/coordinator.db)",
        w.coordinator_addr,
        dir.display()
    );
    println!(
        "   certificates: {0}/ (hostplanectl certs: a lab CA, the coordinator's, one per agent); \
         HOSTPLANE_TOKEN=$(cat {0}/admin.token) hostplanectl --server https://{1} --ca-file {0}/ca.crt \
         --cert-file {0}/client-admin.crt --key-file {0}/client-admin.key",
        w.tls_dir.display(),
        w.coordinator_addr,
    );

    let result = drive(&mut w).await;
    if let Err(e) = &result {
        eprintln!("   logs are in {}/logs", dir.display());
        eprintln!("   error: {e:#}");
    }
    w.shutdown().await?;
    if keep || result.is_err() {
        println!("== work dir kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
        println!("== cleaned up");
    }
    result
}

async fn drive(w: &mut World) -> Result<()> {
    // HTTPS, as a BMC serves: a lab CA made for the demo, which the agent trusts.
    let bmc_tls = w.dir.join("bmc-tls");
    let tls = hostplane_sim::bmc::LabCerts::generate(&[])?.write(&bmc_tls)?;
    let bmc = BmcSim::spawn(BmcOptions {
        tls: Some(tls),
        ..BmcOptions::new("bmc-node-1", Model::DgxH100)
    })?;
    let sysfs = w.dir.join("sysfs");
    hostplane_tests::power::fake_sysfs(&sysfs)?;
    let pw = w.dir.join("bmc.password");
    std::fs::write(&pw, "admin\n")?;
    w.start_agent_with(
        NODE,
        &format!(
            "power:\n  sysfs_root: {}\n  telemetry:\n    batch_interval: 1s\n  bmc:\n    url: {}\n    username: admin\n    password_file: {}\n    ca_file: {}\n    poll_interval: 1s\n",
            sysfs.display(),
            bmc.url(),
            pw.display(),
            bmc_tls.join(hostplane_sim::bmc::tls::LAB_CA_FILE).display()
        ),
    )?;
    println!(
        "   agent: {NODE} started (rshim devices under {}; BMC {} simulating a DGX H100)",
        w.dev_root.display(),
        bmc.url()
    );
    let r = provision(w).await;
    let r = match r {
        Ok(()) => power(w, &bmc).await,
        Err(e) => Err(e),
    };
    bmc.shutdown().await;
    r
}

/// Cap the node through a topology and a policy; print the readings.
async fn power(w: &mut World, bmc: &BmcHandle) -> Result<()> {
    let mut admin = w.admin.clone();
    let feed = 8_000.0;
    println!(
        "-> power: node draws {:.0} W (BMC model); create topology site (feed-a {feed:.0} W -> rack-1 -> {NODE}) and policy maxq (safe cap 7000 W)",
        bmc.draw_watts()
    );
    let el =
        |name: &str, level: v1::TopologyLevel, parent: &str, budget: f64, min: f64| v1::TopologyElement {
            name: name.into(),
            level: level as i32,
            parent: parent.into(),
            budget_watts: budget,
            min_watts: min,
        };
    let spec = bmc.model().spec();
    admin
        .create(v1::CreateRequest {
            resource: Some(
                v1::Topology {
                    metadata: hostplane_tests::meta("site"),
                    spec: Some(v1::TopologySpec {
                        elements: vec![
                            el("feed-a", v1::TopologyLevel::Feed, "", feed, 0.0),
                            el("rack-1", v1::TopologyLevel::Rack, "feed-a", feed, 0.0),
                            el(
                                NODE,
                                v1::TopologyLevel::Node,
                                "rack-1",
                                spec.node_max_watts(),
                                spec.node_min_cap_watts(),
                            ),
                        ],
                    }),
                    status: None,
                }
                .into(),
            ),
        })
        .await?;
    admin
        .create(v1::CreateRequest {
            resource: Some(
                v1::PowerPolicy {
                    metadata: hostplane_tests::meta("maxq"),
                    spec: Some(v1::PowerPolicySpec {
                        nodes: vec![NODE.into()],
                        safe_node_watts: 7_000.0,
                        ..Default::default()
                    }),
                    status: None,
                }
                .into(),
            ),
        })
        .await?;
    println!("     time   draw (W)   cap (W)  enforced (W)    BMC (W)  via");
    let start = Instant::now();
    let mut settled = 0;
    while start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = admin
            .get_power_summary(v1::PowerSummaryRequest {
                nodes: vec![NODE.into()],
            })
            .await?
            .into_inner();
        let Some(n) = s.nodes.first() else { continue };
        let fmt = |w: f64| if w > 0.0 { format!("{w:.0}") } else { "-".into() };
        println!(
            "   {:>5.1}s  {:>9}  {:>8}  {:>11}  {:>9.0}  {}",
            start.elapsed().as_secs_f32(),
            n.draw_watts.map_or("-".into(), |d| format!("{d:.0}")),
            fmt(n.cap_watts),
            fmt(n.effective_watts),
            bmc.draw_watts(),
            if n.method.is_empty() {
                "-"
            } else {
                n.method.as_str()
            },
        );
        if n.effective_watts > 0.0 && bmc.draw_watts() <= n.effective_watts + 1.0 {
            settled += 1;
            if settled == 3 {
                println!(
                    "== {NODE} capped at {:.0} W through its BMC; draw {:.0} W (feed budget {feed:.0} W)",
                    n.effective_watts,
                    bmc.draw_watts()
                );
                return Ok(());
            }
        }
    }
    bail!("the node's draw did not settle under its cap within 60 s")
}

async fn provision(w: &mut World) -> Result<()> {
    println!("-> create node {NODE} with devices dpu-a (rshim0), dpu-b (rshim1)");
    w.add_node(
        NODE,
        RebootMethod::External,
        &[("dpu-a", "rshim0"), ("dpu-b", "rshim1")],
        &[("model", "bf3")],
    )
    .await?;
    let size = 64 << 20;
    let bfb = w.add_bfb("bf-bundle-4.9.0", size, "4.9.0").await?;
    let spec = bfb.spec.clone().unwrap_or_default();
    println!(
        "-> create bfb bf-bundle-4.9.0 ({} MiB, sha256 {}…, {})",
        size >> 20,
        &spec.sha256[..12],
        spec.url
    );
    w.add_flavor(
        "bf3-default",
        &[("HOSTNAME", "dpu"), ("ubuntu_PASSWORD", "$1$demo$notreal")],
    )
    .await?;
    println!("-> create flavor bf3-default");

    let mut admin = w.admin.clone();
    let list = admin
        .list(v1::ListRequest {
            kind: Kind::Dpu as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut watch = admin
        .watch(v1::WatchRequest {
            kinds: vec![Kind::Dpu as i32, Kind::Node as i32],
            from_version: list.resource_version,
            name: String::new(),
        })
        .await?
        .into_inner();

    w.add_deployment(
        "bf3-fleet",
        v1::DeploymentSpec {
            device_selector: [("model".to_string(), "bf3".to_string())].into(),
            bfb: "bf-bundle-4.9.0".into(),
            flavor: "bf3-default".into(),
            max_unavailable: 2,
            node_effect: NodeEffect::Hold as i32,
            ..Default::default()
        },
    )
    .await?;
    println!("-> create deployment bf3-fleet (selector model=bf3, node_effect hold, max_unavailable 2)");

    let start = Instant::now();
    let deadline = start + Duration::from_secs(300);
    let mut phases: HashMap<String, DpuPhase> = HashMap::new();
    let mut printed: HashMap<String, v1::PhaseTransition> = HashMap::new();
    let mut last_progress: HashMap<String, (String, u64)> = HashMap::new();
    let mut approved = false;
    let mut rebooted = false;
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), watch.next())
            .await
            .context("timed out after 300 s waiting for the DPUs to become Ready")?;
        let Some(ev) = ev else {
            bail!("the coordinator closed the watch stream")
        };
        let ev = ev?;
        if ev.r#type == EventType::Deleted as i32 {
            continue;
        }
        let t = start.elapsed().as_secs_f32();
        match ev.resource.and_then(|r| r.kind) {
            Some(v1::resource::Kind::Dpu(d)) => {
                let name = d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
                let st = d.status.clone().unwrap_or_default();
                let phase = st.phase();
                // Print every transition from the history: one watch event may carry several.
                let last = printed.get(&name);
                let start = last
                    .and_then(|l| st.history.iter().position(|h| h == l))
                    .map_or(0, |i| i + 1);
                for h in &st.history[start..] {
                    println!("{t:7.1}s  {name:<6} {:<20} {}", h.to().display_name(), h.message);
                }
                if let Some(h) = st.history.last() {
                    printed.insert(name.clone(), h.clone());
                }
                phases.insert(name.clone(), phase);
                if phase == DpuPhase::Error {
                    bail!("dpu {name} failed: {}", st.message);
                }
                if let Some(p) = st.progress
                    && phase == DpuPhase::OsInstalling
                    && p.bytes_total > 0
                {
                    let mib = p.bytes_pushed >> 20;
                    let key = (p.stage.clone(), mib / 16);
                    if last_progress.get(&name) != Some(&key) {
                        last_progress.insert(name.clone(), key);
                        let line = if p.last_log_line.is_empty() {
                            String::new()
                        } else {
                            format!("  | {}", p.last_log_line.trim())
                        };
                        println!(
                            "{t:7.1}s  {name:<6}   flash: {mib}/{} MiB at {:.0} MB/s, stage {}{line}",
                            p.bytes_total >> 20,
                            p.rate_bytes_per_sec / 1e6,
                            p.stage
                        );
                    }
                }
            }
            Some(v1::resource::Kind::Node(n)) => {
                let st = n.status.unwrap_or_default();
                if st.waiting_for_reboot && !rebooted {
                    rebooted = true;
                    println!(
                        "{t:7.1}s  upstream: {NODE} waits for a reboot -> rebooting it, then MarkRebooted"
                    );
                    admin
                        .mark_rebooted(v1::MarkRebootedRequest {
                            name: NODE.into(),
                            power_cycled: false,
                        })
                        .await?;
                }
            }
            _ => {}
        }
        let waiting_approval = phases.values().any(|p| *p == DpuPhase::NodeEffect);
        if waiting_approval && !approved {
            approved = true;
            println!("{t:7.1}s  upstream: {NODE} drained -> ApproveMaintenance");
            admin
                .approve_maintenance(v1::NodeRef { name: NODE.into() })
                .await?;
        }
        if phases.len() == 2 && phases.values().all(|p| *p == DpuPhase::Ready) {
            println!("== both DPUs Ready in {:.1} s", start.elapsed().as_secs_f32());
            break;
        }
    }
    Ok(())
}
