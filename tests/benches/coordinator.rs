//! Coordinator at scale: the real `hostplane-coordinator` binary drives N Dpus
//! (1,000 by default: 250 nodes × 4 devices) through the whole state machine,
//! with one simulated agent per node on the real agent stream.
//!
//! ```text
//! cargo build --release -p hostplane-coordinator
//! cargo bench -p hostplane-tests --bench coordinator
//! HOSTPLANE_BENCH_DPUS=100 cargo bench -p hostplane-tests --bench coordinator
//! HOSTPLANE_BENCH_COORDINATOR=/path/to/hostplane-coordinator cargo bench ...   # another build
//! ```
//!
//! The coordinator runs as a child process (`target/release/hostplane-coordinator`)
//! on 127.0.0.1 with a fresh store file and the default `fsm:` and `agents:`
//! settings (resync 5s, batch delay 10ms, lease 15s, status flush 1s); only
//! `listen` and `store.path` are set. It logs at `info` (or `HOSTPLANE_LOG`) to
//! a file, as in production.
//!
//! Setup (not timed as part of the walk): a Bfb, a Flavor, and one
//! `CreateNodeWithDevices` per node with `reboot_method: AGENT`; then one agent
//! task per node opens its own HTTP/2 connection and `Session`, sends Hello
//! (its rshims as inventory) and waits. Then one Deployment (`node_effect:
//! AUTO`, `max_unavailable` = N) is created and the walk is timed until the
//! Deployment's status says N Dpus Ready (one Watch on that Deployment, opened
//! before it is created; then one List checks every Dpu's phase).
//!
//! The simulated agent answers each new command of each DesiredState at once:
//! InitializeInterface, ConfigFWParameters and DPUClusterConfig SKIPPED with a
//! reason, PrepareBFB SUCCEEDED, FlashBFB one progress event then SUCCEEDED,
//! RebootHost SUCCEEDED, after which it "reboots": it closes its stream and
//! connection and comes back at once on a new connection with a new boot_id,
//! which is what moves the coordinator's Rebooting on (the agent reboot rule).
//! It keeps a journal across reboots (results of listed commands it already
//! finished are re-sent, never re-run), ACKs every version, and heartbeats
//! every lease/3. AGENT reboots were chosen over EXTERNAL ones because the
//! reconnect (Hello, boot id, Device presence) is real coordinator work that an
//! external MarkRebooted call would replace with one admin write.
//!
//! Command latency is the coordinator's reaction time as an agent sees it: from
//! the moment the agent has queued a command's result on its stream until it
//! receives the DesiredState that carries that Dpu's next command; after a
//! reboot it is timed from the new session's Hello. Coordinator RSS comes from
//! `/proc/<pid>/status` (VmRSS, VmHWM), its CPU from `/proc/<pid>/stat`
//! (utime + stime, in clock ticks).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hostplane_proto::v1::{self, Kind, NodeEffect, RebootMethod};
use hostplane_tests::{Admin, Proc, connect_admin, free_addr, meta, phase_of};
use nix::unistd::{SysconfVar, sysconf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[path = "coordinator/agent.rs"]
mod agent;
#[path = "coordinator/figures.rs"]
mod figures;

use agent::{Agent, AgentReport};
use figures::{Figures, own_cpu, sample};

const DPUS_PER_NODE: usize = 4;
const DEFAULT_DPUS: usize = 1000;
/// The walk fails if the Dpus are not all Ready by then.
const WALK_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let dpus = match dpus_from_env(std::env::var("HOSTPLANE_BENCH_DPUS").ok()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("coordinator bench: {e:#}");
            return ExitCode::from(64);
        }
    };
    let bin = match coordinator_bin() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("coordinator bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coordinator bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(dpus, &bin)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `HOSTPLANE_BENCH_DPUS`: how many Dpus (1..=10000; default 1,000).
fn dpus_from_env(v: Option<String>) -> Result<usize> {
    let Some(v) = v else { return Ok(DEFAULT_DPUS) };
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .with_context(|| format!("HOSTPLANE_BENCH_DPUS={v:?}: expected 1..=10000"))
}

/// The release coordinator next to this bench (`target/release/`), or
/// `HOSTPLANE_BENCH_COORDINATOR` (to compare a patched build).
fn coordinator_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HOSTPLANE_BENCH_COORDINATOR") {
        let p = PathBuf::from(p);
        ensure!(
            p.exists(),
            "HOSTPLANE_BENCH_COORDINATOR={}: no such file",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let mut dir = exe
        .parent()
        .context("the bench executable has no parent dir")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("hostplane-coordinator");
    ensure!(
        p.exists(),
        "{} not found: run `cargo build --release -p hostplane-coordinator` first",
        p.display()
    );
    Ok(p)
}

async fn run(dpus: usize, bin: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("hostplane-bench-coordinator-")
        .tempdir()?;
    let r = bench(dpus, bin, tmp.path()).await;
    if r.is_err() {
        let kept = tmp.keep();
        eprintln!(
            "coordinator bench: files kept in {} (coordinator.log)",
            kept.display()
        );
    }
    r
}

/// The fleet: node name -> rshim names of its devices.
fn fleet(dpus: usize) -> Vec<(String, Vec<String>)> {
    (0..dpus.div_ceil(DPUS_PER_NODE))
        .map(|n| {
            let here = DPUS_PER_NODE.min(dpus - n * DPUS_PER_NODE);
            (
                format!("node-{n:04}"),
                (0..here).map(|d| format!("rshim{d}")).collect(),
            )
        })
        .collect()
}

async fn bench(dpus: usize, bin: &Path, dir: &Path) -> Result<()> {
    let fleet = fleet(dpus);
    let addr = free_addr()?;
    let cfg = dir.join("coordinator.yaml");
    let store = dir.join("coordinator.db");
    std::fs::write(
        &cfg,
        // Plain TCP: the bench measures the coordinator's own cost, as before mTLS.
        format!(
            "listen: {addr}\nstore:\n  path: {}\ninsecure: true\n",
            store.display()
        ),
    )?;
    let cfg = cfg.to_str().context("temp dir path is not UTF-8")?;
    let mut coordinator = Proc::spawn(
        "coordinator",
        bin,
        &["run", "--config", cfg],
        &dir.join("coordinator.log"),
    )?;
    let pid = coordinator.pid().context("the coordinator has no pid")?.as_raw();
    let mut admin = connect_admin(addr, Duration::from_secs(30)).await?;
    let clk_tck = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as u64;
    let at_start = sample(pid, clk_tck)?;

    let t = Instant::now();
    create_inputs(&mut admin, &fleet).await?;
    let created_in = t.elapsed();

    let stop = CancellationToken::new();
    let (hello_tx, mut hello_rx) = mpsc::unbounded_channel();
    let mut agents = JoinSet::new();
    let t = Instant::now();
    for (node, rshims) in &fleet {
        let agent = Agent::new(node, rshims.clone(), format!("http://{addr}"));
        agents.spawn(agent.run(hello_tx.clone(), stop.child_token()));
    }
    drop(hello_tx);
    for _ in 0..fleet.len() {
        match tokio::time::timeout(Duration::from_secs(60), hello_rx.recv()).await {
            Ok(Some(())) => {}
            _ => bail!("not every simulated agent got its first desired state within 60s"),
        }
    }
    let connected_in = t.elapsed();
    let before = sample(pid, clk_tck)?;
    let self_before = own_cpu()?;

    let mut events = watch_deployment(&mut admin).await?;
    let walk_start = Instant::now();
    let deployment = v1::Deployment {
        metadata: meta("bench"),
        spec: Some(v1::DeploymentSpec {
            bfb: "bench-bfb".into(),
            flavor: "bench-flavor".into(),
            max_unavailable: dpus as u32,
            node_effect: NodeEffect::Auto as i32,
            ..Default::default()
        }),
        status: None,
    };
    admin
        .create(v1::CreateRequest {
            resource: Some(deployment.into()),
        })
        .await
        .context("creating the deployment")?;
    let walked = wait_ready(&mut events, dpus).await;
    let walk = walk_start.elapsed();
    let after = sample(pid, clk_tck)?;
    let self_cpu = own_cpu()?.saturating_sub(self_before);
    stop.cancel();
    let mut report = AgentReport::default();
    while let Some(r) = agents.join_next().await {
        report.merge(r.context("a simulated agent panicked")?);
    }
    if let Err(e) = walked {
        let phases = phase_counts(&mut admin).await.unwrap_or_default();
        bail!(
            "{e:#}; Dpus by phase: {phases:?}; agent sessions that broke: {:?}",
            report.broken
        );
    }
    let phases = phase_counts(&mut admin).await?;
    ensure!(
        phases.get("Ready") == Some(&dpus) && phases.len() == 1,
        "the Deployment says all Ready, but the Dpus are {phases:?}"
    );
    ensure!(
        report.broken.is_empty(),
        "agent sessions broke: {:?}",
        report.broken
    );
    let store_bytes = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", store.display())).ok())
        .map(|m| m.len())
        .sum::<u64>();
    let exit = coordinator.stop(Duration::from_secs(20)).await;

    let figures = Figures {
        dpus,
        nodes: fleet.len(),
        created_in,
        connected_in,
        walk,
        walk_start,
        at_start,
        before,
        after,
        self_cpu,
        store_bytes,
        exit,
    };
    figures.print(&report, bin);
    Ok(())
}

async fn create(admin: &mut Admin, r: v1::Resource) -> Result<()> {
    let what = format!("{} {}", r.kind().noun(), r.name());
    admin
        .create(v1::CreateRequest { resource: Some(r) })
        .await
        .with_context(|| format!("creating {what}"))?;
    Ok(())
}

/// The Bfb, the Flavor, and every node with its devices (one call per node).
async fn create_inputs(admin: &mut Admin, fleet: &[(String, Vec<String>)]) -> Result<()> {
    let bfb = v1::Bfb {
        metadata: meta("bench-bfb"),
        spec: Some(v1::BfbSpec {
            // Never fetched: the simulated agents only answer.
            url: "http://127.0.0.1:9/bf-bundle-2.9.0.bfb".into(),
            sha256: "5e".repeat(32),
            version: "2.9.0".into(),
            size_bytes: 1_500_000_000,
        }),
    };
    create(admin, bfb.into()).await?;
    let s = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    let flavor = v1::Flavor {
        metadata: meta("bench-flavor"),
        spec: Some(v1::FlavorSpec {
            bf_cfg: s(&[
                ("UPDATE_DPU_OS", "yes"),
                ("ENABLE_SFC_HBN", "no"),
                ("DHCP_CLASS_ID", "bench"),
            ]),
            nic_firmware: s(&[("SRIOV_EN", "1"), ("NUM_OF_VFS", "16"), ("LINK_TYPE_P1", "2")]),
            host_network: Some(v1::HostNetwork {
                num_vfs: 16,
                mtu: 9000,
                bridges: vec![v1::Bridge {
                    name: "br-dpu".into(),
                    ports: vec!["pf0vf0".into()],
                    mtu: 9000,
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }),
    };
    create(admin, flavor.into()).await?;
    const PCI: [&str; DPUS_PER_NODE] = ["0000:04:00.0", "0000:21:00.0", "0000:81:00.0", "0000:c1:00.0"];
    for (n, (node, rshims)) in fleet.iter().enumerate() {
        let devices = rshims
            .iter()
            .enumerate()
            .map(|(d, rshim)| v1::Device {
                metadata: meta(&format!("{node}-dpu{d}")),
                spec: Some(v1::DeviceSpec {
                    node: node.clone(),
                    serial: format!("MT{n:05}{d}BENCH"),
                    pci_address: PCI[d].into(),
                    rshim: rshim.clone(),
                    ..Default::default()
                }),
                status: None,
            })
            .collect();
        admin
            .create_node_with_devices(v1::CreateNodeWithDevicesRequest {
                node: Some(v1::Node {
                    metadata: meta(node),
                    spec: Some(v1::NodeSpec {
                        reboot_method: RebootMethod::Agent as i32,
                    }),
                    status: None,
                }),
                devices,
            })
            .await
            .with_context(|| format!("creating node {node} with its devices"))?;
    }
    Ok(())
}

/// Follow the Deployment (Watch, by name) until its status says every Dpu is Ready.
/// Returns the watch stream to read; open it before creating the Deployment.
async fn watch_deployment(admin: &mut Admin) -> Result<tonic::Streaming<v1::WatchEvent>> {
    let w = admin
        .watch(v1::WatchRequest {
            kinds: vec![Kind::Deployment as i32],
            from_version: 0,
            name: "bench".into(),
        })
        .await
        .context("watching the deployment")?;
    Ok(w.into_inner())
}

async fn wait_ready(events: &mut tonic::Streaming<v1::WatchEvent>, dpus: usize) -> Result<()> {
    let mut last = v1::DeploymentStatus::default();
    let follow = async {
        while let Some(ev) = events.message().await.context("deployment watch")? {
            let Some(v1::Resource {
                kind: Some(v1::resource::Kind::Deployment(d)),
            }) = ev.resource
            else {
                continue;
            };
            last = d.status.unwrap_or_default();
            ensure!(
                last.failed == 0,
                "{} Dpus failed: {:?}",
                last.failed,
                last.conditions
            );
            if last.ready as usize == dpus {
                return Ok(());
            }
        }
        bail!("the deployment watch ended")
    };
    match tokio::time::timeout(WALK_TIMEOUT, follow).await {
        Ok(r) => r,
        Err(_) => bail!("only {} of {dpus} Dpus Ready after {WALK_TIMEOUT:?}", last.ready),
    }
}

/// Dpus by phase name (one listing, page by page).
async fn phase_counts(admin: &mut Admin) -> Result<BTreeMap<&'static str, usize>> {
    let mut out = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let list = admin
            .list(v1::ListRequest {
                kind: Kind::Dpu as i32,
                page_token,
                ..Default::default()
            })
            .await
            .context("listing dpus")?
            .into_inner();
        for r in list.items {
            if let Some(v1::resource::Kind::Dpu(d)) = r.kind {
                *out.entry(phase_of(&d).display_name()).or_default() += 1;
            }
        }
        if list.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = list.next_page_token;
    }
}
